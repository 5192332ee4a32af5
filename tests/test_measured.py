"""The server measures the result: hostile train.py files, each run through the real server with the real
experiment (its smallest model), and each ending with the evaluated metric or a refusal, never the faked one."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import EXPERIMENT, needs_bwrap, tiny_real_lab

from server.errors import StateError
from server.lab.loop import Lab
from server.store.history import RunRecord

pytestmark = [needs_bwrap, pytest.mark.slow]
TEXT = "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. " * 80
HEAD = "import sys, os\nsys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\nimport prepare\n"


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """A repository holding the real experiment, and a tiny byte-level dataset in a private cache."""
    return tiny_real_lab(tmp_path, monkeypatch, [f"Act {i}. " + TEXT for i in range(2)])


def run(lab: Lab, source: str, description: str = "hostile") -> tuple[RunRecord, str]:
    lab.write(source)
    record = lab.run(description)
    return record, (lab.history.run_dir(record.id) / "log.txt").read_text()


def train_with(lab: Lab, before: str = "", after: str = "") -> str:
    """The default train.py with code inserted before main() runs and after it returns."""
    source = (EXPERIMENT / "train.py").read_text()
    main_call = 'if __name__ == "__main__":\n    main()\n'
    assert main_call in source
    return source.replace(main_call, f'if __name__ == "__main__":\n{before}    main()\n{after}')


def test_the_default_experiment_is_scored_by_the_server_inside_the_sandbox(lab: Lab) -> None:
    """Scenario: Measurement / the default train.py, sandboxed on CPU: it trains, hands its model over, and
    the metric is the server's evaluator's, with the training time on the server's clock"""
    baseline = lab.run("baseline")
    assert baseline.status == "ok" and baseline.metric is not None and 0.5 < baseline.metric < 9
    assert baseline.reported is None and "unsandboxed" not in baseline.flags  # the run cannot see val_bpb
    # train.py stops after the step that ends nearest the 2 s budget, on the same clock as the server's
    short = baseline.timing.get("last_step", 0.0) / 2 + 0.2  # it stops at the step that ends nearest the budget
    assert 2.0 - short <= baseline.timing["training"] < 6.0, baseline.timing
    assert baseline.training_seconds == baseline.timing["training"]
    assert baseline.timing["evaluation"] > 0 and baseline.memory_gb is not None and baseline.memory_gb > 0.05
    result = (lab.history.run_dir(1) / "eval-val" / "result.json").read_text()
    assert str(baseline.metric)[:10] in result


def test_a_printed_summary_without_a_model_is_not_a_result(lab: Lab) -> None:
    """Scenario: Measurement / a train.py that prints `val_bpb: 0.1` without training: no model was handed
    over, so the run has no metric and can never be kept"""
    record, _ = run(lab, "print('---')\nprint('val_bpb: 0.100000')\nprint('training_seconds: 2.0')\n")
    assert record.status == "no_model" and record.metric is None and record.reported == 0.1
    with pytest.raises(StateError, match="can never be kept"):
        lab.keep()


def test_a_wrapped_evaluator_changes_only_what_the_run_says(lab: Lab) -> None:
    """Scenario: Measurement / a train.py that wraps evaluate.evaluate_bpb to scale its result and prints the
    scaled figure: the metric is the server's evaluation; the printed one is kept as `reported`, flagged"""
    wrap = "    import evaluate\n    evaluate.evaluate_bpb = lambda *a, **k: 0.01\n"
    confess = "    print('---')\n    print('val_bpb: 0.010000')\n"
    record, _ = run(lab, train_with(lab, before=wrap, after=confess))
    assert record.status == "ok" and record.metric is not None and record.metric > 0.5
    assert record.reported == 0.01 and "reported_mismatch" in record.flags


def test_the_validation_split_is_not_visible_to_the_run(lab: Lab) -> None:
    """Scenario: Measurement / a run that tries to read the validation split (to train on it): the file is
    not in its sandbox, by its cached path or through prepare.py"""
    data = lab.places.data
    probe = (
        HEAD
        + f"""\
for path in ({str(data / "val.bin")!r}, {str(data / "train.bin")!r}):
    try:
        print("read", path, len(open(path, "rb").read()))
    except OSError as exc:
        print("cannot read", path, type(exc).__name__)
try:
    prepare.load_split(prepare.dataset_dir(), "val")
    print("loaded val")
except FileNotFoundError as exc:
    print("prepare refused:", exc)
"""
    )
    record, log = run(lab, probe)
    assert f"cannot read {data / 'val.bin'} FileNotFoundError" in log
    assert f"read {data / 'train.bin'}" in log  # the training split is there
    assert "loaded val" not in log and "only the server's evaluator reads it" in log
    assert record.status == "no_model"


