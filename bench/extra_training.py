"""Benchmark: what the most training the contract lets a run take beyond its budget buys, against the gate.

docs/CONTRACT.md bounds what a run can gain outside the rules at a 60 s CPU budget: the work outside its timed
window the baseline's allowance leaves free, plus what the server's clock lets the window run past the budget
(the tolerance, a second, and a last step counted up to both). Its first figure was a slope between a 30 s
and a 60 s run of one seed each. This measures the gain itself: for each seed, the default experiment/train.py
trained at the budget and at the budget plus that extra (its schedule stretched over the longer time, the best
use of extra seconds a run could make), both scored by the locked evaluator, in alternating order. The gain is
the paired difference; its one-sided 95% upper bound is set against the keep gate's smallest accepted gain
at the default settings (server/lab/noise.py's noise_band: a one-seed run against a three-seed baseline, at
95%), with the spread of these runs' seeds at the budget.

    .venv/bin/python bench/extra_training.py [--pairs 6] [--budget 60] [--outside 1.62] [--out FILE]

--outside is the free outside work in seconds of training (docs/CONTRACT.md measures it through the server:
the baseline's CPU outside its window, a quarter more and 2 CPU seconds, at its CPU seconds per second of
training); the inside part is the server's own allowed_training() with the longest last step it counts.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from false_refusal import evaluate, train
from labrepo import ROOT, default_dataset

from server.config import Config
from server.lab import noise
from server.run.outcome import allowed_training


def inside_extra(budget: float) -> float:
    """Seconds past the budget the server's clock accepts at most: a last step as long as it counts."""
    config = Config.model_validate({"time_budget": budget})
    return allowed_training(config, math.inf) - budget


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6, help="seeds, each trained at both budgets")
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--outside", type=float, default=1.62, help="free outside work, in seconds of training")
    parser.add_argument("--eval-tokens", type=int, default=40 * 524288, help="the server's default (the whole split)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "extra_training.json")
    args = parser.parse_args(argv)
    extra = round(args.outside + inside_extra(args.budget), 3)
    data_env = default_dataset()
    work = Path(tempfile.mkdtemp(prefix="bench-extra-training-"))
    started = time.time()
    pairs: list[dict[str, Any]] = []
    try:
        for i in range(args.pairs):
            seed = 1000 + i
            order = [args.budget, args.budget + extra][:: 1 if i % 2 == 0 else -1]
            bpb: dict[float, float | None] = {}
            for budget in order:
                name = f"seed{seed}-{budget:g}s"
                model, tail = train(work, data_env, name, {}, False, seed, budget)
                if model is None:
                    raise SystemExit(f"{name} did not train: {tail}")
                scored = evaluate(work / name, model, data_env, False, False, "val", args.eval_tokens)
                bpb[budget] = scored["bpb"] if scored["status"] == "ok" else None
                shutil.rmtree(work / name, ignore_errors=True)
            base, longer = bpb[args.budget], bpb[args.budget + extra]
            gain = None if base is None or longer is None else base - longer
            pairs.append({"seed": seed, "order": order, "at_budget": base, "with_extra": longer, "gain": gain})
            print(f"[extra] seed {seed}: {base} at {args.budget:g} s, {longer} at {args.budget + extra:g} s, "
                  f"gain {gain}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = report(pairs, args.budget, extra, args.outside)
    given = sys.argv[1:] if argv is None else argv
    result.update(command=" ".join(["python bench/extra_training.py", *given]), seconds=round(time.time() - started),
                  commit=_commit(), machine=platform.processor() or platform.machine())  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "pairs"}, indent=1))
    return 0


def report(pairs: list[dict[str, Any]], budget: float, extra: float, outside: float) -> dict[str, Any]:
    gains = [p["gain"] for p in pairs if p["gain"] is not None]
    at_budget = [p["at_budget"] for p in pairs if p["at_budget"] is not None]
    n = len(gains)
    mean = statistics.fmean(gains) if gains else math.nan
    sd = statistics.stdev(gains) if n > 1 else math.nan
    upper = mean + noise.t_quantile(0.95, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    config = Config.model_validate({})  # the default gate: one seed against noise_seeds seeds of this spread
    spread = statistics.stdev(at_budget) if len(at_budget) > 1 else math.nan
    seeds = config.noise_seeds
    gate = noise.t_quantile(config.confidence, seeds - 1) * spread * math.sqrt(1 / seeds + 1)  # noise_band's formula
    return {"budget_s": budget, "extra_s": extra, "outside_s": outside, "inside_s": round(extra - outside, 3),
            "pairs": pairs, "n": n, "gain_mean": mean, "gain_sd": sd, "gain_upper_95": upper,
            "seed_sd_at_budget": spread,
            "gate_one_seed_vs_baseline": gate, "baseline_seeds": config.noise_seeds,
            "confidence": config.confidence, "below_gate": bool(upper < gate)}  # fmt: skip


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    return done.stdout.strip() + (" (uncommitted changes)" if dirty.strip() else "")


if __name__ == "__main__":
    raise SystemExit(main())
