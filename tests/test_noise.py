"""Decisions beyond noise: the t quantiles, the gate's acceptance rates against what the statistics predict,
and runs repeated with seeds through the Lab (the fake's metric is mu + sigma * N(0, 1) from its seed)."""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path

import numpy as np
import pytest
from conftest import FAKE_CONFIG, make_fake_repo, set_mode

from server.config import load_config
from server.errors import InvalidInputError, StateError
from server.lab.loop import Lab
from server.lab.noise import Group, judge, noise_band, t_cdf, t_quantile
from server.show.table import counts
from server.show.views import run_result
from server.store.history import Decision, RunRecord, SeedRun

SIGMA = 0.01  # tests/fake/prepare.py NOISE_SIGMA
DECISIONS = 20_000
N_BASELINE = 3  # the default noise_seeds
CONFIDENCE = 0.95


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [(0.95, 1, 6.313752), (0.95, 2, 2.919986), (0.95, 4, 2.131847), (0.975, 10, 2.228139), (0.95, 30, 1.697261)],
)
def test_t_quantiles_match_the_published_table(p: float, df: int, expected: float) -> None:
    assert t_quantile(p, df) == pytest.approx(expected, abs=2e-6)
    assert t_cdf(expected, df) == pytest.approx(p, abs=1e-6)


def predicted_acceptance(gain: float, sigma: float, n_best: int, confidence: float) -> float:
    """P(the gate accepts a one-seed candidate) for a true gain, from the distributions alone: the mean
    difference is N(gain, sigma^2 (1/n + 1)) and the floor's variance sigma^2 chi2(df)/df, independent of it;
    integrated over the chi-square density."""
    df, scale = n_best - 1, math.sqrt(1 / n_best + 1)
    t = t_quantile(confidence, df)
    v = np.linspace(1e-9, 80.0, 400_001)
    density = v ** (df / 2 - 1) * np.exp(-v / 2) / (2 ** (df / 2) * math.gamma(df / 2))
    z = t * np.sqrt(v / df) - gain / (sigma * scale)
    accept = 0.5 * np.array([math.erfc(x / math.sqrt(2)) for x in z])
    return float(np.trapezoid(accept * density, v))


def simulated_acceptance(gain: float, sigma: float, n_best: int, confidence: float, seed: int) -> float:
    rng = np.random.default_rng(seed)
    accepted = 0
    for _ in range(DECISIONS):
        best = rng.normal(1.0, sigma, n_best)
        candidate = rng.normal(1.0 - gain, sigma)
        band = noise_band([Group.of(list(best))], n_best, 1, confidence)
        accepted += float(best.mean() - candidate) > band
    return accepted / DECISIONS


@pytest.mark.parametrize("gain_in_sigma", [0.0, 0.5, 2.0, 4.0])
def test_the_gate_accepts_at_the_rate_the_statistics_predict(gain_in_sigma: float) -> None:
    """No gain: accepted at 1 - confidence exactly; half a sigma: rarely; four sigma: mostly. The bound is
    four binomial standard errors of the predicted rate, not a tuned figure."""
    predicted = predicted_acceptance(gain_in_sigma * SIGMA, SIGMA, N_BASELINE, CONFIDENCE)
    observed = simulated_acceptance(gain_in_sigma * SIGMA, SIGMA, N_BASELINE, CONFIDENCE, seed=12)
    bound = 4 * math.sqrt(predicted * (1 - predicted) / DECISIONS)
    assert abs(observed - predicted) < bound
    if gain_in_sigma == 0.0:
        assert predicted == pytest.approx(1 - CONFIDENCE, abs=1e-4)  # the test's size is what the config says


def record(run_id: int, metrics: list[float], decision: Decision | None = "keep") -> RunRecord:
    seeds = [SeedRun(seed=42 + i, status="ok", metric=m) for i, m in enumerate(metrics)]
    return RunRecord(id=run_id, commit="c", parent="p", description="d", status="ok", decision=decision,
                     metric=statistics.fmean(metrics), repeats=seeds)  # fmt: skip


