"""Tests of prepare.make_dataloader on a real prepared (byte-level) dataset."""

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import load_prepare, prepare_dataset

TEXT = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. " * 30


@pytest.fixture
def prepare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    for i in range(3):
        (tmp_path / f"doc{i}.txt").write_text(f"Document {i}. " + TEXT, encoding="utf-8")
    module = load_prepare()
    prepare_dataset(["--source", "files", "--paths", str(tmp_path), "--byte-level", "--name", "tiny"])
    monkeypatch.setenv("AUTORESEARCH_DATASET", "tiny")
    return module


def contains_window(data: np.ndarray, window: np.ndarray) -> bool:
    """Whether window occurs as a contiguous slice of data."""
    starts = np.flatnonzero(data[: len(data) - len(window) + 1] == window[0])
    return any(np.array_equal(data[s : s + len(window)], window) for s in starts)


def test_shapes_dtype_bos_and_shift(prepare: ModuleType) -> None:
    tok = prepare.load_tokenizer()
    x, y, epoch = next(prepare.make_dataloader(tok, 4, 32, "train", "cpu"))
    assert x.shape == y.shape == (4, 32)
    assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    assert (x[:, 0] == tok.bos_id).all()
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert epoch == 1
    train = np.fromfile(prepare.dataset_dir() / "train.bin", dtype=np.uint16)
    for row in y.numpy():
        assert contains_window(train, row)


def test_epochs_advance_and_cover_the_data(prepare: ModuleType) -> None:
    n = len(np.fromfile(prepare.dataset_dir() / "train.bin", dtype=np.uint16))
    loader = prepare.make_dataloader(None, 8, 64, "train", "cpu")
    epochs = [next(loader)[2] for _ in range(2 * n // (8 * 64) + 2)]
    assert epochs[0] == 1 and epochs[-1] >= 2 and epochs == sorted(epochs)


def test_deterministic_for_a_seed(prepare: ModuleType) -> None:
    a = next(prepare.make_dataloader("tiny", 2, 16, "val", "cpu", seed=3))
    b = next(prepare.make_dataloader("tiny", 2, 16, "val", "cpu", seed=3))
    c = next(prepare.make_dataloader("tiny", 2, 16, "val", "cpu", seed=4))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_split_smaller_than_a_row_still_works(prepare: ModuleType) -> None:
    val_len = len(np.fromfile(prepare.dataset_dir() / "val.bin", dtype=np.uint16))
    x, y, _ = next(prepare.make_dataloader(prepare.load_meta(), 2, val_len + 10, "val", "cpu"))
    assert x.shape == (2, val_len + 10) and torch.equal(x[:, 1:], y[:, :-1])


def test_bad_split_is_rejected(prepare: ModuleType) -> None:
    with pytest.raises(ValueError, match="split"):
        next(prepare.make_dataloader(None, 2, 16, "test", "cpu"))
