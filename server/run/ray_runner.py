"""Runs each process of a run (the experiment, then its evaluator) as a task on a Ray cluster, chosen by the
human's configuration: `runner = "ray"` and `ray_address` in autoresearch.toml (deploy/ray/README.md).

The task asks for the resources a run needs (ray_num_gpus, ray_num_cpus), gets the run's folders as a tar, and
runs the same LocalExecution there (server/run/ray_worker.py), so the sandbox, the limits and the server's clock on
the marker lines are the worker's copy of this server's code, never the experiment's word. Its output streams
back into the run's log here as it comes (progress reads it); what it wrote comes back at the end. A worker
that dies ends the run as a crash with the log so far; a kill cancels the task (force) and sweeps its node.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path
from typing import Any

from server.config import CONFIG_NAME, Config
from server.errors import ConfigError
from server.run.ray_data import Shelf
from server.run.ray_worker import (
    Finished,
    Message,
    Output,
    Shipment,
    Started,
    dataset,
    pack,
    shipped,
    sweep,
    unpack,
    work,
)
from server.run.runner import (
    LocalRunner,
    Outcome,
    Runner,
    RunSpec,
    StopReason,
    _CappedLog,
    _Clock,
    on_kill_all,
)
from server.run.summary import Progress, parse_progress

log = logging.getLogger("autoresearch")
BACKSTOP_S = 30.0  # past the worker's own wall-clock limit and kill grace, the server cancels the task itself
SWEEP_WAIT_S = 20.0  # for the task that kills what a cancelled worker left behind
_IN_FLIGHT: dict[int, RayExecution] = {}  # tasks of this process not yet collected, for kill_all_now
_REMOTE: dict[str, Any] = {}  # the remote functions, made once a cluster is connected
SHELF = Shelf()  # the dataset's files in the object store, put once for every run of this server


def runner_for(config: Config) -> Runner:
    """The runner the human's configuration names."""
    if config.runner == "ray":
        return RayRunner(config.ray_address, config.ray_num_gpus, config.ray_num_cpus, config.ray_resources)
    return LocalRunner()


class RayRunner:
    """Runs experiments as Ray tasks; connects to the cluster on the first run (health checks never do)."""

    def __init__(self, address: str = "", num_gpus: float = 1.0, num_cpus: float = 1.0,
                 resources: dict[str, float] | None = None) -> None:  # fmt: skip
        if importlib.util.find_spec("ray") is None:
            raise ConfigError(f'runner = "ray" in {CONFIG_NAME} needs Ray: pip install "autoresearch-mcp[ray]" '
                              '(or set runner = "local")')  # fmt: skip
        self.address, self.num_gpus, self.num_cpus = address, num_gpus, num_cpus
        self.resources = dict(resources or {})
        on_kill_all(cancel_all)

    def start(self, spec: RunSpec) -> RayExecution:
        try:
            connect(self.address)
        except Exception as exc:  # Ray's own errors: no cluster there, another Ray version, refused
            where = f"at {self.address!r}" if self.address else "(RAY_ADDRESS, or a new one on this machine)"
            raise ConfigError(f"could not join the Ray cluster {where}: {str(exc).strip()[:300]}; the human must "
                              f"start it or fix ray_address in {CONFIG_NAME}: stop and tell them") from exc  # fmt: skip
        return RayExecution(spec, self.num_gpus, self.num_cpus, self.resources)

    def sweep(self, token: str) -> int:
        """Recovery after the server died with runs in flight: Ray ended the dead driver's tasks (and a
        sandboxed run with its worker); what an unsandboxed run left on any node is killed here, on every live
        node, with the run's folders there. Its result never arrived, so the run is recorded interrupted once."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        killed = 0  # nothing of a Ray run runs on the server's machine but as a task of a node (the head's too)
        try:
            connect(self.address)
            nodes = [node["NodeID"] for node in ray.nodes() if node.get("Alive")]  # type: ignore[no-untyped-call]
            tasks = [_REMOTE["sweep"].options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                     .remote(token) for node in nodes]  # fmt: skip
            killed += sum(ray.get(tasks, timeout=SWEEP_WAIT_S))
        except Exception as exc:  # no cluster now: nothing of it can run either
            log.warning("could not sweep the Ray cluster for run token %s: %s", token[:8], exc)
        return killed


def connect(address: str = "", **local: Any) -> None:
    """Join the cluster at address (empty: RAY_ADDRESS, else start one on this machine, with `local`'s
    resources). Worker output is not forwarded: this process's stdout is the MCP wire."""
    import ray

    if not ray.is_initialized():
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "runtime_env": code()}
        if not address and not os.environ.get("RAY_ADDRESS"):
            options.update(include_dashboard=False, **local)
        check_reachable(address)
        on_term = signal.getsignal(signal.SIGTERM)
        ray.init(address=address or None, **options)
        SHELF.forget()
        if threading.current_thread() is threading.main_thread():  # ray.init replaces it there: the server's
            signal.signal(signal.SIGTERM, on_term)  # handler must still kill the runs (kill_all_now) on SIGTERM
    if _REMOTE:
        return
    _REMOTE["work"] = ray.remote(max_retries=0)(work)  # a dead worker is a crash, never silently a rerun
    _REMOTE["sweep"] = ray.remote(max_retries=0, num_cpus=0)(sweep)


