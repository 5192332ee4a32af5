"""`autoresearch finalize`: the kept chain of a real night as a reviewable branch, one commit per change."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import git
from nightlab import night, night_lab
from test_cli import cli, one_sentence

from server.lab.loop import Lab
from server.show.finalize import Finalized, finalize
from server.store.gitops import blob, open_repo, resolve


@pytest.fixture
def finalized(repo: Path) -> tuple[Lab, dict[str, int], Finalized]:
    lab = night_lab(repo)
    ids = night(lab)
    return lab, ids, finalize(open_repo(repo), lab.history, "review", "train.py")


def untouched(repo: Path) -> dict[str, object]:
    """What finalize must never change: the run branch, HEAD, the checkout and every byte of the history."""
    state = repo / ".autoresearch" / "test"
    files = {str(p.relative_to(state)): p.read_bytes() for p in sorted(state.rglob("*")) if p.is_file()}
    return {"branch": git(repo, "rev-parse", "autoresearch/test"), "head": git(repo, "symbolic-ref", "HEAD"),
            "status": git(repo, "status", "--porcelain"), "history": files}  # fmt: skip


def test_the_branch_ends_at_the_best_runs_code(finalized: tuple[Lab, dict[str, int], Finalized], repo: Path) -> None:
    lab, ids, _ = finalized
    best = lab.history.get(ids["simpler"])
    assert best is not None and lab.best() == best
    assert blob(open_repo(repo), "review", "train.py") == blob(open_repo(repo), best.commit, "train.py")


def test_one_commit_per_kept_change_with_its_description_gain_and_lesson(
    finalized: tuple[Lab, dict[str, int], Finalized], repo: Path
) -> None:
    lab, ids, done = finalized
    subjects = git(repo, "log", "--reverse", "--format=%s", f"{done.base}..review").splitlines()
    assert subjects == ["raise A", "raise B", "raise A more", "simpler"]  # the baseline changed nothing
    body = git(repo, "log", "-1", "--format=%b", done.steps[0].commit)
    assert "gain +0.100000 val_bpb" in body and "lesson: A helps. Next: try raising B too." in body
    assert git(repo, "rev-parse", f"{done.steps[0].commit}^") == done.base == lab.history.runs()[0].parent


def test_each_commit_reproduces_its_run_and_cherry_picks_cleanly(
    finalized: tuple[Lab, dict[str, int], Finalized], repo: Path, tmp_path: Path
) -> None:
    _, _, done = finalized
    opened = open_repo(repo)
    for step in done.steps:  # each step's file is exactly the kept run's
        assert blob(opened, step.commit, "train.py") == blob(opened, step.run.commit, "train.py")
    tree = tmp_path / "replay"
    git(repo, "worktree", "add", "-q", "--detach", str(tree), done.base)
    for step in done.steps:
        git(tree, "cherry-pick", "--allow-empty-message", step.commit)
    assert git(tree, "rev-parse", "HEAD^{tree}") == git(repo, "rev-parse", "review^{tree}")


def test_the_squashed_branch_is_one_commit_of_the_same_code(
    finalized: tuple[Lab, dict[str, int], Finalized], repo: Path
) -> None:
    _, _, done = finalized
    assert git(repo, "rev-list", "--count", f"{done.base}..review-squashed") == "1"
    assert git(repo, "rev-parse", "review-squashed^{tree}") == git(repo, "rev-parse", "review^{tree}")


def test_changes_on_different_lines_are_independent_and_on_the_same_line_not(
    finalized: tuple[Lab, dict[str, int], Finalized],
) -> None:
    _, ids, done = finalized
    a, b, again, simpler = ids["raise A"], ids["raise B"], ids["raise A more"], ids["simpler"]
    assert set(done.independent) == {(a, b), (a, simpler), (b, simpler)}
    assert (a, again) not in done.independent  # both change the line A = ...


def test_the_run_branch_and_the_history_are_left_byte_identical(repo: Path) -> None:
    lab = night_lab(repo)
    night(lab)
    before = untouched(repo)
    out = cli(repo, "finalize", "--onto", "review")
    assert out.returncode == 0, out.stderr
    assert "independent changes" in out.stdout and "review-squashed" in out.stdout
    assert untouched(repo) == before


def refs(repo: Path) -> str:
    return git(repo, "for-each-ref", "--format=%(refname) %(objectname)")


def test_an_existing_branch_is_refused_in_one_sentence(
    finalized: tuple[Lab, dict[str, int], Finalized], repo: Path
) -> None:
    before = refs(repo)
    message = one_sentence(cli(repo, "finalize", "--onto", "review"))
    assert "branch review already exists" in message and "another --onto" in message
    assert refs(repo) == before


def test_a_tag_without_a_kept_change_is_refused(repo: Path) -> None:
    lab = night_lab(repo)
    lab.run("baseline")
    lab.keep()  # the baseline keeps the starting code: nothing to commit
    before = refs(repo)
    assert "nothing to finalize" in one_sentence(cli(repo, "finalize", "--onto", "review"))
    assert refs(repo) == before


def test_an_unknown_tag_is_refused(repo: Path) -> None:
    message = one_sentence(cli(repo, "finalize", "--tag", "nosuch", "--onto", "review"))
    assert "no history for tag 'nosuch'" in message and "--tag" in message


def test_a_still_running_tag_finalizes_what_is_kept(repo: Path) -> None:
    lab = night_lab(repo)
    night(lab)
    active = lab.start_run("in flight")  # recorded as running while finalize reads the history
    try:
        done = finalize(open_repo(repo), lab.history, "snapshot", "train.py")
    finally:
        lab.drive(active)
    assert len(done.steps) == 4
    assert resolve(open_repo(repo), "refs/heads/snapshot") == done.steps[-1].commit
