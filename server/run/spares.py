"""Spare run processes: a slot's next run, started before there is a run, waiting in its sandbox.

A run's start-up is mostly the interpreter importing torch (about 1 s on a CPU) and, at its end, the exporter
importing torch's tracer (about 1.2 s more). A spare is the process the slot's next run will be: started
with the run's own sandbox, environment and limits, on folders of its own, it imports torch and the tracer
and waits on its standard input. It is started when a run of its slot starts, and imports in a thread of
the lowest priority (nice 19): on a CPU the run trains on every core, so the imports take only what the
training leaves idle (two 20 s runs made 87 and 74 steps beside them, against 81 and 80 alone and 61 and
67 beside the same imports at normal priority). No code of any run has been read when it waits: the
launcher is the server's, the modules are the interpreter's. When the run starts, the server moves the
run's snapshot into the spare's folders (the locked files are written into the read-only files already
bound there), renames its log into place and sends the word: the script and its seed. The process then
runs the script as `__main__`, as `python script.py` would, and the server's clock on it starts at that
word. A spare whose imports are not done when the word comes (the machine was busy the whole run)
replaces itself with a cold `python script.py`, at normal priority: never slower than a cold start, and
never a run at low priority.

A spare is also started when a run is recorded and the slot has none. One that no longer fits (the
configuration, the data or the sandbox changed) is killed and the run starts cold. Spares need the
sandbox: unsandboxed, the run's paths would move under it.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from server.config import Config
from server.run.isolation import Places
from server.run.runner import LocalExecution, Runner, RunSpec

# The launcher: numpy here (its BLAS threads would inherit a low priority), torch and the tracer in a
# thread at the lowest priority, then the word on stdin, then the script as __main__ (or, when the imports
# are not done, a cold `python script.py` in this process, at normal priority). Stdlib and the interpreter's
# packages only; a module that fails to import is the run's to meet, as it would be cold.
LAUNCHER = """\
import builtins, importlib, json, os, sys, threading, types
def load(names):
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:
            pass
def background():
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass
    load(["torch", "torch.nn.functional", "argparse", "concurrent.futures", "http.client", "urllib.request",
          "zipfile", "resource", "torch._dynamo", "torch.export", "torch.export._trace",
          "torch.export.pt2_archive._package"])
    ready.set()
load(["numpy"])
ready = threading.Event()
threading.Thread(target=background, daemon=True).start()
word = sys.stdin.readline()
if not word.strip():
    os._exit(0)
word = json.loads(word)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
os.environ.update(word["env"])
if not ready.is_set():
    os.write(1, b"autoresearch: the spare's imports were not done; the script starts cold\\n")
    os.execv(sys.executable, [sys.executable, *word["argv"]])
sys.argv = list(word["argv"])
path = os.path.abspath(sys.argv[0])  # as `python script.py` has them: __file__ absolute, argv[0] as given
sys.path[0] = os.path.dirname(path)
main = types.ModuleType("__main__")
main.__dict__.update(__file__=path, __builtins__=builtins, __spec__=None, __package__=None)
sys.modules["__main__"] = main
with open(path, "rb") as source:
    code = compile(source.read(), path, "exec")
del word, null, source, path, load, background, ready
exec(code, main.__dict__)
"""
NOT_READY = "autoresearch: the spare's imports were not done; the script starts cold"  # the line it then prints
SEED_VAR = "AUTORESEARCH_SEED"
log = logging.getLogger("autoresearch")


@dataclass
class Spare:
    """A started spare: its execution and the folders bound into its sandbox."""

    execution: LocalExecution
    spec: RunSpec  # as a run in these folders would be started, seed aside
    folder: Path

    @property
    def token(self) -> str:
        return self.spec.token


def folders(base: Path) -> tuple[Path, Path, Path, Path]:
    """A spare's snapshot, output and scratch folders and its log."""
    return base / "tree", base / "out", base / "tmp", base / "log.txt"


def usable(config: Config, runner: Runner) -> bool:
    """Spares need the sandbox (its mounts keep the run's paths while the folders move), a local runner and
    `{python} script.py ...` as the command."""
    command = config.command
    plain = len(command) >= 2 and command[0] == "{python}" and command[1].endswith(".py")
    return config.spares and config.sandbox == "bwrap" and bool(getattr(runner, "warm", False)) and plain


Build = Callable[[tuple[Path, Path, Path, Path], str, "str | None"], RunSpec]  # folders, token, device -> spec


