"""What write_train accepts: exact search/replace edits and content that is UTF-8 Python that compiles."""

from __future__ import annotations

from dataclasses import dataclass

from server.errors import InvalidInputError


@dataclass(frozen=True)
class Edit:
    """Replace the one exact occurrence of `old` with `new`."""

    old: str
    new: str


def apply_edits(text: str, edits: list[Edit]) -> str:
    """Apply search/replace edits in order; each `old` must match exactly once."""
    for number, edit in enumerate(edits, 1):
        if not edit.old:
            raise InvalidInputError(f"edit {number}: `old` is empty; give the exact text to replace.")
        count = text.count(edit.old)
        if count != 1:
            found = "matches nothing" if count == 0 else f"matches {count} times"
            raise InvalidInputError(
                f"edit {number}: `old` {found}; call read_train and copy the exact text, with enough "
                "surrounding lines to make it unique. Nothing was written."
            )
        text = text.replace(edit.old, edit.new, 1)
    return text


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
