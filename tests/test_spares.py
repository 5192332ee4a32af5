"""Spare run processes (server/run/spares.py): a slot's next run started ahead, imports done, waiting in its
sandbox. A run in a spare must be the run a cold start would be: the same script as __main__, its seed, its
folders, its locked files read-only, its token known to recovery; a spare that no longer fits is not used."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from conftest import FAKE_CONFIG, make_fake_repo, needs_bwrap
from mcp import Client

from server import app
from server.config import load_config
from server.lab.loop import Lab
from server.run.runner import LocalExecution
from server.run.spares import LAUNCHER, NOT_READY
from server.store.history import History

# Says what it sees, then prints the old contract's summary (the fake repository is self-reported).
PROBE = """\
import json, os, sys
preloaded, tracer = "torch" in sys.modules, "torch._dynamo" in sys.modules
try:
    open("prepare.py", "a").close()
    locked = "writable"
except OSError:
    locked = "read-only"
seen = {"name": __name__, "file": __file__, "argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0],
        "seed": os.environ.get("AUTORESEARCH_SEED"), "preloaded": preloaded, "tracer": tracer, "locked": locked,
        "prepare": open("prepare.py").read(), "output": os.environ["AUTORESEARCH_OUTPUT"],
        "nice": os.getpriority(os.PRIO_PROCESS, 0)}
