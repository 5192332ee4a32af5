"""The files the server shares with readers outside it, defined once: a slot's description of its run, the
night's state, and a log's tail. Standard library only, and it imports nothing of the server: the Claude Code
hooks (scripts/*.py) import it under whatever python3 the machine has, without the project's virtualenv.

A slot is <state_dir>/slots/<n>.lock, held (flock) by the process that owns the run in it and describing that
run as one JSON object (SlotInfo). The night is <state_dir>/night.json, written by the launcher
(scripts/night.py), ended by a human's <state_dir>/STOP or by the server setting its `stop` when a cap is
reached.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NIGHT_FILE = "night.json"
STOP_FILE = "STOP"
SLOTS_DIR = "slots"
_KINDS: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float)}


@dataclass(frozen=True)
class SlotInfo:
    """What a slot's file says about its run. Every field is optional when read, so a file another version
    wrote still reads; a field of the wrong type reads as absent."""

    op: str | None = None  # "run" while the slot holds a run ("sweep" while recovery clears it)
    pid: int | None = None  # the owner: the server, or the run's supervisor
    since: float | None = None  # when the owner last rewrote the file
    slot: int | None = None
    device: str | None = None  # the GPU the run sees, when the pool names devices
    tag: str | None = None
    run_id: int | None = None
    token: str | None = None  # carried by every process of the run: recovery kills by it
    description: str = ""
    started_at: float | None = None
    deadline: float | None = None  # the latest the run can end (hard timeout per seed)
    budget: float | None = None  # the training budget, seconds
    log: str | None = None  # the current seed's log
    source: str | None = None  # draft, edits or rebase
    seed: int | None = None
    unreadable: str | None = field(default=None, compare=False)  # a held slot being rewritten: its path

    @classmethod
    def from_json(cls, data: object) -> SlotInfo:
        """The description in a slot's JSON object; unknown keys are ignored, mistyped values dropped."""
        if not isinstance(data, dict):
            return cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            value = data.get(f.name)
            if value is None:
                continue
            kind = str(f.type).split("|")[0].strip()  # "str | None" -> "str" (the annotations are strings)
            if isinstance(value, bool) or not isinstance(value, _KINDS[kind]):
                continue
            values[f.name] = float(value) if isinstance(value, int) and kind == "float" else value
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        """The file's object: the fields that are set."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != ""}

    def replace(self, **changes: Any) -> SlotInfo:
        return dataclasses.replace(self, **changes)

    @property
    def is_run(self) -> bool:
        return self.op == "run"

    def describe(self, now: float | None = None) -> str | None:
        """ "run 3 ('idea') is running in process 123 (slot 0), at most 4 min 10 s left"; None for no run."""
        if not self.is_run:
            return None
        left = max(0, int((self.deadline or 0.0) - (time.time() if now is None else now)))
        slot = f" (slot {self.slot})" if self.slot is not None else ""
        return (f"run {self.run_id} ({self.description!r}) is running in process {self.pid}{slot}, at most "
                f"{left // 60} min {left % 60} s left")  # fmt: skip


def slot_files(folder: Path) -> list[Path]:
    """The pool's slot files (<state_dir>/slots/<n>.lock) in slot order."""
    return sorted(folder.glob("*.lock"), key=lambda p: p.stem.zfill(6))


def read_slot(path: Path) -> SlotInfo | None:
    """A slot file's description; None when it cannot be read or is not a JSON object (being rewritten)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return None
    return SlotInfo.from_json(data) if isinstance(data, dict) else None


def runs_in_flight(state_dir: Path, tag: str | None = None) -> list[SlotInfo]:
    """The runs in flight as their slot files describe them, for readers outside the server (watch, the hooks,
    the dashboard): a slot counts while its owner's process exists. Nothing is locked, so no run is disturbed."""
    runs = []
    for path in slot_files(state_dir / SLOTS_DIR):
        info = read_slot(path)
        if info is not None and info.is_run and pid_alive(info.pid) and (tag is None or info.tag == tag):
            runs.append(info)
    return runs


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False  # 0 and negative ids address process groups
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


# -- the night --------------------------------------------------------------------------------------------------


def read_night(state: Path) -> dict[str, Any] | None:
    """The night file's content, None when there is none or it is not a JSON object."""
    try:
        data = json.loads((state / NIGHT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def night_stopped(state: Path, now: float | None = None) -> str | None:
    """Why the night was ended, in one sentence: the human's STOP, the night file's `stop` (a cap reached),
    its deadline passed. None while nothing ended it (also when no night file exists)."""
    now = time.time() if now is None else now
    if (state / STOP_FILE).exists():
        return f"the human asked to stop ({state / STOP_FILE} exists; `autoresearch stop` made it)"
    night = read_night(state)
    if night is None:
        return None
    if night.get("stop"):
        return str(night["stop"])
    deadline = night.get("deadline")
    if isinstance(deadline, int | float) and not isinstance(deadline, bool) and now >= deadline:
        return f"the deadline {time.strftime('%Y-%m-%d %H:%M', time.localtime(deadline))} has passed"
    return None


def end_night(state: Path, reason: str) -> None:
    """Set the night file's `stop` (a cap was reached) so the launcher and the Stop hook let the agent stop;
    nothing when no night runs or one is already ended."""
    night = read_night(state)
    if night is not None and not night.get("stop"):
        write_json(state / NIGHT_FILE, {**night, "stop": reason})


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write through a sibling and rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- logs -------------------------------------------------------------------------------------------------------


def tail_text(path: Path | str, limit: int) -> str:
    """The last `limit` bytes of a file as text, starting at a whole line; '' when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit))
            data = fh.read(limit)
    except OSError:
        return ""
    if size > limit:
        data = data[data.find(b"\n") + 1 :]  # the first line was cut in the middle
    return data.decode("utf-8", errors="replace")
