"""Quality benchmark: val_bpb of the unchanged train.py at fixed budgets vs classic compressors.

    python bench/bench_quality.py [--budgets 60 300] [--repeats N] [--out bench/out/bench_quality.json]
    python bench/bench_quality.py --quick      # smoke test: tiny byte-level dataset, 2 s budget

The compressors see exactly the validation bytes the evaluator scores (decoded from val.bin), so both
columns are bits per byte of the same text. "xz -9e given train" compresses train+val and charges only the extra
bytes, i.e. a compressor that has read the training text first, like the model.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
from _common import fmt, load_prepare, number, prepare_dataset, quick_dataset, run_train, stats, write_json

COMPRESSORS = {
    "gzip -9": ["gzip", "-9", "-c"],
    "xz -9e": ["xz", "-9e", "-c"],
    "zstd --ultra -22": ["zstd", "--ultra", "-22", "-c"],
}


def split_bytes(prepare, split: str) -> bytes:
    """The text bytes of a split: every token's raw bytes, BOS tokens (0 bytes) left out."""
    tok = prepare.load_tokenizer()
    ids = np.fromfile(prepare.dataset_dir() / f"{split}.bin", dtype=np.uint16)
    return tok.enc.decode_bytes([int(t) for t in ids if t != tok.bos_id])


def compressed_size(cmd: list[str], data: bytes) -> int:
    return len(subprocess.run(cmd, input=data, capture_output=True, check=True).stdout)


def compressor_bpb(val: bytes, train: bytes) -> dict[str, float]:
    results = {}
    for name, cmd in COMPRESSORS.items():
        if shutil.which(cmd[0]) is None:
            print(f"[bench] {cmd[0]} is not installed: skipping {name}", file=sys.stderr)
            continue
        results[name] = 8 * compressed_size(cmd, val) / len(val)
    if shutil.which("xz"):
        extra = compressed_size(COMPRESSORS["xz -9e"], train + val) - compressed_size(COMPRESSORS["xz -9e"], train)
        results["xz -9e given train"] = 8 * extra / len(val)
    return results


def model_runs(budgets: list[float], repeats: int, env: dict[str, str]) -> dict[str, dict]:
    runs = {}
    for budget in budgets:
        summaries = [run_train(budget, env) for _ in range(repeats)]
        runs[f"{budget:g}"] = {
            "val_bpb": stats([number(s, "val_bpb") for s in summaries]),
            "tokens_per_s": stats(
                [number(s, "total_tokens_M") * 1e6 / number(s, "training_seconds") for s in summaries]
            ),
            "num_steps": stats([number(s, "num_steps") for s in summaries]),
            "summaries": summaries,
        }
    return runs


def markdown(runs: dict[str, dict], compressors: dict[str, float], n_bytes: int) -> str:
    lines = [f"| method (validation: {n_bytes} bytes) | bits per byte | tokens/s | steps |", "|---|---|---|---|"]
    for budget, r in runs.items():
        lines.append(
            f"| train.py, {budget} s budget | {fmt(r['val_bpb'], 4)} | {fmt(r['tokens_per_s'], 0)} "
            f"| {fmt(r['num_steps'], 0)} |"
        )
    lines += [f"| {name} | {bpb:.4f} | | |" for name, bpb in compressors.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[60, 300], help="seconds")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", default="bench/out/bench_quality.json")
    p.add_argument("--quick", action="store_true", help="tiny byte-level dataset, 2 s budget")
    args = p.parse_args(argv)
    env = quick_dataset() if args.quick else {}
    budgets = [2.0] if args.quick else args.budgets
    if not args.quick:
        prepare_dataset([])  # the default dataset; does nothing when already prepared
    os.environ.update(env)
    prepare = load_prepare()
    val, train = split_bytes(prepare, "val"), split_bytes(prepare, "train")
    compressors = compressor_bpb(val, train)
    runs = model_runs(budgets, args.repeats, env)
    table = markdown(runs, compressors, len(val))
    write_json(
        args.out,
        {
            "dataset": str(prepare.dataset_dir()),
            "val_bytes": len(val),
            "quick": args.quick,
            "compressors_bpb": compressors,
            "runs": runs,
            "table": table,
        },
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
