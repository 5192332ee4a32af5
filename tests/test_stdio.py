"""The real stdio transport: the server started exactly as .mcp.json says, driven through a whole loop."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, git
from mcp import Client, StdioServerParameters

from server.config import load_config
from server.lab.loop import Lab

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def server_params(repo: Path) -> StdioServerParameters:
    """.mcp.json's entry, with the command resolved against this checkout and the project as cwd."""
    entry = json.loads((REPO_ROOT / ".mcp.json").read_text())["mcpServers"]["autoresearch"]
    command = REPO_ROOT / entry["command"]
    argv = [str(command), *entry["args"]]
    if not command.exists():  # tests run from another environment than the README's .venv
        argv = [sys.executable, "-m", "server", *entry["args"]]
    env = {**os.environ, **entry["env"], "CLAUDE_PROJECT_DIR": str(repo)}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(repo))


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert not result.is_error, result.content
    data: dict[str, Any] | None = result.structured_content
    assert data is not None
    return data


def tip(repo: Path) -> str:
    return git(repo, "rev-parse", "autoresearch/test")


async def test_whole_loop_over_stdio(repo: Path) -> None:
    async with Client(server_params(repo)) as client:
        base = await call(client, "run_experiment", description="baseline")
        await call(client, "keep")
        assert tip(repo) == git(repo, "rev-parse", "refs/autoresearch/test/1")

        await call(client, "write_train", edits=[{"old": "METRIC = 1.0", "new": "METRIC = 0.9"}])
        better = await call(client, "run_experiment", description="better")
        assert better["improved"] and better["delta"] == pytest.approx(-0.1)
        await call(client, "keep")
        assert tip(repo) == git(repo, "rev-parse", "refs/autoresearch/test/2")
        assert git(repo, "status", "--porcelain") == ""

        await call(client, "write_train", edits=[{"old": "METRIC = 0.9", "new": "METRIC = 0.95"}])
        worse = await call(client, "run_experiment", description="worse")
        assert not worse["improved"]
        await call(client, "discard")
        history = await call(client, "get_history")

    assert base["status"] == "ok"
    assert tip(repo) == git(repo, "rev-parse", "refs/autoresearch/test/2")
    assert "METRIC = 0.9\n" in (repo / "train.py").read_text()
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "rev-parse", "refs/autoresearch/test/3^") == tip(repo)
    assert [row.split()[4] for row in history["rows"][1:]] == ["keep", "keep", "discard"]
    tsv = (repo / ".autoresearch" / "test" / "results.tsv").read_text().splitlines()
    assert [line.split("\t")[3] for line in tsv[1:]] == ["keep", "keep", "discard"]


async def test_nothing_but_protocol_reaches_stdout(repo: Path) -> None:
    """A run that prints a lot must not corrupt the wire: the client still parses every reply.

    Scenario: Hostile experiments / a flooding run under a real stdio server: nothing but protocol reaches stdout
    """
    (repo / "train.py").write_text((repo / "train.py").read_text().replace('MODE = "ok"', 'MODE = "flood"'))
    async with Client(server_params(repo)) as client:
        result = await call(client, "run_experiment", description="flood")
        assert result["status"] == "ok"
        assert (await call(client, "read_train"))["awaiting_decision"] == 1


async def test_client_that_goes_away_mid_run_leaves_no_experiment_behind(repo: Path) -> None:
    """Scenario: Crash recovery / the client (Claude Code) quits during a run and stops the server: the run is
    killed with it, so nothing keeps running on the GPU, and it is recorded as cancelled or interrupted."""
    import anyio
    import psutil

    (repo / "train.py").write_text((repo / "train.py").read_text().replace('MODE = "ok"', 'MODE = "hang"'))
    async with Client(server_params(repo)) as client:
        with anyio.move_on_after(2):
            await client.call_tool("run_experiment", {"description": "left behind"})
    for _ in range(100):  # the server notices the closed pipe, kills the run, records it and exits
        alive = [p for p in psutil.process_iter(["cmdline", "cwd"]) if "train.py" in " ".join(p.info["cmdline"] or [])
                 and str(repo) in (p.info["cwd"] or "")]  # fmt: skip
        if not alive:
            break
        await anyio.sleep(0.1)
    assert not alive
    run = Lab(repo, load_config(repo)).history.runs()[-1]  # a restart records what the stop left open
    assert run.status in ("cancelled", "interrupted")


async def test_a_wave_of_candidates_over_stdio(repo: Path) -> None:
    """Scenario: Pool / over MCP: two candidates as edits with wait=false on two slots, collected with
    get_history(wait_for=...), kept and discarded in any order; the draft is never touched"""
    (repo / "autoresearch.toml").write_text((repo / "autoresearch.toml").read_text() + "slots = 2\n")
    git(repo, "commit", "-qam", "two slots")
    draft = (repo / "train.py").read_text()
    async with Client(server_params(repo)) as client:
        await call(client, "run_experiment", description="baseline")
        await call(client, "keep")
        ids = []
        for metric in ("0.8", "0.9"):
            started = await call(client, "run_experiment", description=f"to {metric}", wait=False,
                                 edits=[{"old": "METRIC = 1.0", "new": f"METRIC = {metric}"}])  # fmt: skip
            assert started["status"] == "running"
            ids.append(started["run_id"])
        view = await call(client, "get_history", wait_for=ids, wait_seconds=60)
        assert [(r["run_id"], r["status"], r["metric"]) for r in view["results"]] == [(2, "ok", 0.8), (3, "ok", 0.9)]
        assert view["awaiting"] == [2, 3] and (repo / "train.py").read_text() == draft
        refused = await client.call_tool("keep", {})
        assert refused.is_error and "runs 2, 3 await a decision; give run_id" in str(refused.content)
        await call(client, "discard", run_id=3)
        await call(client, "keep", run_id=2)
    assert tip(repo) == git(repo, "rev-parse", "refs/autoresearch/test/2")
    assert "METRIC = 0.8" in (repo / "train.py").read_text()  # the clean draft followed the new best
