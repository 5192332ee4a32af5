"""The files Claude Code reads: permissions that match the server, .mcp.json, and the overnight Stop hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from server import app
from server.config import load_config

HOOK = REPO_ROOT / "scripts" / "stop_hook.py"


def settings() -> dict[str, dict[str, list[str]]]:
    data: dict[str, dict[str, list[str]]] = json.loads((REPO_ROOT / ".claude" / "settings.json").read_text())
    return data


def test_settings_allow_every_tool_of_the_server() -> None:
    tools = {t.name for t in app.mcp._tool_manager.list_tools()}
    allowed = {rule.removeprefix("mcp__autoresearch__") for rule in settings()["permissions"]["allow"]}
    assert tools <= allowed


def test_settings_deny_editing_the_locked_files_and_running_the_experiment() -> None:
    deny = settings()["permissions"]["deny"]
    config = load_config(REPO_ROOT)
    for path in [*config.locked, "autoresearch.toml"]:
        assert f"Edit({path})" in deny and f"Write({path})" in deny
    assert f"Bash(python {config.editable}*)" in deny
    assert "Bash(autoresearch pin*)" in deny


def test_mcp_json_starts_the_server_with_a_timeout_longer_than_a_run() -> None:
    entry = json.loads((REPO_ROOT / ".mcp.json").read_text())["mcpServers"]["autoresearch"]
    assert entry["type"] == "stdio" and entry["args"] == ["serve"]
    assert not Path(entry["command"]).is_absolute()  # works from any clone
    assert entry["timeout"] / 1000 > load_config(REPO_ROOT).hard_timeout


def hook(project: Path, event: dict[str, object], overnight: bool = True) -> str:
    env = {**os.environ, "CLAUDE_PROJECT_DIR": str(project)}
    env.pop("AUTORESEARCH_OVERNIGHT", None)
    if overnight:
        env["AUTORESEARCH_OVERNIGHT"] = "1"
    out = subprocess.run([sys.executable, str(HOOK)], input=json.dumps(event), env=env, capture_output=True,
                         text=True, timeout=30, check=True)  # fmt: skip
    return out.stdout


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".autoresearch" / "night").mkdir(parents=True)
    (tmp_path / ".autoresearch" / "night" / "runs.jsonl").write_text('{"type":"start"}\n')
    return tmp_path


def test_stop_hook_is_silent_outside_overnight_runs(project: Path) -> None:
    assert hook(project, {"stop_hook_active": False}, overnight=False) == ""


def test_stop_hook_sends_an_overnight_agent_back_to_work(project: Path) -> None:
    decision = json.loads(hook(project, {"stop_hook_active": False}))
    assert decision["decision"] == "block" and "get_history" in decision["reason"]


def test_stop_hook_lets_the_agent_stop_when_the_human_asks(project: Path) -> None:
    (project / ".autoresearch" / "STOP").touch()
    assert hook(project, {"stop_hook_active": False}) == ""


def test_stop_hook_lets_a_stuck_agent_stop_but_not_a_working_one(project: Path) -> None:
    assert hook(project, {"stop_hook_active": False})  # sent back once
    assert hook(project, {"stop_hook_active": True}) == ""  # nothing ran since: let it stop
    with (project / ".autoresearch" / "night" / "runs.jsonl").open("a") as fh:
        fh.write('{"type":"end"}\n')
    assert hook(project, {"stop_hook_active": True})  # it ran something since: back to work
