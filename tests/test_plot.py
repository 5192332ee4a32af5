"""The progress chart is a readable PNG for any history, written atomically."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.image import imread
from PIL import Image

from server.show.plot import CLIPPED_TOP, _crashes, _draw, _running, chart_title, plot_progress, running_best
from server.store.history import Decision, History, RunRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_history(folder: Path) -> list[RunRecord]:
    """Kept, discarded, crashed and undecided runs, plus one still running."""
    history = History(folder)
    plan: list[tuple[float | None, Decision | None]] = [
        (2.60, "keep"),
        (2.55, "keep"),
        (2.58, "discard"),
        (None, "discard"),
        (2.50, "keep"),
        (2.52, None),
    ]
    best: float | None = None
    for i, (metric, decision) in enumerate(plan, start=1):
        run = RunRecord(id=i, commit=f"{i:07d}", parent="p", description=f"change number {i} " + "x" * i * 8)
        history.record(run, "start")
        status = "ok" if metric is not None else "crash"
        history.record(run.model_copy(update={"status": status, "metric": metric, "best_before": best}), "end")
        if decision is not None:
            history.decide(i, decision)
        best = metric if decision == "keep" else best
    history.record(RunRecord(id=len(plan) + 1, commit="f" * 7, parent="p", description="in flight"), "start")
    return history.runs()


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    assert height > 100 and width > 100
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (width, height)


def test_plot_all_outcomes(tmp_path: Path) -> None:
    runs = make_history(tmp_path / "hist")
    out = plot_progress(runs, tmp_path / "out" / "progress.png")
    assert out == tmp_path / "out" / "progress.png"
    assert_png(out)
    assert [p.name for p in out.parent.iterdir()] == ["progress.png"]  # no temporary file left behind


def test_plot_overwrites(tmp_path: Path) -> None:
    runs = make_history(tmp_path / "hist")
    out = tmp_path / "progress.png"
    out.write_bytes(b"old")
    plot_progress(runs[:2], out)
    assert_png(out)


def test_empty_and_crash_only_histories(tmp_path: Path) -> None:
    assert_png(plot_progress([], tmp_path / "empty.png"))
    crashed = [RunRecord(id=i, commit="abc1234", parent="p", description="boom", status="crash") for i in (1, 2)]
    assert_png(plot_progress(crashed, tmp_path / "crashed.png", direction="maximize"))


def test_running_best_follows_direction(tmp_path: Path) -> None:
    runs = make_history(tmp_path)
    assert running_best(runs) == [(1, 2.60), (2, 2.55), (5, 2.50)]
    assert running_best(runs, "maximize") == [(1, 2.60), (2, 2.60), (5, 2.60)]
    title = chart_title(runs, 2.5)
    assert title == "7 experiments, 3 kept, 1 discarded, 1 crashed, 1 running — best 2.5000"
    assert_png(plot_progress(runs, tmp_path / "max.png", metric="accuracy", direction="maximize"))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_the_chart_gets_the_mode_of_any_new_file(tmp_path: Path, umask: int, mode: int) -> None:
    previous = os.umask(umask)
    try:
        out = plot_progress(make_history(tmp_path / "hist"), tmp_path / "progress.png")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_a_failed_run_with_a_metric_is_still_marked(tmp_path: Path) -> None:
    run = RunRecord(id=1, commit="abc1234", parent="p", description="slow", status="over_budget", metric=2.4)
    ax = Figure().add_subplot()
    _crashes(ax, [run])
    assert len(ax.collections) == 1
    assert chart_title([run], None) == "1 experiment, 0 kept, 0 discarded, 0 crashed, 1 over budget"


def test_runs_in_flight_are_marked_apart_from_crashes(tmp_path: Path) -> None:
    runs = make_history(tmp_path)
    ax = Figure().add_subplot()
    _crashes(ax, runs)
    _running(ax, runs)
    crashes, flying = ax.collections
    assert np.asarray(crashes.get_offsets())[:, 0].tolist() == [4] and np.asarray(flying.get_offsets())[
        :, 0
    ].tolist() == [7]
    assert flying.get_label() == "running"


def starved_night() -> list[RunRecord]:
    """Kept runs between 2.50 and 2.60, and a starved run at 9.0 that would squeeze them into a thin band."""
    plan: list[tuple[float, Decision]] = [(2.60, "keep"), (2.55, "keep"), (9.0, "discard"), (2.58, "discard"),
                                          (2.50, "keep")]  # fmt: skip
    return [RunRecord(id=i, commit=f"{i:07d}", parent="p", description=f"idea {i}", status="ok", metric=metric,
                      decision=decision) for i, (metric, decision) in enumerate(plan, start=1)]  # fmt: skip


def drawn(runs: list[RunRecord]) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(11, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    _draw(ax, runs, "val_bpb", "minimize")
    fig.canvas.draw()
    return fig, ax


def test_a_run_far_off_the_scale_is_clipped_to_the_edge_and_named() -> None:
    _, ax = drawn(starved_night())
    low, high = ax.get_ylim()
    assert 2.5 > low > 2.4 and 2.6 < high < 2.7  # the kept runs fill the height
    assert any("1 run(s) off the scale" in t.get_text() and "#3 9.0000" in t.get_text() for t in ax.texts)
    marks = [c for c in ax.collections if np.asarray(c.get_offsets()).tolist() == [[3.0, CLIPPED_TOP]]]
    assert len(marks) == 1 and marks[0].get_transform() != ax.transData  # a triangle at the frame's top edge


def test_the_legend_lies_below_the_axes_not_on_a_point() -> None:
    fig, ax = drawn(starved_night())
    legend = ax.get_legend()
    assert legend is not None
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    assert legend.get_window_extent(renderer).y1 <= ax.get_window_extent(renderer).y0
