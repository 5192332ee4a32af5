"""What write_train accepts: exact search/replace edits and content that is UTF-8 Python that compiles and
seeds nothing itself; and the code's identity (its fingerprint), whatever its names, comments and layout."""

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
        refuse_own_seeds(text, name)
    return data


SEEDING = {"manual_seed", "manual_seed_all", "seed", "seed_all", "default_rng", "RandomState", "Random",
           "SeedSequence", "Generator", "set_rng_state", "set_state", "setstate", "PCG64", "MT19937"}  # fmt: skip


def seeding_faults(source: str) -> list[str]:
    """Where the code chooses a seed itself: SEED bound in the file (it is prepare's, the server's), or a
    random number generator seeded, built or restored with anything but prepare's SEED (a generator built
    without one draws its seed from the OS: a new draw each run). One line each, with its line number."""
    faults = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Name) and node.id == "SEED" and isinstance(node.ctx, ast.Store | ast.Del):
            faults.append(f"line {node.lineno}: SEED is assigned; it is the server's (`from prepare import SEED`)")
        elif isinstance(node, ast.arg) and node.arg == "SEED":
            faults.append(f"line {node.lineno}: SEED is a parameter; it is the server's (`from prepare import SEED`)")
        elif isinstance(node, ast.Call):
            called = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            seeded = [kw.value for kw in node.keywords if kw.arg == "seed"]
            if called in SEEDING and (len(node.args) != 1 or node.keywords or not _is_seed(node.args[0])):
                faults.append(f"line {node.lineno}: `{ast.unparse(node)[:80]}` seeds a random number generator "
                              "with something other than prepare's SEED")  # fmt: skip
            elif any(not _is_seed(value) for value in seeded):
                faults.append(f"line {node.lineno}: `{ast.unparse(node)[:80]}` passes a seed other than SEED")
    return faults


def _is_seed(node: ast.expr) -> bool:
    """prepare's SEED, by name or as an attribute (prepare.SEED)."""
    return (isinstance(node, ast.Name) and node.id == "SEED") or (
        isinstance(node, ast.Attribute) and node.attr == "SEED"
    )


def refuse_own_seeds(source: str, name: str) -> None:
    """Seeds are the server's: each run gets one (AUTORESEARCH_SEED, read by the locked prepare.py as SEED),
    and a re-run of the same code gets the next one, so a run cannot redraw its own luck."""
    faults = seeding_faults(source)
    if faults:
        raise InvalidInputError(f"{name} {faults[0]}; seeds are the server's: seed with prepare's SEED only "
                                "(`from prepare import SEED`), and ask for more seeds with run_experiment(repeats=N). "
                                "Nothing was written.")  # fmt: skip


def fingerprint(source: str) -> str:
    """The code's identity, whatever its comments, docstrings, formatting and the names it gives its own
    variables, functions and arguments (renamed consistently): a hash of its normalised syntax tree (of the
    text with runs of whitespace folded, when it does not parse). Two files with one fingerprint are the same
    program, so a re-run of one is a repeat of the other: more seeds of it, not a new draw."""
    try:
        normal = normalised(ast.parse(source))
    except SyntaxError:
        normal = " ".join(source.split())
    return hashlib.sha256(normal.encode()).hexdigest()[:16]


def normalised(tree: ast.Module) -> str:
    """The tree without docstrings, its own names replaced by _0, _1, ... in the order the tree meets them.

    Only names the file binds are renamed, and none that might be reached by name from elsewhere: a name
    also used as an attribute, a keyword argument or a string, an imported name, a dunder, and nothing at all
    in a file with a star import. So equal results mean the same program up to a consistent renaming."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                node.body = node.body[1:] or [ast.Pass()]
    bound, fixed = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.Attribute):
            fixed.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            fixed.add(node.arg)
        elif isinstance(node, ast.alias):
            fixed.add(node.asname or node.name.split(".")[0])
            if node.name == "*":
                return ast.dump(tree, annotate_fields=False)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            fixed.add(node.value)
    own = {name for name in bound - fixed if not name.startswith("__")}
    names: dict[str, str] = {}

    def canon(name: str) -> str:
        if name not in own:
            return name
        return names.setdefault(name, f"_{len(names)}")

    for node in ast.walk(tree):  # the walk's order depends on the tree's shape only, never on the names
        if isinstance(node, ast.Name):
            node.id = canon(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            node.name = canon(node.name)
        elif isinstance(node, ast.arg):
            node.arg = canon(node.arg)
        elif isinstance(node, ast.Global | ast.Nonlocal):
            node.names = [canon(name) for name in node.names]
    return ast.dump(tree, annotate_fields=False)


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
