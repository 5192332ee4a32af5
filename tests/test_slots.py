"""Runs in parallel: a pool of slots, candidates as edits against the best, runs owned by a supervisor that
outlives its server, decisions in any order, keep only against the best a run started from, rebase.

The fake experiment in "sleep" mode sleeps through its budget, so a run's length is known."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from conftest import FAKE_CONFIG, git, make_fake_repo, set_mode

from server.config import load_config
from server.errors import BusyError, StateError
from server.lab import supervise
from server.lab.edits import Edit
from server.lab.loop import ActiveRun, Lab
from server.store.history import RunRecord

BUDGET = 2.0
SUPERVISOR_EXIT_S = 15.0  # a bound on the exit after the record: the interpreter ends, the slot is freed


def pool_config(slots: int) -> str:
    return FAKE_CONFIG.replace("time_budget = 1", f"time_budget = {BUDGET:g}").replace(
        "timeout = 10", f"timeout = 30\nslots = {slots}"
    )


def pool(tmp_path: Path, slots: int) -> Lab:
    repo = make_fake_repo(tmp_path / "repo", pool_config(slots))
    (repo / "train.py").write_text(set_mode("sleep", 1.0))
    git(repo, "commit", "-qam", "the experiment sleeps through its budget")
    return Lab(repo, load_config(repo))


def candidate(metric: float, mode: str = "sleep") -> list[Edit]:
    """Edits to the best's code (the sleep experiment at metric 1.0)."""
    edits = [Edit("METRIC = 1.0", f"METRIC = {metric}")]
    return edits + ([Edit('MODE = "sleep"', f'MODE = "{mode}"')] if mode != "sleep" else [])


def drive_all(lab: Lab, actives: list[ActiveRun]) -> list[RunRecord]:
    """Each run to its end in a thread of its own, as several tool calls would."""
    done: dict[int, RunRecord] = {}
    threads = [threading.Thread(target=lambda a=a: done.__setitem__(a.record.id, lab.drive(a))) for a in actives]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return [done[a.record.id] for a in actives]


def intervals(runs: list[RunRecord]) -> list[tuple[float, float]]:
    return [(datetime.fromisoformat(r.started_at).timestamp(), datetime.fromisoformat(r.ended_at or "").timestamp())
            for r in runs]  # fmt: skip


