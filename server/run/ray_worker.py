"""What runs on a Ray worker for one process of a run (server/run/ray_runner.py is the server's side).

The run's folders are shipped as a tar and unpacked in a temporary folder; the prepared dataset comes through
the object store into the node's own cache (server/run/ray_data.py); the spec's paths that point into the
run's folder or the dataset are moved there, shared caches to a cache folder of the worker; then the same
LocalExecution as on the server's machine runs it (sandbox, limits, clock, kill), its output is streamed back
as it comes, and the files the run wrote or changed go home as another tar. The code is the server's own,
sent with Ray's runtime environment; the worker needs Ray, torch and bubblewrap (deploy/ray/README.md).
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from hashlib import sha1
from pathlib import Path

from server.run import sandbox
from server.run.ray_data import DataError, DataShip, Received, cache_root, receive
from server.run.runner import LocalExecution, Outcome, RunSpec, kill_by_token

STREAM_WAIT_S = 0.05  # how long the worker waits for more output before it checks whether the run ended
CACHE_DIR = "autoresearch-ray-cache"  # under the worker's temp folder: compile caches, kept across runs
UNFIT_EXIT = 127  # the run could not start on this worker (no bubblewrap, the dataset did not arrive intact)


@dataclass(frozen=True)
class Shipment:
    """One process of a run, as the server sends it."""

    spec: RunSpec  # with the server's paths
    base: Path  # the run's folder on the server: shipped folders are relative to it
    files: bytes  # a tar of the shipped folders
    python: str  # the server's interpreter (the worker runs its own in its place)
    data: DataShip | None = None  # the prepared dataset's files this process may read, when the server has one
    names: tuple[str, ...] = ()  # the shipped folders (found on the server: its paths do not exist here)


@dataclass(frozen=True)
class Started:
    pid: int  # the run's process on its node
    node_id: str
    host: str
    fetched: int = 0  # bytes of the dataset that came through the object store for this process
    fetch_seconds: float = 0.0


@dataclass(frozen=True)
class Output:
    data: bytes
    sent: float = 0.0  # the worker's time.time() when sent: the streaming delay, where clocks agree


@dataclass(frozen=True)
class Finished:
    outcome: Outcome
    files: bytes  # a tar of what the run wrote or changed in the shipped folders
    deleted: list[str]  # shipped files the run removed


Message = Started | Output | Finished


def shipped(spec: RunSpec, base: Path) -> list[str]:
    """The folders under the run's folder that the process uses: its working folder, and those its argv,
    environment and sandbox view name (the evaluator's model folder, a run's output folder)."""
    paths = [spec.cwd, *(Path(s) for s in [*spec.argv, *spec.env.values()] if s.startswith("/"))]
    if spec.view is not None:
        paths += [*spec.view.read_only, *spec.view.writable, *spec.view.locked]
    names = {p.relative_to(base).parts[0] for p in paths if base in p.parents}
    return sorted(name for name in names if (base / name).exists())


def pack(base: Path, names: list[str]) -> bytes:
    """A tar of base/name for each name: folders and regular files only."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in names:
            tar.add(base / name, arcname=name, filter=_plain)
    return buffer.getvalue()


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    return info if info.isfile() or info.isdir() else None


def unpack(data: bytes, base: Path, names: list[str] | None = None) -> None:
    """Unpack a tar into base; with names, only entries under those folders (tarfile's data filter refuses
    absolute paths, `..` and links)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        parts = {m.name: Path(m.name).parts for m in tar.getmembers()}
        members = [
            m for m in tar.getmembers() if (names is None or parts[m.name][0] in names) and ".." not in parts[m.name]
        ]
        tar.extractall(base, members=members, filter="data")


def manifest(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: its size and modification time, to find what a run changed."""
    files = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            files[str(path.relative_to(root))] = (stat.st_size, stat.st_mtime_ns)
    return files


def changes(root: Path, names: list[str], before: dict[str, tuple[int, int]]) -> tuple[bytes, list[str]]:
    """A tar of the files new or changed since `before` under root's shipped folders, and those removed."""
    after = {rel: seen for rel, seen in manifest(root).items() if Path(rel).parts[0] in names}
    changed = [rel for rel, seen in after.items() if before.get(rel) != seen]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for rel in sorted(changed):
            tar.add(root / rel, arcname=rel, recursive=False)
    return buffer.getvalue(), sorted(set(before) - set(after))


class Mover:
    """The server's paths, moved to the worker: the run's folder to root, writable folders outside it (the
    compile cache) to a cache folder of the worker; everything else stays where it is."""

    def __init__(self, base: Path, root: Path, spec: RunSpec, data: Received | None = None) -> None:
        self.base, self.root = base, root
        self.data: dict[Path, Path] = {}  # the server's data cache: the dataset's folders on this node
        if data is not None and spec.env.get("AUTORESEARCH_CACHE", "").startswith("/"):
            self.data = {Path(spec.env["AUTORESEARCH_CACHE"]): data.folder.parent}
        outside = [p for p in spec.view.writable if not self._inside(p)] if spec.view else []
        outside += [Path(v) for k, v in spec.env.items() if k.endswith("_CACHE_DIR") and v.startswith("/")]
        caches = Path(tempfile.gettempdir()) / CACHE_DIR
        self.caches = {p: caches / f"{p.name}-{sha1(str(p).encode()).hexdigest()[:10]}" for p in outside}

    def _inside(self, path: Path) -> bool:
        return path == self.base or self.base in path.parents

    def path(self, path: Path) -> Path:
        if self._inside(path):
            return self.root / path.relative_to(self.base)
        for cache, there in [*self.data.items(), *self.caches.items()]:
            if path == cache or cache in path.parents:
                return there / path.relative_to(cache)
        return path

    def text(self, value: str) -> str:
        return str(self.path(Path(value))) if value.startswith("/") and self.path(Path(value)) != Path(value) else value

    def view(self, view: sandbox.View, python_moved: bool) -> sandbox.View:
        """The view with moved paths; the worker's home and dataset cache hidden too; its own interpreter where it
        has another."""
        home = Path(os.environ.get("HOME") or "/")
        hide = [*view.hide, cache_root()]
        hide += [home] if home.is_dir() and home != Path("/") else []
        read_only = [self.path(p) for p in view.read_only]
        if python_moved:  # never the folders that hold hidden ones (the server's checkout on Ray's sys.path)
            read_only += [p for p in sandbox.interpreter_paths() if not any(p == h or p in h.parents for h in hide)]
        for cache in self.caches.values():
            cache.mkdir(parents=True, exist_ok=True)
        return replace(view, hide=hide, read_only=read_only, writable=[self.path(p) for p in view.writable],
                       locked=[self.path(p) for p in view.locked])  # fmt: skip


