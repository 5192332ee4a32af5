"""A run tag's lasting state: its branch and pins, the editable file, the history and the slots, and recovery
after an owner that died. The first of the lab's layers (tag, start, seeds, decisions: loop.py's Lab); it
starts no run and decides nothing.

May import store/, run/ (what a run is, to describe and recover it), the shared schema and lab/gate.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from server.config import CONFIG_NAME, Config
from server.errors import BusyError, InvalidInputError, RepoError, StateError
from server.lab import gate, noise
from server.lab.edits import Edit, apply_edits, validate_source
from server.run import sandbox
from server.run.isolation import Places
from server.run.pipeline import RunContext
from server.run.ray_runner import runner_for
from server.run.runner import Runner
from server.schema import SlotInfo
from server.store import gitops, pins
from server.store.history import History, RunRecord, atomic_write, best_run, now
from server.store.lock import Held, RepoLock
from server.store.registry import Slots

log = logging.getLogger("autoresearch")
SHORT_WAIT_S = 60.0  # how long a short git-and-history section waits for another one (they take milliseconds)


class Tag:
    """One repository, one run tag: what lasts between runs."""

    def __init__(self, root: Path, config: Config, runner: Runner | None = None) -> None:
        self.config = config
        self.repo = gitops.open_repo(root)
        self.root = Path(self.repo.working_tree_dir or root)
        self.runner = runner or runner_for(config)
        self.state = self.root / config.state_dir
        self.places = Places.of(self.root, config)
        self.history = History(self.state / config.tag, config.metric)
        self.lock = RepoLock(self.state / "lock")  # held only for short git and history writes
        self.slots = Slots(self.state / "slots", config.slot_count, config.slot_devices)
        self.pins_path = self.history.folder / "pins.json"
        self.branch = gitops.run_branch(config.tag)
        self._ignore_state_dir()
        try:  # clean up after a server that died mid-run, unless another live server holds the lock
            with self.lock.hold("recover") as held:
                self._recover(held)
        except BusyError:
            pass

    @property
    def context(self) -> RunContext:
        """What each stage of a run needs, as this tag has it now (a test may change the configuration)."""
        return RunContext(self.repo, self.runner, self.config, self.places)

    @contextmanager
    def _hold(self, op: str) -> Iterator[Held]:
        """The repository lock for a changing operation, with the tag started and any dead run recovered.

        The tag starts on the first change, not at start-up, so health checks (`claude mcp list`, an
        inspector listing tools) never create branches or move HEAD."""
        with self.lock.hold(op, wait=SHORT_WAIT_S) as held:
            self._recover(held)
            self._start_tag()
            yield held

    def _ignore_state_dir(self) -> None:
        """Keep the state folder out of `git status` without touching the user's .gitignore."""
        if not Path(self.config.state_dir).is_absolute():  # else outside the tree (the demo's shared state)
            gitops.exclude(self.repo, self.config.state_dir)

    def _recover(self, held: Held) -> None:
        """A run whose slot's owner died (or, from an older version, left in the repository lock): kill what is
        left of it and record it interrupted. Runs whose owner lives are left alone, in this process or another."""
        self.history.runs(repair=True)
        left = [*self.slots.sweep(), SlotInfo.from_json(held.stale)]  # the lock's: from an older version
        for stale in left:
            if stale.is_run and stale.token:
                killed = self.runner.sweep(stale.token)
                log.warning("recovered run %s of a dead owner; killed %d process(es)", stale.run_id, killed)
        flying = self.slots.live()
        if any(info.unreadable for info in flying):
            return  # a slot being rewritten: which run it holds is unknown, so nothing is recorded interrupted now
        live = {info.run_id for info in flying if info.tag == self.config.tag and info.run_id is not None}
        for run in self.history.runs():
            if run.status == "running" and run.id not in live:
                log.warning("run %d has no live owner (runs in flight: %s)", run.id, sorted(live) or "none")
                self._interrupt(run)

    def _interrupt(self, run: RunRecord) -> None:
        """Record a run whose owner died as interrupted (its processes are already killed)."""
        reason = "the server stopped, or could not record the run's end; its processes were killed on restart"
        ended = run.model_copy(update={"status": "interrupted", "reason": reason, "ended_at": now()})
        self.history.record(ended, "end")
        shutil.rmtree(self.history.run_dir(run.id) / "tree", ignore_errors=True)

    def _start_tag(self) -> None:
        """First use of a tag: branch autoresearch/<tag> at HEAD, HEAD on it, locked files pinned."""
        if self.config.sandbox == "bwrap":
            sandbox.require_bwrap()
        branch_tip = gitops.resolve(self.repo, f"refs/heads/{self.branch}")
        if branch_tip is None:
            self._refuse_dirty_locked()
            self._create_branch()
        head = gitops.current_branch(self.repo)
        if head != self.branch:
            where = "a detached HEAD" if head is None else f"branch {head!r}"
            raise RepoError(
                f"the run branch {self.branch} exists but the checkout is on {where}; run "
                f"`git switch {self.branch}` (or set another tag in {CONFIG_NAME})."
            )
        if not self.pins_path.exists():
            self._write_pins()

    def _create_branch(self) -> None:
        if self.repo.head.is_detached:
            raise RepoError("HEAD is detached; `git switch` to a branch before starting a run tag.")
        kept = best_run(self.history.runs())
        start = kept.commit if kept else self.repo.head.commit.hexsha
        self.repo.git.branch(self.branch, start)
        self.history.mark_tag(start)
        if start == self.repo.head.commit.hexsha:
            self.repo.git.symbolic_ref("HEAD", f"refs/heads/{self.branch}")

    def pin(self) -> dict[str, str]:
        """Pin the committed locked files and the configuration (a human act: the CLI's `pin`)."""
        with self._hold("pin"):
            new = self._write_pins()
            self.history.mark_tag(self.tip())  # the human's commits on the run branch are now the base
            return new

    def _refuse_dirty_locked(self) -> None:
        dirty = [p for p in self.config.pinned_files() if not gitops.is_clean(self.repo, p)]
        if dirty:
            raise RepoError(f"{dirty[0]} has uncommitted changes; commit or restore it before pinning.")

    def _write_pins(self) -> dict[str, str]:
        self._refuse_dirty_locked()
        new = {p: pins.digest(self.root / p) for p in self.config.pinned_files()}
        pins.save_pins(self.pins_path, new)
        return new

    @property
    def editable_path(self) -> Path:
        return self.root / self.config.editable

    def tip(self) -> str:
        tip = gitops.resolve(self.repo, f"refs/heads/{self.branch}")
        if tip is None and not self.history.runs():
            return self.repo.head.commit.hexsha  # the tag has not started: it will start from HEAD
        if tip is None:
            raise RepoError(f"the run branch {self.branch} is gone; restart the server to recreate it.")
        return tip

    def kept_content(self) -> str:
        data = gitops.blob(self.repo, self.tip(), self.config.editable)
        return data.decode("utf-8", "replace") if data is not None else ""

    def current_content(self) -> str:
        try:
            return self.editable_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""
        except UnicodeDecodeError as exc:
            raise StateError(f"{self.config.editable} is not UTF-8 text; write_train a new version.") from exc

    def write(self, content: str | None = None, edits: list[Edit] | None = None) -> str:
        """Validate and atomically write the editable file; the diff against the kept version."""
        if (content is None) == (not edits):
            raise InvalidInputError("give either `content` (the whole file) or `edits` (search/replace pairs).")
        self._new_content(content, edits)  # bad input is refused before the tag starts: nothing changes
        with self._hold("write_train"):
            self._refuse_if_pending("write_train")
            new, data = self._new_content(content, edits)
            atomic_write(self.editable_path, data)
        return gitops.unified_diff(self.kept_content(), new, self.config.editable, context=0)

    def _new_content(self, content: str | None, edits: list[Edit] | None, base: str | None = None) -> tuple[str, bytes]:
        """The new file and its validated bytes: content, or edits applied to base (default the working file)."""
        new = content if content is not None else apply_edits(self.current_content() if base is None else base,
                                                              edits or [])  # fmt: skip
        return new, validate_source(new, self.config.editable, self.config.max_file_bytes)

    def _code(self, commit: str) -> bytes:
        return gitops.blob(self.repo, commit, self.config.editable) or b""

    def _expected_tip(self) -> str:
        """The run branch's tip, refused when something outside the server moved it."""
        tip = self.tip()
        expected = self.history.expected_tip()
        if expected is not None and tip != expected:
            raise RepoError(
                f"the run branch {self.branch} points at {tip[:7]}, but the history says {expected[:7]}: something "
                f"outside the server moved it; a human must run `git branch -f {self.branch} {expected[:7]}` "
                "(or start a new tag) before the loop can go on."
            )
        return tip

    def _sync_editable(self, commit: str) -> None:
        self._require_checkout()
        gitops.sync_worktree_file(self.repo, commit, self.config.editable)

    def _require_checkout(self) -> None:
        """The editable file in the working tree is the run branch's only while the branch is checked out."""
        if self.repo.head.is_detached or gitops.current_branch(self.repo) != self.branch:
            raise RepoError(f"the checkout left {self.branch}; run `git switch {self.branch}` and retry.")

    def awaiting(self) -> list[RunRecord]:
        """Finished runs that went well and await keep or discard, oldest first."""
        return [r for r in self.history.runs() if r.status == "ok" and r.decision is None]

    def pending(self) -> RunRecord | None:
        """The latest run of the working file (a draft run) if it finished well and awaits keep or discard."""
        drafts = [r for r in self.history.runs() if r.source == "draft" and r.status != "running"]
        last = drafts[-1] if drafts else None
        return last if last and last.status == "ok" and last.decision is None else None

    def in_flight(self) -> list[SlotInfo]:
        """The runs of this tag in flight now, as their slots describe them (this process's and others')."""
        return [info for info in self.slots.live() if info.tag == self.config.tag]

    def best(self) -> RunRecord | None:
        return best_run(self.history.runs())

    def _require_best(self) -> RunRecord:
        best = self.best()
        if best is None:
            raise StateError("there is no kept run yet; the tag's first run (the baseline) measures the noise floor.")
        return best

    def judge(self, run: RunRecord) -> noise.Judgement:
        """The keep gate's verdict on a finished run against the current best."""
        return gate.judge(self.history.runs(), run, self.config)

    def floor(self) -> noise.Floor | None:
        return gate.floor(self.history.runs(), self.config)

    def _refuse_if_pending(self, action: str) -> None:
        run = self.pending()
        if run is not None:
            raise StateError(
                f"run {run.id} ({run.description!r}) finished with {self.config.metric} {run.metric} and awaits "
                f"a decision; call keep or discard before {action}."
            )

    def close(self) -> None:
        """Stop what this tag keeps running between runs: git's helper processes."""
        self.repo.close()
