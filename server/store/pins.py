"""Content hashes of the locked files and the configuration, pinned when a run tag starts.

Re-pinning is a human act (`autoresearch pin`); no MCP tool can do it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from server.errors import LockedFileError
from server.store.history import atomic_write

ABSENT = "absent"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ABSENT


def digest_bytes(data: bytes | None) -> str:
    return hashlib.sha256(data).hexdigest() if data is not None else ABSENT


def load_pins(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_pins(path: Path, pins: dict[str, str]) -> None:
    atomic_write(path, json.dumps(pins, indent=1, sort_keys=True).encode())


def changed(pins: dict[str, str], base: Path) -> list[str]:
    """Pinned paths whose file under base no longer has the pinned content."""
    return [rel for rel, want in sorted(pins.items()) if digest(base / rel) != want]


def check(pins: dict[str, str], base: Path, tag: str, where: str = "in the working tree") -> None:
    """Raise LockedFileError naming the first file that differs and how to put it back."""
    bad = changed(pins, base)
    if not bad:
        return
    path = bad[0]
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise LockedFileError(
        f"locked file {path}{more} differs {where} from the version pinned for tag {tag!r}; restore it with "
        f"`git checkout autoresearch/{tag} -- {path}`, or, if a human intended the change, commit it and run "
        f"`autoresearch pin`."
    )
