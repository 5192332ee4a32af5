"""Turns what the server measured about a run into its status: expected failures are values, not exceptions."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from server.config import Config
from server.run.evaluator import Evaluation
from server.run.runner import Outcome
from server.run.summary import as_float, parse_summary
from server.schema import tail_text
from server.store.history import RunRecord, now

TAIL_BYTES = 256_000  # the summary block and the last traceback live at the end of the log


def read_tail(path: Path, max_bytes: int = TAIL_BYTES) -> str:
    """The last max_bytes of a log as text, from a whole line ('' when missing)."""
    return tail_text(path, max_bytes)


def tail_lines(text: str, count: int) -> list[str]:
    return [line[:300] for line in text.rstrip("\n").splitlines()[-count:]]


@dataclass(frozen=True)
class Measured:
    """Everything the server measured about one run, the inputs of its classification."""

    outcome: Outcome
    log_path: Path
    tampered: list[str]
    model: Path | None = None  # the handed-over model, when there is one
    export_error: str | None = None
    evaluation: Evaluation | None = None  # None: not evaluated (self-reported, or it failed before)
    train_tokens: int | None = None  # the dataset's train split, for the run's epochs
    holdout: Evaluation | None = None  # scored with the evaluation when the run may be kept (history only)
    baseline: Baseline | None = None  # the tag baseline's figures (None: this run is the baseline)


def classify(run: RunRecord, measured: Measured, config: Config) -> RunRecord:
    """The finished record: status, reason, metric, the server's timings and the run's own figures."""
    text = read_tail(measured.log_path)
    summary = parse_summary(text)
    timing = timings(measured.outcome)
    if measured.evaluation is not None and measured.evaluation.seconds is not None:
        timing["evaluation"] = measured.evaluation.seconds
    if measured.holdout is not None and measured.holdout.seconds is not None:
        timing["holdout"] = measured.holdout.seconds
    charge = outside_charge(timing, measured.baseline)
    if charge > 0:
        timing["charged"] = charge
    status, reason, metric = _status(measured, summary, timing, config, text)
    if measured.tampered and status == "ok":
        status, reason = "tampered", f"the run changed locked file {measured.tampered[0]}; its result is not accepted"
    reported = as_float(summary, config.metric)
    flags = _flags(config, reported, metric if status == "ok" else None)
    epochs = passes(summary, measured.train_tokens)
    if repeated_data(summary, epochs):
        flags.append("repeated_data")
    if status == "ok" and starved(timing, config, measured.baseline):
        flags.append("starved")  # not evidence: the agent is told to run it again (views.py)
    outcome = measured.outcome
    memory_mb = outcome.peak_memory_mb
    training = timing.get("training") if config.evaluated else as_float(summary, "training_seconds")
    return run.model_copy(
        update={
            "status": status, "reason": reason, "summary": summary, "exit_code": outcome.exit_code,
            "metric": metric if status == "ok" else None, "reported": reported, "flags": flags,
            "training_seconds": training, "total_seconds": outcome.wall_seconds, "wall_seconds": outcome.wall_seconds,
            "timing": timing, "memory_gb": round(memory_mb / 1024, 3) if memory_mb is not None else None,
            "gpu_memory_gb": round(outcome.peak_gpu_memory_mb / 1024, 3) if outcome.peak_gpu_memory_mb else None,
            "epochs": epochs, "ended_at": now(),
        }
    )  # fmt: skip


def timings(outcome: Outcome) -> dict[str, float]:
    """Start-up, timed training and hand-over, in seconds, from the server's stamps on the marker lines."""
    marks, timing = outcome.marks, {}
    if "start" in marks:
        timing["startup"] = marks["start"]
    if "start" in marks and "end" in marks:
        timing["training"] = round(marks["end"] - marks["start"], 3)
        timing["handover"] = round(outcome.wall_seconds - marks["end"], 3)
    if outcome.last_step_gap is not None:
        timing["last_step"] = outcome.last_step_gap
    if outcome.cpu_seconds is not None and outcome.cpu_wait_seconds is not None:
        timing["cpu"], timing["cpu_wait"] = outcome.cpu_seconds, outcome.cpu_wait_seconds
    cpu = outcome.cpu_marks
    if {"start", "end", "exit"} <= set(cpu):
        timing["cpu_before"] = cpu["start"]
        timing["cpu_training"] = round(cpu["end"] - cpu["start"], 3)
        timing["cpu_after"] = round(cpu["exit"] - cpu["end"], 3)
    return timing


