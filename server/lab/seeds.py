"""The seed loop: launch a run's seeds one after another (in the slot's spare when there is one), measure each
through run/pipeline, combine them and record the run; the one drive loop every face uses; waiting for runs
owned elsewhere. A measurement never asks the decider: the holdout bar comes in as a number (lab/gate).

May import what start.py may, and run/spares.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.config import CONFIG_NAME, Config
from server.errors import BusyError, InvalidInputError
from server.lab import gate
from server.lab.start import ActiveRun, RunRequest, StartPolicy
from server.run.outcome import classify
from server.run.pipeline import (
    cleanup,
    collect,
    combine,
    launch,
    measure,
    record_end,
    repeat,
    run_spec,
    start_warm,
    tampered,
)
from server.run.runner import LocalExecution, Runner, RunSpec
from server.run.spares import Spares
from server.run.spares import usable as spares_usable
from server.store.history import RunRecord, now

RECORD_WAIT_S = 600.0  # a run's end waits this long for the repository: a result is never dropped for a busy lock
OnProgress = Callable[[ActiveRun], None]


class SeedLoop(StartPolicy):
    """The tag, its start policy, and the runs' seeds from launch to record."""

    def __init__(self, root: Path, config: Config, runner: Runner | None = None, spares: bool = False) -> None:
        """spares: start each slot's next run process ahead of it (a long-lived server; server/run/spares.py)."""
        super().__init__(root, config, runner)
        self.spares: Spares | None = None
        if spares and spares_usable(config, self.runner):

            def build(folders: tuple[Path, Path, Path, Path], token: str, device: str | None) -> RunSpec:
                return run_spec(self.config, self.places, folders, 0, token, device)

            self.spares = Spares(self.places, [*config.locked, CONFIG_NAME], build)

    def close(self) -> None:
        """Stop what this Lab keeps running between runs: its spares, and git's helper processes."""
        if self.spares is not None:
            self.spares.close()
        super().close()

    def launch_seed(self, active: ActiveRun) -> None:
        """Start the current seed's process (in the slot's spare when there is one) and, where the runner
        allows, its evaluator beside it; the slot's next spare starts now, its imports in what the run leaves
        idle."""
        slot = active.slot
        spare = self.spares.take(slot.index) if self.spares is not None else None
        if spare is not None:  # the spare's processes carry its token: recovery must find them by it
            active.candidate = dataclasses.replace(active.candidate, token=spare.token)
            active.info = active.info.replace(token=spare.token)
        slot.describe(active.info.replace(log=str(active.candidate.log), seed=active.candidate.record.seed))
        active.execution = launch(self.context, active.candidate, spare)
        active.warm = start_warm(self.context, active.candidate)
        active.measured = False
        if self.spares is not None and isinstance(active.execution, LocalExecution):
            self.spares.prepare(slot.index, slot.device)

    def advance(self, active: ActiveRun) -> bool:
        """Measure the seed that ended (waiting for it); start the next seed if this one went well and one is
        left. False when the run has no seed left to run: call finish_run."""
        if not active.measured:
            active.results.append(self._measure(active, cancelled=False))
        if active.results[-1].status != "ok" or not active.seeds_left:
            return False
        seed = active.seeds_left.pop(0)
        index = active.candidate.repeat + 1
        active.candidate = repeat(self.context, active.candidate, index, seed)
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
        bar = gate.holdout_bar(self.history.runs(), self.config, more)  # decided before measuring, as a number
        runs = self.history.runs()
        reference = gate.baseline([r for r in runs if r.id != candidate.record.id])
        measured = measure(self.context, candidate, outcome, changed, active.warm, bar, reference)
        active.warm = None
        active.measured = True
        record = classify(candidate.record, measured, self.config)
        if getattr(active.execution, "spare", False):
            record = record.model_copy(update={"warm_start": True})
        cleanup(candidate, refused=record.status == "bad_model")  # before recording: the disk may be what failed
        return record

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
                record_end(self.context, self.history, record)
            return record
        finally:
            if active.warm is not None:
                active.warm.execution.kill("cancelled")  # an evaluator never released
            cleanup(active.candidate, refused=bool(active.results) and active.results[-1].status == "bad_model")
            active.slot.release()
            if self.spares is not None:  # started with the run, else now
                self.spares.prepare(active.slot.index, active.slot.device)

    def drive(self, active: ActiveRun, on_progress: OnProgress | None = None, every: float = 1.0) -> RunRecord:
        """The drive loop of one run, the only one (the MCP tool, the supervisor and the CLI's bar all use it):
        launch it if its owner has not, wait for each seed, measure it and start the next, then record the run
        and free its slot. While a seed runs, on_progress(active) is called every `every` seconds; whatever it
        raises (like any interruption: a signal, a cancelled request) cancels the run, which is killed and
        recorded cancelled before the exception goes on."""
        try:
            if active.execution is None:
                self.launch_seed(active)
            while True:
                while active.execution is not None and active.execution.wait(every) is None:
                    if on_progress is not None:
                        on_progress(active)
                if not self.advance(active):
                    break
        except BaseException:
            self.finish_run(active, cancelled=True)
            raise
        return self.finish_run(active)

    def start(self, request: RunRequest, launch_now: bool = True) -> ActiveRun:
        """Begin the run (StartPolicy.begin) and launch its first seed; launch_now=False leaves the launch to
        the run's owner (a supervisor process, server/lab/supervise.py)."""
        active = self.begin(request)
        if launch_now:
            try:
                self.launch_seed(active)
            except BaseException:
                self.finish_run(active, cancelled=True)
                raise
        return active

    def start_run(self, description: str, launch_now: bool = True, **fields: Any) -> ActiveRun:
        """start() with the request's fields as keywords (the CLI and tests)."""
        return self.start(RunRequest(description, **fields), launch_now)

    def run(self, description: str, **fields: Any) -> RunRecord:
        """Start a run and block until its seeds end (the CLI and tests)."""
        return self.drive(self.start(RunRequest(description, **fields)))

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
                flying = {info.run_id for info in self.in_flight()}
                if any(r.status == "running" and r.id not in flying for r in waited):
                    with contextlib.suppress(BusyError), self.lock.hold("recover", wait=1.0) as held:
                        self._recover(held)
            time.sleep(0.25)
