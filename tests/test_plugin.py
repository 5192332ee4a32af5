"""The Claude Code plugin, checked by the real CLI: its manifests validate, and installed from this repository's
marketplace into a fresh copy of the project, it starts the server and `claude mcp list` reports it connected.

The CLI is a Node program that .ci/run installs under .ci/node; without it these tests skip and say why.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import REPO_ROOT, git
from test_clients import node_env, tool

PLUGIN = "autoresearch"
MARKETPLACE = json.loads((REPO_ROOT / ".claude-plugin" / "marketplace.json").read_text())["name"]


def claude(cwd: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(tool("claude")), *args], cwd=cwd, env=node_env(home), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a clone has them (tracked and new, not ignored), committed in a new repo."""
    files = git(REPO_ROOT, "ls-files", "-co", "--exclude-standard", "-z").split("\0")
    dest.mkdir()
    for name in filter(None, files):
        source = REPO_ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).write_bytes(source.read_bytes())
            (dest / name).chmod(source.stat().st_mode)
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "clone")
    (dest / ".venv").symlink_to(REPO_ROOT / ".venv")  # what scripts/setup.sh makes in a real clone
    return dest


@pytest.mark.parametrize("manifest", ["plugin.json", "marketplace.json"])
def test_claude_plugin_validate_accepts_the_manifests(manifest: str, tmp_path: Path) -> None:
    out = claude(REPO_ROOT, tmp_path / "home", "plugin", "validate", str(REPO_ROOT / ".claude-plugin" / manifest))
    assert out.returncode == 0 and "Validation passed" in out.stdout, out.stdout + out.stderr


def test_installed_plugin_connects_its_server_in_a_fresh_clone(tmp_path: Path) -> None:
    project, home = fresh_copy(tmp_path / "project"), tmp_path / "home"
    added = claude(project, home, "plugin", "marketplace", "add", str(project))
    assert added.returncode == 0, added.stdout + added.stderr
    installed = claude(project, home, "plugin", "install", f"{PLUGIN}@{MARKETPLACE}", "--scope", "project")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    listed = claude(project, home, "mcp", "list")
    line = next((x for x in listed.stdout.splitlines() if x.startswith(f"plugin:{PLUGIN}:autoresearch:")), "")
    assert "Connected" in line, listed.stdout + listed.stderr
    assert git(project, "branch", "--show-current") == "main"  # starting the server changes nothing


def session_start_output(project: Path, home: Path) -> str:
    """The plugin's SessionStart hook output in a real headless session (it fires before any model call)."""
    argv = [str(tool("claude")), "-p", "hi", "--output-format", "stream-json", "--verbose"]
    env = {**node_env(home), "ANTHROPIC_API_KEY": "sk-ant-offline-test"}  # no model is reached: the hook runs first
    with subprocess.Popen(argv, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL, text=True) as proc:  # fmt: skip
        watchdog = threading.Timer(90, proc.kill)  # without the hook the session would retry the API for minutes
        watchdog.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = json.loads(line) if line.startswith("{") else {}
                if event.get("subtype") == "hook_response" and "autoresearch" in event.get("output", ""):
                    return str(event["output"])
            return ""
        finally:
            watchdog.cancel()
            proc.kill()


def test_installed_plugin_briefs_a_new_headless_session(tmp_path: Path) -> None:
    project, home = fresh_copy(tmp_path / "project"), tmp_path / "home"
    claude(project, home, "plugin", "marketplace", "add", str(project))
    claude(project, home, "plugin", "install", f"{PLUGIN}@{MARKETPLACE}", "--scope", "project")
    output = json.loads(session_start_output(project, home))
    assert "0 runs" in output["hookSpecificOutput"]["additionalContext"]
