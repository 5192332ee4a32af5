"""A live terminal view of one run tag: the experiments in flight (one panel per slot), the best so far, the
latest runs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path

import watchfiles
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from server.run.summary import last_progress
from server.schema import SlotInfo, runs_in_flight, tail_text
from server.show.table import render_table, shorten, title
from server.store.history import History, RunRecord, best_run

LOG_TAIL_BYTES = 64 * 1024
RECENT = 10
TICK_S = 1.0  # how often the view wakes without a file event: elapsed time must move while a run is active
DEBOUNCE_MS = 300


def clock(seconds: float) -> str:
    """Seconds as m:ss or h:mm:ss."""
    total = max(0, int(seconds))
    hours, rest = divmod(total, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def _log_lines(run: SlotInfo) -> list[str]:
    """What the log says: the latest progress line, else its last line."""
    text = tail_text(run.log, LOG_TAIL_BYTES) if run.log else ""
    progress = last_progress(text)
    if progress is not None:
        return [progress.describe()]
    last = next((line for line in reversed(text.splitlines()) if line.strip()), None)
    return [f"log: {shorten(last, 100)}"] if last else ["no output yet"]


def _timing(run: SlotInfo, now: float) -> str:
    """Elapsed time, time left before the deadline, and the training budget."""
    parts = []
    if run.started_at is not None:
        parts.append(f"elapsed {clock(now - run.started_at)}")
    if run.deadline is not None:
        left = run.deadline - now
        parts.append(f"{clock(left)} left before the deadline" if left > 0 else "past its deadline")
    if run.budget is not None:
        parts.append(f"budget {run.budget:g}s")
    return " · ".join(parts)


def where(run: SlotInfo) -> str:
    """'slot 1 · GPU 1': the pool slot and the device the run sees ('' when the slot file names neither)."""
    parts = [] if run.slot is None else [f"slot {run.slot}"]
    return " · ".join(parts + ([f"GPU {run.device}"] if run.device is not None else []))


def running_panel(run: SlotInfo, tag: str, now: float) -> Panel:
    """One experiment in flight: id, description, timing, and what its log last said; the slot in the title."""
    other = f" on tag {run.tag}" if run.tag and run.tag != tag else ""
    head = Text(f"#{run.run_id if run.run_id is not None else '?'}{other}  ", style="bold")
    head.append(shorten(run.description, 90))
    body = [head, Text(_timing(run, now)), *(Text(line, style="cyan") for line in _log_lines(run))]
    heading = "running" + (f" · {where(run)}" if where(run) else "")
    return Panel(Group(*body), title=heading, title_align="left", border_style="yellow")


def status_line(state_dir: Path, tag: str, now: float) -> RenderableType:
    """A panel per experiment in flight, or a line saying the loop is idle."""
    runs = runs_in_flight(state_dir)
    if not runs:
        return Text("idle: no experiment running", style="dim")
    return Group(*(running_panel(run, tag, now) for run in runs))


def best_line(runs: list[RunRecord]) -> Text:
    """The best run so far (the latest kept one), or why there is none."""
    best = best_run(runs)
    if best is None or best.metric is None:
        return Text("best so far: none yet" if runs else "no runs yet", style="dim")
    text = Text("best so far: ")
    text.append(f"{best.metric:.6f}", style="bold green")
    return text + Text(f"  #{best.id} {best.commit[:7]}  {shorten(best.description, 70)}")


def render_frame(state_dir: Path, tag: str, now: float | None = None) -> RenderableType:
    """One screen: header, the runs in flight (or idle), the best so far, and the latest runs."""
    now = time.time() if now is None else now
    header = Text(f"autoresearch · tag {tag} · {state_dir} · {time.strftime('%H:%M:%S')}", style="bold")
    if not state_dir.is_dir():
        return Group(header, Text(f"waiting for {state_dir} to appear: no runs yet", style="dim"))
    runs = History(state_dir / tag).runs()
    parts: list[RenderableType] = [header, status_line(state_dir, tag, now), best_line(runs)]
    if runs:
        shown = runs[-RECENT:]
        caption = f"the latest {len(shown)} of {len(runs)} runs" if len(shown) < len(runs) else None
        parts.append(render_table(shown, caption=caption, heading=title(runs)))
    return Group(*parts)


def _signature(state_dir: Path, tag: str) -> tuple[object, ...]:
    """Cheap stats of the files a frame depends on, to catch changes a file watcher may miss."""
    stats: list[object] = [state_dir.is_dir()]
    slots = sorted((state_dir / "slots").glob("*.lock")) if state_dir.is_dir() else []
    for path in (*slots, state_dir / tag / "runs.jsonl"):
        try:
            st = path.stat()
            stats.append((st.st_mtime_ns, st.st_size))
        except OSError:
            stats.append(None)
    return tuple(stats)


class _Viewer:
    """Draws frames through `show` and counts them; skips redraws that would show nothing new."""

    def __init__(self, state_dir: Path, tag: str, show: Callable[[RenderableType], None], ticks: bool) -> None:
        self.state_dir, self.tag, self.show, self.ticks = state_dir, tag, show, ticks
        self.frames = 0
        self.signature: tuple[object, ...] | None = None

    def draw(self, changed: bool) -> None:
        """Redraw on the first call, when a slot or the history changed, or while a run is active."""
        signature = _signature(self.state_dir, self.tag)
        active = bool(runs_in_flight(self.state_dir))
        # a live display redraws on every tick of an active run; a plain stream only on real changes
        if self.frames and signature == self.signature and not (active and (changed or self.ticks)):
            return
        self.signature = signature
        self.show(render_frame(self.state_dir, self.tag))
        self.frames += 1


def _events(state_dir: Path, stop: threading.Event) -> Generator[bool, None, None]:
    """True after file changes under state_dir, False on a quiet tick; ends when stop is set."""
    while not stop.is_set():
        if not state_dir.is_dir():
            stop.wait(TICK_S)  # watchfiles needs an existing folder; poll until it appears
            yield False
            continue
        tick_ms = int(TICK_S * 1000)
        changes = watchfiles.watch(
            state_dir, stop_event=stop, debounce=DEBOUNCE_MS, rust_timeout=tick_ms, yield_on_timeout=True
        )
        try:
            for batch in changes:
                yield bool(batch)
                if not state_dir.is_dir():
                    break  # the folder was removed: go back to waiting for it
        except (OSError, RuntimeError):
            stop.wait(TICK_S)
        finally:
            changes.close()


def _loop(viewer: _Viewer, stop: threading.Event, max_frames: int | None) -> int:
    """Draw a first frame, then redraw on events until stopped or max_frames are drawn."""

    def done() -> bool:
        return max_frames is not None and viewer.frames >= max_frames

    try:
        viewer.draw(changed=False)
        with closing(_events(viewer.state_dir, stop)) as events:
            for changed in events:
                if done():
                    break
                viewer.draw(changed)
                if done():
                    break
    except KeyboardInterrupt:
        pass  # Ctrl+C is how a person leaves the view
    return viewer.frames


def watch(
    state_dir: Path,
    tag: str,
    console: Console | None = None,
    once: bool = False,
    max_frames: int | None = None,
    stop_event: threading.Event | None = None,
) -> int:
    """Show the tag's progress, redrawn as files under state_dir change; returns the frames drawn."""
    console = console or Console()
    state_dir = Path(state_dir)
    if once:
        console.print(render_frame(state_dir, tag))
        return 1
    stop = stop_event or threading.Event()
    if not console.is_terminal:
        return _loop(_Viewer(state_dir, tag, console.print, ticks=False), stop, max_frames)
    with Live(console=console, auto_refresh=False) as live:
        viewer = _Viewer(state_dir, tag, lambda frame: live.update(frame, refresh=True), ticks=True)
        return _loop(viewer, stop, max_frames)
