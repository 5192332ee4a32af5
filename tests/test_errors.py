"""Every failure of a tool reaches the agent as one sentence saying what to do next, even git's and the OS's;
descriptions are cleaned before they reach git, the history or a terminal."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from mcp import Client
from mcp.types import CallToolResult

from server import app
from server.errors import InvalidInputError
from server.text import clean_description

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def served(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    return repo


def text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def refused(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    """The sentence after the SDK's `Error executing tool NAME: ` (an untranslated exception has nothing there)."""
    result = await client.call_tool(tool, args or {})
    assert result.is_error
    prefix, _, message = text(result).partition(f"Error executing tool {tool}: ")
    assert not prefix and message.endswith(".") and "\n" not in message, text(result)
    return message


async def test_a_git_failure_is_a_sentence_and_its_traceback_is_logged(
    served: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with Client(app.mcp) as client:
        assert not (await client.call_tool("run_experiment", {"description": "baseline"})).is_error
        (served / ".git" / "refs" / "heads" / "autoresearch" / "test.lock").write_text("")  # a stale ref lock
        with caplog.at_level(logging.ERROR, logger="autoresearch"):
            message = await refused(client, "keep")
    assert "git update-ref failed" in message and "cannot lock ref" in message and "tell the user" in message
    assert any(record.exc_info for record in caplog.records)


async def test_an_os_failure_is_a_sentence(served: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_STATE_DIR", "notes.txt/state")  # a folder inside a file
    async with Client(app.mcp) as client:
        message = await refused(client, "read_train")
    assert "Not a directory" in message and "notes.txt" in message


async def test_a_nul_byte_or_blank_description_is_refused_and_runs_nothing(served: Path) -> None:
    async with Client(app.mcp) as client:
        assert "NUL byte" in await refused(client, "run_experiment", {"description": "idea\x00 hidden"})
        assert "only whitespace" in await refused(client, "run_experiment", {"description": " \t\n "})
    assert not (served / ".autoresearch" / "test" / "runs.jsonl").exists()


async def test_escapes_and_controls_never_reach_the_history(served: Path) -> None:
    description = "\x1b[31mred\x1b[0m idea\twith\ncontrols\x07 \x1b]0;title\x07and \x9b2Jmore"
    async with Client(app.mcp) as client:
        result = await client.call_tool("run_experiment", {"description": description})
        assert not result.is_error, text(result)
        history = await client.call_tool("get_history", {})
    assert history.structured_content is not None
    assert history.structured_content["rows"][-1].endswith("red idea with controls and 2Jmore")
    tsv = (served / ".autoresearch" / "test" / "results.tsv").read_text()
    assert not any(ord(c) < 32 and c not in "\t\n" or 0x7F <= ord(c) <= 0x9F for c in tsv)
    assert git(served, "log", "-1", "--format=%s", "refs/autoresearch/test/1").endswith("and 2Jmore")


def test_clean_description_keeps_ordinary_text() -> None:
    assert clean_description("  raise the LR to 0.04 — Muon ü  ") == "raise the LR to 0.04 — Muon ü"
    with pytest.raises(InvalidInputError):
        clean_description("\x1b[0m\r\n")
