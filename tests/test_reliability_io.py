"""Bad input to every tool, git edge cases and storage faults, against real repositories and real files.

Each test's `Scenario:` docstring lines feed docs/RELIABILITY.md (scripts/gen_reliability.py).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, disk_state, git, make_fake_repo, set_mode
from mcp import Client

from server import app
from server.config import load_config
from server.errors import RepoError, StateError, StorageError
from server.lab.loop import Lab

STATE = Path(".autoresearch") / "test"
LONG = "x = 1\n" * 100_000

# (tool, arguments, a fragment of the one-sentence error); every call is refused and changes nothing
Case = tuple[str, dict[str, Any], str]  # tool, arguments, a fragment of the refusal
BEFORE_ANY_RUN: list[Case] = [
    ("write_train", {"content": ""}, "empty"),
    ("write_train", {"content": " \n\t\n"}, "empty"),
    ("write_train", {"content": "\x00\x01\x02\x7fELF binary"}, "NUL bytes"),
    ("write_train", {"content": "x = '\ud800'\n"}, "not valid UTF-8"),
    ("write_train", {"content": LONG}, "over the cap"),
    ("write_train", {"content": "def broken(:\n"}, "would not compile"),
    ("write_train", {"content": 123}, "valid string"),
    ("write_train", {}, "give either"),
    ("write_train", {"edits": []}, "give either"),
    ("write_train", {"content": "x = 1\n", "edits": [{"old": "MODE", "new": "M"}]}, "give either"),
    ("write_train", {"edits": [{"old": "NOT THERE", "new": "x"}]}, "matches nothing"),
    ("write_train", {"edits": [{"old": "MODE", "new": "X"}]}, "matches 3 times"),
    ("write_train", {"edits": [{"old": "", "new": "x"}]}, "`old` is empty"),
    ("write_train", {"edits": [{"old": "METRIC = 1.0", "new": "METRIC = (("}]}, "would not compile"),
    ("write_train", {"edits": [{"old": "MODE"}]}, "new"),
    ("run_experiment", {"description": ""}, "at least 1"),
    ("run_experiment", {"description": "x" * 201}, "at most 200"),
    ("run_experiment", {}, "description"),
    ("get_history", {"limit": 0}, "greater than or equal to 1"),
    ("get_history", {"limit": 501}, "less than or equal to 500"),
    ("get_history", {"limit": "many"}, "valid integer"),
    ("get_history", {"run_id": 7}, "no run 7"),
    ("get_history", {"match": ""}, "at least 1"),
    ("get_history", {"match": "m" * 101}, "at most 100"),
    ("keep", {}, "no runs yet"),
    ("discard", {}, "no runs yet"),
    ("keep", {"run_id": 0}, "greater than or equal to 1"),
    ("keep", {"reason": "r" * 301}, "at most 300"),
    ("discard", {"run_id": 5}, "no runs yet"),
]
WHILE_PENDING: list[Case] = [
    ("keep", {"run_id": 99}, "not a known run"),
    ("discard", {"run_id": 99}, "not a known run"),
    ("keep", {"force": True}, "needs a reason"),
    ("run_experiment", {"description": "again"}, "awaits a decision"),
    ("write_train", {"content": "x = 1\n"}, "awaits a decision"),
    ("run_experiment", {"description": "c", "edits": [{"old": "NOT THERE", "new": "x"}]}, "matches nothing"),
    ("run_experiment", {"description": "c", "rebase": 99}, "no run 99 to rebase"),
    ("run_experiment", {"description": "c", "rebase": 1}, "already started from the current best"),
    ("run_experiment", {"description": "c", "wait": "later"}, "valid boolean"),
    ("get_history", {"wait_for": [99]}, "there is no run 99"),
    ("get_history", {"wait_for": [1], "wait_seconds": -1}, "greater than or equal to 0"),
]
AFTER_KEEP: list[Case] = [
    ("keep", {}, "already kept"),
    ("discard", {}, "already kept"),
    ("keep", {"run_id": 1}, "already kept"),
    ("run_experiment", {"description": "c", "rebase": 1}, "was already kept"),
]


async def refused_without_change(client: Client, repo: Path, cases: list[Case]) -> None:
    for tool, args, fragment in cases:
        before = disk_state(repo)
        result = await client.call_tool(tool, args)
        message = "".join(getattr(block, "text", "") for block in result.content)
        assert result.is_error and fragment in message, (tool, args, message)
        assert disk_state(repo) == before, (tool, args)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_bad_input_to_every_tool_is_a_tool_error_and_changes_nothing(
    repo: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """Scenario: Bad input / binary and NUL content, lone surrogates (not UTF-8), content far over the cap,
    empty content, a syntax error, edits that match nothing or twice, out-of-range and mistyped arguments,
    keep or discard with nothing to decide, keep twice, decisions on unknown or earlier run ids: each is
    a ToolError with one actionable sentence, and files, HEAD, refs and history are unchanged."""
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    async with Client(app.mcp) as client:
        await refused_without_change(client, repo, BEFORE_ANY_RUN)
        assert git(repo, "branch", "--show-current") == "main"  # no refusal even started the run tag
        assert not (await client.call_tool("run_experiment", {"description": "baseline"})).is_error
        await refused_without_change(client, repo, WHILE_PENDING)
        assert not (await client.call_tool("keep", {})).is_error
        await refused_without_change(client, repo, AFTER_KEEP)
        assert not (await client.call_tool("run_experiment", {"description": "equal"})).is_error
        await refused_without_change(
            client, repo, [("keep", {}, "not better"), ("keep", {"run_id": 1}, "already kept")]
        )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_editable_file_that_is_not_utf8_on_disk_is_reported(
    repo: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    """Scenario: Bad input / the editable file holds binary (non-UTF-8) bytes on disk: read_train and
    edits are refused with what to do, the file is left as it is."""
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    (repo / "train.py").write_bytes(b"\xff\xfe\x00binary")
    async with Client(app.mcp) as client:
        await refused_without_change(client, repo, [
            ("read_train", {}, "not UTF-8 text; write_train a new version"),
            ("write_train", {"edits": [{"old": "x", "new": "y"}]}, "not UTF-8 text"),
        ])  # fmt: skip
        assert not (await client.call_tool("write_train", {"content": set_mode("ok")})).is_error


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_unknown_arguments_are_refused(repo: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str) -> None:
    """Scenario: Bad input / unknown arguments to a tool are refused, naming the argument."""
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    async with Client(app.mcp) as client:
        await refused_without_change(client, repo, [("get_history", {"limit": 3, "bogus": 1}, "bogus")])


# -- git edge cases ------------------------------------------------------------------------------------------


def test_dirty_and_staged_tree_at_first_use_is_left_alone(repo: Path) -> None:
    """Scenario: Git edge cases / uncommitted, staged and untracked user changes to other files when the
    tag starts: run commits hold only the editable file, and every user change survives keep and discard."""
    (repo / "notes.txt").write_text("unsaved\n")
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")
    (repo / "untracked.txt").write_text("mine\n")
    lab = Lab(repo, load_config(repo))
    run = lab.run("baseline")
    assert git(repo, "diff", "--name-only", f"{run.commit}^", run.commit) == ""  # same tree as HEAD: nothing else
    lab.keep()
    lab.write(set_mode("ok", 2.0))
    second = lab.run("worse")
    assert git(repo, "diff", "--name-only", f"{second.commit}^", second.commit) == "train.py"
    lab.discard()
    status = sorted(line.strip() for line in git(repo, "status", "--porcelain").splitlines())
    assert status == ["?? untracked.txt", "A  staged.txt", "M notes.txt"]
    assert (repo / "notes.txt").read_text() == "unsaved\n"


def test_detached_head_refuses_every_change_until_switched_back(lab: Lab, repo: Path) -> None:
    """Scenario: Git edge cases / a detached HEAD, at first use and mid-loop: write, run, keep and
    discard are refused with one sentence saying which `git switch` to run; nothing moves."""
    git(repo, "checkout", "-q", "--detach")
    before = disk_state(repo)
    with pytest.raises(RepoError, match="HEAD is detached; `git switch`"):
        lab.write(set_mode("ok", 0.5))
    assert disk_state(repo) == before and git(repo, "branch", "--list", "autoresearch/*") == ""
    git(repo, "switch", "-q", "main")
    lab.run("baseline")
    git(repo, "checkout", "-q", "--detach")
    before = disk_state(repo)
    for attempt in (lab.keep, lab.discard, lambda: lab.write(set_mode("ok", 0.5)), lambda: lab.run("again")):
        with pytest.raises(RepoError, match="git switch autoresearch/test"):
            attempt()
        assert disk_state(repo) == before
    git(repo, "switch", "-q", "autoresearch/test")
    assert lab.keep().decision == "keep"


def test_stale_index_lock_refuses_decisions_and_changes_nothing(lab: Lab, repo: Path) -> None:
    """Scenario: Git edge cases / a stale .git/index.lock: runs still work (a private index), keep and
    discard are refused naming the file to delete, with files, branch and history unchanged."""
    (repo / ".git" / "index.lock").write_text("")
    assert lab.run("baseline").status == "ok"
    before = disk_state(repo)
    for decide in (lab.keep, lab.discard):
        with pytest.raises(RepoError, match=r"\.git/index\.lock.*delete that file"):
            decide()
        assert disk_state(repo) == before
    (repo / ".git" / "index.lock").unlink()
    assert lab.keep().decision == "keep"
    assert git(repo, "status", "--porcelain") == ""


def test_missing_run_branch_is_recreated_at_the_best_run(lab: Lab, repo: Path) -> None:
    """Scenario: Git edge cases / the run branch deleted by the user: it is recreated at the best kept run,
    the user is told to switch to it, and the loop goes on with the user's changes intact."""
    lab.run("baseline")
    kept = lab.keep()
    git(repo, "switch", "-q", "main")
    git(repo, "branch", "-q", "-D", "autoresearch/test")
    (repo / "notes.txt").write_text("work in progress\n")
    with pytest.raises(RepoError, match="checkout is on branch 'main'; run `git switch autoresearch/test`"):
        lab.write(set_mode("ok", 0.5))
    assert git(repo, "rev-parse", "autoresearch/test") == kept.commit
    git(repo, "switch", "-q", "autoresearch/test")
    lab.write(set_mode("ok", 0.5))
    assert lab.run("after").status == "ok" and lab.keep().decision == "keep"
    assert (repo / "notes.txt").read_text() == "work in progress\n"