def most_at_once(spans: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("slots", [2, 4])
def test_n_parallel_runs_take_about_one_runs_time(tmp_path: Path, slots: int) -> None:
    """Scenario: Pool / N candidates on N slots end in about the time one takes, each scored on its own"""
    lab = pool(tmp_path, slots)
    t0 = time.monotonic()
    baseline = lab.run("baseline", duplicate_reason="the tag's first run")
    one = time.monotonic() - t0
    lab.keep(baseline.id)
    t0 = time.monotonic()
    actives = [lab.start_run(f"candidate {i}", edits=candidate(1.0 - 0.1 * (i + 1))) for i in range(slots)]
    runs = drive_all(lab, actives)
    many = time.monotonic() - t0
    assert [r.status for r in runs] == ["ok"] * slots
    assert [r.metric for r in runs] == pytest.approx([1.0 - 0.1 * (i + 1) for i in range(slots)])
    assert many < 1.6 * one, f"{slots} runs in parallel took {many:.1f}s, one alone {one:.1f}s"
    assert most_at_once(intervals(runs)) == slots
    assert sorted(r.slot or 0 for r in runs) == list(range(slots))


def test_never_more_runs_than_slots_and_a_freed_slot_is_reused(tmp_path: Path) -> None:
    """Scenario: Pool / a third candidate on two busy slots is refused naming the runs in flight; once one
    ends, its slot takes the next"""
    lab = pool(tmp_path, 2)
    lab.keep(lab.run("baseline").id)
    first = [lab.start_run(f"c{i}", edits=candidate(0.9 - 0.1 * i)) for i in range(2)]
    with pytest.raises(BusyError, match=r"all 2 slot\(s\) have a run in flight \(run 2 \('c0'\); run 3 \('c1'\)\)"):
        lab.start_run("c2", edits=candidate(0.5))
    assert len(lab.history.runs()) == 3  # the refused candidate left nothing behind
    lab.drive(first[0])
    third = lab.start_run("c2", edits=candidate(0.5))
    assert third.candidate.slot == first[0].candidate.slot
    drive_all(lab, [first[1], third])
    assert [r.status for r in lab.history.runs()] == ["ok"] * 4


def test_a_crash_in_one_slot_does_not_disturb_the_others(tmp_path: Path) -> None:
    """Scenario: Pool / one candidate crashes while two others run: they end ok with their own metrics"""
    lab = pool(tmp_path, 3)
    lab.keep(lab.run("baseline").id)
    actives = [lab.start_run("a", edits=candidate(0.9)), lab.start_run("crash", edits=candidate(0.8, "crash")),
               lab.start_run("b", edits=candidate(0.7))]  # fmt: skip
    runs = drive_all(lab, actives)
    assert [(r.status, r.metric) for r in runs] == [("ok", 0.9), ("crash", None), ("ok", 0.7)]
    assert "boom" in (lab.history.run_dir(runs[1].id) / "log.txt").read_text()


def test_decisions_in_any_order_and_keep_only_against_the_best_a_run_started_from(tmp_path: Path) -> None:
    """Scenario: Pool / three candidates end against the same best: discard one, keep another; keeping the
    third is refused (the best moved) with the one call that re-runs its edits on the new best"""
    lab = pool(tmp_path, 3)
    lab.keep(lab.run("baseline").id)
    scaled = [Edit("main(MODE, METRIC)", "main(MODE, METRIC * 0.95)")]
    comment = [Edit("from prepare import main", "from prepare import main  # b")]
    a, b, c = drive_all(lab, [lab.start_run("a", edits=scaled), lab.start_run("b", edits=comment),
                              lab.start_run("c", edits=candidate(0.7))])  # fmt: skip
    with pytest.raises(StateError, match=r"runs 2, 3, 4 await a decision; give run_id"):
        lab.keep()
    lab.discard(b.id)
    lab.keep(c.id)
    with pytest.raises(StateError, match=rf"the best moved since run {a.id} started .*rebase={a.id}"):
        lab.keep(a.id)
    assert lab.tip() == c.commit
    rebased = lab.run("a again", rebase=a.id)
    assert rebased.parent == c.commit and rebased.source == "rebase" and rebased.rebased_from == a.id
    assert lab.history.get(a.id).decision == "discard"  # type: ignore[union-attr]
    code = git(lab.root, "show", f"{rebased.commit}:train.py")
    assert "METRIC = 0.7" in code and "METRIC * 0.95" in code  # a's edit merged onto c's code
    assert rebased.metric == pytest.approx(0.665)
    lab.keep(rebased.id)
    assert lab.tip() == rebased.commit


def test_rebase_with_conflicting_edits_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    lab = pool(tmp_path, 2)
    lab.keep(lab.run("baseline").id)
    a, b = drive_all(lab, [lab.start_run("a", edits=[Edit("METRIC = 1.0", "METRIC = 0.9  # a")]),
                           lab.start_run("b", edits=[Edit("METRIC = 1.0", "METRIC = 0.8  # b")])])  # fmt: skip
    lab.keep(b.id)
    runs = len(lab.history.runs())
    with pytest.raises(StateError, match=rf"run {a.id}'s edits conflict with the changes kept since it started"):
        lab.start_run("a again", rebase=a.id)
    assert len(lab.history.runs()) == runs and lab.history.get(a.id).decision is None  # type: ignore[union-attr]


def test_candidates_leave_the_draft_alone(tmp_path: Path) -> None:
    """Scenario: Pool / a candidate from edits never touches train.py; keeping it updates a clean draft to the
    new best, and leaves a draft with the agent's own changes as it is"""
    lab = pool(tmp_path, 2)
    lab.keep(lab.run("baseline").id)
    clean = lab.current_content()
    run = lab.run("edit", edits=candidate(0.9))
    assert lab.current_content() == clean
    lab.keep(run.id)
    assert "METRIC = 0.9" in lab.current_content()  # the draft was the old best: it follows the new one
    draft = lab.current_content().replace("from prepare import main", "from prepare import main  # next idea")
    lab.write(draft)
    run = lab.run("edit 2", edits=[Edit("METRIC = 0.9", "METRIC = 0.8")])
    lab.keep(run.id)
    assert lab.current_content() == draft


def test_each_slot_sees_only_its_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: Pool / one slot per GPU by default; each run's process sees only its slot's GPU"""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    repo = make_fake_repo(tmp_path / "repo", pool_config(0).replace("slots = 0\n", ""))
    shown = "import os\nfrom prepare import main\nprint('sees gpu', os.environ.get('CUDA_VISIBLE_DEVICES'))"
    probe = set_mode("sleep").replace("from prepare import main", shown)
    (repo / "train.py").write_text(probe)
    git(repo, "commit", "-qam", "prints its GPU")
    lab = Lab(repo, load_config(repo))
    assert lab.config.slot_count == 2
    runs = drive_all(lab, [lab.start_run(f"c{i}", edits=candidate(0.9 - 0.1 * i)) for i in range(2)])
    seen = sorted((lab.history.run_dir(r.id) / "log.txt").read_text().split("sees gpu ")[1].split()[0] for r in runs)
    assert seen == ["3", "5"]


def test_a_detached_run_outlives_its_server_and_is_collected(tmp_path: Path) -> None:
    """Scenario: Pool / run_experiment(wait=false): a supervisor owns the run, the server that started it can
    go, and a later server collects the scored result"""
    lab = pool(tmp_path, 1)
    started = supervise.spawn(lab, lab.start_run("detached", launch_now=False))
    assert started.status == "running"
    owner = next(info for info in lab.in_flight() if info.run_id == started.id)
    assert owner.pid != os.getpid()
    supervisor = psutil.Process(int(owner.pid or 0))
    lab.close()  # the server goes; a new one (the Inspector's next call) finds the run still in flight
    later = Lab(tmp_path / "repo", load_config(tmp_path / "repo"))
    assert later.history.get(started.id).status == "running"  # type: ignore[union-attr]
    (run,) = later.wait_for([started.id], 30)
    assert run.status == "ok" and run.metric == 1.0
    # The record is written before the supervisor frees the slot and exits: it ends soon after, not at once.
    _, alive = psutil.wait_procs([supervisor], timeout=SUPERVISOR_EXIT_S)
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive), f"the supervisor outlived its run: {alive}"
    later.keep(run.id)
    later.close()


def test_a_cancelled_supervisor_records_the_run_and_a_killed_one_is_recovered(tmp_path: Path) -> None:
    """Scenario: Pool / SIGTERM to a run's supervisor cancels and records the run; SIGKILL leaves its slot to
    the next run, which kills what is left and records it interrupted"""
    lab = pool(tmp_path, 1)
    (lab.root / "train.py").write_text(set_mode("hang"))
    first = supervise.spawn(lab, lab.start_run("hangs", launch_now=False))
    pid = int(lab.in_flight()[0].pid or 0)
    time.sleep(1.0)
    os.kill(pid, signal.SIGTERM)
    (run,) = lab.wait_for([first.id], 30)
    assert run.status == "cancelled"
    lab.discard(run.id)
    (lab.root / "train.py").write_text(set_mode("hang", 2.0))
    second = supervise.spawn(lab, lab.start_run("hangs too", launch_now=False))
    info = lab.in_flight()[0]
    time.sleep(1.5)
    hung = [p for p in psutil.process_iter(["environ"]) if (p.info["environ"] or {}).get("AUTORESEARCH_RUN_ID")
            == info.token]  # fmt: skip
    owner = psutil.Process(int(info.pid or 0))
    os.kill(owner.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs([owner], timeout=SUPERVISOR_EXIT_S)  # the kill is asynchronous: the slot is
    assert all(p.status() == psutil.STATUS_ZOMBIE for p in alive), alive  # free once the process is gone
    (lab.root / "train.py").write_text(set_mode("ok", 3.0))
    third = lab.run("after the kill")
    assert lab.history.get(second.id).status == "interrupted"  # type: ignore[union-attr]
    assert third.status == "ok" and third.slot == 0
    assert all(not p.is_running() or p.status() == "zombie" for p in hung)
