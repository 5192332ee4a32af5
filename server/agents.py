"""The demo's scripted agents, which drive the real MCP server with the six tools only: DemoAgent, one
experiment at a time (a baseline on several seeds, then one hyperparameter change per run, keep beyond the
noise, more seeds for a near miss, discard otherwise), and WaveAgent, N candidates at once on N slots.

WaveAgent's rounds: each candidate is edits to the best's code (run_experiment(edits=..., wait=false)), so the
working file is never touched and every candidate gets its own slot; get_history(wait_for=[...]) collects the
wave. The best result the gate passes is kept (keep run_id); any other that beat the old best too is re-run once
on the new best (run_experiment(rebase=...), which discards the old run); the rest are discarded.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from mcp import Client
from rich.console import Console

from server.errors import StateError

# A constant whose whole value is one number literal (not `8 if ON_GPU else 4`), then an optional comment.
CONSTANT_RE = re.compile(
    r"^(?P<name>[A-Z][A-Z0-9_]*) = (?P<value>-?[0-9][0-9_]*(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?)[ \t]*(?:#.*)?$", re.MULTILINE
)
SKIP = {"SEED"}  # changing the seed only measures noise
FACTOR = 1.5


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
        if delta and result.get("verdict"):
            delta += f": {result['verdict']}" + (f", band {result['required_gain']:.6f}"
                                                 if result.get("required_gain") is not None else "")  # fmt: skip
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


WAIT_S = 600  # one get_history call waits at most this long for a wave; the agent calls again while runs go on


class WaveAgent(DemoAgent):
    """Rounds of `width` candidates in parallel slots: start each with wait=false, collect them together, keep
    the best one the gate passes, re-run once on the new best any other that beat the old best, discard the rest."""

    def __init__(self, client: Client, console: Console, rng: random.Random, width: int) -> None:
        super().__init__(client, console, rng)
        self.width, self.runs, self.sign = width, 0, -1.0

    async def loop(self, experiments: int) -> None:
        await self.experiment(1, "baseline")
        self.runs = 1
        view = await self.call("get_history", limit=1)
        self.sign = -1.0 if view["direction"] == "minimize" else 1.0  # delta * sign > 0: better
        while self.runs < experiments:
            wave = await self.start_wave(min(self.width, experiments - self.runs))
            if not wave:
                self.console.print("no untried ideas left")
                return
            await self.decide(await self.collect(wave), experiments)

    async def start_wave(self, size: int) -> list[int]:
        """Start up to `size` untried ideas, one constant each (two changes to one line could not both be kept)."""
        source, started, names = (await self.call("read_train"))["content"], list[int](), set[str]()
        for idea in ideas(source, self.rng, self.tried):
            if len(started) == size:
                break
            if idea.name in names:
                continue
            self.tried.add(idea.description)
            edits = [{"old": idea.old_line, "new": idea.new_line}]
            try:
                result = await self.call("run_experiment", description=idea.description, edits=edits, wait=False)
            except StateError as exc:
                if "same code as run" not in str(exc):
                    raise
                continue
            names.add(idea.name)
            started.append(result["run_id"])
            self.runs += 1
            self.console.print(f"[bold]experiment {result['run_id']}[/bold]: {idea.description} (started)")
        if started:
            running = (await self.call("get_history", limit=1)).get("running")
            self.console.print(f"  in flight: {running}", highlight=False)
        return started

    async def collect(self, ids: list[int]) -> list[dict[str, Any]]:
        """The wave's results once every run in it has ended."""
        self.console.print(f"  collecting runs {', '.join(map(str, ids))} with get_history(wait_for=...)")
        while True:
            view = await self.call("get_history", limit=1, wait_for=ids, wait_seconds=WAIT_S)
            results: list[dict[str, Any]] = view.get("results") or []
            if all(result["status"] != "running" for result in results):
                return results

    async def decide(self, results: list[dict[str, Any]], experiments: int) -> None:
        """Keep the best result the gate passes; rebase once the others that passed it too; discard the rest."""
        for result in results:
            self.console.print(f"  run {result['run_id']}:", end="")
            self.show(result)
        passed = sorted((r for r in results if r["improved"]), key=lambda r: r["delta"] * self.sign, reverse=True)
        if passed:
            await self.decision("keep", passed[0]["run_id"])
        for result in results:
            if result in passed[1:] and self.runs < experiments:
                await self.rebase(result["run_id"])
            elif result not in passed[:1]:
                await self.decision("discard", result["run_id"])

    async def rebase(self, run_id: int) -> None:
        """Run a candidate that beat the old best again on the new best (the server discards the old run)."""
        self.console.print(f"  run {run_id} beat the old best too: its edits again on the new best (rebase)")
        try:
            result = await self.call("run_experiment", description=f"run {run_id}'s edits on the new best",
                                     rebase=run_id)  # fmt: skip
        except StateError as exc:
            self.console.print(f"  -> [yellow]cannot rebase[/yellow]: {str(exc).split(': ', 1)[-1]}", highlight=False)
            await self.decision("discard", run_id)
            return
        self.runs += 1
        self.console.print(f"  run {result['run_id']}:", end="")
        self.show(result)
        await self.decision("keep" if result["improved"] else "discard", result["run_id"])

    async def decision(self, decision: str, run_id: int) -> None:
        await self.call(decision, run_id=run_id)
        self.console.print(f"  -> run {run_id} [{'green' if decision == 'keep' else 'yellow'}]{decision}")
