"""The history as compact rows, a rich table, JSON and TSV."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from server.show.table import counts, format_rows, render_table, title, to_json, to_tsv
from server.store.history import TSV_HEADER, History, RunRecord

LONG = "increase depth to eight, widen the MLP four times and retune the learning rate schedule " * 3


def make_history(folder: Path, n: int, description: str = "idea") -> list[RunRecord]:
    """n finished runs: every 7th crashes, the last is undecided, the rest alternate keep and discard."""
    history = History(folder)
    best: float | None = None
    for i in range(1, n + 1):
        run = RunRecord(id=i, commit=f"{i:07x}deadbeef", parent="base", description=f"{description} {i}")
        history.record(run, "start")
        if i % 7 == 0:
            history.record(run.model_copy(update={"status": "crash", "reason": "OOM"}), "end")
            history.decide(i, "discard")
            continue
        metric = 2.5 - i * 0.001 * (1 if i % 2 else -1)
        done = run.model_copy(update={"status": "ok", "metric": metric, "best_before": best, "memory_gb": 12.25})
        history.record(done, "end")
        if i < n:
            keep = best is None or metric < best
            history.decide(i, "keep" if keep else "discard")
            best = metric if keep else best
    return history.runs()


def test_rows_for_100_runs_stay_small(tmp_path: Path) -> None:
    runs = make_history(tmp_path, 100, LONG)
    rows = format_rows(runs, limit=100)
    assert len(rows) == 101
    assert len("\n".join(rows).encode()) < 8000
    assert all(len(row.encode()) < 120 for row in rows)
    assert "…" in rows[1]


def test_rows_show_each_column(tmp_path: Path) -> None:
    runs = make_history(tmp_path, 8)
    rows = format_rows(runs, limit=5)
    assert len(rows) == 6 and "3 earlier runs not shown" in rows[0]
    assert rows[0].split()[:5] == ["id", "val_bpb", "delta", "GB", "outcome"]
    crash = next(row for row in rows if row.split()[0] == "7")
    assert crash.split()[1:5] == ["-", "-", "-", "crash"]
    kept = next(row for row in rows if " keep " in row)
    assert "12.2" in kept or "12.3" in kept
    assert rows[-1].split()[-4:] == ["pending", "-", "idea", "8"]  # undecided; epochs unknown
    assert any(f"{r.metric:.6f}" in "\n".join(rows) for r in runs if r.metric is not None)


def test_short_descriptions_are_not_cut(tmp_path: Path) -> None:
    rows = format_rows(make_history(tmp_path, 3, "y" * 40), limit=10)
    assert rows[1].endswith("y" * 40 + " 1")
    rows = format_rows(make_history(tmp_path / "long", 3, "x" * 60), limit=10)
    assert rows[1].endswith("x" * 47 + "…")


def test_json_round_trips(tmp_path: Path) -> None:
    runs = make_history(tmp_path, 10)
    assert [RunRecord.model_validate(x) for x in json.loads(to_json(runs))] == runs
    assert to_json([]) == "[]"


def test_counts_put_each_run_under_its_outcome(tmp_path: Path) -> None:
    make_history(tmp_path, 9)  # odd runs improve (1, 3, 5 kept), even ones do not, 7 crashes, 9 undecided
    history = History(tmp_path)
    history.record(RunRecord(id=10, commit="abcdef1", parent="x", description="in flight"), "start")
    c = counts(history.runs())
    assert c == {"runs": 10, "kept": 3, "discarded": 4, "crashed": 1, "pending": 1, "running": 1}
    assert counts([]) == {"runs": 0, "kept": 0, "discarded": 0, "crashed": 0, "pending": 0, "running": 0}


def test_tsv_keeps_the_original_columns(tmp_path: Path) -> None:
    runs = make_history(tmp_path, 8)
    lines = to_tsv(runs).splitlines(keepends=True)
    assert lines[0] == TSV_HEADER == "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
    assert "0000007\t0.000000\t0.0\tcrash\tidea 7\n" in lines
    assert len(lines) == 8  # header + 7 decided runs; the undecided one is left out
    assert all(len(line.split("\t")) == 5 for line in lines)


def test_render_table_highlights_outcomes(tmp_path: Path) -> None:
    runs = make_history(tmp_path, 8)
    table = render_table(runs)
    styles = {run.id: row.style for run, row in zip(runs, table.rows, strict=True)}
    assert styles[1] == "bold green" and styles[7] == "red"
    assert any(style == "dim" for style in styles.values())
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(table)
    text = console.export_text()
    assert "8 runs" in text and "1 crashed" in text and "best" in text and "idea 5" in text


def failed_runs(folder: Path) -> list[RunRecord]:
    """A crash, a timeout and a run over budget that still printed its metric, all discarded."""
    history = History(folder)
    for i, status in enumerate(["crash", "timeout", "over_budget"], start=1):
        run = RunRecord(id=i, commit=f"{i:07d}", parent="p", description=f"try {i}")
        history.record(run, "start")
        metric = 2.4 if status == "over_budget" else None
        history.record(run.model_copy(update={"status": status, "metric": metric, "reason": "r"}), "end")
        history.decide(i, "discard")
    return history.runs()


def test_each_failed_status_is_counted_under_its_own_name(tmp_path: Path) -> None:
    runs = failed_runs(tmp_path)
    assert counts(runs) == {"runs": 3, "kept": 0, "discarded": 0, "crashed": 1, "pending": 0, "running": 0,
                            "timeout": 1, "over_budget": 1}  # fmt: skip
    assert title(runs) == "3 runs, 0 kept, 0 discarded, 1 crashed, 1 timed out, 1 over budget"


def test_one_run_is_not_runs(tmp_path: Path) -> None:
    assert title(make_history(tmp_path, 1)).startswith("1 run, 0 kept")


def table_text(runs: list[RunRecord]) -> str:
    console = Console(record=True, width=160, file=io.StringIO())
    console.print(render_table(runs))
    return console.export_text()


def test_a_pool_of_slots_adds_a_slot_column_and_runs_in_flight_show_as_running(tmp_path: Path) -> None:
    runs = make_history(tmp_path, 3)
    alone = table_text(runs)
    assert "slot" not in alone.splitlines()[2] and "running" not in alone
    pooled = [run.model_copy(update={"slot": run.id % 2}) for run in runs]
    flying = RunRecord(id=4, commit="4" * 7, parent="p", description="in flight", slot=1)
    table = render_table([*pooled, flying])
    assert [column.header for column in table.columns][-2:] == ["slot", "description"]
    assert list(table.columns[-2].cells) == ["1", "0", "1", "1"] and table.rows[-1].style == "yellow"
    text = table_text([*pooled, flying])
    assert "3 running" not in text and "1 running" in text and "running " in text.splitlines()[-2]
