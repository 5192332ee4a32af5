"""The loop's domain against real git repositories and real fake-experiment subprocesses."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import HAS_BWRAP, git, set_mode

from server.config import load_config
from server.errors import BusyError, InvalidInputError, LockedFileError, RepoError, StateError
from server.lab.edits import Edit
from server.lab.loop import Lab


def run_mode(lab: Lab, mode: str, metric: float = 1.0, description: str | None = None):  # type: ignore[no-untyped-def]
    lab.write(set_mode(mode, metric))
    return lab.run(description or mode)


def test_opening_the_lab_changes_nothing_in_git(lab: Lab, repo: Path) -> None:
    assert git(repo, "branch", "--show-current") == "main"
    assert lab.tip() == git(repo, "rev-parse", "main")


def test_first_change_creates_run_branch_and_checks_it_out(lab: Lab, repo: Path) -> None:
    lab.write(set_mode("ok", 1.0))
    assert git(repo, "branch", "--show-current") == "autoresearch/test"
    assert git(repo, "rev-parse", "autoresearch/test") == git(repo, "rev-parse", "main")
    assert (repo / ".autoresearch" / "test" / "pins.json").exists()
    assert git(repo, "status", "--porcelain") == ""


def test_baseline_run_is_recorded_with_its_metric(lab: Lab) -> None:
    run = lab.run("baseline")
    assert (run.status, run.metric, run.best_before) == ("ok", 1.0, None)
    assert lab.pending() is not None and lab.pending().id == run.id  # type: ignore[union-attr]


def test_every_run_is_a_commit_on_the_best_under_its_own_ref(lab: Lab, repo: Path) -> None:
    first = lab.run("baseline")
    lab.keep()
    second = run_mode(lab, "ok", 2.0)
    assert git(repo, "rev-parse", "refs/autoresearch/test/1") == first.commit
    assert git(repo, "rev-parse", "refs/autoresearch/test/2") == second.commit
    assert git(repo, "rev-parse", f"{second.commit}^") == first.commit
    assert "METRIC = 2.0" in git(repo, "show", f"{second.commit}:train.py")


def test_keep_advances_the_branch_and_leaves_git_status_clean(lab: Lab, repo: Path) -> None:
    lab.run("baseline")
    lab.keep()
    run = run_mode(lab, "ok", 0.5)
    lab.keep()
    assert git(repo, "rev-parse", "autoresearch/test") == run.commit
    assert git(repo, "status", "--porcelain") == ""


def test_keep_refuses_a_run_that_is_not_better(lab: Lab, repo: Path) -> None:
    lab.run("baseline")
    lab.keep()
    tip = git(repo, "rev-parse", "autoresearch/test")
    run_mode(lab, "ok", 1.01)
    with pytest.raises(StateError, match="not better"):
        lab.keep()
    assert git(repo, "rev-parse", "autoresearch/test") == tip


def test_keep_refuses_the_best_program_again_however_it_is_renamed_or_commented(lab: Lab, repo: Path) -> None:
    """Scenario: Noise / a no-op change (a renamed variable, a comment) of the best is the best's program: it
    cannot be kept as an improvement, however its seed fell"""
    lab.run("baseline")
    lab.keep()
    tip = git(repo, "rev-parse", "autoresearch/test")
    renamed = set_mode("ok", 1.0).replace("METRIC", "SCORE") + "# a comment changes nothing\n"
    lab.write(renamed)
    run = lab.run("renamed", duplicate_reason="on purpose")
    assert run.fingerprint == lab.best().fingerprint and run.seed == 43  # type: ignore[union-attr]
    with pytest.raises(StateError, match="same program as the best, run 1"):
        lab.keep()
    assert git(repo, "rev-parse", "autoresearch/test") == tip
    lab.discard()


def test_force_keep_needs_a_reason_and_then_keeps(lab: Lab, repo: Path) -> None:
    lab.run("baseline")
    lab.keep()
    run = run_mode(lab, "ok", 1.0)
    with pytest.raises(InvalidInputError, match="reason"):
        lab.keep(force=True)
    kept = lab.keep(force=True, reason="equal result, simpler code")
    assert kept.forced and kept.force_reason == "equal result, simpler code"
    assert git(repo, "rev-parse", "autoresearch/test") == run.commit


def test_discard_restores_last_kept_version(lab: Lab, repo: Path) -> None:
    lab.run("baseline")
    lab.keep()
    kept_text = (repo / "train.py").read_text()
    run_mode(lab, "ok", 3.0)
    lab.discard()
    assert (repo / "train.py").read_text() == kept_text
    assert git(repo, "status", "--porcelain") == ""


def test_keep_and_discard_never_touch_other_user_changes(lab: Lab, repo: Path) -> None:
    """Scenario: Git edge cases / uncommitted and staged changes to other files: keep and discard leave them exactly
    as they were"""
    (repo / "notes.txt").write_text("unsaved user work\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    lab.run("baseline")
    lab.keep()
    run_mode(lab, "ok", 5.0)
    lab.discard()
    assert (repo / "notes.txt").read_text() == "unsaved user work\n"
    assert sorted(line.strip() for line in git(repo, "status", "--porcelain").splitlines()) == [
        "A  staged.txt",
        "M notes.txt",
    ]


def test_run_executes_the_committed_snapshot_not_later_edits(lab: Lab, repo: Path) -> None:
    lab.write(set_mode("sleep", 0.25))
    active = lab.start_run("snapshot")
    (repo / "train.py").write_text(set_mode("ok", 9.0))  # changed behind the server's back mid-run
    run = lab.finish_run(active)
    assert run.metric == 0.25


@pytest.mark.parametrize(
    ("mode", "status"),
    [("crash", "crash"), ("nan", "crash"), ("no_metric", "no_metric"), ("over_budget", "over_budget"),
     ("metric_nan", "no_metric"), ("oom", "crash"), ("tamper", "crash" if HAS_BWRAP else "tampered")],
)  # fmt: skip
def test_failed_runs_are_recorded_and_can_never_be_kept(lab: Lab, mode: str, status: str) -> None:
    """Scenario: Hostile experiments / exits 0 with no metric, or a NaN metric: recorded as no_metric, never kept
    Scenario: Hostile experiments / trains past the budget: recorded as over_budget, never kept
    Scenario: Hostile experiments / killed by SIGKILL, as the kernel's OOM killer does: recorded as a crash (out of
    memory?), never kept
    Scenario: Locked files / an experiment that modifies a locked file in its snapshot while it runs: recorded as
    tampered, never kept"""
    run = run_mode(lab, mode, 0.1)
    assert run.status == status and run.metric is None and run.reason
    with pytest.raises(StateError, match="can never be kept"):
        lab.keep()
    assert lab.history.runs()[-1].status == status


def test_crash_reason_names_the_last_error_line(lab: Lab) -> None:
    run = run_mode(lab, "crash")
    assert "boom: a deliberate crash" in (run.reason or "")


def test_hanging_run_is_killed_at_the_hard_limit(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: Hostile experiments / hangs: killed at the hard limit, recorded as timeout"""
    monkeypatch.setenv("AUTORESEARCH_TIMEOUT", "2")
    lab = Lab(repo, load_config(repo))
    started = time.monotonic()
    run = run_mode(lab, "hang")
    assert run.status == "timeout"
    assert time.monotonic() - started < 8


