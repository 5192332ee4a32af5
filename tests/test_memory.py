"""Memory across lost contexts: duplicates refused with the earlier result, hypotheses and lessons kept and
returned compactly by get_history, through the MCP tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_CONFIG, make_fake_repo, set_mode
from mcp import Client
from mcp.types import CallToolResult

from server import app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = make_fake_repo(tmp_path / "repo", FAKE_CONFIG.replace("refuse_duplicates = false\n", ""))
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(path))
    return path


async def call(client: Client, tool: str, **args: Any) -> CallToolResult:
    return await client.call_tool(tool, args)


def text(result: CallToolResult) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


async def test_the_same_code_again_is_refused_with_its_result_unless_a_reason_is_given(repo: Path) -> None:
    async with Client(app.mcp) as client:
        assert not (await call(client, "run_experiment", description="baseline")).is_error
        await call(client, "keep")
        reformatted = set_mode("ok", 1.0).replace("MODE = ", "# the same idea, reformatted\nMODE  =  ")
        await call(client, "write_train", content=reformatted)
        again = await call(client, "run_experiment", description="baseline again")
        assert again.is_error and "same code as run 1 ('baseline': val_bpb 1.000000, kept)" in text(again)
        assert "duplicate_reason" in text(again)
        forced = await call(client, "run_experiment", description="re-measure", duplicate_reason="noise check")
        assert not forced.is_error and forced.structured_content is not None
        await call(client, "discard")
        history = await call(client, "get_history", run_id=2)
    assert history.structured_content is not None
    assert history.structured_content["detail"]["run"]["duplicate_reason"] == "noise check"


async def test_hypotheses_and_lessons_are_kept_and_returned(repo: Path) -> None:
    async with Client(app.mcp) as client:
        await call(client, "run_experiment", description="baseline", hypothesis="a first reference point")
        await call(client, "keep", lesson="the baseline trains stably")
        await call(client, "write_train", content=set_mode("ok", 2.0))
        await call(client, "run_experiment", description="bigger lr")
        await call(client, "discard", lesson="lr x2 diverges \x1b[31mearly\x1b[0m")
        view = (await call(client, "get_history")).structured_content
        detail = (await call(client, "get_history", run_id=1)).structured_content
    assert view is not None and detail is not None
    assert view["lessons"] == ["run 1 (keep, baseline): the baseline trains stably",
                               "run 2 (discard, bigger lr): lr x2 diverges early"]  # fmt: skip
    assert detail["detail"]["run"]["hypothesis"] == "a first reference point"


async def test_near_misses_are_listed_for_a_later_look(repo: Path) -> None:
    """A discarded run that gained, but inside the noise band (the gate's min_improvement here), is listed
    under near_misses; a worse run is not."""
    toml = repo / "autoresearch.toml"
    toml.write_text(toml.read_text() + "min_improvement = 0.1\n")
    git_commit(repo)
    async with Client(app.mcp) as client:
        await call(client, "run_experiment", description="baseline")
        await call(client, "keep")
        for metric, idea in ((0.95, "slightly better"), (1.5, "worse")):
            await call(client, "write_train", content=set_mode("ok", metric))
            await call(client, "run_experiment", description=idea)
            await call(client, "discard")
        view = (await call(client, "get_history")).structured_content
    assert view is not None
    assert view["near_misses"] == ["run 2 (-0.050000, 1 seed(s)): slightly better"]


def git_commit(repo: Path) -> None:
    import subprocess

    subprocess.run(["git", "commit", "-qam", "config"], cwd=repo, check=True)