@dataclass(frozen=True)
class Baseline:
    """What the tag's baseline measured, the reference later runs are held to (the decider picks it, lab/gate):
    its CPU seconds outside its timed window (before its start line, after its end line: imports, set-up, the
    export), its CPU seconds per second of timed training (what converts extra CPU into training time), and the
    share of its runnable time its threads waited for a CPU (what a run of this kind waits on this machine)."""

    run_id: int
    outside_cpu: float | None = None
    cpu_rate: float | None = None
    wait_share: float | None = None

    def allowance(self) -> float:
        """CPU seconds outside the window a run may use: the baseline's, OUTSIDE_TOLERANCE more, OUTSIDE_SLACK_S."""
        return (self.outside_cpu or 0.0) * (1 + OUTSIDE_TOLERANCE) + OUTSIDE_SLACK_S


OUTSIDE_TOLERANCE = 0.25  # honest runs vary: a bigger model takes longer to build and to export
OUTSIDE_SLACK_S = 2.0  # CPU seconds: a cold start's imports beside a warm baseline's, the scheduler's noise


def outside_cpu(timing: dict[str, float]) -> float | None:
    """CPU seconds the run used outside its timed window (before the start line, after the end line)."""
    if "cpu_before" not in timing or "cpu_after" not in timing:
        return None
    return round(timing["cpu_before"] + timing["cpu_after"], 3)


def outside_charge(timing: dict[str, float], baseline: Baseline | None) -> float:
    """Seconds of timed training the run's extra work outside the window is worth: its CPU seconds outside the
    window beyond the baseline's allowance, at the baseline's CPU seconds per second of training. 0 without a
    reference (the tag's first run is the reference) or a measurement."""
    used = outside_cpu(timing)
    if baseline is None or baseline.outside_cpu is None or not baseline.cpu_rate or used is None:
        return 0.0
    return round(max(0.0, used - baseline.allowance()) / baseline.cpu_rate, 3)


def wait_share(timing: dict[str, float]) -> float | None:
    """The share of its runnable time the run's threads spent waiting for a CPU (the kernel's run-queue delay);
    None when not measured or when the run hardly ran (under a CPU second)."""
    ran, waited = timing.get("cpu"), timing.get("cpu_wait")
    if ran is None or waited is None or ran + waited < 1.0:
        return None
    return waited / (ran + waited)


def starved_words(run: RunRecord) -> str:
    """'its threads waited 47% of their runnable time for a CPU that other processes held'."""
    share = wait_share(run.timing)
    if share is None:
        return "other processes held the CPU"
    return f"its threads waited {share:.0%} of their runnable time for a CPU that other processes held"


def starved(timing: dict[str, float], config: Config, baseline: Baseline | None) -> bool:
    """Whether the run's threads waited for a CPU `starved_share` more of their runnable time than the tag
    baseline's did (a run's threads also wait for each other: the baseline's share is what a run of this kind
    waits on this machine anyway). The baseline itself is not judged."""
    share = wait_share(timing)
    if share is None or baseline is None or baseline.wait_share is None:
        return False
    return share - baseline.wait_share >= config.starved_share


