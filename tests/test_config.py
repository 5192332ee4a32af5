"""Configuration mistakes are told in plain words: the key, what it must be, the value given, the nearest key."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_config
from server.errors import ConfigError


def refusal(tmp_path: Path, line: str) -> str:
    (tmp_path / "autoresearch.toml").write_text(f"[autoresearch]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    message = str(caught.value)
    assert "Input should" not in message and "Extra inputs" not in message  # pydantic's wording
    assert message.endswith("; fix it and restart."), message
    return message


def test_an_unknown_key_suggests_the_nearest_and_lists_the_keys(tmp_path: Path) -> None:
    message = refusal(tmp_path, "time_budge = 60")
    assert "unknown key 'time_budge' (did you mean 'time_budget'?)" in message
    assert "min_improvement" in message and "state_dir" in message


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("time_budget = -1", "time_budget must be a number above 0 (seconds of training per experiment), not -1"),
        ('time_budget = "soon"', "time_budget must be a number above 0"),
        ('direction = "down"', "direction must be one of 'minimize' or 'maximize', not 'down'"),
        ("max_log_bytes = 5", "max_log_bytes must be a whole number of at least 10000, not 5"),
        ('locked = "prepare.py"', "locked must be a list of strings"),
        ("env = { SEED = 1 }", "env.SEED must be text, in quotes, not 1"),
        ('tag = "my tag"', "tag must be letters, digits"),
    ],
)
def test_a_bad_value_says_what_it_must_be(tmp_path: Path, line: str, words: str) -> None:
    assert words in refusal(tmp_path, line)


def test_a_bad_override_names_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTORESEARCH_TIME_BUDGET", "soon")
    with pytest.raises(ConfigError, match="AUTORESEARCH_TIME_BUDGET: time_budget must be a number above 0"):
        load_config(tmp_path)


def test_the_launcher_can_set_the_pool_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "autoresearch.toml").write_text("[autoresearch]\nslots = 1\n")
    monkeypatch.setenv("AUTORESEARCH_SLOTS", "2")
    config = load_config(tmp_path)
    assert config.slot_count == 2 and config.overrides == {"slots": "2"}
