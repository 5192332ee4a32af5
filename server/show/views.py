"""What the tools return: compact pydantic models built from the Lab, sized for an agent's context."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from server.config import load_config
from server.errors import InvalidInputError, StateError
from server.lab import caps, gate
from server.lab.edits import Edit
from server.lab.loop import ActiveRun, Lab
from server.lab.noise import Floor
from server.run.outcome import read_tail, starved_words, tail_lines
from server.show import table
from server.store.history import PRIVATE, History, RunRecord

LOG_TAIL_LINES = 30
LOG_TAIL_BYTES = 1000  # a run result stays under 1.5 KB even when the tail is a long traceback
MAX_DIFF_CHARS = 6000


class EditIn(BaseModel):
    old: str = Field(description="exact text to find; must occur exactly once")
    new: str = Field(description="replacement text")


class Best(BaseModel):
    run_id: int
    metric: float
    commit: str
    description: str


class TrainFile(BaseModel):
    path: str
    content: str
    base_commit: str = Field(description="the last kept commit the file is based on")
    modified: bool = Field(description="the file differs from the last kept version")
    best: Best | None
    awaiting_decision: int | None = Field(description="a run id that needs keep or discard first")
    budget_seconds: float = Field(description="the time budget of timed training, on the server's clock")


class WriteResult(BaseModel):
    path: str
    bytes: int
    diff: str = Field(description="unified diff against the last kept version")


class RunResult(BaseModel):
    run_id: int
    status: str = Field(description="ok, or why not (crash, over_budget, no_model, bad_model, ...: see reason)")
    metric: float | None
    best: float | None = Field(description="the best metric before this run")
    delta: float | None = Field(description="metric - best; negative is better when minimizing")
    improved: bool = Field(description="better than the best by more than the noise band: keep it")
    seeds: int = Field(description="how many seeds it ran with; metric is their mean")
    std: float | None = Field(default=None, description="sample standard deviation of the metric over the seeds")
    seed_metrics: list[float] | None = Field(default=None, description="each seed's metric, with several seeds")
    required_gain: float | None = Field(default=None, description="the gain on the best the keep gate needs")
    near_miss: bool = Field(default=False, description="better, but inside the noise band: more seeds may settle it")
    verdict: str | None = Field(default=None, description="the result in words: better or worse beyond the noise, "
                                "within it, or starved (not evidence)")  # fmt: skip
    memory_gb: float | None
    training_seconds: float | None
    total_seconds: float | None
    commit: str
    reason: str | None = None
    reported: float | None = Field(default=None, description="the metric the run printed itself (not used)")
    log_tail: list[str] | None = Field(default=None, description="end of the log, on failure only")
    next: str
    epochs: float | None = Field(default=None, description="passes over the training data; over 1 repeats it")
    flags: list[str] | None = Field(
        default=None, description="e.g. repeated_data (it trained on some data twice), reported_mismatch, unsandboxed"
    )


class AgentRun(RunRecord):
    """A run as the agent sees it: the fields history.PRIVATE names are in neither its dumps nor its schema."""

    holdout_metric: SkipJsonSchema[float | None] = Field(default=None, exclude=True)
    holdout_note: SkipJsonSchema[str | None] = Field(default=None, exclude=True)

    @classmethod
    def of(cls, run: RunRecord) -> AgentRun:
        data = run.model_dump(exclude=PRIVATE)
        data["timing"] = {k: v for k, v in run.timing.items() if k != "holdout"}  # the holdout is the human's
        return cls.model_validate(data)


class RunDetail(BaseModel):
    run: AgentRun
    diff: str
    log_tail: list[str]


class HistoryView(BaseModel):
    metric: str
    direction: str
    rows: list[str] = Field(description="header, then one run per row, oldest first")
    best: Best | None
    counts: dict[str, int]
    awaiting_decision: int | None = Field(description="the run of train.py that needs keep or discard first")
    awaiting: list[int] | None = Field(default=None, description="every finished run awaiting keep or discard")
    running: str | None = Field(description="the experiments in flight now, if any: run, slot, time left")
    results: list[RunResult] | None = Field(default=None, description="the wait_for runs, as run_experiment "
                                            "returns them")  # fmt: skip
    problems: list[str] | None = Field(default=None, description="the history file was edited outside the server")
    limits: str | None = Field(default=None, description="what the night's caps leave, or why the night is over")
    lessons: list[str] | None = Field(default=None, description="the latest lessons given with decisions")
    near_misses: list[str] | None = Field(
        default=None, description="discarded runs that were better but inside the noise: worth another look"
    )
    noise: Floor | None = Field(default=None, description="the noise floor: the same-code spread of the metric")
    detail: RunDetail | None = None


class DecisionResult(BaseModel):
    run_id: int
    decision: Literal["keep", "discard"]
    metric: float | None
    best: float | None = Field(description="the best metric after this decision")
    best_run: int | None = Field(description="the run that holds it (the run branch's tip)")
    next: str


def _short(commit: str) -> str:
    return commit[:7]


def best_of(lab: Lab) -> Best | None:
    run = lab.best()
    if run is None or run.metric is None:
        return None
    return Best(run_id=run.id, metric=run.metric, commit=_short(run.commit), description=run.description)


def train_file(lab: Lab) -> TrainFile:
    content = lab.current_content()
    pending = lab.pending()
    return TrainFile(path=lab.config.editable, content=content, base_commit=_short(lab.tip()),
                     modified=content != lab.kept_content(), best=best_of(lab),
                     awaiting_decision=pending.id if pending else None,
                     budget_seconds=lab.config.time_budget)  # fmt: skip


def write(lab: Lab, content: str | None, edits: list[Edit] | None) -> WriteResult:
    diff = lab.write(content, edits)
    size = lab.editable_path.stat().st_size
    return WriteResult(path=lab.config.editable, bytes=size, diff=_cap(diff, MAX_DIFF_CHARS))


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n[... {len(text) - limit} more characters]\n"


def run_result(lab: Lab, run: RunRecord) -> RunResult:
    verdict = lab.judge(run) if run.status == "ok" and run.metric is not None else None
    improved = verdict is not None and verdict.beyond
    near_miss = verdict is not None and verdict.near_miss
    metrics = [r.metric for r in run.repeats if r.metric is not None] if run.seeds > 1 else None
    tail = None
    if run.status != "ok":
        lines = tail_lines(read_tail(lab.history.run_dir(run.id) / "log.txt", 16_000), LOG_TAIL_LINES)
        tail = cap_lines(lines, LOG_TAIL_BYTES)
    return RunResult(run_id=run.id, status=run.status, metric=run.metric, best=run.best_before,
                     delta=round(run.delta, 6) if run.delta is not None else None, improved=improved,
                     memory_gb=run.memory_gb, training_seconds=run.training_seconds,
                     total_seconds=run.total_seconds, commit=_short(run.commit), reason=run.reason,
                     reported=run.reported, flags=run.flags or None, epochs=run.epochs,
                     log_tail=tail, seeds=run.seeds, std=_round(run.metric_std), seed_metrics=metrics,
                     required_gain=_round(verdict.required if verdict else None), near_miss=near_miss,
                     verdict=gate.describe(verdict, run), next=_next_step(run, improved, near_miss))  # fmt: skip


def _round(value: float | None) -> float | None:
    return round(value, 6) if value is not None else None


def cap_lines(lines: list[str], max_bytes: int) -> list[str]:
    """The last lines that fit in max_bytes, each cut to 200 characters."""
    kept: list[str] = []
    for line in reversed([line[:200] for line in lines]):
        if sum(len(x) + 1 for x in kept) + len(line) + 1 > max_bytes:
            break
        kept.append(line)
    return kept[::-1]


def _next_step(run: RunRecord, improved: bool, near_miss: bool) -> str:
    if run.status == "running":
        return f"running; collect it with get_history(wait_for=[{run.id}]) (call again while it still runs)"
    if run.status != "ok":
        return "fix with write_train and run again, or discard"
    if "starved" in run.flags:
        return (f"starved ({starved_words(run)}): the result is not evidence; discard it and run the same code "
                "again (it is not refused as a duplicate)")  # fmt: skip
    if near_miss:
        return "near miss inside the noise band: run_experiment with repeats=2 (file unchanged) adds seeds; or discard"
    return "keep" if improved else "discard (or keep with force and a reason if simpler)"


def history_view(
    lab: Lab, limit: int, run_id: int | None, match: str | None = None, wait_for: list[int] | None = None
) -> HistoryView:
    runs = lab.history.runs()
    shown = table.matching(runs, match)
    detail = None
    if run_id is not None:
        found = [r for r in runs if r.id == run_id]
        if not found:
            raise InvalidInputError(f"there is no run {run_id}; runs go from 1 to {len(runs)}.")
        detail = run_detail(lab, found[0])
    pending = lab.pending()
    by_id = {r.id: r for r in runs}
    results = [run_result(lab, by_id[i]) for i in wait_for if i in by_id] if wait_for else None
    awaiting = [r.id for r in lab.awaiting()]
    return HistoryView(metric=lab.config.metric, direction=lab.config.direction,
                       rows=table.format_rows(shown, limit, lab.config.metric, match), best=best_of(lab),
                       counts=table.counts(runs), awaiting_decision=pending.id if pending else None,
                       awaiting=awaiting or None, results=results,
                       running=running_now(lab), problems=lab.history.problems() or None, limits=limits(lab),
                       lessons=lessons(runs) or None, near_misses=near_misses(runs, lab.config.direction) or None,
                       detail=detail, noise=lab.floor())  # fmt: skip


def lessons(runs: list[RunRecord], count: int = 8) -> list[str]:
    """The agent's memory across lost contexts: what each recent decision taught, one line each."""
    noted = [r for r in runs if r.lesson][-count:]
    return [f"run {r.id} ({r.decision}, {r.description[:60]}): {r.lesson}" for r in noted]