def test_training_past_the_budget_is_over_budget_whatever_it_reports(lab: Lab) -> None:
    """Scenario: Measurement / a run that trains three times its budget and reports the budget: the
    server's clock says over_budget, and nothing is evaluated"""
    source = (
        HEAD
        + """\
import time, torch
model = torch.nn.Sequential(torch.nn.Embedding(prepare.load_meta()["vocab_size"], 8),
                            torch.nn.Linear(8, prepare.load_meta()["vocab_size"]))
prepare.training_starts()
time.sleep(6.5)
prepare.save_model(model)
print("---")
print("training_seconds: 2.0")
"""
    )
    record, _ = run(lab, source)
    assert record.status == "over_budget" and "by the server's clock" in (record.reason or "")
    assert record.metric is None and record.timing["training"] > 6 and "evaluation" not in record.timing


@pytest.mark.parametrize("budget", [2.0, 60.0, 300.0])
def test_a_faked_long_last_step_buys_at_most_the_tolerance(budget: float) -> None:
    """Scenario: Measurement / a run that withholds its progress lines so that its last step looks long: the
    server's clock counts that step only up to the tolerance, and a short budget still covers a second of the
    marker lines' latency"""
    from server.config import Config
    from server.run.outcome import allowed_training

    config = Config.model_validate({"time_budget": budget})
    slack = budget * config.budget_tolerance
    honest, faked = allowed_training(config, 0.25), allowed_training(config, 100.0)
    assert faked - allowed_training(config, 0.0) == pytest.approx(slack)  # the fake buys the tolerance, no more
    assert allowed_training(config, 0.0) == pytest.approx(budget + max(slack, 1.0))
    assert honest >= budget + 1.0 and faked <= budget + max(slack, 1.0) + slack


def test_a_long_start_up_before_timed_training_is_over_budget(lab: Lab) -> None:
    """Scenario: Measurement / a run that trains before it marks the start of timed training (here: sleeps
    past the start-up allowance): over_budget, naming the allowance"""
    config = lab.config.model_copy(update={"startup_allowance": 3.0})
    lab = Lab(lab.root, config)
    record, _ = run(lab, train_with(lab, before="    import time\n    time.sleep(4)\n"))
    assert record.status == "over_budget" and "start-up took" in (record.reason or "") and "3s" in (record.reason or "")


def test_a_model_that_cannot_be_exported_says_which_operation(lab: Lab) -> None:
    """Scenario: Measurement / a model torch.export cannot capture: export_failed, with the exporter's reason
    for the agent, never a bare crash"""
    source = (
        (EXPERIMENT / "train.py")
        .read_text()
        .replace(
            '    def forward(self, idx, targets=None, reduction="mean"):\n',
            '    def forward(self, idx, targets=None, reduction="mean"):\n'
            "        if targets is None and idx.sum() > 0:\n            idx = idx.flip(1)\n",
        )
    )
    record, _ = run(lab, source)
    assert record.status == "export_failed" and "data-dependent" in (record.reason or "")


def test_a_model_that_looks_ahead_is_refused_by_the_evaluator(lab: Lab) -> None:
    """Scenario: Measurement / a model whose attention is not causal (it sees the tokens it must predict):
    the evaluator's probes catch it; bad_model, never a metric"""
    source = (EXPERIMENT / "train.py").read_text().replace("is_causal=True", "is_causal=False")
    record, _ = run(lab, source)
    assert record.status == "bad_model" and "must be causal" in (record.reason or "") and record.metric is None


def test_a_refused_model_is_kept_as_the_evidence_after_discard(lab: Lab) -> None:
    """Scenario: Measurement / the refused archive stays in its run folder, discarded or not, so a human can load
    it again and see why (an ok model that is discarded is not needed and goes)"""
    source = (EXPERIMENT / "train.py").read_text().replace("is_causal=True", "is_causal=False")
    refused, _ = run(lab, source)  # refused by the random probes ("moved by up to") or, when their cuts all miss
    assert refused.status == "bad_model" and "must be causal" in (refused.reason or "")  # it, by the graph's proof
    lab.discard(refused.id)
    assert (lab.history.run_dir(refused.id) / "out" / "model.pt2").is_file()


PRE_STEPS = 600  # steps the hostile train.py takes before its start line (the tiny model: about 10 CPU seconds)
EXTRA_S = 4.0  # seconds of real work each hostile run below does outside its timed window
BURN = f"""\
import time as _t, torch as _torch
def burn(seconds={EXTRA_S}):
    x = _torch.randn(256, 256)
    end = _t.time() + seconds
    while _t.time() < end:
        x = _torch.tanh(x @ x)
"""


def outside_baseline(lab: Lab) -> RunRecord:
    """The tag's baseline, the reference for work outside the timed window: the default train.py."""
    baseline = lab.run("baseline")
    assert baseline.status == "ok" and {"cpu_before", "cpu_training", "cpu_after"} <= set(baseline.timing)
    assert "charged" not in baseline.timing
    lab.keep()
    return baseline