def allowed_training(config: Config, last_step: float | None) -> float:
    """The budget; its tolerance or 1 s, whichever is more (the marker lines' latency on a busy machine, and
    the default loop's overshoot: it stops at the step that ends nearest the budget, under half a step past
    it); and the last step again, counted up to the tolerance only (a loop that checks the clock after a step
    overshoots by up to one step; a run that withholds its progress lines to fake a long last step gains that
    little). At 60 s: 61 s and at most 61.6 s (bench/extra_training.py measures what the most is worth)."""
    slack = config.time_budget * config.budget_tolerance
    return config.time_budget + max(slack, 1.0) + min(last_step or 0.0, slack)


def passes(summary: dict[str, str], train_tokens: int | None) -> float | None:
    """How many times the run went through its training data: the tokens it trained on (its summary's
    total_tokens_M) over the train split's tokens (the dataset's meta.json)."""
    tokens_m = as_float(summary, "total_tokens_M")
    if tokens_m is None or not train_tokens:
        return None
    return round(tokens_m * 1e6 / train_tokens, 3)


def repeated_data(summary: dict[str, str], epochs: float | None) -> bool:
    """Whether the run saw some training tokens more than once: the loss then measures memory, not learning."""
    epoch = as_float(summary, "epoch")  # the dataloader's epoch when training ended (1 = the first pass)
    return (epochs is not None and epochs > 1.0) or (epoch is not None and epoch >= 2)


def _flags(config: Config, reported: float | None, metric: float | None) -> list[str]:
    flags = []
    if config.sandbox == "off":
        flags.append("unsandboxed")
    if not config.evaluated:
        flags.append("self-reported")
    elif reported is not None and metric is not None and abs(reported - metric) > 1e-3 * max(1.0, abs(metric)):
        flags.append("reported_mismatch")
    return flags


def _status(
    measured: Measured, summary: dict[str, str], timing: dict[str, float], config: Config, text: str
) -> tuple[str, str | None, float | None]:
    failed = _ended_badly(measured, config, text)
    if failed is not None:
        return (*failed, None)
    if not config.evaluated:
        return _self_reported(summary, config)
    if measured.export_error is not None:
        return "export_failed", f"save_model could not export the model: {measured.export_error}", None
    if measured.model is None:
        return "no_model", ("exited 0 without handing a model over: call prepare.training_starts() before the "
                            "first timed step and end train.py with prepare.save_model(model)"), None  # fmt: skip
    late = over_budget(timing, config, measured.baseline)
    if late is not None:
        return "over_budget", late, None
    evaluation = measured.evaluation
    if evaluation is None or evaluation.status == "failed":
        why = evaluation.reason if evaluation else "the evaluator did not run"
        return "eval_failed", f"{why}; this is not train.py's fault: run again, or tell the human if it repeats", None
    if evaluation.status == "bad_model":
        return "bad_model", f"the evaluator refused the model: {evaluation.reason}", None
    return "ok", None, evaluation.metric


def _ended_badly(measured: Measured, config: Config, text: str) -> tuple[str, str] | None:
    outcome = measured.outcome
    if outcome.stop == "timeout":
        return "timeout", f"killed after {outcome.wall_seconds:.0f}s, the hard limit of {config.hard_timeout:.0f}s"
    if outcome.stop == "cancelled":
        return "cancelled", "the run_experiment call was cancelled; the run was killed"
    if outcome.stop == "memory":
        return "memory_limit", (f"killed: its processes used more than the memory limit of "
                                f"{config.memory_limit_mb / 1024:.1f} GB; use a smaller model or batch")  # fmt: skip
    if outcome.stop == "processes":
        return "process_limit", (f"killed: it ran more than {config.max_processes} processes at once; "
                                 "start fewer (dataloader workers, subprocesses)")  # fmt: skip
    if outcome.log_error is not None:  # the summary on disk may be cut: nothing in it can be trusted
        return "crash", f"the run's log could not be written ({outcome.log_error}); free disk space and run again"
    if outcome.exit_code != 0 and text.lstrip().startswith("bwrap:"):
        first = text.strip().splitlines()[0][:200]
        return "sandbox_failed", f"the sandbox could not start ({first}); not train.py's fault: tell the human"
    if outcome.exit_code != 0 and measured.export_error is None:
        return "crash", _crash_reason(outcome.exit_code, text)
    return None


