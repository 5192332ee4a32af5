"""Faults with real processes: a server killed mid-run, hostile experiments, tampering, concurrent servers.

Each test's `Scenario:` docstring lines feed docs/RELIABILITY.md (scripts/gen_reliability.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from conftest import FAKE_CONFIG, HAS_BWRAP, disk_state, git, make_fake_repo, needs_bwrap, set_mode
from mcp import Client
from test_stdio import server_params

from server import app
from server.config import load_config
from server.errors import LockedFileError, StateError
from server.lab.loop import Lab
from server.run.runner import RUN_TOKEN_VAR
from server.store.history import read_events

STATE = Path(".autoresearch") / "test"


def wait_for(check: Callable[[], Any], seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds}s waiting for {check}")


def lock_info(repo: Path) -> dict[str, Any]:
    """What the pool's one slot says about the run in it (the tests' config has one slot)."""
    path = repo / ".autoresearch" / "slots" / "0.lock"
    text = path.read_text() if path.exists() else ""
    try:
        return json.loads(text) if text else {}
    except ValueError:  # caught while its owner rewrites it
        return {}


def alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def processes_with_token(token: str) -> list[psutil.Process]:
    """Live (not zombie) processes that carry this run's token."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(RUN_TOKEN_VAR) == token and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


class RawServer:
    """The server started as .mcp.json says, spoken to in raw JSON-RPC so a test can kill it mid-call."""

    def __init__(self, repo: Path, stderr: Path, **env: str) -> None:
        params = server_params(repo)
        self.stderr = stderr.open("ab")
        self.proc = subprocess.Popen(
            [params.command, *params.args], cwd=params.cwd, env={**(params.env or {}), **env},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
        )  # fmt: skip
        self.next_id = 0
        self.request("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                    "clientInfo": {"name": "reliability", "version": "0"}})  # fmt: skip
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def start(self, method: str, params: dict[str, Any]) -> int:
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params})
        return self.next_id

    def reply(self, request_id: int) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, "the server closed its stdout"
            message = json.loads(line)
            if message.get("id") == request_id:
                return dict(message["result"])

    def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return self.reply(self.start(method, params))

    def tool(self, name: str, **args: Any) -> tuple[bool, Any]:
        """(is_error, structured result or error text)."""
        result = self.request("tools/call", {"name": name, "arguments": args})
        if result.get("isError"):
            return True, "".join(block.get("text", "") for block in result["content"])
        return False, result["structuredContent"]

    def close(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


@contextmanager
def raw_server(repo: Path, stderr: Path, **env: str) -> Iterator[RawServer]:
    server = RawServer(repo, stderr, **env)
    try:
        yield server
    finally:
        server.close()


# -- a server killed in the middle of a run -----------------------------------------------------------------


def test_server_killed_mid_run_is_recovered_on_restart(repo: Path, tmp_path: Path) -> None:
    """Scenario: Crash recovery / SIGKILL to a real server over stdio mid-run: on restart the orphaned
    experiment is killed, the run is recorded as interrupted, files, branch and refs are consistent, and
    every finished run is still in the history."""
    with raw_server(repo, tmp_path / "first.err") as server:
        assert server.tool("run_experiment", description="baseline")[1]["status"] == "ok"
        assert not server.tool("keep")[0]
        assert not server.tool("write_train", content=set_mode("hang"))[0]
        server.start("tools/call", {"name": "run_experiment", "arguments": {"description": "hangs"}})
        # The slot is described once the run is created and again at its launch, when a spare's token (the
        # one its processes carry) replaces the run's own: read it until the processes are found by it.
        info = wait_for(lambda: (now := lock_info(repo)).get("token") and processes_with_token(now["token"]) and now)
        orphans = processes_with_token(info["token"])
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
    if HAS_BWRAP:  # the sandbox dies with its server (--die-with-parent), and every process with the sandbox
        assert wait_for(lambda: not any(alive(p) for p in orphans)), "the experiment outlived its server"
    else:  # unsandboxed, the experiment outlives its server until the restart below
        assert [p.is_running() for p in orphans] == [True] * len(orphans)

    kept = git(repo, "rev-parse", "refs/autoresearch/test/1")
    with raw_server(repo, tmp_path / "second.err") as server:  # the restart recovers before serving
        assert not processes_with_token(info["token"])
        history = server.tool("get_history")[1]
        assert history["counts"]["runs"] == 2 and "interrupted" in history["rows"][-1]
        assert git(repo, "rev-parse", "autoresearch/test") == kept
        assert git(repo, "rev-parse", "refs/autoresearch/test/2^") == kept
        assert (repo / "train.py").read_text() == git(repo, "show", "refs/autoresearch/test/2:train.py") + "\n"
        assert git(repo, "status", "--porcelain") == "M train.py"
        assert not (repo / STATE / "runs" / "2" / "tree").exists()
        assert not server.tool("discard")[0]
        assert git(repo, "status", "--porcelain") == ""
        assert server.tool("run_experiment", description="after the crash")[1]["status"] == "ok"
    runs = {r["id"]: r for r in (e["run"] for e in read_events(repo / STATE / "runs.jsonl") if "run" in e)}
    assert [runs[i]["status"] for i in (1, 2, 3)] == ["ok", "interrupted", "ok"]


# -- hostile or broken experiments ---------------------------------------------------------------------------


def test_experiment_that_never_prints_is_killed_at_the_limit(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: Hostile experiments / never prints anything: killed at the hard limit, recorded as timeout
    with an empty log, never kept."""
    monkeypatch.setenv("AUTORESEARCH_TIMEOUT", "1.5")
    lab = Lab(repo, load_config(repo))
    lab.write("import time\ntime.sleep(3600)\n")
    active = lab.start_run("silent")
    run = lab.finish_run(active)
    assert run.status == "timeout" and run.metric is None
    assert (lab.history.run_dir(run.id) / "log.txt").read_bytes() == b""
    assert not psutil.pid_exists(active.process.pid)
    with pytest.raises(StateError, match="can never be kept"):
        lab.keep()


def test_flood_with_a_small_log_cap_keeps_head_tail_and_summary(tmp_path: Path) -> None:
    """Scenario: Hostile experiments / prints 20 MB against a 10 kB log cap: the log keeps its head and
    tail within the cap, notes what was dropped, and the real summary is still read."""
    repo = make_fake_repo(tmp_path / "repo", FAKE_CONFIG.replace("max_log_bytes = 200000", "max_log_bytes = 10000"))
    lab = Lab(repo, load_config(repo))
    lab.write(set_mode("flood", 0.7))
    run = lab.run("flood")
    log = (lab.history.run_dir(run.id) / "log.txt").read_bytes()
    assert len(log) <= 10_000 + 100
    assert log.startswith(b"step 0") and b"bytes of output dropped here" in log
    assert run.status == "ok" and run.metric == 0.7


def test_experiment_that_runs_out_of_memory_is_a_crash(lab: Lab) -> None:
    """Scenario: Hostile experiments / runs out of memory for real (MemoryError under an address-space
    limit): recorded as a crash naming the error, never kept."""
    lab.write(
        "import resource\nresource.setrlimit(resource.RLIMIT_AS, (1 << 29, 1 << 29))\n"
        "hoard = [bytearray(1 << 26) for _ in range(64)]\n"
    )
    run = lab.run("oom")
    assert run.status == "crash" and "MemoryError" in (run.reason or "")
    with pytest.raises(StateError, match="can never be kept"):
        lab.keep()


# -- locked files --------------------------------------------------------------------------------------------


def test_locked_file_committed_behind_the_servers_back_refuses_runs_until_repinned(lab: Lab, repo: Path) -> None:
    """Scenario: Locked files / a locked file changed by a git commit between runs (git status clean):
    the next run is refused, nothing is recorded, until a human re-pins."""
    lab.pin()  # the tag starts
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text() + "\n# a human's change\n")
    git(repo, "commit", "-qam", "change prepare")
    before = disk_state(repo)
    with pytest.raises(LockedFileError, match="prepare.py.*autoresearch pin"):
        lab.run("refused")
    assert disk_state(repo) == before
    lab.pin()
    assert lab.run("after re-pin").status == "ok"


def test_locked_file_deleted_or_config_edited_refuses_runs_until_restored(lab: Lab, repo: Path) -> None:
    """Scenario: Locked files / a locked file deleted or the configuration edited between runs: refused,
    naming the file and how to restore it, until it is restored."""
    lab.pin()
    (repo / "prepare.py").unlink()
    with pytest.raises(LockedFileError, match="git checkout autoresearch/test -- prepare.py"):
        lab.run("refused")
    git(repo, "checkout", "autoresearch/test", "--", "prepare.py")
    config = repo / "autoresearch.toml"
    config.write_text(config.read_text().replace("time_budget = 1", "time_budget = 1000"))
    with pytest.raises(LockedFileError, match="autoresearch.toml"):
        lab.run("refused")
    git(repo, "checkout", "autoresearch/test", "--", "autoresearch.toml")
    assert lab.history.runs() == []
    assert lab.run("restored").status == "ok"


ESCAPE = """\
import hashlib, json, pathlib
from prepare import summary
root = pathlib.Path.cwd().parents[4]  # out of .autoresearch/test/runs/<id>/tree
prepare = root / "prepare.py"
prepare.write_text(prepare.read_text() + "# better metric, by changing the evaluation\\n")
pins = root / ".autoresearch" / "test" / "pins.json"
table = json.loads(pins.read_text())
table["prepare.py"] = hashlib.sha256(prepare.read_bytes()).hexdigest()
pins.write_text(json.dumps(table))
summary(0.001)
"""


@needs_bwrap
def test_sandboxed_experiment_cannot_reach_the_working_tree_or_the_pins(lab: Lab, repo: Path) -> None:
    """Scenario: Sandbox / an experiment that leaves its snapshot to change the working tree's locked file
    and rewrite the pins: inside the sandbox the repository and the state folder are empty, so neither file
    changes, and the next run goes on."""
    lab.write(ESCAPE)
    pins_before = (repo / STATE / "pins.json").read_bytes()
    prepare_before = (repo / "prepare.py").read_bytes()
    run = lab.run("escape")
    assert run.status == "crash" and "No such file" in (run.reason or "")  # the repository is an empty folder
    assert (repo / STATE / "pins.json").read_bytes() == pins_before
    assert (repo / "prepare.py").read_bytes() == prepare_before
    lab.discard()
    lab.write(set_mode("ok", 0.5))
    assert lab.run("next").status == "ok"


def test_experiment_that_edits_locked_files_outside_its_snapshot_and_repins_is_not_accepted(repo: Path) -> None:
    """Scenario: Locked files / unsandboxed (sandbox = "off"), an experiment that leaves its snapshot to change
    the working tree's locked file and rewrite the pins while it runs: recorded as tampered, pins put back,
    later runs refused until the file is restored."""
    lab = Lab(repo, load_config(repo).model_copy(update={"sandbox": "off"}))
    lab.write(ESCAPE)
    pins_before = (repo / STATE / "pins.json").read_bytes()
    run = lab.run("escape")
    assert run.status == "tampered" and run.metric is None and "prepare.py" in (run.reason or "")
    assert (repo / STATE / "pins.json").read_bytes() == pins_before
    with pytest.raises(StateError, match="can never be kept"):
        lab.keep()
    lab.discard()
    with pytest.raises(LockedFileError, match="prepare.py"):
        lab.run("next")
    git(repo, "checkout", "autoresearch/test", "--", "prepare.py")
    assert lab.run("restored").status == "ok"


# -- concurrency ---------------------------------------------------------------------------------------------


def test_two_server_processes_never_run_two_experiments(repo: Path, tmp_path: Path) -> None:
    """Scenario: Concurrency / two real server processes over stdio on one repository with one slot: one run
    of train.py at a time, the loser is told which run, process and slot hold it, a decision on the running
    run is refused, the next draft may be written meanwhile, the history is never interleaved."""
    (repo / "train.py").write_text(set_mode("sleep", 1.0))
    with raw_server(repo, tmp_path / "a.err", AUTORESEARCH_TIME_BUDGET="2") as first, \
         raw_server(repo, tmp_path / "b.err", AUTORESEARCH_TIME_BUDGET="2") as second:  # fmt: skip
        request = first.start("tools/call", {"name": "run_experiment", "arguments": {"description": "first"}})
        holder = wait_for(lambda: lock_info(repo).get("token") and lock_info(repo))
        is_error, message = second.tool("run_experiment", description="second")
        assert is_error and f"run 1 ('first') is running in process {holder['pid']}" in message
        assert holder["pid"] == first.proc.pid
        watching = second.tool("get_history")[1]  # reading is never refused: it says what runs
        assert watching["running"].startswith(
            f"run 1 ('first') is running in process {holder['pid']} (slot 0), at most"
        )
        assert "run 1 is still running; wait for it with get_history(wait_for=[1])." in second.tool("discard")[1]
        assert not second.tool("write_train", content=set_mode("ok", 0.5))[0]  # the next draft, while it runs
        assert first.reply(request)["structuredContent"]["status"] == "ok"
    events = read_events(repo / STATE / "runs.jsonl")
    assert [(e["type"], e["run"]["id"]) for e in events if "run" in e] == [("start", 1), ("end", 1)]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_two_clients_of_one_server_never_run_two_experiments(
    repo: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """Scenario: Concurrency / two clients of one server, and two concurrent calls from one client: one
    experiment at a time, the others are told who holds the lock."""
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "2")
    (repo / "train.py").write_text(set_mode("sleep", 1.0))
    results: list[Any] = []
    async with Client(app.mcp) as one, Client(app.mcp) as two:

        async def first() -> None:
            results.append(await one.call_tool("run_experiment", {"description": "first"}))

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            await anyio.to_thread.run_sync(lambda: wait_for(lambda: lock_info(repo).get("token")))
            busy = f"run 1 ('first') is running in process {os.getpid()}"
            still = "run 1 is still running; wait for it with get_history(wait_for=[1])"
            for client, tool, args, fragment in [(two, "run_experiment", {"description": "second"}, busy),
                                                 (two, "discard", {}, still),
                                                 (one, "run_experiment", {"description": "third"}, busy)]:  # fmt: skip
                result = await client.call_tool(tool, args)
                assert result.is_error and fragment in result.content[0].text  # type: ignore[union-attr]
    assert not results[0].is_error
    events = read_events(repo / STATE / "runs.jsonl")
    assert [(e["type"], e["run"]["id"]) for e in events if "run" in e] == [("start", 1), ("end", 1)]
