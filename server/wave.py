"""The demo's waves: N candidates at once on a pool of N slots, driven over MCP like the one-at-a-time demo.

Each candidate is edits to the best's code (run_experiment(edits=..., wait=false)), so the working file is never
touched and every candidate gets its own slot; get_history(wait_for=[...]) collects the wave. The best result the
gate passes is kept (keep run_id); any other that beat the old best too is re-run once on the new best
(run_experiment(rebase=...), which discards the old run); the rest are discarded.
"""

from __future__ import annotations

import random
from typing import Any

from mcp import Client
from rich.console import Console

from server.demo import DemoAgent, ideas
from server.errors import StateError

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
