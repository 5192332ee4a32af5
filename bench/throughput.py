"""Benchmark 2, loop throughput: experiments per hour of machine time against the limit 3600 / budget.

An iteration is everything from one run_experiment call to the next: the server's bookkeeping before the
process starts, interpreter start-up and exit, the script's own set-up and evaluation (total_seconds -
training_seconds), training_seconds, the server's bookkeeping after, and the keep/discard call.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from labrepo import PYTHON, BenchRepo, ExitWatcher, Stamp, base_env, default_dataset, real_repo, tiny_dataset
from mcp import Client
from report import summarize
from session import checked, decide

TARGET_PERCENT = 95.0
ORIGINAL_PERCENT = 100 * 300 / 326  # the original: a 300 s budget in about 326 s per experiment on an H100
PHASES = [
    "server_before",
    "interpreter",
    "setup_and_eval",
    "training",
    "interpreter_exit",
    "server_after",
    "decision",
    "client_gap",
]


def _iteration(run: dict[str, Any], decision_s: float, cycle: float, stamps: list[Stamp],
               started: float, ended: float) -> dict[str, float]:  # fmt: skip
    training = float(run.get("training_seconds") or math.nan)
    total = float(run.get("total_seconds") or math.nan)
    first = stamps[0] if stamps else Stamp(0, math.nan, math.nan)
    phases = {"server_before": first.start - started, "interpreter": (first.end - first.start) - total,
              "setup_and_eval": total - training, "training": training, "interpreter_exit": first.gone - first.end,
              "server_after": ended - first.gone, "decision": decision_s}  # fmt: skip
    phases["client_gap"] = cycle - sum(phases.values())
    return {**phases, "cycle": cycle}


async def measure(repo: BenchRepo, iterations: int) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    async with Client(repo.server_params()) as client:
        pending: tuple[dict[str, Any], float, list[Stamp], float, float] | None = None
        for i in range(iterations + 1):
            started = time.time()
            if pending is not None:  # the previous iteration ends where this one's call starts
                rows.append(_iteration(pending[0], pending[1], started - pending[3], pending[2], pending[3],
                                       pending[4]))  # fmt: skip
            if i == iterations:
                break
            watcher = ExitWatcher(repo)
            run = await checked(client, "run_experiment", description=f"throughput {i}")
            stamps = watcher.stop()
            decision = await decide(client, run)
            pending = (run.data, decision.seconds, stamps, run.started, run.ended)
    return rows


def import_seconds(repeats: int) -> dict[str, float]:
    """A fresh interpreter importing torch and numpy: the fixed start-up cost every experiment pays."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([PYTHON, "-c", "import torch, numpy"], env=base_env(), check=True)
        times.append(time.perf_counter() - t0)
    return summarize(times)


def report(rows: list[dict[str, float]], budget: float) -> dict[str, Any]:
    figures = {key: summarize([r[key] for r in rows]) for key in [*PHASES, "cycle"]}
    percent = summarize([100 * budget / r["cycle"] for r in rows])
    per_hour = summarize([3600 / r["cycle"] for r in rows])
    return {"budget_s": budget, "iterations": len(rows), "limit_per_hour": 3600 / budget,
            "experiments_per_hour": per_hour, "percent_of_limit": percent, **figures,
            "original_percent": ORIGINAL_PERCENT, "target_percent": TARGET_PERCENT,
            "met": percent["median"] >= TARGET_PERCENT, "rows": rows}  # fmt: skip


def run(quick: bool, iterations: int | None = None, budget: float | None = None) -> dict[str, Any]:
    """Quick: a tiny model on a tiny byte-level dataset; full: the CPU default model on the default data."""
    budget = budget or (1.0 if quick else 60.0)
    iterations = iterations or (1 if quick else 3)
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        data = tiny_dataset(work / "data") if quick else default_dataset()
        repo = real_repo(work / "repo", data, budget, tiny=quick, eval_tokens=40 * 524288)
        rows = anyio.run(measure, repo, iterations)
        result = report(rows, budget)
        result["dataset"] = data.get("AUTORESEARCH_DATASET", "default (prepare.py with no arguments)")
        result["model"] = "tiny" if quick else "the CPU default of train.py"
        result["import_torch_s"] = import_seconds(1 if quick else 3)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
