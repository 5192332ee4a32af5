"""Decisions beyond noise: the same-code spread of the metric (the noise floor) and the keep gate.

The gate is a one-sided two-sample t-test with pooled variance (docs/NOISE.md): the candidate is kept only
when its gain on the best is larger than t(confidence, df) * s * sqrt(1/n_best + 1/n_candidate), where s
pools the sample variances of the repeated runs (the noise floor, and the candidate's own seeds).
"""

from __future__ import annotations

import functools
import math
import statistics
from dataclasses import dataclass

from pydantic import BaseModel, Field

from server.store.history import RunRecord

T_TOLERANCE = 1e-10  # bisection stops when the bracket is this narrow


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with an integer number of degrees of freedom (Abramowitz & Stegun 26.7.3-4)."""
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 1:
        term, total = 1.0, 1.0 if df > 1 else 0.0
        for k in range(1, (df - 1) // 2):
            term *= c2 * (2 * k) / (2 * k + 1)
            total += term
        inside = (2 / math.pi) * (theta + (s * math.cos(theta) * total if df > 1 else 0.0))
    else:
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        inside = s * total
    return 0.5 + 0.5 * inside  # inside = P(-t < T < t), signed with t


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p, by bisection on t_cdf."""
    lo, hi = -1e6, 1e6
    while hi - lo > T_TOLERANCE * max(1.0, abs(lo)):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass(frozen=True)
class Group:
    """Repeated measurements of one piece of code: how many, their mean and sample standard deviation."""

    n: int
    mean: float
    std: float  # 0.0 when n < 2

    @classmethod
    def of(cls, values: list[float]) -> Group:
        return cls(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def pooled(groups: list[Group]) -> tuple[float, int]:
    """The pooled standard deviation of the groups and its degrees of freedom (sum of n - 1)."""
    df = sum(g.n - 1 for g in groups)
    if df == 0:
        return 0.0, 0
    return math.sqrt(sum((g.n - 1) * g.std**2 for g in groups) / df), df


def noise_band(groups: list[Group], n_best: int, n_candidate: int, confidence: float) -> float:
    """The gain a one-sided t-test at `confidence` needs: t * s * sqrt(1/n_best + 1/n_candidate); 0 without
    any repeated measurement (then only min_improvement applies)."""
    s, df = pooled(groups)
    if df == 0:
        return 0.0
    return t_quantile(confidence, df) * s * math.sqrt(1 / n_best + 1 / n_candidate)


def seed_metrics(run: RunRecord) -> list[float]:
    """The metric of each seed that ended well (a run of one seed before repeats existed: its metric)."""
    values = [r.metric for r in run.repeats if r.status == "ok" and r.metric is not None]
    return values or ([run.metric] if run.metric is not None else [])


class Floor(BaseModel):
    """The noise floor: the same-code spread of the metric, from the latest kept run repeated with seeds."""

    run_id: int = Field(description="the kept run whose seeds measured it")
    seeds: list[int]
    std: float = Field(description="sample standard deviation of the metric over those seeds")
    mean: float
    how: str = Field(description="when it was measured")
    single_seed_gain: float = Field(description="the gain a one-seed candidate needs on the current best")
    confidence: float


def floor_run(runs: list[RunRecord]) -> RunRecord | None:
    """The latest kept run with at least two good seeds."""
    kept = [r for r in runs if r.decision == "keep" and r.status == "ok" and len(seed_metrics(r)) > 1]
    return kept[-1] if kept else None


@dataclass(frozen=True)
class Judgement:
    """The gate's verdict on a finished run against the best."""

    gain: float | None  # in the metric's better direction; None when there is nothing to compare
    required: float  # max(min_improvement, the noise band)
    band: float  # the noise band alone
    n_best: int
    n_candidate: int

    @property
    def beyond(self) -> bool:
        return self.gain is None or self.gain > self.required

    @property
    def near_miss(self) -> bool:
        """Better than the best, but not by more than the gate needs: more seeds may settle it."""
        return self.gain is not None and 0 < self.gain <= self.required


def judge(run: RunRecord, best: RunRecord | None, floor: RunRecord | None, direction: str, min_improvement: float,
          confidence: float) -> Judgement:  # fmt: skip
    """Whether the run's gain on the best lies beyond the noise band at the configured confidence."""
    candidate = seed_metrics(run)
    if best is None or not candidate or best.metric is None:
        return Judgement(None, min_improvement, 0.0, 0, len(candidate))
    reference = seed_metrics(best)
    mean_best, mean_run = statistics.fmean(reference), statistics.fmean(candidate)
    gain = mean_best - mean_run if direction == "minimize" else mean_run - mean_best
    band = band_against(best, floor, run, len(candidate), confidence)
    return Judgement(gain, max(min_improvement, band), band, len(reference), len(candidate))


def band_against(best: RunRecord, floor: RunRecord | None, run: RunRecord | None, n_candidate: int,
                 confidence: float) -> float:  # fmt: skip
    """The noise band a candidate of n_candidate seeds must clear on the best; its own seeds join the pooled
    variance when it has run (a run of one seed adds nothing, so the band of one is known before it runs)."""
    groups = {r.id: Group.of(seed_metrics(r)) for r in (floor, best, run) if r is not None}
    return noise_band(list(groups.values()), len(seed_metrics(best)), n_candidate, confidence)


def floor_of(runs: list[RunRecord], best: RunRecord | None, confidence: float) -> Floor | None:
    """The noise floor as get_history and the CLI show it, with the gain a one-seed run needs now."""
    run = floor_run(runs)
    if run is None:
        return None
    values = seed_metrics(run)
    group = Group.of(values)
    groups = [group] + ([Group.of(seed_metrics(best))] if best is not None and best.id != run.id else [])
    n_best = len(seed_metrics(best)) if best is not None else group.n
    seeds = [r.seed for r in run.repeats if r.status == "ok"]
    gain = round(noise_band(groups, n_best, 1, confidence), 6)
    return Floor(run_id=run.id, seeds=seeds, std=round(group.std, 6), mean=round(group.mean, 6), how=_how(runs, run),
                 single_seed_gain=gain, confidence=confidence)  # fmt: skip


def _how(runs: list[RunRecord], run: RunRecord) -> str:
    if not any(r.decision == "keep" and r.id < run.id for r in runs):
        return "at tag start: the baseline's seeds"
    if run.forced:
        return f"re-measured on request ({run.force_reason})"
    return f"the seeds of kept run {run.id}"
