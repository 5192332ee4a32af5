"""Throw-away repositories for the loop benchmarks: the fake experiment or the real one, a tiny dataset,
the server started over real stdio exactly as .mcp.json does, and the same run started by hand.

Every run (through the server or not) carries a `sitecustomize.py` on PYTHONPATH that appends the
interpreter's start and exit times to a stamps file, so a client can split an iteration into phases.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from mcp import StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiment"
FAKE = ROOT / "tests" / "fake"
PYTHON = sys.executable
GIT_ENV = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com"}  # fmt: skip
CLEAN_VARS = (
    "AUTORESEARCH_ROOT",
    "CLAUDE_PROJECT_DIR",
    "AUTORESEARCH_TAG",
    "AUTORESEARCH_TIME_BUDGET",
    "AUTORESEARCH_TIMEOUT",
    "AUTORESEARCH_EVAL_TOKENS",
    "AUTORESEARCH_STATE_DIR",
    "AUTORESEARCH_RUN_ID",
)
STAMPER = """\
import atexit, os, time
_path = os.environ.get("BENCH_STAMP_FILE")
if _path:
    with open(_path, "a") as fh:
        fh.write(f"S {os.getpid()} {time.time():.6f}\\n")
    atexit.register(lambda: open(_path, "a").write(f"E {os.getpid()} {time.time():.6f}\\n"))
"""
POLL_S = 0.005  # exit watcher's polling period
SMALL_TEXT_GLOBS = ("docs/*.md", "server/*.py", "tests/*.py")


def base_env() -> dict[str, str]:
    """This environment less anything that would point the server elsewhere, plus a git identity."""
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_VARS}
    return {**env, **GIT_ENV}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, env=base_env())
    return out.stdout.strip()


@dataclass
class Stamp:
    """An interpreter's start (sitecustomize), its atexit time and when it was gone (a zombie or reaped)."""

    pid: int
    start: float
    end: float
    gone: float = math.nan


class ExitWatcher:
    """Polls, in a thread, for the next interpreter a repository starts and records when it is gone."""

    def __init__(self, repo: BenchRepo) -> None:
        self.repo, self.seen = repo, {s.pid for s in repo.read_stamps()}
        self.gone: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        for stamp in self.repo.read_stamps():
            if stamp.pid not in self.seen and stamp.pid not in self.gone and _is_gone(stamp.pid):
                self.gone[stamp.pid] = time.time()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._poll()
            time.sleep(POLL_S)

    def stop(self) -> list[Stamp]:
        """The new interpreters' stamps, with `gone` where seen (a last look catches a just-reaped one)."""
        self._stop.set()
        self._thread.join()
        self._poll()
        new = [s for s in self.repo.read_stamps() if s.pid not in self.seen]
        for stamp in new:
            stamp.gone = self.gone.get(stamp.pid, math.nan)
        return new


