"""A Ray cluster of several nodes on this machine whose worker nodes share nothing with the server but Ray.

The head is the server's side: started with `ray start --head` on loopback, it offers no resource a run asks
for, so no run lands there. Each worker node is a second `ray start --address` in a bubblewrap view of its
own: the repository, the home folder (the data cache, the server's credentials), /tmp (the tests' state
folders and datasets) and /work are empty there; only the interpreter (read-only) is bound back, so the
server's code must arrive through Ray's runtime environment and the dataset through the object store.
Killing a node kills its bubblewrap and every process under it, as a machine going away would.
Every node offers a resource named after it and the slot resource runs ask for.

Used by tests/test_ray_cluster.py and bench/ray_cluster_bench.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from server.run.runner import _signal_all, _tree

REPO_ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
SLOT = "autoresearch_slot"  # the resource every run asks for in these clusters (ray_resources)
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 4, "health_check_timeout_ms": 500}


@dataclass
class Node:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None


def auth_token() -> str:
    """Ray 2.60 authenticates every connection with a token; a driver loads it once per process (the default
    file, written by the first local cluster), so the test clusters use that one where it exists. The worker
    nodes cannot see the file (their home is empty): they get it in their environment."""
    default = Path(os.environ.get("HOME") or "/root") / ".ray" / "auth_token"
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    return default.read_text().strip() if default.is_file() else secrets.token_hex(32)


def driver_env() -> dict[str, str]:
    """What a driver needs in its environment to join these clusters: set before Ray is first imported in the
    process (it reads the authentication mode once)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": auth_token()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LocalCluster:
    """Start with start(); add_worker() for each node; kill() one as a machine failing; stop() for all."""

    def __init__(self, folder: Path, object_store_bytes: int = 80_000_000) -> None:
        self.folder = folder
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.store = object_store_bytes
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": auth_token()}
        self.env.pop("RAY_ADDRESS", None)
        # Ray's session folder holds unix sockets, whose paths may not pass 107 bytes: a short folder of its own
        self.temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        self.head: Node | None = None
        self.workers: list[Node] = []

    def driver_env(self) -> dict[str, str]:
        """What a driver (the server) needs in its environment to join."""
        return driver_env()

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        args = ["--head", "--port", str(self.port), "--num-cpus", "1", "--num-gpus", "0",
                "--include-dashboard", "false", "--temp-dir", str(self.temp),
                "--system-config", json.dumps(FAST_HEALTH)]  # fmt: skip
        self.head = self._spawn("head", [RAY, "start", *self._common(), *args])
        self.wait_nodes(1)

    def add_worker(self, name: str, slots: int = 2, cpus: int = 2, gpus: int = 2) -> Node:
        """A worker node with `slots` of the run resource, `cpus` CPUs and `gpus` logical GPUs."""
        resources = json.dumps({SLOT: slots, f"node_{name}": 100})
        args = ["--address", self.address, "--num-cpus", str(cpus), "--num-gpus", str(gpus), "--resources", resources]
        node = self._spawn(name, [*self._view(), RAY, "start", *self._common(), *args])
        self.workers.append(node)
        self.wait_nodes(1 + sum(w.alive() for w in self.workers))
        return node

    def _common(self) -> list[str]:
        return ["--node-ip-address", "127.0.0.1", "--object-store-memory", str(self.store), "--block",
                "--disable-usage-stats"]  # fmt: skip

    def _view(self) -> list[str]:
        """bubblewrap: the machine read-only, the server's places empty, the interpreter bound back."""
        home = Path(os.environ.get("HOME") or "/root")
        hidden = {Path("/tmp"), home, REPO_ROOT, Path("/work")}
        # the machine's /proc comes with / (a fresh one, in a PID namespace, would stop the run's own sandbox
        # from mounting its /proc: the kernel refuses a proc mount where the outer one is partly covered)
        args = ["bwrap", "--ro-bind", "/", "/", "--bind", "/proc", "/proc", "--dev", "/dev", "--tmpfs", "/dev/shm",
                "--die-with-parent", "--new-session"]  # fmt: skip
        for path in sorted((p for p in hidden if p.exists()), key=lambda p: len(p.parts)):
            args += ["--tmpfs", str(path)]
        for path in sorted({Path(sys.prefix), Path(sys.base_prefix), Path(sys.prefix).resolve()}):
            if any(h == path or h in path.parents for h in hidden):
                args += ["--ro-bind", str(path), str(path)]
        return [*args, "--"]

    def _spawn(self, name: str, argv: list[str]) -> Node:
        log = self.folder / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        return Node(name, process, log)

    def alive_nodes(self) -> int:
        """Nodes the head counts alive (asked with the CLI, so the caller need not be a driver)."""
        try:
            done = subprocess.run([sys.executable, "-c", _COUNT, self.address], env=self.env, capture_output=True,
                                  text=True, timeout=60)  # fmt: skip
        except subprocess.TimeoutExpired:
            return -1
        return int(done.stdout.strip() or -1)

    def wait_nodes(self, count: int, seconds: float = 90.0) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.head is not None and not self.head.alive():
                raise RuntimeError(f"the Ray head died: {self.head.log.read_text()[-2000:]}")
            if self.alive_nodes() == count:
                return
            time.sleep(0.5)
        logs = "\n".join(n.log.read_text()[-1500:] for n in [*([self.head] if self.head else []), *self.workers])
        raise RuntimeError(f"the cluster did not reach {count} live nodes in {seconds:.0f}s:\n{logs}")

    def kill(self, node: Node) -> None:
        """The node goes away at once, as a machine would: it and every process it started are killed."""
        _signal_all(_tree(node.process.pid), signal.SIGKILL)
        node.process.wait(timeout=30)

    def stop(self) -> None:
        nodes = [*self.workers, *([self.head] if self.head else [])]
        trees = {node.name: _tree(node.process.pid) for node in nodes if node.alive()}
        for node in nodes:
            if node.alive():
                os.killpg(node.process.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_all(_tree(node.process.pid), signal.SIGKILL)
                node.process.wait(timeout=10)
        for tree in trees.values():  # whatever outlived its node's SIGTERM
            for proc in tree:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


_COUNT = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
print(sum(1 for node in ray.nodes() if node["Alive"]))
"""
