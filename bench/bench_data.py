"""Data benchmark: is the data pipeline ever the bottleneck, and what does preparation cost?

    python bench/bench_data.py [--repeats N] [--train-budget S] [--out bench/out/bench_data.json]
    python bench/bench_data.py --quick

Measures (1) tokens/s the dataloader delivers alone, (2) tokens/s training consumes (from a short real
train.py run's summary) and (3) wall time and peak RSS of a from-scratch `autoresearch prepare` in a fresh cache.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

from _common import EXPERIMENT, fmt, load_prepare, number, prepare_dataset, quick_dataset, run_train, stats, write_json


def time_prepare(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of `autoresearch prepare` in a subprocess with an empty cache. ru_maxrss of
    RUSAGE_CHILDREN is the largest child so far, so this runs before any other child process."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-prep-") as cache:
        env = {**os.environ, "AUTORESEARCH_CACHE": cache}
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "server.dataset", *args],
            cwd=EXPERIMENT.parent,
            env=env,
            check=True,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def loader_tokens_per_s(prepare, batch: int, seq: int, seconds: float) -> float:
    loader = prepare.make_dataloader(None, batch, seq, "train", "cpu")
    next(loader)  # opening the memmap is not throughput
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, _, _ = next(loader)
        n += x.numel()
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-budget", type=float, default=20.0, help="seconds of the training run")
    p.add_argument("--batch", type=int, default=8, help="loader batch size (train.py's CPU default)")
    p.add_argument("--out", default="bench/out/bench_data.json")
    p.add_argument("--quick", action="store_true", help="tiny byte-level dataset, 2 s training")
    args = p.parse_args(argv)
    prep_args = ["--byte-level"] if args.quick else []
    prep = [time_prepare(prep_args) for _ in range(1 if args.quick else args.repeats)]
    env = quick_dataset() if args.quick else {}
    if not args.quick:
        prepare_dataset([])
    os.environ.update(env)
    prepare = load_prepare()
    seconds = 0.5 if args.quick else 3.0
    loader = [loader_tokens_per_s(prepare, args.batch, prepare.MAX_SEQ_LEN, seconds) for _ in range(args.repeats)]
    budget = 2.0 if args.quick else args.train_budget
    summaries = [run_train(budget, env) for _ in range(1 if args.quick else args.repeats)]
    train = [number(s, "total_tokens_M") * 1e6 / number(s, "training_seconds") for s in summaries]
    result = {
        "dataset": str(prepare.dataset_dir()),
        "quick": args.quick,
        "prepare_args": prep_args or ["(default: shakespeare, BPE 8192)"],
        "prepare_seconds": stats([w for w, _ in prep]),
        "prepare_peak_rss_mb": stats([m for _, m in prep]),
        "loader_tokens_per_s": stats(loader),
        "train_tokens_per_s": stats(train),
        "loader_over_train": stats([min(loader) / t for t in train]),
    }
    write_json(args.out, result)
    print("| measure | median (min-max) |\n|---|---|")
    for key in (
        "prepare_seconds",
        "prepare_peak_rss_mb",
        "loader_tokens_per_s",
        "train_tokens_per_s",
        "loader_over_train",
    ):
        print(f"| {key} | {fmt(result[key], 1)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
