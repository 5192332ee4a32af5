"""The project's own checks pass: ruff lint and format, and mypy strict on server/ and tests/ (pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO_ROOT

CHECKS = {
    "ruff check": ["ruff", "check", "."],
    "ruff format": ["ruff", "format", "--check", "."],
    "mypy": ["mypy"],  # its files and strictness come from [tool.mypy]
}


@pytest.mark.parametrize("name", CHECKS)
def test_check_passes(name: str) -> None:
    done = subprocess.run([sys.executable, "-m", *CHECKS[name]], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-4000:]}{done.stderr[-2000:]}"


def test_ci_runs_the_readme_test_command() -> None:
    """One test command for people and CI: the README's quick start and .ci/run both run scripts/test.sh."""
    quick_start = (REPO_ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "\nbash scripts/test.sh" in quick_start
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert ci.rstrip().endswith("bash scripts/test.sh") and "pytest" not in ci
    assert "bubblewrap" in ci and "pytest" in (REPO_ROOT / "scripts" / "test.sh").read_text()