def test_training_before_the_start_line_with_a_real_learning_rate_is_charged_and_over_budget(lab: Lab) -> None:
    """Scenario: Measurement / free compute before the start mark: train.py raises SKIP_STEPS and gives the
    steps before training_starts() a real learning rate; the server measures that CPU from the kernel, charges
    what goes beyond the baseline's start-up to the budget, and the run is over_budget, never scored"""
    baseline = outside_baseline(lab)
    source = (EXPERIMENT / "train.py").read_text()
    assert (
        "SKIP_STEPS = 10 if COMPILE else 0" in source and "lrm = lr_multiplier(training_time / TIME_BUDGET)" in source
    )
    hostile = source.replace("SKIP_STEPS = 10 if COMPILE else 0", f"SKIP_STEPS = {PRE_STEPS}").replace(
        "lrm = lr_multiplier(training_time / TIME_BUDGET)",
        "lrm = lr_multiplier(training_time / TIME_BUDGET) if started is not None else 1.0",
    )
    record, _ = run(lab, hostile, "train before the mark")
    assert record.status == "over_budget" and "outside its timed window" in (record.reason or "")
    assert record.metric is None and "evaluation" not in record.timing
    assert record.timing["cpu_before"] > baseline.timing["cpu_before"] + 2.0 and record.timing["charged"] > 1.0
    # the training window itself looked honest: the clock alone would have scored it
    assert record.timing["training"] < 2.0 * (1 + lab.config.budget_tolerance) + 1.0 + record.timing.get("last_step", 0)


def test_work_after_the_end_line_is_charged_and_over_budget(lab: Lab) -> None:
    """Scenario: Measurement / compute after save_model's end line (before the process exits): charged
    beyond the baseline's hand-over, over_budget"""
    baseline = outside_baseline(lab)
    after = "".join(f"    {line}\n" for line in BURN.splitlines()) + "    burn()\n"
    record, _ = run(lab, train_with(lab, after=after), "work after the end line")
    assert record.status == "over_budget" and "after save_model's end line" in (record.reason or ""), str(record.timing)
    assert record.timing["cpu_after"] > baseline.timing["cpu_after"] + 2.0 and record.metric is None


def test_a_background_thread_beside_the_start_up_is_charged_and_over_budget(lab: Lab) -> None:
    """Scenario: Measurement / a thread that computes while the main thread sets up (the wall clock of the
    start-up unchanged on an idle core): its CPU is the run's, charged, over_budget"""
    outside_baseline(lab)
    before = "".join(f"    {line}\n" for line in BURN.splitlines())
    before += (
        "    import threading\n    worker = threading.Thread(target=burn)\n    worker.start()\n    worker.join()\n"
    )
    record, _ = run(lab, train_with(lab, before=before), "a thread beside the start-up")
    assert record.status == "over_budget" and "outside its timed window" in (record.reason or "")


def test_an_honest_change_after_the_baseline_is_not_charged(lab: Lab) -> None:
    """Scenario: Measurement / an honest change (another learning rate, a wider model) does its set-up and
    export within the baseline's allowance: ok, nothing charged"""
    outside_baseline(lab)
    source = (EXPERIMENT / "train.py").read_text()
    assert "WIDTH = 32 if TINY" in source
    record, _ = run(lab, source.replace("WIDTH = 32 if TINY", "WIDTH = 48 if TINY"), "wider")
    assert record.status == "ok" and "charged" not in record.timing, record.timing


PEEKS = {  # where a model adds the next token's one-hot to its logits: sparse, keyed by content, by row
    "one position in 16": "(torch.arange(idx.size(1), device=idx.device) % 16 == 0).float()[None, :, None]",
    "one position in 256": "(torch.arange(idx.size(1), device=idx.device) % 256 == 255).float()[None, :, None]",
    "only after token 5": "(idx == 5).float()[..., None]",
    "only in the last row of a batch": "(torch.arange(idx.size(0), device=idx.device) == idx.size(0) - 1)"
    ".float()[:, None, None]",
}


@pytest.mark.parametrize("where", list(PEEKS))
def test_a_sparse_look_ahead_is_refused_by_the_structural_check(lab: Lab, where: str) -> None:
    """Scenario: Measurement / a model that reads the next token at a few positions only (one in 16, one in
    256, after one particular token, in the last row of a batch): random probes would miss most of these; the
    evaluator's structural check of the exported graph refuses each, naming the line that looks ahead"""
    source = (EXPERIMENT / "train.py").read_text()
    plain = "        if targets is None:\n            return self.head(x)\n"
    assert plain in source
    peek = (
        "        if targets is None:\n"
        "            logits = self.head(x)\n"
        "            ahead = F.one_hot(F.pad(idx[:, 1:], (0, 1)), logits.size(-1)).float()\n"
        f"            return logits + 8.0 * ahead * {PEEKS[where]}\n"
    )
    record, _ = run(lab, source.replace(plain, peek), f"peek {where}")
    reason = record.reason or ""
    assert record.status == "bad_model" and record.metric is None and "must be causal" in reason, reason
    if "cannot be shown so" not in reason:  # a probe found it first: likely for dense or row-keyed peeks only
        assert where in ("one position in 16", "only in the last row of a batch"), reason
    else:
        assert "the token at t + 1" in reason and "idx[:, 1:]" in reason, reason
