"""The server's own measurement: the locked evaluator, started from the pinned locked files only, scores the
model a run handed over, in a sandbox of its own that can read the validation data and write one result.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import git

from server.config import Config
from server.errors import LockedFileError
from server.run.isolation import Places, eval_env, eval_view
from server.run.runner import Outcome, Runner, RunSpec
from server.run.summary import EXPORT_ERROR_FILE, MODEL_FILE
from server.store import gitops, pins

EvalStatus = Literal["ok", "bad_model", "failed"]


@dataclass(frozen=True)
class Evaluation:
    """What the evaluator found: a metric, or why there is none."""

    status: EvalStatus
    metric: float | None = None
    reason: str | None = None
    seconds: float | None = None


def handed_over(output: Path) -> tuple[Path | None, str | None]:
    """The model the run handed over, or None and the exporter's reason (None when it never tried)."""
    error = output / EXPORT_ERROR_FILE
    if error.is_file():
        return None, error.read_text(encoding="utf-8", errors="replace").strip()[:400] or "unknown export error"
    model = output / MODEL_FILE
    return (model, None) if model.is_file() else (None, None)


def stage_locked(repo: git.Repo, commit: str, config: Config, pinned: dict[str, str], folder: Path) -> None:
    """Write the locked files of the run's commit into a fresh folder, each checked against its pin."""
    shutil.rmtree(folder, ignore_errors=True)
    for rel in config.locked:
        data = gitops.blob(repo, commit, rel)
        if pins.digest_bytes(data) != pinned.get(rel, pins.digest_bytes(data)):
            raise LockedFileError(f"locked file {rel} in the run's commit differs from its pin; the run is not scored.")
        if data is not None:
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)


def eval_spec(
    config: Config, places: Places, run_dir: Path, model: Path, token: str, split: str
) -> tuple[RunSpec, Path]:
    """The evaluator's process: the locked files' folder as its working directory, sandboxed like the run,
    with a token of its own (the run's sweep of its token must not reach its evaluator)."""
    folder, result_dir, scratch = run_dir / "eval", run_dir / f"eval-{split}", run_dir / f"eval-{split}-tmp"
    for path in (result_dir, scratch):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
    view = eval_view(places, folder, model.parent, result_dir, scratch) if config.sandbox == "bwrap" else None
    argv = [*config.evaluator_argv(model, result_dir / "result.json"), "--split", split]
    spec = RunSpec(argv, folder, eval_env(config, places, scratch), run_dir / f"eval-{split}.log",
                   config.hard_timeout, f"{token}-eval-{split}", config.kill_grace, config.max_log_bytes, view,
                   config.memory_limit_mb, config.max_processes)  # fmt: skip
    return spec, result_dir / "result.json"


def evaluate(runner: Runner, spec: RunSpec, result: Path) -> Evaluation:
    """Run the evaluator to the end and read its one result file."""
    execution = runner.start(spec)
    outcome = None
    while outcome is None:
        outcome = execution.wait(1.0)
    shutil.rmtree(spec.env["HOME"], ignore_errors=True)
    return read_result(result, outcome, spec.log_path)


def read_result(path: Path, outcome: Outcome | None, log_path: Path) -> Evaluation:
    """The evaluator's result file (outcome: how it ended, None while it still runs)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tail = _last_line(log_path)
        if outcome is None:
            return Evaluation("failed", reason=f"the evaluator's result could not be read: {tail}")
        how = "timed out" if outcome.stop == "timeout" else f"ended ({outcome.stop}, exit {outcome.exit_code})"
        return Evaluation(
            "failed", reason=f"the evaluator {how} without a result: {tail}", seconds=outcome.wall_seconds
        )
    bpb = result.get("bpb")
    if result.get("status") == "ok" and isinstance(bpb, int | float) and math.isfinite(bpb):
        return Evaluation("ok", metric=float(bpb), seconds=outcome.wall_seconds if outcome else None)
    reason = str(result.get("reason") or "the evaluator gave no finite metric")[:400]
    return Evaluation("bad_model", reason=reason, seconds=outcome.wall_seconds if outcome else None)


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return "no log"
    lines = [line for line in lines if line]
    return lines[-1][:300] if lines else "no output"
