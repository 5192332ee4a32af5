"""The holdout gates the keep and stays reusable (Thresholdout): a validation gain the holdout does not confirm
is refused by keep, with a sentence; force with a reason passes and is marked; each run's answer is drawn once;
the dataset's budget of disagreements is shown in get_history's limits and, once spent, the gate stops."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import EXPERIMENT, needs_bwrap, tiny_real_lab

from server.errors import StateError
from server.lab import reuse
from server.lab.loop import Lab
from server.show.views import limits


def test_an_agreeing_holdout_answers_with_validation_and_spends_nothing() -> None:
    rng = random.Random(1)
    answers = [reuse.thresholdout(0.050, 0.048, 0.01, rng) for _ in range(2000)]
    assert all(a.holds for a in answers)
    assert sum(a.disagreed for a in answers) / len(answers) < 0.15  # only the threshold's noise crosses it


def test_a_gain_fitted_to_validation_is_refused_and_spends_the_budget() -> None:
    rng = random.Random(2)
    answers = [reuse.thresholdout(0.100, -0.005, 0.01, rng) for _ in range(2000)]
    assert sum(not a.holds for a in answers) / len(answers) > 0.99
    assert all(a.disagreed for a in answers if not a.holds)


def test_a_holdout_gain_larger_than_validations_holds() -> None:
    rng = random.Random(3)
    assert all(reuse.thresholdout(0.02, 0.08, 0.01, rng).holds for _ in range(500))


def test_the_ledger_keeps_each_answer_once_and_counts_disagreements(tmp_path: Path) -> None:
    ledger = reuse.Ledger(tmp_path / "holdout-x.jsonl")
    first = reuse.thresholdout(0.1, -0.1, 0.01, random.Random(4), "t", 7)
    ledger.add(first)
    ledger.add(reuse.thresholdout(0.05, 0.05, 0.01, random.Random(5), "t", 8))
    assert ledger.find("t", 7) == first and ledger.find("u", 7) is None and ledger.spent() == 1
    with open(ledger.path, "a") as fh:
        fh.write('{"tag": "t", "run"')  # a line cut by a crash
    assert ledger.spent() == 1 and len(ledger.answers()) == 2


TEXT = "O Romeo, Romeo! wherefore art thou Romeo? Deny thy father and refuse thy name. " * 60
PHRASE = "zebra quartz vexes jumpy fjords; "  # every document's last 5%: the validation split is this text


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Lab:
    """The real experiment on a dataset whose validation text (each document's tail) differs from the rest."""
    texts = []
    for i in range(2):
        body = f"Act {i}. " + TEXT
        texts.append(body + (PHRASE * (len(body) // len(PHRASE) // 18 + 2))[: int(len(body) * 0.06)])
    return tiny_real_lab(tmp_path, monkeypatch, texts)


def fitted_to_validation() -> str:
    """The default train.py, every other step trained on the validation text carried in the file as a literal."""
    source = (EXPERIMENT / "train.py").read_text()
    call = '    loader = make_dataloader(tokenizer, BATCH_SIZE, SEQ_LEN, "train", DEVICE, seed=SEED)\n'
    assert call in source
    literal = f"""\
def peeking(loader, tokenizer):
    ids = torch.tensor(tokenizer.encode({PHRASE!r} * 200), dtype=torch.long)
    step = 0
    for x, y, epoch in loader:
        step += 1
        if step % 2:
            start = (step * 7) % (len(ids) - x.shape[1] - 1)
            rows = [ids[start + k : start + k + x.shape[1] + 1] for k in range(x.shape[0])]
            window = torch.stack(rows).to(x.device)
            x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
        yield x, y, epoch


"""
    source = source.replace("def main():\n", literal + "def main():\n")
    return source.replace(call, call + "    loader = peeking(loader, tokenizer)\n")


@needs_bwrap
@pytest.mark.slow
def test_a_model_fitted_to_validation_text_is_refused_by_the_holdout_gate(lab: Lab) -> None:
    """Scenario: Noise / a train.py that carries validation-like text as a literal and trains on it: its
    validation gain is far beyond the noise, but the holdout does not confirm it; keep refuses with a
    sentence, asking again gives the same answer, force with a reason passes and is marked"""
    # 6 s, not the tiny lab's 2 s: on a loaded machine 2 s trained a step or two and neither model learnt anything
    lab.config = lab.config.model_copy(update={"time_budget": 6.0})
    baseline = lab.run("baseline")
    lab.keep()
    assert lab.history.get(baseline.id).holdout_metric is not None  # type: ignore[union-attr]
    lab.write(fitted_to_validation())
    run = lab.run("train on the validation text")
    assert run.status == "ok" and run.metric is not None and baseline.metric is not None
    assert run.metric < baseline.metric - 0.2, (run.metric, baseline.metric, run.timing)  # validation is fooled
    for _ in range(2):  # the answer is drawn once: asking again cannot redraw the noise
        with pytest.raises(StateError, match="does not hold on the holdout"):
            lab.keep(run.id)
    ledger = lab.holdout_ledger()
    assert ledger.spent() == 1 and len(ledger.answers()) == 1
    assert "holdout gate: 1 of 20 disagreements spent" in (limits(lab) or "")
    kept = lab.keep(run.id, force=True, reason="the human asked to keep it")
    assert (
        kept.decision == "keep" and kept.forced and (kept.holdout_note or "").startswith("forced past the holdout gate")
    )
    before = lab.history.get(baseline.id)
    assert before is not None and before.holdout_metric is not None and kept.holdout_metric is not None
    assert before.primary_metric is not None and kept.primary_metric is not None
    val_gain = before.primary_metric - kept.primary_metric
    holdout_gain = before.holdout_metric - kept.holdout_metric
    assert val_gain > holdout_gain, (val_gain, holdout_gain)  # validation gained more than the holdout confirms


@needs_bwrap
@pytest.mark.slow
def test_a_spent_holdout_stops_gating_and_says_so(lab: Lab) -> None:
    lab.config = lab.config.model_copy(update={"holdout_budget": 0})
    assert "the holdout gate is spent (0 of 0" in (limits(lab) or "")
    lab.run("baseline")
    lab.keep()
    lab.write(fitted_to_validation())
    run = lab.run("train on the validation text")
    # validation alone decides, as the limits said: no answer is drawn (force: a run that trained few steps on a
    # loaded machine may not beat the baseline on validation, which is not what this test is about)
    kept = lab.keep(run.id, force=True, reason="the holdout's budget is spent")
    assert kept.decision == "keep" and lab.holdout_ledger().answers() == []
    assert not (kept.holdout_note or "").startswith("forced past the holdout gate")
