"""The night's caps, enforced by the server with fake experiments: each refuses the next run before anything
changes, with a sentence naming the cap, and leaves decisions on finished runs possible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import disk_state, set_mode

from server.config import load_config
from server.errors import ConfigError, NightOverError, StateError
from server.lab.loop import Lab


def lab_with(repo: Path, **caps: object) -> Lab:
    return Lab(repo, load_config(repo).model_copy(update=caps))


def test_experiment_cap_refuses_the_next_run_and_allows_the_decision(repo: Path) -> None:
    lab = lab_with(repo, max_experiments=2)
    lab.run("baseline")
    lab.keep()
    lab.write(set_mode("ok", 0.5))
    lab.run("second")
    assert lab.keep().decision == "keep"  # the night ends at a decision point: the last run is decided
    before = disk_state(repo)
    with pytest.raises(NightOverError, match="cap of 2 experiments is reached"):
        lab.run("third")
    assert disk_state(repo) == before  # refused before anything changed


def test_consecutive_crashes_end_the_night(repo: Path) -> None:
    lab = lab_with(repo, max_consecutive_crashes=2)
    lab.write(set_mode("crash"))
    lab.run("one")
    lab.discard()
    lab.write(set_mode("crash"))
    lab.run("two")
    lab.discard()
    with pytest.raises(NightOverError, match="last 2 runs all failed"):
        lab.run("three")


def test_plateau_ends_the_night(repo: Path) -> None:
    lab = lab_with(repo, plateau_runs=2)
    lab.run("baseline")
    lab.keep()
    for i in range(2):
        lab.write(set_mode("ok", 2.0 + i))
        lab.run(f"worse {i}")
        lab.discard()
    with pytest.raises(NightOverError, match="2 runs in a row without a kept improvement"):
        lab.run("again")


def test_deadline_and_hours_caps(repo: Path) -> None:
    with pytest.raises(NightOverError, match="deadline 2020-01-01T00:00 has passed"):
        lab_with(repo, deadline="2020-01-01T00:00").run("late")
    lab = lab_with(repo, max_gpu_hours=1e-5)
    lab.run("first")
    lab.discard()
    with pytest.raises(NightOverError, match="GPU hours is reached"):
        lab.run("second")


def test_autoresearch_stop_ends_the_night_and_tells_the_hooks(repo: Path) -> None:
    """`autoresearch stop` (the human's switch) refuses the next run; a night file learns why, so the Stop
    hook and the launcher let the agent stop."""
    lab = Lab(repo, load_config(repo))
    state = repo / ".autoresearch"
    state.mkdir(exist_ok=True)
    (state / "night.json").write_text(json.dumps({"version": 1, "tag": "test", "deadline": None, "stop": None}))
    done = subprocess.run([sys.executable, "-m", "server", "stop"], cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0 and "no further experiment will start" in done.stdout
    with pytest.raises(NightOverError, match="the human asked to stop"):
        lab.run("after stop")
    assert "the human asked to stop" in json.loads((state / "night.json").read_text())["stop"]


def test_a_bad_deadline_is_a_configuration_error(repo: Path) -> None:
    (repo / "autoresearch.toml").write_text((repo / "autoresearch.toml").read_text() + 'deadline = "tomorrow"\n')
    with pytest.raises(ConfigError, match="deadline must be a local time like"):
        load_config(repo)


def test_a_run_before_the_data_is_prepared_is_refused_before_anything_changes(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluated contract needs the prepared dataset: without it the run is refused with the command that
    prepares it, and the tag does not start (no branch, no pins, no history)."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "empty-cache"))
    lab = Lab(repo, load_config(repo).model_copy(update={"contract": "evaluated"}))
    before = disk_state(repo)
    with pytest.raises(StateError, match="autoresearch prepare"):
        lab.run("baseline")
    assert disk_state(repo) == before
