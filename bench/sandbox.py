"""Benchmark 6, the cost of the sandbox and of the server's own measurement.

- sandbox: the same quick experiment through the Lab, sandboxed (bubblewrap) and unsandboxed, in
  interleaved pairs after a warm-up pair; the added time is taken pair by pair (target under 0.3 s).
- verification: for the real experiment, what handing the model over (torch.export) and scoring it (the
  warm evaluator) add to a run, from the server's record of each run (its clock on the marker lines).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from labrepo import fake_repo, real_repo, tiny_dataset
from report import summarize

from server.config import load_config
from server.lab.loop import Lab
from server.run.sandbox import bwrap_path

TARGET_ADDED_S = 0.3


def _timed(lab: Lab, description: str) -> tuple[float, str]:
    started = time.perf_counter()
    active = lab.start_run(description, duplicate_reason="the benchmark repeats the same code")
    run = lab.finish_run(active)
    seconds = time.perf_counter() - started
    lab.discard()
    return seconds, run.status


def sandbox_pairs(work: Path, pairs: int) -> dict[str, Any]:
    repo = fake_repo(work / "fake", "ok", 1.0, sandbox="bwrap")
    config = load_config(repo.path)
    unsandboxed = config.model_copy(update={"sandbox": "off"})
    labs = {"sandboxed": Lab(repo.path, config), "unsandboxed": Lab(repo.path, unsandboxed)}
    rows = []
    for i in range(pairs + 1):
        row = {}
        for name, lab in labs.items():
            row[name], status = _timed(lab, f"{name} {i}")
            row[f"{name}_ok"] = float(status == "ok")
        row["added"] = row["sandboxed"] - row["unsandboxed"]
        if i:  # the first pair warms the page cache
            rows.append(row)
    figures = {key: summarize([r[key] for r in rows]) for key in rows[0]}
    return {**figures, "pairs": pairs, "target_added_s": TARGET_ADDED_S,
            "met": figures["added"]["median"] < TARGET_ADDED_S}  # fmt: skip


def verification(work: Path, runs: int, budget: float, tiny: bool) -> dict[str, Any]:
    data = tiny_dataset(work / "data") if tiny else {}
    repo = real_repo(work / "real", data, budget, tiny=tiny, eval_tokens=40 * 524288)
    lab = Lab(repo.path, load_config(repo.path))
    records = []
    for i in range(runs):
        active = lab.start_run(f"verification {i}", duplicate_reason="the benchmark repeats the same code")
        records.append(lab.finish_run(active))
        lab.discard()
    keys = ("startup", "training", "handover", "evaluation")
    figures = {k: summarize([r.timing.get(k, float("nan")) for r in records]) for k in keys}
    added = [r.timing.get("handover", float("nan")) + r.timing.get("evaluation", float("nan")) for r in records]
    return {**figures, "export_plus_evaluation": summarize(added),
            "wall": summarize([r.wall_seconds or 0.0 for r in records]),
            "ok": summarize([float(r.status == "ok") for r in records]), "budget_s": budget,
            "model": "tiny" if tiny else "the CPU default of train.py", "runs": runs}  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    if bwrap_path() is None:
        return {"skipped": "bubblewrap is not installed (apt-get install bubblewrap)"}
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        pairs = sandbox_pairs(work, 2 if quick else 10)
        checked = verification(work, 1 if quick else 3, 1.0 if quick else 10.0, tiny=quick)
        return {"sandbox": pairs, "verification": checked}
    finally:
        shutil.rmtree(work, ignore_errors=True)
