#!/usr/bin/env python3
"""The night file: whether an unattended search goes on. Read by the launcher and the Stop hook alike.

One JSON file, <state_dir>/night.json, says that a night is on (state_dir is `.autoresearch` unless
autoresearch.toml or AUTORESEARCH_STATE_DIR say otherwise):

    {"version": 1, "tag": "nov25", "started_at": 1764190000.0, "deadline": 1764226800.0, "stop": null}

`deadline` (epoch seconds or null) ends the night when it passes; `stop` (null or one sentence) ends it at
once: the server may write it when a cap is reached. A file <state_dir>/STOP ends it too (the human's
switch). `start` writes the file, `stop` creates STOP, `check` exits 0 while the night goes on and 1 with
the reason otherwise; `state-dir` prints where the state lives. Standard library only: hooks run
it under whatever python3 the machine has.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: server/schema.py, stdlib only
from server import schema  # noqa: E402
from server.schema import NIGHT_FILE, STOP_FILE, read_night, write_json  # noqa: E402,F401  (the hooks' names)

DEFAULT_STATE_DIR = ".autoresearch"


def project_root(explicit: str | None = None) -> Path:
    """The repository: --root, else the project Claude Code opened, else the current directory."""
    return Path(explicit or os.environ.get("CLAUDE_PROJECT_DIR") or os.getcwd())


def hook_root(event: dict[str, Any]) -> Path:
    """A hook's project: CLAUDE_PROJECT_DIR (the root even when the session moved into a subfolder), else its cwd."""
    cwd = event.get("cwd")
    return project_root(None if os.environ.get("CLAUDE_PROJECT_DIR") or not isinstance(cwd, str) else cwd)


def config_table(root: Path) -> dict[str, Any]:
    """The [autoresearch] table of autoresearch.toml, {} when absent or unreadable (old Pythons lack tomllib)."""
    try:
        import tomllib

        data = tomllib.loads((root / "autoresearch.toml").read_text(encoding="utf-8"))
    except (ImportError, OSError, ValueError):
        return {}
    table = data.get("autoresearch", data)
    return table if isinstance(table, dict) else {}


def state_dir(root: Path) -> Path:
    """Where the server keeps its state, with the same precedence as the server's configuration."""
    name = os.environ.get("AUTORESEARCH_STATE_DIR") or config_table(root).get("state_dir") or DEFAULT_STATE_DIR
    return root / str(name)


def configured_tag(root: Path) -> str:
    return os.environ.get("AUTORESEARCH_TAG") or str(config_table(root).get("tag") or "default")


def night_over(state: Path, now: float) -> str | None:
    """Why the night is over, in one sentence; None while it goes on (a night file exists, nothing ended it)."""
    if read_night(state) is None:
        return f"no night is running ({state / NIGHT_FILE} is absent)"
    return schema.night_stopped(state, now)


def parse_deadline(text: str, now: datetime) -> float:
    """'8h', '90m', '07:00' (the next such time), an ISO date-time, or epoch seconds -> epoch seconds."""
    text = text.strip()
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([hm])", text):
        amount = float(match[1]) * (3600 if match[2] == "h" else 60)
        return now.timestamp() + amount
    if match := re.fullmatch(r"(\d{1,2}):(\d{2})", text):
        at = now.replace(hour=int(match[1]), minute=int(match[2]), second=0, microsecond=0)
        return (at if at > now else at + timedelta(days=1)).timestamp()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"cannot read the deadline {text!r}; give 8h, 90m, 07:00 or 2026-11-27T07:00.") from None


def start(root: Path, tag: str | None, deadline: float | None) -> dict[str, Any]:
    """Begin a night: write the night file and remove an old STOP."""
    state = state_dir(root)
    night = {"version": 1, "tag": tag or configured_tag(root), "started_at": time.time(), "deadline": deadline,
             "stop": None}  # fmt: skip
    write_json(state / NIGHT_FILE, night)
    (state / STOP_FILE).unlink(missing_ok=True)
    return night


def report_command(tag: str) -> str:
    """The command that writes the morning report of the night's tag (server/show/report.py)."""
    return f".venv/bin/autoresearch report --tag {tag} --html"


def describe(night: dict[str, Any] | None, over: str | None) -> str:
    if night is None or over:
        return f"the night is over: {over}."
    deadline = night.get("deadline")
    until = time.strftime("%Y-%m-%d %H:%M", time.localtime(deadline)) if deadline else "no deadline"
    return f"a night is on for tag {night.get('tag')} ({until})."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("action", choices=["start", "stop", "check", "show", "state-dir"])
    parser.add_argument("deadline", nargs="?", help="start: 8h, 90m, 07:00, an ISO date-time or epoch seconds")
    parser.add_argument("--tag", help="start: the run tag (default: AUTORESEARCH_TAG, else autoresearch.toml)")
    parser.add_argument("--root", help="the repository (default: CLAUDE_PROJECT_DIR, else the current directory)")
    args = parser.parse_args(argv)
    root = project_root(args.root)
    state = state_dir(root)
    if args.action == "state-dir":
        print(state)
        return 0
    if args.action == "start":
        try:
            deadline = parse_deadline(args.deadline, datetime.now().astimezone()) if args.deadline else None
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        start(root, args.tag, deadline)
    elif args.action == "stop":
        state.mkdir(parents=True, exist_ok=True)
        (state / STOP_FILE).touch()
    over = night_over(state, time.time())
    print(describe(read_night(state), over))
    return 1 if args.action == "check" and over else 0


if __name__ == "__main__":
    sys.exit(main())
