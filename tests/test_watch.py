"""The live view: frames from real history and lock files, and redraws when the history changes."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import dead_pid, write_slot
from rich.console import Console

from server.schema import tail_text
from server.show.watch import LOG_TAIL_BYTES, _signature, render_frame, watch
from server.store.history import History, RunRecord

TAG = "default"


def text_of(state_dir: Path) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(render_frame(state_dir, TAG))
    return console.export_text()


def add_run(state_dir: Path, run_id: int, metric: float | None, decision: str, description: str) -> None:
    history = History(state_dir / TAG)
    run = RunRecord(id=run_id, commit=f"{run_id:07d}", parent="p", description=description)
    history.record(run, "start")
    status = "ok" if metric is not None else "crash"
    history.record(run.model_copy(update={"status": status, "metric": metric, "memory_gb": 0.5}), "end")
    history.decide(run_id, "keep" if decision == "keep" else "discard")


def write_lock(state_dir: Path, log: Path, pid: int, op: str = "run", slot: int = 0, run_id: int = 3) -> None:
    """Slot `slot` describing run `run_id` (the pool's slot file: op, pid, run, timing and log)."""
    write_slot(state_dir, slot, run_id, log, pid, op=op, tag=TAG, description="try rotary embeddings")


def wait_for(predicate: Callable[[], bool], timeout: float = 8.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_frame_shows_best_and_descriptions(tmp_path: Path) -> None:
    add_run(tmp_path, 1, 2.612345, "keep", "baseline")
    add_run(tmp_path, 2, 2.498765, "keep", "double the batch size")
    add_run(tmp_path, 3, None, "discard", "a broken idea")
    text = text_of(tmp_path)
    assert "best so far: 2.498765" in text and "double the batch size" in text
    assert "a broken idea" in text and "crash" in text and "idle" in text
    assert "3 runs, 2 kept, 0 discarded, 1 crashed" in text


def test_frame_shows_the_running_experiment(tmp_path: Path) -> None:
    add_run(tmp_path, 1, 2.6, "keep", "baseline")
    log = tmp_path / TAG / "runs" / "3" / "log.txt"
    log.parent.mkdir(parents=True)
    log.write_text(
        "compiling\nstep 10 | loss 4.5 | elapsed 3.0s | remaining 57.0s\n"
        "step 42 | loss 3.712345 | elapsed 12.3s | remaining 47.7s\n"
    )
    write_lock(tmp_path, log, os.getpid())
    text = text_of(tmp_path)
    assert "running" in text and "#3" in text and "try rotary embeddings" in text
    assert "step 42, loss 3.7123" in text and "48s of training left" in text
    assert "elapsed 0:42" in text and "left before the deadline" in text


def test_frame_shows_a_panel_per_run_in_flight_with_its_slot(tmp_path: Path) -> None:
    logs = []
    lines = ["step 42 | loss 3.712345 | remaining 47.7s", "step 7 | loss 5.250000 | remaining 55.0s"]
    for slot, line in enumerate(lines):
        logs.append(tmp_path / f"log{slot}.txt")
        logs[-1].write_text(line + "\n")
    write_slot(tmp_path, 0, 3, logs[0], os.getpid(), tag=TAG, description="rotary embeddings", device="0")
    write_slot(tmp_path, 1, 4, logs[1], os.getpid(), tag=TAG, description="wider MLP", device="1")
    text = text_of(tmp_path)
    assert "running · slot 0 · GPU 0" in text and "running · slot 1 · GPU 1" in text
    assert text.index("#3") < text.index("rotary embeddings") < text.index("step 42, loss 3.7123") < text.index("#4")
    assert "wider MLP" in text and "step 7, loss 5.2500" in text and text.count("left before the deadline") == 2
    assert "idle" not in text


def test_frame_is_idle_for_other_ops_and_dead_owners(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text("step 42 | loss 3.7 | elapsed 1s\n")
    write_lock(tmp_path, log, os.getpid(), op="sweep")
    assert "idle" in text_of(tmp_path) and "step 42" not in text_of(tmp_path)
    write_lock(tmp_path, log, dead_pid())
    assert "idle" in text_of(tmp_path) and "step 42" not in text_of(tmp_path)
    (tmp_path / "slots" / "0.lock").write_text("")
    assert "idle" in text_of(tmp_path) and "no runs yet" in text_of(tmp_path)


def test_a_run_on_the_old_repository_lock_is_not_shown(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text(json.dumps({"pid": os.getpid(), "op": "run", "run_id": 3, "description": "x"}))
    assert "idle" in text_of(tmp_path)


def test_frame_without_a_state_folder(tmp_path: Path) -> None:
    assert "no runs yet" in text_of(tmp_path / "missing")


def test_log_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    log.write_text("step 1 | loss 9.0\n" + "noise line\n" * 20_000 + "step 7 | loss 1.5\n")
    tail = tail_text(log, LOG_TAIL_BYTES)
    assert len(tail.encode()) <= LOG_TAIL_BYTES and tail.endswith("step 7 | loss 1.5\n")
    assert tail.startswith("noise line\n") and "step 1 " not in tail
    assert tail_text(tmp_path / "absent.txt", LOG_TAIL_BYTES) == ""


@contextmanager
def watching(
    state_dir: Path, terminal: bool = False, max_frames: int | None = None
) -> Iterator[tuple[io.StringIO, list[int], threading.Thread]]:
    """watch() in a background thread, drawing into a string; its return value lands in the list. Leaving
    the block stops it."""
    out, stop, result = io.StringIO(), threading.Event(), list[int]()
    console = Console(file=out, width=120, force_terminal=terminal)

    def target() -> None:
        result.append(watch(state_dir, TAG, console, max_frames=max_frames, stop_event=stop))

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield out, result, thread
    finally:
        stop.set()
        thread.join(timeout=5)


def test_watch_redraws_when_a_run_is_added(tmp_path: Path) -> None:
    add_run(tmp_path, 1, 2.6, "keep", "the baseline run")
    with watching(tmp_path) as (out, result, thread):
        assert wait_for(lambda: "the baseline run" in out.getvalue())
        time.sleep(0.3)
        add_run(tmp_path, 2, 2.5, "keep", "a fresh improvement")
        assert wait_for(lambda: "a fresh improvement" in out.getvalue())
    assert not thread.is_alive() and result[0] >= 2


def test_watch_waits_for_the_state_folder(tmp_path: Path) -> None:
    state_dir = tmp_path / ".autoresearch"
    with watching(state_dir, max_frames=2) as (out, result, thread):
        assert wait_for(lambda: "no runs yet" in out.getvalue())
        add_run(tmp_path / "staging", 1, 2.6, "keep", "first of all")
        (tmp_path / "staging").rename(state_dir)  # appears whole, so the second frame must show the run
        thread.join(timeout=8)
    assert result == [2] and "first of all" in out.getvalue()


def test_watch_live_and_once(tmp_path: Path) -> None:
    add_run(tmp_path, 1, 2.6, "keep", "live baseline")
    with watching(tmp_path, terminal=True) as (out, result, thread):
        assert wait_for(lambda: "live baseline" in out.getvalue())
    assert not thread.is_alive() and result == [1]
    once = io.StringIO()
    assert watch(tmp_path, TAG, Console(file=once, width=120), once=True) == 1
    assert "live baseline" in once.getvalue()


def test_watch_redraws_when_a_run_starts_in_a_second_slot(tmp_path: Path) -> None:
    add_run(tmp_path, 1, 2.6, "keep", "the baseline run")
    log = tmp_path / "log.txt"
    log.write_text("compiling\n")
    write_lock(tmp_path, log, os.getpid(), slot=0, run_id=2)
    with watching(tmp_path) as (out, _, _):
        assert wait_for(lambda: "running · slot 0" in out.getvalue())
        time.sleep(0.3)
        write_lock(tmp_path, log, os.getpid(), slot=1, run_id=3)
        assert wait_for(lambda: "running · slot 1" in out.getvalue())


def test_a_slot_file_that_changes_changes_what_the_view_compares(tmp_path: Path) -> None:
    """The fallback for missed file events: a run starting in any slot makes the next frame differ."""
    before = _signature(tmp_path, TAG)
    write_lock(tmp_path, tmp_path / "log.txt", os.getpid(), slot=1)
    assert _signature(tmp_path, TAG) != before
