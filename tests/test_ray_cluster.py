"""The Ray backend on a cluster of several nodes on this machine whose worker nodes share nothing with the server
but Ray (tests/raycluster.py): each worker node sees neither the repository, nor the server's state folder, nor
the data cache, nor the project's source. Every run asks for the slot resource only worker nodes offer, so a
pass proves the code came through Ray's runtime environment and the dataset through its object store."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    FAKE_CONFIG,
    REPO_ROOT,
    make_fake_repo,
    prepare_dataset,
    real_experiment_repo,
    set_mode,
    with_token,
)
from raycluster import SLOT, LocalCluster, Node

from server.config import load_config
from server.lab.loop import ActiveRun, Lab
from server.run.ray_runner import RayExecution, connect

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='Ray is not installed (pip install ".[ray]")'),
    pytest.mark.skipif(
        shutil.which("bwrap") is None, reason="the worker nodes are bubblewrap views (apt-get install bubblewrap)"
    ),  # fmt: skip
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A head (no slot resource: no run lands there) and one worker node "a" with two slots; this process is
    the server's driver."""
    made = LocalCluster(tmp_path_factory.mktemp("cluster"))
    saved = {name: os.environ.get(name) for name in made.driver_env()}
    os.environ.update(made.driver_env())  # before Ray is imported: it reads the token once
    import ray

    try:
        made.start()
        made.add_worker("a", slots=2)
        connect(made.address)
        yield made
    finally:
        ray.shutdown()
        made.stop()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def cluster_config(cluster: LocalCluster, base: str) -> str:
    return base.replace("[autoresearch]\n", f'[autoresearch]\nrunner = "ray"\nray_address = "{cluster.address}"\n'
                        f"ray_resources = {{ {SLOT} = 1 }}\n", 1)  # fmt: skip


def on_node(node: str, function: Any) -> Any:
    """Run a function on the named worker node (its own resource), for what only that node can see. It must be
    defined inside its test: this module is not on the node, so the function travels by value."""
    import ray

    return ray.get(ray.remote(num_cpus=0, resources={f"node_{node}": 1})(function).remote(), timeout=120)


def node_of(execution: RayExecution) -> str:
    """The name of the node (in LocalCluster) a run's task ran on."""
    import ray

    for node in ray.nodes():  # type: ignore[no-untyped-call]
        if node["NodeID"] == execution.node_id:
            return str(next(name[5:] for name in node["Resources"] if name.startswith("node_")))
    raise AssertionError(f"no node {execution.node_id}")


def wait_started(active: ActiveRun, seconds: float = 60.0) -> RayExecution:
    execution = active.execution
    assert isinstance(execution, RayExecution)
    deadline = time.monotonic() + seconds
    while execution.progress() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert execution.progress() is not None, "no progress line arrived from the worker"
    return execution


# -- the code and the dataset travel -------------------------------------------------------------------------


def test_a_worker_node_sees_nothing_of_the_server(cluster: LocalCluster, tmp_path: Path) -> None:
    """Scenario: Cluster / a worker node of the test cluster sees neither the repository, the server's state, the
    data cache nor the project's source, yet imports the server's code (it came through the runtime env)"""
    marker = tmp_path / "state-marker"
    marker.write_text("server state")

    def look() -> dict[str, Any]:
        import server

        home = Path(os.environ.get("HOME") or "/root")
        return {"repo": (REPO_ROOT / "README.md").exists(), "state": marker.exists(), "server": server.__file__,
                "cache": (home / ".cache" / "autoresearch").exists()}  # fmt: skip

    seen = on_node("a", look)
    assert seen["repo"] is False and seen["state"] is False and seen["cache"] is False
    assert "runtime_resources" in seen["server"] and not seen["server"].startswith(str(REPO_ROOT))


