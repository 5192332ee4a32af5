"""A whole night through the real server code, for the report and finalize tests: kept changes on different
lines and on the same line, a discard, a near miss, a crash and a forced keep, each a real run."""

from __future__ import annotations

from pathlib import Path

from conftest import FAKE, git

from server.config import load_config
from server.lab.loop import Lab

PADDING = "".join(f"PAD_{i} = {i}\n" for i in range(12))  # keeps the A and B lines out of each other's context


def code(a: float, b: float, mode: str = "ok", tail: str = "") -> str:
    """The fake train.py whose metric is 1 - A - B: A near the top, B twelve lines below, the rest unchanged."""
    text = (FAKE / "train.py").read_text().replace('MODE = "ok"', f'MODE = "{mode}"')
    text = text.replace("METRIC = 1.0", "METRIC = round(1.0 - A - B, 6)")
    head, rest = text.split("MODE = ", 1)
    return f"{head}A = {a}\n{PADDING}B = {b}\n{PADDING}MODE = {rest}{tail}"


def night_lab(repo: Path) -> Lab:
    """The lab of a repository whose committed train.py is the night's starting code (so the baseline changes
    nothing and every later change is one line)."""
    (repo / "train.py").write_text(code(0.0, 0.0))
    git(repo, "commit", "-qam", "the night's starting code")
    return Lab(repo, load_config(repo))


def night(lab: Lab) -> dict[str, int]:
    """Run the night; the ids of its runs by name."""
    ids: dict[str, int] = {}

    def run(name: str, text: str, hypothesis: str | None = None) -> None:
        lab.write(text)
        ids[name] = lab.run(name, hypothesis=hypothesis).id

    run("baseline", code(0.0, 0.0))
    lab.keep(lesson="the reference point")
    run("raise A", code(0.1, 0.0), hypothesis="A helps")
    lab.keep(lesson="A helps. Next: try raising B too.")
    run("raise B", code(0.1, 0.1), hypothesis="B helps")
    lab.keep(lesson="B helps as much as A")
    run("worse", code(0.1, 0.0, tail="# worse\n"))
    lab.discard(lesson="it could be worth trying a warmup instead")
    run("raise A more", code(0.2, 0.1))
    lab.keep()
    run("broken", code(0.2, 0.1, mode="crash"))
    lab.discard()
    run("near miss", code(0.2, 0.09))
    lab.discard()
    run("simpler", code(0.2, 0.1, tail="# simpler\n"))
    lab.keep(force=True, reason="same result, simpler code")
    return ids
