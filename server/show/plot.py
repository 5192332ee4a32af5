"""The progress chart: every experiment as a point, kept runs labelled, the running best as a step line."""

from __future__ import annotations

import io
import math
import os
import uuid
from pathlib import Path

# Figure + the Agg canvas directly, never pyplot: no global backend to switch (and no warning about it),
# no figure registry to leak, safe to call from a server thread.
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from server.errors import StorageError
from server.show.table import count_words, outcome, shorten
from server.store.history import RunRecord

KEEP_COLOR = "#2ca02c"
DISCARD_COLOR = "#9e9e9e"
CRASH_COLOR = "#d62728"
PENDING_COLOR = "#4c72b0"
RUNNING_COLOR = "#e0a800"
HOLDOUT_COLOR = "#6a3d9a"
LABEL_WIDTH = 36
WIDEN = 0.5  # the y axis reaches this share of the kept runs' span beyond them; runs further off are clipped
CLIPPED_LISTED = 5  # off-scale runs named in the chart's note
CLIPPED_TOP, CLIPPED_BOTTOM = 0.91, 0.06  # where off-scale runs sit, in axes height (crashes sit at 0.97)


def _finite(run: RunRecord) -> bool:
    return run.metric is not None and math.isfinite(run.metric)


def running_best(runs: list[RunRecord], direction: str = "minimize") -> list[tuple[int, float]]:
    """(run id, best kept metric so far) at each kept run, in the metric's direction."""
    pick = min if direction == "minimize" else max
    points: list[tuple[int, float]] = []
    for run in runs:
        if outcome(run) == "keep" and run.metric is not None and _finite(run):
            points.append((run.id, run.metric if not points else pick(points[-1][1], run.metric)))
    return points


def chart_title(runs: list[RunRecord], best: float | None) -> str:
    """'N experiments, K kept, D discarded, C crashed[, O over budget ...] — best 2.4123'."""
    text = count_words(runs, "experiment")
    return text + (f" — best {best:.4f}" if best is not None else "")


def _scatter(ax: Axes, runs: list[RunRecord], kind: str, window: tuple[float, float], **style: object) -> None:
    """The runs of one outcome as points, when there are any (an empty legend entry would mislead); a run off
    the scale as a triangle on the edge it lies beyond."""
    chosen = [r for r in runs if outcome(r) == kind and _finite(r)]
    inside = [r for r in chosen if window[0] <= (r.metric or 0.0) <= window[1]]
    if inside:
        ax.scatter([r.id for r in inside], [r.metric or 0.0 for r in inside], **style)  # type: ignore[arg-type]
    edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in axes: at the frame's edge
    for height, marker in ((CLIPPED_TOP, "^"), (CLIPPED_BOTTOM, "v")):
        beyond = [r.id for r in chosen if r not in inside and ((r.metric or 0.0) > window[1]) == (marker == "^")]
        if beyond:
            clipped = {**style, "marker": marker, "label": None, "clip_on": False, "transform": edge, "alpha": 0.9}
            ax.scatter(beyond, [height] * len(beyond), **clipped)  # type: ignore[arg-type]


def _crashes(ax: Axes, runs: list[RunRecord]) -> None:
    """Runs without a metric as red crosses along the top edge: x in data, y in axes coordinates."""
    # every failed run, also one that printed a metric (over budget, tampered): it must not vanish from the chart
    failed = [r.id for r in runs if outcome(r) == "crash" or (not _finite(r) and outcome(r) != "running")]
    if failed:
        top = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            failed,
            [0.97] * len(failed),
            transform=top,
            marker="x",
            color=CRASH_COLOR,
            s=36,
            linewidths=1.5,
            clip_on=False,
            zorder=4,
            label="crashed",
        )


def _running(ax: Axes, runs: list[RunRecord]) -> None:
    """Runs still in flight as hollow amber circles along the bottom edge: no metric yet, but not lost."""
    flying = [r.id for r in runs if outcome(r) == "running"]
    if flying:
        bottom = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(flying, [0.03] * len(flying), transform=bottom, marker="o", facecolors="none", s=36,
                   edgecolors=RUNNING_COLOR, linewidths=1.5, clip_on=False, zorder=4, label="running")  # fmt: skip


def _best_line(ax: Axes, runs: list[RunRecord], direction: str) -> None:
    """The running best as a step line, carried on to the latest experiment."""
    points = running_best(runs, direction)
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        xs.append(max(xs[-1], runs[-1].id))
        ys.append(ys[-1])
        ax.step(xs, ys, where="post", color=KEEP_COLOR, alpha=0.7, linewidth=1.5, zorder=2, label="running best")


def _holdout(ax: Axes, runs: list[RunRecord]) -> None:
    """Each kept run's holdout figure beside its validation point; a red '!' where it does not confirm the gain."""
    scored = [r for r in runs if r.holdout_metric is not None and math.isfinite(r.holdout_metric)]
    if not scored:
        return
    xs, ys = [r.id + 0.15 for r in scored], [r.holdout_metric or 0.0 for r in scored]
    ax.scatter(xs, ys, marker="D", s=30, facecolors="none", edgecolors=HOLDOUT_COLOR, linewidths=1.2, zorder=5,
               label="holdout (kept)")  # fmt: skip
    for run in scored:
        if run.holdout_note:
            ax.annotate("!", (run.id + 0.15, run.holdout_metric or 0.0), xytext=(5, -4), textcoords="offset points",
                        color=CRASH_COLOR, fontsize=12, fontweight="bold")  # fmt: skip


