"""Locked data API and hand-over for the autoresearch experiment.

OWNED BY THE HUMAN who runs the loop. The agent edits `train.py` only and must never edit this file (nor
`evaluate.py`, the evaluator beside it): an experiment that changes its own yardstick proves nothing.

What train.py imports from here: the constants below, get_device(), load_tokenizer(), make_dataloader(),
training_starts() and save_model(). A run sees the train split only; the server's evaluator
(`evaluate.py`) scores the handed-over model on the validation split. The dataset itself is made once by the
human with `autoresearch prepare` (server/dataset/), and checked against the checksums its meta.json records.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------------------
# Constants (fixed for every experiment; the evaluator depends on them)
# ---------------------------------------------------------------------------------------------------------
# Context length of evaluation rows, in tokens. The original uses 2048 on an H100; 512 BPE tokens (~1.9 KB
# of Shakespeare, a whole scene fragment) keeps attention affordable for the small models a 2-core CPU can
# train in a minute, while still being a meaningful context for a GPU-sized model.
MAX_SEQ_LEN = 512  # tokens
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "300"))  # seconds of steady-state training
SEED = int(os.environ.get("AUTORESEARCH_SEED", "42"))  # the server's seed for this run: train.py seeds with it only
EVAL_BATCH_SIZE = 2  # rows per evaluation batch on a CPU (fastest there: the logits stay in cache), unless set
EVAL_BATCH_SIZE_GPU = 32  # rows per evaluation batch on a GPU
VOCAB_SIZE = 8192  # tokens, special tokens included
BOS_TOKEN = "<|bos|>"  # prepended to every document and to every training/evaluation row
SPECIAL_TOKENS = [BOS_TOKEN]
DEFAULT_DATASET = "shakespeare-bpe8192"  # dataset name under the cache directory
DEFAULT_CACHE = "~/.cache/autoresearch"  # root of prepared datasets
CLIMBMIX_SHARDS = 10  # training shards downloaded by default (about 100 MB of parquet each), as in the original
CUDA_DATASET = f"climbmix{CLIMBMIX_SHARDS}-bpe{VOCAB_SIZE}"  # the default dataset where CUDA is available
MARK_START = "autoresearch: timed training starts"  # the server's clock starts the budget at this line
MARK_END = "autoresearch: timed training ends"  # ... and stops it at the last such line
MARK_SAVED = "autoresearch: model saved"
MODEL_FILE = "model.pt2"  # the handed-over model, in the run's output folder
EXPORT_ERROR_FILE = "export_error.txt"  # why the model could not be exported, for the agent
FORMAT_VERSION = 2  # bump when the on-disk layout changes, so old caches are rebuilt (2: holdout.bin)


def cache_root() -> Path:
    """The cache directory, read from the environment at call time (tests change it per test)."""
    return Path(os.environ.get("AUTORESEARCH_CACHE", DEFAULT_CACHE)).expanduser()


def default_dataset() -> str:
    """What `prepare` makes with no --source: the original's climbmix on CUDA, Shakespeare elsewhere."""
    return CUDA_DATASET if torch.cuda.is_available() else DEFAULT_DATASET


def dataset_dir(name: str | None = None) -> Path:
    return cache_root() / (name or os.environ.get("AUTORESEARCH_DATASET") or default_dataset())


CACHE_DIR = cache_root()
DATASET = os.environ.get("AUTORESEARCH_DATASET") or default_dataset()


