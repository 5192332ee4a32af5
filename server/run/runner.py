"""Runs one process of a run (the experiment, or its evaluator): sandboxed or in its own process group,
stdin closed, output to a capped log, a hard wall-clock limit, limits on memory and processes measured by
the server, the server's own clock on the contract's marker lines, and a kill that reaches every process.

The interface is small on purpose (start, progress, wait, kill) so other runners (a pool of GPUs, a
cluster) can stand in for LocalRunner.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import psutil

from server.run import sandbox
from server.run.summary import MARKERS, Progress, parse_progress
from server.run.usage import Usage, cpu_now

RUN_TOKEN_VAR = "AUTORESEARCH_RUN_ID"
_ACTIVE: dict[int, LocalExecution] = {}  # runs of this process not yet collected, for kill_all_now
_KILL_HOOKS: list[Callable[[], None]] = []  # other runners' own kill_all_now (a cluster's tasks)
StopReason = Literal["exited", "timeout", "cancelled", "memory", "processes"]
SAMPLE_EVERY_S = 0.2  # memory and process count of the run, measured by the server
GPU_SAMPLE_EVERY_S = 2.0


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
    view: sandbox.View | None = None  # None: unsandboxed (sandbox = "off")
    memory_limit_mb: float = 0.0  # 0: no limit
    max_processes: int = 0  # 0: no limit
    data_files: tuple[str, ...] | None = None  # the dataset's files this process may read; None: all (the evaluator)


@dataclass(frozen=True)
class Outcome:
    """How the process ended and what the server measured; statuses are decided by the caller."""

    stop: StopReason
    exit_code: int | None
    wall_seconds: float
    log_bytes_dropped: int = 0
    log_error: str | None = None
    marks: dict[str, float] = field(default_factory=dict)  # marker -> seconds after start (first start, last end)
    last_step_gap: float | None = None  # seconds between the last two progress lines before the end marker
    peak_memory_mb: float | None = None
    peak_gpu_memory_mb: float | None = None
    processes: int = 0  # the most processes seen at once
    cpu_seconds: float | None = None  # on a CPU, summed over the run's threads (the kernel's schedstat)
    cpu_wait_seconds: float | None = None  # runnable but waiting for a CPU: what other processes took from it
    # CPU seconds of the run's processes since they started (user + system, every thread and child, the kernel's
    # count): at the first start line, at the last end line, and at exit. What a run computes outside its timed
    # window is judged from these (server/run/outcome.py: outside_cpu).
    cpu_marks: dict[str, float] = field(default_factory=dict)


class Execution(Protocol):
    pid: int

    def progress(self) -> Progress | None: ...
    def wait(self, timeout: float) -> Outcome | None: ...
    def kill(self, reason: StopReason) -> None: ...


class Runner(Protocol):
    def start(self, spec: RunSpec) -> Execution: ...
    def sweep(self, token: str) -> int: ...


class LocalRunner:
    """Runs experiments on this machine."""

    warm = True  # an evaluator can start with its run: they share this machine's files

    def start(self, spec: RunSpec) -> LocalExecution:
        return LocalExecution(spec)

    def sweep(self, token: str) -> int:
        """Kill what is left of a run whose owner died (recovery): its processes, by its token."""
        return kill_by_token(token)


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
    """One running process tree: the experiment, or an evaluator."""

    def __init__(
        self, spec: RunSpec, on_output: Callable[[bytes], None] | None = None, stdin_pipe: bool = False
    ) -> None:
        self.spec = spec
        self._on_output = on_output  # also handed every chunk of output (a remote runner streams it)
        self.spare = False  # started ahead of its run (server/run/spares.py): its clock starts at begin()
        self.started = time.monotonic()
        self.wall_started = time.time()
        self._stop: StopReason = "exited"
        self._progress: Progress | None = None
        self._outcome: Outcome | None = None
        self._clock = _Clock()
        self._cpu_marks: dict[str, float] = {}
        self._cpu_exit: float | None = None  # wait4's: the run's CPU seconds, its reaped children's included
        self._usage = Usage()
        self._log = _CappedLog(spec.log_path, spec.max_log_bytes)
        env = {**spec.env, RUN_TOKEN_VAR: spec.token}
        argv = sandbox.command(spec.view, spec.argv, spec.cwd) if spec.view is not None else spec.argv
        self.proc = subprocess.Popen(
            argv, cwd=spec.cwd, env=env, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
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
        threading.Thread(target=self._watch, name=f"usage-{self.pid}", daemon=True).start()

    def _reap(self) -> None:
        """Reap the run with wait4: its resource usage is the kernel's peak memory of the run's processes."""
        try:
            _, status, usage = os.wait4(self.pid, 0)
            self._cpu_exit = usage.ru_utime + usage.ru_stime
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self._usage.kernel_peak(usage.ru_maxrss / 1024)  # Linux reports KiB
        except ChildProcessError:
            self.proc.wait()
        self._exited.set()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        pending = b""
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):  # type: ignore[union-attr,attr-defined,unused-ignore]
            arrived = self.elapsed()
            if self._log.closed:
                return  # an escaped child still holds the pipe after the run was collected
            self._log.write(chunk)
            if self._on_output is not None:
                self._on_output(chunk)
            pending = (pending + chunk)[-4096:]
            *lines, pending = pending.split(b"\n")
            for line in lines[-50:]:
                text = line.decode("utf-8", "replace").strip()
                if self._clock.stamp(text, arrived):  # a start or end line: the CPU the run used until now
                    self._cpu_marks[self._clock.last_mark] = cpu_now(_tree(self.pid))
                progress = parse_progress(text)
                self._progress = progress or self._progress

    def _watch(self) -> None:
        """Sample the process tree's memory and size; kill it when it passes a limit the human set."""
        gpu_next = 0.0
        while not self._exited.wait(SAMPLE_EVERY_S):
            tree = _tree(self.pid)
            self._usage.sample(tree)
            if self.elapsed() >= gpu_next:
                self._usage.sample_gpu({p.pid for p in tree})
                gpu_next = self.elapsed() + GPU_SAMPLE_EVERY_S
            reason = self._usage.over(self.spec.memory_limit_mb, self.spec.max_processes)
            if reason is not None:
                self.kill(reason)
                return

    def progress(self) -> Progress | None:
        return self._progress

    def alive(self) -> bool:
        """Whether the process still runs (no limit is enforced here: see wait)."""
        return not self._exited.is_set()

    def begin(self, word: bytes) -> None:
        """A process started with stdin_pipe is told what to run: the clock (and the wall-clock limit) start
        again from here, and the word goes to its standard input, which is then closed."""
        self.started = time.monotonic()
        self._clock = _Clock()
        self._cpu_marks = {}  # counted from the process's start all the same: a spare waits for its word idle
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word)
            self.proc.stdin.close()
        except OSError:  # it died waiting: its outcome says so
            pass

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
        """TERM every process of the run, KILL them after the grace period, then sweep escaped descendants."""
        if self._stop == "exited":
            self._stop = reason
        tree = _tree(self.pid)
        _signal_all(tree, signal.SIGTERM)
        _signal_group(self.pid, signal.SIGTERM)
        try:
            self.proc.wait(self.spec.kill_grace)
        except subprocess.TimeoutExpired:
            pass
        _signal_all(_tree(self.pid) + tree, signal.SIGKILL)
        _signal_group(self.pid, signal.SIGKILL)  # the sandbox's PID namespace dies with its first process
        self.proc.wait()

    def _finish(self) -> Outcome:
        if self._outcome is not None:
            return self._outcome
        _ACTIVE.pop(self.pid, None)
        _signal_group(self.pid, signal.SIGKILL)  # children left in the group after the leader exited
        kill_by_token(self.spec.token, since=self.wall_started)
        self._reader.join(timeout=10)
        self._log.close()
        if self.proc.stdin is not None and not self.proc.stdin.closed:  # a spare that never got its word
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        usage = self._usage
        cpu_marks = dict(self._cpu_marks)
        if cpu_marks:
            # the most sampled too: a sandbox's inner processes are not bwrap's children, wait4 misses them
            cpu_marks["exit"] = round(max([self._cpu_exit or 0.0, usage.cpu_seen, *cpu_marks.values()]), 3)
        self._outcome = Outcome(
            self._stop, self.proc.returncode, round(self.elapsed(), 3), self._log.dropped, self._log.error,
            marks=dict(self._clock.marks), last_step_gap=self._clock.last_step_gap,
            peak_memory_mb=usage.peak_mb or None, peak_gpu_memory_mb=usage.peak_gpu_mb, processes=usage.most,
            cpu_seconds=usage.cpu_seconds(), cpu_wait_seconds=usage.wait_seconds(), cpu_marks=cpu_marks,
        )  # fmt: skip
        return self._outcome


