"""Independent clients against the real server: Claude Code's `claude mcp list` and the MCP Inspector CLI.

Both are Node programs; .ci/run installs them under .ci/node. Without them these tests skip and say why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import FAKE_CONFIG, REPO_ROOT, git, make_fake_repo

NODE_BIN = Path(os.environ.get("AUTORESEARCH_NODE_BIN", REPO_ROOT / ".ci" / "node" / "node_modules" / ".bin"))


def tool(name: str) -> Path:
    path = NODE_BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed under {NODE_BIN} (bash .ci/run installs it with npm)")
    if not (REPO_ROOT / ".venv" / "bin" / "autoresearch").exists():
        pytest.skip(".venv/bin/autoresearch is missing (bash scripts/setup.sh creates it)")
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project as a user has it after the README's set-up: .mcp.json, .venv, servers pre-approved."""
    repo = make_fake_repo(tmp_path / "project")
    shutil.copy(REPO_ROOT / ".mcp.json", repo / ".mcp.json")
    git(repo, "add", ".mcp.json")
    git(repo, "commit", "-qm", "the project's server entry")  # a steering file: pinned, so committed
    (repo / ".venv").symlink_to(REPO_ROOT / ".venv")
    (repo / ".claude").mkdir()
    (repo / ".claude" / "settings.local.json").write_text(json.dumps({"enableAllProjectMcpServers": True}))
    return repo


def node_env(home: Path) -> dict[str, str]:
    home.mkdir(exist_ok=True)
    return {**os.environ, "HOME": str(home), "PATH": f"{NODE_BIN}:{os.environ['PATH']}"}


def test_claude_mcp_list_reports_the_server_connected(project: Path, tmp_path: Path) -> None:
    claude = tool("claude")
    out = subprocess.run([str(claude), "mcp", "list"], cwd=project, env=node_env(tmp_path / "home"),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert "autoresearch" in out.stdout and "Connected" in out.stdout, out.stdout + out.stderr
    assert git(project, "branch", "--show-current") == "main"  # a health check changes nothing


def test_claude_mcp_list_reports_a_broken_configuration_as_failed(project: Path, tmp_path: Path) -> None:
    claude = tool("claude")
    (project / "autoresearch.toml").write_text(FAKE_CONFIG + "time_budge = 1\n")
    out = subprocess.run([str(claude), "mcp", "list"], cwd=project, env=node_env(tmp_path / "home"),
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip
    assert "autoresearch" in out.stdout and "Failed" in out.stdout, out.stdout + out.stderr


def inspector(project: Path, home: Path, *args: str) -> dict[str, Any]:
    entry = json.loads((project / ".mcp.json").read_text())["mcpServers"]["autoresearch"]
    argv = [str(tool("mcp-inspector")), "--cli", entry["command"], *entry["args"], *args]
    out = subprocess.run(argv, cwd=project, env=node_env(home), capture_output=True, text=True, timeout=120,
                         stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_inspector_lists_the_six_tools(project: Path, tmp_path: Path) -> None:
    listed = inspector(project, tmp_path / "home", "--method", "tools/list")
    names = {t["name"] for t in listed["tools"]}
    assert names == {"read_train", "write_train", "run_experiment", "get_history", "keep", "discard"}


def test_inspector_runs_an_experiment_by_hand(project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = ["--method", "tools/call", "--tool-name", "run_experiment", "--tool-arg", "description=by hand"]
    result = inspector(project, home, *args)
    assert result["structuredContent"]["status"] == "ok"
    history = inspector(project, home, "--method", "tools/call", "--tool-name", "get_history")
    assert history["structuredContent"]["awaiting_decision"] == 1


def test_inspector_runs_the_loop_with_a_run_longer_than_its_request_timeout(project: Path, tmp_path: Path) -> None:
    """Scenario: Clients / the Inspector CLI (a fixed 60 s request timeout, a new server per call) starts a
    75 s run with wait=false, collects it with get_history(wait_for=...) in calls under 60 s, and keeps it"""
    home = tmp_path / "home"
    config = FAKE_CONFIG.replace("time_budget = 1", "time_budget = 75").replace("timeout = 10", "timeout = 150")
    (project / "autoresearch.toml").write_text(config)
    (project / "train.py").write_text((project / "train.py").read_text().replace('MODE = "ok"', 'MODE = "sleep"'))
    git(project, "commit", "-qam", "a run of 75 s")
    call = ["--method", "tools/call", "--tool-name"]
    started = inspector(project, home, *call, "run_experiment", "--tool-arg", "description=long", "--tool-arg",
                        "wait=false")["structuredContent"]  # fmt: skip
    assert started["status"] == "running" and started["run_id"] == 1
    polls = 0
    while True:
        polls += 1
        view = inspector(project, home, *call, "get_history", "--tool-arg", "wait_for=[1]", "--tool-arg",
                         "wait_seconds=40")["structuredContent"]  # fmt: skip
        (result,) = view["results"]
        if result["status"] != "running":
            break
        assert polls < 6 and view["running"].startswith("run 1 ('long') is running in process")
    assert result["status"] == "ok" and result["metric"] == 1.0 and polls >= 2
    kept = inspector(project, home, *call, "keep", "--tool-arg", "run_id=1")["structuredContent"]
    assert kept["decision"] == "keep" and kept["best_run"] == 1
