"""The Ray backend (runner = "ray"): runs go through the real Lab as tasks of a Ray cluster the tests start on
this machine, with two logical GPUs (Ray's resources are bookkeeping: no GPU is needed to hold one)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
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

from server.config import Config, load_config
from server.errors import ConfigError
from server.lab.edits import Edit
from server.lab.loop import ActiveRun, Lab
from server.run import ray_data
from server.run import runner as local_runner
from server.run.ray_runner import RayExecution, RayRunner, connect, runner_for
from server.run.ray_worker import Shipment, changes, localize, manifest, pack, scratch_prefix, unfit, unpack
from server.run.runner import LocalRunner, RunSpec
from server.run.sandbox import View

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='Ray is not installed (pip install ".[ray]"; scripts/test.sh does)')
RAY_CONFIG = FAKE_CONFIG + 'runner = "ray"\n'


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A Ray cluster on this machine for the module: 2 CPUs, 2 logical GPUs, a small object store."""
    if not HAS_RAY:
        pytest.skip('Ray is not installed (pip install ".[ray]"; scripts/test.sh does)')
    import ray

    connect(num_cpus=2, num_gpus=2, object_store_memory=100_000_000)
    yield
    ray.shutdown()


@pytest.fixture
def ray_repo(tmp_path: Path) -> Path:
    return make_fake_repo(tmp_path / "ray-repo", RAY_CONFIG)


@pytest.fixture
def ray_lab(cluster: None, ray_repo: Path) -> Lab:
    return Lab(ray_repo, load_config(ray_repo))


