"""The start policy: which candidate a run starts from (the working file, edits to the best, a rebase), which
seeds it runs, and every refusal before anything changes (a pending decision, a draft in flight, a duplicate,
a reached cap, an unprepared dataset). A started run is an ActiveRun holding its slot; seeds.py launches it.

May import what tag.py may, and lab/caps.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Literal

from server.errors import BusyError, DuplicateError, InvalidInputError, NightOverError, StateError
from server.lab import caps
from server.lab.edits import Edit, fingerprint, merge3, refuse_own_seeds, validate_source
from server.lab.tag import SHORT_WAIT_S, Tag
from server.run.pipeline import Candidate, Warm, make_candidate, repeat
from server.run.runner import Execution
from server.schema import SlotInfo
from server.store import pins
from server.store.history import RunRecord
from server.store.lock import Held
from server.store.registry import Slot

log = logging.getLogger("autoresearch")
UNFINISHED = ("running", "cancelled", "interrupted")  # runs whose code has no result yet


@dataclass(frozen=True)
class RunRequest:
    """What the agent (or the CLI, or a test) asks to run. Exactly one source: the working file (default; data
    replaces its bytes), edits to the best's code, or rebase=<run id>."""

    description: str
    repeats: int | None = None  # seeds to run; with a pending near miss and the file unchanged, seeds to add
    data: bytes | None = None
    hypothesis: str | None = None
    duplicate_reason: str | None = None  # run code identical to an earlier run's anyway: why
    edits: list[Edit] | None = None
    rebase: int | None = None


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
    info: SlotInfo = field(default_factory=SlotInfo)  # what the slot's file says about the run

    @property
    def record(self) -> RunRecord:
        return self.candidate.record

    @property
    def process(self) -> Execution:
        """The current seed's process (the run must have been launched)."""
        if self.execution is None:
            raise StateError(f"run {self.record.id} has not been launched yet.")
        return self.execution