open(os.path.join(os.environ["AUTORESEARCH_OUTPUT"], "written.txt"), "w").write("from the run")
print("PROBE " + json.dumps(seen))
print("---")
print("val_bpb: 1.0")
print("training_seconds: 0.5")
"""


def probe(lab: Lab, run_id: int) -> dict[str, Any]:
    log = (lab.history.run_dir(run_id) / "log.txt").read_text()
    line = next(line for line in log.splitlines() if line.startswith("PROBE "))
    return json.loads(line[len("PROBE ") :])  # type: ignore[no-any-return]


def ready_spare(lab: Lab, slot: int = 0) -> LocalExecution:
    """The slot's spare once it has started (it is started on the spares' own thread)."""
    assert lab.spares is not None
    for _ in range(200):
        spare = lab.spares._spares.get(slot)
        if spare is not None:
            return spare.execution
        time.sleep(0.05)
    raise AssertionError("no spare was started")


def settle(pid: int, quiet: float = 0.5, limit: float = 60.0) -> None:
    """Wait until the process and its children use no CPU for `quiet` seconds: a spare that has done its
    imports (torch and the exporter's) and waits on its standard input."""

    def used() -> float:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    end, before = time.monotonic() + limit, used()
    while time.monotonic() < end:
        time.sleep(quiet)
        now = used()
        if now == before:
            return
        before = now
    raise AssertionError("the spare never went idle")


def niced_threads(pid: int, limit: float = 20.0) -> list[int]:
    """The nice values of the threads of the spare's processes, once one of them is above 0 (its imports)."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        nice = []
        for proc in procs:
            for thread in proc.threads():
                stat = Path(f"/proc/{proc.pid}/task/{thread.id}/stat").read_text()
                nice.append(int(stat.rsplit(")", 1)[1].split()[16]))
        if any(n > 0 for n in nice):
            return nice
        time.sleep(0.02)
    raise AssertionError("no thread of the spare runs at a low priority")


def gone(pid: int) -> bool:
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@needs_bwrap
def test_a_run_in_a_spare_is_the_run_a_cold_start_would_be(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path / "repo")
    lab = Lab(repo, load_config(repo), spares=True)
    try:
        cold = lab.run("cold", data=PROBE.encode())
        lab.keep()
        spare = ready_spare(lab)  # started with the cold run
        nice = niced_threads(spare.pid)  # imports at the lowest priority, the rest at the normal one
        assert 19 in nice and 0 in nice, nice
        settle(spare.pid)  # its imports done, as after a run of any length on a quiet machine
        active = lab.start_run(
            "warm", data=(PROBE + "AGAIN = 1  # another program: new code starts at the configured seed\n").encode()
        )
        assert active.execution is spare  # the spare became the run...
        slot_file = json.loads((lab.state / "slots" / "0.lock").read_text())
        assert slot_file["token"] == spare.spec.token  # ...under the token recovery kills by
        warm = lab.drive(active)
    finally:
        lab.close()
    assert cold.status == warm.status == "ok", (cold.reason, warm.reason)
    assert not cold.warm_start and warm.warm_start
    before, after = probe(lab, cold.id), probe(lab, warm.id)
    assert before["preloaded"] is False and after["preloaded"] is True  # torch was imported ahead
    assert before["tracer"] is False and after["tracer"] is True  # the tracer too
    for seen in (before, after):
        assert seen["nice"] == 0  # the run itself at the normal priority
        assert seen["name"] == "__main__" and seen["argv"] == ["train.py"]
        assert seen["file"] == str(Path(seen["cwd"]) / "train.py")
        assert seen["path0"] == seen["cwd"] and Path(seen["cwd"]).name == "tree"
        assert seen["seed"] == str(lab.config.seed)
        assert seen["locked"] == "read-only"  # the locked file is bound read-only, in the spare too
        assert seen["prepare"] == (repo / "prepare.py").read_text()  # with the pinned bytes
    # What the run wrote in its output folder is in the run's folder, where the server reads it.
    assert (lab.history.run_dir(warm.id) / "out" / "written.txt").read_text() == "from the run"


@needs_bwrap
def test_a_spare_told_to_run_before_its_imports_are_done_starts_the_script_cold(tmp_path: Path) -> None:
    """Its imports run at the lowest priority; a run never waits for them: the spare replaces itself with a
    cold `python train.py`, the same run in every other respect."""
    repo = make_fake_repo(tmp_path / "repo")
    lab = Lab(repo, load_config(repo), spares=True)
    try:
        lab.spares.prepare(0, None)  # type: ignore[union-attr]
        spare = ready_spare(lab)  # started, and at once told to run: torch alone takes longer to import
        active = lab.start_run("at once", data=PROBE.encode())
        assert active.execution is spare
        run = lab.drive(active)
    finally:
        lab.close()
    assert run.status == "ok" and run.warm_start, run.reason
    seen = probe(lab, run.id)
    assert seen["preloaded"] is False and seen["tracer"] is False  # a fresh interpreter ran the script
    assert seen["name"] == "__main__" and seen["argv"] == ["train.py"] and seen["path0"] == seen["cwd"]
    assert seen["seed"] == str(lab.config.seed) and seen["locked"] == "read-only" and seen["nice"] == 0
    assert seen["output"] == str(Path(seen["cwd"]).parent / "out")  # the run's own output folder
    assert NOT_READY in (lab.history.run_dir(run.id) / "log.txt").read_text()
    assert (lab.history.run_dir(run.id) / "out" / "written.txt").read_text() == "from the run"


@needs_bwrap
def test_a_spare_that_no_longer_fits_is_not_used_and_close_stops_them(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path / "repo")
    lab = Lab(repo, load_config(repo), spares=True)
    try:
        lab.run("cold", data=PROBE.encode())
        lab.keep()
        stale = ready_spare(lab)
        lab.config = lab.config.model_copy(update={"time_budget": 2})  # the spare's environment says 1
        run = lab.run("after the change", data=(PROBE + "# changed\n").encode())
        assert run.status == "ok" and not run.warm_start
        assert gone(stale.pid)  # killed, not left waiting
        fresh = ready_spare(lab)
        assert fresh is not stale and not gone(fresh.pid)
    finally:
        lab.close()
    assert gone(fresh.pid)


def spare_processes() -> list[psutil.Process]:
    """This process's descendants that are spares."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if LAUNCHER in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@needs_bwrap
def test_the_servers_spares_end_with_its_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The MCP server uses spares; when its session ends, none is left waiting."""
    repo = make_fake_repo(tmp_path / "repo")
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))

    async def session() -> None:
        async with Client(app.mcp) as client:
            for text in ("one", "two"):
                await client.call_tool("write_train", {"content": PROBE + f"# {text}\n"})
                result = await client.call_tool("run_experiment", {"description": text})
                assert not result.is_error
                await client.call_tool("keep" if text == "one" else "discard", {})
            for _ in range(100):  # the spare for the next run, started when the last one was recorded
                if spare_processes():
                    break
                await anyio.sleep(0.05)
            assert spare_processes()

    anyio.run(session)
    history = History(repo / ".autoresearch" / "test")
    assert [r.warm_start for r in history.runs()] == [False, True]
    for proc in spare_processes():
        proc.wait(10)
    assert not spare_processes()


@needs_bwrap
def test_a_spare_waits_longer_than_a_runs_time_limit_and_is_still_used(tmp_path: Path) -> None:
    """An agent may think for minutes between runs: a spare's limits start when it becomes the run."""
    config = FAKE_CONFIG.replace("timeout = 10", "timeout = 2")
    repo = make_fake_repo(tmp_path / "repo", config)
    lab = Lab(repo, load_config(repo), spares=True)
    try:
        lab.run("cold", data=PROBE.encode())
        lab.keep()
        spare = ready_spare(lab)
        settle(spare.pid)  # its imports done: what follows is waiting alone, longer than the run's limit
        time.sleep(lab.config.hard_timeout + 0.5)
        run = lab.run("after a long think", data=(PROBE + "# later\n").encode())
        assert run.status == "ok" and run.warm_start and run.wall_seconds is not None and run.wall_seconds < 2
        assert gone(spare.pid)  # it ran and ended
    finally:
        lab.close()
