"""Benchmark: the noise floor of the default experiment and what the keep gate makes of it.

Runs the default train.py (CPU size, Shakespeare BPE-8192, prepared in a private cache) through the server's
own Lab as a tag's first run, which repeats it with seeds 42, 43, ...: the same code, only the seed differs.
Reports the same-code spread of val_bpb, the smallest gain the gate accepts at the default settings, and the
floor's cost in runs per night. Writes JSON and a Markdown section.

    .venv/bin/python bench/noise.py [--seeds 5] [--budget 60] [--out bench/noise.json] [--md bench/noise.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.config import Config, load_config  # noqa: E402
from server.lab.loop import Lab  # noqa: E402
from server.lab.noise import Group, noise_band, t_quantile  # noqa: E402

NIGHT_S = 8 * 3600  # one night of the loop
DEFAULTS = Config()  # noise_seeds, confidence as a fresh autoresearch.toml has them


def make_repo(work: Path, seeds: int, budget: float) -> Path:
    """experiment/ in a fresh repository; the config as the default one but for the budget and the seeds."""
    repo = work / "repo"
    shutil.copytree(ROOT / "experiment", repo / "experiment", ignore=shutil.ignore_patterns("__pycache__", "output"))
    env = {"AUTORESEARCH_CACHE": str(work / "cache"), "AUTORESEARCH_DEVICE": "cpu"}
    lines = ["[autoresearch]", 'tag = "noise"', f"time_budget = {budget:g}", f"noise_seeds = {seeds}",
             "", "[autoresearch.env]", *(f'{k} = "{v}"' for k, v in env.items()), ""]  # fmt: skip
    (repo / "autoresearch.toml").write_text("\n".join(lines))
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=git_env())
    subprocess.run([sys.executable, "-m", "server.dataset"], cwd=ROOT, check=True,
                   env={**os.environ, **env}, capture_output=True)  # fmt: skip
    return repo


def git_env() -> dict[str, str]:
    names = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com", "GIT_COMMITTER_NAME": "bench",
             "GIT_COMMITTER_EMAIL": "bench@example.com"}  # fmt: skip
    return {**os.environ, **names}


def figures(run: dict[str, Any], seeds: int) -> dict[str, Any]:
    """The spread, the gate's smallest accepted gain at the defaults, and the floor's cost per night."""
    values = [s["metric"] for s in run["repeats"]]
    group = Group.of(values)
    walls = [s["wall_seconds"] + (s.get("eval_seconds") or 0.0) for s in run["repeats"]]
    per_run = statistics.fmean(walls)
    default_n = DEFAULTS.noise_seeds
    band_default = noise_band([Group(default_n, group.mean, group.std)], default_n, 1, DEFAULTS.confidence)
    band_measured = noise_band([group], seeds, 1, DEFAULTS.confidence)
    runs_per_night = NIGHT_S / per_run
    return {
        "seeds": [s["seed"] for s in run["repeats"]], "val_bpb": values,
        "steps": [s.get("steps") for s in run["repeats"]], "load_average": os.getloadavg(),
        "mean": group.mean, "std": group.std,
        "range": max(values) - min(values), "wall_seconds": walls, "seconds_per_run": per_run,
        "gate_default": {"noise_seeds": default_n, "confidence": DEFAULTS.confidence,
                         "t": t_quantile(DEFAULTS.confidence, default_n - 1), "smallest_gain": band_default,
                         "in_std": band_default / group.std if group.std else math.nan},
        "gate_measured_floor": {"n": seeds, "t": t_quantile(DEFAULTS.confidence, seeds - 1),
                                "smallest_gain": band_measured},
        "runs_per_night": runs_per_night, "floor_runs_at_tag_start": default_n - 1,
        "floor_share_of_night": (default_n - 1) / runs_per_night,
        "near_miss_repeat_runs": 2,
    }  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    f = result["figures"]
    g, m, n = f["gate_default"], f["gate_measured_floor"], len(f["seeds"])
    rows = "\n".join(f"| {s} | {v:.6f} | {st} | {w:.1f} |" for s, v, st, w in zip(f["seeds"], f["val_bpb"],
                      f["steps"], f["wall_seconds"], strict=True))  # fmt: skip
    return f"""## Noise floor of the default experiment

Written by `{result["command"]}` in {result["seconds"]:.0f} s at commit `{result["commit"]}` ({result["machine"]}).
The default train.py at a {result["budget"]:g} s budget on CPU, Shakespeare BPE-8192, run by the server's Lab as
a tag's first run with {len(f["seeds"])} seeds: the same code, only AUTORESEARCH_SEED differs. Load average
(1, 5, 15 min) at the end: {", ".join(f"{x:.1f}" for x in f["load_average"])}: on a shared machine the steps that fit in
the budget vary too, and that is part of the noise the gate must see.

| seed | val_bpb | steps | run + evaluation s |
|---|---|---|---|
{rows}

- same-code spread: mean {f["mean"]:.6f}, sample std **{f["std"]:.6f}** bpb, range {f["range"]:.6f} (n={n})
- smallest gain the gate accepts at the defaults (floor from noise_seeds={g["noise_seeds"]} seeds, one-seed
  candidate, {g["confidence"]:.0%} one-sided t-test, t={g["t"]:.3f}): **{g["smallest_gain"]:.6f}** bpb
  ({g["in_std"]:.2f} std); with the floor from all {m["n"]} seeds (t={m["t"]:.3f}): {m["smallest_gain"]:.6f} bpb
- cost: {f["seconds_per_run"]:.0f} s per run, so {f["runs_per_night"]:.0f} runs in an 8-hour night; the floor at tag
  start costs {f["floor_runs_at_tag_start"]} extra runs ({100 * f["floor_share_of_night"]:.1f}% of the night), and each
  near miss re-run with repeats=2 costs {f["near_miss_repeat_runs"]} more
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=60.0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "noise.json"))
    parser.add_argument("--md", default=str(ROOT / "bench" / "noise.md"))
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="autoresearch-noise-"))
    try:
        repo = make_repo(work, args.seeds, args.budget)
        os.environ.update(git_env())
        run = Lab(repo, load_config(repo)).run("baseline").model_dump(mode="json")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps({"raw_run": run}, indent=2) + "\n")  # kept if what follows fails
    if run["status"] != "ok":
        raise SystemExit(f"the baseline failed: {run['status']}: {run['reason']}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {"command": " ".join(["python bench/noise.py", *sys.argv[1:]]), "seconds": time.time() - started,
              "commit": commit.stdout.strip(), "budget": args.budget, "machine": f"{os.cpu_count()} cores, CPU",
              "figures": figures(run, args.seeds)}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    Path(args.md).write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
