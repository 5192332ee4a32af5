"""What a run may see, as a bubblewrap command line (docs/CONTRACT.md, "What a run can see").

A run gets a read-only view of the machine with the places that matter hidden: the repository (with
`.git`), the server's state folder, the user's home and the prepared-data cache are covered by empty
tmpfs mounts, and only what the run needs is bound back: the interpreter (read-only), the files of the
dataset it may train on (read-only), its own snapshot and output folder (writable; the locked files in
the snapshot read-only), and the compile cache. It runs in its own PID, IPC, UTS, cgroup and network
namespaces, so every process it starts dies with it, and it dies with the server (`--die-with-parent`).
"""

from __future__ import annotations

import glob
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from server.errors import SandboxError

INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
GPU_DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps/*", "/dev/dri/*")


@dataclass(frozen=True)
class View:
    """The file system a sandboxed process sees, beyond the read-only root."""

    hide: list[Path] = field(default_factory=list)  # covered by an empty tmpfs
    read_only: list[Path] = field(default_factory=list)  # bound back read-only (after the hiding)
    writable: list[Path] = field(default_factory=list)  # bound back writable (after the hiding)
    locked: list[Path] = field(default_factory=list)  # files inside a writable folder, bound read-only on top
    network: bool = False


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def require_bwrap() -> str:
    path = bwrap_path()
    if path is None:
        raise SandboxError(
            f"runs are sandboxed with bubblewrap, which is not installed; {INSTALL_HINT}, or set "
            'sandbox = "off" in autoresearch.toml to run experiments unsandboxed (every result says so).'
        )
    return path


def interpreter_paths() -> list[Path]:
    """Folders the Python interpreter and its packages live in, which a hidden home may cover."""
    paths = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix)}
    paths.update(Path(p) for p in sys.path if p and Path(p).is_dir())
    return sorted(_outermost(paths))


def _outermost(paths: set[Path]) -> set[Path]:
    resolved = {p.resolve() for p in paths}
    return {p for p in resolved if not any(q != p and q in p.parents for q in resolved)}


def gpu_devices() -> list[str]:
    return sorted(d for pattern in GPU_DEVICES for d in glob.glob(pattern))


def command(view: View, argv: list[str], cwd: Path) -> list[str]:
    """The bwrap argv that runs argv in cwd inside the view."""
    args = [require_bwrap(), "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
            "--tmpfs", "/dev/shm", "--unshare-all", "--die-with-parent", "--new-session"]  # fmt: skip
    if view.network:
        args.append("--share-net")
    for device in gpu_devices():
        args += ["--dev-bind", device, device]
    bound = [*view.read_only, *view.writable]
    inner = [h for h in view.hide if any(b in h.parents for b in bound)]  # hidden again inside what is bound
    for path in sorted(set(view.hide) - set(inner), key=lambda p: len(p.parts)):
        args += _mount("--tmpfs", path)
    for path in view.read_only:
        args += _mount("--ro-bind", path)
    for path in view.writable:
        args += ["--bind", str(path), str(path)]
    for path in view.locked:
        args += _mount("--ro-bind", path)
    for path in inner:
        args += _mount("--tmpfs", path)
    for path in view.hide:  # empty and read-only: a write there fails, instead of vanishing with the run
        args += _mount("--remount-ro", path)
    return [*args, "--chdir", str(cwd), "--", *argv]


def _mount(option: str, path: Path) -> list[str]:
    """One mount at the same path inside, left out when the path does not exist (bwrap would refuse)."""
    if not path.exists():
        return []
    return [option, str(path)] if option in ("--tmpfs", "--remount-ro") else [option, str(path), str(path)]