def near_misses(runs: list[RunRecord], direction: str, count: int = 5) -> list[str]:
    """Ideas that gained, but not beyond the noise, and were discarded: candidates for more seeds or a
    variation."""
    sign = -1.0 if direction == "minimize" else 1.0
    missed = [r for r in runs if r.decision == "discard" and r.beyond_noise is False and sign * (r.delta or 0) > 0]
    return [f"run {r.id} ({r.delta:+.6f}, {r.seeds} seed(s)): {r.description[:80]}" for r in missed[-count:]]


def limits(lab: Lab) -> str | None:
    runs = lab.history.runs()
    over = caps.reached(lab.config, runs, lab.state)
    if over:
        return f"the night is over: {over}"
    parts = [part for part in (caps.usage(lab.config, runs), holdout_limit(lab)) if part]
    return "; ".join(parts) or None


def holdout_limit(lab: Lab) -> str | None:
    """How much of the holdout's budget of disagreements the dataset has spent (the holdout's figures never)."""
    config = lab.config
    if not (config.evaluated and config.holdout and config.holdout_gate):
        return None
    spent, budget = lab.holdout_ledger().spent(), config.holdout_budget
    if spent >= budget:
        return (f"the holdout gate is spent ({spent} of {budget} disagreements): validation alone decides keeps "
                "until the human prepares a fresh split")  # fmt: skip
    return f"holdout gate: {spent} of {budget} disagreements spent"


