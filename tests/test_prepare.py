"""Tests of the one-time preparation (`autoresearch prepare`): real corpora, real tokenizers, real downloads."""

import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import load_prepare

from server.dataset import build, sources

OUTPUTS = ("train.bin", "val.bin", "tokenizer.json", "token_bytes.npy", "meta.json")
DOCS = {
    "a.txt": "To be, or not to be, that is the question. " * 40 + "Café au lait, s'il vous plaît. " * 10,
    "b.md": "# Title\n\n日本語のテキストです。" * 30 + "Emoji 🙂🎭 and more. " * 20,
    "sub/c.txt": "Plain ASCII words repeat here; plain words, plain words. " * 50,
}


@pytest.fixture
def prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    module = load_prepare()
    monkeypatch.setattr(sources, "DOWNLOAD_BACKOFF", 0.01)  # real retries, shorter waits
    return module


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    for name, text in DOCS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "ignored.bin").write_bytes(b"\x00\x01 not text")
    return root


def expected_split(texts: list[str]) -> tuple[list[str], list[str]]:
    """The split computed independently: the last 5% of the characters of each document is validation."""
    cuts = [int(len(t) * 0.95) for t in texts]
    return [t[:c] for t, c in zip(texts, cuts, strict=True)], [t[c:] for t, c in zip(texts, cuts, strict=True)]


def sorted_texts(root: Path) -> list[str]:
    return [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*")) if p.suffix in (".txt", ".md")]


def test_byte_level_files_source(prepare: ModuleType, corpus: Path) -> None:
    assert build.main(["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"]) == 0
    directory = prepare.dataset_dir("tiny")
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["vocab_size"] == 257 and meta["bos_id"] == 256
    assert meta["documents"] == {"train": 3, "val": 3}
    train, val = expected_split(sorted_texts(corpus))
    val_tokens = np.fromfile(directory / "val.bin", dtype=np.uint16)
    expected = b"".join(v.encode() for v in val)
    assert bytes(val_tokens[val_tokens != 256].astype(np.uint8)) == expected
    assert (val_tokens == 256).sum() == 3
    train_tokens = np.fromfile(directory / "train.bin", dtype=np.uint16)
    heads = [t[: int(len(t) * 0.95)] for t in train]  # the holdout is carved from the training text
    assert len(train_tokens) == sum(len(t.encode()) for t in heads) + 3


def test_holdout_is_the_tail_of_each_training_document_just_before_val(prepare: ModuleType, corpus: Path) -> None:
    """train + holdout + val is each document again, in order: the three splits are disjoint and cover it."""
    assert build.main(["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"]) == 0
    directory = prepare.dataset_dir("tiny")

    def texts(split: str) -> list[bytes]:
        return _docs(np.fromfile(directory / f"{split}.bin", dtype=np.uint16))

    documents = [t.encode() for t in sorted_texts(corpus)]
    train, holdout, val = texts("train"), texts("holdout"), texts("val")
    assert [a + b + c for a, b, c in zip(train, holdout, val, strict=True)] == documents
    assert all(len(h) > 0 for h in holdout) and json.loads((directory / "meta.json").read_text())["format_version"] == 2


def _docs(tokens: np.ndarray) -> list[bytes]:
    """The documents of a byte-level split: each starts with BOS (256)."""
    starts = [int(i) for i in np.flatnonzero(tokens == 256)] + [len(tokens)]
    return [bytes(tokens[a + 1 : b].astype(np.uint8)) for a, b in zip(starts, starts[1:], strict=False)]


def test_a_dataset_from_before_the_holdout_must_be_prepared_again(prepare: ModuleType, corpus: Path) -> None:
    assert build.main(["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"]) == 0
    meta_path = prepare.dataset_dir("tiny") / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format_version": 1}))
    assert build.main(["--check", "--name", "tiny"]) == 1


def test_bpe_is_deterministic_across_caches(
    prepare: ModuleType, corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--source", "files", "--paths", str(corpus), "--vocab-size", "320", "--name", "bpe"]
    assert build.main(args) == 0
    first = prepare.dataset_dir("bpe")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "other-cache"))
    assert build.main(args) == 0
    second = prepare.dataset_dir("bpe")
    assert first != second
    for name in OUTPUTS:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    meta = json.loads((first / "meta.json").read_text())
    assert meta["vocab_size"] == 320
    assert meta["outputs"]["val.bin"]["sha256"] == sources.sha256_file(first / "val.bin")


