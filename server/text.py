"""Text made safe for one-line records and the terminal: a caller's descriptions, and the words of unexpected
failures (git, the operating system) for a one-sentence error."""

from __future__ import annotations

import errno
import re

import git

from server.errors import InvalidInputError

# Terminal escape sequences: CSI (`ESC [ ... final`, colours and cursor moves), OSC (`ESC ] ... BEL` or
# `ESC ] ... ESC \`, window titles and links), and the two-character escapes (`ESC c` resets the terminal).
ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -~]?")
# C0 and C1 controls (C1 holds an 8-bit CSI), and the bidirectional overrides that can make a row read
# differently from what it holds.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean_description(text: str) -> str:
    """The description on one line: escape sequences dropped, control characters and runs of whitespace made
    one space. Refused when it holds a NUL byte (binary, or a truncation attack) or nothing visible."""
    if "\x00" in text:
        raise InvalidInputError("the description holds a NUL byte; send a few words of plain text.")
    cleaned = one_line(text, limit=None)
    if not cleaned:
        raise InvalidInputError("the description is empty or only whitespace; say in a few words what this run tries.")
    return cleaned


def clean_note(text: str | None) -> str | None:
    """A hypothesis, lesson or reason the agent gives: one clean line, None when empty."""
    return (one_line(text.replace("\x00", " ")) or None) if text is not None else None


def one_line(text: str, limit: int | None = 300) -> str:
    """Text as one line: escapes dropped, controls and runs of whitespace made one space, cut at `limit`."""
    flat = " ".join(CONTROL_RE.sub(" ", ANSI_RE.sub("", text)).split())
    return flat if limit is None or len(flat) <= limit else flat[: limit - 1] + "…"


def _git_verb(command: object) -> str:
    """The subcommand of a git argv, past the options (the server's `-c key=value` pairs)."""
    if not isinstance(command, list):
        return "a command"
    args = [str(a) for a in command[1:]]
    while args and args[0].startswith("-"):
        args = args[2:] if args[0] == "-c" else args[1:]
    return args[0] if args else "a command"


def what_failed(exc: BaseException) -> str:
    """An unexpected failure (git, the operating system, a bug) as a clause: what failed and how."""
    if isinstance(exc, git.GitCommandError):
        verb = _git_verb(exc.command)
        said = _first_line(str(exc.stderr or "")) or f"exit code {exc.status}"
        return f"git {verb} failed ({said})"
    if isinstance(exc, OSError):
        where = f" on {exc.filename}" if exc.filename else ""
        return one_line(f"{exc.strerror or exc}{where}") + _os_advice(exc)
    return one_line(f"an internal error ({type(exc).__name__}: {exc})")


def _first_line(stderr: str) -> str:
    """git's first line of complaint (GitPython wraps it as `stderr: '...'`); the rest is advice for a terminal."""
    lines = [line.strip().removeprefix("stderr:").strip(" '") for line in stderr.splitlines()]
    return one_line(next((line for line in lines if line), ""), limit=240)


def _os_advice(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return " (the disk is full: free some space)"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return " (the server may not write there: fix the permissions)"
    return ""
