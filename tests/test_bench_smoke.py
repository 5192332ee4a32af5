"""The benchmark suite runs end to end on its tiny setting and writes every figure (not a benchmark itself)."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO_ROOT

from server.run import summary

QUICK_LIMIT_S = 300  # the tiny setting takes about a minute on 2 idle cores (the pool part about 30 s), 3+ under load


def test_quick_suite_writes_every_figure(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "run.py"), "--quick", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=QUICK_LIMIT_S,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "RESULTS.md").read_text()
    for case in ("sleep", "train"):
        assert results["overhead"][case]["added"]["n"] >= 1
        assert results["overhead"][case]["status_ok"]["median"] == 1.0
    assert results["throughput"]["percent_of_limit"]["n"] >= 1
    floor, scored = results["throughput"]["scoring_floor"], results["throughput"]["eval_stages"]["val_score"]
    assert floor["gflop"] > 0 and 0 < floor["floor_s"] <= scored["min"], floor  # a floor is below what was measured
    assert "The scoring's floor on this machine" in markdown
    assert results["context"]["scripted"]["crashed"]["ours"]["bytes"] > 0
    assert results["context"]["hundred"]["history_100_bytes"] > 0
    for part, script in (("quality", "bench_quality.py"), ("data", "bench_data.py")):
        if (REPO_ROOT / "bench" / script).exists():
            assert "skipped" not in results[part], results[part]
    assert results["sandbox"]["sandbox"]["added"]["n"] >= 1 and results["sandbox"]["verification"]["ok"]["median"] == 1
    pool = results["pool"]["pool"]["local"]  # Ray's side only where Ray is installed
    assert all(pool[n]["ratio"]["n"] >= 1 and pool[n]["ok"]["median"] == 1 for n in ("1", "2"))
    for heading in ("## 1. Loop overhead", "## 2. Loop throughput", "## 3. Context economy", "## 6. The sandbox",
                    "## 7. Parallel slots"):  # fmt: skip
        assert heading in markdown
    for kind in ("latest", "all"):  # recovery compared like with like, both ways
        assert results["context"]["scripted"]["recovery"][kind]["shell"]["bytes"] > 0
    for part in ("overhead", "throughput", "context", "quality", "data", "pool"):
        origin = results["provenance"][part]
        assert set(origin) >= {"commit", "dirty", "settings", "machine", "load"} and origin["settings"]["quick"]
    assert markdown.count("*Measured at commit `") == 7  # under every section


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Import a module of bench/ (a folder of scripts, not a package) as its scripts import each other."""
    monkeypatch.syspath_prepend(str(REPO_ROOT / "bench"))
    return importlib.import_module


def test_a_quick_run_does_not_write_over_the_committed_figures(bench: Callable[[str], ModuleType]) -> None:
    run = bench("run")
    assert run.parse(["--quick"]).out == REPO_ROOT / "bench" / "out" / "quick"
    assert run.parse([]).out == REPO_ROOT / "bench"
    assert run.parse(["--quick", "--out", "bench"]).out == Path("bench")  # asked for: allowed


def test_a_merge_keeps_each_parts_own_provenance_and_drops_parts_without(bench: Callable[[str], ModuleType]) -> None:
    earlier = {"commit": "abc1234", "dirty": True, "settings": {"quick": False}, "machine": {}, "load": [1.0, 2.0]}
    previous = {"overhead": {"sleep": {}}, "context": {"scripted": {}}, "provenance": {"overhead": earlier}}
    res = bench("run").merged(previous, {"command": "python bench/run.py --only data --merge"})
    assert res["overhead"] == {"sleep": {}} and res["provenance"] == {"overhead": earlier}
    assert "context" not in res and res["dropped"] == ["context"]


def test_benchmarks_read_summaries_with_the_servers_parser(bench: Callable[[str], ModuleType]) -> None:
    assert bench("_common").parse_summary is summary.parse_summary


def test_the_extra_training_benchmark_holds_its_gain_to_the_servers_gate(bench: Callable[[str], ModuleType]) -> None:
    """bench/extra_training.py: the extra it trains is the server's own allowance past the budget plus the
    outside work, and the gate it compares with is the server's noise band for a one-seed run against a baseline
    of the default seeds (with exactly that many seeds, the same number)."""
    from server.config import Config
    from server.lab import noise
    from server.run.outcome import allowed_training

    extra = bench("extra_training")
    default = Config.model_validate({})
    at_60 = Config.model_validate({"time_budget": 60.0})
    assert extra.inside_extra(60.0) == pytest.approx(allowed_training(at_60, 99.0) - 60.0)
    seeds = default.noise_seeds
    at_budget = [1.99 + 0.01 * i for i in range(seeds)]
    pairs = [{"gain": 0.004 * (i + 1), "at_budget": v} for i, v in enumerate(at_budget)]
    res = extra.report(pairs, 60.0, 4.8, 1.6)
    assert res["gate_one_seed_vs_baseline"] == pytest.approx(
        noise.noise_band([noise.Group.of(at_budget)], seeds, 1, default.confidence)
    )
    mean = sum(p["gain"] for p in pairs) / seeds
    assert res["gain_mean"] == pytest.approx(mean) and res["gain_upper_95"] > mean
    assert res["below_gate"] is (res["gain_upper_95"] < res["gate_one_seed_vs_baseline"])
