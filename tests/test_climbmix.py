"""The climbmix download of `autoresearch prepare` against shards this test writes: a file:// mirror and a local
threaded HTTP server that honours Range requests. Parallel, resumable, checksummed, and one sentence offline."""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import load_prepare

from server.dataset import build, sources
from server.run import isolation

VAL = 6542  # the original's pinned validation shard


@pytest.fixture
def prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    module = load_prepare()
    monkeypatch.setattr(sources, "DOWNLOAD_BACKOFF", 0.01)  # real retries, shorter waits
    return module


def write_shards(folder: Path, indices: list[int], rows: int = 20) -> dict[int, list[str]]:
    """Small parquet shards named as on the hub, each with its own documents."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = {i: [f"shard {i} document {j}: some text, ünïcödé {j * i}. " * 5 for j in range(rows)] for i in indices}
    for i, docs in shards.items():
        pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), folder / f"shard_{i:05d}.parquet")
    return shards


class ShardHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the shard folder with Range support (as the hub does), each response slowed a little so that
    parallel downloads overlap; records requests, ranges, bytes sent and the most requests in flight at once."""

    delay = 0.3
    requests: ClassVar[list[tuple[str, str | None]]] = []
    sent: ClassVar[dict[str, int]] = {}
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    def do_GET(self) -> None:
        cls = type(self)
        with cls.lock:
            cls.requests.append((self.path, self.headers.get("Range")))
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            time.sleep(self.delay)
            self._send()
        finally:
            with cls.lock:
                cls.in_flight -= 1

    def _send(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        start = int(match[1]) if match else 0
        if start >= len(data) and match:
            self.send_error(416)
            return
        self.send_response(206 if match else 200)
        if match:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])
        with type(self).lock:
            type(self).sent[self.path] = type(self).sent.get(self.path, 0) + len(data) - start

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A local HTTP server of tmp_path/hub, named by AUTORESEARCH_CLIMBMIX_URL."""
    folder = tmp_path / "hub"
    folder.mkdir()
    ShardHandler.requests, ShardHandler.sent, ShardHandler.in_flight, ShardHandler.most_in_flight = [], {}, 0, 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: ShardHandler(*a, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", f"http://127.0.0.1:{server.server_address[1]}/")
    try:
        yield folder
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def shards_dir(prepare: ModuleType) -> Path:
    return Path(prepare.cache_root()) / "climbmix-shards"


def manifest(prepare: ModuleType) -> dict[str, str]:
    data = json.loads((shards_dir(prepare) / "manifest.json").read_text())
    return {name: entry["sha256"] for name, entry in data["shards"].items()}


def test_file_mirror_gives_n_training_shards_and_the_pinned_validation_shard(
    prepare: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = write_shards(tmp_path / "mirror", [0, 1, 2, VAL])
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", (tmp_path / "mirror").as_uri())
    assert build.main(["--source", "climbmix", "--num-shards", "2", "--byte-level", "--name", "cm"]) == 0
    meta = json.loads((prepare.dataset_dir("cm") / "meta.json").read_text())
    assert meta["documents"] == {"train": 40, "val": 20}
    assert meta["bytes"]["val"] == sum(len(d.encode()) for d in shards[VAL])
    assert sorted(meta["inputs"]) == ["shard_00000.parquet", "shard_00001.parquet", "shard_06542.parquet"]
    assert not (shards_dir(prepare) / "shard_00002.parquet").exists()


def test_shards_download_in_parallel_with_one_progress_bar(
    prepare: ModuleType, hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_shards(hub, [0, 1, 2, VAL])
    assert build.main(["--source", "climbmix", "--num-shards", "3", "--byte-level", "--name", "cm"]) == 0
    assert ShardHandler.most_in_flight >= 2  # sequential downloads would never overlap
    assert sorted(path for path, _ in ShardHandler.requests) == [f"/shard_{i:05d}.parquet" for i in (0, 1, 2, VAL)]
    err = capsys.readouterr().err
    assert "climbmix shards" in err and "100.0%" in err
    for name, digest in manifest(prepare).items():  # recorded on first download, from the bytes on disk
        assert digest == sources.sha256_file(shards_dir(prepare) / name)


def test_a_complete_shard_is_not_downloaded_again(prepare: ModuleType, hub: Path) -> None:
    write_shards(hub, [0, VAL])
    args = ["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"]
    assert build.main(args) == 0
    ShardHandler.requests = []
    assert build.main(args) == 0
    assert ShardHandler.requests == []


def test_a_partial_download_resumes_with_a_range_request(prepare: ModuleType, hub: Path) -> None:
    write_shards(hub, [0, VAL], rows=400)
    whole = (hub / "shard_00000.parquet").read_bytes()
    shards_dir(prepare).mkdir(parents=True)
    (shards_dir(prepare) / "shard_00000.parquet.part").write_bytes(whole[:1000])  # as if cut off mid-download
    assert build.main(["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"]) == 0
    assert ("/shard_00000.parquet", "bytes=1000-") in ShardHandler.requests
    assert ShardHandler.sent["/shard_00000.parquet"] == len(whole) - 1000  # only the rest came over the wire
    assert (shards_dir(prepare) / "shard_00000.parquet").read_bytes() == whole
    assert not list(shards_dir(prepare).glob("*.part"))


def test_a_connection_cut_mid_shard_resumes_in_the_same_run(
    prepare: ModuleType, hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_shards(hub, [0, VAL], rows=400)
    whole = (hub / "shard_00000.parquet").read_bytes()
    serve = ShardHandler._send

    def cut(self: ShardHandler) -> None:  # the first response for shard 0 promises every byte, sends 1000, closes
        if self.path == "/shard_00000.parquet" and "/shard_00000.parquet" not in ShardHandler.sent:
            ShardHandler.sent[self.path] = 1000
            self.send_response(200)
            self.send_header("Content-Length", str(len(whole)))
            self.end_headers()
            self.wfile.write(whole[:1000])
            return
        serve(self)

    monkeypatch.setattr(ShardHandler, "_send", cut)
    assert build.main(["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"]) == 0
    assert [r for p, r in ShardHandler.requests if p == "/shard_00000.parquet"] == [None, "bytes=1000-"]
    assert ShardHandler.sent["/shard_00000.parquet"] == len(whole)  # 1000 bytes, then only the rest
    assert (shards_dir(prepare) / "shard_00000.parquet").read_bytes() == whole
    assert "retrying" in capsys.readouterr().err


def test_a_corrupted_shard_is_downloaded_again(prepare: ModuleType, hub: Path) -> None:
    write_shards(hub, [0, VAL])
    args = ["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"]
    assert build.main(args) == 0
    local = shards_dir(prepare) / "shard_00000.parquet"
    local.write_bytes(local.read_bytes()[:-10] + b"0123456789")  # same size, wrong bytes
    ShardHandler.requests = []
    assert build.main(args) == 0
    assert [path for path, _ in ShardHandler.requests] == ["/shard_00000.parquet"]
    assert local.read_bytes() == (hub / "shard_00000.parquet").read_bytes()


def test_a_source_that_changed_its_shard_is_refused_with_a_sentence(prepare: ModuleType, hub: Path) -> None:
    write_shards(hub, [0, VAL])
    args = ["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"]
    assert build.main(args) == 0
    recorded = manifest(prepare)["shard_00000.parquet"]
    pq.write_table(pa.table({"text": ["other text"]}), hub / "shard_00000.parquet")  # the source now differs
    (shards_dir(prepare) / "shard_00000.parquet").unlink()
    with pytest.raises(SystemExit, match=r"shard_00000.parquet .* not the .* recorded in .*manifest.json") as exc:
        build.main(args)
    assert "\n" not in str(exc.value.code)
    assert not (shards_dir(prepare) / "shard_00000.parquet").exists()  # nothing unverified is left to be used
    assert manifest(prepare)["shard_00000.parquet"] == recorded


def test_offline_says_so_in_one_sentence_with_the_offline_choices(
    prepare: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nothing listens on: connections are refused, as with no network
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(SystemExit) as exc:
        build.main(["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"])
    message = str(exc.value.code)
    assert message.startswith(f"cannot reach 127.0.0.1:{port}") and "offline" in message
    for choice in ("--source shakespeare", "--source files --paths", "AUTORESEARCH_CLIMBMIX_URL=file://"):
        assert choice in message
    assert message.count(". ") == 0 and message.endswith(".") and "\n" not in message


def test_http_retries_after_a_server_error(
    prepare: ModuleType, hub: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_shards(hub, [0, VAL])
    failed: list[str] = []
    serve = ShardHandler._send

    def flaky(self: ShardHandler) -> None:  # the first request of all gets a 500, as from an overloaded hub
        if not failed:
            failed.append(self.path)
            self.send_error(500, "try again")
            return
        serve(self)

    monkeypatch.setattr(ShardHandler, "_send", flaky)
    assert build.main(["--source", "climbmix", "--num-shards", "1", "--byte-level", "--name", "cm"]) == 0
    assert sorted(path for path, _ in ShardHandler.requests) == sorted([*failed, "/shard_00000.parquet",
                                                                        "/shard_06542.parquet"])  # fmt: skip
    assert "retrying" in capsys.readouterr().err


def test_cuda_makes_climbmix_the_default_source_and_dataset(
    prepare: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_shards(tmp_path / "mirror", [0, VAL])
    monkeypatch.setenv("AUTORESEARCH_CLIMBMIX_URL", (tmp_path / "mirror").as_uri())
    monkeypatch.setattr(prepare.torch.cuda, "is_available", lambda: True)
    assert prepare.dataset_dir().name == "climbmix10-bpe8192"
    assert build.main(["--num-shards", "1", "--byte-level"]) == 0
    out = capsys.readouterr().out
    assert "no --source given: climbmix" in out and "CUDA is available" in out
    assert (prepare.dataset_dir("climbmix1-byte") / "meta.json").exists()
    assert "AUTORESEARCH_DATASET=climbmix1-byte" in out  # not the default dataset: says how to use it


def test_without_cuda_shakespeare_is_the_default_dataset(prepare: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prepare.torch.cuda, "is_available", lambda: False)
    assert prepare.dataset_dir().name == "shakespeare-bpe8192" == prepare.default_dataset()
    assert build.default_name("climbmix", prepare.VOCAB_SIZE, False, prepare.CLIMBMIX_SHARDS) == prepare.CUDA_DATASET


def test_the_server_defaults_to_the_dataset_prepare_makes(
    prepare: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.config import Config

    assert isolation.cuda_available() is False  # this machine: no CUDA driver, answered without importing torch
    for cuda in (False, True):
        monkeypatch.setattr(isolation, "cuda_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(prepare.torch.cuda, "is_available", lambda cuda=cuda: cuda)
        assert isolation.data_dir(Config.model_validate({})) == prepare.dataset_dir().resolve()