def _is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@dataclass
class BenchRepo:
    """A committed repository the server can drive, and where its runs leave their stamps."""

    path: Path
    editable: str
    stamps: Path
    env: dict[str, str]  # what the server adds to each run's environment (the config's env)
    argv: list[str]
    budget: float
    eval_tokens: int
    evaluate: bool = False  # the direct run also runs the evaluator on the handed-over model, as the server does

    def read_stamps(self) -> list[Stamp]:
        """One Stamp per interpreter started so far, in start order (the exit watcher fills `gone`)."""
        lines = self.stamps.read_text().splitlines() if self.stamps.exists() else []
        stamps: dict[int, Stamp] = {}
        for kind, pid, at in (line.split() for line in lines):
            stamp = stamps.setdefault(int(pid), Stamp(int(pid), math.nan, math.nan))
            if kind == "S":
                stamp.start = float(at)
            else:
                stamp.end = float(at)
        return list(stamps.values())

    def server_params(self) -> StdioServerParameters:
        """.mcp.json's command (`.venv/bin/autoresearch serve`), the repository as working directory."""
        command = ROOT / ".venv" / "bin" / "autoresearch"
        argv = [str(command), "serve"] if command.exists() else [PYTHON, "-m", "server", "serve"]
        env = {**base_env(), "PYTHONPATH": str(ROOT)} if not command.exists() else base_env()
        return StdioServerParameters(command=argv[0], args=argv[1:], env=env, cwd=str(self.path))

    def run_env(self, tree: Path) -> dict[str, str]:
        """The environment the server gives a run (isolation.run_env), for the direct runs."""
        return {**base_env(), **self.env, "PYTHONUNBUFFERED": "1", "AUTORESEARCH_TIME_BUDGET": f"{self.budget:g}",
                "AUTORESEARCH_EVAL_TOKENS": str(self.eval_tokens), "AUTORESEARCH_OUTPUT": str(tree / "out"),
                "AUTORESEARCH_SEED": "42"}  # fmt: skip

    def export(self) -> Path:
        """A copy of the checked-out tree (no .git, no state), like the server's run snapshot."""
        target = Path(tempfile.mkdtemp(prefix="bench-direct-"))
        shutil.copytree(self.path, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", ".autoresearch"))
        return target

    def run_direct(self, tree: Path) -> float:
        """Wall seconds of the same argv started by a plain subprocess, output to a log like the server's, and
        (evaluated contract) the evaluator run after it on the model, as a person would by hand."""
        env = self.run_env(tree)
        evaluate = [PYTHON, "experiment/evaluate.py", str(tree / "out" / "model.pt2"), "--result",
                    str(tree / "result.json")]  # fmt: skip
        with (tree / "run.log").open("wb") as log:
            started = time.perf_counter()
            for argv in [self.argv, *([evaluate] if self.evaluate else [])]:
                subprocess.run(argv, cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=log,
                               stderr=subprocess.STDOUT, check=False)  # fmt: skip
            return time.perf_counter() - started


def _config(editable: str, locked: list[str], command: str, budget: float, eval_tokens: int, env: dict[str, str],
            extra: tuple[str, ...] = (), noise_seeds: int = 1) -> str:  # fmt: skip
    lines = ["[autoresearch]", 'tag = "bench"', f'editable = "{editable}"', f"locked = {json.dumps(locked)}",
             f"command = {command}", f"time_budget = {budget:g}", f"timeout = {2 * budget + 120:g}",
             "kill_grace = 1", f"eval_tokens = {eval_tokens}",
             # one run per call unless asked: these benchmarks time runs; bench/noise.py costs the floor
             f"noise_seeds = {noise_seeds}",
             *extra, "", "[autoresearch.env]"]  # fmt: skip
    return "\n".join([*lines, *(f'{k} = "{v}"' for k, v in env.items()), ""])


def _stamp_env(path: Path) -> tuple[dict[str, str], Path]:
    site = path.parent / f"{path.name}-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(STAMPER)
    stamps = path.parent / f"{path.name}-stamps.txt"
    return {"PYTHONPATH": str(site), "BENCH_STAMP_FILE": str(stamps)}, stamps


def _commit(path: Path) -> None:
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")


def fake_repo(path: Path, mode: str, budget: float, sandbox: str = "off") -> BenchRepo:
    """The test suite's fake experiment in `mode` (e.g. "sleep": sleeps through its budget); it prints its
    own metric (the self-reported contract). Unsandboxed by default: its stamps file lives outside."""
    path.mkdir(parents=True)
    shutil.copy(FAKE / "prepare.py", path / "prepare.py")
    (path / "train.py").write_text((FAKE / "train.py").read_text().replace('MODE = "ok"', f'MODE = "{mode}"'))
    env, stamps = _stamp_env(path)
    extra = ('contract = "self-reported"', f'sandbox = "{sandbox}"')
    (path / "autoresearch.toml").write_text(_config("train.py", ["prepare.py"], '["{python}", "train.py"]',
                                                    budget, 1000, env, extra))  # fmt: skip
    _commit(path)
    return BenchRepo(path, "train.py", stamps, env, [PYTHON, "train.py"], budget, 1000)


def small_text() -> str:
    """A few hundred KB of this project's own docs and code: a small, local, deterministic corpus."""
    files = sorted(p for pattern in SMALL_TEXT_GLOBS for p in ROOT.glob(pattern))
    return "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)


def tiny_dataset(workdir: Path) -> dict[str, str]:
    """A byte-level dataset of small_text() in a fresh cache; the environment that selects it."""
    workdir.mkdir(parents=True, exist_ok=True)
    corpus, cache = workdir / "corpus.txt", workdir / "cache"
    corpus.write_text(small_text(), encoding="utf-8")
    env = {**base_env(), "AUTORESEARCH_CACHE": str(cache)}
    subprocess.run([PYTHON, "-m", "server.dataset", "--source", "files", "--paths", str(corpus), "--byte-level",
                    "--name", "bench-byte"], cwd=ROOT, env=env, check=True, capture_output=True)  # fmt: skip
    return {"AUTORESEARCH_CACHE": str(cache), "AUTORESEARCH_DATASET": "bench-byte"}


def default_dataset() -> dict[str, str]:
    """The project's default dataset (`autoresearch prepare` with no arguments; a no-op once prepared)."""
    subprocess.run([PYTHON, "-m", "server.dataset"], cwd=ROOT, env=base_env(), check=True, capture_output=True)
    return {}


def real_repo(path: Path, data_env: dict[str, str], budget: float, tiny: bool, eval_tokens: int,
              sandbox: str = "bwrap", device: str | None = "cpu", noise_seeds: int = 1) -> BenchRepo:  # fmt: skip
    """The project's experiment/ in a fresh repository, configured like the default autoresearch.toml: the
        server's evaluator scores each run (the stamps file is out of the sandbox's reach: phases come from the
        server's own record of each run); device None lets train.py pick (CUDA first). noise_seeds: the seeds of
    the tag's first run (1: every call is one run)."""
    path.mkdir(parents=True)
    shutil.copytree(EXPERIMENT, path / "experiment", ignore=shutil.ignore_patterns("__pycache__", "output"))
    env, stamps = _stamp_env(path)
    env = {**env, **data_env, **({"AUTORESEARCH_DEVICE": device} if device else {})}
    env.update({"AUTORESEARCH_MODEL_SIZE": "tiny"} if tiny else {})
    command = '["{python}", "experiment/train.py"]'
    locked = ["experiment/prepare.py", "experiment/evaluate.py", "experiment/causal.py"]
    (path / "autoresearch.toml").write_text(_config("experiment/train.py", locked, command,
                                                    budget, eval_tokens, env, (f'sandbox = "{sandbox}"',),
                                                    noise_seeds))  # fmt: skip
    _commit(path)
    return BenchRepo(path, "experiment/train.py", stamps, env, [PYTHON, "experiment/train.py"], budget, eval_tokens,
                     evaluate=True)  # fmt: skip


def records(repo: BenchRepo) -> dict[int, dict[str, Any]]:
    """The server's own record of each run of the repository (timing, wall seconds, status), by id."""
    events = (repo.path / ".autoresearch" / "bench" / "runs.jsonl").read_text().splitlines()
    ends = [json.loads(line) for line in events]
    return {e["run"]["id"]: e["run"] for e in ends if e.get("type") == "end"}
