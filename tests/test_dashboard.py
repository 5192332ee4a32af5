"""`autoresearch dashboard`: the real command on a free port, its JSON endpoints, and the page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import REPO_ROOT, dead_pid, write_slot
from matplotlib.image import imread

from server.show.dashboard import run_json
from server.store.history import History, RunRecord

AUTORESEARCH = REPO_ROOT / ".venv" / "bin" / "autoresearch"
KEEP_RGB = (0x2C, 0xA0, 0x2C)  # the running-best line's colour in dashboard.js


def add_run(state: Path, run_id: int, metric: float | None, decision: str | None, tag: str = "night") -> None:
    history = History(state / tag)
    record = RunRecord(id=run_id, commit=f"{run_id:07d}abc", parent="p", description=f"idea {run_id}",
                       status="ok" if metric is not None else "crash", metric=metric)  # fmt: skip
    history.record(record, "end")
    history.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    (history.run_dir(run_id) / "diff.patch").write_text(f"-LR = 0.1\n+LR = 0.{run_id}\n")
    (history.run_dir(run_id) / "log.txt").write_text("".join(f"step {s} | loss 3.0\n" for s in range(500)) + "---\n")
    if decision:
        history.decide(run_id, decision)  # type: ignore[arg-type]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)  # the CLI works in a repository only
    (root / "autoresearch.toml").write_text('[autoresearch]\ntag = "night"\n')
    state = root / ".autoresearch"
    for run_id, metric, decision in [(1, 2.0, "keep"), (2, 1.8, "keep"), (3, 1.9, "discard"), (4, None, None),
                                     (5, 1.6, "keep"), (6, 1.7, None)]:  # fmt: skip
        add_run(state, run_id, metric, decision)
    add_run(state, 1, 3.0, "keep", tag="other")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def dashboard(project: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The real command, as a user starts it, on a free port; its base URL once it answers."""
    if not AUTORESEARCH.exists():
        pytest.skip(".venv/bin/autoresearch is missing (bash scripts/setup.sh creates it)")
    port, errors = free_port(), project.parent / "dashboard.err"
    with errors.open("wb") as err:
        proc = subprocess.Popen([str(AUTORESEARCH), "--root", str(project), "dashboard", "--port", str(port)],
                                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):  # up to ~30 s for the interpreter to start on a loaded machine
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited: {errors.read_text()}")
            try:
                urllib.request.urlopen(base + "/api/state", timeout=2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield base, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_state_lists_every_run_the_best_and_all_tags(dashboard: tuple[str, Any]) -> None:
    status, state = get(dashboard[0] + "/api/state")
    assert status == 200 and state["tag"] == "night" and state["tags"] == ["night", "other"]
    assert [r["id"] for r in state["runs"]] == [1, 2, 3, 4, 5, 6]
    assert [r["outcome"] for r in state["runs"]] == ["keep", "keep", "discard", "crash", "keep", "pending"]
    assert state["best"] == 5 and state["running"] == [] and state["metric"] == "val_bpb"


def test_state_of_another_tag_and_a_bad_tag(dashboard: tuple[str, Any]) -> None:
    _, other = get(dashboard[0] + "/api/state?tag=other")
    assert [r["metric"] for r in other["runs"]] == [3.0]
    status, answer = get(dashboard[0] + "/api/state?tag=../../etc")
    assert status == 400 and answer["error"].endswith(".")


def test_run_detail_gives_the_diff_and_the_log_tail(dashboard: tuple[str, Any]) -> None:
    status, detail = get(dashboard[0] + "/api/runs/3")
    assert status == 200 and detail["diff"] == "-LR = 0.1\n+LR = 0.3\n"
    assert detail["log_tail"].endswith("step 499 | loss 3.0\n---\n") and len(detail["log_tail"]) <= 16 * 1024
    assert get(dashboard[0] + "/api/runs/99")[0] == 404


def runs_in_flight(project: Path) -> None:
    """Runs 7 and 8 in slots 0 and 1 of a pool, each with a progress line in its log."""
    state = project / ".autoresearch"
    for slot, run_id, step in [(0, 7, 40), (1, 8, 12)]:
        log = state / "night" / "runs" / str(run_id) / "log.txt"
        log.parent.mkdir(parents=True)
        log.write_text(f"step {step:05d} (20.0%) | loss 2.750000 | elapsed 12.0s | remaining 48.0s\n")
        write_slot(state, slot, run_id, log, os.getpid(), description=f"idea {run_id} in flight", device=str(slot))


def test_state_lists_every_run_in_flight_with_its_slot_and_progress(project: Path, dashboard: tuple[str, Any]) -> None:
    runs_in_flight(project)
    write_slot(project / ".autoresearch", 2, 9, project / "none.txt", dead_pid())  # its owner died: not in flight
    running = get(dashboard[0] + "/api/state")[1]["running"]
    assert [(r["run_id"], r["slot"], r["device"], r["step"]) for r in running] == [(7, 0, "0", 40), (8, 1, "1", 12)]
    assert running[0]["remaining_s"] == 48.0 and 0 < running[0]["left_s"] <= 78


def test_the_report_page_is_served_for_the_tag(dashboard: tuple[str, Any]) -> None:
    with urllib.request.urlopen(dashboard[0] + "/report?tag=night", timeout=60) as response:
        page = response.read().decode()
    assert response.headers["content-type"].startswith("text/html")
    assert "Report of tag night" in page and page.count('src="data:image/png;base64,') == 3
    assert get(dashboard[0] + "/report?tag=nosuch")[0] == 404 and get(dashboard[0] + "/report?tag=..")[0] == 404


def test_dashboard_listens_on_loopback_only(dashboard: tuple[str, subprocess.Popen[bytes]]) -> None:
    sockets = [c for c in psutil.Process(dashboard[1].pid).net_connections() if c.status == psutil.CONN_LISTEN]
    assert sockets and {c.laddr.ip for c in sockets} == {"127.0.0.1"}


def test_a_holdout_metric_reaches_the_page_once_runs_record_one() -> None:
    class WithHoldout(RunRecord):  # what RunRecord may become
        holdout_metric: float | None = None

    record = WithHoldout(id=1, commit="c", parent="p", description="d", status="ok", metric=1.0, holdout_metric=1.2)
    assert run_json(record)["holdout_metric"] == 1.2


# --- in a real browser ------------------------------------------------------------------------------------


def chromium(*args: str) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("chromium is not installed (bash .ci/run installs it with apt)")
    argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=8000",
            *args]  # fmt: skip
    return subprocess.run(argv, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)