# ---------------------------------------------------------------------------------------------------------
# Atomic writes: a reader never sees a half-written file
# ---------------------------------------------------------------------------------------------------------
def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file then os.replace, so readers never see a half-written file."""
    tmp = _tmp_path(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: tiktoken encodes with the merges `autoresearch prepare` trained. Stored as JSON, never pickle.
# ---------------------------------------------------------------------------------------------------------
def token_byte_lengths(spec: dict[str, Any]) -> np.ndarray:
    """Bytes per token id from each token's raw bytes (decoding single tokens would count a partial UTF-8
    sequence as the 3-byte U+FFFD). Special tokens get 0, so the evaluator skips them."""
    lengths = [len(base64.b64decode(t)) for t in spec["tokens_base64"]]
    return np.array(lengths + [0] * len(spec["special_tokens"]), dtype=np.int32)


class Tokenizer:
    """encode/decode text, plus vocab_size, bos_id and per-token byte lengths (token_bytes)."""

    def __init__(self, spec: dict[str, Any], directory: Path | None = None) -> None:
        import tiktoken  # lazy: keeps `import prepare` cheap for tools that only want constants

        ranks = {base64.b64decode(t): i for i, t in enumerate(spec["tokens_base64"])}
        self.specials: dict[str, int] = dict(spec["special_tokens"])
        self.enc = tiktoken.Encoding(
            name=f"autoresearch-{len(ranks)}",
            pat_str=spec["pattern"],
            mergeable_ranks=ranks,
            special_tokens=self.specials,
        )
        self.vocab_size = len(ranks) + len(self.specials)
        self.bos_id = self.specials[BOS_TOKEN]
        self.token_bytes = token_byte_lengths(spec)
        self.directory = directory

    def encode(self, text: str, prepend_bos: bool = False) -> list[int]:
        ids = self.enc.encode_ordinary(text)  # special-token text in the data is treated as plain text
        return [self.bos_id, *ids] if prepend_bos else ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids))


def load_tokenizer(name: str | None = None) -> Tokenizer:
    directory = dataset_dir(name)
    path = directory / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `autoresearch prepare` first")
    return Tokenizer(json.loads(path.read_text()), directory)


# ---------------------------------------------------------------------------------------------------------
# Runtime API used by train.py
# ---------------------------------------------------------------------------------------------------------
def get_device() -> torch.device:
    forced = os.environ.get("AUTORESEARCH_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _resolve_dir(source: Tokenizer | dict | str | Path | None) -> Path:
    if isinstance(source, Tokenizer) and source.directory is not None:
        return source.directory
    if isinstance(source, dict) and "directory" in source:
        return Path(source["directory"])
    if isinstance(source, str | Path):
        return Path(source) if Path(source).is_absolute() else dataset_dir(str(source))
    return dataset_dir()


def load_split(directory: Path, split: str) -> np.ndarray:
    if split not in ("train", "val", "holdout"):
        raise ValueError(f"split must be 'train', 'val' or 'holdout', not {split!r}")
    if not (directory / f"{split}.bin").exists() and split != "train":
        raise FileNotFoundError(f"the {split} split is not visible here: only the server's evaluator reads it")
    return np.memmap(directory / f"{split}.bin", dtype=np.uint16, mode="r")


def load_meta(name: str | None = None) -> dict[str, Any]:
    directory = dataset_dir(name)
    meta = json.loads((directory / "meta.json").read_text())
    return {**meta, "directory": str(directory)}


def _window_starts(n: int, T: int, seed: int) -> Iterator[tuple[int, int]]:
    """(start, epoch) forever: each epoch visits non-overlapping T-token windows in a shuffled order,
    from a random phase, so every token is a target about once per epoch."""
    epoch = 1
    while True:
        rng = np.random.default_rng(seed * 1000003 + epoch)
        phase = int(rng.integers(0, max(1, min(T, n - T + 1))))
        starts = np.arange(phase, n - T + 1, T)
        for s in rng.permutation(starts):
            yield int(s), epoch
        epoch += 1


def make_dataloader(
    tokenizer_or_meta: Tokenizer | dict | str | Path | None,
    B: int,
    T: int,
    split: str,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """Yields (inputs, targets, epoch): int64 (B, T) tensors; each row is BOS followed by a T-token window
    of the split's token stream (documents are concatenated, each starting with BOS); targets are the row
    shifted by one. Simple packing: windows may span documents, and no token is ever padded away."""
    directory = _resolve_dir(tokenizer_or_meta)
    bos = int(json.loads((directory / "meta.json").read_text())["bos_id"])
    data = load_split(directory, split)
    if len(data) < T + 1:  # a tiny corpus: repeat it so a window fits
        data = np.resize(np.asarray(data), T + 1)
    device = torch.device(device or "cpu")
    pin = device.type == "cuda"
    starts = _window_starts(len(data), T, seed)
    row = np.empty((B, T + 1), dtype=np.int64)
    row[:, 0] = bos
    epoch = 1
    while True:
        for b in range(B):
            s, epoch = next(starts)
            row[b, 1:] = data[s : s + T]
        batch = torch.from_numpy(row.copy())
        if pin:
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=pin)
        yield batch[:, :-1], batch[:, 1:], epoch


# ---------------------------------------------------------------------------------------------------------
# The hand-over: train.py marks the start of timed training and hands its model over at the end
# ---------------------------------------------------------------------------------------------------------
def eval_batch_size(device: torch.device) -> int:
    """Rows per evaluation batch: the configuration's (AUTORESEARCH_EVAL_BATCH), else 2 on a CPU, 32 on a GPU."""
    default = EVAL_BATCH_SIZE if device.type == "cpu" else EVAL_BATCH_SIZE_GPU
    return max(1, int(os.environ.get("AUTORESEARCH_EVAL_BATCH") or default))


def output_dir() -> Path:
    """The run's output folder (the server sets it; a plain `python train.py` writes to ./output)."""
    path = Path(os.environ.get("AUTORESEARCH_OUTPUT", "output"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def training_starts() -> None:
    """Call once, right before the first timed training step: the server's clock starts the budget here."""
    print(MARK_START, flush=True)


def save_model(model: torch.nn.Module) -> Path:
    """Call once after training: the clock stops, and the model is exported for the server's evaluator.

    `model(idx)` with idx int64 (batch, MAX_SEQ_LEN) must return logits (batch, MAX_SEQ_LEN, vocab), causal.
    The export is a graph of tensor operations (torch.export), so nothing of train.py runs at evaluation. Its
    shapes are fixed, batch included (the evaluator's): half the time of a dynamic batch to export and to load."""
    print(MARK_END, flush=True)
    out = output_dir()
    device = next(model.parameters()).device
    idx = torch.zeros((eval_batch_size(get_device()), MAX_SEQ_LEN), dtype=torch.long, device=device)
    gc.freeze()  # the training's objects: the exporter's many collections need not walk them
    try:
        with torch.no_grad():
            program = torch.export.export(model.eval(), (idx,))
        program._example_inputs = None  # type: ignore[attr-defined]  # nothing pickled in the archive
        tmp = out / f".{os.getpid()}.{MODEL_FILE}"  # the exporter wants a .pt2 name
        torch.export.save(program, tmp)
        os.replace(tmp, out / MODEL_FILE)
    except Exception as exc:  # the agent needs the operation that failed, not a 200-line trace
        reason = export_reason(exc)
        (out / EXPORT_ERROR_FILE).write_text(reason + "\n")
        print(f"FAIL: the model could not be exported: {reason}", flush=True)
        sys.exit(3)
    finally:
        gc.unfreeze()
    print(MARK_SAVED, flush=True)
    return out / MODEL_FILE


def export_reason(exc: BaseException) -> str:
    """The first informative line of an export error, with its exception type."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("from user code", "File ", "For more information"))]
    return f"{type(exc).__name__}: {(useful or lines or ['no message'])[0][:300]}"
