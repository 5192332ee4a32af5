"""Every run, kept forever: an append-only event log (runs.jsonl), the original's results.tsv, per-run folders.

Layout under <state_dir>/<tag>/:
    runs.jsonl        one JSON event per line: start, end, decision (folded into RunRecords); each event
                      carries its format version and the hash of the line before it, so an edited or
                      deleted line shows as a broken chain (reported, never silently repaired)
    results.tsv       commit, val_bpb, memory_gb, status, description (the original's five columns)
    runs/<id>/        log.txt, diff.patch, record.json
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from server.errors import StorageError

Status = Literal[
    "running", "ok", "crash", "timeout", "no_metric", "over_budget", "cancelled", "interrupted", "tampered",
    "no_model", "export_failed", "bad_model", "eval_failed", "memory_limit", "process_limit", "sandbox_failed",
]  # fmt: skip
Decision = Literal["keep", "discard"]
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
EVENT_VERSION = 2  # 1: no version, no chain (before the sandbox); 2: "v" and "prev" on every line
GENESIS = "0" * 64  # the "previous hash" of a history's first chained line


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class SeedRun(BaseModel):
    """One seed of a run: a run repeated with seeds seed, seed+1, ... records each."""

    seed: int
    status: Status
    metric: float | None = None
    wall_seconds: float | None = None
    eval_seconds: float | None = None
    steps: float | None = Field(default=None, description="num_steps from the run's summary, when it prints one")


PRIVATE = {"holdout_metric", "holdout_note"}  # the human's: never in what the agent's tools return


class RunRecord(BaseModel):
    """One experiment, from start to decision."""

    id: int
    commit: str
    parent: str
    description: str
    status: Status = "running"
    decision: Decision | None = None
    metric: float | None = None
    best_before: float | None = None
    memory_gb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    wall_seconds: float | None = None
    exit_code: int | None = None
    reason: str | None = Field(default=None, description="why the run failed, in one line")
    reported: float | None = Field(default=None, description="the metric the run printed itself (information)")
    flags: list[str] = Field(default_factory=list, description="e.g. unsandboxed, self-reported, reported_mismatch")
    timing: dict[str, float] = Field(default_factory=dict, description="seconds measured by the server")
    seed: int | None = None
    warm_start: bool = Field(default=False, description="run by a process started ahead of it, imports done; "
                             "its start-up counts from the run's start")  # fmt: skip
    repeats: list[SeedRun] = Field(default_factory=list, description="each seed's result; metric is their mean")
    metric_std: float | None = Field(default=None, description="sample standard deviation over the seeds")
    required_gain: float | None = Field(default=None, description="the gain the keep gate needed at the decision")
    beyond_noise: bool | None = Field(default=None, description="whether the gain was beyond the noise band")
    holdout_metric: float | None = Field(default=None, description="(private) the kept model on the holdout split")
    holdout_note: str | None = Field(default=None, description="(private) why the holdout disagrees, if it does")
    settings: dict[str, Any] = Field(default_factory=dict, description="budget, sandbox and overrides in effect")
    gpu_memory_gb: float | None = None
    epochs: float | None = Field(default=None, description="tokens trained / tokens in the train split")
    fingerprint: str | None = Field(default=None, description="hash of the editable file's code, comments aside")
    hypothesis: str | None = Field(default=None, description="what the agent expected, said when it ran")
    lesson: str | None = Field(default=None, description="what the agent learnt, said when it decided")
    duplicate_reason: str | None = Field(default=None, description="why the same code ran again")
    source: Literal["draft", "edits", "rebase"] = Field(
        default="draft", description="what it ran: the working file, edits to the best, or a rebased run's edits"
    )
    rebased_from: int | None = Field(default=None, description="the run whose edits it re-ran on a newer best")
    slot: int | None = Field(default=None, description="the pool slot it ran in")
    summary: dict[str, str] = Field(default_factory=dict)
    forced: bool = False
    force_reason: str | None = None
    started_at: str = Field(default_factory=now)
    ended_at: str | None = None
    decided_at: str | None = None

    @property
    def delta(self) -> float | None:
        if self.metric is None or self.best_before is None:
            return None
        return self.metric - self.best_before

    @property
    def seeds(self) -> int:
        """How many seeds ran (a record from before repeats: one)."""
        return len(self.repeats) or 1

    @property
    def primary_metric(self) -> float | None:
        """The first seed's metric: the model kept in out/ and scored on the holdout."""
        return self.repeats[0].metric if self.repeats else self.metric

    @property
    def tsv_status(self) -> str:
        if self.status != "ok":
            return "crash"
        return self.decision or "pending"


