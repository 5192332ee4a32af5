"""The plugin's hooks, run as Claude Code runs them: a real python3 subprocess fed one JSON event on stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, dead_pid, write_slot

from server.config import Config
from server.store.history import History, RunRecord, Status

SCRIPTS = REPO_ROOT / "scripts"


def hook(name: str, project: Path, event: dict[str, Any], **env: str) -> str:
    """The hook's stdout for one event, with CLAUDE_PROJECT_DIR set as Claude Code sets it."""
    full_env = {**os.environ, "CLAUDE_PROJECT_DIR": str(project), **env}
    full_env.pop("AUTORESEARCH_STATE_DIR", None)
    out = subprocess.run([sys.executable, str(SCRIPTS / name)], input=json.dumps(event), env=full_env,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return out.stdout


def night(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / "night.py"), *args, "--root", str(project)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An autoresearch project: its configuration and the default layout (no git needed by the hooks)."""
    root = tmp_path / "project"
    (root / "experiment").mkdir(parents=True)
    (root / "autoresearch.toml").write_text('[autoresearch]\ntag = "night"\nlocked = ["experiment/prepare.py"]\n')
    (root / "experiment" / "prepare.py").write_text("# evaluator\n")
    (root / "experiment" / "train.py").write_text("# model\n")
    return root


def add_run(project: Path, run_id: int, metric: float | None, decision: str | None, desc: str = "idea") -> None:
    history = History(project / ".autoresearch" / "night")
    status: Status = "ok" if metric is not None else "crash"
    record = RunRecord(id=run_id, commit=f"{run_id:07d}abc", parent="p", description=desc, status=status,
                       metric=metric)  # fmt: skip
    history.record(record, "end")
    if decision:
        history.decide(run_id, decision)  # type: ignore[arg-type]


# --- Stop -------------------------------------------------------------------------------------------------


def stop(project: Path, active: bool = False) -> dict[str, Any] | None:
    out = hook("stop_hook.py", project, {"hook_event_name": "Stop", "stop_hook_active": active})
    return json.loads(out) if out.strip() else None


def lets_stop(decision: dict[str, Any] | None) -> bool:
    """The hook lets the agent stop: no output, or a message for the human without a block."""
    return decision is None or "decision" not in decision


def test_stop_hook_is_silent_when_no_night_is_on(project: Path) -> None:
    assert stop(project) is None


def test_stop_hook_sends_the_agent_back_while_the_night_is_on(project: Path) -> None:
    assert night(project, "start", "8h").returncode == 0
    decision = stop(project)
    assert decision is not None and decision["decision"] == "block"
    assert "get_history" in decision["reason"] and "night" in decision["reason"]


def test_stop_hook_lets_the_agent_stop_when_the_human_asks(project: Path) -> None:
    night(project, "start")
    assert night(project, "stop").returncode == 0
    assert (project / ".autoresearch" / "STOP").exists()
    assert lets_stop(stop(project))


def test_stop_hook_lets_the_agent_stop_after_the_deadline(project: Path) -> None:
    night(project, "start", str(time.time() - 1))
    assert lets_stop(stop(project))


def test_stop_hook_lets_the_agent_stop_when_the_night_file_says_a_cap_was_reached(project: Path) -> None:
    night(project, "start", "8h")
    path = project / ".autoresearch" / "night.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "stop": "max_runs 100 reached"}))
    assert lets_stop(stop(project))
    assert night(project, "check").stdout.strip() == "the night is over: max_runs 100 reached."


def test_stop_hook_names_the_report_command_when_the_night_ends(project: Path) -> None:
    night(project, "start", "--tag", "nov25")
    assert stop(project) is not None and "systemMessage" not in (stop(project) or {})  # on: no report yet
    night(project, "stop")
    message = (stop(project) or {}).get("systemMessage", "")
    assert "the human asked to stop" in message and "autoresearch report --tag nov25 --html" in message


def test_stop_hook_lets_a_stuck_agent_stop_but_not_a_working_one(project: Path) -> None:
    night(project, "start", "8h")
    assert stop(project) is not None  # sent back once
    assert stop(project, active=True) is None  # nothing ran since: let it stop
    add_run(project, 1, 1.0, None)
    assert stop(project, active=True) is not None  # it ran something since: back to work


def test_stop_hook_names_the_runs_in_flight_to_collect(project: Path) -> None:
    night(project, "start", "8h")
    state, log = project / ".autoresearch", project / "log.txt"
    write_slot(state, 0, 7, log, os.getpid())
    write_slot(state, 1, 8, log, os.getpid())
    write_slot(state, 2, 9, log, dead_pid())  # its owner died: recovery's business, not in flight
    write_slot(state, 3, 10, log, os.getpid(), tag="other")
    decision = stop(project)
    assert decision is not None and "Runs 7, 8 are still in flight" in decision["reason"]  # not 9, nor 10
    assert "get_history(wait_for=[7, 8])" in decision["reason"]


def test_night_check_exits_one_with_the_reason_once_over(project: Path) -> None:
    assert night(project, "check").returncode == 1
    night(project, "start", "07:00")
    checked = night(project, "check")
    assert checked.returncode == 0 and "tag night" in checked.stdout
    bad = night(project, "start", "tomorrow-ish")
    assert bad.returncode == 2 and "8h, 90m, 07:00" in bad.stderr


# --- SessionStart -----------------------------------------------------------------------------------------


@pytest.fixture
def with_venv(project: Path) -> Path:
    """The project's .venv, as the SessionStart hook finds it (its editable install imports this checkout)."""
    (project / ".venv").symlink_to(REPO_ROOT / ".venv")
    if not (REPO_ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip(".venv is missing (bash scripts/setup.sh creates it)")
    return project


def session_context(project: Path, source: str = "compact") -> str:
    out = hook("session_hook.py", project, {"hook_event_name": "SessionStart", "source": source})
    answer = json.loads(out)["hookSpecificOutput"]
    assert answer["hookEventName"] == "SessionStart"
    return str(answer["additionalContext"])


def test_session_start_gives_the_best_run_and_the_latest_runs(with_venv: Path) -> None:
    add_run(with_venv, 1, 2.0, "keep", "baseline")
    add_run(with_venv, 2, 1.5, "keep", "wider model")
    add_run(with_venv, 3, 1.7, "discard", "lower lr")
    add_run(with_venv, 4, None, None, "deeper, crashed")
    context = session_context(with_venv)
    assert "3 runs" not in context and "4 runs, 2 kept, 1 discarded, 1 crashed" in context
    assert "best val_bpb: 1.500000 by #2" in context and "wider model" in context
    assert "#4 crash" in context and "nothing is running now" in context


def test_session_start_stays_short_with_a_long_history(with_venv: Path) -> None:
    for run_id in range(1, 61):
        add_run(with_venv, run_id, 2.0 - run_id / 100, "keep", f"idea number {run_id} " + "x" * 200)
    context = session_context(with_venv, "resume")
    assert "#60 keep" in context and "#55 " not in context
    assert len(context.splitlines()) <= 12 and len(context) < 2000


def test_session_start_names_the_run_in_flight_and_its_progress(with_venv: Path) -> None:
    log = with_venv / ".autoresearch" / "night" / "runs" / "7" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text("compiling\nstep 00012 (4.0%) | loss 3.250000 | elapsed 2.0s | remaining 48.0s\n")
    write_slot(with_venv / ".autoresearch", 0, 7, log, os.getpid(), description="try rmsnorm")
    context = session_context(with_venv)
    assert "in flight on tag night: #7 'try rmsnorm' (slot 0)" in context
    assert "step 12, loss 3.2500" in context and "48s of training left" in context
    assert "get_history(wait_for=[7])" in context and "nothing is running" not in context


def test_session_start_names_every_run_in_flight_in_the_pool(with_venv: Path) -> None:
    state = with_venv / ".autoresearch"
    write_slot(state, 0, 7, state / "absent.txt", os.getpid(), description="wider", device="0")
    write_slot(state, 1, 8, state / "absent.txt", os.getpid(), description="deeper", device="1")
    write_slot(state, 2, 9, state / "absent.txt", dead_pid(), description="left by a dead owner")
    context = session_context(with_venv)
    assert "#7 'wider' (slot 0, GPU 0)" in context and "#8 'deeper' (slot 1, GPU 1)" in context
    assert "dead owner" not in context and "get_history(wait_for=[7, 8])" in context


def test_session_start_says_what_to_do_when_the_venv_is_missing(project: Path) -> None:
    context = session_context(project, "startup")
    assert "setup.sh" in context and context.count(".") <= 3


def test_hooks_are_silent_outside_an_autoresearch_project(tmp_path: Path) -> None:
    edit = {"tool_name": "Write", "tool_input": {"file_path": str(tmp_path / "CLAUDE.md")}}
    assert hook("session_hook.py", tmp_path, {"source": "startup"}) == ""
    assert hook("guard_hook.py", tmp_path, edit) == ""


# --- PreToolUse guard -------------------------------------------------------------------------------------


def guard(project: Path, tool: str, **tool_input: str) -> str | None:
    """The deny reason, or None when the call may go ahead."""
    event = {"hook_event_name": "PreToolUse", "tool_name": tool, "tool_input": tool_input, "cwd": str(project)}
    out = hook("guard_hook.py", project, event)
    if not out.strip():
        return None
    answer = json.loads(out)["hookSpecificOutput"]
    assert answer["permissionDecision"] == "deny"
    return str(answer["permissionDecisionReason"])


@pytest.mark.parametrize(
    ("tool", "path"),
    [
        ("Edit", "experiment/prepare.py"),
        ("Write", "autoresearch.toml"),
        ("MultiEdit", "program.md"),
        ("Write", "CLAUDE.md"),
        ("Edit", ".mcp.json"),
        ("Write", ".claude/settings.json"),
        ("Write", ".autoresearch/night/runs.jsonl"),
        ("Edit", "experiment/../experiment/prepare.py"),
    ],
)
def test_guard_refuses_edits_to_locked_and_steering_files(project: Path, tool: str, path: str) -> None:
    reason = guard(project, tool, file_path=str(project / path))
    assert reason is not None and os.path.normpath(path) in reason


def test_guard_reason_tells_the_agent_what_to_do_instead(project: Path) -> None:
    reason = guard(project, "Edit", file_path="experiment/prepare.py")
    assert reason is not None and "write_train" in reason and reason.endswith(".")


def test_guard_allows_the_training_script_and_files_outside_the_project(project: Path, tmp_path: Path) -> None:
    assert guard(project, "Edit", file_path=str(project / "experiment" / "train.py")) is None
    assert guard(project, "Write", file_path=str(tmp_path / "elsewhere" / "program.md")) is None


def test_guard_reads_the_locked_list_from_the_configuration(project: Path) -> None:
    (project / "autoresearch.toml").write_text('[autoresearch]\nlocked = ["data/*.py"]\n')
    assert guard(project, "Write", file_path="data/eval.py") is not None
    assert guard(project, "Write", file_path="experiment/prepare.py") is None


def test_without_a_locked_list_the_guard_and_the_settings_protect_the_servers_default(project: Path) -> None:
    """The guard's fallback, the shipped deny rules and the server's default name the same locked files (the
    evaluator among them)."""
    (project / "autoresearch.toml").write_text('[autoresearch]\ntag = "night"\n')
    deny = json.loads((REPO_ROOT / ".claude" / "settings.json").read_text())["permissions"]["deny"]
    assert {"experiment/evaluate.py", "experiment/causal.py"} <= set(Config.model_validate({}).locked)
    for path in Config.model_validate({}).locked:
        assert guard(project, "Write", file_path=str(project / path)) is not None, path
        assert {f"Edit({path})", f"Write({path})"} <= set(deny), path


def test_guard_refuses_a_symlink_onto_a_locked_file(project: Path) -> None:
    (project / "innocent.py").symlink_to(project / "experiment" / "prepare.py")
    assert guard(project, "Write", file_path="innocent.py") is not None


@pytest.mark.parametrize(
    "command",
    [
        "echo 'x = 1' >> experiment/prepare.py",
        "sed -i 's/a/b/' experiment/prepare.py",
        "rm -rf .autoresearch",
        "cp /tmp/mine.toml autoresearch.toml",
        "python3 -c \"open('program.md', 'w').write('')\"",
        "cd experiment && cat prepare.py > /dev/null; tee prepare.py < /tmp/x",
        "git checkout -- .claude/settings.json",
    ],
)
def test_guard_refuses_bash_commands_that_change_protected_files(project: Path, command: str) -> None:
    assert guard(project, "Bash", command=command) is not None


@pytest.mark.parametrize(
    "command",
    [
        "cat experiment/prepare.py",
        "grep -n evaluate_bpb experiment/prepare.py | head -5",
        "sed -n 1,20p program.md 2>&1",
        "git diff -- autoresearch.toml",
        "python3 experiment/train.py",
        "ls -la",
    ],
)
def test_guard_allows_bash_commands_that_only_read_protected_files(project: Path, command: str) -> None:
    assert guard(project, "Bash", command=command) is None


def test_guard_steps_aside_when_the_human_turns_it_off(project: Path) -> None:
    event = {"tool_name": "Write", "tool_input": {"file_path": str(project / "program.md")}}
    assert hook("guard_hook.py", project, event, AUTORESEARCH_GUARD="off") == ""
