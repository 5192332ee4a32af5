"""Epochs: how many times a run went through its training data, from its summary and the dataset's meta.json,
recorded in the history, returned with the run and shown in the history table; over one, a repeated_data flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAKE_CONFIG, make_fake_repo

from server.config import load_config
from server.lab.loop import Lab
from server.run.outcome import passes, repeated_data
from server.show import table
from server.show.views import run_result


def dataset(folder: Path, train_tokens: int) -> Path:
    """A prepared dataset as far as the server reads it: meta.json with the train split's token count."""
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"outputs": {"train.bin": {"tokens": train_tokens}}}))
    return folder


def lab_with_data(tmp_path: Path, train_tokens: int) -> Lab:
    """The fake experiment (it trains 3000 tokens, total_tokens_M 0.003) on a dataset of train_tokens."""
    data = dataset(tmp_path / "data", train_tokens)
    repo = make_fake_repo(tmp_path / "repo", FAKE_CONFIG + f'data_dir = "{data}"\n')
    return Lab(repo, load_config(repo))


def test_epochs_are_tokens_trained_over_train_tokens() -> None:
    assert passes({"total_tokens_M": "24.0"}, 1_500_000) == 16.0
    assert passes({"total_tokens_M": "240.0"}, 700_000_000) == pytest.approx(0.343)
    assert passes({}, 1000) is None and passes({"total_tokens_M": "1"}, None) is None


def test_a_second_pass_or_more_than_one_epoch_is_repeated_data() -> None:
    assert repeated_data({}, 1.5) and repeated_data({"epoch": "2"}, None)
    assert not repeated_data({"epoch": "1"}, 0.9) and not repeated_data({}, None)


def test_a_run_over_a_small_dataset_is_flagged_in_record_result_and_table(tmp_path: Path) -> None:
    lab = lab_with_data(tmp_path, train_tokens=1000)
    run = lab.run("baseline")
    assert run.status == "ok" and run.epochs == 3.0 and "repeated_data" in run.flags
    assert lab.history.runs()[-1].epochs == 3.0  # recorded in runs.jsonl, not only returned
    result = run_result(lab, run)
    assert result.epochs == 3.0 and "repeated_data" in (result.flags or [])
    header, row = table.format_rows(lab.history.runs())
    assert header.split()[:6] == ["id", "val_bpb", "delta", "GB", "outcome", "epochs"]
    assert row.split()[5] == "3.00"


def test_a_run_within_one_pass_is_not_flagged(tmp_path: Path) -> None:
    lab = lab_with_data(tmp_path, train_tokens=1_000_000)
    run = lab.run("baseline")
    assert run.epochs == 0.003 and "repeated_data" not in run.flags
    assert "repeated_data" not in (run_result(lab, run).flags or [])