def test_browser_draws_the_best_line_and_a_table_row_per_run(dashboard: tuple[str, Any], tmp_path: Path) -> None:
    dom = chromium("--dump-dom", dashboard[0] + "/").stdout.decode()
    best = re.search(r'<path id="best-line" d="([^"]+)"', dom)
    assert best is not None and best[1].startswith("M") and best[1].count("V") == 3  # kept runs 1, 2, 5 + carry-on
    assert re.findall(r'<tr data-id="(\d+)"', dom) == ["6", "5", "4", "3", "2", "1"]
    assert len(re.findall(r'<circle class="pt (?:keep|discard|pending)"', dom)) == 5
    assert 'class="pt crash"' in dom and "idle: no experiment running" in dom
    assert 'id="report-link" href="/report?tag=night"' in dom


def test_browser_shows_a_line_per_run_in_flight(project: Path, dashboard: tuple[str, Any]) -> None:
    runs_in_flight(project)
    dom = chromium("--dump-dom", dashboard[0] + "/").stdout.decode()
    lines = re.findall(r'<div class="flight" data-run="(\d+)">([^<]*)</div>', dom)
    assert [run for run, _ in lines] == ["7", "8"] and "idle" not in dom.split('id="running"')[1][:40]
    assert "running #7 (slot 0, GPU 0): idea 7 in flight" in lines[0][1] and "step 40, loss 2.7500" in lines[0][1]
    assert "running #8 (slot 1, GPU 1)" in lines[1][1] and "left before the deadline" in lines[1][1]


def test_browser_screenshot_shows_the_chart_line(dashboard: tuple[str, Any], tmp_path: Path) -> None:
    shot = tmp_path / "dashboard.png"
    chromium(f"--screenshot={shot}", "--window-size=1100,900", dashboard[0] + "/")
    pixels = (imread(shot)[:, :, :3] * 255).round().astype(int)
    green = np.all(np.abs(pixels - np.array(KEEP_RGB)) <= 8, axis=2)
    assert longest_run(green) >= 100  # the step line's flat stretches; dots, text and legend are far shorter


def longest_run(mask: np.ndarray[Any, Any]) -> int:
    """The longest horizontal stretch of True pixels in any row."""
    best = 0
    for row in mask:
        edges = np.diff(np.concatenate(([0], row.astype(int), [0])))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        best = max(best, int((ends - starts).max(initial=0)))
    return best