class _Clock:
    """The server's clock on the run's marker lines: the first start, the last end, steps in between."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.steps: deque[float] = deque(maxlen=2)
        self.last_step_gap: float | None = None
        self.last_mark = ""

    def stamp(self, line: str, at: float) -> bool:
        """Stamp a marker line; True when it set a mark (the first start, or an end: the last one counts)."""
        name = MARKERS.get(line)
        if name is not None:
            if name == "end" and len(self.steps) == 2:
                self.last_step_gap = round(self.steps[1] - self.steps[0], 3)
            if name != "start" or "start" not in self.marks:
                self.marks[name] = round(at, 3)
                self.last_mark = name
                return True
        elif line.startswith("step "):
            self.steps.append(at)
        return False


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def kill_all_now() -> None:
    """SIGKILL every run this process started and has not collected: the server itself is being stopped."""
    for hook in list(_KILL_HOOKS):
        hook()
    for execution in list(_ACTIVE.values()):
        _signal_group(execution.pid, signal.SIGKILL)
        kill_by_token(execution.spec.token)


def on_kill_all(hook: Callable[[], None]) -> None:
    """Have kill_all_now call hook too (once per hook): runs this process started elsewhere."""
    if hook not in _KILL_HOOKS:
        _KILL_HOOKS.append(hook)


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
