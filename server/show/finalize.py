"""`autoresearch finalize`: the night's kept changes as a branch a human can review, one commit each.

The new branch starts at the commit the tag started on (the history's first "tag" event) and gets one commit
per kept run that changed the code: its patch against the previous kept run's code, applied with
`git apply --cached` in a private index (so the checkout, the run branch and the history never change).
BRANCH-squashed gets the same end state as one commit. Two changes are independent when their patches, each
as recorded, apply onto the base in either order.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import git

from server.errors import InvalidInputError, RepoError, StateError
from server.show.report import gain_of, kept_chain
from server.store import gitops
from server.store.history import History, RunRecord, read_events

SQUASHED_SUFFIX = "-squashed"
MAX_PAIRS_CHANGES = 30  # beyond this many changes independence is not checked (pairs grow as n squared)


@dataclass(frozen=True)
class Step:
    """One kept change: its run, its patch against the code kept before it, the commit made for it."""

    run: RunRecord
    patch: str
    commit: str = ""


@dataclass(frozen=True)
class Finalized:
    branch: str
    squashed: str
    base: str
    steps: list[Step]
    skipped: list[RunRecord]  # kept runs whose code was the code kept before them (a noise re-measure)
    independent: list[tuple[int, int]]  # pairs of run ids whose patches apply onto the base in either order


def base_commit(history: History) -> str | None:
    """The commit the night started on: the first 'tag' event, else the first run's parent."""
    for event in read_events(history.events_path):
        if event.get("type") == "tag" and event.get("start"):
            return str(event["start"])
    runs = history.runs()
    return runs[0].parent if runs else None


def _patch(repo: git.Repo, old: str, new: str) -> str:
    text = repo.git.diff("--no-color", "--no-ext-diff", "--no-renames", "--full-index", "--binary",
                        "--src-prefix=a/", "--dst-prefix=b/", old, new)  # fmt: skip
    return str(text) + ("\n" if text else "")


@contextmanager
def private_index(repo: git.Repo, tree: str) -> Iterator[tuple[dict[str, str], Path]]:
    """A temporary index holding tree (as the environment of the git commands that use it), and a folder for
    the patches to apply."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-finalize-") as folder:
        env = {"GIT_INDEX_FILE": str(Path(folder) / "index")}
        repo.git.read_tree(tree, env=env)
        yield env, Path(folder)


def _apply(repo: git.Repo, env: dict[str, str], folder: Path, patch: str) -> None:
    """Apply one patch to the private index, exactly: no fuzz, no three-way merge; GitCommandError otherwise."""
    path = folder / "change.patch"
    path.write_text(patch, encoding="utf-8")
    repo.git.apply("--cached", str(path), env=env)


def applies(repo: git.Repo, base: str, patches: list[str]) -> bool:
    """Whether the patches apply one after the other onto base."""
    with private_index(repo, base) as (env, folder):
        try:
            for patch in patches:
                _apply(repo, env, folder, patch)
        except git.GitCommandError:
            return False
    return True


def commit_patch(repo: git.Repo, parent: str, patch: str, message: str) -> str:
    """A commit on parent with the patch applied; RepoError when it does not apply cleanly."""
    with private_index(repo, parent) as (env, folder):
        try:
            _apply(repo, env, folder, patch)
        except git.GitCommandError as exc:
            raise RepoError(f"a kept change does not apply cleanly ({str(exc.stderr).strip()[:200]}); "
                            "the run refs may have been rewritten.") from exc  # fmt: skip
        tree = repo.git.write_tree(env=env)
    return str(repo.git.commit_tree(tree, "-p", parent, "-m", message, env=gitops._identity()))


def message(run: RunRecord, direction: str, metric: str) -> str:
    """The commit message: the description, the gain and the gate's figure, the lesson."""
    gain = gain_of(run, direction)
    figures = f"gain {round(gain, 6) + 0.0:+.6f} {metric}" if gain is not None else "baseline"  # no -0.000000
    if run.required_gain is not None:
        figures += f" (needed {run.required_gain:.6f}{', forced: ' + (run.force_reason or '') if run.forced else ''})"
    lines = [run.description, "", f"{figures}; autoresearch run {run.id}, {metric} {run.metric}"]
    lines += [f"hypothesis: {run.hypothesis}"] if run.hypothesis else []
    lines += [f"lesson: {run.lesson}"] if run.lesson else []
    return "\n".join(lines) + "\n"