@pytest.fixture
def tiny_repo(cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real experiment, tiny model, byte-level dataset prepared in this test's folder (hidden from nodes)."""
    cache, corpus = tmp_path / "cache", tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 4000)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    prepare_dataset(["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"])
    config = f"""\
[autoresearch]
tag = "cluster"
time_budget = 2
eval_tokens = 4096
noise_seeds = 1
startup_allowance = 30
handover_allowance = 30
ray_num_gpus = 0
[autoresearch.env]
AUTORESEARCH_MODEL_SIZE = "tiny"
AUTORESEARCH_DEVICE = "cpu"
AUTORESEARCH_CACHE = "{cache}"
AUTORESEARCH_DATASET = "tiny"
"""
    return real_experiment_repo(tmp_path / "project", cluster_config(cluster, config))


@pytest.mark.slow
def test_the_dataset_travels_once_per_node_and_the_validation_split_only_to_the_evaluator(tiny_repo: Path) -> None:
    """Scenario: Cluster / the real experiment trains and is scored on a node that shares nothing; the dataset
    comes through the object store, checked against meta.json; a second run transfers nothing; the training
    files' folder on the node never holds the validation or holdout split"""

    def node_cache() -> dict[str, list[str]]:
        """Each dataset folder in the node's cache, with the files there."""
        from server.run.ray_data import cache_root

        root = cache_root()
        return {str(p.relative_to(root)): sorted(f.name for f in p.iterdir()) for p in root.glob("*/*/*") if p.is_dir()}

    lab = Lab(tiny_repo, load_config(tiny_repo))
    first = lab.run("baseline on a node that shares nothing")
    assert first.status == "ok", (
        first.reason,
        on_node("a", node_cache),
        (lab.history.run_dir(first.id) / "log.txt").read_text()[:3000],
    )
    assert first.metric is not None and 0 < first.metric < 8.5
    run_dir = lab.history.run_dir(first.id)
    assert "the dataset's files for this process came to Ray node" in (run_dir / "log.txt").read_text()
    assert "the dataset's files for this process came to Ray node" in (run_dir / "eval-val.log").read_text()
    lab.discard()

    second = lab.run("the same again", duplicate_reason="the test repeats the same code")
    assert second.status == "ok", second.reason
    for log in ["log.txt", "eval-val.log"]:
        assert "came to Ray node" not in (lab.history.run_dir(second.id) / log).read_text(), f"{log}: sent twice"

    cached = on_node("a", node_cache)
    train = next(files for folder, files in cached.items() if folder.endswith("train/tiny"))
    evaluation = next(files for folder, files in cached.items() if folder.endswith("eval/tiny"))
    assert "val.bin" not in train and "holdout.bin" not in train and "train.bin" in train
    assert "val.bin" in evaluation


@pytest.mark.slow
def test_a_damaged_copy_is_refused_by_its_checksum(cluster: LocalCluster, tiny_repo: Path, tmp_path: Path) -> None:
    """Scenario: Cluster / a dataset file that does not match meta.json's sha256 is refused on the worker, with a
    line naming the file; the run does not train on it"""
    train = tmp_path / "cache" / "tiny" / "train.bin"
    data = bytearray(train.read_bytes())
    data[100] ^= 0xFF
    train.write_bytes(bytes(data))
    lab = Lab(tiny_repo, load_config(tiny_repo))
    run = lab.run("on a damaged dataset")
    assert run.status != "ok"
    assert "train.bin arrived with sha256" in (lab.history.run_dir(run.id) / "log.txt").read_text()


# -- faults --------------------------------------------------------------------------------------------------


@pytest.fixture
def sleep_lab(cluster: LocalCluster, tmp_path: Path) -> Lab:
    config = FAKE_CONFIG.replace("time_budget = 1", "time_budget = 30").replace("timeout = 10", "timeout = 90")
    config = re.sub(r'sandbox = "\w+"', 'sandbox = "off"', config)  # an unsandboxed run's child outlives it
    repo = make_fake_repo(tmp_path / "repo", cluster_config(cluster, config + "ray_num_gpus = 0\n"))
    lab = Lab(repo, load_config(repo))
    lab.write(set_mode("sleep", 1.0))
    return lab


def live(cluster: LocalCluster, name: str) -> Node:
    return next(node for node in cluster.workers if node.name == name and node.alive())


