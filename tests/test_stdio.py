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
    assert result.structured_content is not None
    return result.structured_content


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
