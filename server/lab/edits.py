"""What write_train accepts: exact search/replace edits and content that is UTF-8 Python that compiles."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from server.errors import InvalidInputError


@dataclass(frozen=True)
class Edit:
    """Replace the one exact occurrence of `old` with `new`."""

    old: str
    new: str


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply search/replace edits as one change: every `old` is found in `text` as it is now, exactly once, and
    no two overlap; so an edit never matches what an earlier edit wrote, and the order does not matter."""
    spans = sorted((*_locate(text, edit, number), number) for number, edit in enumerate(edits, 1))
    for (_, end, first), (start, _, second) in zip(spans, spans[1:], strict=False):
        if start < end:
            low, high = sorted((first, second))
            raise InvalidInputError(f"edits {low} and {high} overlap (each `old` is found in the file as it was "
                                    "before any edit); merge them into one edit. Nothing was written.")  # fmt: skip
    pieces, done = [], 0
    for start, end, number in spans:
        pieces += [text[done:start], edits[number - 1].new]
        done = end
    return "".join([*pieces, text[done:]])


def _locate(text: str, edit: Edit, number: int) -> tuple[int, int]:
    """Where edit `number`'s `old` is in the text: its one occurrence, else a refusal saying why."""
    if not edit.old:
        raise InvalidInputError(f"edit {number}: `old` is empty; give the exact text to replace. Nothing was written.")
    count = text.count(edit.old)
    if count != 1:
        found = "matches nothing" if count == 0 else f"matches {count} times"
        raise InvalidInputError(
            f"edit {number}: `old` {found} in the file as it is before any edit; call read_train and copy the "
            "exact text, with enough surrounding lines to make it unique. Nothing was written."
        )
    start = text.index(edit.old)
    return start, start + len(edit.old)


def validate_source(text: str, name: str, max_bytes: int) -> bytes:
    """The file's bytes if it is non-empty UTF-8 text under the cap that compiles (for .py files)."""
    if not text.strip():
        raise InvalidInputError("the new content is empty; nothing was written.")
    if "\x00" in text:
        raise InvalidInputError("the content holds NUL bytes (binary?); send plain text. Nothing was written.")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(f"the content is not valid UTF-8 ({exc.reason}); nothing was written.") from exc
    if len(data) > max_bytes:
        raise InvalidInputError(f"the content is {len(data)} bytes, over the cap of {max_bytes}; "
                                "make it smaller. Nothing was written.")  # fmt: skip
    if name.endswith(".py"):
        try:
            compile(text, name, "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise InvalidInputError(f"{name} would not compile: {exc.msg} at line {exc.lineno}; "
                                    "fix it and write again. Nothing was written.") from exc  # fmt: skip
    return data


def fingerprint(source: str) -> str:
    """The code's identity, whatever its comments, blank lines and formatting: a hash of its syntax tree (of
    the text with runs of whitespace folded, when it does not parse)."""
    try:
        normal = ast.dump(ast.parse(source))
    except SyntaxError:
        normal = " ".join(source.split())
    return hashlib.sha256(normal.encode()).hexdigest()[:16]


def merge3(base: bytes, ours: bytes, theirs: bytes) -> bytes | None:
    """Three-way merge of one file, by git's own merge (`git merge-file`): the change from base to theirs
    applied on ours; None when the two changes conflict."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as folder:
        paths = [Path(folder) / name for name in ("ours", "base", "theirs")]
        for path, data in zip(paths, (ours, base, theirs), strict=True):
            path.write_bytes(data)
        done = subprocess.run(["git", "merge-file", "-p", "-q", *map(str, paths)], capture_output=True)
    if done.returncode != 0:  # the number of conflicts, or negative on an error
        return None
    return done.stdout