@pytest.mark.slow
def test_a_killed_node_is_a_crash_then_a_live_node_and_a_late_one_take_the_runs(
    cluster: LocalCluster, sleep_lab: Lab
) -> None:
    """Scenario: Cluster / a worker node killed mid-run records the run crash with its log so far and frees its
    slot; the next run goes to a live node; a node that joins later is used"""
    cluster.add_worker("b", slots=2)
    active = sleep_lab.start_run("on a node about to die")
    execution = wait_started(active)
    doomed = node_of(execution)
    cluster.kill(live(cluster, doomed))
    began = time.monotonic()
    run = sleep_lab.drive(active)
    assert run.status == "crash" and time.monotonic() - began < 60
    log = (sleep_lab.history.run_dir(run.id) / "log.txt").read_text()
    assert "step" in log and "the Ray task running this ended without a result" in log
    assert sleep_lab.slots.live() == [], "the slot was freed"

    sleep_lab.config = sleep_lab.config.model_copy(update={"time_budget": 1.0})
    survivor = "b" if doomed == "a" else "a"
    nxt = sleep_lab.start_run("after the node died", duplicate_reason="the same code on a live node")
    assert node_of(wait_started(nxt)) == survivor
    assert sleep_lab.drive(nxt).status == "ok"
    sleep_lab.discard()

    cluster.add_worker("c", slots=2)  # joins later; then the survivor goes too
    cluster.kill(live(cluster, survivor))
    cluster.wait_nodes(2)
    late = sleep_lab.start_run("on the late node", duplicate_reason="the same code on the node that joined")
    assert node_of(wait_started(late)) == "c"
    assert sleep_lab.drive(late).status == "ok"


ESCAPING = """import subprocess, sys
from prepare import main
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"], start_new_session=True)
main("sleep", 1.0)
"""
SERVER = """
import sys
from pathlib import Path
from server.config import load_config
from server.lab.loop import Lab
repo = Path(sys.argv[1])
lab = Lab(repo, load_config(repo))
lab.run("in flight when the server dies")
"""


@pytest.mark.slow
def test_a_restarted_server_recovers_its_runs_in_flight_on_the_cluster(cluster: LocalCluster, sleep_lab: Lab) -> None:
    """Scenario: Cluster / the server killed while its run is a task on a node, its Ray worker killed with it (no
    clean-up ran anywhere): the restarted server kills what the run left on every node (an unsandboxed run and
    its child in a session of its own) and records the run interrupted once, with the log that arrived"""
    sleep_lab.write(ESCAPING)
    repo = sleep_lab.root
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(repo)], cwd=REPO_ROOT, env={**os.environ},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not any(sleep_lab.history.runs()):
            time.sleep(0.2)
        run_id = sleep_lab.history.runs()[-1].id
        log = sleep_lab.history.run_dir(run_id) / "log.txt"
        while time.monotonic() < deadline and "step" not in (log.read_text() if log.exists() else ""):
            time.sleep(0.2)
        token = sleep_lab.slots.live()[0].token or ""
        left = with_token(token)
        assert len(left) >= 2, "the run and its child should be running on the node"
        tokened = {proc.pid for proc in left}
        worker = next(proc.parent() for proc in left if proc.ppid() not in tokened)
        assert worker is not None and "ray" in " ".join(worker.cmdline()).lower()
        server.send_signal(signal.SIGSTOP)  # the server can do nothing from here on
        worker.kill()  # the Ray worker dies without its clean-up: the run and its child stay
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    time.sleep(3)
    assert {proc.pid for proc in with_token(token)} == tokened, "only the recovery can end these now"

    restarted = Lab(repo, load_config(repo))
    restarted.write(set_mode("sleep", 1.0))  # a changing call: recovery first
    assert with_token(token) == []
    runs = [r for r in restarted.history.runs() if r.id == run_id]
    assert [r.status for r in runs] == ["interrupted"]
    events = [json.loads(line) for line in restarted.history.events_path.read_text().splitlines()]
    assert sum(1 for e in events if e["type"] == "end" and e["run"]["id"] == run_id) == 1, "recorded once"
    assert "step" in log.read_text(), "the log that arrived stays"
