"""The holdout as a gate that stays reusable: Thresholdout (Dwork et al., "The reusable holdout", Science 2015).

Every keep asks the holdout one question: does the run's validation gain on the previous kept run hold on the
holdout? The gains compared are of the same two models (each run's first seed). While the holdout agrees with
validation within a noisy threshold, the answer is validation's own (it holds), and the holdout reveals almost
nothing. When it disagrees beyond the threshold, the answer is the holdout's gain with Laplace noise, and one
unit of the dataset's budget is spent; a gain that falls short of validation's by more than the threshold does
not hold, and keep refuses it. Each answer is drawn once per run and kept in a ledger, so asking again does not
draw the noise again. After `holdout_budget` disagreements the holdout has told what it safely can: the gate
stops (validation alone decides) and the limits say to prepare a fresh split.

The threshold T is the keep gate's own noise band on the run (the gain validation needs), floored at a small
absolute figure; the Laplace scale is T/4 (the ratio of the paper's experiments). Pure functions here; the ledger
is one JSON-lines file per dataset under the state folder (many tags may share a dataset's holdout).
May import what gate.py may.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from server.store.history import atomic_write, now

MIN_THRESHOLD = 1e-3  # bpb: a floor on T when the noise band is zero (one seed, min_improvement 0)


@dataclass(frozen=True)
class Answer:
    """The holdout's answer about one run: whether its validation gain holds, and what the answer cost."""

    tag: str
    run: int
    holds: bool
    disagreed: bool  # beyond the noisy threshold: one unit of the budget spent
    val_gain: float
    threshold: float
    noisy_gain: float | None  # the holdout's gain with Laplace noise, when it disagreed (private: never shown)
    at: str


def laplace(rng: random.Random, scale: float) -> float:
    """A draw from the Laplace distribution of this scale (the difference of two exponentials)."""
    return rng.expovariate(1.0 / scale) - rng.expovariate(1.0 / scale)


def thresholdout(
    val_gain: float, holdout_gain: float, threshold: float, rng: random.Random, tag: str = "", run: int = 0
) -> Answer:
    """One Thresholdout answer. Gains are signed so that positive is better (for either direction)."""
    t = max(threshold, MIN_THRESHOLD)
    sigma = t / 4
    if abs(val_gain - holdout_gain) <= t + laplace(rng, 2 * sigma):
        return Answer(tag, run, True, False, val_gain, t, None, now())
    noisy = holdout_gain + laplace(rng, sigma)
    return Answer(tag, run, noisy >= val_gain - t, True, val_gain, t, noisy, now())


class Ledger:
    """The holdout's answers for one dataset, one JSON line each (the state folder: no run and no agent reads it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def answers(self) -> list[Answer]:
        if not self.path.is_file():
            return []
        found = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                found.append(Answer(**json.loads(line)))
            except (ValueError, TypeError):
                continue  # a line cut by a crash: the answers before it stand
        return found

    def find(self, tag: str, run: int) -> Answer | None:
        return next((a for a in self.answers() if a.tag == tag and a.run == run), None)

    def spent(self) -> int:
        return sum(a.disagreed for a in self.answers())

    def add(self, answer: Answer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(asdict(a)) for a in [*self.answers(), answer]]
        atomic_write(self.path, ("\n".join(lines) + "\n").encode())


def ledger_path(state: Path, data: Path) -> Path:
    """One ledger per dataset: the prepared dataset's folder name and its meta.json's identity."""
    identity = data.name
    meta = data / "meta.json"
    if meta.is_file():
        try:
            held = json.loads(meta.read_text()).get("outputs", {}).get("holdout.bin", {})
            identity += "-" + str(held.get("sha256", ""))[:12]
        except (ValueError, AttributeError):
            pass
    return state / f"holdout-{identity.strip('-') or 'dataset'}.jsonl"


def system_rng() -> random.Random:
    """The server's noise: from the OS, so no run, no agent and no seed can replay it."""
    return random.SystemRandom(os.urandom(16))
