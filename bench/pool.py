"""Benchmark 7, parallel slots: experiments per hour with 1, 2 and 4 slots of a fixed-length experiment, as a
ratio to N times the single-slot rate (target >= 0.95 N), locally and through Ray, and what Ray adds to one run.

The experiment is the test suite's fake in "sleep" mode: it sleeps through its budget and uses almost no CPU,
so on 2 cores the ratio measures the server's parallelism, not the machine. A wave starts N candidates (edits
against the best, as run_experiment(edits=...) does), drives each to its end in a thread of its own and
discards it there, as N tool calls would; the wave's wall time runs from the first start to the last decision,
so the server's start and record work counts. Waves of every (runner, N) are interleaved round by round, after
one warm-up wave each that is not counted, so a load that comes and goes on the shared machine falls on all.

    .venv/bin/python bench/pool.py [--budget 5] [--waves 5] [--quick] [--out FILE]
    .venv/bin/python bench/pool.py --growth 300 --out bench/out/pool_growth.json   # start_run vs history size
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labrepo import GIT_ENV, fake_repo, git
from report import summarize

from server.config import load_config
from server.lab.edits import Edit
from server.lab.loop import Lab
from server.store.history import RunRecord

SLOTS = (1, 2, 4)
TARGET = 0.95  # of N times the single-slot rate
RAY_CLUSTER = {"num_cpus": 4, "num_gpus": 4, "object_store_memory": 100_000_000}  # logical: Ray's bookkeeping


@dataclass
class Pool:
    """One repository with `slots` slots on one runner, and the waves measured on it."""

    runner: str
    slots: int
    lab: Lab
    made: int = 0  # candidates started so far: each gets code of its own (duplicates are refused)
    waves: list[dict[str, float]] = field(default_factory=list)

    def candidate(self) -> list[Edit]:
        """A worse metric each time: distinct code, discarded after its run."""
        self.made += 1
        return [Edit("METRIC = 1.0", f"METRIC = {1.0 + self.made * 1e-4:.4f}")]


def make_pool(work: Path, runner: str, slots: int, budget: float, ray_config: str = "") -> Pool:
    """The sleep experiment in a fresh repository with `slots` slots, its baseline run and kept; ray_config:
    more keys for runner = "ray" (the cluster's address, the resources runs ask for)."""
    repo = fake_repo(work / f"{runner}-{slots}", "sleep", budget)
    config = repo.path / "autoresearch.toml"
    ray = 'runner = "ray"\nray_num_gpus = 1\nray_num_cpus = 1\n' + ray_config
    extra = f"slots = {slots}\n" + (ray if runner == "ray" else "")
    config.write_text(config.read_text().replace("[autoresearch]\n", f"[autoresearch]\n{extra}"))
    git(repo.path, "commit", "-qam", f"{slots} slot(s) on {runner}")
    lab = Lab(repo.path, load_config(repo.path))
    lab.keep(lab.run("baseline", duplicate_reason="the tag's first run").id)
    return Pool(runner, slots, lab)


def wave(pool: Pool) -> dict[str, float]:
    """N candidates started, each driven and discarded in a thread of its own; the wave's figures."""
    lab, done, ends = pool.lab, {}, {}
    began = time.perf_counter()
    starts = []
    actives = []
    for i in range(pool.slots):
        t0 = time.perf_counter()
        actives.append(lab.start_run(f"{pool.runner} wave {len(pool.waves)} candidate {i}", edits=pool.candidate()))
        starts.append(time.perf_counter() - t0)
    started = time.perf_counter() - began

    def finish(index: int) -> None:
        record = lab.drive(actives[index])
        ends[index] = time.perf_counter() - began
        done[index] = lab.discard(record.id)

    threads = [threading.Thread(target=finish, args=(i,)) for i in range(pool.slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    return _figures(pool, seconds, started, starts, max(ends.values()), list(done.values()))


def _figures(pool: Pool, seconds: float, started: float, starts: list[float], driven: float,
             runs: list[RunRecord]) -> dict[str, float]:  # fmt: skip
    ok = sum(r.status == "ok" for r in runs)
    return {"seconds": seconds, "per_hour": 3600 * ok / seconds, "ok": ok / pool.slots,
            "start_each": max(starts), "all_started": started, "last_recorded": driven,
            "decisions_after": seconds - driven}  # fmt: skip


def measure(pools: list[Pool], waves: int) -> None:
    """One warm-up wave per pool, then `waves` rounds, each a wave of every pool in turn."""
    for round_ in range(waves + 1):
        for pool in pools:
            figures = wave(pool)
            print(f"[pool] round {round_} {pool.runner} x{pool.slots}: " + ", ".join(f"{k} {v:.3f}" for k, v in
                  figures.items()), file=sys.stderr, flush=True)  # fmt: skip
            if round_:
                pool.waves.append(figures)


def summary(pools: list[Pool], budget: float) -> dict[str, Any]:
    """Per runner and N: the figures of its waves, and each wave's rate as a ratio to N times the median
    single-slot rate of the same runner."""
    out: dict[str, Any] = {}
    for pool in pools:
        single = next(p for p in pools if p.runner == pool.runner and p.slots == 1)
        base = summarize([w["per_hour"] for w in single.waves])["median"]
        ratios = [w["per_hour"] / (pool.slots * base) for w in pool.waves]
        figures = {key: summarize([w[key] for w in pool.waves]) for key in pool.waves[0]}
        ratio = summarize(ratios)
        out.setdefault(pool.runner, {})[str(pool.slots)] = {
            **figures, "ratio": ratio, "limit_per_hour": 3600 * pool.slots / budget,
            "met": ratio["median"] >= TARGET, "runs_in_history": len(pool.lab.history.runs()),
            "waves": pool.waves}  # fmt: skip
    return out


def ray_overhead(work: Path, pairs: int, budget: float) -> dict[str, Any]:
    """bench/ray_bench.py's sleep case: the same Lab runs the same run with LocalRunner and RayRunner in pairs."""
    import ray_bench

    return ray_bench.run_case("sleep", work / "ray-overhead", pairs, budget)


def runners() -> list[str]:
    """Local always; Ray where it is installed (pip install -e '.[ray]')."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return ["local"]
    return ["local", "ray"]


def run(quick: bool, budget: float | None = None, waves: int | None = None) -> dict[str, Any]:
    """Quick: 1 and 2 slots, a 1 s budget, one counted wave; full: 1, 2 and 4 slots, 5 s, five waves."""
    budget = budget or (1.0 if quick else 5.0)
    waves = waves or (1 if quick else 5)
    slots = SLOTS[:2] if quick else SLOTS
    os.environ.update(GIT_ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-pool-"))
    kinds = runners()
    try:
        if "ray" in kinds:
            from server.run.ray_runner import connect

            connect(**RAY_CLUSTER)
        pools = [make_pool(work, kind, n, budget) for n in slots for kind in kinds]
        measure(pools, waves)
        result: dict[str, Any] = {"budget_s": budget, "waves": waves, "target_ratio": TARGET,
                                  "load_average": list(os.getloadavg()), "pool": summary(pools, budget)}  # fmt: skip
        if "ray" in kinds:
            result["ray_cluster"] = RAY_CLUSTER
            result["ray_overhead"] = ray_overhead(work, 1 if quick else 5, budget)
        else:
            result["ray_skipped"] = "Ray is not installed: pip install -e '.[ray]'"
        return result
    finally:
        _shutdown_ray()
        shutil.rmtree(work, ignore_errors=True)


def _shutdown_ray() -> None:
    """The cluster this part started goes with it (run.py runs the other parts in the same process)."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def growth(runs: int, every: int = 50) -> list[dict[str, float]]:
    """A diagnostic, not part of the suite: start_run's seconds as the history grows (one slot, the fake in
    "ok" mode, each run discarded), the median of each `every` starts, and one history read at that size."""
    os.environ.update(GIT_ENV)
    work = Path(tempfile.mkdtemp(prefix="bench-pool-growth-"))
    try:
        pool, starts, out = make_pool(work, "local", 1, 0.01), [], []
        for i in range(1, runs + 1):
            t0 = time.perf_counter()
            active = pool.lab.start_run(f"growth {i}", edits=pool.candidate())
            starts.append(time.perf_counter() - t0)
            pool.lab.discard(pool.lab.drive(active).id)
            if i % every == 0:
                t0 = time.perf_counter()
                pool.lab.history.runs()
                out.append({"runs": i + 1, "start_run_s": summarize(starts[-every:])["median"],
                            "history_runs_s": time.perf_counter() - t0, "load": os.getloadavg()[0]})  # fmt: skip
                print(f"[pool] growth {out[-1]}", file=sys.stderr, flush=True)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budget", type=float)
    parser.add_argument("--waves", type=int)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--growth", type=int, help="instead: start_run's time as the history grows to this many runs")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "pool.json")
    args = parser.parse_args(argv)
    if args.growth:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(growth(args.growth), indent=2) + "\n")
        return 0
    result = run(args.quick, args.budget, args.waves)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: {n: v["ratio"] for n, v in r.items()} for k, r in result["pool"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
