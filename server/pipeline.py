"""One run, as stages a reader can name, each a unit with its collaborators passed in:

    candidate   commit the file in a private index, pin-check and export the snapshot     (git, pins)
    launch      start the run: sandboxed or in its own process group                      (runner, isolation)
    collect     wait for its end; what the server measured: clock marks, memory           (runner)
    hand-over   the model the run left in its output folder, or the exporter's reason     (evaluator)
    evaluate    the locked evaluator scores that model in a sandbox of its own            (evaluator)
    classify    status, metric and reason from the measurements, never from the run's word (outcome)
    record      the history event, results.tsv, the run's diff                            (history)

The loop (loop.py) decides which candidate and whether to keep it; it never measures.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import git

from server import gitops, pins
from server.config import Config
from server.evaluator import Evaluation, eval_spec, evaluate, handed_over, read_result, stage_locked
from server.history import History, RunRecord, atomic_write
from server.isolation import Places, run_env, run_view, train_tokens
from server.outcome import Measured, over_budget, timings
from server.runner import Execution, Outcome, Runner, RunSpec
from server.summary import MODEL_FILE


@dataclass
class Candidate:
    """A run's commit and the folders it runs in."""

    record: RunRecord
    run_dir: Path
    pinned: dict[str, str]
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def snapshot(self) -> Path:
        return self.run_dir / "tree"

    @property
    def output(self) -> Path:
        return self.run_dir / "out"

    @property
    def scratch(self) -> Path:
        return self.run_dir / "tmp"

    @property
    def log(self) -> Path:
        return self.run_dir / "log.txt"


def make_candidate(
    repo: git.Repo, config: Config, history: History, record: RunRecord, data: bytes, pinned: dict[str, str]
) -> Candidate:
    """Commit data as the editable file on top of record.parent, keep the commit under its run ref, and
    export it as a fresh snapshot whose locked files are checked against their pins."""
    message = f"autoresearch {config.tag} run {record.id}: {record.description}"
    commit = gitops.commit_file(repo, record.parent, config.editable, data, message)
    gitops.update_ref(repo, gitops.run_ref(config.tag, record.id), commit)
    candidate = Candidate(record.model_copy(update={"commit": commit}), history.run_dir(record.id), pinned)
    for folder in (candidate.snapshot, candidate.output, candidate.scratch):
        shutil.rmtree(folder, ignore_errors=True)
    gitops.export_tree(repo, commit, candidate.snapshot)
    candidate.output.mkdir(parents=True)
    candidate.scratch.mkdir(parents=True)
    locked = {p: h for p, h in pinned.items() if p in config.locked}
    pins.check(
        locked, candidate.snapshot, config.tag, where=f"in run {record.id}'s snapshot (commit it was built from)"
    )
    return candidate


def launch(runner: Runner, config: Config, places: Places, candidate: Candidate) -> Execution:
    """Start the run under the configured sandbox and limits."""
    seed = candidate.record.seed if candidate.record.seed is not None else config.seed
    env = run_env(config, places, candidate.scratch, candidate.output, seed)
    view = None
    if config.sandbox == "bwrap":
        view = run_view(config, places, candidate.snapshot, candidate.output, candidate.scratch)
    spec = RunSpec(config.argv(), candidate.snapshot, env, candidate.log, config.hard_timeout, candidate.token,
                   config.kill_grace, config.max_log_bytes, view, config.memory_limit_mb,
                   config.max_processes)  # fmt: skip
    return runner.start(spec)


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
    waits for the server's word (a file in its read-only folder) to score the model or to go away."""

    execution: Execution
    result: Path
    word: Path
    log: Path

    def release(self, go: bool) -> Evaluation | None:
        """Tell it to score (the evaluation's time is counted from here) or to go away."""
        started = time.monotonic()
        self.word.write_text("go" if go else "stop")
        outcome = collect(self.execution)
        if not go:
            return None
        return replace(read_result(self.result, outcome, self.log), seconds=round(time.monotonic() - started, 3))


def start_warm(repo: git.Repo, runner: Runner, config: Config, places: Places, candidate: Candidate) -> Warm | None:
    """The run's evaluator, started at once where the runner shares this machine's files. Not niced: a
    niced process on a busy machine waits behind everything else, and its imports are done in the run's
    own start-up anyway."""
    if not config.evaluated or not getattr(runner, "warm", False):
        return None
    stage_locked(repo, candidate.record.commit, config, candidate.pinned, candidate.run_dir / "eval")
    word = candidate.run_dir / "eval" / "go"
    spec, result = eval_spec(config, places, candidate.run_dir, candidate.output / MODEL_FILE, candidate.token, "val")
    spec = replace(spec, argv=[*spec.argv, "--wait-for", str(word)], wall_limit=2 * spec.wall_limit)
    return Warm(runner.start(spec), result, word, spec.log_path)


def measure(
    repo: git.Repo,
    runner: Runner,
    config: Config,
    places: Places,
    candidate: Candidate,
    outcome: Outcome,
    changed: list[str],
    warm: Warm | None = None,
) -> Measured:
    """The hand-over and the evaluation, when the run earned one: evaluated contract, exited well, in time."""
    model, export_error = handed_over(candidate.output)
    measured = Measured(outcome, candidate.log, changed, model, export_error, train_tokens=train_tokens(places.data))
    earned = outcome.stop == "exited" and outcome.exit_code == 0 and over_budget(timings(outcome), config) is None
    if not config.evaluated or model is None or changed or not earned:
        if warm is not None:
            warm.release(go=False)
        return measured
    warmed = warm.release(go=True) if warm is not None else None
    if warmed is None or warmed.status == "failed":  # cold, also when a custom evaluator cannot start warm
        warmed = score(repo, runner, config, places, candidate, model)
    return Measured(outcome, candidate.log, changed, model, export_error, warmed, measured.train_tokens)


def score(
    repo: git.Repo,
    runner: Runner,
    config: Config,
    places: Places,
    candidate: Candidate,
    model: Path,
    split: str = "val",
) -> Evaluation:
    """Run the locked evaluator, from the pinned locked files of the run's commit, on the model."""
    stage_locked(repo, candidate.record.commit, config, candidate.pinned, candidate.run_dir / "eval")
    spec, result = eval_spec(config, places, candidate.run_dir, model, candidate.token, split)
    return evaluate(runner, spec, result)


def record_end(repo: git.Repo, config: Config, history: History, record: RunRecord) -> None:
    """The run's diff against its parent, then the history's end event (results.tsv follows)."""
    old = gitops.blob(repo, record.parent, config.editable) or b""
    new = gitops.blob(repo, record.commit, config.editable) or b""
    diff = gitops.unified_diff(old.decode("utf-8", "replace"), new.decode("utf-8", "replace"), config.editable)
    atomic_write(history.run_dir(record.id) / "diff.patch", diff.encode(), durable=False)
    history.record(record, "end")


def cleanup(candidate: Candidate) -> None:
    """Free what the run wrote; its logs, result and model stay (the model until the run is discarded)."""
    for folder in ("tree", "tmp", "eval", "eval-val-tmp", "eval-holdout-tmp"):
        shutil.rmtree(candidate.run_dir / folder, ignore_errors=True)
