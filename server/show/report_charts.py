"""The report's pictures as PNG bytes: the progress chart (server/show/plot.py), each run's time split, and the
gain of each kept change against the gain the keep gate needed."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from server.show.plot import KEEP_COLOR, render_png
from server.show.report import PHASES, Report
from server.show.table import shorten

PHASE_COLORS = {"startup": "#ff7f0e", "training": "#2ca02c", "evaluation": "#1f77b4", "other": "#9e9e9e"}
NOISE_COLOR = "#d62728"
GAIN_LABEL_WIDTH = 28


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def time_split_png(report: Report) -> bytes:
    """Stacked bars, one per finished run: start-up, training, evaluation and the rest, in seconds."""
    fig = _figure(10, 3.8)
    ax = fig.add_subplot()
    per_run = report.time.per_run
    ids = sorted(per_run)
    bottom = [0.0] * len(ids)
    for phase in PHASES:
        heights = [per_run[i][phase] for i in ids]
        ax.bar(ids, heights, bottom=bottom, color=PHASE_COLORS[phase], label=phase, width=0.8)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    if not ids:
        ax.text(0.5, 0.5, "no finished run yet", transform=ax.transAxes, ha="center", va="center")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("experiment #")
    ax.set_ylabel("seconds")
    ax.set_title("where each run's time went", fontsize=11)
    ax.grid(True, axis="y", alpha=0.25)
    if ids:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=len(PHASES), fontsize=8, frameon=False)
    return _png(fig)


def gains_png(report: Report) -> bytes:
    """One bar per kept change: its gain, with a red tick at the gain the gate needed (the noise band)."""
    changes = [c for c in report.chain if c.gain is not None]
    fig = _figure(10, 0.9 + 0.38 * max(1, len(changes)))
    ax = fig.add_subplot()
    ys = list(range(len(changes)))[::-1]
    labels = [f"#{c.run.id} {shorten(c.run.description, GAIN_LABEL_WIDTH)}" for c in changes]
    ax.barh(ys, [c.gain or 0.0 for c in changes], color=KEEP_COLOR, height=0.6, label="gain")
    needed = [(y, c.required) for y, c in zip(ys, changes, strict=True) if c.required is not None]
    if needed:
        ax.scatter([n for _, n in needed], [y for y, _ in needed], marker="|", s=300, color=NOISE_COLOR, zorder=3,
                   label="needed (noise band)")  # fmt: skip
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(changes) < 4 else -0.12), ncol=2,
                  fontsize=8, frameon=False)  # fmt: skip
    if not changes:
        ax.text(0.5, 0.5, "no kept change with a gain yet", transform=ax.transAxes, ha="center", va="center")
    ax.set_yticks(ys, labels, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel(f"gain in {report.metric} (positive is better)")
    ax.set_title("the gain of each kept change", fontsize=11)
    ax.grid(True, axis="x", alpha=0.25)
    return _png(fig)


def pictures(report: Report) -> dict[str, bytes]:
    """Every picture of the report by name, as PNG bytes."""
    return {"progress": render_png(report.runs, report.metric, report.direction), "time": time_split_png(report),
            "gains": gains_png(report)}  # fmt: skip
