"""The state of a search in a few lines: for a resumed or compacted Claude Code session, and the status skill.

`python -m server.show.brief [--root R] [--tag T]` prints it; the SessionStart hook (scripts/session_hook.py)
hands it to the agent. Also the one reader of the runs in flight for the dashboard.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from server.config import load_config
from server.errors import AutoresearchError
from server.run.summary import last_progress
from server.schema import SlotInfo, runs_in_flight, tail_text
from server.show.table import counts, fmt_delta, fmt_metric, outcome, shorten
from server.show.watch import LOG_TAIL_BYTES, clock
from server.store.history import History, RunRecord, best_run

RECENT = 5


class InFlight(BaseModel):
    """A run its slot file says is running, with what its log last said."""

    run_id: int | None
    tag: str | None
    description: str
    slot: int | None = None
    device: str | None = None
    elapsed_s: float | None
    left_s: float | None
    budget_s: float | None
    step: int | None = None
    loss: float | None = None
    remaining_s: float | None = None
    last_line: str = ""


def in_flight(state_dir: Path, now: float | None = None) -> list[InFlight]:
    """The runs in flight, in slot order; [] when nothing runs (no slot described, or only dead owners)."""
    now = time.time() if now is None else now
    return [_in_flight(run, now) for run in runs_in_flight(state_dir)]


def _in_flight(run: SlotInfo, now: float) -> InFlight:
    text = tail_text(run.log, LOG_TAIL_BYTES) if run.log else ""
    progress = last_progress(text)
    last = next((line for line in reversed(text.splitlines()) if line.strip()), "")
    return InFlight(
        run_id=run.run_id,
        tag=run.tag,
        description=run.description,
        slot=run.slot,
        device=run.device,
        elapsed_s=now - run.started_at if run.started_at is not None else None,
        left_s=run.deadline - now if run.deadline is not None else None,
        budget_s=run.budget,
        step=progress.step if progress else None,
        loss=progress.loss if progress else None,
        remaining_s=progress.remaining if progress else None,
        last_line=shorten(last, 160),
    )


def run_line(run: RunRecord) -> str:
    return f"#{run.id} {outcome(run)} {fmt_metric(run.metric)} ({fmt_delta(run)}) {shorten(run.description, 70)}"


def running_line(run: InFlight) -> str:
    """'in flight on tag night: #7 'idea' (slot 1, GPU 1), elapsed 0:30, step 12, loss 3.2500, 48s of training left'"""
    where = f" on tag {run.tag}" if run.tag else ""
    place = ", ".join(([f"slot {run.slot}"] if run.slot is not None else []) +
                      ([f"GPU {run.device}"] if run.device is not None else []))  # fmt: skip
    parts = [f"in flight{where}: #{run.run_id} {shorten(run.description, 60)!r}" + (f" ({place})" if place else "")]
    if run.elapsed_s is not None:
        parts.append(f"elapsed {clock(run.elapsed_s)}")
    if run.step is not None and run.loss is not None:
        parts.append(f"step {run.step}, loss {run.loss:.4f}")
    if run.remaining_s is not None:
        parts.append(f"{run.remaining_s:.0f}s of training left")
    return ", ".join(parts)


def running_lines(runs: list[InFlight]) -> list[str]:
    """A line per run in flight and how to collect them, or that nothing runs."""
    if not runs:
        return ["nothing is running now."]
    ids = ", ".join(str(run.run_id) for run in runs)
    return [*(running_line(run) for run in runs),
            f"collect {'it' if len(runs) == 1 else 'them'} with get_history(wait_for=[{ids}]), then keep or discard "
            "each by run_id."]  # fmt: skip


def brief(state_dir: Path, tag: str, metric: str = "val_bpb", recent: int = RECENT) -> str:
    """A handful of lines: the totals, the best run, the latest runs, the runs in flight."""
    runs = History(state_dir / tag).runs()
    c = counts(runs)
    lines = [f"autoresearch, tag {tag}: {c['runs']} runs, {c['kept']} kept, {c['discarded']} discarded, "
             f"{c['crashed']} crashed, {c['pending']} awaiting keep or discard."]  # fmt: skip
    best = best_run(runs)
    if best is not None:
        lines.append(f"best {metric}: {fmt_metric(best.metric)} by #{best.id} ({best.commit[:7]}) "
                     f"{shorten(best.description, 70)}")  # fmt: skip
    if runs:
        lines.append("latest runs:")
        lines.extend(f"  {run_line(run)}" for run in runs[-recent:])
    lines.extend(running_lines(in_flight(state_dir)))
    lines.append("get_history gives the full table; continue the loop from there.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.show.brief", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository (default: here)")
    parser.add_argument("--tag", help="the run tag (default: the configuration's)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.root)
    except AutoresearchError as exc:
        print(f"autoresearch: {exc}")
        return 0  # a hook's output: the agent reads the sentence, the session goes on
    print(brief(args.root / config.state_dir, args.tag or config.tag, config.metric))
    return 0


if __name__ == "__main__":
    sys.exit(main())
