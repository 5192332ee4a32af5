"""The keep gate as pure functions of the history and the configuration: the verdict on a finished run, the
bar a first seed must clear for its holdout to be scored with its evaluation, and the sentence a refused keep
gets. The statistics are noise.py's; nothing here touches git, files or processes."""

from __future__ import annotations

import math
import statistics

from server.config import Config
from server.lab import noise
from server.store.history import RunRecord, best_run


def judge(runs: list[RunRecord], run: RunRecord, config: Config) -> noise.Judgement:
    """The gate's verdict on a finished run against the current best."""
    return noise.judge(run, best_run(runs), noise.floor_run(runs), config.direction, config.min_improvement,
                       config.confidence)  # fmt: skip


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
