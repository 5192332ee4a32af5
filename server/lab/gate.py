"""The keep gate as pure functions of the history and the configuration: the verdict on a finished run, the
bar a first seed must clear for its holdout to be scored with its evaluation, and the sentence a refused keep
gets. The statistics are noise.py's; nothing here touches git, files or processes."""

from __future__ import annotations

import math
import statistics

from server.config import Config
from server.lab import noise
from server.run import outcome
from server.store.history import RunRecord, SeedRun, best_run


def judge(runs: list[RunRecord], run: RunRecord, config: Config) -> noise.Judgement:
    """The gate's verdict on a finished run against the current best, on all the evidence for its program."""
    return noise.judge(evidence(runs, run), best_run(runs), noise.floor_run(runs), config.direction,
                       config.min_improvement, config.confidence)  # fmt: skip


def evidence(runs: list[RunRecord], run: RunRecord) -> RunRecord:
    """The run with the good seeds of every earlier run of the same program (one fingerprint: comments, layout
    and renamed names aside) before its own: a re-run adds evidence to its program's mean instead of a fresh
    lottery ticket. Seeds never repeat within a program (the start policy continues after the last). A starved
    run is no evidence, for or against."""
    if not run.fingerprint:
        return run
    earlier = [r for r in runs if r.id < run.id and r.fingerprint == run.fingerprint and r.status == "ok"
               and "starved" not in r.flags]  # fmt: skip
    if not earlier:
        return run
    own = run.repeats or [SeedRun(seed=run.seed or 0, status=run.status, metric=run.metric)]
    pooled = [s for r in earlier for s in (r.repeats or [SeedRun(seed=r.seed or 0, status=r.status, metric=r.metric)])]
    return run.model_copy(update={"repeats": [*pooled, *own]})


def baseline(runs: list[RunRecord]) -> outcome.Baseline | None:
    """The tag's baseline (its first run that ended ok, not starved) as the reference later runs are held to:
    its work outside the timed window and its wait for a CPU (run/outcome.py)."""
    for run in runs:
        if run.status != "ok" or "starved" in run.flags:
            continue
        timing = run.timing
        training, cpu_training = timing.get("training") or 0.0, timing.get("cpu_training") or 0.0
        rate = round(cpu_training / training, 3) if training > 0 and cpu_training > 0 else None
        return outcome.Baseline(run.id, outcome.outside_cpu(timing), rate, outcome.wait_share(timing))
    return None


def floor(runs: list[RunRecord], config: Config) -> noise.Floor | None:
    return noise.floor_of(runs, best_run(runs), config.confidence)


def holdout_bar(runs: list[RunRecord], config: Config, more_seeds: bool) -> float:
    """The metric a run's first seed must be strictly better than for a keep to take it without force: then
    its holdout is scored with its evaluation (the model is loaded already) and keep finds it ready. With more
    seeds to come, keep judges their mean, so any gain beyond min_improvement may do; a run of one seed must
    clear the gate itself (the noise band of one seed is known before it runs)."""
    best = best_run(runs)
    worst = math.inf if config.direction == "minimize" else -math.inf
    if best is None or best.metric is None:
        return worst  # the first kept run: anything that scores may be kept
    if more_seeds:
        reference, required = best.metric, config.min_improvement
    else:
        reference = statistics.fmean(noise.seed_metrics(best))
        band = noise.band_against(best, noise.floor_run(runs), None, 1, config.confidence)
        required = max(config.min_improvement, band)
    return reference - required if config.direction == "minimize" else reference + required


def inside_noise(run: RunRecord, verdict: noise.Judgement, config: Config) -> str:
    """Why keep refuses a run whose gain does not clear the gate, and what to do instead."""
    gain = verdict.gain or 0.0
    what = "is not better than the best" if gain <= 0 else "gains less than the noise band"
    how = (f"{config.confidence:.0%} one-sided t-test, {verdict.n_candidate} seed(s) against the best's "
           f"{verdict.n_best}" if verdict.band > 0 else "min_improvement; no noise floor measured")  # fmt: skip
    more = "run_experiment with repeats=N to measure it on more seeds, " if verdict.near_miss else ""
    return (f"run {run.id} ({run.metric:.6f}) {what} ({gain:+.6f}; the gate needs more than "
            f"{verdict.required:.6f}: {how}); {more}call discard, or keep with force=true and a reason if the "
            "code is simpler and the result equal.")  # fmt: skip


def describe(verdict: noise.Judgement | None, run: RunRecord) -> str | None:
    """The result in words, as the gate sees it: better or worse beyond the noise, or within it."""
    if run.status != "ok" or verdict is None:
        return None
    if "starved" in run.flags:
        return "starved: not evidence"
    if verdict.gain is None:
        return "the first result: the baseline"
    if verdict.beyond:
        return "better than the best, beyond the noise"
    if verdict.gain < -verdict.required:
        return "worse than the best, beyond the noise"
    return "within the noise of the best" + (" (better, a near miss)" if verdict.near_miss else "")
