"""Every tool through the SDK's in-memory Client, in both protocol eras, against real repos and runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from conftest import FAKE_CONFIG, git, make_fake_repo, set_mode
from mcp import Client
from mcp.types import CallToolResult

from server import app
from server.run.runner import RUN_TOKEN_VAR

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
TOOLS = {"read_train", "write_train", "run_experiment", "get_history", "keep", "discard"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest, repo: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    return str(request.param)


def text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
    result = await client.call_tool(tool, args or {})
    assert not result.is_error, text(result)
    data: dict[str, Any] | None = result.structured_content
    assert data is not None
    return data


async def refused(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(tool, args or {})
    assert result.is_error
    return text(result)


async def test_all_six_tools_are_listed_with_output_schemas(mode: str) -> None:
    async with Client(app.mcp, mode=mode) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    assert all(t.output_schema is not None and t.description for t in tools.values())
    assert tools["read_train"].annotations is not None and tools["read_train"].annotations.read_only_hint


async def test_full_loop_keep_then_discard(mode: str, repo: Path) -> None:
    async with Client(app.mcp, mode=mode) as client:
        start = await ok(client, "read_train")
        assert start["best"] is None and "MODE" in start["content"]
        baseline = await ok(client, "run_experiment", {"description": "baseline"})
        assert baseline["status"] == "ok" and baseline["improved"] and "keep" in baseline["next"]
        assert (await ok(client, "keep"))["best_run"] == 1
        wrote = await ok(client, "write_train", {"edits": [{"old": "METRIC = 1.0", "new": "METRIC = 1.5"}]})
        assert "+METRIC = 1.5" in wrote["diff"]
        worse = await ok(client, "run_experiment", {"description": "worse"})
        assert worse["delta"] == pytest.approx(0.5) and not worse["improved"]
        assert "not better" in await refused(client, "keep")
        await ok(client, "discard")
    assert "METRIC = 1.0" in (repo / "train.py").read_text()
    assert git(repo, "rev-parse", "autoresearch/test") == baseline_commit(repo)


def baseline_commit(repo: Path) -> str:
    return git(repo, "rev-parse", "refs/autoresearch/test/1")


async def test_failed_run_returns_status_reason_and_log_tail(mode: str) -> None:
    async with Client(app.mcp, mode=mode) as client:
        await ok(client, "write_train", {"content": set_mode("crash")})
        result = await ok(client, "run_experiment", {"description": "crash"})
        assert result["status"] == "crash" and result["metric"] is None
        assert any("boom" in line for line in result["log_tail"])
        assert "can never be kept" in await refused(client, "keep")


LOUD_CRASH = "for i in range(200):\n    print(f'line {i} ' + 'y' * 400)\nraise SystemExit(3)\n"


async def test_failed_run_result_with_a_long_log_tail_is_compact(mode: str) -> None:
    async with Client(app.mcp, mode=mode) as client:
        await ok(client, "write_train", {"content": LOUD_CRASH})
        result = await client.call_tool("run_experiment", {"description": "loud crash"})
    assert result.structured_content is not None and result.structured_content["status"] == "crash"
    assert result.structured_content["log_tail"]  # the cap trims the tail, it does not drop it
    assert len(text(result).encode()) < 1500


async def test_misuse_of_every_tool_is_a_tool_error_and_changes_nothing(mode: str, repo: Path) -> None:
    before = (repo / "train.py").read_bytes()
    async with Client(app.mcp, mode=mode) as client:
        assert "no runs yet" in await refused(client, "keep")
        assert "no runs yet" in await refused(client, "discard")
        assert "would not compile" in await refused(client, "write_train", {"content": "def (:"})
        assert "matches nothing" in await refused(client, "write_train", {"edits": [{"old": "nope", "new": "x"}]})
        assert "either" in await refused(client, "write_train", {})
        assert await refused(client, "run_experiment", {"description": ""})
        assert await refused(client, "get_history", {"limit": 0})
        assert "no run 7" in await refused(client, "get_history", {"run_id": 7})
        await ok(client, "run_experiment", {"description": "baseline"})
        assert "awaits a decision" in await refused(client, "run_experiment", {"description": "again"})
        assert "awaits a decision" in await refused(client, "write_train", {"content": set_mode("ok", 0.1)})
        assert "not a known run" in await refused(client, "keep", {"run_id": 99})
    assert (repo / "train.py").read_bytes() == before


async def test_history_lists_runs_and_details_one(mode: str) -> None:
    async with Client(app.mcp, mode=mode) as client:
        await ok(client, "run_experiment", {"description": "baseline"})
        await ok(client, "keep")
        history = await ok(client, "get_history")
        detail = await ok(client, "get_history", {"run_id": 1})
    assert history["counts"]["kept"] == 1 and "baseline" in history["rows"][-1]
    assert detail["detail"]["run"]["summary"]["val_bpb"] == "1.000000"
    assert any("val_bpb" in line for line in detail["detail"]["log_tail"])


async def test_history_shows_the_latest_runs_and_finds_earlier_ones_by_match(mode: str) -> None:
    async with Client(app.mcp, mode=mode) as client:
        for idea in ("raise the LR", "deeper model", "lower the lr"):
            await ok(client, "run_experiment", {"description": idea})
            await ok(client, "discard")
        latest = await ok(client, "get_history", {"limit": 1})
        found = await ok(client, "get_history", {"match": "LR"})
        narrowed = await ok(client, "get_history", {"match": "lr", "limit": 1})
        none = await ok(client, "get_history", {"match": "attention"})
    assert latest["rows"][0].endswith("(2 earlier runs not shown)") and "lower the lr" in latest["rows"][1]
    assert len(latest["rows"]) == 2 and latest["counts"]["runs"] == 3
    assert found["rows"][0].endswith("(2 matching 'LR')")
    assert [r.split()[0] for r in found["rows"][1:]] == ["1", "3"]
    assert narrowed["rows"][0].endswith("(2 matching 'lr', 1 earlier of them not shown)")
    assert len(narrowed["rows"]) == 2 and "lower the lr" in narrowed["rows"][1]
    assert none["rows"][0].endswith("(0 matching 'attention')") and len(none["rows"]) == 1
    assert none["counts"]["runs"] == 3  # counts and best cover every run, whatever the filter


async def test_progress_notifications_arrive_during_a_run(
    mode: str, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "PROGRESS_EVERY_S", 0.2)
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "1.5")
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with Client(app.mcp, mode=mode) as client:
        await ok(client, "write_train", {"content": set_mode("sleep", 1.0)})
        result = await client.call_tool("run_experiment", {"description": "slow"}, progress_callback=on_progress)
    assert not result.is_error
    assert len(seen) >= 2 and all(b[0] > a[0] for a, b in zip(seen, seen[1:], strict=False))
    assert any("step 2" in (m or "") for _, m in seen)


async def test_cancelled_run_is_killed_and_recorded(mode: str, repo: Path) -> None:
    """Scenario: Crash recovery / the client cancels run_experiment: the run is killed and recorded as cancelled"""
    async with Client(app.mcp, mode=mode) as client:
        await ok(client, "write_train", {"content": set_mode("hang")})
        seen: list[psutil.Process] = []
        async with anyio.create_task_group() as group:
            group.start_soon(client.call_tool, "run_experiment", {"description": "hang"})
            while not seen:  # the run is under way once its process exists; then cancel the call
                seen = run_processes(repo)
                await anyio.sleep(0.05)
            group.cancel_scope.cancel()
        history: dict[str, Any] = {}
        for _ in range(100):  # the server records the cancellation asynchronously
            history = await ok(client, "get_history")
            if "cancelled" in history["rows"][-1]:
                break
            await anyio.sleep(0.1)
    assert "cancelled" in history["rows"][-1]
    assert not [p.pid for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def run_processes(repo: Path) -> list[psutil.Process]:
    """The processes of this repository's runs: they carry the run token and work in its snapshot folder."""
    found = []
    for proc in psutil.process_iter():
        try:
            if RUN_TOKEN_VAR in proc.environ() and Path(proc.cwd()).is_relative_to(repo):
                found.append(proc)
        except psutil.Error:
            continue  # gone meanwhile, or another user's
    return found


