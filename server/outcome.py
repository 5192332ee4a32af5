"""Turns a finished process and its log into a run status: expected failures are values, not exceptions."""

from __future__ import annotations

import signal

from server.config import Config
from server.history import RunRecord, now
from server.runner import Outcome
from server.summary import as_float, parse_summary

TAIL_BYTES = 256_000  # the summary block and the last traceback live at the end of the log


def read_tail(path: object, max_bytes: int = TAIL_BYTES) -> str:
    """The last max_bytes of a log as text ('' when missing)."""
    try:
        with open(str(path), "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def tail_lines(text: str, count: int) -> list[str]:
    return [line[:300] for line in text.rstrip("\n").splitlines()[-count:]]


def classify(run: RunRecord, outcome: Outcome, log_path: object, config: Config, tampered: list[str]) -> RunRecord:
    """The finished record: status, reason, metric and summary figures."""
    text = read_tail(log_path)
    summary = parse_summary(text)
    metric = as_float(summary, config.metric)
    training = as_float(summary, "training_seconds")
    status, reason = _status(outcome, summary, metric, training, config, text)
    if tampered and status == "ok":
        status, reason = "tampered", f"the run changed locked file {tampered[0]}; its result is not accepted"
    memory_mb = as_float(summary, "peak_memory_mb") or as_float(summary, "peak_vram_mb")
    return run.model_copy(
        update={
            "status": status, "reason": reason, "summary": summary, "exit_code": outcome.exit_code,
            "metric": metric if status == "ok" else None, "training_seconds": training,
            "total_seconds": as_float(summary, "total_seconds"), "wall_seconds": outcome.wall_seconds,
            "memory_gb": round(memory_mb / 1024, 3) if memory_mb is not None else None, "ended_at": now(),
        }
    )  # fmt: skip


def _status(
    outcome: Outcome,
    summary: dict[str, str],
    metric: float | None,
    training: float | None,
    config: Config,
    text: str,
) -> tuple[str, str | None]:
    if outcome.stop == "timeout":
        return (
            "timeout",
            f"killed after {outcome.wall_seconds:.0f}s, the hard limit of {config.hard_timeout:.0f}s",
        )
    if outcome.stop == "cancelled":
        return "cancelled", "the run_experiment call was cancelled; the run was killed"
    if outcome.log_error is not None:  # the summary on disk may be cut: nothing in it can be trusted
        return "crash", f"the run's log could not be written ({outcome.log_error}); free disk space and run again"
    if outcome.exit_code != 0:
        return "crash", _crash_reason(outcome.exit_code, text)
    if metric is None:
        seen = f" ({config.metric}: {summary[config.metric]!r})" if config.metric in summary else ""
        return "no_metric", f"exited 0 but printed no finite {config.metric} in a final `---` block{seen}"
    allowed = config.time_budget * (1 + config.budget_tolerance) + 1.0
    if training is None:
        return "over_budget", "the summary has no training_seconds, so the budget cannot be checked"
    if training > allowed:
        return "over_budget", f"trained {training:.1f}s, over the {config.time_budget:g}s budget"
    return "ok", None


def _crash_reason(exit_code: int | None, text: str) -> str:
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        hint = " (out of memory?)" if -exit_code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fail = [line for line in lines if line.startswith("FAIL")]
    last = fail[-1] if fail else (lines[-1] if lines else "no output")
    return f"exit code {exit_code}: {last[:200]}"