def steps_of(repo: git.Repo, base: str, kept: list[RunRecord]) -> tuple[list[Step], list[RunRecord]]:
    """Each kept run's patch against the code kept before it; runs that changed nothing apart."""
    steps, skipped, previous = [], [], base
    for run in kept:
        patch = _patch(repo, previous, run.commit)
        if patch:
            steps.append(Step(run, patch))
        else:
            skipped.append(run)
        previous = run.commit
    return steps, skipped


def independent_pairs(repo: git.Repo, base: str, steps: list[Step]) -> list[tuple[int, int]]:
    if len(steps) > MAX_PAIRS_CHANGES:
        return []
    return [(a.run.id, b.run.id) for a, b in combinations(steps, 2)
            if applies(repo, base, [a.patch, b.patch]) and applies(repo, base, [b.patch, a.patch])]  # fmt: skip


def _refuse(repo: git.Repo, branch: str, tag: str, history: History) -> None:
    if not history.events_path.exists():
        raise StateError(f"there is no history for tag {tag!r} under {history.folder.parent}; pass --tag with a "
                         "tag that has run.")  # fmt: skip
    try:
        repo.git.check_ref_format("--branch", branch)
    except git.GitCommandError:
        raise InvalidInputError(f"{branch!r} is not a valid branch name; pass another --onto.") from None
    for name in (branch, branch + SQUASHED_SUFFIX):
        if gitops.resolve(repo, f"refs/heads/{name}") is not None:
            raise StateError(f"branch {name} already exists; pass another --onto name, or delete it with "
                             f"`git branch -D {name}` first.")  # fmt: skip


def finalize(repo: git.Repo, history: History, branch: str, editable: str, metric: str = "val_bpb",
             direction: str = "minimize") -> Finalized:  # fmt: skip
    """Make BRANCH (one commit per kept change) and BRANCH-squashed (one commit) from the tag's base."""
    tag = history.folder.name
    _refuse(repo, branch, tag, history)
    base = base_commit(history)
    steps, skipped = steps_of(repo, base, kept_chain(history.runs())) if base else ([], [])
    if base is None or not steps:
        raise StateError(f"tag {tag} has no kept run that changed {editable}, so there is nothing to finalize; "
                         "keep a run that beats the baseline first.")  # fmt: skip
    made, tip = [], base
    for step in steps:
        tip = commit_patch(repo, tip, step.patch, message(step.run, direction, metric))
        made.append(Step(step.run, step.patch, tip))
    squash_message = f"autoresearch tag {tag}: {len(made)} kept changes\n\n" + "".join(
        f"- {s.run.description} (run {s.run.id})\n" for s in made)  # fmt: skip
    squashed = str(repo.git.commit_tree(f"{tip}^{{tree}}", "-p", base, "-m", squash_message,
                                        env=gitops._identity()))  # fmt: skip
    gitops.update_ref(repo, f"refs/heads/{branch}", tip, "0" * 40)  # refuses, atomically, a branch made meanwhile
    gitops.update_ref(repo, f"refs/heads/{branch}{SQUASHED_SUFFIX}", squashed, "0" * 40)
    return Finalized(branch, branch + SQUASHED_SUFFIX, base, made, skipped, independent_pairs(repo, base, made))


def describe(done: Finalized) -> list[str]:
    """What finalize made, one line each, for the terminal."""
    lines = [f"branch {done.branch}: {len(done.steps)} commit(s) on {done.base[:7]}, the tag's base"]
    lines += [f"  {s.commit[:7]} run {s.run.id}: {s.run.description}" for s in done.steps]
    lines += [f"  (run {r.id} kept the same code: no commit)" for r in done.skipped]
    lines.append(f"branch {done.squashed}: the same code as one commit")
    pairs = ", ".join(f"{a}+{b}" for a, b in done.independent)
    lines.append(f"independent changes (apply onto the base in either order): {pairs or 'none'}")
    return lines