def line_hash(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one JSON line, chained to the line before it, with a single write; on failure cut the file
    back so it stays valid."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    try:
        prev = line_hash(_last_line(fd, size)) if size else GENESIS
        line = (json.dumps({"v": EVENT_VERSION, "prev": prev, **event}, separators=(",", ":")) + "\n").encode()
        if os.write(fd, line) != len(line):
            raise OSError("short write")
        os.fsync(fd)
    except OSError as exc:
        os.ftruncate(fd, size)
        raise StorageError(f"could not write the history at {path} ({exc}); free disk space and retry.") from exc
    finally:
        os.close(fd)
    atomic_write(head_path(path), line_hash(line).encode(), durable=False)


def head_path(path: Path) -> Path:
    """The hash of the history's last line, so that an edit of the last line shows too."""
    return path.with_name(path.name + ".head")


def _last_line(fd: int, size: int) -> bytes:
    start = max(0, size - 65536)
    while True:
        data = os.pread(fd, size - start, start)
        cut = data.rstrip(b"\n").rfind(b"\n")
        if cut >= 0 or start == 0:
            return data[cut + 1 :]
        start = max(0, start - 65536)


def read_events(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Events up to the last complete line; with repair, cut a torn last line (a power cut) off the file."""
    return [event for event, _ in read_lines(path, repair) if event is not None]


def read_lines(path: Path, repair: bool = False) -> list[tuple[dict[str, Any] | None, bytes]]:
    """Each complete line, parsed (None when it is not JSON), with its bytes."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(end)
    lines: list[tuple[dict[str, Any] | None, bytes]] = []
    for raw in data[:end].splitlines():
        try:
            event = json.loads(raw)
        except json.JSONDecodeError:
            event = None
        lines.append((event if isinstance(event, dict) else None, raw))
    return lines


def problems(path: Path) -> list[str]:
    """What is wrong with the history file: lines that are not events, records that do not validate, and
    breaks in the hash chain (a line edited, inserted or deleted by something other than the server)."""
    found: list[str] = []
    prev: bytes | None = None
    for number, (event, raw) in enumerate(read_lines(path), start=1):
        if event is None:
            found.append(f"line {number} of {path.name} is not a JSON event")
        elif event.get("v", 1) > EVENT_VERSION:
            found.append(f"line {number} has format version {event['v']}, newer than this server reads; upgrade")
        elif event.get("v", 1) >= 2 and event.get("prev") != (line_hash(prev) if prev is not None else GENESIS):
            found.append(f"line {number} of {path.name} does not follow line {number - 1}: the history was edited "
                         "(a line changed, inserted or deleted) outside the server")  # fmt: skip
        elif (error := _invalid(event)) is not None:
            found.append(f"line {number} of {path.name} is not a valid record ({error})")
        prev = raw
    return found + _head_problem(path, [raw for _, raw in read_lines(path)])


def _head_problem(path: Path, lines: list[bytes]) -> list[str]:
    try:
        head = head_path(path).read_text(encoding="ascii").strip()
    except OSError:
        return []
    recent = [line_hash(raw) for raw in lines[-2:]]  # the server may have died between the line and the head
    if lines and head not in recent:
        return [f"the last line of {path.name} is not the one the server wrote: the history was edited outside it"]
    return []


def _invalid(event: dict[str, Any]) -> str | None:
    try:
        if event["type"] in ("start", "end"):
            RunRecord.model_validate(event["run"])
        elif event["type"] not in ("decision", "tag"):
            return f"unknown event type {event['type']!r}"
    except (KeyError, TypeError) as exc:
        return f"missing {exc}"
    except ValidationError as exc:
        return str(exc.errors()[0]["msg"])
    return None


def fold(events: list[dict[str, Any]]) -> dict[int, RunRecord]:
    """Replay events into records; later events on the same run update it."""
    runs: dict[int, RunRecord] = {}
    for event in events:
        try:
            if event["type"] in ("start", "end"):
                runs[event["run"]["id"]] = RunRecord.model_validate(event["run"])
            elif event["type"] == "decision" and event["id"] in runs:
                run = runs[event["id"]]
                runs[event["id"]] = run.model_copy(update={k: v for k, v in event.items() if k in _DECISION_KEYS})
        except (KeyError, TypeError, ValidationError):
            continue
    return runs


_DECISION_KEYS = {
    "decision",
    "forced",
    "force_reason",
    "decided_at",
    "required_gain",
    "beyond_noise",
    "holdout_metric",
    "holdout_note",
    "lesson",
}


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write a whole file through a temporary sibling and rename, so readers never see half of it.

    durable=False skips the fsync for files rebuilt from runs.jsonl (results.tsv, record.json, diffs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StorageError(f"could not write {path} ({exc}); free disk space and retry.") from exc


def results_tsv(runs: list[RunRecord], metric: str = "val_bpb") -> str:
    """The original's five columns; crashes as 0.000000 and 0.0; undecided runs are left out."""
    lines = [TSV_HEADER.replace("val_bpb", metric)]  # the original's header, with this experiment's metric
    for run in runs:
        if run.tsv_status == "pending" or run.status == "running":
            continue
        metric = f"{run.metric:.6f}" if run.status == "ok" and run.metric is not None else "0.000000"
        memory = f"{run.memory_gb:.1f}" if run.status == "ok" and run.memory_gb is not None else "0.0"
        desc = " ".join(run.description.split())
        why = f" [{run.status}]" if run.status not in ("ok", "crash") else ""  # the original has three statuses
        lines.append(f"{run.commit[:7]}\t{metric}\t{memory}\t{run.tsv_status}\t{desc}{why}\n")
    return "".join(lines)


class History:
    """The history of one run tag in its state folder."""

    def __init__(self, folder: Path, metric: str = "val_bpb") -> None:
        self.folder = folder
        self.metric = metric  # the second column of results.tsv
        self.events_path = folder / "runs.jsonl"
        self.tsv_path = folder / "results.tsv"
        self._read: tuple[tuple[int, int, int] | None, list[dict[str, Any]], dict[int, RunRecord]] = (None, [], {})

    def run_dir(self, run_id: int) -> Path:
        return self.folder / "runs" / str(run_id)

    def _events(self, repair: bool = False) -> tuple[list[dict[str, Any]], dict[int, RunRecord]]:
        """The events and the runs they fold into, read again only when the file changed (its inode, size or
        modification time): a start, a record and a decision each ask several times, and nights grow long."""
        try:
            stat = os.stat(self.events_path)
            key: tuple[int, int, int] | None = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            key = None
        cached_key, events, folded = self._read
        if repair or key is None or key != cached_key:
            events = read_events(self.events_path, repair)
            folded = fold(events)
            if not repair:  # a repair may have cut the file: the next read takes its new shape
                self._read = (key, events, folded)
        return events, folded

    def runs(self, repair: bool = False) -> list[RunRecord]:
        return sorted(self._events(repair)[1].values(), key=lambda r: r.id)

    def get(self, run_id: int) -> RunRecord | None:
        return self._events()[1].get(run_id)

    def next_id(self) -> int:
        runs = self.runs()
        return runs[-1].id + 1 if runs else 1

    def record(self, run: RunRecord, kind: Literal["start", "end"]) -> None:
        append_event(self.events_path, {"type": kind, "run": run.model_dump(mode="json")})
        if kind == "end":
            atomic_write(self.run_dir(run.id) / "record.json", run.model_dump_json(indent=1).encode(), durable=False)
            self.write_tsv()

    def decide(
        self, run_id: int, decision: Decision, force_reason: str | None = None, **extra: float | bool | str | None
    ) -> None:
        """The decision event; extra carries the gate's figures and the holdout (keys in _DECISION_KEYS)."""
        event: dict[str, Any] = {"type": "decision", "id": run_id, "decision": decision, "decided_at": now()}
        if force_reason is not None:
            event.update(forced=True, force_reason=force_reason)
        event.update({k: v for k, v in extra.items() if k in _DECISION_KEYS and v is not None})
        append_event(self.events_path, event)
        decided = self.get(run_id)
        if decided is not None:
            atomic_write(
                self.run_dir(run_id) / "record.json", decided.model_dump_json(indent=1).encode(), durable=False
            )
        self.write_tsv()

    def problems(self) -> list[str]:
        return problems(self.events_path)

    def mark_tag(self, start: str) -> None:
        """The commit the run branch was created at: the expected tip until a run is kept."""
        append_event(self.events_path, {"type": "tag", "start": start, "at": now()})

    def expected_tip(self) -> str | None:
        """Where the run branch must point by the server's own record: the last kept run's commit, or the
        commit the tag started (or was re-pinned) at, whichever came later."""
        events, runs = self._events()
        expected = None
        for event in events:
            if event.get("type") == "tag" and event.get("start"):
                expected = str(event["start"])
            elif event.get("type") == "decision" and event.get("decision") == "keep" and event.get("id") in runs:
                expected = runs[event["id"]].commit
        return expected

    def write_tsv(self) -> None:
        atomic_write(self.tsv_path, results_tsv(self.runs(), self.metric).encode(), durable=False)


def best_run(runs: list[RunRecord]) -> RunRecord | None:
    """The latest kept run: the run branch's tip and the baseline the next run must beat."""
    kept = [r for r in runs if r.decision == "keep" and r.metric is not None]
    return kept[-1] if kept else None