class Spares:
    """One spare at most per slot, started on a long-lived thread of its own: a sandbox dies with the thread
    that started it (bubblewrap's --die-with-parent), so never with a short-lived worker thread."""

    def __init__(self, places: Places, locked: list[str], build: Build) -> None:
        self.places, self.locked = places, locked
        self._build = build  # a run's spec in the given folders, with seed 0 (the word carries the seed)
        self._spares: dict[int, Spare] = {}
        self._lock = threading.Lock()
        self._asks: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def prepare(self, slot: int, device: str | None) -> None:
        """Have a spare ready for the slot (started on the spares' thread; nothing if it has one)."""
        with self._lock:
            if self._closed or slot in self._spares:
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="spares", daemon=True)
                self._thread.start()
        self._asks.put((slot, device))

    def _serve(self) -> None:
        while True:
            slot, device = self._asks.get()
            with self._lock:
                if slot in self._spares:
                    continue
            try:
                spare = self._start(slot, device)
            except Exception as exc:  # a spare only saves time: the run starts cold, and fails there if it must
                log.warning("no spare for slot %d: %s", slot, exc)
                continue
            with self._lock:
                closed, self._spares[slot] = self._closed, spare
            if closed:  # closed while it started
                self.close()

    def _start(self, slot: int, device: str | None) -> Spare:
        base = self.places.state / "spares" / str(slot)
        shutil.rmtree(base, ignore_errors=True)
        tree, out, tmp, log = folders(base)
        for path in (tree, out, tmp):
            path.mkdir(parents=True)
        for rel in self.locked:  # bound read-only now; the run's bytes are written into them later
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).touch()
        spec = self._build((tree, out, tmp, log), uuid.uuid4().hex, device)
        launcher = replace(spec, argv=[spec.argv[0], "-c", LAUNCHER])
        execution = LocalExecution(launcher, stdin_pipe=True)
        return Spare(execution, spec, base)

    def take(self, slot: int) -> Spare | None:
        """The slot's spare, if one was started and is still waiting (it is the caller's from now)."""
        with self._lock:
            spare = self._spares.pop(slot, None)
        if spare is not None and not spare.execution.alive():  # it died waiting (its limits start at the word)
            dismiss(spare)
            return None
        return spare

    def close(self) -> None:
        """Kill every spare; none is started after this."""
        with self._lock:
            self._closed = True
            spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            dismiss(spare)


def dismiss(spare: Spare) -> None:
    """Kill a spare that will not be used, and collect it (its log closed, its process reaped)."""
    spare.execution.kill("cancelled")
    spare.execution.wait(5.0)
    shutil.rmtree(spare.folder, ignore_errors=True)


def become(spare: Spare, spec: RunSpec, mine: tuple[Path, Path, Path, Path]) -> LocalExecution:
    """Make the spare the run whose spec and folders (snapshot, output, scratch, log) are given: the folders
    it has bound take the run's places, its log too, and it is told to run the script with the run's seed.
    The caller has checked that it fits."""
    snapshot, output, scratch, log = mine
    tree, out, tmp, spare_log = folders(spare.folder)
    _merge(snapshot, tree)
    for src, dst in ((tree, snapshot), (out, output), (tmp, scratch)):
        shutil.rmtree(dst, ignore_errors=True)
        os.rename(src, dst)
    os.replace(spare_log, log)
    word = {"argv": spec.argv[1:], "env": {SEED_VAR: spec.env[SEED_VAR]}}
    spare.execution.begin(json.dumps(word).encode() + b"\n")
    spare.execution.spare = True
    shutil.rmtree(spare.folder, ignore_errors=True)
    return spare.execution


def fits(spare: Spare, expected: RunSpec, snapshot: Path, locked: list[str]) -> bool:
    """Whether the spare was started as this run would be (configuration, data, sandbox and limits alike), and
    the run's snapshot has every file the spare bound read-only."""
    if any(not (snapshot / rel).is_file() for rel in locked):
        return False
    return replace(expected, token=spare.token) == spare.spec


def _merge(src: Path, dst: Path) -> None:
    """Move src's files into dst. A file dst already has (a locked file bound read-only into the sandbox) gets
    src's bytes written into it, so that the sandbox sees them; everything else is renamed."""
    for entry in src.iterdir():
        target = dst / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge(entry, target)
        elif target.is_file() and not entry.is_dir():
            with target.open("r+b") as fh:
                fh.truncate(0)
                fh.write(entry.read_bytes())
            shutil.copymode(entry, target)
            entry.unlink()
        else:
            os.rename(entry, target)