def localize(shipment: Shipment, root: Path, data: Received | None = None) -> RunSpec:
    """The spec with the worker's paths, its interpreter and the GPUs Ray gave this task."""
    spec, mover = shipment.spec, Mover(shipment.base, root, shipment.spec, data)
    argv = [sys.executable if part == shipment.python else mover.text(part) for part in spec.argv]
    env = {name: mover.text(value) for name, value in spec.env.items() if name != "CUDA_VISIBLE_DEVICES"}
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # Ray's choice for this task, not the server's own devices
        env["CUDA_VISIBLE_DEVICES"] = os.environ["CUDA_VISIBLE_DEVICES"]
    view = mover.view(spec.view, sys.executable != shipment.python) if spec.view is not None else None
    return replace(spec, argv=argv, cwd=mover.path(spec.cwd), env=env, log_path=root / "worker.log", view=view)


def dataset(spec: RunSpec) -> Path | None:
    """The prepared dataset the run is pointed at, where this machine has it."""
    cache, name = spec.env.get("AUTORESEARCH_CACHE"), spec.env.get("AUTORESEARCH_DATASET")
    return Path(cache) / name if cache and name and (Path(cache) / name).is_dir() else None


def unfit(spec: RunSpec) -> str | None:
    """Why this worker cannot run the spec, in a line for the run's log, or None."""
    if spec.view is not None and sandbox.bwrap_path() is None:
        host = socket.gethostname()
        return f"bwrap: bubblewrap is not installed on the Ray worker {host}; {sandbox.INSTALL_HINT} on every worker"
    return None


def work(shipment: Shipment) -> Iterator[Message]:
    """The Ray task (a streaming generator): Started, Output chunks as they come, then Finished."""
    root = Path(tempfile.mkdtemp(prefix=scratch_prefix(shipment.spec.token)))
    try:
        names = list(shipment.names)
        unpack(shipment.files, root)
        before = manifest(root)
        try:
            data = receive(shipment.data) if shipment.data is not None else None
        except (DataError, OSError) as exc:
            where = f"the Ray worker {socket.gethostname()}"
            yield Output(f"[autoresearch: the dataset could not be set up on {where}: {exc}; not train.py's "
                         "fault: tell the human]\n".encode())  # fmt: skip
            yield Finished(Outcome("exited", UNFIT_EXIT, 0.0), b"", [])
            return
        spec = localize(shipment, root, data)
        problem = unfit(spec)
        if problem is not None:
            yield Output(problem.encode() + b"\n")
            yield Finished(Outcome("exited", UNFIT_EXIT, 0.0), b"", [])
            return
        outcome = yield from _stream(spec, data)
        yield Finished(outcome, *changes(root, names, before))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _stream(spec: RunSpec, data: Received | None) -> Generator[Message, None, Outcome]:
    import ray

    chunks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
    execution = LocalExecution(spec, on_output=chunks.put)
    outcome = None
    try:
        node, fetched = ray.get_runtime_context().get_node_id(), (data.fetched, data.seconds) if data else (0, 0.0)
        yield Started(execution.pid, node, socket.gethostname(), *fetched)
        while outcome is None:
            chunk = _drain(chunks, STREAM_WAIT_S)
            if chunk:
                yield Output(chunk, time.time())
            outcome = execution.wait(0.0)
    finally:
        if outcome is None:  # the generator was closed (its task cancelled): the run must not outlive it
            execution.kill("cancelled")
            execution.wait(0.0)
    chunk = _drain(chunks, 0.0)
    if chunk:
        yield Output(chunk, time.time())
    return outcome


def _drain(chunks: queue.SimpleQueue[bytes], wait: float) -> bytes:
    """What arrived: blocks up to `wait` seconds for the first chunk, then takes the rest without waiting."""
    try:
        parts = [chunks.get(timeout=wait) if wait > 0 else chunks.get_nowait()]
    except queue.Empty:
        return b""
    while True:
        try:
            parts.append(chunks.get_nowait())
        except queue.Empty:
            return b"".join(parts)


def scratch_prefix(token: str) -> str:
    return f"autoresearch-ray-{token[:16]}-"


def sweep(token: str) -> int:
    """A Ray task on the run's node (or on every node, in recovery): kill what a killed worker left behind (an
    unsandboxed run's processes, its evaluators') and remove its folders."""
    killed = sum(kill_by_token(t) for t in [token, f"{token}-eval-val", f"{token}-eval-holdout"])
    for folder in Path(tempfile.gettempdir()).glob(scratch_prefix(token) + "*"):
        shutil.rmtree(folder, ignore_errors=True)
    return killed
