"""`autoresearch demo`: the whole loop on this machine, no language model needed.

A built-in agent drives the real MCP server over stdio (started as .mcp.json says) with the six tools
only: a baseline (the server runs it on several seeds: the noise floor), then one hyperparameter change per
experiment, keep when the gain is beyond the noise, repeat a near miss on more seeds, discard otherwise.
With --slots N (N > 1) it works in waves of N candidates at once instead. The agents are server/agents.py.
It works in a git worktree on its own run tag, so the user's checkout is never touched.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters
from rich.console import Console

from server.agents import DemoAgent, WaveAgent
from server.config import load_config
from server.errors import ConfigError, InvalidInputError
from server.lab import noise
from server.show import table
from server.show.plot import plot_progress
from server.store import gitops
from server.store.history import History, best_run
from server.store.lock import RepoLock

MAX_SLOTS = 8  # a CPU machine shares its cores between the slots


def server_params(main_root: Path, worktree: Path, env: dict[str, str]) -> StdioServerParameters:
    """.mcp.json's server entry, started in the worktree as Claude Code would start it in a project."""
    entry = json.loads((main_root / ".mcp.json").read_text())["mcpServers"]["autoresearch"]
    command = main_root / entry["command"]
    argv = [str(command), *entry["args"]] if command.exists() else [sys.executable, "-m", "server", "serve"]
    full_env = {**os.environ, **entry.get("env", {}), **env, "CLAUDE_PROJECT_DIR": str(worktree)}
    return StdioServerParameters(command=argv[0], args=argv[1:], env=full_env, cwd=str(worktree))


def data_problem(root: Path) -> str | None:
    """Why the default experiment's data is not ready (`autoresearch prepare --check`), or None when it is."""
    if not (root / "experiment" / "prepare.py").exists():
        return None  # not the default experiment: its own command reports missing data
    env = {**os.environ, **load_config(root).env}
    check = subprocess.run([sys.executable, "-m", "server.dataset", "--check"], cwd=root, env=env,
                           capture_output=True, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return None if check.returncode == 0 else (check.stderr.strip().splitlines() or ["data is not prepared"])[-1]


def ensure_data(root: Path, console: Console) -> None:
    """Prepare the default dataset if it is missing; a dataset named by the environment must exist."""
    problem = data_problem(root)
    if problem is None:
        return
    if os.environ.get("AUTORESEARCH_DATASET") or load_config(root).env.get("AUTORESEARCH_DATASET"):
        raise ConfigError(problem)
    console.print("[bold]preparing the default data (once)[/bold]")
    if subprocess.call([sys.executable, "-m", "server.dataset"], cwd=root) != 0:
        raise ConfigError("data preparation failed (see above); fix it and run the demo again.")


def run_demo(
    root: Path, experiments: int, budget: float, out: str, console: Console, seed: int = 0, slots: int = 1
) -> int:
    """Prepare, then run the loop in a fresh worktree on tag demo-<time>; print the table, write the plot. With
    several slots, waves of candidates run in parallel."""
    if experiments < 1 or budget <= 0 or not 1 <= slots <= MAX_SLOTS:
        raise InvalidInputError(f"--experiments must be at least 1, --budget above 0 and --slots 1 to {MAX_SLOTS}.")
    repo = gitops.open_repo(root)
    root = Path(repo.working_tree_dir or root)
    config = load_config(root)
    state_name = config.state_dir
    state = root / state_name
    gitops.exclude(repo, state_name)
    with RepoLock(state / "demo.lock").hold("demo"):
        ensure_data(root, console)
        tag = "demo-" + time.strftime("%Y%m%d-%H%M%S")
        worktree = state / "worktrees" / tag
        repo.git.worktree("add", "-q", "-b", gitops.run_branch(tag), str(worktree), "HEAD")
        try:
            env = {"AUTORESEARCH_TAG": tag, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}",
                   "AUTORESEARCH_STATE_DIR": str(state), "AUTORESEARCH_SLOTS": str(slots)}  # fmt: skip
            console.print(f"run tag {tag}; watch live from another terminal: autoresearch watch --tag {tag}")
            if slots > 1:
                console.print(f"{slots} slots: each round starts {slots} candidates at once and collects them")
            params = server_params(root, worktree, env)
            anyio.run(_drive, params, console, experiments, random.Random(seed), slots)
        finally:
            repo.git.worktree("remove", "--force", str(worktree))
    return report(History(state / tag), root / out, console, tag, config.metric, config.direction, config.confidence)


async def _drive(
    params: StdioServerParameters, console: Console, experiments: int, rng: random.Random, slots: int
) -> None:

    async with Client(params) as client:
        agent = WaveAgent(client, console, rng, slots) if slots > 1 else DemoAgent(client, console, rng)
        await agent.loop(experiments)


def report(
    history: History, png: Path, console: Console, tag: str, metric: str, direction: str, confidence: float = 0.95
) -> int:
    """The history table and the chart, in the configured metric and direction."""
    runs = history.runs()
    console.print(table.render_table(runs, metric))
    console.print(table.noise_line(noise.floor_of(runs, best_run(runs), confidence), metric), highlight=False)
    better = 1.0 if direction == "maximize" else -1.0
    beyond = [f"run {r.id}" for r in runs if r.decision == "keep" and r.beyond_noise and r.best_before is not None]
    inside = [f"run {r.id}" for r in runs if r.beyond_noise is False and (r.delta or 0.0) * better > 0]
    console.print(f"gains beyond the noise (kept): {', '.join(beyond) or 'none'}; gains inside the noise "
                  f"(discarded): {', '.join(inside) or 'none'}", highlight=False)  # fmt: skip
    plot_progress(runs, png, metric, direction)
    console.print(f"wrote {png}; the best code is on branch {gitops.run_branch(tag)}")
    return 0