def over_budget(timing: dict[str, float], config: Config, baseline: Baseline | None = None) -> str | None:
    """Why the server's clock says the run broke the budget, or None. Work outside the timed window beyond the
    baseline's (outside) is charged to the timed training at the baseline's rate."""
    if "startup" not in timing:
        return "it never started timed training: call prepare.training_starts() right before the first step"
    if timing["startup"] > config.startup_limit:
        return (f"start-up took {timing['startup']:.1f}s before timed training, over the allowance of "
                f"{config.startup_limit:g}s")  # fmt: skip
    if "training" not in timing:
        return "it never ended timed training: end train.py with prepare.save_model(model)"
    allowed = allowed_training(config, timing.get("last_step"))
    charge = outside_charge(timing, baseline)
    if charge > 0 and baseline is not None and timing["training"] + charge > allowed:
        used = outside_cpu(timing) or 0.0
        more = used - (baseline.outside_cpu or 0.0)
        return (f"it computed {used:.1f} CPU seconds outside its timed window ({timing['cpu_before']:.1f}s before "
                f"training_starts(), {timing['cpu_after']:.1f}s after save_model's end line), {more:.1f}s "
                f"more than the baseline (run {baseline.run_id}), past its allowance of {baseline.allowance():.1f}s: "
                f"charged as {charge:.1f}s of training, {timing['training']:.1f}s + {charge:.1f}s is over the "
                f"{config.time_budget:g}s budget. Train only between training_starts() and save_model(); set-up "
                "and compilation are free only as long as the baseline's")  # fmt: skip
    if timing["training"] > allowed:
        return f"trained {timing['training']:.1f}s by the server's clock, over the {config.time_budget:g}s budget"
    if timing["handover"] > config.handover_limit:
        return (f"ran {timing['handover']:.1f}s after training ended, over the hand-over allowance of "
                f"{config.handover_limit:g}s")  # fmt: skip
    return None


def _self_reported(summary: dict[str, str], config: Config) -> tuple[str, str | None, float | None]:
    """The old contract (the human's config allows it): the metric and training time the run printed."""
    metric = as_float(summary, config.metric)
    training = as_float(summary, "training_seconds")
    if metric is None:
        seen = f" ({config.metric}: {summary[config.metric]!r})" if config.metric in summary else ""
        return "no_metric", f"exited 0 but printed no finite {config.metric} in a final `---` block{seen}", None
    if training is None:
        return "over_budget", "the summary has no training_seconds, so the budget cannot be checked", None
    if training > config.time_budget * (1 + config.budget_tolerance) + 1.0:
        return "over_budget", f"trained {training:.1f}s, over the {config.time_budget:g}s budget", None
    return "ok", None, metric


def _crash_reason(exit_code: int | None, text: str) -> str:
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        hint = " (out of memory?)" if -exit_code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    fail = [line for line in lines if line.startswith("FAIL")]
    last = fail[-1] if fail else (lines[-1] if lines else "no output")
    if any(sign in text for sign in NO_DEVICE):
        return (f"exit code {exit_code}: the device the run asked for is not there ({last[:150]}); not "
                "train.py's fault if it did not change the device: tell the human (GPU visible? "
                "CUDA_VISIBLE_DEVICES?)")  # fmt: skip
    return f"exit code {exit_code}: {last[:200]}"


NO_DEVICE = ("Found no NVIDIA driver", "no CUDA GPUs are available", "CUDA driver version is insufficient",
             "Torch not compiled with CUDA enabled", "MPS backend is not available")  # fmt: skip
