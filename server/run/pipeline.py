"""One run, as stages a reader can name, each a unit with its collaborators passed in as one RunContext:

    candidate   commit the file in a private index, pin-check and export the snapshot     (git, pins)
    repeat      the same commit again with the next seed, in fresh folders                (git)
    launch      start the run: sandboxed or in its own process group                      (runner, isolation)
    collect     wait for its end; what the server measured: clock marks, memory           (runner)
    hand-over   the model the run left in its output folder, or the exporter's reason     (evaluator)
    evaluate    the locked evaluator scores that model in a sandbox of its own            (evaluator)
    classify    status, metric and reason from the measurements, never from the run's word (outcome)
    combine     the seeds' results as one record: mean, sample std, each seed's metric   (history)
    record      the history event, results.tsv, the run's diff                            (history)

The lab (server/lab/) decides which candidate and whether to keep it; it never measures, and nothing here asks
it anything: what measuring needs from a decision (whether to score the holdout at once) comes in as a number.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import statistics
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import git

from server.config import CONFIG_NAME, Config
from server.run import spares
from server.run.evaluator import Evaluation, eval_spec, evaluate, handed_over, read_result, stage_locked
from server.run.isolation import Places, run_env, run_view, train_tokens
from server.run.outcome import Baseline, Measured, over_budget, timings
from server.run.runner import Execution, Outcome, Runner, RunSpec
from server.run.summary import MODEL_FILE, as_float
from server.store import gitops, pins
from server.store.history import History, RunRecord, SeedRun, atomic_write


@dataclass(frozen=True)
class RunContext:
    """What every stage works with: the repository, the runner, the configuration and the run's places."""

    repo: git.Repo
    runner: Runner
    config: Config
    places: Places


