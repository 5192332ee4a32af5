"""A run's own supervisor: a process that owns one started run from launch to record, outliving the server
that started it.

A client that keeps no server alive between calls (the MCP Inspector's CLI starts one per call, with a fixed
60 s request timeout) can still run the loop: run_experiment(wait=false) commits and records the candidate,
takes its slot, and hands both to `python -m server.lab.supervise ROOT RUN_ID`. The slot's lock travels as an
inherited file descriptor, so at no moment is the run without a live owner: the server waits until the
supervisor has described itself in the slot, then closes its own copy without unlocking. The supervisor runs
the seeds, the evaluation and the record exactly as the server would (Lab.drive, the one drive loop); SIGTERM
cancels the run and records it. It lives in a session of its own, so a client stopping the server's process
group leaves it be.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from server.config import load_config
from server.errors import StateError
from server.lab.loop import ActiveRun, Lab
from server.run.pipeline import Candidate
from server.schema import SlotInfo, read_slot
from server.store.history import RunRecord, atomic_write
from server.store.lock import Held
from server.store.pins import load_pins
from server.store.registry import Slot

FD_VAR = "AUTORESEARCH_SLOT_FD"
ADOPT_WAIT_S = 60.0  # the supervisor's imports and its Lab; seconds on a loaded machine


def spawn(lab: Lab, active: ActiveRun) -> RunRecord:
    """Start the run's supervisor and hand it the run; the run's record as it starts."""
    candidate = active.candidate
    handoff = {
        "record": candidate.record.model_dump(mode="json"),
        "token": candidate.token,
        "repeat": candidate.repeat,
        "slot": candidate.slot,
        "device": candidate.device,
        "seeds_left": active.seeds_left,
        "base": active.base.model_dump(mode="json") if active.base else None,
        "deadline": active.deadline,
        "info": active.info.as_json(),
    }
    atomic_write(candidate.run_dir / "handoff.json", json.dumps(handoff).encode())
    fd = active.slot.fd
    env = {**os.environ, FD_VAR: str(fd)}
    argv = [sys.executable, "-m", "server.lab.supervise", str(lab.root), str(candidate.record.id)]
    with (candidate.run_dir / "supervisor.log").open("ab") as log:
        process = subprocess.Popen(argv, cwd=lab.root, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    give_up = time.monotonic() + ADOPT_WAIT_S
    while time.monotonic() < give_up:
        if _adopted(active, process.pid):
            active.slot.held.hand_over()
            threading.Thread(target=process.wait, name=f"reap-run-{candidate.record.id}", daemon=True).start()
            return candidate.record
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    lab.finish_run(active, cancelled=True)  # recorded, slot freed: nothing is left half-started
    raise StateError(f"run {candidate.record.id}'s supervisor did not start (see "
                     f"{candidate.run_dir / 'supervisor.log'}); it is recorded as cancelled. Retry, or run with "
                     "wait=true.")  # fmt: skip


def _adopted(active: ActiveRun, pid: int) -> bool:
    info = read_slot(active.slot.held.path)
    return info is not None and info.pid == pid


class Cancelled(BaseException):
    """The supervisor was told to stop: the run is killed and recorded as cancelled."""


def _cancel(signum: int, _frame: object) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # once: the cancelled run must still be recorded
        signal.signal(sig, signal.SIG_IGN)
    raise Cancelled(signal.Signals(signum).name)


def adopt(lab: Lab, run_id: int, fd: int) -> ActiveRun:
    """The run the server handed over, rebuilt from its hand-off file, its slot held through fd."""

    run_dir = lab.history.run_dir(run_id)
    handoff = json.loads((run_dir / "handoff.json").read_text(encoding="utf-8"))
    slot = Slot(int(handoff["slot"]), handoff["device"], Held(fd, lab.slots.path(int(handoff["slot"])), {}))
    record = RunRecord.model_validate(handoff["record"])
    candidate = Candidate(record, run_dir, load_pins(lab.pins_path), handoff["token"], int(handoff["repeat"]),
                          slot.index, slot.device)  # fmt: skip
    base = RunRecord.model_validate(handoff["base"]) if handoff["base"] else None
    active = ActiveRun(candidate, None, slot, float(handoff["deadline"]), None, list(handoff["seeds_left"]), base,
                       info=SlotInfo.from_json(handoff["info"]))  # fmt: skip
    slot.describe(active.info)  # the slot now names this process: the server may let go
    return active


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    root, run_id = Path(argv[0]), int(argv[1])
    fd = int(os.environ.pop(FD_VAR))
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _cancel)
    lab = Lab(root, load_config(root))
    active = adopt(lab, run_id, fd)
    try:
        record = lab.drive(active)
    except Cancelled as why:
        logging.info("run %d cancelled (%s)", run_id, why)
        return 1
    logging.info("run %d ended: %s %s", run_id, record.status, record.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
