"""Shared fixtures: real git repositories holding a fake experiment that follows the contract."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import psutil
import pytest

from server.config import ENV_OVERRIDES, load_config
from server.lab.loop import Lab
from server.run.runner import RUN_TOKEN_VAR

FAKE = Path(__file__).parent / "fake"
REPO_ROOT = Path(__file__).resolve().parent.parent
EXPERIMENT = REPO_ROOT / "experiment"


def load_prepare() -> ModuleType:
    """A fresh import of experiment/prepare.py (not a package: it is copied into run snapshots as it is)."""
    spec = importlib.util.spec_from_file_location("prepare_under_test", EXPERIMENT / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_evaluate(prepare: ModuleType | None = None) -> ModuleType:
    """A fresh import of experiment/evaluate.py, whose `import prepare` finds the given (else a fresh) prepare."""
    saved = sys.modules.get("prepare")
    sys.modules["prepare"] = prepare or load_prepare()
    try:
        spec = importlib.util.spec_from_file_location("evaluate_under_test", EXPERIMENT / "evaluate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        if saved is None:
            sys.modules.pop("prepare", None)
        else:
            sys.modules["prepare"] = saved
    return module


def prepare_dataset(argv: list[str]) -> int:
    """`autoresearch prepare` with these options, in this process."""
    from server.dataset import build

    return build.main(argv)


HAS_BWRAP = shutil.which("bwrap") is not None
needs_bwrap = pytest.mark.skipif(not HAS_BWRAP, reason="bubblewrap is not installed (apt-get install bubblewrap)")
# The fake experiment prints its own metric (the old contract): the loop's rules are tested fast with it;
# tests/test_measured.py drives the real experiment through the real evaluator. Its tests re-run the same
# fake code on purpose, so duplicate refusal is off here and on in tests/test_memory.py.
FAKE_CONFIG = f"""\
[autoresearch]
tag = "test"
editable = "train.py"
locked = ["prepare.py"]
command = ["{{python}}", "train.py"]
contract = "self-reported"
sandbox = "{"bwrap" if HAS_BWRAP else "off"}"
refuse_duplicates = false
time_budget = 1
noise_seeds = 1
timeout = 10
kill_grace = 1
max_log_bytes = 200000
"""


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own AUTORESEARCH_* settings must not leak into tests."""
    for var in [*ENV_OVERRIDES, "AUTORESEARCH_RUN_ID"]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GIT_AUTHOR_NAME", "test")
    monkeypatch.setenv("GIT_AUTHOR_EMAIL", "test@example.com")
    monkeypatch.setenv("GIT_COMMITTER_NAME", "test")
    monkeypatch.setenv("GIT_COMMITTER_EMAIL", "test@example.com")


def make_fake_repo(path: Path, config: str = FAKE_CONFIG) -> Path:
    """A committed repository with the fake experiment, its config and a user file."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(FAKE / "prepare.py", path / "prepare.py")
    shutil.copy(FAKE / "train.py", path / "train.py")
    (path / "autoresearch.toml").write_text(config)
    (path / "notes.txt").write_text("user notes\n")
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


def real_experiment_repo(path: Path, config: str) -> Path:
    """A committed repository holding the project's experiment/ and the given autoresearch.toml."""
    shutil.copytree(EXPERIMENT, path / "experiment", ignore=shutil.ignore_patterns("__pycache__", "output"))
    (path / "autoresearch.toml").write_text(config)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    return path


TINY_REAL_CONFIG = """\
[autoresearch]
tag = "test"
time_budget = 2
noise_seeds = 1
eval_tokens = 2048
startup_allowance = 20
handover_allowance = 20
kill_grace = 1

[autoresearch.env]
AUTORESEARCH_MODEL_SIZE = "tiny"
AUTORESEARCH_DEVICE = "cpu"
"""


def tiny_real_lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, texts: list[str]) -> Lab:
    """The real experiment (its tiny model, a 2 s budget) on a byte-level dataset made of `texts`, one document
    each, in a private cache."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_DATASET", "tiny")
    paths = []
    for i, text in enumerate(texts):
        (tmp_path / f"play{i}.txt").write_text(text, encoding="utf-8")
        paths.append(str(tmp_path / f"play{i}.txt"))
    prepare_dataset(["--source", "files", "--paths", *paths, "--byte-level", "--name", "tiny"])
    repo = real_experiment_repo(tmp_path / "repo", TINY_REAL_CONFIG)
    return Lab(repo, load_config(repo))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_fake_repo(tmp_path / "repo")


@pytest.fixture
def lab(repo: Path) -> Lab:
    return Lab(repo, load_config(repo))


def set_mode(mode: str, metric: float = 1.0) -> str:
    """The fake train.py with another mode and metric."""
    text = (FAKE / "train.py").read_text()
    return text.replace('MODE = "ok"', f'MODE = "{mode}"').replace("METRIC = 1.0", f"METRIC = {metric}")


ModeSetter = Callable[[str, float], str]


def disk_state(repo: Path) -> dict[str, object]:
    """What a refused call must leave unchanged: the files, HEAD, every ref, git status and the history."""
    state = repo / ".autoresearch" / "test"

    def read(path: Path) -> bytes | None:
        return path.read_bytes() if path.exists() else None

    return {
        "train": read(repo / "train.py"),
        "history": read(state / "runs.jsonl"),
        "pins": read(state / "pins.json"),
        "head": git(repo, "rev-parse", "--symbolic-full-name", "HEAD"),
        "refs": git(repo, "for-each-ref", "--format=%(refname) %(objectname)"),
        "status": git(repo, "status", "--porcelain"),
    }


def write_slot(state_dir: Path, slot: int, run_id: int, log: Path, pid: int, **info: object) -> Path:
    """A slot file as the pool writes it for a run in flight (registry.Slot.describe), owned by `pid`."""
    now = time.time()
    data = {"pid": pid, "since": now - 42, "op": "run", "slot": slot, "device": None, "tag": "night", "run_id": run_id,
            "token": f"t{run_id}", "description": f"idea {run_id}", "started_at": now - 42, "deadline": now + 78,
            "budget": 60.0, "log": str(log), "source": "edits", "seed": 0, **info}  # fmt: skip
    path = state_dir / "slots" / f"{slot}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def dead_pid() -> int:
    """The id of a process that has exited (a slot it described was left by a dead owner)."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(gone.stdout)


def with_token(token: str) -> list[psutil.Process]:
    """Live processes that carry the run's token in their environment."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(RUN_TOKEN_VAR) == token:
                found.append(proc)
        except psutil.Error:
            continue
    return found