class StartPolicy(Tag):
    """The tag, and how a run starts on it."""

    def begin(self, request: RunRequest) -> ActiveRun:
        """Take a slot, commit the candidate, export it as a snapshot and record the run as started; its first
        seed is not launched yet (SeedLoop.start does that). The repository lock is held only while the
        candidate is committed and recorded; the slot until the run is recorded.

        The candidate is the working file (a draft run; request.data replaces it), or request.edits applied to
        the best's code, or with request.rebase an earlier run's edits merged onto the current best (that run is
        discarded). request.repeats: seeds to run; by default the tag's first run (no kept run yet) runs
        noise_seeds of them and later runs one. With repeats, a pending draft run whose code is the file's is
        measured on that many more seeds instead. Code identical to an earlier run's, or to a run in flight, is
        refused unless request.duplicate_reason says why to run it again."""
        if request.edits:  # bad edits are refused before anything changes
            self._new_content(None, request.edits, self.kept_content())
        with self.lock.hold("start", wait=SHORT_WAIT_S) as held:
            return self._begin_locked(request, held)

    def _begin_locked(self, request: RunRequest, held: Held) -> ActiveRun:
        data, repeats, edits, rebase = request.data, request.repeats, request.edits, request.rebase
        duplicate_reason = request.duplicate_reason
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
            self._refuse_own_seeds(data)  # the file may have been written by other means than write_train
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
        first = self._next_seed(code)
        seeds = [first + i for i in range(count)]
        slot = self._take_slot()
        try:
            record = RunRecord(id=self.history.next_id(), commit=parent, parent=parent, description=request.description,
                               best_before=best.metric if best else None, seed=seeds[0],
                               settings=self._settings(), fingerprint=code, hypothesis=request.hypothesis or None,
                               duplicate_reason=(duplicate_reason or "").strip() or None, source=source,
                               rebased_from=rebased.id if rebased else None, slot=slot.index)  # fmt: skip
            candidate = make_candidate(self.context, self.history, record, data, pinned)
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
        if stale is not None and stale.token:  # a dead owner's run: its processes go before a new one starts
            killed = self.runner.sweep(stale.token)
            log.warning("slot %d: killed %d process(es) of run %s of a dead owner", slot.index, killed, stale.run_id)
            run = self.history.get(stale.run_id) if stale.run_id is not None else None
            if run is not None and run.status == "running" and stale.tag == self.config.tag:
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
            candidate = repeat(self.context, first, pending.seeds, seeds[0])
            return self._active(candidate, seeds[1:], pending, slot)
        except BaseException:
            slot.release()
            raise

    def _active(self, candidate: Candidate, seeds_left: list[int], base: RunRecord | None, slot: Slot) -> ActiveRun:
        """The run as its slot describes it: for the busy message, the live views and recovery."""
        record = candidate.record
        deadline = time.time() + self.config.hard_timeout * (1 + len(seeds_left))
        info = SlotInfo(tag=self.config.tag, run_id=record.id, token=candidate.token, description=record.description,
                        started_at=time.time(), deadline=deadline, budget=self.config.time_budget,
                        log=str(candidate.log), source=record.source)  # fmt: skip
        slot.describe(info)
        return ActiveRun(candidate, None, slot, deadline, None, seeds_left, base, info=info)

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

    def _next_seed(self, code: str) -> int:
        """The server's seed for a run of this code: the configured seed for new code (every idea is measured on
        the same seeds first), else the one after the last any run of the same program used, so a repeat adds
        evidence on fresh seeds (gate.evidence pools them) and never redraws the ones it has."""
        used = [seed for r in self.history.runs() if r.fingerprint == code
                for seed in [*(s.seed for s in r.repeats), *([r.seed] if r.seed is not None else [])]]  # fmt: skip
        return max(used) + 1 if used else self.config.seed

    def _refuse_own_seeds(self, data: bytes) -> None:
        if not self.config.editable.endswith(".py"):
            return
        try:
            refuse_own_seeds(data.decode("utf-8", "replace"), self.config.editable)
        except SyntaxError:
            return  # it will not run; the run's own log says why

    def _refuse_duplicate(self, code: str) -> None:
        """The same program (comments, formatting and its own names aside) as an earlier run, or one in flight:
        its result is known, or soon will be."""
        runs = self.history.runs()
        flying = [r for r in runs if r.fingerprint == code and r.status == "running"]
        if flying:
            first = flying[0]
            raise DuplicateError(f"train.py is the same code as run {first.id} ({first.description!r}), which is "
                                 "running now; wait for its result with get_history(wait_for=[its id]).")  # fmt: skip
        done = [r for r in runs if r.fingerprint == code and r.status not in UNFINISHED and "starved" not in r.flags]
        if not done:
            return
        run = done[-1]
        result = f"{self.config.metric} {run.metric:.6f}" if run.metric is not None else f"{run.status}"
        outcome = {"keep": "kept", "discard": "discarded"}.get(run.decision or "", "undecided")
        raise DuplicateError(
            f"train.py is the same code as run {run.id} ({run.description!r}: {result}, {outcome}); renamed "
            "names, comments and layout do not make new code. Change what it computes, or pass duplicate_reason to "
            f"measure it on more seeds: they are fresh ones, and the keep gate pools them with run {run.id}'s."
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

    def _refuse_draft_in_flight(self) -> None:
        """One run of the working file at a time: its decision puts the file back. Edits run in parallel."""
        drafts = {r.id for r in self.history.runs() if r.status == "running" and r.source == "draft"}
        for info in self.in_flight():
            if info.run_id in drafts:
                raise BusyError(f"busy: {info.describe()}, a run of train.py; wait for it with get_history("
                                f"wait_for=[{info.run_id}]), or meanwhile start candidates with "
                                "run_experiment(edits=...).")  # fmt: skip
