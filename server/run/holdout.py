"""The holdout check: a run's model is scored on a split no run and no agent ever sees; whether its validation
gain holds there is the keep gate's question (server/lab/reuse.py, Thresholdout), and a disagreement is noted.

The figures live in the history only (RunRecord.holdout_metric, holdout_note); views.py leaves them out of
every tool result, and the evaluator's log goes to runs/<id>/eval-holdout.log, which no view reads.
"""

from __future__ import annotations

from server.errors import AutoresearchError
from server.run.evaluator import read_result
from server.run.pipeline import Candidate, RunContext, cleanup, score
from server.run.summary import MODEL_FILE
from server.store import pins
from server.store.history import History, RunRecord


def score_holdout(ctx: RunContext, history: History, run: RunRecord) -> tuple[float | None, str | None]:
    """The run's model (its first seed's) on the holdout split, and a note when it disagrees with validation."""
    config, places = ctx.config, ctx.places
    run_dir = history.run_dir(run.id)
    model = run_dir / "out" / MODEL_FILE
    if not (config.evaluated and config.holdout and model.is_file()):
        return None, None
    if not (places.data / "holdout.bin").exists():  # runs go on; the human sees why there is no figure
        return None, (f"the dataset {places.data} has no holdout split (an older prepare.py made it); "
                      "run `autoresearch prepare` again")  # fmt: skip
    ready = run_dir / "eval-holdout" / "result.json"  # scored with the run's evaluation (pipeline.measure)
    evaluation = read_result(ready, None, run_dir / "eval-val.log") if ready.is_file() else None
    if evaluation is None or evaluation.status != "ok":
        candidate = Candidate(run, run_dir, pins.load_pins(history.folder / "pins.json"))
        try:
            evaluation = score(ctx, candidate, model, split="holdout")
        except AutoresearchError as exc:
            return None, f"the holdout could not be scored: {exc}"
        finally:
            cleanup(candidate)
    if evaluation.status != "ok" or evaluation.metric is None:
        return None, f"the holdout evaluation {evaluation.status}: {evaluation.reason}"
    previous = previous_kept(history.runs(), run.id)
    return evaluation.metric, holdout_note(previous, run, evaluation.metric, config.direction)


def previous_kept(runs: list[RunRecord], before: int) -> RunRecord | None:
    """The latest kept run before `before` that has a holdout figure."""
    kept = [r for r in runs if r.id < before and r.decision == "keep" and r.holdout_metric is not None]
    return kept[-1] if kept else None


def holdout_note(previous: RunRecord | None, run: RunRecord, holdout: float, direction: str) -> str | None:
    """Why the holdout disagrees: validation improved on the previous kept run, the holdout did not.

    Both figures are of the same models (each run's first seed), so the comparison is like for like."""
    val_before, val_now = previous.primary_metric if previous else None, run.primary_metric
    if previous is None or previous.holdout_metric is None or val_before is None or val_now is None:
        return None
    sign = 1.0 if direction == "minimize" else -1.0
    val_gain = sign * (val_before - val_now)
    holdout_gain = sign * (previous.holdout_metric - holdout)
    if val_gain > 0 and holdout_gain <= 0:
        return (f"validation gain {val_gain:.6f} on run {previous.id} does not appear on the holdout "
                f"({holdout_gain:+.6f})")  # fmt: skip
    return None