def until(check: Callable[[], object], seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def gpus_free() -> float:
    import ray

    return float(ray.available_resources().get("GPU", 0.0))  # type: ignore[no-untyped-call]


def scratch_left(token: str) -> list[Path]:
    """The run's temporary folders on the worker (this machine)."""
    return list(Path(tempfile.gettempdir()).glob(scratch_prefix(token) + "*"))


def started(active: ActiveRun) -> RayExecution:
    """The run's execution once its first progress line arrived from the worker."""
    execution = active.execution
    assert isinstance(execution, RayExecution)
    assert until(lambda: execution.progress() is not None), "no progress line arrived from the worker"
    return execution


# -- choosing the runner --------------------------------------------------------------------------------------


def test_the_human_config_picks_the_runner(ray_repo: Path, repo: Path) -> None:
    assert isinstance(Lab(ray_repo, load_config(ray_repo)).runner, RayRunner)
    assert isinstance(Lab(repo, load_config(repo)).runner, LocalRunner)


@needs_ray
def test_connecting_keeps_the_servers_sigterm_handler(tmp_path: Path) -> None:
    """ray.init in the main thread installs its own SIGTERM handler; the server's must stay (it kills the runs)."""
    script = tmp_path / "connect.py"
    script.write_text("""\
import signal
from server.run.ray_runner import connect
def handler(signum, frame): pass
signal.signal(signal.SIGTERM, handler)
connect(num_cpus=1, num_gpus=0, object_store_memory=80_000_000)
print("kept" if signal.getsignal(signal.SIGTERM) is handler else "replaced")
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.stdout.strip() == "kept", done.stderr[-2000:]


@needs_ray
def test_an_address_nobody_answers_is_a_config_error_at_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh server, even after other tests
    began = time.monotonic()
    with pytest.raises(ConfigError, match=r"could not join the Ray cluster at '127.0.0.1:1': nothing answers"):
        RayRunner("127.0.0.1:1").start(spec_in(tmp_path))
    assert time.monotonic() - began < 6


def test_ray_runner_without_ray_installed_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"autoresearch-mcp\[ray\]"):
        runner_for(Config.model_validate({"runner": "ray"}))


# -- what travels: paths, files -------------------------------------------------------------------------------


def spec_in(base: Path, view: View | None = None) -> RunSpec:
    for name in ("tree", "out", "tmp"):
        (base / name).mkdir(parents=True, exist_ok=True)
    env = {"AUTORESEARCH_OUTPUT": str(base / "out"), "HOME": str(base / "tmp"), "PATH": "/usr/bin:/bin",
           "TORCHINDUCTOR_CACHE_DIR": "/srv/state/cache/inductor", "AUTORESEARCH_SEED": "42"}  # fmt: skip
    return RunSpec(["/server/python", "train.py", str(base / "out" / "x")], base / "tree", env, base / "log.txt",
                   10.0, "tok", view=view)  # fmt: skip


def test_the_run_folder_moves_to_the_worker_and_nothing_else(tmp_path: Path) -> None:
    base, root = tmp_path / "runs" / "3", tmp_path / "worker"
    writable = [base / "tree", base / "out", Path("/srv/state/cache")]
    view = View(hide=[tmp_path / "repo"], read_only=[Path("/usr/lib/python3")], writable=writable,
                locked=[base / "tree" / "prepare.py"])  # fmt: skip
    spec = localize(Shipment(spec_in(base, view), base, b"", "/server/python"), root)
    assert spec.cwd == root / "tree" and spec.argv[1:] == ["train.py", str(root / "out" / "x")]
    assert spec.env["AUTORESEARCH_OUTPUT"] == str(root / "out") and spec.env["HOME"] == str(root / "tmp")
    assert spec.env["PATH"] == "/usr/bin:/bin" and spec.env["AUTORESEARCH_SEED"] == "42"
    cache = Path(spec.env["TORCHINDUCTOR_CACHE_DIR"]).parent  # a cache of the worker's, not the server's folder
    assert not str(cache).startswith("/srv") and cache in spec.view.writable  # type: ignore[union-attr]
    assert spec.view is not None and spec.view.locked == [root / "tree" / "prepare.py"]
    assert [root / "tree", root / "out"] == spec.view.writable[:2] and Path("/usr/lib/python3") in spec.view.read_only
    assert tmp_path / "repo" in spec.view.hide and spec.log_path.parent == root


def test_only_what_the_run_wrote_or_changed_comes_back(tmp_path: Path) -> None:
    base, root = tmp_path / "server", tmp_path / "worker"
    spec = spec_in(base)
    (base / "tree" / "train.py").write_text("print(1)\n")
    (base / "tree" / "prepare.py").write_text("locked\n")
    (base / "tree" / "big.bin").write_bytes(b"x" * 100_000)
    (base / "log.txt").write_text("the server's log, not shipped\n")
    unpack(pack(base, ["out", "tree", "tmp"]), root)
    assert not (root / "log.txt").exists() and (root / "tree" / "big.bin").stat().st_size == 100_000
    before = manifest(root)
    (root / "out" / "model.pt2").write_bytes(b"model")
    (root / "tree" / "prepare.py").write_text("tampered\n")
    (root / "tree" / "train.py").unlink()
    files, deleted = changes(root, ["out", "tree", "tmp"], before)
    with tarfile.open(fileobj=io.BytesIO(files)) as tar:
        assert sorted(tar.getnames()) == ["out/model.pt2", "tree/prepare.py"]
    assert deleted == ["tree/train.py"] and len(files) < 20_000
    assert spec.cwd == base / "tree"


def test_a_returned_tar_writes_only_inside_the_shipped_folders(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("out/model.pt2", "log.txt", "../escaped.txt", "out/../../escaped2.txt", "/tmp/escaped3.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    (tmp_path / "run").mkdir()
    unpack(buffer.getvalue(), tmp_path / "run", ["out"])
    assert (tmp_path / "run" / "out" / "model.pt2").read_bytes() == b"hi"
    assert not (tmp_path / "run" / "log.txt").exists() and not list(tmp_path.glob("escaped*"))


def test_a_worker_without_bubblewrap_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert unfit(spec_in(tmp_path)) is None
    monkeypatch.setattr(shutil, "which", lambda name: None)
    message = unfit(spec_in(tmp_path, View())) or ""
    assert message.startswith("bwrap: bubblewrap is not installed on the Ray worker")  # classified sandbox_failed


def test_the_dataset_is_sent_once_checked_and_split_by_who_may_read_it(
    cluster: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: Cluster / a node's dataset cache: the training files go to one folder, the evaluator's to another
    (the training files linked, not sent again), a second request sends nothing, a changed file is sent again,
    a file that does not match meta.json is refused"""
    data = tmp_path / "server-cache" / "tiny"
    data.mkdir(parents=True)
    contents = {"train.bin": b"t" * 3000, "val.bin": b"v" * 500, "tokenizer.json": b"{}"}
    for name, body in contents.items():
        (data / name).write_bytes(body)
    sums = {name: {"sha256": hashlib.sha256(body).hexdigest()} for name, body in contents.items()}
    (data / "meta.json").write_text(json.dumps({"outputs": sums}))
    monkeypatch.setenv(ray_data.CACHE_VAR, str(tmp_path / "node-cache"))
    monkeypatch.setattr(ray_data, "CHUNK_BYTES", 1024)  # three chunks for train.bin
    shelf, train_files = ray_data.Shelf(), ["train.bin", "tokenizer.json", "meta.json"]

    first = ray_data.receive(shelf.ship(data, train_files))
    assert first.fetched == 3002 and sorted(p.name for p in first.folder.iterdir()) == [
        ".verified.json", "meta.json", "tokenizer.json", "train.bin"]  # fmt: skip
    assert (first.folder / "train.bin").read_bytes() == contents["train.bin"]
    assert ray_data.receive(shelf.ship(data, train_files)).fetched == 0
    evaluation = ray_data.receive(shelf.ship(data, None))
    assert evaluation.fetched == 500 and (evaluation.folder / "val.bin").is_file()
    assert (evaluation.folder / "train.bin").stat().st_ino == (first.folder / "train.bin").stat().st_ino
    assert not (first.folder / "val.bin").exists()

    (first.folder / "train.bin").write_bytes(b"x" * 3000)  # an unsandboxed run rewrote the cached copy
    assert ray_data.receive(shelf.ship(data, train_files)).fetched == 3000
    assert (first.folder / "train.bin").read_bytes() == contents["train.bin"]

    (data / "train.bin").write_bytes(b"y" * 3000)  # the server's copy no longer matches its meta.json
    damaged = ray_data.Shelf().ship(data, train_files)
    monkeypatch.setenv(ray_data.CACHE_VAR, str(tmp_path / "another-node"))
    with pytest.raises(ray_data.DataError, match="train.bin arrived with sha256"):
        ray_data.receive(damaged)
    assert not list((tmp_path / "another-node").glob("*/train/tiny/train.bin")), "nothing unchecked is left"


# -- runs on a cluster ---------------------------------------------------------------------------------------


def test_a_run_is_a_task_holding_one_gpu_its_output_streamed_back(
    ray_lab: Lab, capfd: pytest.CaptureFixture[str]
) -> None:
    ray_lab.write(set_mode("sleep", 0.9))
    active = ray_lab.start_run("sleeps through its budget")
    started(active)
    assert gpus_free() == 1.0, "the run should hold one of the cluster's two GPUs"
    run = ray_lab.finish_run(active)
    assert run.status == "ok" and run.metric == 0.9
    log = (ray_lab.history.run_dir(run.id) / "log.txt").read_text()
    assert log.startswith("step 0 | loss 3.0000") and "val_bpb:          0.900000" in log
    assert until(lambda: gpus_free() == 2.0)
    assert capfd.readouterr().out == "", "nothing may reach this process's stdout (the MCP wire)"


@pytest.mark.parametrize("sandbox", ["bwrap", "off"])
def test_a_worker_killed_mid_run_is_a_crash_with_its_log_so_far(cluster: None, tmp_path: Path, sandbox: str) -> None:
    if sandbox == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    repo = make_fake_repo(tmp_path / "repo", RAY_CONFIG.replace('sandbox = "bwrap"', f'sandbox = "{sandbox}"')
                          .replace('sandbox = "off"', f'sandbox = "{sandbox}"'))  # fmt: skip
    lab = Lab(repo, load_config(repo))
    lab.write(set_mode("hang", 1.0))
    active = lab.start_run("its worker dies")
    execution = started(active)
    token = active.candidate.token
    assert with_token(token), "the run should be running on the worker"
    psutil.Process(execution.pid).parent().send_signal(signal.SIGKILL)  # the Ray worker that runs it
    run = lab.finish_run(active)
    assert run.status == "crash" and "Ray task" in (run.reason or "") and "WorkerCrashedError" in (run.reason or "")
    log = (lab.history.run_dir(run.id) / "log.txt").read_text()
    assert "step 2 | loss 1.0000" in log, "the log that arrived before the worker died is kept"
    assert until(lambda: not with_token(token), 10), "nothing of the run may outlive its worker"
    assert not scratch_left(token), "nor its folder on the worker"


def test_a_sandboxed_run_on_a_worker_sees_neither_the_repository_nor_the_state(ray_lab: Lab, ray_repo: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed (apt-get install bubblewrap)")
    ray_lab.run("baseline")  # the state folder now holds a history, pins and a run folder
    ray_lab.keep()
    probe = f"""\
import os
for path in [{str(ray_repo / ".git" / "config")!r}, {str(ray_repo / "notes.txt")!r},
             {str(ray_repo / ".autoresearch" / "test" / "runs.jsonl")!r}]:
    print("visible" if os.path.exists(path) else "hidden", path)
from prepare import summary
summary(1.0)
"""
    ray_lab.write(probe)
    run = ray_lab.run("probe")
    log = (ray_lab.history.run_dir(run.id) / "log.txt").read_text()
    assert run.status == "ok" and log.count("hidden /") == 3 and "visible" not in log, log


def test_a_cancelled_call_leaves_no_task_and_no_process(ray_lab: Lab) -> None:
    ray_lab.write(set_mode("hang", 1.0))
    active = ray_lab.start_run("cancelled")
    worker = psutil.Process(started(active).pid).parent()  # the Ray worker process running the task
    run = ray_lab.finish_run(active, cancelled=True)
    assert run.status == "cancelled"
    assert not with_token(active.candidate.token) and not scratch_left(active.candidate.token)
    assert until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 10)
    assert until(lambda: gpus_free() == 2.0), "the task should have let its GPU go"


def test_stopping_the_server_cancels_its_ray_tasks(ray_lab: Lab) -> None:
    ray_lab.write(set_mode("hang", 1.0))
    active = ray_lab.start_run("the server is stopped")
    started(active)
    local_runner.kill_all_now()  # what the server's SIGTERM handler calls before it exits
    assert until(lambda: not with_token(active.candidate.token), 5)
    assert until(lambda: gpus_free() == 2.0, 5)
    ray_lab.finish_run(active)


def test_the_wall_clock_limit_holds_on_a_worker(cluster: None, tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path / "repo", RAY_CONFIG.replace("timeout = 10", "timeout = 3"))
    lab = Lab(repo, load_config(repo))
    lab.write(set_mode("ignore_term", 1.0))
    began = time.monotonic()
    run = lab.run("ignores SIGTERM and never ends")
    assert run.status == "timeout" and time.monotonic() - began < 15
    assert until(lambda: gpus_free() == 2.0)


# -- the real experiment -------------------------------------------------------------------------------------


@pytest.fixture
def experiment_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real experiment/ in a fresh repository, a 2 s budget, the tiny model on a byte-level dataset."""
    cache, corpus, repo = tmp_path / "cache", tmp_path / "corpus", tmp_path / "project"
    corpus.mkdir()
    (corpus / "text.txt").write_text("the quick brown fox jumps over the lazy dog. " * 4000)
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    prepare_dataset(["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"])
    return real_experiment_repo(
        repo,
        f"""\
[autoresearch]
tag = "ray"
time_budget = 2
eval_tokens = 4096
runner = "ray"
sandbox = "{"bwrap" if shutil.which("bwrap") else "off"}"
[autoresearch.env]
AUTORESEARCH_MODEL_SIZE = "tiny"
AUTORESEARCH_DEVICE = "cpu"
AUTORESEARCH_CACHE = "{cache}"
AUTORESEARCH_DATASET = "tiny"
""",
    )


@pytest.mark.slow
def test_the_real_experiment_trains_and_is_scored_on_ray_workers(cluster: None, experiment_repo: Path) -> None:
    lab = Lab(experiment_repo, load_config(experiment_repo))
    run = lab.run("baseline on Ray")
    assert run.status == "ok", run.reason
    assert run.metric is not None and 0 < run.metric < 8.5  # a byte-level model: log2(257) bits is chance
    assert {"startup", "training", "handover", "evaluation"} <= set(run.timing)
    run_dir = lab.history.run_dir(run.id)
    assert (run_dir / "out" / "model.pt2").stat().st_size > 0, "the model came back from the worker"
    assert (run_dir / "eval-val" / "result.json").is_file() and "timed training ends" in (
        run_dir / "log.txt"
    ).read_text()


def test_two_slots_run_two_candidates_at_once_as_two_gpu_tasks(cluster: None, tmp_path: Path) -> None:
    """Scenario: Pool / with runner = "ray" and two slots, two candidates are two tasks holding one GPU each,
    in flight at the same time, each scored"""
    config = RAY_CONFIG.replace("time_budget = 1", "time_budget = 3").replace("timeout = 10", "timeout = 30")
    repo = make_fake_repo(tmp_path / "repo", config + "slots = 2\n")
    lab = Lab(repo, load_config(repo))
    lab.write(set_mode("sleep", 1.0))
    lab.keep(lab.run("baseline").id)
    actives = [lab.start_run(f"c{i}", edits=[Edit("METRIC = 1.0", f"METRIC = 0.{8 + i}")]) for i in range(2)]
    for active in actives:
        started(active)
    assert until(lambda: gpus_free() == 0.0, 10), "each run should hold one GPU, at the same time"
    runs = [lab.drive(active) for active in actives]
    assert [(r.status, r.metric, r.slot) for r in runs] == [("ok", 0.8, 0), ("ok", 0.9, 1)]
    assert until(lambda: gpus_free() == 2.0)
