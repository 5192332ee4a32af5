"""The project's own checks pass: ruff lint and format, and mypy strict on server/ and tests/ (pyproject.toml)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

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


LAYERS = {"store": 0, "run": 1, "lab": 2, "show": 3}  # a layer imports only the layers below it (ARCHITECTURE.md)
FACES = {"app", "cli", "demo", "agents", "__main__"}  # server/<face>.py: on top, imported by no layer


def imported_modules(source: str) -> set[str]:
    """The server modules a file imports, at its top or inside a function (`from server.lab import loop` counts
    as server.lab.loop)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("server")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("server"):
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def layering_faults(package: Path) -> list[str]:
    faults = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if len(parts) < 3 or parts[1] not in LAYERS and parts[1] != "dataset":
            continue  # a face or a shared module (config, errors, text)
        where = "/".join(parts)
        for name in imported_modules(path.read_text(encoding="utf-8")):
            pieces = name.split(".")
            if len(pieces) > 1 and pieces[1] in FACES:
                faults.append(f"{where} imports the face {name}")
            elif parts[1] in LAYERS and len(pieces) > 1 and LAYERS.get(pieces[1], -1) > LAYERS[parts[1]]:
                faults.append(f"{where} imports {name}, from a layer above {parts[1]}/")
    return faults


def test_each_layer_imports_only_the_layers_below_it_and_never_a_face() -> None:
    assert layering_faults(REPO_ROOT / "server") == []


def test_the_layering_check_finds_an_import_from_above_even_inside_a_function(tmp_path: Path) -> None:
    (tmp_path / "server" / "store").mkdir(parents=True)
    (tmp_path / "server" / "run").mkdir()
    (tmp_path / "server" / "store" / "history.py").write_text("def f():\n    from server.run import runner\n")
    (tmp_path / "server" / "run" / "runner.py").write_text("from server.store import history\nimport server.cli\n")
    assert layering_faults(tmp_path / "server") == [
        "server/run/runner imports the face server.cli",
        "server/store/history imports server.run.runner, from a layer above store/",
    ]


def module_of(name: str, package: Path) -> str:
    """server.lab.caps for `from server.lab import caps`, server.lab for `from server.lab import Lab`-like names
    that are not modules (a package's attribute), so the graph has files and packages as nodes."""
    pieces = name.split(".")
    while len(pieces) > 1:
        base = package.parent.joinpath(*pieces)
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return ".".join(pieces)
        pieces = pieces[:-1]
    return name


def import_cycles(package: Path) -> list[list[str]]:
    """Every import circle among the package's modules, counting imports inside functions too (a lazy import
    that closes a circle is still one)."""
    graph: dict[str, set[str]] = {}
    for file in sorted(package.rglob("*.py")):
        parts = file.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = {module_of(target, package) for target in imported_modules(file.read_text(encoding="utf-8"))}
        graph[name] = {t for t in targets if t != name and not name.startswith(t + ".")}  # a package's own init
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    trail: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        trail.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target)
        trail.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert import_cycles(REPO_ROOT / "server") == []


def test_the_circle_check_finds_a_lazy_import_that_closes_a_circle(tmp_path: Path) -> None:
    (tmp_path / "server" / "lab").mkdir(parents=True)
    (tmp_path / "server" / "lab" / "loop.py").write_text("from server.lab import supervise\n")
    (tmp_path / "server" / "lab" / "supervise.py").write_text("def f():\n    from server.lab.loop import Lab\n")
    assert import_cycles(tmp_path / "server") == [["server.lab.loop", "server.lab.supervise", "server.lab.loop"]]


def test_the_schema_the_hooks_import_is_standard_library_only() -> None:
    """scripts/*.py hooks run under the machine's python3, without the virtualenv: server/schema.py may import
    nothing else, not even the server."""
    tree = ast.parse((REPO_ROOT / "server" / "schema.py").read_text(encoding="utf-8"))
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    outside = sorted(n for n in names if n.split(".")[0] not in sys.stdlib_module_names | {"__future__"})
    assert outside == []


def test_no_server_module_is_longer_than_a_reader_holds_at_once() -> None:
    """About 400 lines a module (issue 24): a module that grows past 450 is carved by concern, not trimmed."""
    long = {str(p.relative_to(REPO_ROOT)): n for p in sorted((REPO_ROOT / "server").rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 450}  # fmt: skip
    assert long == {}
