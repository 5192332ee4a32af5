"""The night's caps and stop conditions, from the human's configuration, enforced by the server: a run is
refused (before anything changes) once one is reached, with a sentence naming it. Decisions on runs that
already ended stay allowed, so the night ends at a decision point.

The human's switches are the same files the launcher and the Stop hook read, defined once in server/schema.py:
<state_dir>/STOP, and <state_dir>/night.json's `deadline` and `stop`; the server writes `stop` when a cap ends
the night, so the hooks let the agent stop.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from server import schema
from server.config import Config
from server.store.history import RunRecord

end_night = schema.end_night  # tell the launcher and the Stop hook that the night is over
FAILED = {"crash", "timeout", "no_model", "export_failed", "bad_model", "memory_limit", "process_limit"}


def reached(config: Config, runs: list[RunRecord], state: Path, now: float | None = None) -> str | None:
    """Why no further run may start tonight, in one sentence; None while the night goes on."""
    now = time.time() if now is None else now
    for check in (_human, _deadline, _experiments, _hours, _crashes, _plateau):
        reason = check(config, runs, state, now)
        if reason is not None:
            return reason
    return None


def usage(config: Config, runs: list[RunRecord]) -> str | None:
    """What the configured caps leave, for get_history: '12/40 experiments, 1.2/8 GPU hours'."""
    parts = []
    if config.max_experiments:
        parts.append(f"{len(_counted(runs))}/{config.max_experiments} experiments")
    if config.max_gpu_hours:
        parts.append(f"{_hours_used(runs):.2f}/{config.max_gpu_hours:g} GPU hours")
    if config.deadline:
        parts.append(f"deadline {config.deadline}")
    return ", ".join(parts) or None


def _counted(runs: list[RunRecord]) -> list[RunRecord]:
    return [r for r in runs if r.status not in ("running", "cancelled", "interrupted")]


def _hours_used(runs: list[RunRecord]) -> float:
    return sum(r.wall_seconds or 0.0 for r in runs) / 3600


def _human(config: Config, runs: list[RunRecord], state: Path, now: float) -> str | None:
    return schema.night_stopped(state, now)


def _deadline(config: Config, runs: list[RunRecord], state: Path, now: float) -> str | None:
    if not config.deadline:
        return None
    when = datetime.fromisoformat(config.deadline)
    stamp = when.timestamp()
    return f"the configured deadline {config.deadline} has passed" if now >= stamp else None


def _experiments(config: Config, runs: list[RunRecord], state: Path, now: float) -> str | None:
    done = len(_counted(runs))
    if config.max_experiments and done >= config.max_experiments:
        return f"the cap of {config.max_experiments} experiments is reached ({done} ran)"
    return None


def _hours(config: Config, runs: list[RunRecord], state: Path, now: float) -> str | None:
    used = _hours_used(runs)
    if config.max_gpu_hours and used >= config.max_gpu_hours:
        return f"the cap of {config.max_gpu_hours:g} GPU hours is reached ({used:.2f} h of runs)"
    return None


def _crashes(config: Config, runs: list[RunRecord], state: Path, now: float) -> str | None:
    limit = config.max_consecutive_crashes
    tail = [r.status for r in _counted(runs)][-limit:] if limit else []
    if limit and len(tail) == limit and all(status in FAILED for status in tail):
        return f"the last {limit} runs all failed (max_consecutive_crashes); something is broken: tell the human"
    return None


def _plateau(config: Config, runs: list[RunRecord], state: Path, now: float) -> str | None:
    limit = config.plateau_runs
    if not limit:
        return None
    since = 0
    for run in reversed(_counted(runs)):
        if run.decision == "keep":
            break
        since += 1
    if since >= limit:
        return f"{since} runs in a row without a kept improvement (plateau_runs = {limit})"
    return None
