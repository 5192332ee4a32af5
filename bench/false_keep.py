"""Benchmark: how often the keep gate keeps a change that changes nothing (a false keep).

A night's worst case: every idea is a no-op. A temporary repository holds an experiment whose val_bpb is
MU + SIGMA * N(0, 1) with the noise drawn fresh each run (from the OS, not from the seed: the worst case for
the gate, since a re-run on the same seed does not repeat its luck). Through the server's own Lab at the
default gate (noise_seeds, confidence, min_improvement as a fresh autoresearch.toml has them), each night
runs and keeps a baseline, then D no-op changes, each a new program (an unused constant changed: a new
fingerprint), each decided by a policy. Many nights, because within one night every decision shares that
night's baseline and noise floor: one night's rate depends on how lucky its baseline was.

    gate      keep when the gate passes, else discard
    program   program.md's: a near miss is measured on 2 more seeds (run_experiment(repeats=2), the file
              unchanged), then keep when the gate passes, else discard

The figure is the fraction kept over all nights (target at most 1 - confidence) with its 95% Wilson interval,
the false keeps expected in a night of 100 decisions, and the worst night. A false keep moves the best, as it
would in a night.

    .venv/bin/python bench/false_keep.py [--nights 40] [--decisions 25] [--out bench/false_keep.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.config import Config, load_config  # noqa: E402
from server.errors import StateError  # noqa: E402
from server.lab.loop import Lab  # noqa: E402

DEFAULTS = Config()
MU, SIGMA = 1.0, 0.01

PREPARE = '''"""The benchmark's locked file: prints the contract's summary block."""


def report(metric):
    print("---")
    print(f"val_bpb: {metric:.6f}")
    print("training_seconds: 0.1")
'''

TRAIN = f"""import random
from prepare import report

NOOP = 0  # changed by every candidate, used by nothing
report({MU} + {SIGMA} * random.SystemRandom().gauss(0.0, 1.0))
"""


def make_repo(work: Path) -> Path:
    repo = work / "repo"
    repo.mkdir(parents=True)
    (repo / "prepare.py").write_text(PREPARE)
    (repo / "train.py").write_text(TRAIN)
    (repo / "autoresearch.toml").write_text(
        "[autoresearch]\n"
        'tag = "false-keep"\neditable = "train.py"\nlocked = ["prepare.py"]\n'
        f'command = ["{sys.executable}", "train.py"]\ncontract = "self-reported"\nsandbox = "off"\n'
        "time_budget = 1\ntimeout = 20\n"
    )  # the gate's settings are left at their defaults
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}  # fmt: skip
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "bench"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)
    return repo


def night(work: Path, policy: str, decisions: int) -> dict[str, int]:
    """One tag: the baseline kept, then `decisions` no-op candidates decided by the policy."""
    lab = Lab(make_repo(work), load_config(work / "repo"))
    try:
        lab.run("baseline")
        lab.keep()
        kept, runs, near = 0, 0, 0
        for i in range(1, decisions + 1):
            lab.write(TRAIN.replace("NOOP = 0", f"NOOP = {i}"))
            run = lab.run(f"no-op {i}")
            runs += 1
            if policy == "program" and lab.judge(run).near_miss:
                near += 1
                run = lab.run(f"no-op {i}, 2 more seeds", repeats=2)  # the pending run gets the seeds
                runs += 2
            try:
                lab.keep(run.id)
                kept += 1
            except StateError:
                lab.discard(run.id)
        return {"kept": kept, "runs": runs, "near_misses": near}
    finally:
        lab.close()


def policy_figures(work: Path, policy: str, nights: int, decisions: int) -> dict[str, Any]:
    each = [night(work / f"{policy}-{n}", policy, decisions) for n in range(nights)]
    kept, total, runs = sum(n["kept"] for n in each), nights * decisions, sum(n["runs"] for n in each)
    return {"policy": policy, "nights": nights, "decisions": total, "kept": kept,
            "runs": runs, "near_misses": sum(n["near_misses"] for n in each),
            "fraction_kept": kept / total, "wilson_95": wilson(kept, total),
            "false_keeps_per_100_decisions": 100 * kept / total, "runs_per_decision": runs / total,
            "worst_night": max(n["kept"] for n in each), "kept_per_night": [n["kept"] for n in each]}  # fmt: skip


def wilson(k: int, n: int, z: float = 1.959964) -> list[float]:
    """The 95% Wilson score interval of a binomial proportion."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def markdown(result: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {r['policy']} | {r['nights']} x {r['decisions'] // r['nights']} | {r['kept']} | "
        f"**{100 * r['fraction_kept']:.1f}%** ({100 * r['wilson_95'][0]:.1f}–{100 * r['wilson_95'][1]:.1f}%) | "
        f"{r['false_keeps_per_100_decisions']:.1f} | {r['worst_night']} of {r['decisions'] // r['nights']} | "
        f"{r['near_misses']} | {r['runs_per_decision']:.2f} |"
        for r in result["policies"]
    )
    return f"""## False keeps: no-op changes through the keep gate

Written by `{result["command"]}` in {result["seconds"]:.0f} s at commit `{result["commit"]}` ({result["machine"]}).
val_bpb = {MU} + {SIGMA}·N(0, 1), the noise drawn fresh each run; the gate at its defaults (noise_seeds
{DEFAULTS.noise_seeds}, confidence {DEFAULTS.confidence}, min_improvement {DEFAULTS.min_improvement}); target: at most
{100 * (1 - DEFAULTS.confidence):.0f}% kept.

| policy | nights x decisions | kept | kept (95% CI) | per 100 decisions | worst night | near misses | runs/decision |
|---|---|---|---|---|---|---|---|
{rows}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=40)
    parser.add_argument("--decisions", type=int, default=25, help="no-op decisions per night")
    parser.add_argument("--policies", default="gate,program")
    parser.add_argument("--out", default=str(ROOT / "bench" / "false_keep.json"))
    parser.add_argument("--md", default=str(ROOT / "bench" / "false_keep.md"))
    args = parser.parse_args()
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="autoresearch-false-keep-"))
    try:
        policies = [policy_figures(work, p, args.nights, args.decisions) for p in args.policies.split(",")]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {"command": "python bench/false_keep.py " + " ".join(sys.argv[1:]), "seconds": time.time() - started,
              "commit": commit.stdout.strip(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "mu": MU, "sigma": SIGMA, "confidence": DEFAULTS.confidence, "noise_seeds": DEFAULTS.noise_seeds,
              "policies": policies}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    Path(args.md).write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
