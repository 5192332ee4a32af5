"""The morning report's figures, gathered from one tag's history alone (no runner, no git): a typed summary.

The rendering (Markdown, HTML, pictures) lives in server/show/report_render.py; this module only reads and counts.
Time split: each run's training, start-up and evaluation are the server's own stamps (RunRecord.timing);
"other" is the rest of the run's start-to-end span (hand-over, export, bookkeeping); "idle" is the part of
the night, first start to last end, when no run was in flight in any slot.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from server.lab.noise import Floor, floor_of
from server.store.history import History, RunRecord, best_run, now

NEAR_MISSES = 5  # discarded ok runs shown, closest to the best first
REASONS_PER_STATUS = 3  # the most common failure reasons listed per status
DIFF_CHARS = 20_000  # a kept change's diff is cut in the report beyond this
NEXT_WORDS = re.compile(r"\b(next|try|could|worth|instead|should)\b", re.IGNORECASE)
PHASES = ("startup", "training", "evaluation", "other")


@dataclass(frozen=True)
class Change:
    """One kept run in the chain: what it tried and what it gained on the run kept before it."""

    run: RunRecord
    gain: float | None  # in the metric's better direction, against the best it ran against
    required: float | None  # the gain the keep gate needed
    diff: str  # against the previous kept run's code (the run's diff.patch)

    @property
    def beyond(self) -> float | None:
        """The gain left over the noise band (negative: kept inside the noise, i.e. forced)."""
        return None if self.gain is None or self.required is None else self.gain - self.required


@dataclass(frozen=True)
class Failure:
    status: str
    count: int
    reasons: list[tuple[str, int]]


@dataclass(frozen=True)
class TimeSplit:
    """Seconds of the night by phase; per run (id -> phase -> seconds) for the chart."""

    phases: dict[str, float]
    idle: float
    span: float  # first start to last end (or now, for a running tag)
    per_run: dict[int, dict[str, float]]


@dataclass(frozen=True)
class Report:
    """Everything the report says about one tag."""

    tag: str
    metric: str
    direction: str
    made_at: str
    runs: list[RunRecord]
    snapshot: str | None  # why this is a snapshot of a night still going, or None
    baseline: RunRecord | None
    best: RunRecord | None
    floor: Floor | None
    chain: list[Change]
    near_misses: list[RunRecord]
    ideas: list[tuple[int, str]]
    failures: list[Failure]
    device: str  # "GPU" or "CPU"
    compute_hours: float
    time: TimeSplit
    flagged: list[str] = field(default_factory=list)  # forced keeps and holdout disagreements


def gain_of(run: RunRecord, direction: str) -> float | None:
    """The run's gain on the best it ran against, positive when better."""
    delta = run.delta
    return None if delta is None else (-delta if direction == "minimize" else delta)


def kept_chain(runs: list[RunRecord]) -> list[RunRecord]:
    """The kept runs in the order they were kept (decided_at, then id): each built on the one before."""
    kept = [r for r in runs if r.decision == "keep" and r.status == "ok"]
    return sorted(kept, key=lambda r: (r.decided_at or "", r.id))


def _diff(history: History, run: RunRecord) -> str:
    try:
        text = (history.run_dir(run.id) / "diff.patch").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return text if len(text) <= DIFF_CHARS else text[:DIFF_CHARS] + "\n[... cut]\n"


def near_misses(runs: list[RunRecord], direction: str, count: int = NEAR_MISSES) -> list[RunRecord]:
    """Discarded runs that ended well, closest to the best they ran against first."""
    missed = [r for r in runs if r.decision == "discard" and r.status == "ok" and gain_of(r, direction) is not None]
    return sorted(missed, key=lambda r: -(gain_of(r, direction) or 0.0))[:count]


def ideas(runs: list[RunRecord]) -> list[tuple[int, str]]:
    """The sentences of the lessons that name something to do next (next, try, could, worth, ...)."""
    found: list[tuple[int, str]] = []
    for run in runs:
        for sentence in re.split(r"(?<=[.;!?])\s+", run.lesson or ""):
            if NEXT_WORDS.search(sentence):
                found.append((run.id, sentence.strip()))
    return found


def failures(runs: list[RunRecord]) -> list[Failure]:
    """The failed runs counted by status, most frequent first, with their most common reasons."""
    failed = [r for r in runs if r.status not in ("ok", "running")]
    by_status = Counter(r.status for r in failed)

    def reasons(status: str) -> list[tuple[str, int]]:
        return Counter(r.reason or "no reason recorded" for r in failed if r.status == status).most_common(
            REASONS_PER_STATUS
        )

    return [Failure(status, count, reasons(status)) for status, count in by_status.most_common()]


