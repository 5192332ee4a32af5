#!/usr/bin/env python3
"""Claude Code Stop hook for overnight runs: tells the agent to continue the loop instead of stopping.

Active only when AUTORESEARCH_OVERNIGHT=1 (set by scripts/overnight.sh), so interactive sessions stop
normally. Lets the agent stop when the human creates .autoresearch/STOP, or when it was already sent
back once and no new run was recorded since (so a stuck agent cannot loop forever on this hook).
Standard library only: it runs under whatever python3 the machine has.
"""

import json
import os
import sys
from pathlib import Path


def history_size(state: Path) -> int:
    return sum(p.stat().st_size for p in state.glob("*/runs.jsonl"))


def main() -> int:
    if os.environ.get("AUTORESEARCH_OVERNIGHT") != "1":
        return 0
    event = json.loads(sys.stdin.read() or "{}")
    state = Path(os.environ.get("CLAUDE_PROJECT_DIR", ".")) / ".autoresearch"
    if (state / "STOP").exists():
        return 0
    marker = state / "stop-hook.json"
    size = history_size(state)
    last = json.loads(marker.read_text()) if marker.exists() else {}
    if event.get("stop_hook_active") and last.get("history_size") == size:
        return 0  # sent back before and nothing was run since: let it stop; the overnight loop restarts it
    state.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"history_size": size}))
    reason = (
        "Do not stop: the human is asleep and expects the loop to go on. Call get_history, pick the "
        "next idea, and continue with write_train and run_experiment. Never stop."
    )
    print(json.dumps({"decision": "block", "reason": reason}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