def test_judge_pools_the_floor_and_the_candidates_own_seeds() -> None:
    floor = record(1, [1.00, 1.02, 0.99])
    one = judge(record(2, [0.97], None), floor, floor, "minimize", 0.0, CONFIDENCE)
    s = statistics.stdev([1.00, 1.02, 0.99])
    assert one.band == pytest.approx(t_quantile(CONFIDENCE, 2) * s * math.sqrt(1 / 3 + 1))
    assert one.gain == pytest.approx(statistics.fmean([1.00, 1.02, 0.99]) - 0.97)
    three = judge(record(2, [0.97, 0.975, 0.965], None), floor, floor, "minimize", 0.0, CONFIDENCE)
    pooled = math.sqrt((2 * s**2 + 2 * statistics.stdev([0.97, 0.975, 0.965]) ** 2) / 4)
    assert three.band == pytest.approx(t_quantile(CONFIDENCE, 4) * pooled * math.sqrt(1 / 3 + 1 / 3))
    assert judge(record(2, [0.9], None), floor, floor, "minimize", 0.5, CONFIDENCE).required == 0.5


# -- through the Lab ----------------------------------------------------------------------------------------

NOISY_CONFIG = FAKE_CONFIG.replace("noise_seeds = 1", "noise_seeds = 3")


def draw(seed: int, mu: float) -> float:
    """What the fake prints for a seed, computed here independently."""
    return float(f"{mu + SIGMA * random.Random(seed).gauss(0.0, 1.0):.6f}")


@pytest.fixture
def noisy(tmp_path: Path) -> Lab:
    repo = make_fake_repo(tmp_path / "noisy", NOISY_CONFIG)
    (repo / "train.py").write_text(set_mode("noisy", 1.0))
    return Lab(repo, load_config(repo))


def run_noisy(lab: Lab, mu: float, repeats: int | None = None) -> RunRecord:
    lab.write(set_mode("noisy", mu))
    return lab.run(f"mu {mu}", repeats=repeats)


def test_the_first_run_of_a_tag_runs_each_seed_and_records_it(noisy: Lab) -> None:
    run = noisy.run("baseline")
    assert [s.seed for s in run.repeats] == [42, 43, 44]
    expected = [draw(seed, 1.0) for seed in (42, 43, 44)]
    assert [s.metric for s in run.repeats] == expected and len(set(expected)) == 3
    assert run.metric == pytest.approx(statistics.fmean(expected))
    assert run.metric_std == pytest.approx(statistics.stdev(expected))
    assert (noisy.history.run_dir(1) / "log-2.txt").exists()  # each seed's own log
    assert run_result(noisy, run).seeds == 3


def test_keep_refuses_a_gain_inside_the_noise_band_and_takes_one_beyond_it(noisy: Lab) -> None:
    noisy.run("baseline")
    noisy.keep()
    small = run_noisy(noisy, 1.0 - 0.2 * SIGMA)
    verdict = noisy.judge(small)
    assert not verdict.beyond
    with pytest.raises(StateError, match="noise band"):
        noisy.keep()
    assert noisy.discard().beyond_noise is False
    large = run_noisy(noisy, 1.0 - 10 * SIGMA)
    before = noisy.judge(large)
    assert before.beyond
    kept = noisy.keep()
    assert kept.decision == "keep" and kept.beyond_noise is True
    assert kept.required_gain == pytest.approx(before.required)


def test_a_near_miss_repeated_with_more_seeds_reports_mean_spread_and_count(noisy: Lab) -> None:
    noisy.run("baseline")
    noisy.keep()
    first = run_noisy(noisy, 1.0 - 2 * SIGMA)
    again = noisy.run("same idea, more seeds", repeats=2)  # the file is unchanged: the pending run gets seeds
    assert again.id == first.id and [s.seed for s in again.repeats] == [42, 43, 44]
    values = [draw(seed, 1.0 - 2 * SIGMA) for seed in (42, 43, 44)]
    result = run_result(noisy, again)
    assert result.seeds == 3 and result.seed_metrics == values
    assert result.metric == pytest.approx(statistics.fmean(values))
    assert result.std == pytest.approx(statistics.stdev(values), abs=1e-6)
    assert len(noisy.history.runs()) == 2  # one record; the seeds it cost are counted
    assert counts(noisy.history.runs())["extra_seed_runs"] == 4