def _stamp(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(text).timestamp() if text else None
    except ValueError:
        return None


def run_phases(run: RunRecord) -> dict[str, float]:
    """A run's seconds by phase; 'other' is what its start-to-end span holds beyond the measured phases."""
    timing = run.timing
    parts = {"startup": timing.get("startup", 0.0), "training": timing.get("training", run.training_seconds or 0.0),
             "evaluation": timing.get("evaluation", 0.0) + timing.get("holdout", 0.0)}  # fmt: skip
    start, end = _stamp(run.started_at), _stamp(run.ended_at)
    span = (end - start) if start is not None and end is not None else (run.wall_seconds or 0.0)
    parts["other"] = max(0.0, span - sum(parts.values()), (run.wall_seconds or 0.0) - parts["startup"]
                         - parts["training"])  # fmt: skip
    return parts


def _intervals(runs: list[RunRecord], until: float) -> list[tuple[float, float]]:
    spans = []
    for run in runs:
        start = _stamp(run.started_at)
        if start is not None:
            spans.append((start, _stamp(run.ended_at) or until))
    return sorted(spans)


def time_split(runs: list[RunRecord], at: float) -> TimeSplit:
    """Where the night's time went: the phases summed over runs, and the idle time between runs."""
    per_run = {r.id: run_phases(r) for r in runs if r.status != "running"}
    phases = {p: sum(parts[p] for parts in per_run.values()) for p in PHASES}
    spans = _intervals(runs, at)
    if not spans:
        return TimeSplit(phases, 0.0, 0.0, per_run)
    busy, reach = 0.0, spans[0][0]
    for start, end in spans:  # the union of the runs' spans: several slots overlap
        busy += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    span = reach - spans[0][0]
    return TimeSplit(phases, max(0.0, span - busy), span, per_run)


def compute_hours(runs: list[RunRecord]) -> float:
    """The device time the runs used: every seed's process and its evaluations."""
    seconds = sum((r.wall_seconds or 0.0) + r.timing.get("evaluation", 0.0) + r.timing.get("holdout", 0.0)
                  for r in runs)  # fmt: skip
    return seconds / 3600


def flagged(chain: list[Change]) -> list[str]:
    """What a reviewer must look at: keeps that were forced, kept models the holdout does not confirm."""
    notes = []
    for change in chain:
        run = change.run
        if run.forced:
            notes.append(f"run {run.id} was kept by force: {run.force_reason or 'no reason given'}")
        if run.holdout_note:
            notes.append(f"run {run.id}'s holdout does not confirm its gain: {run.holdout_note}")
    return notes


def snapshot_reason(runs: list[RunRecord]) -> str | None:
    flying = [r.id for r in runs if r.status == "running"]
    waiting = [r.id for r in runs if r.status == "ok" and r.decision is None]
    if flying:
        return f"run(s) {', '.join(map(str, flying))} still in flight"
    return f"run(s) {', '.join(map(str, waiting))} await a decision" if waiting else None


def gather(history: History, metric: str = "val_bpb", direction: str = "minimize",
           confidence: float = 0.95) -> Report:  # fmt: skip
    """The report of the tag whose history this is, as it stands now."""
    runs = history.runs()
    kept = kept_chain(runs)
    chain = [Change(r, gain_of(r, direction), r.required_gain, _diff(history, r)) for r in kept]
    best = best_run(runs)
    at = datetime.now().timestamp()
    return Report(
        tag=history.folder.name, metric=metric, direction=direction, made_at=now(), runs=runs,
        snapshot=snapshot_reason(runs), baseline=kept[0] if kept else None, best=best,
        floor=floor_of(runs, best, confidence), chain=chain, near_misses=near_misses(runs, direction),
        ideas=ideas(runs), failures=failures(runs),
        device="GPU" if any(r.gpu_memory_gb for r in runs) else "CPU", compute_hours=compute_hours(runs),
        time=time_split(runs, at), flagged=flagged(chain),
    )  # fmt: skip


def default_out(state_dir: Path, tag: str, html: bool) -> Path:
    """Where a report goes unless told: beside the histories, out of git's way, never inside one."""
    return state_dir / "reports" / f"{tag}.{'html' if html else 'md'}"


def phase_share(report: Report) -> dict[str, float]:
    """The night's time by phase with idle, for the text and the chart."""
    return {**report.time.phases, "idle": report.time.idle}
