"""The files Claude Code reads: permissions that match the server and .mcp.json (the hooks: test_hooks.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO_ROOT

from server import app
from server.config import load_config


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
