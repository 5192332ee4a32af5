"""scripts/overnight.sh against a fake `claude` on PATH: the preflight checks, the backoff, the log."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT

FAKE_CLAUDE = """#!/usr/bin/env bash
# A stand-in for the Claude Code CLI: `auth status` as FAKE_LOGGED_IN says; a session as FAKE_MODE says.
if [ "$1" = "auth" ]; then [ "${FAKE_LOGGED_IN:-1}" = 1 ]; exit $?; fi
echo "session $*" >> "$FAKE_CALLS"
calls=$(wc -l < "$FAKE_CALLS")
case "$FAKE_MODE" in
  fail) echo "Credit balance is too low" >&2; exit 3 ;;
  ok) if [ "$calls" -ge 2 ]; then touch .autoresearch/STOP; fi; exit 0 ;;
esac
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project ready for the night: venv, prepared data, tag, a trusted folder, a fake claude on PATH."""
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip(".venv is missing (bash scripts/setup.sh creates it)")
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    (root / "experiment").mkdir()
    for name in ("overnight.sh", "night.py"):
        shutil.copy(REPO_ROOT / "scripts" / name, root / "scripts" / name)
    shutil.copy(REPO_ROOT / "experiment" / "prepare.py", root / "experiment" / "prepare.py")
    (root / "server").mkdir()  # night.py reads the night file through server/schema.py (stdlib only)
    for name in ("__init__.py", "schema.py"):
        shutil.copy(REPO_ROOT / "server" / name, root / "server" / name)
    (root / "autoresearch.toml").write_text('[autoresearch]\ntag = "nov25"\n\n[autoresearch.env]\n'
                                            'AUTORESEARCH_DATASET = "tiny"\n')  # fmt: skip
    (root / ".venv").symlink_to(REPO_ROOT / ".venv")
    (tmp_path / "cache" / "tiny").mkdir(parents=True)
    (tmp_path / "cache" / "tiny" / "meta.json").write_text('{"format_version": 2}')  # what --check reads
    home = tmp_path / "home"
    home.mkdir()
    trust = {"projects": {str(root.resolve()): {"hasTrustDialogAccepted": True}}}
    (home / ".claude.json").write_text(json.dumps(trust))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "claude").write_text(FAKE_CLAUDE)
    (tmp_path / "bin" / "claude").chmod(0o755)
    return root


def overnight(project: Path, mode: str = "ok", **env: str) -> subprocess.CompletedProcess[str]:
    """The loop itself (--inside, what tmux runs), with backoff constants small enough for a test."""
    tmp = project.parent
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTORESEARCH_", "CLAUDE_"))}
    full_env.update(
        PATH=f"{tmp / 'bin'}:{os.environ['PATH']}", HOME=str(tmp / "home"), AUTORESEARCH_CACHE=str(tmp / "cache"),
        FAKE_CALLS=str(tmp / "calls"), FAKE_MODE=mode, OVERNIGHT_BACKOFF_START_S="0", OVERNIGHT_BACKOFF_MAX_S="1",
        OVERNIGHT_MIN_SESSION_S="60", OVERNIGHT_MAX_QUICK_FAILS="3",
    )  # fmt: skip
    full_env.update(env)
    return subprocess.run(["bash", "scripts/overnight.sh", "--inside"], cwd=project, env=full_env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def log(project: Path) -> str:
    return (project / ".autoresearch" / "agent.log").read_text()


def calls(project: Path) -> int:
    path = project.parent / "calls"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_sessions_that_fail_at_once_back_off_and_give_up(project: Path) -> None:
    out = overnight(project, "fail")
    assert out.returncode == 1 and calls(project) == 3
    text = log(project)
    assert len(re.findall(r"^\S+ session \d ended: exit code 3 after \d+s", text, re.M)) == 2
    assert text.count("retrying in 0s") == 2
    assert re.search(r"^\d{4}-\d\d-\d\dT\S+ giving up: 3 sessions in a row .* \(last exit code 3\)", text, re.M)
    assert "Credit balance is too low" in text  # the session's own output is in the log too
    assert (project / ".autoresearch" / "STOP").exists()  # the night is over for the Stop hook too


def test_backoff_doubles_up_to_its_cap(project: Path) -> None:
    overnight(project, "fail", OVERNIGHT_BACKOFF_START_S="1", OVERNIGHT_BACKOFF_MAX_S="2",
              OVERNIGHT_MAX_QUICK_FAILS="4")  # fmt: skip
    delays = re.findall(r"retrying in (\d+)s", log(project))
    assert delays == ["1", "2", "2"]


def test_a_working_night_runs_sessions_until_the_human_stops_it(project: Path) -> None:
    out = overnight(project, "ok", OVERNIGHT_MIN_SESSION_S="0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert calls(project) == 2
    text = log(project)
    assert re.search(r"^\S+ session 1 ended: exit code 0 after \d+s; starting the next one", text, re.M)
    assert "night over: the human asked to stop" in text
    assert re.search(r"^\S+ the morning report: \.venv/bin/autoresearch report --tag nov25 --html$", text, re.M)
    session = (project.parent / "calls").read_text().splitlines()[0]
    assert "--strict-mcp-config" in session and "--allowedTools mcp__autoresearch Read(./experiment/**)" in session
    assert " Read " not in f"{session} "  # never Read everywhere: tests/test_data_access.py


def test_the_night_ends_at_its_deadline_without_starting_a_session(project: Path) -> None:
    out = overnight(project, "ok", AUTORESEARCH_DEADLINE="2000-01-01T00:00")
    assert out.returncode == 0 and calls(project) == 0
    assert "night over: the deadline 2000-01-01 00:00 has passed" in log(project)


def break_venv(project: Path) -> dict[str, str]:
    (project / ".venv").unlink()
    return {}


def break_data(project: Path) -> dict[str, str]:
    (project.parent / "cache" / "tiny" / "meta.json").unlink()
    return {}


def break_tag(project: Path) -> dict[str, str]:
    (project / "autoresearch.toml").write_text("[autoresearch]\n")
    return {}


def break_claude(project: Path) -> dict[str, str]:
    (project.parent / "bin" / "claude").unlink()
    return {}


def break_login(project: Path) -> dict[str, str]:
    return {"FAKE_LOGGED_IN": "0"}


def break_trust(project: Path) -> dict[str, str]:
    (project.parent / "home" / ".claude.json").write_text("{}")
    return {}


@pytest.mark.parametrize(
    ("breaker", "words"),
    [
        (break_venv, "scripts/setup.sh"),
        (break_data, "autoresearch prepare"),
        (break_tag, "AUTORESEARCH_TAG"),
        (break_claude, "npm install"),
        (break_login, "claude auth login"),
        (break_trust, "accept the trust dialog"),
    ],
)
def test_preflight_refuses_to_start_with_one_sentence(project: Path, breaker: object, words: str) -> None:
    env = breaker(project)  # type: ignore[operator]
    out = overnight(project, "ok", **env)
    assert out.returncode == 2 and calls(project) == 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("overnight: ") and words in last and last.endswith(".")
