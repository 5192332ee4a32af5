"""The prepared dataset, carried to Ray workers through Ray's object store (deploy/ray/README.md).

The server puts each file of the dataset into the object store once, in chunks, the first time a run needs
it, and sends the references with every run (a Shelf). A worker keeps what it received in a cache of its
own, one folder per dataset content (the sha256 of its meta.json, which records every file's sha256), and
checks each file against meta.json before it is renamed into place; a second run on the same node finds the
files there and transfers nothing. A training run is sent only the training files (config.train_files), an
evaluator the whole dataset, and the two go into separate folders of the cache: the validation and holdout
splits are never written into the folder a training run is given.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHUNK_BYTES = 64 << 20  # one object per 64 MiB of a file: no file needs to fit the object store whole
CACHE_VAR = "AUTORESEARCH_RAY_DATA"  # where a worker keeps datasets
DEFAULT_CACHE = "~/.cache/autoresearch-ray"
VERIFIED = ".verified.json"  # each checked file's size and mtime: a changed file is checked again


class DataError(RuntimeError):
    """The dataset could not be shipped or did not arrive intact; the message is for the run's log."""


@dataclass(frozen=True)
class Part:
    """One file of the dataset, as references into the object store."""

    name: str
    size: int
    chunks: tuple[Any, ...]  # ray.ObjectRef, in order


@dataclass(frozen=True)
class DataShip:
    """What one process of a run is sent of the dataset."""

    name: str  # the dataset's folder name (AUTORESEARCH_DATASET)
    key: str  # sha256 of meta.json: the content of the whole dataset
    meta: bytes
    split: str  # "train": the training files only; "eval": every file
    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        return sum(part.size for part in self.parts)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recorded(meta: bytes) -> dict[str, str]:
    """The sha256 meta.json records for each file of the dataset."""
    outputs = json.loads(meta).get("outputs", {})
    return {name: entry["sha256"] for name, entry in outputs.items() if isinstance(entry, dict) and "sha256" in entry}


class Shelf:
    """The server's side: each file put into the object store once per server process (the references keep the
    objects alive), by the dataset's content."""

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str], Part] = {}
        self._lock = threading.Lock()

    def forget(self) -> None:
        """A new connection: references of an earlier one mean nothing to it."""
        with self._lock:
            self._parts.clear()

    def ship(self, data: Path, files: Sequence[str] | None) -> DataShip:
        """The dataset at data for a process that may read `files` of it (None: all of them)."""
        try:
            meta = (data / "meta.json").read_bytes()
            sums = recorded(meta)
        except (OSError, ValueError) as exc:
            raise DataError(f"the prepared dataset at {data} has no readable meta.json ({exc}): run "
                            "`autoresearch prepare` on the server's machine") from exc  # fmt: skip
        key = sha256_bytes(meta)
        names = sorted(sums) if files is None else sorted(name for name in files if name in sums)
        with self._lock:
            parts = tuple(self._part(data, key, name) for name in names)
        return DataShip(data.name, key, meta, "eval" if files is None else "train", parts)

    def _part(self, data: Path, key: str, name: str) -> Part:
        import ray

        if (key, name) not in self._parts:
            chunks, size = [], 0
            with (data / name).open("rb") as handle:
                while block := handle.read(CHUNK_BYTES):
                    chunks.append(ray.put(block))
                    size += len(block)
            self._parts[(key, name)] = Part(name, size, tuple(chunks))
        return self._parts[(key, name)]


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_VAR) or DEFAULT_CACHE).expanduser()


@dataclass(frozen=True)
class Received:
    folder: Path  # the dataset's folder on this node for the ship's split
    fetched: int  # bytes that came through the object store for this process (0: all were cached)
    seconds: float


def receive(ship: DataShip) -> Received:
    """The worker's side: the dataset's folder on this node, with every file of the ship present and checked
    against meta.json; what is missing comes from the object store, what the other split has is linked."""
    began = time.monotonic()
    if sha256_bytes(ship.meta) != ship.key:
        raise DataError("the dataset's meta.json changed on its way to this worker")
    sums = recorded(ship.meta)
    root = cache_root() / ship.key[:16]
    folder = root / ship.split / ship.name
    other = root / ("eval" if ship.split == "train" else "train") / ship.name
    fetched = 0
    with _locked(root):
        folder.mkdir(parents=True, exist_ok=True)
        checked = _verified(folder)
        for part in ship.parts:
            target = folder / part.name
            if _intact(folder, part.name, checked):
                continue
            if _intact(other, part.name, _verified(other)):
                _link(other / part.name, target)
            else:
                _fetch(part, target, sums.get(part.name))
                fetched += part.size
            checked[part.name] = _stat(target)
        meta = folder / "meta.json"
        if not meta.is_file() or sha256_bytes(meta.read_bytes()) != ship.key:
            _write(meta, ship.meta)
        _write(folder / VERIFIED, json.dumps(checked).encode())
    return Received(folder, fetched, time.monotonic() - began)


def _fetch(part: Part, target: Path, expected: str | None) -> None:
    import ray

    if expected is None:
        raise DataError(f"meta.json records no sha256 for {part.name}: prepare the dataset again")
    digest, partial = hashlib.sha256(), target.with_name(f".{target.name}.part")
    with partial.open("wb") as handle:
        for ref in part.chunks:
            block = ray.get(ref)
            digest.update(block)
            handle.write(block)
    if digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        got = digest.hexdigest()[:12]
        raise DataError(f"{part.name} arrived with sha256 {got}, not the {expected[:12]} its meta.json records: "
                        "the server's copy is damaged; run `autoresearch prepare` there")  # fmt: skip
    partial.replace(target)


def _link(source: Path, target: Path) -> None:
    partial = target.with_name(f".{target.name}.part")
    partial.unlink(missing_ok=True)
    os.link(source, partial)
    partial.replace(target)


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(f".{path.name}.part")
    partial.write_bytes(data)
    partial.replace(path)


def _intact(folder: Path, name: str, checked: dict[str, list[int] | None]) -> bool:
    """Whether folder/name is there as it was when it was checked (a changed file is fetched again)."""
    seen = _stat(folder / name)
    return seen is not None and checked.get(name) == seen


def _stat(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _verified(folder: Path) -> dict[str, list[int] | None]:
    try:
        seen = json.loads((folder / VERIFIED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return seen if isinstance(seen, dict) else {}


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One process of this node at a time fills a dataset's folders (two runs starting together wait)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