def test_run_that_ignores_sigterm_is_killed(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scenario: Hostile experiments / ignores SIGTERM: killed with SIGKILL after the grace period"""
    monkeypatch.setenv("AUTORESEARCH_TIMEOUT", "2")
    lab = Lab(repo, load_config(repo))
    lab.write(set_mode("ignore_term", 1.0))
    active = lab.start_run("stubborn")
    run = lab.finish_run(active)
    assert run.status == "timeout"
    assert not psutil.pid_exists(active.process.pid)


def test_child_that_leaves_the_process_group_is_killed(lab: Lab) -> None:
    """Scenario: Hostile experiments / forks a child that leaves the process group and outlives it: the child is
    found by the run's token and killed"""
    lab.write(set_mode("fork", 1.0))
    active = lab.start_run("fork")
    pid_file = active.candidate.snapshot / "child.pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert escapees(), "the escaped child should be running while the run is"
    run = lab.finish_run(active)
    assert run.status == "ok"
    assert not escapees()


def escapees() -> list[psutil.Process]:
    """Live processes started by the fake's fork mode (found by their argv: pids differ inside a sandbox)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if "autoresearch-test-escapee" in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc)
    return found


def test_flooded_output_is_capped_and_keeps_the_summary(lab: Lab) -> None:
    """Scenario: Hostile experiments / prints 20 MB: the log stays within its cap and the summary is still read"""
    run = run_mode(lab, "flood", 0.7)
    log = lab.history.run_dir(run.id) / "log.txt"
    assert log.stat().st_size <= lab.config.max_log_bytes + 1000
    assert run.status == "ok" and run.metric == 0.7


def test_fake_metric_before_the_real_summary_is_ignored(lab: Lab) -> None:
    """Scenario: Hostile experiments / prints a fake metric block before the real summary: only the last block
    counts"""
    assert run_mode(lab, "fake_then_real", 0.8).metric == 0.8


def test_run_is_refused_while_a_decision_is_pending(lab: Lab) -> None:
    lab.run("baseline")
    with pytest.raises(StateError, match="awaits a decision"):
        lab.run("second")
    with pytest.raises(StateError, match="awaits a decision"):
        lab.write(set_mode("ok", 2.0))


def test_dirty_locked_file_refuses_to_start_a_tag(lab: Lab, repo: Path) -> None:
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text() + "\n# edited\n")
    with pytest.raises(RepoError, match="prepare.py has uncommitted changes"):
        lab.run("baseline")
    assert git(repo, "branch", "--show-current") == "main"


def test_changed_locked_file_refuses_the_run_and_names_it(lab: Lab, repo: Path) -> None:
    """Scenario: Locked files / a locked file edited in the working tree between runs: the run is refused naming the
    file and how to restore it, nothing recorded"""
    lab.pin()
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text() + "\n# edited\n")
    with pytest.raises(LockedFileError, match="prepare.py.*git checkout autoresearch/test -- prepare.py"):
        lab.run("baseline")
    assert lab.history.runs() == []


def test_changed_config_refuses_the_run(lab: Lab, repo: Path) -> None:
    """Scenario: Locked files / the configuration edited between runs: the run is refused"""
    lab.pin()
    (repo / "autoresearch.toml").write_text((repo / "autoresearch.toml").read_text() + "\n")
    with pytest.raises(LockedFileError, match="autoresearch.toml"):
        lab.run("baseline")


def test_second_run_while_one_runs_is_busy_and_names_it(lab: Lab, repo: Path) -> None:
    """Scenario: Concurrency / a second Lab on the same lock file while a run runs: BusyError naming the run"""
    lab.write(set_mode("sleep", 1.0))
    active = lab.start_run("the first")
    other = Lab.__new__(Lab)  # a second server process would see the same lock file
    other.__dict__.update(lab.__dict__)
    with pytest.raises(BusyError, match="run 1 .*'the first'.*running"):
        other.start_run("the second")
    lab.finish_run(active)


def test_two_threads_never_run_two_experiments(lab: Lab) -> None:
    """Scenario: Concurrency / two threads racing to run: exactly one run, one BusyError"""
    lab.write(set_mode("sleep", 1.0))
    errors: list[Exception] = []

    def attempt() -> None:
        try:
            lab.discard() if lab.pending() else None
            lab.run("race")
        except (BusyError, StateError) as exc:
            errors.append(exc)

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(lab.history.runs()) == 1 and len(errors) == 1


def test_write_edits_must_match_exactly_once_and_change_nothing_otherwise(lab: Lab, repo: Path) -> None:
    """Scenario: Bad input / edits that match nothing or more than once (domain level): refused, the file
    unchanged"""
    before = (repo / "train.py").read_bytes()
    with pytest.raises(InvalidInputError, match="matches nothing"):
        lab.write(edits=[Edit("NOT THERE", "x")])
    with pytest.raises(InvalidInputError, match=r"matches \d+ times"):
        lab.write(edits=[Edit("MODE", "X")])
    assert (repo / "train.py").read_bytes() == before


@pytest.mark.parametrize(
    ("content", "match"),
    [("", "empty"), ("x = 1\x00", "NUL"), ("def broken(:\n", "would not compile"), ("x = '\ud800'\n", "UTF-8"),
     ("x = 1\n" * 50_000, "over the cap")],
)  # fmt: skip
def test_bad_content_is_rejected_and_nothing_is_written(lab: Lab, repo: Path, content: str, match: str) -> None:
    """Scenario: Bad input / empty, NUL, non-compiling, non-UTF-8 and oversized content (domain level): refused,
    nothing written"""
    before = (repo / "train.py").read_bytes()
    with pytest.raises(InvalidInputError, match=match):
        lab.write(content)
    assert (repo / "train.py").read_bytes() == before


def test_write_returns_a_diff_against_the_kept_version(lab: Lab) -> None:
    diff = lab.write(edits=[Edit("METRIC = 1.0", "METRIC = 0.5")])
    assert "-METRIC = 1.0" in diff and "+METRIC = 0.5" in diff


def test_decisions_with_nothing_to_decide_are_refused(lab: Lab) -> None:
    """Scenario: Bad input / keep or discard with no runs, keep twice, an unknown run id (domain level):
    StateError"""
    with pytest.raises(StateError, match="no runs yet"):
        lab.keep()
    lab.run("baseline")
    lab.keep()
    with pytest.raises(StateError, match="already kept"):
        lab.keep()
    with pytest.raises(StateError, match="already kept"):
        lab.discard()
    with pytest.raises(StateError, match="not a known run"):
        lab.keep(run_id=42)


def test_results_tsv_has_the_original_five_columns(lab: Lab) -> None:
    lab.run("baseline")
    lab.keep()
    run_mode(lab, "crash")
    lab.discard()
    lines = lab.history.tsv_path.read_text().splitlines()
    assert lines[0] == "commit\tval_bpb\tmemory_gb\tstatus\tdescription"
    memory = f"{lab.history.runs()[0].memory_gb:.1f}"  # measured by the server, not the 100 MB the fake prints
    assert lines[1].split("\t")[1:] == ["1.000000", memory, "keep", "baseline"]
    assert lines[2].split("\t")[1:] == ["0.000000", "0.0", "crash", "crash"]


def test_history_survives_a_restart(lab: Lab, repo: Path) -> None:
    lab.run("baseline")
    lab.keep()
    again = Lab(repo, load_config(repo))
    assert [r.decision for r in again.history.runs()] == ["keep"]
    assert again.best() is not None and again.best().metric == 1.0  # type: ignore[union-attr]


def test_run_env_is_an_allowlist_with_budget_seed_and_output(
    lab: Lab, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scenario: Sandbox / the server's environment (API keys included) is never handed to a run: the run
    gets an explicit environment with its budget, seed and output folder, and not the evaluation size"""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-secret-test-value")
    lab.write("import json, os\nprint(json.dumps(dict(os.environ)))\n")
    run = lab.run("env")
    env = json.loads((lab.history.run_dir(run.id) / "log.txt").read_text().strip().splitlines()[-1])
    assert env["AUTORESEARCH_TIME_BUDGET"] == "1" and env["AUTORESEARCH_SEED"] == "42"
    assert env["AUTORESEARCH_OUTPUT"].endswith("runs/1/out")
    assert "ANTHROPIC_API_KEY" not in env and "sk-secret-test-value" not in json.dumps(env)
    assert "AUTORESEARCH_EVAL_TOKENS" not in env
    assert run.status == "no_metric"


def test_state_dir_is_ignored_by_git(lab: Lab, repo: Path) -> None:
    lab.run("baseline")
    assert ".autoresearch" not in git(repo, "status", "--porcelain", "--untracked-files=all")
    assert os.path.isdir(repo / ".autoresearch")


def test_keep_interrupted_after_moving_the_branch_completes_on_retry(lab: Lab, repo: Path) -> None:
    """Scenario: Crash recovery / a server killed inside keep, between moving the branch and recording
    the decision: keep again finishes the decision instead of refusing."""
    run = lab.run("baseline")
    git(repo, "update-ref", "refs/heads/autoresearch/test", run.commit)  # what the dead keep had done
    assert lab.keep().decision == "keep"
    assert git(repo, "status", "--porcelain") == ""


def test_min_improvement_is_a_noise_floor_for_keep(tmp_path: Path) -> None:
    from conftest import FAKE_CONFIG, make_fake_repo

    repo = make_fake_repo(tmp_path / "noisy", FAKE_CONFIG + "min_improvement = 0.05\n")
    lab = Lab(repo, load_config(repo))
    lab.run("baseline")
    lab.keep()
    run_mode(lab, "ok", 0.97)  # better, but within the noise floor
    with pytest.raises(StateError, match="needs more than 0.050000: min_improvement"):
        lab.keep()
    lab.discard()
    run_mode(lab, "ok", 0.9)
    assert lab.keep().decision == "keep"


def test_results_tsv_names_the_configured_metric(repo: Path) -> None:
    """The original's five columns, with this experiment's metric in the second column's header."""
    lab = Lab(repo, load_config(repo).model_copy(update={"metric": "accuracy", "direction": "maximize"}))
    assert lab.run("baseline").status == "no_metric"  # the fake prints val_bpb only
    assert lab.history.tsv_path.read_text().startswith("commit\taccuracy\tmemory_gb\tstatus\tdescription\n")
