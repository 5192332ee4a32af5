"""The benchmark suite runs end to end on its tiny setting and writes every figure (not a benchmark itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

QUICK_LIMIT_S = 240  # the tiny setting takes about a minute on 2 shared cores


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
    assert results["context"]["scripted"]["crashed"]["ours"]["bytes"] > 0
    assert results["context"]["hundred"]["history_100_bytes"] > 0
    for part, script in (("quality", "bench_quality.py"), ("data", "bench_data.py")):
        if (REPO_ROOT / "bench" / script).exists():
            assert "skipped" not in results[part], results[part]
    for heading in ("## 1. Loop overhead", "## 2. Loop throughput", "## 3. Context economy"):
        assert heading in markdown