def code() -> dict[str, Any]:
    """The server's own code for every task of this driver (Ray's runtime environment): the server package and
    the experiment folder beside it (the output contract's names are read from its locked prepare.py). A worker
    needs Ray, torch and bubblewrap; nothing of this repository is installed there."""
    package = Path(__file__).resolve().parents[1]
    modules = [package, package.parent / "experiment"]
    return {"py_modules": [str(path) for path in modules if path.is_dir()], "excludes": ["__pycache__", "*.pyc"]}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a HOST:PORT nobody listens on at once (ray.init would retry it for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "://" in address:
        return  # "auto", empty: Ray finds the cluster itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc.strerror or exc})") from exc


class RayExecution:
    """One process of a run as a Ray task, seen from the server. pid is the run's process on its node (0 until
    it starts there)."""

    def __init__(
        self, spec: RunSpec, num_gpus: float, num_cpus: float, resources: dict[str, float] | None = None
    ) -> None:
        self.spec, self.pid = spec, 0
        self.node_id: str | None = None
        self.host: str | None = None
        self.fetched = 0  # bytes of the dataset sent to the node for this process (0: it had them)
        self.submitted = time.monotonic()
        self.started: float | None = None  # when the worker said the run started (this machine's clock)
        self.arrivals = _Clock()  # marker lines stamped as they arrive here: the worker's stamps plus streaming
        self.delays: deque[float] = deque(maxlen=1000)  # seconds from the worker's send to arrival here
        self._progress: Progress | None = None
        self._stop: StopReason | None = None
        self._result: Outcome | None = None
        self._lost: str | None = None
        self._outcome: Outcome | None = None
        self._pending = b""
        self._log = _CappedLog(spec.log_path, spec.max_log_bytes)
        self._base = spec.cwd.parent
        self._names = shipped(spec, self._base)
        data = dataset(spec)
        ship = SHELF.ship(data, spec.data_files) if data is not None and (data / "meta.json").is_file() else None
        files = pack(self._base, self._names)
        shipment = Shipment(spec, self._base, files, sys.executable, ship, tuple(self._names))
        name = f"autoresearch-{spec.cwd.name}-{spec.token[:8]}"
        options = {"num_gpus": num_gpus, "num_cpus": num_cpus, "resources": resources or {}, "name": name}
        self._task = _REMOTE["work"].options(**options).remote(shipment)
        self._done = threading.Event()
        _IN_FLIGHT[id(self)] = self
        self._puller = threading.Thread(target=self._pull, name=f"ray-{name}", daemon=True)
        self._puller.start()

    def _pull(self) -> None:
        import ray

        try:
            for ref in self._task:
                self._take(ray.get(ref))
        except BaseException as exc:  # the worker died, the task was cancelled or failed, Ray shut down
            self._lost = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        finally:
            self._done.set()

    def _take(self, message: Message) -> None:
        if isinstance(message, Started):
            self.pid, self.node_id, self.host, self.started = message.pid, message.node_id, message.host, self.elapsed()
            self.fetched = message.fetched
            log.info("run process %s started on Ray node %s (%s)", self.spec.cwd.name, self.host, self.node_id[:12])
            if message.fetched:
                self._note(
                    f"the dataset's files for this process came to Ray node {self.host} ({self.node_id[:12]}): "
                    f"{message.fetched / 1e6:.1f} MB in {message.fetch_seconds:.2f} s; cached there by content"
                )
        elif isinstance(message, Output):
            self.delays.append(time.time() - message.sent)
            self._feed(message.data)
        elif isinstance(message, Finished):
            for rel in message.deleted:
                if Path(rel).parts[0] in self._names and ".." not in Path(rel).parts:
                    (self._base / rel).unlink(missing_ok=True)
            unpack(message.files, self._base, self._names)
            self._result = message.outcome

    def _feed(self, chunk: bytes) -> None:
        """Into the run's log; progress and arrival stamps from its lines (as LocalExecution reads a pipe)."""
        arrived = self.elapsed() - (self.started or 0.0)
        self._log.write(chunk)
        self._pending = (self._pending + chunk)[-4096:]
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines[-50:]:
            text = line.decode("utf-8", "replace").strip()
            self.arrivals.stamp(text, arrived)
            self._progress = parse_progress(text) or self._progress

    def elapsed(self) -> float:
        return time.monotonic() - self.submitted

    def progress(self) -> Progress | None:
        return self._progress

    def _deadline(self) -> float:
        """Seconds left before the server cancels the task: the wall-clock limit counts from the run's start on
        its worker (a task may wait for a free GPU, up to the limit once more)."""
        if self.started is None:
            return self.spec.wall_limit - self.elapsed()
        return self.started + self.spec.wall_limit + self.spec.kill_grace + BACKSTOP_S - self.elapsed()

    def wait(self, timeout: float) -> Outcome | None:
        """Wait up to timeout seconds; the Outcome once the task ended (the worker enforces the limit)."""
        if self._outcome is not None:
            return self._outcome
        if not self._done.wait(max(0.0, min(timeout, self._deadline()))):
            if self._deadline() > 0:
                return None
            if self.started is None:
                self._note(f"no Ray worker with the resources this run asks for was free in {self.elapsed():.0f}s")
            self.kill("timeout")
        return self._finish()

    def kill(self, reason: StopReason) -> None:
        """Cancel the task (its worker is killed, and a sandboxed run with it), then sweep its node."""
        import ray

        if self._stop is None:
            self._stop = reason
        if self._done.is_set():
            return
        ray.cancel(self._task, force=True)
        self._puller.join(timeout=SWEEP_WAIT_S)
        self.sweep()

    def sweep(self, wait: float = SWEEP_WAIT_S) -> None:
        """Kill the run's processes left on its node (an unsandboxed run's do not die with the worker)."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.node_id is None:
            return
        strategy = NodeAffinitySchedulingStrategy(self.node_id, soft=False)
        try:
            ray.get(_REMOTE["sweep"].options(scheduling_strategy=strategy).remote(self.spec.token), timeout=wait)
        except Exception as exc:  # the node is gone, and its processes with it
            log.warning("could not sweep Ray node %s after run %s: %s", self.host, self.spec.cwd.name, exc)

    def _note(self, text: str) -> None:
        self._log.write(f"\n[autoresearch: {text}]\n".encode())

    def _finish(self) -> Outcome:
        if self._outcome is not None:
            return self._outcome
        self._puller.join(timeout=SWEEP_WAIT_S)
        _IN_FLIGHT.pop(id(self), None)
        if self._result is None and self._stop is None:
            self.sweep()
            self._note(f"the Ray task running this ended without a result ({self._lost}); the log above is all "
                       "that arrived; not train.py's fault if it repeats: tell the human")  # fmt: skip
        self._log.close()
        self._outcome = self._outcome_now()
        return self._outcome

    def _outcome_now(self) -> Outcome:
        dropped, error = self._log.dropped, self._log.error
        result = self._result
        if result is None:  # a crash or a kill: what this side saw
            clock = self.arrivals
            wall = round(self.elapsed() - (self.started or self.elapsed()), 3)
            return Outcome(self._stop or "exited", None, wall, dropped, error, dict(clock.marks), clock.last_step_gap)
        stop = result.stop if result.stop != "exited" else (self._stop or "exited")
        return replace(result, stop=stop, log_bytes_dropped=dropped, log_error=error)


def cancel_all() -> None:
    """For kill_all_now (the server is being stopped): cancel every task in flight and sweep, in about a
    second (a client sends SIGKILL 2 s after SIGTERM)."""
    import ray

    executions = list(_IN_FLIGHT.values())
    for execution in executions:
        if not execution._done.is_set():
            ray.cancel(execution._task, force=True)
    for execution in executions:
        execution.sweep(wait=1.0 / max(1, len(executions)))
