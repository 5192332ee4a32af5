#!/usr/bin/env python3
"""Claude Code SessionStart hook: give a new, resumed or compacted session the state of the search.

Runs `python -m server.show.brief` with the project's own .venv (the history is read by the server's code, not
a second parser) and hands its few lines to the agent as additional context. Silent outside an
autoresearch project. Standard library only: it runs under whatever python3 the machine has.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import night  # noqa: E402  (a sibling script, not a package)

BRIEF_TIMEOUT_S = 30  # the brief reads a few files; a hung disk must not hold the session


def brief(root: Path) -> str:
    python = root / ".venv" / "bin" / "python"
    if not python.exists():
        return f"autoresearch: {python} is missing, so the search state is unknown; ask the human to run setup.sh."
    try:
        out = subprocess.run([str(python), "-m", "server.show.brief", "--root", str(root)], cwd=root,
                             capture_output=True, text=True, timeout=BRIEF_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"autoresearch: could not read the search state ({exc}); call get_history."
    problem = out.stderr.strip()[-200:]
    return out.stdout.strip() or f"autoresearch: could not read the search state ({problem}); call get_history."


def main() -> int:
    try:
        event = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        event = {}
    root = night.hook_root(event if isinstance(event, dict) else {})
    if not (root / "autoresearch.toml").is_file():
        return 0
    context = {"hookEventName": "SessionStart", "additionalContext": brief(root)}
    print(json.dumps({"hookSpecificOutput": context}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
