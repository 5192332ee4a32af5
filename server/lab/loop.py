"""The lab: one repository and one run tag, as the faces (app.py, cli.py, the supervisor) use it.

Lab is built in layers, one module each, every layer a class over the one below:

    tag.py     Tag           the branch, pins, editable file, history, slots; recovery after a dead owner
    start.py   StartPolicy   which candidate and seeds a run starts with, and every refusal before it starts
    seeds.py   SeedLoop      the seeds from launch to record: the one drive loop, with a progress callback
    loop.py    Lab           the decisions: keep (through the gate and the holdout) and discard

The keep gate itself is pure functions (gate.py over noise.py). Nothing here knows about MCP.
"""

from __future__ import annotations

import shutil

from server.errors import InvalidInputError, StateError
from server.lab import gate, noise, reuse
from server.lab.seeds import SeedLoop
from server.lab.start import ActiveRun, RunRequest
from server.run.holdout import previous_kept, score_holdout
from server.run.outcome import starved_words
from server.store import gitops
from server.store.history import RunRecord

__all__ = ["ActiveRun", "Lab", "RunRequest"]


class Lab(SeedLoop):
    """One repository, one run tag: set-up and recovery, runs, and keep/discard decisions."""

    holdout_rng = reuse.system_rng()  # the holdout gate's noise (tests may set their own)

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
        if "starved" in run.flags and not force:
            raise StateError(f"run {run.id} was starved ({starved_words(run)}): its result says nothing about "
                             "the idea. Discard it and run the same code again (it is not refused as a "
                             "duplicate).")  # fmt: skip
        verdict = self.judge(run)
        tip = self.tip()
        best = self.best()
        # the best's program again (renamed names and comments aside): never an improvement on itself; on
        # several seeds it is the noise floor re-measured, kept without a gate
        twin = best is not None and best.id != run.id and bool(run.fingerprint) and run.fingerprint == best.fingerprint
        same = run.seeds > 1 and (twin or (best is not None and self._code(run.commit) == self._code(tip)))
        if best is not None and twin and not same and not force:
            raise StateError(f"run {run.id} is the same program as the best, run {best.id} (names, comments and layout "
                             "aside), so it is not better than it; call discard (or run it with repeats=2 or more to "
                             "re-measure the noise floor).")  # fmt: skip
        if run.parent != tip and tip != run.commit:  # tip == commit: an earlier keep died before recording
            best = self.best()
            now_best = f"run {best.id}, {best.metric:.6f}" if best and best.metric is not None else tip[:7]
            raise StateError(f"the best moved since run {run.id} started (it is now {now_best}), so run {run.id} "
                             f"was measured against an older best; call run_experiment with rebase={run.id} to "
                             "run its edits on the new best in one call, or discard it.")  # fmt: skip
        if not force and not same and not verdict.beyond:
            raise StateError(gate.inside_noise(run, verdict, self.config))
        if same and not force:
            return verdict, f"the best's code on {run.seeds} seeds: the noise floor re-measured"
        return verdict, reason if force else None

    def keep(
        self, run_id: int | None = None, force: bool = False, reason: str | None = None, lesson: str | None = None
    ) -> RunRecord:
        """Advance the run branch to the run's commit if it beats the best it started from (or force with a
        reason). The holdout is scored before the repository lock is taken; the decision itself is short."""
        run = self._decidable(run_id)  # nothing to decide is refused before the tag starts: nothing changes
        verdict, forced = self._keepable(run, force, reason)
        holdout, note = score_holdout(self.context, self.history, run)
        answer = self._holdout_answer(run, holdout, verdict.required, remeasured=bool(forced) and not force)
        if answer is not None and not answer.holds:
            if not force:
                raise StateError(f"run {run.id}'s validation gain ({answer.val_gain:+.6f} on the previous kept run) "
                                 "does not hold on the holdout, the split no run and no agent sees: it fell short by "
                                 f"more than the noise band ({answer.threshold:.6f}), so the gain is likely fitted to "
                                 "the validation data rather than learnt. Call discard, or keep with force=true and "
                                 "a reason (the history and the morning report will say it was forced past the "
                                 "holdout).")  # fmt: skip
            note = "forced past the holdout gate: " + (note or "its validation gain did not hold on the holdout")
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

    def _holdout_answer(
        self, run: RunRecord, holdout: float | None, threshold: float, remeasured: bool
    ) -> reuse.Answer | None:
        """The holdout's Thresholdout answer for this run (drawn once, kept in the dataset's ledger), or None
        where the holdout does not gate: off, no figure, no earlier kept run scored on it, the best's own code
        re-measured, or the dataset's budget of disagreements spent (the limits say so)."""
        if not (self.config.holdout and self.config.holdout_gate) or holdout is None or remeasured:
            return None
        previous = previous_kept(self.history.runs(), run.id)
        val_before, val_now = (previous.primary_metric if previous else None), run.primary_metric
        if previous is None or previous.holdout_metric is None or val_before is None or val_now is None:
            return None
        ledger = self.holdout_ledger()
        found = ledger.find(self.config.tag, run.id)
        if found is not None or ledger.spent() >= self.config.holdout_budget:
            return found
        sign = 1.0 if self.config.direction == "minimize" else -1.0
        answer = reuse.thresholdout(sign * (val_before - val_now), sign * (previous.holdout_metric - holdout),
                                    threshold, self.holdout_rng, self.config.tag, run.id)  # fmt: skip
        ledger.add(answer)
        return answer

    def holdout_ledger(self) -> reuse.Ledger:
        return reuse.Ledger(reuse.ledger_path(self.places.state, self.places.data))

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

    def remeasure(self, seeds: int | None = None) -> RunRecord:
        """The noise floor measured again: the best run's code on `seeds` seeds, kept as the new best (its code
        is the best's, so the run branch does not change)."""
        best = self._require_best()
        count = seeds or max(2, self.config.noise_seeds)
        description = f"noise floor: run {best.id}'s code on {count} seeds"
        run = self.run(description, repeats=count, data=self._code(self.tip()))
        return self.keep(run.id) if run.status == "ok" else run
