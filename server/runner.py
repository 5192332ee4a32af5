"""Runs one experiment snapshot as a subprocess: own process group, stdin closed, output to a capped log,
a hard wall-clock limit, and a kill that reaches every process the run started.

The interface is small on purpose (start, progress, wait, kill) so other runners (one per GPU, a cluster)
can stand in for LocalRunner later.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import psutil

from server.summary import Progress, parse_progress

RUN_TOKEN_VAR = "AUTORESEARCH_RUN_ID"
_ACTIVE: dict[int, LocalExecution] = {}  # runs of this process not yet collected, for kill_all_now
StopReason = Literal["exited", "timeout", "cancelled"]


@dataclass(frozen=True)
class RunSpec:
    """What to run and under which limits."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    wall_limit: float
    token: str
    kill_grace: float = 5.0
    max_log_bytes: int = 5_000_000


@dataclass(frozen=True)
class Outcome:
    """How the process ended; classification into run statuses happens in the caller."""

    stop: StopReason
    exit_code: int | None
    wall_seconds: float
    log_bytes_dropped: int = 0
    log_error: str | None = None


class Execution(Protocol):
    pid: int

    def progress(self) -> Progress | None: ...
    def wait(self, timeout: float) -> Outcome | None: ...
    def kill(self, reason: StopReason) -> None: ...


class Runner(Protocol):
    def start(self, spec: RunSpec) -> Execution: ...


class LocalRunner:
    """Runs experiments on this machine."""

    def start(self, spec: RunSpec) -> LocalExecution:
        return LocalExecution(spec)


@dataclass
class _CappedLog:
    """Keeps the head of the output on disk and the tail in memory; the summary block is in the tail."""

    path: Path
    cap: int
    written: int = 0
    dropped: int = 0
    tail: deque[bytes] = field(default_factory=deque)
    tail_bytes: int = 0
    error: str | None = None

    def __post_init__(self) -> None:
        self.fh = self.path.open("wb")

    def write(self, chunk: bytes) -> None:
        room = self.cap // 2 - self.written
        if room > 0:
            self._to_disk(chunk[:room])
            self.written += min(room, len(chunk))
            chunk = chunk[room:]
        if chunk:
            self.tail.append(chunk)
            self.tail_bytes += len(chunk)
            while self.tail_bytes > self.cap // 2:
                excess = self.tail_bytes - self.cap // 2
                first = self.tail.popleft()
                if len(first) > excess:
                    self.tail.appendleft(first[excess:])
                cut = min(excess, len(first))
                self.tail_bytes -= cut
                self.dropped += cut

    @property
    def closed(self) -> bool:
        return self.fh.closed

    def _to_disk(self, data: bytes) -> None:
        """Write unless an earlier write failed: a full disk must not stop the pipe being drained."""
        if self.error is not None:
            return
        try:
            self.fh.write(data)
            self.fh.flush()
        except OSError as exc:
            self.error = exc.strerror or str(exc)

    def close(self) -> None:
        if self.dropped:
            self._to_disk(f"\n[autoresearch: {self.dropped} bytes of output dropped here]\n".encode())
        self._to_disk(b"".join(self.tail))
        try:
            self.fh.close()
        except OSError as exc:  # the buffered rest could not be written either
            self.error = self.error or exc.strerror or str(exc)


class LocalExecution:
    """One running experiment process group."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.started = time.monotonic()
        self.wall_started = time.time()
        self._stop: StopReason = "exited"
        self._progress: Progress | None = None
        self._outcome: Outcome | None = None
        self._log = _CappedLog(spec.log_path, spec.max_log_bytes)
        env = {**spec.env, RUN_TOKEN_VAR: spec.token}
        self.proc = subprocess.Popen(
            spec.argv, cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name=f"log-{self.pid}", daemon=True)
        self._reader.start()
        # A blocking waitpid in a thread wakes us the moment the run exits; Popen.wait(timeout) polls
        # with sleeps of up to 50 ms, added to every experiment.
        self._exited = threading.Event()
        _ACTIVE[self.pid] = self
        threading.Thread(target=self._reap, name=f"reap-{self.pid}", daemon=True).start()

    def _reap(self) -> None:
        self.proc.wait()
        self._exited.set()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr,attr-defined,unused-ignore]
            if self._log.closed:
                return  # an escaped child still holds the pipe after the run was collected
            self._log.write(chunk)
            pending = (pending + chunk)[-4096:]
            *lines, pending = pending.split(b"\n")
            for line in lines[-50:]:
                progress = parse_progress(line.decode("utf-8", "replace"))
                self._progress = progress or self._progress

    def progress(self) -> Progress | None:
        return self._progress

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, timeout: float) -> Outcome | None:
        """Wait up to timeout seconds; enforce the wall-clock limit; the Outcome once it ended."""
        if self._outcome is not None:
            return self._outcome
        limit_left = self.spec.wall_limit - self.elapsed()
        if not self._exited.wait(max(0.0, min(timeout, limit_left))):
            if self.elapsed() < self.spec.wall_limit:
                return None
            self.kill("timeout")
        return self._finish()

    def kill(self, reason: StopReason) -> None:
        """TERM the whole group, KILL it after the grace period, then sweep escaped descendants."""
        self._stop = reason
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(self.spec.kill_grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_group(self.pid, signal.SIGKILL)
        self.proc.wait()

    def _finish(self) -> Outcome:
        if self._outcome is not None:
            return self._outcome
        _ACTIVE.pop(self.pid, None)
        _signal_group(self.pid, signal.SIGKILL)  # children left in the group after the leader exited
        kill_by_token(self.spec.token, since=self.wall_started)
        self._reader.join(timeout=10)
        self._log.close()
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        self._outcome = Outcome(self._stop, self.proc.returncode, round(self.elapsed(), 3), self._log.dropped,
                                self._log.error)  # fmt: skip
        return self._outcome


def kill_all_now() -> None:
    """SIGKILL every run this process started and has not collected: the server itself is being stopped."""
    for execution in list(_ACTIVE.values()):
        _signal_group(execution.pid, signal.SIGKILL)
        kill_by_token(execution.spec.token)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def kill_by_token(token: str, since: float = 0.0) -> int:
    """Kill every process whose environment carries this run's token (children that left the group)."""
    killed = 0
    for proc in psutil.process_iter(["create_time"]):
        try:
            if proc.info["create_time"] + 1 < since or proc.pid == os.getpid():
                continue
            if proc.environ().get(RUN_TOKEN_VAR) == token:
                proc.kill()
                killed += 1
        except (psutil.Error, OSError):
            continue
    return killed