@dataclass
class Candidate:
    """A run's commit and the folders it runs in."""

    record: RunRecord
    run_dir: Path
    pinned: dict[str, str]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    repeat: int = 0  # the seed's place in the run: 0 keeps its model in out/ and its log in log.txt
    slot: int = 0  # the pool slot it runs in
    device: str | None = None  # the GPU its slot owns: the run and its evaluator see only that one

    @property
    def snapshot(self) -> Path:
        return self.run_dir / "tree"

    @property
    def output(self) -> Path:
        return self.run_dir / ("out" if self.repeat == 0 else f"out-{self.repeat}")

    @property
    def scratch(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def log(self) -> Path:
        return self.run_dir / ("log.txt" if self.repeat == 0 else f"log-{self.repeat}.txt")


def make_candidate(
    ctx: RunContext, history: History, record: RunRecord, data: bytes, pinned: dict[str, str]
) -> Candidate:
    """Commit data as the editable file on top of record.parent, keep the commit under its run ref, and
    export it as a fresh snapshot whose locked files are checked against their pins."""
    repo, config = ctx.repo, ctx.config
    message = f"autoresearch {config.tag} run {record.id}: {record.description}"
    commit = gitops.commit_file(repo, record.parent, config.editable, data, message)
    gitops.update_ref(repo, gitops.run_ref(config.tag, record.id), commit)
    candidate = Candidate(record.model_copy(update={"commit": commit}), history.run_dir(record.id), pinned)
    _fresh_folders(ctx, candidate)
    return candidate


def repeat(ctx: RunContext, candidate: Candidate, index: int, seed: int) -> Candidate:
    """The same commit again with another seed: a fresh snapshot (nothing a seed wrote carries over)."""
    record = candidate.record.model_copy(update={"seed": seed})
    again = dataclasses.replace(candidate, record=record, repeat=index)
    _fresh_folders(ctx, again)
    return again


def _fresh_folders(ctx: RunContext, candidate: Candidate) -> None:
    repo, config = ctx.repo, ctx.config
    for folder in (candidate.snapshot, candidate.output, candidate.scratch):
        shutil.rmtree(folder, ignore_errors=True)
    gitops.export_tree(repo, candidate.record.commit, candidate.snapshot)
    candidate.output.mkdir(parents=True)
    candidate.scratch.mkdir(parents=True)
    locked = {p: h for p, h in candidate.pinned.items() if p in config.locked}
    where = f"in run {candidate.record.id}'s snapshot (commit it was built from)"
    pins.check(locked, candidate.snapshot, config.tag, where=where)


def slot_env(config: Config, device: str | None, env: dict[str, str]) -> dict[str, str]:
    """A slot's share of the machine: its GPU, or on a CPU pool of several slots its share of the cores."""
    env = dict(env)
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    elif config.slot_count > 1 and "OMP_NUM_THREADS" not in env and config.runner == "local":
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // config.slot_count))
    return env


def run_spec(
    config: Config, places: Places, folders: tuple[Path, Path, Path, Path], seed: int, token: str, device: str | None
) -> RunSpec:
    """How a run is started: in its folders (snapshot, output, scratch, log), under the configured sandbox and
    limits, on its slot's device."""
    snapshot, output, scratch, log = folders
    env = slot_env(config, device, run_env(config, places, scratch, output, seed))
    view = run_view(config, places, snapshot, output, scratch) if config.sandbox == "bwrap" else None
    return RunSpec(config.argv(), snapshot, env, log, config.hard_timeout, token, config.kill_grace,
                   config.max_log_bytes, view, config.memory_limit_mb, config.max_processes,
                   tuple(config.train_files))  # fmt: skip


def launch(ctx: RunContext, candidate: Candidate, spare: spares.Spare | None = None) -> Execution:
    """Start the run: in the slot's spare when one fits (its token is the candidate's already), else cold."""
    config, places = ctx.config, ctx.places
    seed = candidate.record.seed if candidate.record.seed is not None else config.seed
    mine = (candidate.snapshot, candidate.output, candidate.scratch, candidate.log)
    spec = run_spec(config, places, mine, seed, candidate.token, candidate.device)
    if spare is not None:
        expected = run_spec(config, places, spares.folders(spare.folder), 0, spare.token, candidate.device)
        if spares.fits(spare, expected, candidate.snapshot, [*config.locked, CONFIG_NAME]):
            return spares.become(spare, spec, mine)
        spares.dismiss(spare)
    return ctx.runner.start(spec)


def collect(execution: Execution, cancelled: bool = False) -> Outcome:
    """Wait for the run to end (killing it first when cancelled)."""
    if cancelled:
        execution.kill("cancelled")
    outcome = execution.wait(0.0)
    while outcome is None:
        outcome = execution.wait(1.0)
    return outcome


def tampered(config: Config, candidate: Candidate, root: Path, pins_path: Path) -> list[str]:
    """Pinned files the run changed in the working tree or its snapshot; rewritten pins are put back.
    (A sandboxed run can reach neither; an unsandboxed one can.)"""
    pinned = candidate.pinned
    changed = pins.changed(pinned, root)
    locked = {p: h for p, h in pinned.items() if p in config.locked}
    changed += [p for p in pins.changed(locked, candidate.snapshot) if p not in changed]
    if pins.load_pins(pins_path) != pinned:
        pins.save_pins(pins_path, pinned)
        changed.append(pins_path.name)
    return changed


@dataclass
class Warm:
    """An evaluator started with the run: its imports and data are loaded while the run trains, and it
    waits for the server's word (a file in its read-only folder) to score the model or to go away. After a
    good score it waits for a second word: score the holdout too (with the model loaded and checked), or go."""

    execution: Execution
    result: Path
    word: Path
    log: Path
    asks_holdout: bool = False  # started with a second word to wait for (the first seed's, holdout on)

    @property
    def holdout_word(self) -> Path:
        return self.word.with_name("holdout")

    def release(self, go: bool) -> Evaluation | None:
        """Tell it to score (the evaluation's time is counted from here) or to go away."""
        started = time.monotonic()
        self.word.write_text("go" if go else "stop")
        if not go:
            collect(self.execution)
            return None
        outcome = self.execution.wait(0.0)
        while outcome is None and not self.result.exists():  # written whole (renamed into place)
            outcome = self.execution.wait(0.02)
        evaluation = read_result(self.result, outcome, self.log)
        if outcome is None and evaluation.status != "ok":  # it goes away by itself after a bad model
            self.holdout(go=False)
        return replace(evaluation, seconds=round(time.monotonic() - started, 3))

    def holdout(self, go: bool) -> Evaluation | None:
        """After a good score: the second word. Go: the holdout's Evaluation (its file moved to eval-holdout/,
        where a keep finds it); else the evaluator goes away."""
        started = time.monotonic()
        if self.asks_holdout:
            self.holdout_word.write_text("go" if go else "stop")
        outcome = collect(self.execution)
        if not (go and self.asks_holdout):
            return None
        found = self.result.with_name("holdout.json")
        evaluation = replace(read_result(found, outcome, self.log), seconds=round(time.monotonic() - started, 3))
        if evaluation.status == "ok":
            target = self.result.parent.with_name("eval-holdout") / "result.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(found, target)
        return evaluation


def start_warm(ctx: RunContext, candidate: Candidate) -> Warm | None:
    """The run's evaluator, started at once where the runner shares this machine's files. Not niced: a
    niced process on a busy machine waits behind everything else (its imports run beside the first seconds
    of the run's training). The first seed's may score the holdout after validation (see measure)."""
    repo, runner, config, places = ctx.repo, ctx.runner, ctx.config, ctx.places
    if not config.evaluated or not getattr(runner, "warm", False):
        return None
    stage_locked(repo, candidate.record.commit, config, candidate.pinned, candidate.run_dir / "eval")
    word = candidate.run_dir / "eval" / "go"
    spec, result = eval_spec(config, places, candidate.run_dir, candidate.output / MODEL_FILE, candidate.token, "val")
    argv = [*spec.argv, "--wait-for", str(word)]
    asks = config.holdout and candidate.repeat == 0
    if asks:
        argv += ["--holdout-word", str(word.with_name("holdout"))]
    spec = replace(spec, argv=argv, wall_limit=2 * spec.wall_limit, env=slot_env(config, candidate.device, spec.env))
    return Warm(runner.start(spec), result, word, spec.log_path, asks)


def measure(
    ctx: RunContext,
    candidate: Candidate,
    outcome: Outcome,
    changed: list[str],
    warm: Warm | None = None,
    holdout_bar: float | None = None,
    baseline: Baseline | None = None,
) -> Measured:
    """The hand-over and the evaluation, when the run earned one: evaluated contract, exited well, in time.
    When the metric is strictly better than `holdout_bar` (the decider's bar for a keep; None: never), the warm
    evaluator scores the holdout at once (the model is loaded and checked already), so that keep need not start
    an evaluator of its own. `baseline` is the tag baseline's figures (the decider's reference; None: this run is
    the baseline): work outside the timed window beyond its allowance is charged to the timed training."""
    config, places = ctx.config, ctx.places
    if candidate.repeat == 0:  # only this evaluation's holdout may be found there at keep
        shutil.rmtree(candidate.run_dir / "eval-holdout", ignore_errors=True)
    model, export_error = handed_over(candidate.output)
    measured = Measured(outcome, candidate.log, changed, model, export_error, train_tokens=train_tokens(places.data),
                        baseline=baseline)  # fmt: skip
    late = over_budget(timings(outcome), config, baseline)
    earned = outcome.stop == "exited" and outcome.exit_code == 0 and late is None
    if not config.evaluated or model is None or changed or not earned:
        if warm is not None:
            warm.release(go=False)
        return measured
    warmed = warm.release(go=True) if warm is not None else None
    holdout = None
    if warm is not None and warmed is not None and warmed.status == "ok" and warmed.metric is not None:
        holdout = warm.holdout(go=holdout_bar is not None and strictly_better(config, warmed.metric, holdout_bar))
    if warmed is None or warmed.status == "failed":  # cold, also when a custom evaluator cannot start warm
        warmed = score(ctx, candidate, model)
    return replace(measured, evaluation=warmed, holdout=holdout)


def strictly_better(config: Config, metric: float, bar: float) -> bool:
    return metric < bar if config.direction == "minimize" else metric > bar


def score(ctx: RunContext, candidate: Candidate, model: Path, split: str = "val") -> Evaluation:
    """Run the locked evaluator, from the pinned locked files of the run's commit, on the model."""
    repo, runner, config, places = ctx.repo, ctx.runner, ctx.config, ctx.places
    stage_locked(repo, candidate.record.commit, config, candidate.pinned, candidate.run_dir / "eval")
    spec, result = eval_spec(config, places, candidate.run_dir, model, candidate.token, split)
    return evaluate(runner, replace(spec, env=slot_env(config, candidate.device, spec.env)), result)


def combine(base: RunRecord | None, results: list[RunRecord]) -> RunRecord:
    """One record for the seeds run so far (base: a pending run being measured on more seeds): each seed's
    result, the mean metric and its sample standard deviation; the first seed that failed fails the run."""
    first = base or results[0]
    earlier = (base.repeats or [_seed_run(base)]) if base else []
    seeds = [*earlier, *(_seed_run(r) for r in results)]
    failed = next((r for r in results if r.status != "ok"), None)
    wall = sum(s.wall_seconds or 0.0 for s in seeds)
    flags = list(dict.fromkeys(flag for r in [*([base] if base else []), *results] for flag in r.flags))  # any seed's
    if failed is not None:
        why = f"seed {failed.seed}: {failed.reason}" if len(seeds) > 1 else failed.reason
        return first.model_copy(
            update={
                "status": failed.status,
                "reason": why,
                "metric": None,
                "repeats": seeds,
                "wall_seconds": wall,
                "metric_std": None,
                "ended_at": failed.ended_at,
            }
        )
    values = [s.metric for s in seeds if s.metric is not None]
    std = statistics.stdev(values) if len(values) > 1 else None
    return (base or results[0]).model_copy(
        update={
            "metric": statistics.fmean(values),
            "metric_std": std,
            "repeats": seeds,
            "wall_seconds": wall,
            "ended_at": results[-1].ended_at,
            "flags": flags,
        }  # fmt: skip
    )


def _seed_run(run: RunRecord) -> SeedRun:
    return SeedRun(seed=run.seed if run.seed is not None else 0, status=run.status, metric=run.metric,
                   wall_seconds=run.wall_seconds, eval_seconds=run.timing.get("evaluation"),
                   steps=as_float(run.summary, "num_steps"))  # fmt: skip


def record_end(ctx: RunContext, history: History, record: RunRecord) -> None:
    """The run's diff against its parent, then the history's end event (results.tsv follows)."""
    repo, config = ctx.repo, ctx.config
    old = gitops.blob(repo, record.parent, config.editable) or b""
    new = gitops.blob(repo, record.commit, config.editable) or b""
    diff = gitops.unified_diff(old.decode("utf-8", "replace"), new.decode("utf-8", "replace"), config.editable)
    atomic_write(history.run_dir(record.id) / "diff.patch", diff.encode(), durable=False)
    history.record(record, "end")


def cleanup(candidate: Candidate, refused: bool = False) -> None:
    """Free what the run wrote; its logs, result and model stay (the model until the run is discarded). A
    later seed's model goes, unless the evaluator refused it: a refused model is the evidence of why."""
    for folder in ("tree", "tmp", "eval", "eval-val-tmp", "eval-holdout-tmp"):
        shutil.rmtree(candidate.run_dir / folder, ignore_errors=True)
    if candidate.repeat and not refused:  # only the first seed's model is kept (for the holdout)
        shutil.rmtree(candidate.output, ignore_errors=True)
