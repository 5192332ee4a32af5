"""Statistics, the machine and versions, and small Markdown helpers for RESULTS.md."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path


def summarize(values: list[float]) -> dict[str, float]:
    """min, median, max and count, NaNs left out (a phase that could not be measured)."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"min": math.nan, "median": math.nan, "max": math.nan, "n": 0}
    return {"min": min(clean), "median": statistics.median(clean), "max": max(clean), "n": len(clean)}


def fmt(s: dict[str, float], digits: int = 3, unit: str = "") -> str:
    """`median (min–max, n=N)`; one value alone when there was one repeat."""
    if not s.get("n"):
        return "n/a"
    med = f"{s['median']:.{digits}f}{unit}"
    return med if s["n"] == 1 else f"{med} ({s['min']:.{digits}f}–{s['max']:.{digits}f}, n={s['n']:g})"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def verdict(met: bool) -> str:
    return "met" if met else "**not met**"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 2**30, 1)
    except (ValueError, OSError):
        return math.nan


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def git_state(root: Path) -> tuple[str, bool]:
    """The checked-out commit (short) and whether the tree has uncommitted changes."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout
    return out.stdout.strip(), bool(dirty.strip())


def _git_head(root: Path) -> str:
    commit, dirty = git_state(root)
    return commit + (" (with uncommitted changes)" if dirty else "")


def machine(root: Path) -> dict[str, str]:
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "ram_gib": str(_ram_gib()),
        "os": f"{platform.system()} {platform.release()} ({platform.platform(terse=True)})",
        "python": platform.python_version(),
        "torch": _version("torch"),
        "mcp": _version("mcp"),
        "git": subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.strip(),
        "commit": _git_head(root),
        "interpreter": sys.executable,
    }
