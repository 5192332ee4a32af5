"""Real runs of experiment/train.py as a subprocess, on a tiny byte-level dataset."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXPERIMENT, load_prepare, prepare_dataset

TEXT = "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. " * 60
PROGRESS = re.compile(r"^step (\d+) \| loss ([0-9.]+) \|.* \| elapsed ([0-9.]+)s \| remaining ([0-9.]+)s$", re.M)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for i in range(2):
        (tmp_path / f"play{i}.txt").write_text(f"Act {i}. " + TEXT, encoding="utf-8")
    prepare_dataset(["--source", "files", "--paths", str(tmp_path), "--byte-level", "--name", "tiny"])
    return {
        **os.environ,
        "AUTORESEARCH_DATASET": "tiny",
        "AUTORESEARCH_TIME_BUDGET": "2",
        "AUTORESEARCH_DEVICE": "cpu",
        "AUTORESEARCH_RUN_ID": "test-run",
    }


def run_train(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def summary(stdout: str) -> dict[str, str]:
    block = stdout.rsplit("\n---\n", 1)[1]
    return dict(line.split(":", 1) for line in block.strip().splitlines())


@pytest.mark.parametrize("size", ["tiny", "default"])
def test_short_run_prints_progress_and_summary(env: dict[str, str], tmp_path: Path, size: str) -> None:
    env = {**env, "AUTORESEARCH_MODEL_SIZE": size}
    prepare = load_prepare()
    result = run_train(EXPERIMENT / "train.py", env, cwd=tmp_path)  # cwd is not the repo: must still work
    assert result.returncode == 0, result.stderr[-3000:]
    steps = PROGRESS.findall(result.stdout)
    assert steps and int(steps[-1][0]) >= 1  # a loaded machine may manage one step in the budget
    values = {k.strip(): v.strip() for k, v in summary(result.stdout).items()}
    assert set(values) >= {
        "training_seconds",
        "total_seconds",
        "peak_memory_mb",
        "total_tokens_M",
        "num_steps",
        "num_params_M",
        "depth",
        "device",
    }
    assert "mfu_percent" not in values  # unknown peak on CPU
    assert "val_bpb" not in values  # the run cannot see the validation split: the server's evaluator scores it
    lines = result.stdout.splitlines()
    start, end, saved = (lines.index(m) for m in (prepare.MARK_START, prepare.MARK_END, prepare.MARK_SAVED))
    assert start < end < saved  # the server's clock runs between the first two; the model is handed over
    assert (tmp_path / "output" / prepare.MODEL_FILE).stat().st_size > 0
    # train.py stops after the step that ends nearest the 2 s budget: never short by more than half that step
    # (its length is read from the printed elapsed times, which are rounded to 0.1 s)
    elapsed = [float(e) for _, _, e, _ in steps]
    last_step = elapsed[-1] - (elapsed[-2] if len(elapsed) > 1 else 0.0)
    assert 2.0 - last_step / 2 - 0.1 <= float(values["training_seconds"]) < 2.0 + last_step + 0.1
    assert float(values["total_seconds"]) >= float(values["training_seconds"])
    assert int(values["num_steps"]) == int(steps[-1][0]) and values["device"] == "cpu" and int(values["epoch"]) >= 1
    assert float(values["peak_memory_mb"]) > 10 and float(values["total_tokens_M"]) > 0


def test_exploding_run_fails_fast_without_summary(env: dict[str, str], tmp_path: Path) -> None:
    snapshot = tmp_path / "snapshot" / "experiment"
    shutil.copytree(EXPERIMENT, snapshot, ignore=shutil.ignore_patterns("__pycache__"))
    source = (snapshot / "train.py").read_text()
    # Every learning rate x 1e9, and the logit soft-cap (which bounds the loss below 100) moved out of reach.
    broken, count = re.subn(r"^([A-Z_]*_LR) = [0-9.e+-]+", r"\1 = 1e9", source, flags=re.M)
    broken, capped = re.subn(r"^LOGIT_SOFTCAP = [0-9.e+-]+", "LOGIT_SOFTCAP = 1e30", broken, flags=re.M)
    assert count >= 2 and capped == 1
    (snapshot / "train.py").write_text(broken)
    result = run_train(snapshot / "train.py", {**env, "AUTORESEARCH_MODEL_SIZE": "tiny"}, cwd=snapshot.parent)
    assert result.returncode == 1
    assert re.search(r"^FAIL", result.stdout, re.M)
    assert "\n---\n" not in result.stdout and "val_bpb" not in result.stdout
