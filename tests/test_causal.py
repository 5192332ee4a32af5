"""The structural causality check (experiment/causal.py): every way to mix positions in an exported graph is
either causal by its kind or refused with the operation and its line, whatever the weights, however sparse.
Models here are exported as save_model exports them (torch.export, a fixed batch) and checked without a
forward pass; each hostile one is caught by the graph alone."""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from conftest import EXPERIMENT

spec = importlib.util.spec_from_file_location("causal_under_test", EXPERIMENT / "causal.py")
assert spec is not None and spec.loader is not None
causal = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = causal  # its dataclasses look their module up
spec.loader.exec_module(causal)

T, V, C = 512, 96, 16


def exported(model: torch.nn.Module, batch: int = 2, dynamic: bool = False) -> object:
    """Export as prepare.save_model does (or for any batch), then save and load it as the evaluator does."""
    shapes = ({0: torch.export.Dim("batch", min=1, max=1024)},) if dynamic else None
    with torch.no_grad():
        program = torch.export.export(model.eval(), (torch.zeros((batch, T), dtype=torch.long),), dynamic_shapes=shapes)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


class Net(torch.nn.Module):
    """A token embedding, a body (the variant), a head."""

    tril: torch.Tensor

    def __init__(self, body: Callable[[Net, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(V, C), torch.nn.Linear(C, V)
        self.qkv, self.conv = torch.nn.Linear(C, 3 * C), torch.nn.Conv1d(C, C, 4)
        self.register_buffer("tril", torch.tril(torch.ones(T, T)))
        self.body = body

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.body(self, idx, self.emb(idx))


def ahead(idx: torch.Tensor) -> torch.Tensor:
    return F.one_hot(F.pad(idx[:, 1:], (0, 1)), V).float()


def attention(net: Net, x: torch.Tensor, mask: str) -> torch.Tensor:
    q, k, v = net.qkv(x).split(C, dim=-1)
    scores = q @ k.transpose(-2, -1) / C**0.5
    if mask == "masked_fill":
        scores = scores.masked_fill(net.tril[:T, :T] == 0, float("-inf"))
    elif mask == "additive":
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
    elif mask == "where":
        scores = torch.where(net.tril[:T, :T].bool(), scores, torch.tensor(float("-inf")))
    elif mask == "tril only":  # future scores 0 before softmax: they still weight later values
        scores = scores.tril()
    out: torch.Tensor = F.softmax(scores, dim=-1) @ v
    return out


def sdpa(net: Net, x: torch.Tensor, **kw: object) -> torch.Tensor:
    b = x.size(0)
    q, k, v = net.qkv(x).view(b, T, 3, 2, C // 2).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v, **kw).transpose(1, 2).reshape(b, T, C)  # type: ignore[arg-type]


HONEST = {
    "embedding and head": lambda n, idx, x: n.head(x),
    "the previous token": lambda n, idx, x: n.head(x + n.emb(F.pad(idx[:, :-1], (1, 0)))),
    "attention, masked_fill with a tril buffer": lambda n, idx, x: n.head(attention(n, x, "masked_fill")),
    "attention, an additive -inf mask": lambda n, idx, x: n.head(attention(n, x, "additive")),
    "attention, where": lambda n, idx, x: n.head(attention(n, x, "where")),
    "sdpa is_causal": lambda n, idx, x: n.head(sdpa(n, x, is_causal=True)),
    "sdpa with a causal bool mask": lambda n, idx, x: n.head(
        sdpa(n, x, attn_mask=torch.ones(T, T, dtype=torch.bool).tril())
    ),
    "linear attention: scores zeroed above the diagonal": lambda n, idx, x: n.head(
        (lambda q, k, v: (q @ k.transpose(-2, -1)).tril() @ v)(*n.qkv(x).split(C, dim=-1))
    ),
    "a causal convolution": lambda n, idx, x: n.head(n.conv(F.pad(x.transpose(1, 2), (3, 0))).transpose(1, 2)),
    "a cumulative mean": lambda n, idx, x: n.head(x.cumsum(1) / torch.arange(1, T + 1)[None, :, None]),
    "rows flattened and back": lambda n, idx, x: n.head(x.reshape(-1, C)).view(idx.size(0), T, V),
    "a softcap in place": lambda n, idx, x: 15 * (n.head(x) / 15).tanh_(),
    "keys shared by two heads (repeat_interleave)": lambda n, idx, x: n.head(
        F.scaled_dot_product_attention(
            n.qkv(x)[..., :C].view(idx.size(0), T, 2, C // 2).transpose(1, 2),
            n.qkv(x)[..., C : C + C // 2].view(idx.size(0), T, 1, C // 2).transpose(1, 2).repeat_interleave(2, dim=1),
            n.qkv(x)[..., C : C + C // 2].view(idx.size(0), T, 1, C // 2).transpose(1, 2).repeat(1, 2, 1, 1),
            is_causal=True,
        )
        .transpose(1, 2)
        .reshape(idx.size(0), T, C)
    ),
}

HOSTILE = {
    "one position in 16 reads the next token": (
        lambda n, idx, x: n.head(x) + ahead(idx) * (torch.arange(T) % 16 == 0).float()[None, :, None],
        "t + 1",
    ),
    "one position in 4096 reads the next token": (
        lambda n, idx, x: n.head(x) + ahead(idx) * (torch.arange(T) == T - 2).float()[None, :, None],
        "t + 1",
    ),
    "only after token 7": (lambda n, idx, x: n.head(x) + ahead(idx) * (idx == 7).float()[..., None], "t + 1"),
    "only in the last row of a batch": (
        lambda n, idx, x: (
            n.head(x) + ahead(idx) * (torch.arange(idx.size(0)) == idx.size(0) - 1).float()[:, None, None]
        ),
        "t + 1",
    ),
    "a roll": (lambda n, idx, x: n.head(x) + F.one_hot(idx.roll(-1, 1), V).float(), "roll"),
    "a cat that rotates": (lambda n, idx, x: n.head(n.emb(torch.cat([idx[:, 1:], idx[:, :1]], 1))), "cat"),
    "a gather of later positions": (
        lambda n, idx, x: n.head(x.gather(1, ((torch.arange(T) + 1) % T)[None, :, None].expand(idx.size(0), T, C))),
        "gather",
    ),
    "an index with positions + 3": (lambda n, idx, x: n.head(x[:, (torch.arange(T) + 3).clamp(max=T - 1)]), "index"),
    "a mean over positions": (lambda n, idx, x: n.head(x + x.mean(1, keepdim=True)), "mean over the positions"),
    "attention without a mask": (lambda n, idx, x: n.head(attention(n, x, "none")), "not masked causally"),
    "attention zeroed, then softmax": (lambda n, idx, x: n.head(attention(n, x, "tril only")), "not masked causally"),
    "sdpa not causal": (lambda n, idx, x: n.head(sdpa(n, x)), "without is_causal"),
    "sdpa with a mask that opens one later key": (
        lambda n, idx, x: n.head(sdpa(n, x, attn_mask=torch.ones(T, T, dtype=torch.bool).tril(1))),
        "without is_causal",
    ),
    "a convolution padded on the right": (
        lambda n, idx, x: n.head(n.conv(F.pad(x.transpose(1, 2), (0, 3))).transpose(1, 2)),
        "t + 3",
    ),
    "a flip": (lambda n, idx, x: n.head(x.flip(1)), "flip"),
}


@pytest.mark.parametrize("name", list(HONEST))
def test_an_honest_model_is_shown_causal(name: str) -> None:
    causal.check(exported(Net(HONEST[name])))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_model_that_looks_ahead_is_refused_by_its_graph(name: str) -> None:
    body, why = HOSTILE[name]
    with pytest.raises(causal.NotCausal, match="must be causal") as refused:
        causal.check(exported(Net(body)))
    assert why in str(refused.value), str(refused.value)


class PeekAfterSeven(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = torch.nn.Embedding(V, C), torch.nn.Linear(C, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        later = F.one_hot(F.pad(idx[:, 1:], (0, 1)), V).float()
        logits: torch.Tensor = self.head(self.emb(idx))
        return logits + later * (idx == 7).float()[..., None]


def test_the_refusal_names_the_line_that_looks_ahead() -> None:
    with pytest.raises(causal.NotCausal) as refused:
        causal.check(exported(PeekAfterSeven()))
    said = str(refused.value)
    assert "t + 1" in said and "test_causal.py" in said and "later = F.one_hot(F.pad(idx[:, 1:]" in said, said


@pytest.mark.parametrize("size", ["tiny", "cpu"])
def test_the_default_models_are_shown_causal(size: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py's own GPT (the tiny smoke-test size and the CPU default), as save_model exports it."""
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    monkeypatch.setenv("AUTORESEARCH_MODEL_SIZE", "tiny" if size == "tiny" else "")
    monkeypatch.syspath_prepend(str(EXPERIMENT))
    for name in ("train", "prepare"):
        sys.modules.pop(name, None)
    train = importlib.import_module("train")
    model = train.GPT(V, train.DEPTH, train.WIDTH, train.HEAD_DIM)
    causal.check(exported(model))
    causal.check(exported(model, dynamic=True))  # an archive exported for any batch (its shapes are symbols)
