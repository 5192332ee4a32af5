"""The GPU check (scripts/gpu_check.sh, bench/gpu.py) on its CPU path: no GPU here, so these tests prove the
path and the JSON it writes, never a GPU figure."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import REPO_ROOT


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))  # bench/ is a folder of scripts that import each other
    return importlib.import_module("gpu")


def record(run_id: int, startup: float, mfu: str | None, tokens_m: str = "24.0") -> dict[str, Any]:
    summary = {"training_seconds": "30.0", "total_tokens_M": tokens_m, "peak_memory_mb": "6400.0"}
    summary.update({"mfu_percent": mfu} if mfu else {})
    return {"id": run_id, "status": "ok", "metric": 2.4, "summary": summary, "timing": {"startup": startup},
            "training_seconds": 30.0, "wall_seconds": 40.0, "gpu_memory_gb": 6.5, "epochs": 17.6,
            "flags": ["repeated_data"]}  # fmt: skip


def test_figures_take_each_run_from_its_record(gpu: ModuleType) -> None:
    result = gpu.figures([record(1, 52.0, "15.0"), record(2, 9.5, "17.0", "27.0")], loop_wall_s=120.0)
    assert result["startup_first_s"] == 52.0 and result["startup_second_s"] == 9.5  # cold, then the cache
    assert result["mfu_percent"] == 16.0 and result["tokens_per_s"] == 850_000
    assert result["loop_efficiency_percent"] == 50.0  # 60 s of training in 120 s of tool calls
    assert result["peak_memory_mb"] == 6400.0 and result["runs"][0]["flags"] == ["repeated_data"]


def test_figures_without_mfu_say_none(gpu: ModuleType) -> None:
    result = gpu.figures([record(1, 2.0, None)], loop_wall_s=10.0)
    assert result["mfu_percent"] is None and result["startup_second_s"] is None


def test_candidate_settings_change_one_constant_of_a_copy(gpu: ModuleType) -> None:
    source = (REPO_ROOT / "experiment" / "train.py").read_text()
    changed = gpu.set_constants(source, ["BATCH_SIZE=128", "COMPILE=True"])
    assert "\nBATCH_SIZE = 128  # set by the GPU check\n" in changed and "\nCOMPILE = True  #" in changed
    assert len(changed.splitlines()) == len(source.splitlines())
    with pytest.raises(SystemExit, match="no single top-level constant 'NOPE'"):
        gpu.set_constants(source, ["NOPE=1"])


@pytest.mark.slow
def test_the_cpu_path_runs_the_server_and_the_demo_and_says_it_is_not_gpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu.py"), "--cpu", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=400,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["gpu_figures"] is False and "NOT GPU figures" in result["note"] and result["device"] == "cpu"
    assert [r["status"] for r in result["runs"]] == ["ok", "ok"]
    assert result["startup_first_s"] > 0 and result["startup_second_s"] > 0 and result["tokens_per_s"] > 0
    assert 0 < result["loop_efficiency_percent"] < 100 and result["runs"][0]["epochs"] is not None
    assert result["demo"]["exit_code"] == 0 and result["within_limit"]
    assert "not GPU figures" in done.stderr


def test_the_script_says_how_to_use_it() -> None:
    done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2 and "pack | run" in done.stderr
