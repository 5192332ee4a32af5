"""The experiment's output contract (docs/CONTRACT.md): progress lines and the final `---` summary block."""

from __future__ import annotations

import ast
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path


def _locked_prepare() -> Path:
    """The server's checkout's experiment/prepare.py; on a Ray worker, where the server's code arrived as a
    module of its own (runtime_env py_modules), the experiment folder that came with it on the import path."""
    beside = Path(__file__).resolve().parents[2] / "experiment" / "prepare.py"
    shipped = (Path(entry) / "experiment" / "prepare.py" for entry in sys.path if entry)
    return next((path for path in [beside, *shipped] if path.is_file()), beside)


LOCKED_PREPARE = _locked_prepare()
CONTRACT_NAMES = ("MARK_START", "MARK_END", "MARK_SAVED", "MODEL_FILE", "EXPORT_ERROR_FILE")


def contract_constants(path: Path = LOCKED_PREPARE) -> dict[str, str]:
    """The output contract's names as the locked prepare.py defines them (its one definition), read from its
    source without running it: it imports torch, which the server never loads."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    except (OSError, SyntaxError) as exc:
        raise RuntimeError(f"the server reads the output contract from {path}, which it cannot read: {exc}") from exc
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in CONTRACT_NAMES and isinstance(value := ast.literal_eval(node.value), str):
                found[name] = value
    missing = [name for name in CONTRACT_NAMES if name not in found]
    if missing:
        raise RuntimeError(f"{path} does not define {', '.join(missing)} as a string: restore the locked file")
    return found


# Marker lines a run prints through the locked prepare.py (training_starts, save_model); the server stamps
# them with its own clock as they arrive. A printed copy is worth no more: the first start and the last end
# count, and the time outside them is bounded by the start-up and hand-over allowances.
_CONTRACT = contract_constants()
MARK_START = _CONTRACT["MARK_START"]
MARK_END = _CONTRACT["MARK_END"]
MARK_SAVED = _CONTRACT["MARK_SAVED"]
MARKERS = {MARK_START: "start", MARK_END: "end", MARK_SAVED: "saved"}
MODEL_FILE = _CONTRACT["MODEL_FILE"]  # what save_model writes in the run's output folder
EXPORT_ERROR_FILE = _CONTRACT["EXPORT_ERROR_FILE"]  # ... or, when the export failed, why

PROGRESS_RE = re.compile(
    r"^step\s+(?P<step>\d+)\b.*?\bloss\s+(?P<loss>[-+0-9.eEnaif]+)"
    r"(?:.*?\belapsed\s+(?P<elapsed>[0-9.]+)s)?(?:.*?\bremaining\s+(?P<remaining>[0-9.]+)s)?"
)


@dataclass(frozen=True)
class Progress:
    """The latest progress line of a run."""

    step: int
    loss: float
    elapsed: float | None
    remaining: float | None

    def describe(self) -> str:
        left = f", {self.remaining:.0f}s of training left" if self.remaining is not None else ""
        return f"step {self.step}, loss {self.loss:.4f}{left}"


def parse_progress(line: str) -> Progress | None:
    """A progress line, or None for any other line."""
    match = PROGRESS_RE.match(line.strip())
    if not match:
        return None
    try:
        loss = float(match["loss"])
    except ValueError:
        return None
    elapsed, remaining = match["elapsed"], match["remaining"]
    return Progress(
        int(match["step"]), loss, float(elapsed) if elapsed else None, float(remaining) if remaining else None
    )


def last_progress(text: str) -> Progress | None:
    """The last progress line in a chunk of log text."""
    for line in reversed(text.splitlines()):
        progress = parse_progress(line)
        if progress is not None:
            return progress
    return None


def parse_summary(text: str) -> dict[str, str]:
    """The `key: value` lines after the LAST line that is exactly `---` (earlier blocks may be fakes)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if not starts:
        return {}
    summary: dict[str, str] = {}
    for line in lines[starts[-1] + 1 :]:
        key, sep, value = line.partition(":")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            continue
        summary[key.strip()] = value.strip()
    return summary


def as_float(summary: dict[str, str], key: str) -> float | None:
    """A finite float from the summary, or None when absent or not a number."""
    try:
        value = float(summary[key])
    except (KeyError, ValueError):
        return None
    return value if math.isfinite(value) else None
