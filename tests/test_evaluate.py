"""Tests of prepare.evaluate_bpb against models whose answer is known in closed form."""

import math
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_prepare

TEXTS = ["Héllo wörld, 日本語 and 🙂 emoji. " * 60, "Plain English prose for a second document. " * 80]


class UniformModel(torch.nn.Module):
    """Predicts every token of the vocabulary with equal probability: log2(V) bits per token."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        logits = torch.zeros(*y.shape, self.vocab_size) + self.dummy
        return F.cross_entropy(logits.view(-1, self.vocab_size), y.reshape(-1), reduction=reduction)


@pytest.fixture(params=["--byte-level", "--vocab-size=300"])
def prepare(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_DATASET", "tiny")
    for i, text in enumerate(TEXTS):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    module = load_prepare()
    module.main(["--source", "files", "--paths", str(tmp_path), request.param, "--name", "tiny"])
    return module


def val_bytes() -> int:
    """Validation bytes computed from the texts, independently of the tokenizer."""
    return sum(len(t[int(len(t) * 0.95) :].encode("utf-8")) for t in TEXTS)


def test_uniform_model_scores_log2_vocab_per_token(prepare: ModuleType) -> None:
    meta = prepare.load_meta()
    val = np.fromfile(prepare.dataset_dir() / "val.bin", dtype=np.uint16)
    n_text_tokens = int((val != meta["bos_id"]).sum())
    expected = n_text_tokens * math.log2(meta["vocab_size"]) / val_bytes()
    model = UniformModel(meta["vocab_size"])
    assert prepare.evaluate_bpb(model, batch_size=2) == pytest.approx(expected, rel=1e-6)
    assert model.training  # train mode restored


def test_eval_tokens_limit_and_determinism(prepare: ModuleType) -> None:
    meta = prepare.load_meta()
    tok = prepare.load_tokenizer()
    val = np.fromfile(prepare.dataset_dir() / "val.bin", dtype=np.uint16)[:50]
    texts = tok.decode([t for t in val.tolist() if t != meta["bos_id"]])
    expected = int((val != meta["bos_id"]).sum()) * math.log2(meta["vocab_size"]) / len(texts.encode())
    model = UniformModel(meta["vocab_size"]).eval()
    first = prepare.evaluate_bpb(model, batch_size=1, eval_tokens=50)
    assert first == pytest.approx(expected, rel=1e-6) and not model.training
    assert prepare.evaluate_bpb(model, batch_size=3, eval_tokens=50) == first


def test_env_var_caps_eval_tokens(prepare: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    model = UniformModel(prepare.load_meta()["vocab_size"])
    full = prepare.evaluate_bpb(model, batch_size=4)
    monkeypatch.setenv("AUTORESEARCH_EVAL_TOKENS", str(10**9))  # more than the split: capped
    assert prepare.evaluate_bpb(model, batch_size=4) == full


def test_loss_of_shape_b_by_t_is_accepted(prepare: ModuleType) -> None:
    class Shaped(UniformModel):
        def forward(self, x: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
            return super().forward(x, y, reduction).view(y.shape)

    vocab = prepare.load_meta()["vocab_size"]
    assert prepare.evaluate_bpb(Shaped(vocab), 2) == prepare.evaluate_bpb(UniformModel(vocab), 2)
