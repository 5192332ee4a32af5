"""What the Ray backend adds to one run: the same Lab runs the same experiment with LocalRunner and with
RayRunner (a Ray cluster started on this machine), in interleaved pairs after one warm-up pair that is not
counted, each run discarded after it ends; the added time is taken pair by pair.

    .venv/bin/python bench/ray_bench.py [--pairs 5] [--budget 2] [--cases sleep,train] [--out FILE]

sleep: the test suite's fake experiment sleeping through its budget (one process per run, self-reported).
train: the real experiment/ (tiny model, CPU, a byte-level dataset): a training run and its evaluator, so
two Ray tasks per run. Figures are `median (min–max, n)` seconds; the machine is shared, compare medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from labrepo import GIT_ENV, fake_repo, real_repo, tiny_dataset
from report import fmt, summarize, table

from server.config import load_config
from server.lab.loop import Lab
from server.run.ray_runner import RayExecution, RayRunner, connect
from server.run.runner import LocalRunner, Runner, RunSpec

ROOT = Path(__file__).resolve().parents[1]


class Recording(RayRunner):
    """A RayRunner that keeps its executions, for their start and streaming figures."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[RayExecution] = []

    def start(self, spec: RunSpec) -> RayExecution:
        execution = super().start(spec)
        self.seen.append(execution)
        return execution


def timed_run(lab: Lab, runner: Runner, description: str) -> tuple[float, str]:
    lab.runner = runner
    began = time.perf_counter()
    run = lab.run(description, duplicate_reason="the benchmark repeats the same code")
    seconds = time.perf_counter() - began
    lab.discard()
    return seconds, run.status


def measure(lab: Lab, pairs: int) -> dict[str, Any]:
    local, ray = LocalRunner(), Recording()
    rows = []
    for i in range(pairs + 1):  # pair 0 warms up (imports, page cache, Ray's worker pool) and is not counted
        local_s, local_status = timed_run(lab, local, f"local {i}")
        first = len(ray.seen)
        ray_s, ray_status = timed_run(lab, ray, f"ray {i}")
        tasks = ray.seen[first:]
        to_start = sum((t.started or 0.0) for t in tasks)  # submitted until the worker said the run started
        delays = [d for t in tasks for d in t.delays]
        row = {"local": local_s, "ray": ray_s, "added": ray_s - local_s, "to_start": to_start,
               "stream_delay_median": sorted(delays)[len(delays) // 2] if delays else float("nan"),
               "stream_delay_max": max(delays, default=float("nan")), "tasks": len(tasks),
               "ok": float(local_status == ray_status == "ok")}  # fmt: skip
        print(f"[ray_bench] pair {i}: {local_status}/{ray_status} " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()),
              file=sys.stderr)  # fmt: skip
        if i:
            rows.append(row)
    return {key: summarize([row[key] for row in rows]) for key in rows[0]}


def run_case(case: str, work: Path, pairs: int, budget: float) -> dict[str, Any]:
    if case == "sleep":
        repo = fake_repo(work / case, "sleep", budget)  # the fake prints its own metric: self-reported
    else:
        repo = real_repo(work / case, tiny_dataset(work / "data"), budget, tiny=True, eval_tokens=4096)
    lab = Lab(repo.path, load_config(repo.path), runner=LocalRunner())
    return {"budget_s": budget, **measure(lab, pairs)}


def markdown(results: dict[str, Any]) -> str:
    rows = [[case, fmt(r["local"]), fmt(r["ray"]), fmt(r["added"]), fmt(r["to_start"]),
             fmt(r["stream_delay_median"], 4), fmt(r["stream_delay_max"], 4), f"{r['tasks']['median']:g}"]
            for case, r in results["cases"].items()]  # fmt: skip
    header = ["experiment", "local s", "ray s", "added s (pairwise)", "submit to start s", "stream delay s (median)",
              "stream delay s (max)", "tasks per run"]  # fmt: skip
    return table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0)
    parser.add_argument("--cases", default="sleep,train")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ray" / "ray_bench.json")
    args = parser.parse_args(argv)
    os.environ.update(GIT_ENV)
    connect(num_cpus=2, num_gpus=2, object_store_memory=200_000_000)  # GPUs are logical: Ray's bookkeeping only
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        cases = {case: run_case(case, work, args.pairs, args.budget) for case in args.cases.split(",")}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {"pairs": args.pairs, "load_average": os.getloadavg(), "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
