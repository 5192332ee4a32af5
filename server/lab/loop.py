"""The loop's domain: the editable file, runs, and keep/discard decisions, over git and the history.

Nothing here knows about MCP; app.py and cli.py are thin layers over Lab.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from server.config import CONFIG_NAME, Config
from server.errors import BusyError, DuplicateError, InvalidInputError, NightOverError, RepoError, StateError
from server.lab import caps, noise, supervise
from server.lab.edits import Edit, apply_edits, fingerprint, merge3, validate_source
from server.run import sandbox
from server.run.holdout import score_holdout
from server.run.isolation import Places
from server.run.outcome import classify
from server.run.pipeline import (
    Candidate,
    Warm,
    cleanup,
    collect,
    combine,
    launch,
    make_candidate,
    measure,
    record_end,
    repeat,
    run_spec,
    start_warm,
    tampered,
)
from server.run.ray_runner import runner_for
from server.run.runner import Execution, LocalExecution, Runner, RunSpec, kill_by_token
from server.run.spares import Spares
from server.run.spares import usable as spares_usable
from server.store import gitops, pins
from server.store.history import History, RunRecord, atomic_write, best_run, now
from server.store.lock import Held, RepoLock, run_in_flight
from server.store.registry import Slot, Slots

log = logging.getLogger("autoresearch")
UNFINISHED = ("running", "cancelled", "interrupted")  # runs whose code has no result yet
SHORT_WAIT_S = 60.0  # how long a short git-and-history section waits for another one (they take milliseconds)
RECORD_WAIT_S = 600.0  # a run's end waits this long for the repository: a result is never dropped for a busy lock


@dataclass
class ActiveRun:
    """A started run: its candidate, its process (the current seed's) and the pool slot it holds until recorded.

    execution is None until the run's owner launches it (a run handed to a supervisor is launched there)."""

    candidate: Candidate
    execution: Execution | None
    slot: Slot
    deadline: float
    warm: Warm | None = None  # the current seed's evaluator, started with it
    seeds_left: list[int] = field(default_factory=list)  # run after the current seed, while every seed goes well
    base: RunRecord | None = None  # a pending run measured on more seeds
    results: list[RunRecord] = field(default_factory=list)  # each finished seed, classified
    measured: bool = False  # the current execution's result is in results
    info: dict[str, object] = field(default_factory=dict)  # what the slot's file says about the run

    @property
    def record(self) -> RunRecord:
        return self.candidate.record

    @property
    def process(self) -> Execution:
        """The current seed's process (the run must have been launched)."""
        if self.execution is None:
            raise StateError(f"run {self.record.id} has not been launched yet.")
        return self.execution


class Lab:
    """One repository, one run tag."""

    def __init__(self, root: Path, config: Config, runner: Runner | None = None, spares: bool = False) -> None:
        """spares: start each slot's next run process ahead of it (a long-lived server; server/run/spares.py)."""
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
        self.spares: Spares | None = None
        if spares and spares_usable(config, self.runner):

            def build(folders: tuple[Path, Path, Path, Path], token: str, device: str | None) -> RunSpec:
                return run_spec(self.config, self.places, folders, 0, token, device)

            self.spares = Spares(self.places, [*config.locked, CONFIG_NAME], build)
        self._ignore_state_dir()
        try:  # clean up after a server that died mid-run, unless another live server holds the lock
            with self.lock.hold("recover") as held:
                self._recover(held)
        except BusyError:
            pass

    @contextmanager
    def _hold(self, op: str) -> Iterator[Held]:
        """The repository lock for a changing operation, with the tag started and any dead run recovered.

        The tag starts on the first change, not at start-up, so health checks (`claude mcp list`, an
        inspector listing tools) never create branches or move HEAD."""
        with self.lock.hold(op, wait=SHORT_WAIT_S) as held:
            self._recover(held)
            self._start_tag()
            yield held

    # -- set-up and recovery ------------------------------------------------------------------------------

    def _ignore_state_dir(self) -> None:
        """Keep the state folder out of `git status` without touching the user's .gitignore."""
        if not Path(self.config.state_dir).is_absolute():  # else outside the tree (the demo's shared state)
            gitops.exclude(self.repo, self.config.state_dir)

    def _recover(self, held: Held) -> None:
        """A run whose slot's owner died (or, from an older version, left in the repository lock): kill what is
        left of it and record it interrupted. Runs whose owner lives are left alone, in this process or another."""
        self.history.runs(repair=True)
        left = [*self.slots.sweep(), *([held.stale] if held.stale.get("op") == "run" else [])]
        for stale in left:
            if stale.get("token"):
                killed = kill_by_token(str(stale["token"]))
                log.warning("recovered run %s of a dead owner; killed %d process(es)", stale.get("run_id"), killed)
        flying = self.slots.live()
        if any("unreadable" in info for info in flying):
            return  # a slot being rewritten: which run it holds is unknown, so nothing is recorded interrupted now
        live = {int(info["run_id"]) for info in flying if info.get("tag") == self.config.tag
                and isinstance(info.get("run_id"), int)}  # fmt: skip
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

    # -- the editable file ------------------------------------------------------------------------------

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

    # -- runs ---------------------------------------------------------------------------------------------

    def awaiting(self) -> list[RunRecord]:
        """Finished runs that went well and await keep or discard, oldest first."""
        return [r for r in self.history.runs() if r.status == "ok" and r.decision is None]

    def pending(self) -> RunRecord | None:
        """The latest run of the working file (a draft run) if it finished well and awaits keep or discard."""
        drafts = [r for r in self.history.runs() if r.source == "draft" and r.status != "running"]
        last = drafts[-1] if drafts else None
        return last if last and last.status == "ok" and last.decision is None else None

    def in_flight(self) -> list[dict[str, Any]]:
        """The runs of this tag in flight now, as their slots describe them (this process's and others')."""
        return [info for info in self.slots.live() if info.get("tag") == self.config.tag]

    def best(self) -> RunRecord | None:
        return best_run(self.history.runs())

    def _refuse_if_pending(self, action: str) -> None:
        run = self.pending()
        if run is not None:
            raise StateError(
                f"run {run.id} ({run.description!r}) finished with {self.config.metric} {run.metric} and awaits "
                f"a decision; call keep or discard before {action}."
            )

    def _refuse_draft_in_flight(self) -> None:
        """One run of the working file at a time: its decision puts the file back. Edits run in parallel."""
        drafts = {r.id for r in self.history.runs() if r.status == "running" and r.source == "draft"}
        for info in self.in_flight():
            if info.get("run_id") in drafts:
                raise BusyError(f"busy: {run_in_flight(info)}, a run of train.py; wait for it with get_history("
                                f"wait_for=[{info['run_id']}]), or meanwhile start candidates with "
                                "run_experiment(edits=...).")  # fmt: skip

    def start_run(
        self,
        description: str,
        repeats: int | None = None,
        data: bytes | None = None,
        hypothesis: str | None = None,
        duplicate_reason: str | None = None,
        edits: list[Edit] | None = None,
        rebase: int | None = None,
        launch_now: bool = True,
    ) -> ActiveRun:
        """Take a slot, commit the candidate, export it as a snapshot and start its first seed. The repository
        lock is held only while the candidate is committed and recorded; the slot until the run is recorded.

        The candidate is the working file (a draft run; data replaces it), or `edits` applied to the best's
        code, or with `rebase` an earlier run's edits merged onto the current best (that run is discarded).
        repeats: seeds to run (seed, seed+1, ...); by default the tag's first run (no kept run yet) runs
        noise_seeds of them and later runs one. With repeats, a pending draft run whose code is the file's is
        measured on that many more seeds instead. Code identical to an earlier run's, or to a run in flight, is
        refused unless duplicate_reason says why to run it again. launch_now=False leaves the launch to the
        run's owner (a supervisor process)."""
        if edits:
            self._new_content(None, edits, self.kept_content())  # bad edits are refused before anything changes
        with self.lock.hold("start", wait=SHORT_WAIT_S) as held:
            active = self._start_locked(description, repeats, data, held, hypothesis, duplicate_reason, edits, rebase)
        if launch_now:
            try:
                self.launch_seed(active)
            except BaseException:
                self.finish_run(active, cancelled=True)
                raise
        return active

    def _start_locked(
        self,
        description: str,
        repeats: int | None,
        data: bytes | None,
        held: Held,
        hypothesis: str | None = None,
        duplicate_reason: str | None = None,
        edits: list[Edit] | None = None,
        rebase: int | None = None,
    ) -> ActiveRun:
        self._recover(held)
        self._refuse_unprepared()  # before the tag starts: a refused run changes nothing
        self._start_tag()
        self._refuse_after_caps()
        pinned = pins.load_pins(self.pins_path)
        pins.check(pinned, self.root, self.config.tag)
        source: Literal["draft", "edits", "rebase"] = "draft"
        rebased: RunRecord | None = None
        if rebase is not None:
            rebased = self._rebasable(rebase)
            data, source = self._rebased_code(rebased), "rebase"
        elif edits:
            data, source = self._new_content(None, edits, self.kept_content())[1], "edits"
        elif data is None:
            data = self.editable_path.read_bytes() if self.editable_path.exists() else b""
        if source == "draft":
            pending = self.pending()
            if pending is not None and repeats is not None and data == self._code(pending.commit):
                return self._extend(pending, repeats, pinned)
            self._refuse_if_pending("run_experiment")
            self._refuse_draft_in_flight()
        parent = self._expected_tip()
        code = fingerprint(data.decode("utf-8", "replace"))
        if self.config.refuse_duplicates and not (duplicate_reason or "").strip():
            self._refuse_duplicate(code)
        best = self.best()
        count = repeats or (self.config.noise_seeds if best is None else 1)
        seeds = [self.config.seed + i for i in range(count)]
        slot = self._take_slot()
        try:
            record = RunRecord(id=self.history.next_id(), commit=parent, parent=parent, description=description,
                               best_before=best.metric if best else None, seed=seeds[0],
                               settings=self._settings(), fingerprint=code, hypothesis=hypothesis or None,
                               duplicate_reason=(duplicate_reason or "").strip() or None, source=source,
                               rebased_from=rebased.id if rebased else None, slot=slot.index)  # fmt: skip
            candidate = make_candidate(self.repo, self.config, self.history, record, data, pinned)
            candidate = dataclasses.replace(candidate, slot=slot.index, device=slot.device)
            active = self._active(candidate, seeds[1:], None, slot)
            self.history.record(candidate.record, "start")
            if rebased is not None:
                self.history.decide(rebased.id, "discard", lesson=f"re-run on the new best as run {record.id}")
            return active
        except BaseException:
            slot.release()
            raise

    def _take_slot(self) -> Slot:
        slot, stale = self.slots.take()
        if stale.get("token"):  # a dead owner's run: its processes go before a new run starts in its place
            killed = kill_by_token(str(stale["token"]))
            log.warning("slot %d: killed %d process(es) of run %s of a dead owner", slot.index, killed,
                        stale.get("run_id"))  # fmt: skip
            run = self.history.get(stale["run_id"]) if isinstance(stale.get("run_id"), int) else None
            if run is not None and run.status == "running" and stale.get("tag") == self.config.tag:
                self._interrupt(run)  # its owner let the slot go only by dying (it died since the recovery)
        return slot

    def _extend(self, pending: RunRecord, repeats: int, pinned: dict[str, str]) -> ActiveRun:
        """A near miss measured on `repeats` more seeds, continuing after its last one."""
        done = pending.repeats or []
        last = max([s.seed for s in done] + [pending.seed if pending.seed is not None else self.config.seed])
        seeds = [last + 1 + i for i in range(repeats)]
        slot = self._take_slot()
        try:
            first = Candidate(pending, self.history.run_dir(pending.id), pinned, slot=slot.index, device=slot.device)
            candidate = repeat(self.repo, self.config, first, pending.seeds, seeds[0])
            return self._active(candidate, seeds[1:], pending, slot)
        except BaseException:
            slot.release()
            raise

    def _active(self, candidate: Candidate, seeds_left: list[int], base: RunRecord | None, slot: Slot) -> ActiveRun:
        """The run as its slot describes it: for the busy message, the live views and recovery."""
        record = candidate.record
        deadline = time.time() + self.config.hard_timeout * (1 + len(seeds_left))
        info = {"tag": self.config.tag, "run_id": record.id, "token": candidate.token,
                "description": record.description, "started_at": time.time(), "deadline": deadline,
                "budget": self.config.time_budget, "log": str(candidate.log), "source": record.source}  # fmt: skip
        slot.describe(info)
        return ActiveRun(candidate, None, slot, deadline, None, seeds_left, base, info=info)

    def launch_seed(self, active: ActiveRun) -> None:
        """Start the current seed's process (in the slot's spare when there is one) and, where the runner
        allows, its evaluator beside it; the slot's next spare starts now, its imports in what the run leaves
        idle."""
        slot = active.slot
        spare = self.spares.take(slot.index) if self.spares is not None else None
        if spare is not None:  # the spare's processes carry its token: recovery must find them by it
            active.candidate = dataclasses.replace(active.candidate, token=spare.token)
            active.info["token"] = spare.token
        slot.describe({**active.info, "log": str(active.candidate.log), "seed": active.candidate.record.seed})
        active.execution = launch(self.runner, self.config, self.places, active.candidate, spare)
        active.warm = start_warm(self.repo, self.runner, self.config, self.places, active.candidate)
        active.measured = False
        if self.spares is not None and isinstance(active.execution, LocalExecution):
            self.spares.prepare(slot.index, slot.device)

    def close(self) -> None:
        """Stop what this Lab keeps running between runs: its spares, and git's helper processes."""
        if self.spares is not None:
            self.spares.close()
        self.repo.close()

    def _rebasable(self, run_id: int) -> RunRecord:
        run = self.history.get(run_id)
        if run is None:
            raise InvalidInputError(f"there is no run {run_id} to rebase; get_history lists the runs.")
        if run.decision is not None or run.status == "running":
            done = "kept" if run.decision == "keep" else "discarded"
            what = "is still running" if run.status == "running" else f"was already {done}"
            raise StateError(f"run {run_id} {what}; rebase re-runs an undecided run whose best moved.")
        if run.parent == self.tip():
            raise StateError(f"run {run_id} already started from the current best; keep or discard it instead.")
        return run

    def _rebased_code(self, run: RunRecord) -> bytes:
        """The run's change (its code against its parent's) merged onto the current best's code."""
        merged = merge3(self._code(run.parent), self._code(self.tip()), self._code(run.commit))
        if merged is None:
            raise StateError(f"run {run.id}'s edits conflict with the changes kept since it started; discard it "
                             "and write the idea again against the current best (read_train).")  # fmt: skip
        return validate_source(merged.decode("utf-8", "replace"), self.config.editable, self.config.max_file_bytes)

    def _code(self, commit: str) -> bytes:
        return gitops.blob(self.repo, commit, self.config.editable) or b""

    def _refuse_duplicate(self, code: str) -> None:
        """The same code (comments and formatting aside) as an earlier run, or one in flight: its result is
        known, or soon will be."""
        runs = self.history.runs()
        flying = [r for r in runs if r.fingerprint == code and r.status == "running"]
        if flying:
            first = flying[0]
            raise DuplicateError(f"train.py is the same code as run {first.id} ({first.description!r}), which is "
                                 "running now; wait for its result with get_history(wait_for=[its id]).")  # fmt: skip
        done = [r for r in runs if r.fingerprint == code and r.status not in UNFINISHED]
        if not done:
            return
        run = done[-1]
        result = f"{self.config.metric} {run.metric:.6f}" if run.metric is not None else f"{run.status}"
        outcome = {"keep": "kept", "discard": "discarded"}.get(run.decision or "", "undecided")
        raise DuplicateError(
            f"train.py is the same code as run {run.id} ({run.description!r}: {result}, {outcome}); change "
            "something, or pass duplicate_reason to run it again on purpose (e.g. to re-measure it)."
        )

    def _refuse_after_caps(self) -> None:
        """A reached cap or the human's stop ends the night here, before anything changes."""
        reason = caps.reached(self.config, self.history.runs(), self.state)
        if reason is not None:
            caps.end_night(self.state, reason)
            raise NightOverError(f"the night is over: {reason}. Do not start more experiments; decide any run "
                                 "that awaits a decision, say in one sentence why you stop, and stop.")  # fmt: skip

    def _settings(self) -> dict[str, object]:
        """What every run records about the rules it ran under."""
        config = self.config
        return {"time_budget": config.time_budget, "sandbox": config.sandbox, "contract": config.contract,
                "network": config.network, "overrides": dict(config.overrides),
                "slots": config.slot_count}  # fmt: skip

    def _refuse_unprepared(self) -> None:
        """The evaluated contract needs the prepared dataset; refuse before anything changes."""
        if not self.config.evaluated:
            return
        missing = [name for name in self.config.train_files if not (self.places.data / name).exists()]
        if missing:
            raise StateError(
                f"the dataset {self.places.data} is not prepared ({missing[0]} is missing); the human must run "
                "`autoresearch prepare` before any experiment can run: stop and tell them."
            )

    def advance(self, active: ActiveRun) -> bool:
        """Measure the seed that ended (waiting for it); start the next seed if this one went well and one is
        left. False when the run has no seed left to run: call finish_run."""
        if not active.measured:
            active.results.append(self._measure(active, cancelled=False))
        if active.results[-1].status != "ok" or not active.seeds_left:
            return False
        seed = active.seeds_left.pop(0)
        index = active.candidate.repeat + 1
        active.candidate = repeat(self.repo, self.config, active.candidate, index, seed)
        self.launch_seed(active)
        return True

    def _measure(self, active: ActiveRun, cancelled: bool) -> RunRecord:
        """Collect the current seed's run, take the server's measurements and classify them."""
        candidate = active.candidate
        if active.execution is None:  # never launched: its owner died first, or was cancelled before it
            active.measured = True
            reason = "cancelled before it started" if cancelled else "its owner never started it"
            return candidate.record.model_copy(update={"status": "cancelled", "reason": reason, "ended_at": now()})
        outcome = collect(active.execution, cancelled)
        changed = tampered(self.config, candidate, self.root, self.pins_path)
        more = bool(active.seeds_left) or active.base is not None  # keep will judge the seeds' mean

        def keepable(metric: float) -> bool:
            return self.may_keep(candidate.record, metric, more)

        measured = measure(self.repo, self.runner, self.config, self.places, candidate, outcome, changed,
                           active.warm, keepable)  # fmt: skip
        active.warm = None
        active.measured = True
        record = classify(candidate.record, measured, self.config)
        if getattr(active.execution, "spare", False):
            record = record.model_copy(update={"warm_start": True})
        cleanup(candidate, refused=record.status == "bad_model")  # before recording: the disk may be what failed
        return record

    def may_keep(self, run: RunRecord, metric: float, more_seeds: bool) -> bool:
        """Whether a keep could take a run whose first seed scored `metric` without force: then the holdout is
        scored with its evaluation, and the keep finds it ready. With more seeds to come (or a pending run's
        seeds to combine), keep judges their mean, so any gain on the best may do; a run of one seed must
        pass the keep gate itself (beyond the noise band), else its holdout would be scored for nothing."""
        best = self.best()
        if best is None or best.metric is None or more_seeds:
            return self.config.better(metric, best.metric if best else None)
        return self.judge(run.model_copy(update={"status": "ok", "metric": metric, "repeats": []})).beyond

    def finish_run(self, active: ActiveRun, cancelled: bool = False) -> RunRecord:
        """Run what is left of the seeds (or kill the current one when cancelled), combine them into the run's
        record, record it under the repository lock, free the slot."""
        try:
            if cancelled and not active.measured:
                active.results.append(self._measure(active, cancelled=True))
            while not cancelled and self.advance(active):
                pass
            record = combine(active.base, active.results)
            with self.lock.hold("record", wait=RECORD_WAIT_S):
                record_end(self.repo, self.config, self.history, record)
            return record
        finally:
            if active.warm is not None:
                active.warm.execution.kill("cancelled")  # an evaluator never released
            cleanup(active.candidate, refused=bool(active.results) and active.results[-1].status == "bad_model")
            active.slot.release()
            if self.spares is not None:  # started with the run, else now
                self.spares.prepare(active.slot.index, active.slot.device)

    def drive(self, active: ActiveRun) -> RunRecord:
        """Run a started run's seeds to the end, blocking; cancelled (killed and recorded) on any interruption."""
        try:
            if active.execution is None:
                self.launch_seed(active)
            while True:
                while active.execution is not None and active.execution.wait(1.0) is None:
                    pass
                if not self.advance(active):
                    break
        except BaseException:
            self.finish_run(active, cancelled=True)
            raise
        return self.finish_run(active)

    def run(self, description: str, repeats: int | None = None, data: bytes | None = None, **kw: object) -> RunRecord:
        """Start a run and block until its seeds end (the CLI and tests; the MCP tool adds progress)."""
        return self.drive(self.start_run(description, repeats, data, **kw))  # type: ignore[arg-type]

    def detach(self, active: ActiveRun) -> RunRecord:
        """Hand a started (not yet launched) run to a supervisor process of its own, which outlives this one:
        a client whose server lives for one call (the Inspector's CLI) can start a run and collect it later."""
        return supervise.spawn(self, active)

    def wait_for(self, run_ids: list[int], seconds: float) -> list[RunRecord]:
        """The given runs once none is running any more, or as they stand after `seconds`."""
        known = {r.id for r in self.history.runs()}
        unknown = [i for i in run_ids if i not in known]
        if unknown:
            raise InvalidInputError(f"there is no run {unknown[0]}; get_history lists the runs.")
        give_up = time.monotonic() + seconds
        checked_owner = time.monotonic()
        while True:
            runs = {r.id: r for r in self.history.runs()}
            waited = [runs[i] for i in run_ids]
            if all(r.status != "running" for r in waited) or time.monotonic() >= give_up:
                return waited
            if time.monotonic() - checked_owner > 5.0:  # an owner that died leaves its run running forever
                checked_owner = time.monotonic()
                flying = {info.get("run_id") for info in self.in_flight()}
                if any(r.status == "running" and r.id not in flying for r in waited):
                    with contextlib.suppress(BusyError), self.lock.hold("recover", wait=1.0) as held:
                        self._recover(held)
            time.sleep(0.25)

    def remeasure(self, seeds: int | None = None) -> RunRecord:
        """The noise floor measured again: the best run's code on `seeds` seeds, kept as the new best (its code
        is the best's, so the run branch does not change)."""
        best = self._require_best()
        count = seeds or max(2, self.config.noise_seeds)
        description = f"noise floor: run {best.id}'s code on {count} seeds"
        run = self.run(description, repeats=count, data=self._code(self.tip()))
        return self.keep(run.id) if run.status == "ok" else run

    def _require_best(self) -> RunRecord:
        best = self.best()
        if best is None:
            raise StateError("there is no kept run yet; the tag's first run (the baseline) measures the noise floor.")
        return best

    def judge(self, run: RunRecord) -> noise.Judgement:
        """The keep gate's verdict on a finished run against the current best."""
        runs, config = self.history.runs(), self.config
        return noise.judge(run, best_run(runs), noise.floor_run(runs), config.direction, config.min_improvement,
                           config.confidence)  # fmt: skip

    def floor(self) -> noise.Floor | None:
        runs = self.history.runs()
        return noise.floor_of(runs, best_run(runs), self.config.confidence)

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

    # -- decisions ------------------------------------------------------------------------------------------

    def _decidable(self, run_id: int | None) -> RunRecord:
        """The run a decision is about: the one named, else the latest run if it finished undecided, else the
        one finished run that went well and awaits a decision."""
        runs = self.history.runs()
        if not runs:
            raise StateError("there are no runs yet; call run_experiment first.")
        if run_id is not None:
            run = next((r for r in runs if r.id == run_id), None)
            if run is None:
                raise StateError(f"run {run_id} is not a known run; runs go from 1 to {runs[-1].id}.")
        else:
            last = runs[-1]
            waiting = [r.id for r in self.awaiting()]
            if len(waiting) > 1:
                named = ", ".join(str(i) for i in waiting)
                raise StateError(f"runs {named} await a decision; give run_id to say which one.")
            run = last if last.status != "running" and last.decision is None else None
            run = run or (self.history.get(waiting[0]) if waiting else None) or last
        if run.status == "running":
            raise StateError(f"run {run.id} is still running; wait for it with get_history(wait_for=[{run.id}]).")
        if run.decision is not None:
            done = "kept" if run.decision == "keep" else "discarded"
            raise StateError(f"nothing to decide: run {run.id} was already {done}; run a new experiment first.")
        return run

    def _keepable(self, run: RunRecord, force: bool, reason: str | None) -> tuple[noise.Judgement, str | None]:
        """Refuse a keep that cannot be: a failed run, force without a reason, a gain inside the noise, a best
        that moved since the run started. The gate's verdict, and the reason a keep is forced (if it is)."""
        if run.status != "ok" or run.metric is None:
            raise StateError(f"run {run.id} ended as {run.status} ({run.reason}) and can never be kept; "
                             f"call discard, or fix train.py and run again.")  # fmt: skip
        if force and not (reason or "").strip():
            raise InvalidInputError("keep with force=true needs a reason (e.g. 'equal result, simpler code').")
        verdict = self.judge(run)
        tip = self.tip()
        # the best's code again on several seeds: the noise floor re-measured, kept without a gate
        same = self.best() is not None and run.seeds > 1 and self._code(run.commit) == self._code(tip)
        if run.parent != tip and tip != run.commit:  # tip == commit: an earlier keep died before recording
            best = self.best()
            now_best = f"run {best.id}, {best.metric:.6f}" if best and best.metric is not None else tip[:7]
            raise StateError(f"the best moved since run {run.id} started (it is now {now_best}), so run {run.id} "
                             f"was measured against an older best; call run_experiment with rebase={run.id} to "
                             "run its edits on the new best in one call, or discard it.")  # fmt: skip
        if not force and not same and not verdict.beyond:
            raise StateError(self._inside_noise(run, verdict))
        if same and not force:
            return verdict, f"the best's code on {run.seeds} seeds: the noise floor re-measured"
        return verdict, reason if force else None

    def keep(
        self, run_id: int | None = None, force: bool = False, reason: str | None = None, lesson: str | None = None
    ) -> RunRecord:
        """Advance the run branch to the run's commit if it beats the best it started from (or force with a
        reason). The holdout is scored before the repository lock is taken; the decision itself is short."""
        run = self._decidable(run_id)  # nothing to decide is refused before the tag starts: nothing changes
        self._keepable(run, force, reason)
        holdout, note = score_holdout(self.repo, self.runner, self.config, self.places, self.history, run)
        with self._hold("keep"):
            run = self._decidable(run.id)  # again: another process may have decided it, or moved the best
            verdict, forced = self._keepable(run, force, reason)
            self._require_checkout()
            tip = self.tip()
            if self.current_content().encode() in (self._code(tip), self._code(run.commit)):
                self._sync_editable(run.commit)  # first: it is what fails (index.lock), not the ref
            if tip != run.commit:
                gitops.update_ref(self.repo, f"refs/heads/{self.branch}", run.commit, tip)
            self.history.decide(run.id, "keep", forced, required_gain=verdict.required, beyond_noise=verdict.beyond,
                                holdout_metric=holdout, holdout_note=note, lesson=lesson)  # fmt: skip
            return self.history.get(run.id) or run

    def _inside_noise(self, run: RunRecord, verdict: noise.Judgement) -> str:
        gain = verdict.gain or 0.0
        what = "is not better than the best" if gain <= 0 else "gains less than the noise band"
        how = (f"{self.config.confidence:.0%} one-sided t-test, {verdict.n_candidate} seed(s) against the best's "
               f"{verdict.n_best}" if verdict.band > 0 else "min_improvement; no noise floor measured")  # fmt: skip
        more = "run_experiment with repeats=N to measure it on more seeds, " if verdict.near_miss else ""
        return (f"run {run.id} ({run.metric:.6f}) {what} ({gain:+.6f}; the gate needs more than "
                f"{verdict.required:.6f}: {how}); {more}call discard, or keep with force=true and a reason if the "
                "code is simpler and the result equal.")  # fmt: skip

    def discard(self, run_id: int | None = None, lesson: str | None = None) -> RunRecord:
        """Reject a finished run; the working file returns to the best's code if it holds the run's code (a draft
        written since, or a candidate run from edits, is left alone)."""
        self._decidable(run_id)
        with self._hold("discard"):
            run = self._decidable(run_id)
            if self.current_content().encode() == self._code(run.commit):
                self._sync_editable(self.tip())
            verdict = self.judge(run) if run.status == "ok" else None
            self.history.decide(run.id, "discard", required_gain=verdict.required if verdict else None,
                                beyond_noise=verdict.beyond if verdict else None, lesson=lesson)  # fmt: skip
            if run.status != "bad_model":  # a refused model is the evidence of why; any other is not needed
                shutil.rmtree(self.history.run_dir(run.id) / "out", ignore_errors=True)
            return self.history.get(run.id) or run

    def _sync_editable(self, commit: str) -> None:
        self._require_checkout()
        gitops.sync_worktree_file(self.repo, commit, self.config.editable)

    def _require_checkout(self) -> None:
        """The editable file in the working tree is the run branch's only while the branch is checked out."""
        if self.repo.head.is_detached or gitops.current_branch(self.repo) != self.branch:
            raise RepoError(f"the checkout left {self.branch}; run `git switch {self.branch}` and retry.")
