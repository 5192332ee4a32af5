"""A run started from the terminal, with a live progress bar fed by the run's progress lines."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from server.lab.loop import ActiveRun, Lab
from server.store.history import RunRecord


def run_with_progress(lab: Lab, description: str, console: Console, repeats: int | None = None) -> RunRecord:
    """Start a run and drive it (Lab.drive), drawing each seed's step, loss and time left as a bar of its own."""
    active = lab.start_run(description, repeats=repeats)
    budget = lab.config.time_budget
    columns = [TextColumn("run {task.fields[run]} seed {task.fields[seed]}"), BarColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn()]  # fmt: skip
    with Progress(*columns, console=console, transient=False) as bar:
        seeds: dict[int, TaskID] = {}

        def show(run: ActiveRun) -> None:
            index = run.candidate.repeat
            if index not in seeds:  # a new seed: the one before it ended and was evaluated
                for earlier in seeds.values():
                    bar.update(earlier, completed=budget, description="done")
                seeds[index] = bar.add_task("starting", total=budget, run=run.record.id, seed=run.record.seed)
            progress = run.process.progress()
            if progress is not None:
                done = budget - progress.remaining if progress.remaining is not None else 0.0
                bar.update(seeds[index], completed=min(budget, done), description=progress.describe())

        record = lab.drive(active, show, every=0.5)
        for task in seeds.values():
            bar.update(task, completed=budget, description="done")
    return record
