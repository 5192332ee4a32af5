"""The runs in flight: a pool of slots, each a lock file held by the process that owns the run in it.

A slot is <state_dir>/slots/<n>.lock, an flock plus a JSON description of its run (server/schema.py's
SlotInfo: run id, token, device, deadline, log), written the way the repository lock writes its holder. The
kernel drops the flock when the owner dies, so a slot whose file still describes a run but whose flock is free
was left by a dead owner: recovery kills what is left of that run by its token and records it interrupted.
There are never more runs than slots, because a run starts only once it holds one; a slot freed by a crash is
taken again like any.

Each slot may name a device (a GPU index): the run and its evaluator then see only that GPU.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from server.errors import BusyError
from server.schema import SlotInfo, slot_files
from server.store.lock import Held, RepoLock

TAKE_TRIES = 3  # a reader's momentary shared lock can make a free slot look taken
READ_TRIES = 20  # a slot's owner rewrites its file in place: a reader may catch it half-written


@dataclass
class Slot:
    """A slot held by this process for one run."""

    index: int
    device: str | None
    held: Held

    def describe(self, info: SlotInfo) -> None:
        self.held.describe(info.replace(op="run", slot=self.index, device=self.device, pid=None, since=None).as_json())

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

    def take(self) -> tuple[Slot, SlotInfo | None]:
        """A free slot and the run a dead owner left in it (None when nothing); BusyError naming the runs in
        flight when every slot is busy."""
        for attempt in range(TAKE_TRIES):
            for index in range(self.count):
                try:
                    held = RepoLock(self.path(index)).acquire("run")
                except BusyError:
                    continue
                stale = SlotInfo.from_json(held.stale)
                return Slot(index, self.device(index), held), stale if stale.is_run else None
            if attempt + 1 < TAKE_TRIES:
                time.sleep(0.05)
        running = "; ".join(f"run {i.run_id} ({i.description!r})" for i in self.live())
        raise BusyError(f"busy: all {self.count} slot(s) have a run in flight ({running or 'starting'}); wait for one "
                        "with get_history(wait_for=[run ids]), then start the next.")  # fmt: skip

    def live(self) -> list[SlotInfo]:
        """The runs in flight: slots whose flock is held, by this process or another."""
        return [info for info, alive in self.scan() if alive]

    def scan(self) -> list[tuple[SlotInfo, bool]]:
        """Each described slot's run and whether its owner still holds it. A held slot whose file cannot be read
        (its owner is rewriting it) is read again; if it stays unreadable it counts as a live unknown run."""
        found = []
        for path in slot_files(self.folder):
            info = RepoLock(path).read()
            alive = _held_by_someone(path)
            for _ in range(READ_TRIES):
                if info.get("op") in ("run", "sweep") or not alive:
                    break
                time.sleep(0.01)
                info, alive = RepoLock(path).read(), _held_by_someone(path)
            if info.get("op") == "run" or (alive and info.get("op") not in ("sweep",)):
                found.append((SlotInfo.from_json(info) if info.get("op") == "run" else
                              SlotInfo(op="run", unreadable=str(path)), alive))  # fmt: skip
        return found

    def sweep(self) -> list[SlotInfo]:
        """Take and clear every slot a dead owner left described; what each said (for recovery)."""
        left = []
        for info, alive in self.scan():
            if alive:
                continue
            try:
                held = RepoLock(self.path(info.slot if info.slot is not None else -1)).acquire("sweep")
            except BusyError:
                continue  # taken meanwhile by a live run
            if held.stale.get("op") == "run":
                left.append(SlotInfo.from_json(held.stale))
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
