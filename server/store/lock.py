"""One operation at a time per repository, across threads and server processes.

The lock is an flock on <state_dir>/lock; the file also says who holds it (JSON), so a loser can be told
who is running what, and so a server that was killed mid-run leaves behind what recovery needs: the
kernel drops the flock with the dead process, but the description of its run stays in the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.errors import BusyError, StorageError
from server.schema import SlotInfo


class RepoLock:
    """An exclusive, non-blocking lock whose file holds the holder's description."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        """The holder's description (or a dead holder's), {} when none."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @contextmanager
    def hold(self, op: str, wait: float = 0.0) -> Iterator[Held]:
        """Take the lock, waiting up to `wait` seconds for its holder, or raise BusyError naming the holder."""
        held = self.acquire(op, wait)
        try:
            yield held
        finally:
            held.release()

    def acquire(self, op: str, wait: float = 0.0) -> Held:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        give_up = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < give_up:
                    time.sleep(0.02)
                    continue
                os.close(fd)
                raise BusyError(busy_message(self.read())) from None
        stale = self.read()
        held = Held(fd, self.path, stale)
        try:
            held.describe({"op": op})
        except StorageError:
            held.release()
            raise
        return held


class Held:
    """A taken lock. `stale` is what the previous holder left: a run there means that holder died."""

    def __init__(self, fd: int, path: Path, stale: dict[str, Any]) -> None:
        self.fd, self.path, self.stale = fd, path, stale

    def describe(self, info: dict[str, Any]) -> None:
        """Record what this holder is doing, for busy messages and for recovery after a crash."""
        data = json.dumps({"pid": os.getpid(), "since": time.time(), **info}).encode()
        try:
            os.pwrite(self.fd, data, 0)  # over the old text, then cut: a reader never finds the file empty
            os.ftruncate(self.fd, len(data))
            os.fsync(self.fd)
        except OSError as exc:
            raise StorageError(f"could not write the lock file {self.path} ({exc.strerror}); "
                               "free disk space and retry.") from exc  # fmt: skip

    def hand_over(self) -> None:
        """Close this process's descriptor without unlocking: a child that inherited it holds the lock now."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def release(self) -> None:
        if self.fd < 0:
            return
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = -1


def busy_message(info: dict[str, Any]) -> str:
    """One sentence naming the holder and, for a run, its time left."""
    if running := SlotInfo.from_json(info).describe():
        return f"busy: {running}; wait, then call get_history."
    if info.get("op"):
        return f"busy: process {info.get('pid')} is doing {info['op']}; retry in a moment."
    return "busy: another autoresearch process holds the lock; retry in a moment."
