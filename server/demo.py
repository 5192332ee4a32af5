"""`autoresearch demo`: the whole loop on this machine, no language model needed.

A built-in agent drives the real MCP server over stdio (started as .mcp.json says) with the six tools
only: a baseline (the server runs it on several seeds: the noise floor), then one hyperparameter change per
experiment, keep when the gain is beyond the noise, repeat a near miss on more seeds, discard otherwise.
With --slots N (N > 1) it works in waves of N candidates at once instead (server/wave.py).
It works in a git worktree on its own run tag, so the user's checkout is never touched.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from rich.console import Console

from server.config import load_config
from server.errors import ConfigError, InvalidInputError, StateError
from server.lab import noise
from server.show import table
from server.show.plot import plot_progress
from server.store import gitops
from server.store.history import History, best_run
from server.store.lock import RepoLock

# A constant whose whole value is one number literal (not `8 if ON_GPU else 4`), then an optional comment.
CONSTANT_RE = re.compile(
    r"^(?P<name>[A-Z][A-Z0-9_]*) = (?P<value>-?[0-9][0-9_]*(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?)[ \t]*(?:#.*)?$", re.MULTILINE
)
SKIP = {"SEED"}  # changing the seed only measures noise
FACTOR = 1.5
MAX_SLOTS = 8  # a CPU machine shares its cores between the slots


@dataclass(frozen=True)
class Idea:
    """One hyperparameter change: the exact line before and after."""

    name: str
    old_line: str
    new_line: str

    @property
    def description(self) -> str:
        return f"{self.name} {self.old_line.split('=', 1)[1].split('#')[0].strip()} -> " + \
            self.new_line.split("=", 1)[1].split("#")[0].strip()  # fmt: skip


def ideas(source: str, rng: random.Random, tried: set[str]) -> list[Idea]:
    """Every untried single-constant change: floats times or divided by FACTOR, integers stepped by one."""
    found = []
    for match in CONSTANT_RE.finditer(source):
        name, value = match["name"], match["value"]
        line = source[match.start() : source.index("\n", match.start())]
        for new in _variants(value):
            idea = Idea(name, line, line.replace(f"{name} = {value}", f"{name} = {new}", 1))
            if name not in SKIP and idea.description not in tried:
                found.append(idea)
    rng.shuffle(found)
    return found


def _variants(literal: str) -> list[str]:
    if re.fullmatch(r"-?[0-9_]+", literal):
        number = int(literal.replace("_", ""))
        return [str(v) for v in (number + 1, number - 1) if v >= 1]
    value = float(literal)
    if value <= 0:
        return []
    options = [value * FACTOR, value / FACTOR]
    if value < 1:  # ratios and betas must stay below one
        options = [v for v in options if v < 1]
    texts = [f"{v:.4g}" for v in options]
    return [t if ("." in t or "e" in t) else t + ".0" for t in texts]  # a float stays a float literal


def server_params(main_root: Path, worktree: Path, env: dict[str, str]) -> StdioServerParameters:
    """.mcp.json's server entry, started in the worktree as Claude Code would start it in a project."""
    entry = json.loads((main_root / ".mcp.json").read_text())["mcpServers"]["autoresearch"]
    command = main_root / entry["command"]
    argv = [str(command), *entry["args"]] if command.exists() else [sys.executable, "-m", "server", "serve"]
    full_env = {**os.environ, **entry.get("env", {}), **env, "CLAUDE_PROJECT_DIR": str(worktree)}
    return StdioServerParameters(command=argv[0], args=argv[1:], env=full_env, cwd=str(worktree))


class DemoAgent:
    """Drives the loop through the MCP tools and prints each result as it comes."""

    def __init__(self, client: Client, console: Console, rng: random.Random) -> None:
        self.client, self.console, self.rng = client, console, rng
        self.tried: set[str] = set()

    async def call(self, tool: str, **args: Any) -> dict[str, Any]:
        result = await self.client.call_tool(tool, args, progress_callback=self.on_progress)
        if result.is_error:
            message = "".join(getattr(block, "text", "") for block in result.content)
            raise StateError(f"the server refused {tool}: {message}")
        return result.structured_content or {}

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.console.print(f"    [dim]{message}[/dim]", highlight=False)

    async def experiment(self, number: int, description: str) -> None:
        self.console.print(f"[bold]experiment {number}[/bold]: {description}")
        result = await self.call("run_experiment", description=description)
        self.show(result)
        if result.get("near_miss"):
            self.console.print("  a near miss: the same code on 2 more seeds")
            result = await self.call("run_experiment", description=description, repeats=2)
            self.show(result)
        decision = "keep" if result["improved"] else "discard"
        await self.call(decision)
        self.console.print(f"  -> [{'green' if decision == 'keep' else 'yellow'}]{decision}")

    def show(self, result: dict[str, Any]) -> None:
        """The metric (mean over seeds), its spread, the change on the best and what the gate made of it."""
        metric = f"{result['metric']:.6f}" if result["metric"] is not None else result["status"]
        spread = f" ±{result['std']:.4f} over {result['seeds']} seeds" if result.get("std") is not None else ""
        delta = f" ({result['delta']:+.6f}" if result["delta"] is not None else ""
        if delta and result.get("required_gain") is not None:
            where = "beyond" if result["improved"] else "inside"
            delta += f", {where} the noise band of {result['required_gain']:.6f}"
        self.console.print(f"  {metric}{spread}{delta + ')' if delta else ''}", highlight=False)

    async def loop(self, experiments: int) -> None:
        await self.experiment(1, "baseline")
        for number in range(2, experiments + 1):
            source = (await self.call("read_train"))["content"]
            options = ideas(source, self.rng, self.tried)
            if not options:
                self.console.print("no untried ideas left")
                return
            idea = options[0]
            self.tried.add(idea.description)
            await self.call("write_train", edits=[{"old": idea.old_line, "new": idea.new_line}])
            try:
                await self.experiment(number, idea.description)
            except StateError as exc:
                if "same code as run" not in str(exc):
                    raise
                self.console.print(f"  -> skipped: {str(exc).split(': ', 2)[-1].split(';')[0]}")
                await self.call("write_train", edits=[{"old": idea.new_line, "new": idea.old_line}])


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
    from server.wave import WaveAgent  # it builds on DemoAgent

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
