"""What scoring a model cannot go below on this machine: the matrix products of its forward passes over the
evaluation rows, at the fastest float32 matrix-product rate this machine reaches.

    python bench/scoring_floor.py MODEL.pt2 [--eval-tokens N]     # prints one JSON object

The model is loaded as the evaluator loads it (experiment/evaluate.py), the rows are the evaluator's
(`eval_rows("val", N)`), and torch's FLOP counter counts one batch's matrix products and attention (the
elementwise work, the softmax and the cross-entropy are not counted: the floor is below what any kernel could
do). The rate is the best of a few plain products timed here in the evaluator's precision (its autocast:
bfloat16 on a CPU with AMX or AVX512-BF16, float32 elsewhere): the model's head (a batch's positions
by its width, times its width by the vocabulary) and a large square one. The throughput benchmark runs this on
its last iteration's model, so that a target the machine cannot reach at any kernel speed says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiment"


def matmul_rate(m: int, k: int, n: int, seconds: float = 0.5) -> float:
    """GFLOP/s of an (m, k) by (k, n) float32 product, the best of repeated timings over about `seconds`."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(2):
        a @ b
    best, spent = math.inf, 0.0
    while spent < seconds:
        started = time.perf_counter()
        a @ b
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
    return 2 * m * k * n / best / 1e9


def measure(model_path: Path, eval_tokens: int) -> dict[str, Any]:
    sys.path.insert(0, str(EXPERIMENT))
    import evaluate  # the locked evaluator's own loader and rows
    import prepare
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    program = evaluate.load_program(model_path)
    model, fixed = evaluate.as_module(program)
    batch = fixed or prepare.eval_batch_size(torch.device("cpu"))
    rows = evaluate.eval_rows("val", eval_tokens)
    x = rows[:batch, :-1]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        logits = model(x)
    batches = math.ceil(len(rows) / batch)
    positions, vocab = batch * x.size(1), int(logits.size(-1))
    width = _head_width(program, vocab)
    with evaluate.eval_autocast(torch.device("cpu")):  # the evaluator's precision: bfloat16 where the CPU has it
        rates = {"head": matmul_rate(positions, width, vocab) if width else None,
                 "square": matmul_rate(2048, 2048, 2048)}  # fmt: skip
        precision = "bfloat16" if torch.is_autocast_enabled("cpu") else "float32"
    best = max(r for r in rates.values() if r)
    gflop = counter.get_total_flops() * batches / 1e9
    return {"gflop": round(gflop, 2), "rows": len(rows), "batch": batch, "batches": batches, "head_width": width,
            "matmul_gflops": {k: round(v, 1) if v else None for k, v in rates.items()},
            "floor_s": round(gflop / best, 3), "threads": torch.get_num_threads(), "precision": precision}  # fmt: skip


def _head_width(program: Any, vocab: int) -> int | None:
    """The model's width at its head: the other side of its largest weight with a vocabulary-sized side."""
    shapes = [tuple(t.shape) for t in program.state_dict.values() if getattr(t, "dim", lambda: 0)() == 2]
    heads = [s for s in shapes if vocab in s]
    if not heads:
        return None
    shape = max(heads, key=lambda s: s[0] * s[1])
    return int(shape[1] if shape[0] == vocab else shape[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an exported model (model.pt2), as a run hands it over")
    p.add_argument("--eval-tokens", type=int, default=40 * 524288, help="validation tokens scored (the config's)")
    args = p.parse_args(argv)
    print(json.dumps(measure(args.model, args.eval_tokens)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
