"""Every run, kept forever: an append-only event log (runs.jsonl), the original's results.tsv, per-run folders.

Layout under <state_dir>/<tag>/:
    runs.jsonl        one JSON event per line: start, end, decision (folded into RunRecords)
    results.tsv       commit, val_bpb, memory_gb, status, description (the original's five columns)
    runs/<id>/        log.txt, diff.patch, record.json
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from server.errors import StorageError

Status = Literal[
    "running", "ok", "crash", "timeout", "no_metric", "over_budget", "cancelled", "interrupted", "tampered"
]
Decision = Literal["keep", "discard"]
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    def tsv_status(self) -> str:
        if self.status != "ok":
            return "crash"
        return self.decision or "pending"


def append_event(path: Path, event: dict[str, Any]) -> None:
    """Append one JSON line with a single write; on failure cut the file back so it stays valid."""
    line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    size = os.fstat(fd).st_size
    try:
        if os.write(fd, line) != len(line):
            raise OSError("short write")
        os.fsync(fd)
    except OSError as exc:
        os.ftruncate(fd, size)
        raise StorageError(f"could not write the history at {path} ({exc}); free disk space and retry.") from exc
    finally:
        os.close(fd)


def read_events(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Events up to the last complete line; with repair, cut a torn last line (a power cut) off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with path.open("r+b") as fh:
            fh.truncate(end)
    events = []
    for raw in data[:end].splitlines():
        try:
            events.append(json.loads(raw))
        except json.JSONDecodeError:
            continue  # a torn line from an old crash; the records around it are intact
    return events


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


_DECISION_KEYS = {"decision", "forced", "force_reason", "decided_at"}


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


def results_tsv(runs: list[RunRecord]) -> str:
    """The original's five columns; crashes as 0.000000 and 0.0; undecided runs are left out."""
    lines = [TSV_HEADER]
    for run in runs:
        if run.tsv_status == "pending" or run.status == "running":
            continue
        metric = f"{run.metric:.6f}" if run.status == "ok" and run.metric is not None else "0.000000"
        memory = f"{run.memory_gb:.1f}" if run.status == "ok" and run.memory_gb is not None else "0.0"
        desc = " ".join(run.description.split())
        lines.append(f"{run.commit[:7]}\t{metric}\t{memory}\t{run.tsv_status}\t{desc}\n")
    return "".join(lines)


class History:
    """The history of one run tag in its state folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events_path = folder / "runs.jsonl"
        self.tsv_path = folder / "results.tsv"

    def run_dir(self, run_id: int) -> Path:
        return self.folder / "runs" / str(run_id)

    def runs(self, repair: bool = False) -> list[RunRecord]:
        return sorted(fold(read_events(self.events_path, repair)).values(), key=lambda r: r.id)

    def get(self, run_id: int) -> RunRecord | None:
        return fold(read_events(self.events_path)).get(run_id)

    def next_id(self) -> int:
        runs = self.runs()
        return runs[-1].id + 1 if runs else 1

    def record(self, run: RunRecord, kind: Literal["start", "end"]) -> None:
        append_event(self.events_path, {"type": kind, "run": run.model_dump(mode="json")})
        if kind == "end":
            atomic_write(self.run_dir(run.id) / "record.json", run.model_dump_json(indent=1).encode(), durable=False)
            self.write_tsv()

    def decide(self, run_id: int, decision: Decision, force_reason: str | None = None) -> None:
        event = {"type": "decision", "id": run_id, "decision": decision, "decided_at": now()}
        if force_reason is not None:
            event.update(forced=True, force_reason=force_reason)
        append_event(self.events_path, event)
        self.write_tsv()

    def write_tsv(self) -> None:
        atomic_write(self.tsv_path, results_tsv(self.runs()).encode(), durable=False)


def best_run(runs: list[RunRecord]) -> RunRecord | None:
    """The latest kept run: the run branch's tip and the baseline the next run must beat."""
    kept = [r for r in runs if r.decision == "keep" and r.metric is not None]
    return kept[-1] if kept else None
