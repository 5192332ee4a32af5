#!/usr/bin/env python3
"""Claude Code PreToolUse hook: refuse edits to the locked and steering files of an autoresearch project.

Guards Edit, Write, MultiEdit and NotebookEdit by their path, and Bash commands that name a protected path
and could change it (anything but a short list of read-only programs, or a redirection onto it). The
locked list comes from autoresearch.toml; the steering files are fixed. A project without
autoresearch.toml is left alone, so a plugin installed for every project guards only these. The server's
pins catch whatever slips past this best-effort check. AUTORESEARCH_GUARD=off in Claude Code's own
environment turns it off for a human session. Standard library only.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import night  # noqa: E402  (a sibling script, not a package)

DEFAULT_LOCKED = [
    "experiment/prepare.py",
    "experiment/evaluate.py",
    "experiment/causal.py",
]  # server.config.Config's default
STEERING = ["autoresearch.toml", "program.md", "CLAUDE.md", ".mcp.json", ".claude/**"]
FILE_TOOLS = {"Edit": "file_path", "Write": "file_path", "MultiEdit": "file_path", "NotebookEdit": "notebook_path"}
# programs that only read the files they are given (sed and git only in their read-only forms, see below)
READ_ONLY = {"cat", "head", "tail", "less", "more", "grep", "egrep", "fgrep", "rg", "ls", "wc", "diff", "cmp",
             "file", "stat", "sha256sum", "sha1sum", "md5sum", "du", "nl", "sort", "uniq", "cut", "jq", "echo",
             "printf", "true", "test", "realpath", "readlink", "basename", "dirname", "sed", "git"}  # fmt: skip
GIT_READ_ONLY = {"diff", "log", "show", "status", "blame", "ls-files", "rev-parse", "grep", "cat-file"}


def protected_patterns(root: Path) -> dict[str, str]:
    """Pattern -> why it is protected, the locked files as autoresearch.toml lists them."""
    table = night.config_table(root)
    locked = table.get("locked", DEFAULT_LOCKED)
    patterns = {str(p): "locked" for p in (locked if isinstance(locked, list) else DEFAULT_LOCKED)}
    patterns.update({p: "steering" for p in STEERING})
    patterns[f"{night.state_dir(root).relative_to(root).as_posix()}/**"] = "state"
    return patterns


def relative(root: Path, path: str, cwd: Path) -> str | None:
    """The path relative to the root after resolving `..` and symlinks; None when it lies outside."""
    full = os.path.realpath(Path(cwd, os.path.expanduser(path)))
    rel = os.path.relpath(full, os.path.realpath(root))
    return None if rel == ".." or rel.startswith("../") else Path(rel).as_posix()


def matches(rel: str, pattern: str) -> bool:
    if pattern.endswith("/**"):
        folder = pattern[:-3]
        return rel == folder or rel.startswith(folder + "/")
    return fnmatch.fnmatch(rel, pattern)


def why_protected(root: Path, path: str, cwd: Path) -> tuple[str, str] | None:
    """(relative path, kind) when the path is protected."""
    rel = relative(root, path, cwd)
    if rel is None:
        return None
    for pattern, kind in protected_patterns(root).items():
        if matches(rel, pattern):
            return rel, kind
    return None


def words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # unbalanced quotes: still look at every word
        return command.split()


def segment_writes(segment: str) -> bool:
    """Whether one simple command could change a file: a program outside READ_ONLY or a writing form."""
    argv = [w for w in words(segment) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w)]
    if not argv:
        return False
    program = os.path.basename(argv[0])
    if program not in READ_ONLY:
        return True
    if program == "sed":
        return any(w.startswith("-i") or w.startswith("--in-place") for w in argv[1:])
    if program == "git":
        return len(argv) < 2 or argv[1] not in GIT_READ_ONLY
    return False


def bash_target(root: Path, command: str, cwd: Path) -> tuple[str, str] | None:
    """The first protected path a Bash command could change, with its kind."""
    plain = re.sub(r"\d*>&\d+", " ", command)  # 2>&1 is no redirection onto a file
    redirected = re.findall(r">>?\s*([^\s;&|<>]+)", plain)
    for target in redirected:
        if hit := why_protected(root, target.strip("'\""), cwd):
            return hit
    if not any(segment_writes(s) for s in re.split(r"\|\||&&|[;|&\n]", plain)):
        return None
    # a relative path may follow a `cd` in the same command: resolve it against every folder named so
    folders = [cwd, *(Path(cwd, d) for d in re.findall(r"(?:^|[;&|(]\s*)cd\s+([^\s;&|)]+)", plain))]
    for word in words(plain):
        # a path may hide inside a word: --out=program.md, python -c "open('experiment/prepare.py', 'w')"
        for candidate in {word, *re.findall(r"[\w.~/*-]+", word)}:
            for folder in folders:
                if hit := why_protected(root, candidate, folder):
                    return hit
    return None


ADVICE = {
    "locked": "the evaluator and the data must stay fixed, so change only the training script through write_train "
    "and tell the human if {path} really needs a change",
    "steering": "it steers the search and only the human edits it, so carry on with write_train and run_experiment",
    "state": "the server owns it, so read results with get_history instead",
}


def deny(rel: str, kind: str, tool: str) -> dict[str, Any]:
    verb = "This Bash command would change" if tool == "Bash" else f"{tool} may not change"
    reason = f"{verb} {rel}: {ADVICE[kind].format(path=rel)}."
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": "deny",
                                   "permissionDecisionReason": reason}}  # fmt: skip


def decide(event: dict[str, Any], root: Path) -> dict[str, Any] | None:
    """The deny answer for a tool call that would change a protected file, else None."""
    tool = str(event.get("tool_name", ""))
    raw = event.get("tool_input")
    args: dict[str, Any] = raw if isinstance(raw, dict) else {}
    cwd = Path(str(event.get("cwd") or root))
    hit = None
    if tool in FILE_TOOLS and isinstance(args.get(FILE_TOOLS[tool]), str):
        hit = why_protected(root, args[FILE_TOOLS[tool]], cwd)
    elif tool == "Bash" and isinstance(args.get("command"), str):
        hit = bash_target(root, args["command"], cwd)
    return deny(*hit, tool) if hit else None


def main() -> int:
    try:
        event = json.loads(sys.stdin.read() or "{}")
    except ValueError:
        return 0
    root = night.hook_root(event if isinstance(event, dict) else {})
    if os.environ.get("AUTORESEARCH_GUARD") == "off" or not (root / "autoresearch.toml").is_file():
        return 0
    answer = decide(event, root)
    if answer:
        print(json.dumps(answer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
