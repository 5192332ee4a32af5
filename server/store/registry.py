"""The runs in flight: a pool of slots, each a lock file held by the process that owns the run in it.

A slot is <state_dir>/slots/<n>.lock, an flock plus a JSON description of its run (run id, token, device,
deadline, log), written the way the repository lock writes its holder. The kernel drops the flock when the
owner dies, so a slot whose file still describes a run but whose flock is free was left by a dead owner:
recovery kills what is left of that run by its token and records it interrupted. There are never more runs
than slots, because a run starts only once it holds one; a slot freed by a crash is taken again like any.

Each slot may name a device (a GPU index): the run and its evaluator then see only that GPU.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import BusyError
from server.store.lock import Held, RepoLock

TAKE_TRIES = 3  # a reader's momentary shared lock can make a free slot look taken
READ_TRIES = 20  # a slot's owner rewrites its file in place: a reader may catch it half-written


@dataclass
class Slot:
    """A slot held by this process for one run."""

    index: int
    device: str | None
    held: Held

    def describe(self, info: dict[str, Any]) -> None:
        self.held.describe({"op": "run", "slot": self.index, "device": self.device, **info})

    def release(self) -> None:
        self.held.release()

    @property
    def fd(self) -> int:
        return self.held.fd


class Slots:
    """The pool: `count` slots, slot i on devices[i] when devices are given."""

    def __init__(self, folder: Path, count: int, devices: list[str] | None = None) -> None:
        self.folder = folder
        self.count = max(1, count)
        self.devices = devices or []

    def path(self, index: int) -> Path:
        return self.folder / f"{index}.lock"

    def device(self, index: int) -> str | None:
        return self.devices[index % len(self.devices)] if self.devices else None

    def take(self) -> tuple[Slot, dict[str, Any]]:
        """A free slot and what a dead owner left in it ({} when nothing); BusyError naming the runs in flight
        when every slot is busy."""
        for attempt in range(TAKE_TRIES):
            for index in range(self.count):
                try:
                    held = RepoLock(self.path(index)).acquire("run")
                except BusyError:
                    continue
                stale = held.stale if held.stale.get("op") == "run" else {}
                return Slot(index, self.device(index), held), stale
            if attempt + 1 < TAKE_TRIES:
                time.sleep(0.05)
        running = "; ".join(f"run {i.get('run_id')} ({i.get('description', '')!r})" for i in self.live())
        raise BusyError(f"busy: all {self.count} slot(s) have a run in flight ({running or 'starting'}); wait for one "
                        "with get_history(wait_for=[run ids]), then start the next.")  # fmt: skip

    def live(self) -> list[dict[str, Any]]:
        """The runs in flight: slots whose flock is held, by this process or another."""
        return [info for info, alive in self.scan() if alive]

    def scan(self) -> list[tuple[dict[str, Any], bool]]:
        """Each described slot's run and whether its owner still holds it. A held slot whose file cannot be read
        (its owner is rewriting it) is read again; if it stays unreadable it counts as a live unknown run."""
        found = []
        for path in sorted(self.folder.glob("*.lock"), key=lambda p: p.stem.zfill(6)):
            info = RepoLock(path).read()
            alive = _held_by_someone(path)
            for _ in range(READ_TRIES):
                if info.get("op") in ("run", "sweep") or not alive:
                    break
                time.sleep(0.01)
                info, alive = RepoLock(path).read(), _held_by_someone(path)
            if info.get("op") == "run" or (alive and info.get("op") not in ("sweep",)):
                found.append((info if info.get("op") == "run" else {"op": "run", "unreadable": str(path)}, alive))
        return found

    def sweep(self) -> list[dict[str, Any]]:
        """Take and clear every slot a dead owner left described; what each said (for recovery)."""
        left = []
        for info, alive in self.scan():
            if alive:
                continue
            try:
                held = RepoLock(self.path(int(info.get("slot", -1)))).acquire("sweep")
            except (BusyError, ValueError, TypeError):
                continue  # taken meanwhile by a live run
            if held.stale.get("op") == "run":
                left.append(held.stale)
            held.release()
        return left


def _held_by_someone(path: Path) -> bool:
    """Whether any process (this one included, through another descriptor) holds the slot's flock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a shared lock just taken
    return False


def read_live(state_dir: Path) -> list[dict[str, Any]]:
    """The runs in flight as their slot files describe them, for readers outside the server (watch, hooks, the
    dashboard): a slot counts while its owner's process exists; nothing is locked, so no run can be disturbed."""
    runs = []
    for path in sorted((state_dir / "slots").glob("*.lock"), key=lambda p: p.stem.zfill(6)):
        try:
            info = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("op") == "run" and _pid_alive(info.get("pid")):
            runs.append(info)
    return runs


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