def run_detail(lab: Lab, run: RunRecord) -> RunDetail:
    folder = lab.history.run_dir(run.id)
    diff_path = folder / "diff.patch"
    diff = diff_path.read_text(encoding="utf-8", errors="replace") if diff_path.exists() else ""
    tail = tail_lines(read_tail(folder / "log.txt", 16_000), LOG_TAIL_LINES)
    return RunDetail(run=AgentRun.of(run), diff=_cap(diff, MAX_DIFF_CHARS), log_tail=tail)


def running_now(lab: Lab) -> str | None:
    """One clause per run in flight: "run 3 ('idea') is running in process 123 (slot 1), at most 4 min left"."""
    flying = [info.describe() for info in lab.in_flight()]
    return "; ".join(f for f in flying if f) or None


def progress_message(active: ActiveRun, started: float) -> str:
    progress = active.execution.progress() if active.execution else None
    elapsed = time.monotonic() - started
    where = progress.describe() if progress else "no progress line yet"
    seeds = len(active.results) + 1 + len(active.seeds_left)
    which = f" seed {active.candidate.record.seed} ({len(active.results) + 1}/{seeds})" if seeds > 1 else ""
    return f"run {active.record.id}{which}: {where} ({elapsed:.0f}s elapsed)"


def decide(
    lab: Lab, decision: str, run_id: int | None, force: bool, reason: str | None, lesson: str | None = None
) -> DecisionResult:
    if decision == "keep":
        run = lab.keep(run_id, force, reason, lesson)
        hint = "kept; next idea"
    else:
        run = lab.discard(run_id, lesson)
        hint = "train.py is back to the last kept version; next idea"
    if lab.current_content().encode() not in (lab.kept_content().encode(), lab._code(run.commit)):
        hint += " (train.py holds your draft, unchanged: read_train shows its diff against the new best)"
    best = lab.best()
    return DecisionResult(run_id=run.id, decision="keep" if decision == "keep" else "discard", metric=run.metric,
                          best=best.metric if best else None, best_run=best.id if best else None,
                          next=hint)  # fmt: skip


def log_text(root: Path, run_id: str) -> str:
    """A run's log tail, for the MCP resource (which cannot hold a Lab open)."""
    if not run_id.isdigit():
        raise StateError(f"run id {run_id!r} is not a number.")
    config = load_config(root)
    history = History(root / config.state_dir / config.tag)
    path = history.run_dir(int(run_id)) / "log.txt"
    if not path.exists():
        raise StateError(f"run {run_id} has no log.")
    return read_tail(path, 64_000)


def loop_prompt(root: Path) -> str:
    program = root / "program.md"
    text = program.read_text(encoding="utf-8") if program.exists() else ""
    return (text + "\n\nBegin: call get_history to see where the search stands, then continue the loop.").strip()
