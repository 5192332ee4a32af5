"""The model and optimizers of experiment/train.py, imported in-process on the CPU: the fast paths taken for
speed must compute what the plain formulas compute."""

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from conftest import EXPERIMENT


@pytest.fixture(scope="module")
def train() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTORESEARCH_DEVICE", "cpu")
        spec = importlib.util.spec_from_file_location("train_under_test", EXPERIMENT / "train.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # defines the model; main() runs only as a script
        yield module


def test_chunked_loss_equals_the_plain_cross_entropy(train: ModuleType) -> None:
    torch.manual_seed(0)
    model = train.GPT(vocab_size=300, depth=2, dim=32, head_dim=16)
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)  # logits large enough for the softcap to matter
    T = train.LOSS_CHUNK + 37  # a ragged last chunk
    idx, targets = torch.randint(0, 300, (2, T)), torch.randint(0, 300, (2, T))
    logits = model(idx)
    assert logits.shape == (2, T, 300) and logits.abs().max() < train.LOGIT_SOFTCAP
    plain = F.cross_entropy(logits.view(-1, 300), targets.view(-1), reduction="none")
    per_token = model(idx, targets, reduction="none")
    torch.testing.assert_close(per_token, plain)
    mean = model(idx, targets)
    torch.testing.assert_close(mean, plain.mean())
    mean.backward()  # gradients flow through every chunk
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_adamw_matches_torch_optim(train: ModuleType) -> None:
    torch.manual_seed(0)
    ours_w = torch.randn(8, 4, requires_grad=True)
    ref_w = ours_w.detach().clone().requires_grad_()
    groups = [{"params": [ours_w], "lr": 0.05}]
    ours = train.AdamW(groups, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    ref = torch.optim.AdamW([ref_w], lr=0.05, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.1)
    for step in range(5):
        grad = torch.randn(8, 4) * (step + 1)
        ours_w.grad, ref_w.grad = grad.clone(), grad.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(ours_w, ref_w)


def test_a_training_step_does_not_import_dynamo() -> None:
    """torch._dynamo costs a CPU experiment about a second of start-up; nothing on the CPU path needs it."""
    code = f"""
import sys; sys.argv = ["train.py"]; sys.path.insert(0, {str(EXPERIMENT)!r})
import torch, train
model = train.GPT(64, 1, 32, 16)
optimizers = train.make_optimizers(model)
idx = torch.randint(0, 64, (2, 16))
model(idx, idx).backward()
for opt in optimizers:
    opt.step()
print("torch._dynamo" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={"AUTORESEARCH_DEVICE": "cpu", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
