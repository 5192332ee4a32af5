"""Benchmark 1, loop overhead: run_experiment over real stdio against the same command run by hand.

Pairs are interleaved (served, direct, served, direct, ...) after one warm-up pair that is not counted, so
slow drifts of a shared machine hit both sides alike; the added time is taken pair by pair.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from labrepo import BenchRepo, ExitWatcher, Stamp, fake_repo, real_repo, tiny_dataset
from mcp import Client
from report import summarize
from session import checked, decide

TARGET_ADDED_S = 0.3


def _phases(stamps: list[Stamp], started: float, ended: float) -> dict[str, float]:
    """before: until the interpreter's first line; inside: to its atexit; exit: interpreter teardown until
    the process is gone; after: from then until the caller has the result."""
    if not stamps:
        return {"before": math.nan, "inside": math.nan, "exit": math.nan, "after": math.nan}
    first = stamps[0]
    return {
        "before": first.start - started,
        "inside": first.end - first.start,
        "exit": first.gone - first.end,
        "after": ended - first.gone,
    }


async def _pair(client: Client, repo: BenchRepo, tree: Path, i: int) -> dict[str, float]:
    watcher = ExitWatcher(repo)
    run = await checked(client, "run_experiment", description=f"overhead pair {i}",
                        duplicate_reason="the benchmark repeats the same code")  # fmt: skip
    served = _phases(watcher.stop(), run.started, run.ended)
    decision = await decide(client, run)
    watcher = ExitWatcher(repo)
    started = time.time()
    direct_s = await anyio.to_thread.run_sync(repo.run_direct, tree)
    direct = _phases(watcher.stop(), started, started + direct_s)
    return {"served": run.seconds, "direct": direct_s, "added": run.seconds - direct_s, "decision": decision.seconds,
            **{f"served_{k}": v for k, v in served.items()}, **{f"direct_{k}": v for k, v in direct.items()},
            "status_ok": float(run.data.get("status") == "ok")}  # fmt: skip


async def measure(repo: BenchRepo, runs: int, warmup: bool = True) -> dict[str, Any]:
    tree = repo.export()
    pairs = []
    try:
        async with Client(repo.server_params()) as client:
            if warmup:  # page cache, first imports
                await _pair(client, repo, tree, 0)
            for i in range(1, runs + 1):
                pairs.append(await _pair(client, repo, tree, i))
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    figures = {key: summarize([p[key] for p in pairs]) for key in pairs[0]}
    ratio = figures["served"]["median"] / figures["direct"]["median"]
    return {"budget_s": repo.budget, "runs": runs, **figures, "ratio": ratio,
            "target_added_s": TARGET_ADDED_S, "met": figures["added"]["median"] < TARGET_ADDED_S}  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    runs, warmup = (1, False) if quick else (10, True)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    try:
        sleep_budget = 0.5 if quick else 2.0
        sleep = anyio.run(measure, fake_repo(work / "sleep", "sleep", sleep_budget), runs, warmup)
        data = tiny_dataset(work / "data")
        train_budget = 1.0 if quick else 2.0
        real = real_repo(work / "train", data, train_budget, tiny=True, eval_tokens=4096)
        train = anyio.run(measure, real, runs, warmup)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"sleep": sleep, "train": train}