async def test_program_resource_and_loop_prompt(mode: str, repo: Path) -> None:
    (repo / "program.md").write_text("# program\nNEVER STOP\n")
    git(repo, "add", "program.md")
    git(repo, "commit", "-qm", "program")  # a steering file: pinned, so it must be committed
    async with Client(app.mcp, mode=mode) as client:
        program = await client.read_resource("autoresearch://program")
        prompt = await client.get_prompt("autoresearch")
        await ok(client, "run_experiment", {"description": "baseline"})
        log = await client.read_resource("autoresearch://runs/1/log")
    assert "NEVER STOP" in getattr(program.contents[0], "text", "")
    assert "NEVER STOP" in json.dumps(prompt.model_dump(mode="json"))
    assert "val_bpb" in getattr(log.contents[0], "text", "")


async def test_not_a_git_repository_is_reported_by_every_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: Git edge cases / not a git repository at all: every tool says to run `git init` and commit"""
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(tmp_path))
    async with Client(app.mcp) as client:
        message = await refused(client, "read_train")
    assert "not a git repository" in message and "git init" in message


async def test_history_rows_name_the_configured_metric(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_fake_repo(tmp_path / "steps", FAKE_CONFIG + 'metric = "num_steps"\ndirection = "maximize"\n')
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    async with Client(app.mcp) as client:
        await ok(client, "run_experiment", {"description": "baseline"})
        history = await ok(client, "get_history")
    assert history["rows"][0].split()[:2] == ["id", "num_steps"] and history["direction"] == "maximize"
    assert history["rows"][1].split()[1] == "3.000000"