def test_a_near_miss_kept_by_force_records_the_reason(noisy: Lab) -> None:
    noisy.run("baseline")
    noisy.keep()
    run_noisy(noisy, 1.0 - 0.2 * SIGMA)
    kept = noisy.keep(force=True, reason="simpler code, equal result")
    assert kept.forced and kept.force_reason == "simpler code, equal result" and kept.beyond_noise is False


def test_remeasuring_runs_the_best_code_on_several_seeds_and_makes_it_the_floor(noisy: Lab) -> None:
    noisy.run("baseline")
    noisy.keep()
    tip = noisy.tip()
    run = noisy.remeasure(4)
    # fresh seeds: the baseline ran this code on 42, 43, 44, and the server never draws a seed twice for it
    assert run.decision == "keep" and [s.seed for s in run.repeats] == [45, 46, 47, 48]
    assert noisy.kept_content() == set_mode("noisy", 1.0)  # the best's code, unchanged
    assert noisy.repo.commit(noisy.tip()).tree == noisy.repo.commit(tip).tree
    floor = noisy.floor()
    assert floor is not None and floor.run_id == run.id and "re-measured" in floor.how
    assert floor.std == pytest.approx(statistics.stdev([draw(s, 1.0) for s in (45, 46, 47, 48)]), abs=1e-6)


def test_a_seed_that_fails_fails_the_run_and_says_which(noisy: Lab) -> None:
    noisy.write(set_mode("noisy", 1.0).replace("main(MODE, METRIC)", "import os\n"
                "main('crash' if os.environ['AUTORESEARCH_SEED'] == '43' else MODE, METRIC)"))  # fmt: skip
    run = noisy.run("fails on seed 43")
    assert run.status == "crash" and run.reason is not None and run.reason.startswith("seed 43:")
    assert [s.status for s in run.repeats] == ["ok", "crash"]  # seed 44 never ran


def test_the_noise_command_remeasures_and_history_shows_the_floor(
    noisy: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    from server import cli

    noisy.run("baseline")
    noisy.keep()
    assert cli.main(["--root", str(noisy.root), "noise", "--seeds", "2"]) == 0
    assert "noise floor: val_bpb std" in capsys.readouterr().out
    assert cli.main(["--root", str(noisy.root), "history"]) == 0
    shown = capsys.readouterr().out
    assert "re-measured on request" in shown and "(+3 seed repeats)" in shown and "forced" in shown


def test_a_rerun_of_the_same_program_gets_fresh_seeds_and_the_gate_pools_them(noisy: Lab) -> None:
    """Scenario: Noise / re-running an idea renamed (the same program) draws the next seeds, never the old
    ones, and keep judges the program on all its seeds: redrawing adds evidence, not lottery tickets"""
    noisy.run("baseline")
    noisy.keep()
    first = run_noisy(noisy, 1.0 - SIGMA)
    assert first.seed == 42  # new code: measured on the same seed as every idea first
    noisy.discard()
    noisy.write(set_mode("noisy", 1.0 - SIGMA).replace("METRIC", "RENAMED") + "# only a comment more\n")
    again = noisy.run("the same idea, renamed", repeats=2)
    assert again.fingerprint == first.fingerprint and [s.seed for s in again.repeats] == [43, 44]
    verdict = noisy.judge(again)
    assert verdict.n_candidate == 3  # its two seeds and the earlier run's one
    pooled = statistics.fmean([draw(s, 1.0 - SIGMA) for s in (42, 43, 44)])
    best = noisy.best()
    assert best is not None and verdict.gain == pytest.approx(best.metric - pooled)  # type: ignore[operator]


def test_a_draft_that_picks_its_own_seed_never_runs(noisy: Lab) -> None:
    """Scenario: Noise / a train.py that seeds itself (written by write_train or by any other means) is
    refused before anything runs, with the rule in the sentence"""
    noisy.run("baseline")
    noisy.keep()
    before = noisy.current_content()
    with pytest.raises(InvalidInputError, match="seeds are the server's"):
        noisy.write(before + "import random\nrandom.seed(7)\n")
    assert noisy.current_content() == before
    (noisy.root / "train.py").write_text(before + "SEED = 7\n")  # around write_train
    with pytest.raises(InvalidInputError, match="SEED is assigned"):
        noisy.run("my own seed")
    assert len(noisy.history.runs()) == 1