def test_repository_without_commits_or_with_head_on_a_deleted_branch_is_refused(tmp_path: Path) -> None:
    """Scenario: Git edge cases / a repository with no commits, or HEAD on a branch that no longer exists:
    refused with one sentence, nothing written."""
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    (empty / "train.py").write_text("print(1)\n")
    with pytest.raises(RepoError, match="no commits yet; commit your files"):
        Lab(empty, load_config(empty))
    assert sorted(p.name for p in empty.iterdir()) == [".git", "train.py"]
    repo = make_fake_repo(tmp_path / "repo")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/gone")
    with pytest.raises(RepoError, match="HEAD points at refs/heads/gone, which does not exist; `git switch`"):
        Lab(repo, load_config(repo))


# -- storage faults ------------------------------------------------------------------------------------------


def test_history_truncated_mid_line_is_read_to_the_last_record_and_repaired(lab: Lab, repo: Path) -> None:
    """Scenario: Storage faults / the history cut mid-line, as a power cut leaves it: read up to the last
    complete record, the torn tail cut off on restart, and the loop goes on."""
    lab.run("baseline")
    lab.keep()
    lab.write(set_mode("ok", 2.0))
    lab.run("worse")
    lab.discard()
    events = repo / STATE / "runs.jsonl"
    lines = events.read_bytes().splitlines(keepends=True)
    with events.open("r+b") as fh:
        fh.truncate(events.stat().st_size - len(lines[-1]) // 2)
    again = Lab(repo, load_config(repo))
    assert events.read_bytes() == b"".join(lines[:-1])
    assert [(r.id, r.decision) for r in again.history.runs()] == [(1, "keep"), (2, None)]
    assert again.discard().decision == "discard"
    assert all(json.loads(line) for line in events.read_bytes().splitlines())


@pytest.fixture
def small_disk(repo: Path) -> Iterator[Path]:
    """The state folder on a real 1 MiB tmpfs, so the disk really fills up."""
    state = repo / ".autoresearch"
    state.mkdir()
    mount = shutil.which("mount")
    done = subprocess.run([mount or "mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(state)],
                          capture_output=True, text=True) if mount and os.geteuid() == 0 else None  # fmt: skip
    if done is None or done.returncode != 0:
        why = done.stderr.strip() if done is not None else "not root, or no mount command"
        pytest.skip(f"mounting a small tmpfs is not permitted here ({why}); the full-disk tests need root")
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


FILL = """\
import os
fd = os.open({where!r}, os.O_WRONLY | os.O_CREAT)
try:
    while True:
        os.write(fd, bytes(1 << 16))
except OSError:
    pass
"""
FILL_THEN_PRINT = (
    "from prepare import summary\n"
    + FILL.format(where="filler")
    + """\
for _ in range(3000):
    print("x" * 99)
summary(0.5)
"""
)
PRINT_THEN_FILL_FOR_GOOD = (  # the output folder outlives the run, so the disk stays full; a summary of
    # 40 KB makes the end record larger than what removing the snapshot frees
    "import os\nfrom prepare import summary\nsummary(0.5)\n"
    + "for i in range(400):\n    print(f'pad_{i}: ' + 'x' * 100, flush=True)\n"
    + "import time\ntime.sleep(0.5)  # the server's log writer puts the summary on disk before the disk fills\n"
    + FILL.replace("{where!r}", 'os.path.join(os.environ["AUTORESEARCH_OUTPUT"], "filler")')
)


def test_full_disk_while_writing_the_log_fails_the_run_cleanly(small_disk: Path, repo: Path) -> None:
    """Scenario: Storage faults / the disk fills up while the run's log is written (a real 1 MiB tmpfs):
    the run is recorded as a crash saying so, never kept, the history stays valid, the next run works."""
    lab = Lab(repo, load_config(repo))
    lab.write(FILL_THEN_PRINT)
    run = lab.run("fills the disk")
    assert run.status == "crash" and "log could not be written (No space left on device)" in (run.reason or "")
    with pytest.raises(StateError, match="can never be kept"):
        lab.keep()
    lab.discard()
    lab.write(set_mode("ok", 0.5))
    assert lab.run("next").status == "ok"
    assert [r.status for r in lab.history.runs()] == ["crash", "ok"]


def test_full_disk_while_writing_a_record_keeps_the_history_valid(small_disk: Path, repo: Path) -> None:
    """Scenario: Storage faults / the disk stays full when the run's records are written (a real 1 MiB
    tmpfs): a StorageError says to free space, the history stays valid and the lock is released; once
    space is freed the run is recorded as interrupted and the loop goes on."""
    lab = Lab(repo, load_config(repo))
    lab.write(PRINT_THEN_FILL_FOR_GOOD)
    with pytest.raises(StorageError, match="free disk space and retry"):
        lab.run("fills the disk for good")
    events = repo / STATE / "runs.jsonl"
    assert [json.loads(line)["type"] for line in events.read_bytes().splitlines()] == ["tag", "start"]
    assert (small_disk / "lock").read_text() == ""
    with pytest.raises(StorageError, match="free disk space"):
        lab.run("still full")
    assert all(json.loads(line) for line in events.read_bytes().splitlines())
    (lab.history.run_dir(1) / "out" / "filler").unlink()
    lab.write(set_mode("ok", 0.5))
    assert lab.run("after freeing space").status == "ok"
    first = lab.history.runs()[0]
    assert first.status == "interrupted" and "could not record" in (first.reason or "")


# -- the reliability document ------------------------------------------------------------------------------


def test_reliability_doc_is_generated_from_the_tests() -> None:
    """docs/RELIABILITY.md is exactly what scripts/gen_reliability.py makes of the tests' scenarios."""
    spec = importlib.util.spec_from_file_location("gen_reliability", REPO_ROOT / "scripts" / "gen_reliability.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    doc = (REPO_ROOT / "docs" / "RELIABILITY.md").read_text()
    assert doc == generator.render(), "docs/RELIABILITY.md is out of date: run python scripts/gen_reliability.py"
