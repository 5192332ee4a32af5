"""A run started from the terminal, with a live progress bar fed by the run's progress lines."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from server.lab.loop import Lab
from server.store.history import RunRecord


def run_with_progress(lab: Lab, description: str, console: Console, repeats: int | None = None) -> RunRecord:
    """Start a run, draw step, loss and time left of each seed until it ends, then collect it."""
    active = lab.start_run(description, repeats)
    budget = lab.config.time_budget
    columns = [TextColumn("run {task.fields[run]} seed {task.fields[seed]}"), BarColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn()]  # fmt: skip
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            while True:
                task = bar.add_task("starting", total=budget, run=active.record.id, seed=active.candidate.record.seed)
                while active.process.wait(0.5) is None:
                    progress = active.process.progress()
                    if progress is not None:
                        done = budget - progress.remaining if progress.remaining is not None else 0.0
                        bar.update(task, completed=min(budget, done), description=progress.describe())
                bar.update(task, completed=budget, description="evaluating")
                if not lab.advance(active):
                    break
    except BaseException:
        lab.finish_run(active, cancelled=True)
        raise
    return lab.finish_run(active)