def _labels(ax: Axes, runs: list[RunRecord]) -> None:
    """Each kept run's description as a small rotated label next to its point."""
    for run in runs:
        if outcome(run) == "keep" and _finite(run):
            ax.annotate(
                shorten(run.description, LABEL_WIDTH),
                (run.id, run.metric or 0.0),
                xytext=(4, 6),
                textcoords="offset points",
                rotation=30,
                fontsize=7,
                color="#1b5e20",
                annotation_clip=False,
            )


def y_window(runs: list[RunRecord]) -> tuple[float, float] | None:
    """The metric range that matters: the kept runs and their holdout figures (else every run's median and
    quartiles), widened by WIDEN of its span on each side; starved or failed runs far off it are clipped."""
    kept = [r.metric for r in runs if outcome(r) == "keep" and r.metric is not None and _finite(r)]
    kept += [r.holdout_metric for r in runs if r.holdout_metric is not None and math.isfinite(r.holdout_metric)]
    every = sorted(r.metric for r in runs if r.metric is not None and _finite(r))
    if not every and not kept:
        return None
    core = kept or [every[len(every) // 4], every[len(every) // 2], every[(3 * len(every)) // 4]]
    lo, hi = min(core), max(core)
    span = hi - lo or abs(hi) * 0.05 or 1.0
    shown = [v for v in every + kept if lo - WIDEN * span <= v <= hi + WIDEN * span]
    return min(shown), max(shown)


def _limits(ax: Axes, runs: list[RunRecord], window: tuple[float, float] | None) -> None:
    """Room above the points for the labels and the crash marks; a sensible x range for few runs."""
    if window is not None:
        lo, hi = window
        span = hi - lo or abs(hi) * 0.05 or 1.0
        ax.set_ylim(lo - 0.08 * span, hi + 0.3 * span)
    ids = [r.id for r in runs] or [1]
    ax.set_xlim(min(ids) - 0.8, max(ids) + 0.8)


def _clipped_note(ax: Axes, runs: list[RunRecord], window: tuple[float, float] | None) -> None:
    """Say which runs lie off the scale, and where, so that a triangle on the edge is not read as a value."""
    if window is None:
        return
    off = [r for r in runs if _finite(r) and not window[0] <= (r.metric or 0.0) <= window[1]]
    if off:
        listed = ", ".join(f"#{r.id} {r.metric:.4f}" for r in off[:CLIPPED_LISTED])
        listed += " …" if len(off) > CLIPPED_LISTED else ""
        ax.text(0.01, 0.01, f"{len(off)} run(s) off the scale, clipped to the edge (▲▼): {listed}", fontsize=7,
                transform=ax.transAxes, ha="left", va="bottom", color="#555555")  # fmt: skip


def _note(ax: Axes, runs: list[RunRecord]) -> None:
    """Say why the chart has no points, rather than showing a blank frame."""
    if any(_finite(r) for r in runs):
        return
    ax.set_yticks([])  # a y scale with no values on it would suggest numbers that do not exist
    text = "no experiments yet" if not runs else "no run has produced a metric yet"
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=12, color="#555555")


def _draw(ax: Axes, runs: list[RunRecord], metric: str, direction: str) -> None:
    """Everything on the axes: points by outcome, crashes, the best line, labels and limits."""
    window = y_window(runs)
    scale = window or (0.0, 0.0)
    _scatter(ax, runs, "discard", scale, color=DISCARD_COLOR, alpha=0.5, s=22, zorder=3, label="discarded")
    _scatter(ax, runs, "pending", scale, facecolors="none", edgecolors=PENDING_COLOR, s=30, zorder=3,
             label="pending")  # fmt: skip
    _scatter(ax, runs, "keep", scale, color=KEEP_COLOR, edgecolors="black", linewidths=0.6, s=60, zorder=5,
             label="kept")  # fmt: skip
    _crashes(ax, runs)
    _running(ax, runs)
    _best_line(ax, runs, direction)
    _holdout(ax, runs)
    _labels(ax, runs)
    _limits(ax, runs, window)
    _clipped_note(ax, runs, window)
    _note(ax, runs)
    better = "lower" if direction == "minimize" else "higher"
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment #")
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.grid(True, alpha=0.25)
    if ax.get_legend_handles_labels()[0]:  # below the axes, never on a point (the baseline sat under it)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=7, fontsize=8, frameon=False)


def render_png(runs: list[RunRecord], metric: str = "val_bpb", direction: str = "minimize") -> bytes:
    """The chart as PNG bytes."""
    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    fig.subplots_adjust(left=0.07, right=0.98, top=0.9, bottom=0.1)
    runs = sorted(runs, key=lambda r: r.id)
    _draw(ax, runs, metric, direction)
    best = running_best(runs, direction)
    ax.set_title(chart_title(runs, best[-1][1] if best else None), fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # kept-run labels may reach past the axes
    return buffer.getvalue()


def plot_progress(runs: list[RunRecord], out_path: Path, metric: str = "val_bpb", direction: str = "minimize") -> Path:
    """Draw the chart and write it to `out_path` atomically (temporary sibling + rename)."""
    out_path = Path(out_path)
    write_shared(out_path, render_png(runs, metric, direction))
    return out_path


def write_shared(path: Path, data: bytes) -> None:
    """Write through a temporary sibling and a rename, with the mode any new file gets (0644 less the umask):
    a chart is for sharing, and history.atomic_write's temporary files are private (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"could not write {path} ({exc.strerror or exc}); check the folder and retry.") from exc
