"""Git bookkeeping through plumbing commands: run commits are built in a private index, so the user's
index and working tree are never touched except for the editable file.

Refs: refs/heads/autoresearch/<tag> points only at kept runs; refs/autoresearch/<tag>/<id> keeps every run.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import os
import tarfile
import tempfile
from pathlib import Path

import git
from gitdb.base import IStream  # type: ignore[import-untyped,unused-ignore]

from server.errors import RepoError, StorageError
from server.store.history import atomic_write

# Every git command of the server runs no hook and no fsmonitor (and blobs are read without textconv), so
# nothing planted in .git (by a person, or by a run with the sandbox off) runs with the server's rights.
SAFE_GIT = ["core.hooksPath=/dev/null", "core.fsmonitor=false"]


def open_repo(root: Path) -> git.Repo:
    """The repository at root, refused with one clear sentence when the loop cannot use it."""
    try:
        repo = git.Repo(root)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise RepoError(f"{root} is not a git repository; run `git init` and commit your files first.") from exc
    if not repo.head.is_valid():
        if repo.heads:  # HEAD names a deleted branch; a first commit there would start a separate history
            raise RepoError(
                f"HEAD points at {repo.head.reference.path}, which does not exist; "
                f"`git switch` to one of your branches (e.g. {repo.heads[0].name}) first."
            )
        raise RepoError("the repository has no commits yet; commit your files (git add -A && git commit) first.")
    repo.git.set_persistent_git_options(c=SAFE_GIT)
    return repo


def exclude(repo: git.Repo, path: str) -> None:
    """Add a root-relative folder to .git/info/exclude (shared by all worktrees) unless it is there."""
    exclude_file = Path(repo.common_dir) / "info" / "exclude"
    entry = f"/{path.strip('/')}/"
    text = exclude_file.read_text() if exclude_file.exists() else ""
    if entry not in text.split("\n"):
        exclude_file.parent.mkdir(parents=True, exist_ok=True)
        exclude_file.write_text(text + ("" if text.endswith("\n") or not text else "\n") + entry + "\n")


def run_branch(tag: str) -> str:
    return f"autoresearch/{tag}"


def run_ref(tag: str, run_id: int) -> str:
    return f"refs/autoresearch/{tag}/{run_id}"


def resolve(repo: git.Repo, ref: str) -> str | None:
    """The commit a ref points at, or None when it does not exist."""
    try:
        return str(repo.git.rev_parse("--verify", "--quiet", f"{ref}^{{commit}}"))
    except git.GitCommandError:
        return None


def current_branch(repo: git.Repo) -> str | None:
    """The checked-out branch name, or None for a detached HEAD."""
    return None if repo.head.is_detached else repo.active_branch.name


def blob(repo: git.Repo, commit: str, path: str) -> bytes | None:
    """A file's bytes at a commit, or None when the file is not in that commit."""
    try:  # cat-file, not show: show runs textconv filters from .gitattributes
        return bytes(repo.git.cat_file("blob", f"{commit}:{path}", stdout_as_string=False,
                                       strip_newline_in_stdout=False))  # fmt: skip
    except git.GitCommandError:
        return None


def is_clean(repo: git.Repo, path: str) -> bool:
    """True when path has no staged or unstaged change against HEAD. Compared by hashes, not `git status`,
    which would run clean filters and the fsmonitor that .git's config names."""
    committed = blob(repo, "HEAD", path)
    staged = repo.git.ls_files("-s", "--", path).split()
    staged_sha = staged[1] if len(staged) >= 2 else None
    target = Path(repo.working_tree_dir or ".") / path
    on_disk = target.read_bytes() if target.is_file() else None
    committed_sha = _blob_sha(committed) if committed is not None else None
    return on_disk == committed and staged_sha == committed_sha


def commit_file(repo: git.Repo, parent: str, path: str, content: bytes, message: str) -> str:
    """A new commit: parent's tree with one file replaced, built in a private index."""
    sha = repo.odb.store(IStream("blob", len(content), io.BytesIO(content))).hexsha.decode()
    fd, index = tempfile.mkstemp(prefix="autoresearch-index-")
    os.close(fd)
    env = {"GIT_INDEX_FILE": index}
    try:
        repo.git.read_tree(parent, env=env)
        mode = _file_mode(repo, parent, path)
        repo.git.update_index("--add", "--cacheinfo", f"{mode},{sha},{path}", env=env)
        tree = repo.git.write_tree(env=env)
    finally:
        Path(index).unlink(missing_ok=True)
    return str(repo.git.commit_tree(tree, "-p", parent, "-m", message, env=_identity()))


def _blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _file_mode(repo: git.Repo, commit: str, path: str) -> str:
    entry = repo.git.ls_tree(commit, "--", path).split()
    return entry[0] if entry else "100644"


def _identity() -> dict[str, str]:
    """An author for run commits even on machines where git has no user configured."""
    env: dict[str, str] = {}
    for role in ("AUTHOR", "COMMITTER"):
        env.setdefault(f"GIT_{role}_NAME", os.environ.get(f"GIT_{role}_NAME", "autoresearch"))
        env.setdefault(f"GIT_{role}_EMAIL", os.environ.get(f"GIT_{role}_EMAIL", "autoresearch@localhost"))
    return env


def update_ref(repo: git.Repo, ref: str, new: str, old: str | None = None) -> None:
    """Move a ref, atomically checking its old value when given."""
    args = [ref, new] + ([old] if old else [])
    repo.git.update_ref("-m", "autoresearch", *args)


def sync_worktree_file(repo: git.Repo, commit: str, path: str) -> None:
    """Make the working tree and the index hold path exactly as in commit; nothing else changes."""
    content = blob(repo, commit, path)
    if content is None:
        raise RepoError(f"{path} is not in commit {commit[:7]}; check the configuration's editable path.")
    try:  # the index first: it is what fails (a stale index.lock), and then the file is still untouched
        repo.git.reset("-q", commit, "--", path)
    except git.GitCommandError as exc:
        raise RepoError(_git_hint(exc)) from exc
    target = Path(repo.working_tree_dir or ".") / path
    if not target.exists() or target.read_bytes() != content:
        atomic_write(target, content)


def _git_hint(exc: git.GitCommandError) -> str:
    text = str(exc.stderr or exc)
    if "index.lock" in text:
        return "git's index is locked (.git/index.lock); if no git command is running, delete that file and retry."
    return f"git failed: {text.strip()[:300]}"


def export_tree(repo: git.Repo, commit: str, dest: Path) -> None:
    """Write commit's files into dest (a fresh folder), the snapshot that a run executes."""
    data = repo.git.archive("--format=tar", commit, stdout_as_string=False)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(dest, filter="data")
    except OSError as exc:
        raise StorageError(
            f"could not write the run's snapshot in {dest} ({exc.strerror}); free disk space and retry."
        ) from exc


def unified_diff(old: str, new: str, path: str, context: int = 2) -> str:
    """A compact unified diff, empty when nothing changed."""
    lines = difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}", n=context
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)
