"""A starved run is not evidence: the server measures, from the kernel, how long a run's threads waited for
a CPU that other processes held; past `starved_share` the run is flagged, cannot be kept, does not count as
its idea's result (a re-run is no duplicate, the gate does not pool it) and the agent is told to re-run it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import FAKE_CONFIG, make_fake_repo, set_mode

from server.config import load_config
from server.errors import StateError
from server.lab.loop import Lab
from server.run.outcome import wait_share
from server.show.views import run_result

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux's /proc schedstat")
CONFIG = FAKE_CONFIG.replace("refuse_duplicates = false", "refuse_duplicates = true").replace(
    "time_budget = 1", "time_budget = 2"
)


@contextmanager
def hog(per_core: int = 3) -> Iterator[None]:
    """Other processes holding every core: `per_core` busy loops per CPU."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(per_core * (os.cpu_count() or 1))]  # fmt: skip
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


@pytest.fixture
def lab(tmp_path: Path) -> Lab:
    repo = make_fake_repo(tmp_path / "repo", CONFIG)
    (repo / "train.py").write_text(set_mode("spin", 1.0))
    lab = Lab(repo, load_config(repo))
    lab.run("baseline")
    lab.keep()
    return lab


def test_a_run_on_a_quiet_machine_is_measured_and_not_starved(lab: Lab) -> None:
    lab.write(set_mode("spin", 0.9))
    run = lab.run("quiet")
    share = wait_share(run.timing)
    assert run.timing["cpu"] > 1.0 and share is not None and share < lab.config.starved_share
    assert "starved" not in run.flags


def test_a_run_beside_a_cpu_hog_is_flagged_starved_and_is_not_evidence(lab: Lab) -> None:
    """Scenario: Noise / a run that got a fraction of the CPU (other processes held the cores) is flagged
    starved with the figure; keep refuses it, the same code may run again without a duplicate reason, and the
    agent reads that it must re-run it"""
    lab.write(set_mode("spin", 0.5))  # far better than the best: the score must not decide
    with hog():
        run = lab.run("beside a hog")
    share = wait_share(run.timing)
    assert "starved" in run.flags and share is not None and share >= lab.config.starved_share
    result = run_result(lab, run)
    assert result.verdict == "starved: not evidence" and "run the same code again" in result.next
    with pytest.raises(StateError, match=r"starved \(its threads waited \d+% of their runnable time"):
        lab.keep(run.id)
    lab.discard(run.id)  # the file goes back to the best's code: write the idea again
    lab.write(set_mode("spin", 0.5))
    again = lab.run("the same code, quiet")  # not refused as a duplicate of the starved run
    assert again.status == "ok" and "starved" not in again.flags
    assert lab.judge(again).n_candidate == 1  # the starved seed is not pooled with it
