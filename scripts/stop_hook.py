#!/usr/bin/env python3
"""Claude Code Stop hook: while a night is on, send the agent back to the loop instead of letting it stop.

Whether a night is on comes from one state file, <state_dir>/night.json (see scripts/night.py): absent,
STOP created, its `stop` reason set (a cap reached) or its deadline passed, and the agent may stop (a night that
ended also gets a message for the human with the command that writes the morning report). When
Claude Code says the agent was already sent back once (`stop_hook_active`) and no run was recorded since,
the agent may stop too, so a stuck agent cannot loop on this hook; the overnight launcher starts a fresh
session. Runs still in flight (the pool's slot files, read by server/schema.py, which the server writes them with)
are named, so the agent collects them first. Standard library only: it runs under
whatever python3 the machine has.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import night  # noqa: E402  (a sibling script, not a package)

MARKER = "stop-hook.json"  # this hook's own memory: the history size when it last sent the agent back


def history_size(state: Path, tag: str) -> int:
    try:
        return (state / tag / "runs.jsonl").stat().st_size
    except OSError:
        return 0


def read_event() -> dict[str, Any]:
    try:
        event = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def reason(tag: str, deadline: object, flying: list[int] | None = None) -> str:
    until = f" until {time.strftime('%H:%M', time.localtime(deadline))}" if isinstance(deadline, int | float) else ""
    text = f"Do not stop: the night on tag {tag} goes on{until} and the human is away. "
    if flying:
        ids = ", ".join(map(str, flying))
        text += (f"Run{'s' if len(flying) > 1 else ''} {ids} {'are' if len(flying) > 1 else 'is'} still in flight: "
                 f"collect with get_history(wait_for=[{ids}]) and keep or discard each by run_id; then ")  # fmt: skip
        return text + "pick the next idea and continue with run_experiment; only the human ends the night."
    return text + ("Call get_history, pick the next idea, and continue with write_train and run_experiment; only "
                   "the human ends the night.")  # fmt: skip


def main() -> int:
    event = read_event()
    root = night.hook_root(event)
    state = night.state_dir(root)
    current = night.read_night(state)
    tag = str((current or {}).get("tag") or night.configured_tag(root))
    over = night.night_over(state, time.time())
    if over is not None:
        if current is not None:  # a night that ended: the human reads its report in the morning
            print(json.dumps({"systemMessage": f"The night on tag {tag} is over ({over}). The morning report: "
                                               f"{night.report_command(tag)}"}))  # fmt: skip
        return 0
    size = history_size(state, tag)
    marker = state / MARKER
    try:
        last = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        last = {}
    if event.get("stop_hook_active") and isinstance(last, dict) and last.get("history_size") == size:
        return 0  # sent back before and nothing ran since: let it stop; the launcher starts a fresh session
    night.write_json(marker, {"history_size": size})
    flying = [info.run_id for info in night.schema.runs_in_flight(state, tag) if info.run_id is not None]
    print(json.dumps({"decision": "block", "reason": reason(tag, (current or {}).get("deadline"), flying)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