def test_round_trip_and_byte_lengths(prepare: ModuleType, corpus: Path) -> None:
    build.main(["--source", "files", "--paths", str(corpus), "--vocab-size", "360", "--name", "bpe"])
    tok = prepare.load_tokenizer("bpe")
    assert tok.vocab_size == 360 and tok.bos_id == 359 and tok.token_bytes[tok.bos_id] == 0
    for text in ["é", "日本", "🙂", "Café 日本語 🎭 plain words", "x" * 100]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert int(tok.token_bytes[ids].sum()) == len(text.encode("utf-8"))
    for token_id in range(tok.vocab_size - 1):  # every ordinary token, against tiktoken's raw bytes
        assert tok.token_bytes[token_id] == len(tok.enc.decode_single_token_bytes(token_id))
    assert tok.encode("a", prepend_bos=True)[0] == tok.bos_id
    assert b"pickle" not in (prepare.dataset_dir("bpe") / "tokenizer.json").read_bytes()


def test_rerun_is_idempotent(prepare: ModuleType, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"]
    build.main(args)
    directory = prepare.dataset_dir("tiny")
    mtimes = {name: (directory / name).stat().st_mtime_ns for name in OUTPUTS}
    capsys.readouterr()
    assert build.main(args) == 0
    assert "already prepared" in capsys.readouterr().out
    assert mtimes == {name: (directory / name).stat().st_mtime_ns for name in OUTPUTS}


def test_incomplete_dataset_is_rebuilt(prepare: ModuleType, corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"]
    build.main(args)
    directory = prepare.dataset_dir("tiny")
    (directory / "val.bin").unlink()  # as if interrupted after meta.json was removed and files rewritten
    capsys.readouterr()
    build.main(args)
    assert "prepared" in capsys.readouterr().out and (directory / "val.bin").exists()
    assert not list(directory.glob(".*tmp*"))  # no temp files left behind


def test_changed_input_rebuilds(prepare: ModuleType, corpus: Path) -> None:
    args = ["--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny"]
    build.main(args)
    before = json.loads((prepare.dataset_dir("tiny") / "meta.json").read_text())["fingerprint"]
    (corpus / "a.txt").write_text("changed text " * 100, encoding="utf-8")
    build.main(args)
    assert json.loads((prepare.dataset_dir("tiny") / "meta.json").read_text())["fingerprint"] != before


def test_download_gives_up_after_retries(prepare: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="after 2 attempts"):
        sources.download((tmp_path / "missing.parquet").as_uri(), tmp_path / "out.parquet", retries=2)
    assert not (tmp_path / "out.parquet").exists()


def test_shakespeare_source(prepare: ModuleType) -> None:
    assert build.main(["--vocab-size", "512", "--name", "sh"]) == 0
    meta = json.loads((prepare.dataset_dir("sh") / "meta.json").read_text())
    assert meta["source"] == "shakespeare" and meta["documents"] == {"train": 38, "val": 38}
    assert 0.045 < meta["bytes"]["val"] / (meta["bytes"]["val"] + meta["bytes"]["train"]) < 0.055
    assert all(name.endswith(".md") for name in meta["inputs"])
    tok = prepare.load_tokenizer("sh")
    assert tok.decode(tok.encode("Now, fair Hippolyta")) == "Now, fair Hippolyta"


def test_the_server_reads_the_output_contract_from_the_locked_prepare_py(tmp_path: Path) -> None:
    """One definition: the markers and file names the server watches for are the ones prepare.py prints."""
    from server.dataset.locked import prepare as locked
    from server.run import summary

    assert (summary.MARK_START, summary.MARK_END, summary.MODEL_FILE) == (locked.MARK_START, locked.MARK_END,
                                                                          locked.MODEL_FILE)  # fmt: skip
    source = summary.LOCKED_PREPARE.read_text(encoding="utf-8")
    changed = tmp_path / "prepare.py"
    changed.write_text(source.replace(f'MARK_START = "{locked.MARK_START}"', 'MARK_START = "the clock starts"'))
    assert summary.contract_constants(changed)["MARK_START"] == "the clock starts"
    changed.write_text(source.replace("MODEL_FILE = ", "MODEL_NAME = "))
    with pytest.raises(RuntimeError, match="does not define MODEL_FILE"):
        summary.contract_constants(changed)
