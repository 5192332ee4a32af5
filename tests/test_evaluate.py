"""The locked evaluator: evaluate_bpb against models whose answer is known in closed form, the hand-over of a
real model through torch.export, and every way a handed-over model is refused."""

from __future__ import annotations

import io
import json
import math
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from conftest import EXPERIMENT, load_evaluate, load_prepare, prepare_dataset

TEXTS = ["Héllo wörld, 日本語 and 🙂 emoji. " * 60, "Plain English prose for a second document. " * 80]


class Uniform(torch.nn.Module):
    """Every token of the vocabulary equally likely: log2(V) bits per token."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.bias = torch.nn.Parameter(torch.zeros(vocab_size))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*idx.shape, self.vocab_size) + self.bias


class Peeking(Uniform):
    """Not causal: every position sees the sum of the whole row, so a change at the end moves every logit."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) + idx.float().sum(dim=1, keepdim=True)[..., None] * 1e-3


class PeekingInLowPrecision(Uniform):
    """Causal in float32, looking ahead under bf16 autocast, the precision a CPU with bf16 scores in: a matmul
    whose float32 answer is exact and known, and whose bf16 answer is not, gates a peek at the row's future."""

    WEIGHT = 1 + 2**-10  # a float32 number that bf16 rounds to 1

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        self.weight = torch.nn.Parameter(torch.full((1, 4), self.WEIGHT))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(*idx.shape, 4)
        gate = torch.nn.functional.linear(ones, self.weight).float() - 4 * self.WEIGHT  # 0; in bf16 -2**-8
        future = idx.float().sum(dim=1, keepdim=True)[..., None]
        return super().forward(idx) + gate * future


class Mixing(Uniform):
    """Rows are not independent: each row sees the mean of the batch."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(idx) + idx.float().mean() * 1e-3


class Counter(Uniform):
    """Changes its own state on every call."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__(vocab_size)
        self.register_buffer("calls", torch.zeros(()))

    calls: torch.Tensor

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        self.calls.add_(1)
        return super().forward(idx) + self.calls


@pytest.fixture(params=["--byte-level", "--vocab-size=300"])
def prepare(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("AUTORESEARCH_DATASET", "tiny")
    monkeypatch.setenv("AUTORESEARCH_OUTPUT", str(tmp_path / "out"))
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    for i, text in enumerate(TEXTS):
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    module = load_prepare()
    prepare_dataset(["--source", "files", "--paths", str(tmp_path), request.param, "--name", "tiny"])
    return module


@pytest.fixture
def evaluate(prepare: ModuleType) -> ModuleType:
    return load_evaluate(prepare)


def val_bytes() -> int:
    """Validation bytes computed from the texts, independently of the tokenizer."""
    return sum(len(t[int(len(t) * 0.95) :].encode("utf-8")) for t in TEXTS)


def val_tokens(prepare: ModuleType) -> np.ndarray:
    return np.fromfile(prepare.dataset_dir() / "val.bin", dtype=np.uint16)


def test_uniform_model_scores_log2_vocab_per_token(prepare: ModuleType, evaluate: ModuleType) -> None:
    meta = prepare.load_meta()
    n_text_tokens = int((val_tokens(prepare) != meta["bos_id"]).sum())
    expected = n_text_tokens * math.log2(meta["vocab_size"]) / val_bytes()
    assert evaluate.evaluate_bpb(Uniform(meta["vocab_size"]), batch_size=2) == pytest.approx(expected, rel=1e-6)


def test_eval_tokens_scores_exactly_that_many_tokens_of_a_longer_split(
    prepare: ModuleType, evaluate: ModuleType
) -> None:
    """The limit is smaller than the split, so ignoring it would change what is scored."""
    meta, val = prepare.load_meta(), val_tokens(prepare)
    assert len(val) > 50
    rows = evaluate.eval_rows("val", 50)
    assert int((rows[:, 1:] != meta["bos_id"]).sum()) == int((val[:50] != meta["bos_id"]).sum())
    texts = prepare.load_tokenizer().decode([t for t in val[:50].tolist() if t != meta["bos_id"]])
    expected = int((val[:50] != meta["bos_id"]).sum()) * math.log2(meta["vocab_size"]) / len(texts.encode())
    model = Uniform(meta["vocab_size"])
    first = evaluate.evaluate_bpb(model, 1, rows)
    assert first == pytest.approx(expected, rel=1e-6)
    assert evaluate.evaluate_bpb(model, 3, rows) == first  # the batch size does not change the result


def tiny_gpt(prepare: ModuleType, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """The default train.py's model at its smallest size, with random weights."""
    monkeypatch.setenv("AUTORESEARCH_MODEL_SIZE", "tiny")
    monkeypatch.syspath_prepend(str(EXPERIMENT))
    sys.modules["prepare"] = prepare
    spec = __import__("importlib.util").util.spec_from_file_location("train_under_test", EXPERIMENT / "train.py")
    train = __import__("importlib.util").util.module_from_spec(spec)
    spec.loader.exec_module(train)
    torch.manual_seed(0)
    vocab = prepare.load_meta()["vocab_size"]
    return train.GPT(vocab, train.DEPTH, train.WIDTH, train.HEAD_DIM)  # type: ignore[no-any-return]


def evaluator(prepare: ModuleType, model: Path, tmp_path: Path, **env: str) -> dict[str, Any]:
    """The evaluator as the server starts it: its own process, the locked file, a result file."""
    result = tmp_path / "result.json"
    subprocess.run([sys.executable, str(EXPERIMENT / "evaluate.py"), str(model), "--result",
                    str(result)], env={**os.environ, **env}, check=True, capture_output=True, timeout=120)  # fmt: skip
    return json.loads(result.read_text())  # type: ignore[no-any-return]


def test_handed_over_model_scores_what_it_scores_in_process(
    prepare: ModuleType, evaluate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real model through torch.export, save and the evaluator process: the same bits per byte as
    evaluate_bpb on the same weights in this process."""
    model = tiny_gpt(prepare, monkeypatch)
    path = prepare.save_model(model)
    zipped = zipfile.ZipFile(path)
    assert not [n for n in zipped.namelist() if n.endswith(".pt") and zipped.getinfo(n).file_size > 0]  # no pickle
    device = torch.device("cpu")
    with evaluate.eval_autocast(device):  # the evaluator scores in bf16 where the CPU has it, float32 elsewhere
        expected = evaluate.evaluate_bpb(model.eval(), 2, device=device, pad=True)  # save_model's batch: 2
    result = evaluator(prepare, path, tmp_path, AUTORESEARCH_EVAL_BATCH="8")
    assert result["status"] == "ok" and result["bpb"] == pytest.approx(expected, rel=1e-9)
    assert result["tokens"] == len(val_tokens(prepare))
    assert result["freed_memory_kept"] is (platform.libc_ver()[0] == "glibc")  # see the test below


def test_the_loader_with_its_type_hints_kept_builds_the_program_torch_builds(
    prepare: ModuleType, evaluate: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The evaluator keeps the deserializer's type hints while it loads: the same program as torch's own
    load, each schema class's hints asked for once, and torch's module as it was afterwards."""
    import typing

    from torch._export.serde import serialize

    path = prepare.save_model(tiny_gpt(prepare, monkeypatch))
    asked: list[object] = []
    plain = typing.get_type_hints

    def counted(obj: object, *args: Any, **kwargs: Any) -> dict[str, Any]:
        asked.append(obj)
        return plain(obj, *args, **kwargs)

    monkeypatch.setattr(typing, "get_type_hints", counted)
    theirs = torch.export.load(evaluate.read_archive(path))
    uncached = len(asked)
    asked.clear()
    ours, _ = evaluate.load_model(path)
    assert 0 < len(asked) == len(set(asked)) < uncached / 10
    assert serialize.typing is typing  # type: ignore[attr-defined]
    x = evaluate.eval_rows("val")[:, :-1].repeat(2, 1)[:2]  # the batch it was exported for
    with torch.no_grad():
        assert torch.equal(ours(x), theirs.module()(x))


FAULTS = """
import resource, sys, torch
sys.path.insert(0, sys.argv[2])
import evaluate
if sys.argv[1] == "keep":
    assert evaluate.keep_freed_memory()
def batches(n):  # 32 MiB of float32 a batch, as a CPU evaluation's logits are
    for _ in range(n):
        torch.ones(8 << 20).add_(1)
batches(10)  # the heap settles first: how the imports before left it does not count
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
batches(10)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's parameters are glibc's")
def test_the_evaluator_keeps_freed_memory_for_its_next_tensors() -> None:
    """glibc hands a freed block of 32 MiB back to the system, so the next one is fresh pages (8K page faults
    each); after keep_freed_memory the evaluator's next tensors reuse the memory."""

    def faults(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", FAULTS, mode, str(EXPERIMENT)], capture_output=True, text=True,
                              check=True, timeout=120)  # fmt: skip
        return int(done.stdout.split()[-1])

    assert faults("plain") > 9 * 8192  # every one of the ten mapped anew
    assert faults("keep") < 8192  # once settled, the heap's memory is reused: not one batch mapped anew


def test_the_loss_in_slices_sums_what_one_cross_entropy_over_every_token_sums(
    prepare: ModuleType, evaluate: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """evaluate_bpb takes the cross-entropy a slice of tokens at a time on a CPU (a slice that does not divide
    a row here); the figure is the closed form over every token at once: nats of byte-bearing targets over
    ln 2 times their bytes."""
    model = tiny_gpt(prepare, monkeypatch).eval()
    monkeypatch.setattr(evaluate, "EVAL_LOSS_CHUNK_CPU", 100)
    rows = evaluate.eval_rows("val")
    token_bytes = torch.from_numpy(np.load(prepare.dataset_dir() / "token_bytes.npy").astype(np.int64))
    with torch.no_grad():
        logits = model(rows[:, :-1])
    targets = rows[:, 1:].reshape(-1)
    nats = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets, reduction="none")
    nbytes = token_bytes[targets]
    expected = float(nats.double()[nbytes > 0].sum()) / (math.log(2) * int(nbytes.sum()))
    assert evaluate.evaluate_bpb(model, 1, rows) == pytest.approx(expected, rel=1e-9)
    assert evaluate.evaluate_bpb(model, 2, rows, pad=True) == pytest.approx(expected, rel=1e-9)


def test_evaluator_scores_the_configured_number_of_tokens(
    prepare: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = prepare.save_model(tiny_gpt(prepare, monkeypatch))
    assert evaluator(prepare, path, tmp_path, AUTORESEARCH_EVAL_TOKENS="40")["tokens"] == 40


@pytest.mark.parametrize(
    ("model", "why"),
    [(Peeking, "must be causal"), (Mixing, "rows must be independent"), (Counter, "changes its own buffers")],
)
def test_models_that_cheat_are_refused(prepare: ModuleType, tmp_path: Path, model: type[Uniform], why: str) -> None:
    path = prepare.save_model(model(prepare.load_meta()["vocab_size"]))
    result = evaluator(prepare, path, tmp_path)
    assert result["status"] == "bad_model" and why in result["reason"]


def test_a_model_that_looks_ahead_only_in_the_scoring_precision_is_refused(
    prepare: ModuleType, evaluate: ModuleType, tmp_path: Path
) -> None:
    """The contract is checked under the autocast the model is scored in: a check in float32 alone passes a
    model whose peek at the future opens only in bf16."""
    if not isinstance(evaluate.eval_autocast(torch.device("cpu")), torch.autocast):
        pytest.skip("this CPU has no bf16: the evaluator checks and scores in float32 alone")
    model = PeekingInLowPrecision(prepare.load_meta()["vocab_size"])
    rows = evaluate.eval_rows("val")
    evaluate.check_contract(model, rows, model.vocab_size, torch.device("cpu"))  # float32: it passes
    result = evaluator(prepare, prepare.save_model(model), tmp_path)
    assert result["status"] == "bad_model" and "must be causal" in result["reason"], result


def test_wrong_output_and_nan_are_refused(prepare: ModuleType, tmp_path: Path) -> None:
    class Short(Uniform):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return super().forward(idx)[:, :-1]

    class Nan(Uniform):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return super().forward(idx) * float("nan")

    vocab = prepare.load_meta()["vocab_size"]
    short = evaluator(prepare, prepare.save_model(Short(vocab)), tmp_path)
    assert short["status"] == "bad_model" and "must return float logits of shape" in short["reason"]
    nan = evaluator(prepare, prepare.save_model(Nan(vocab)), tmp_path)
    assert nan["status"] == "bad_model" and "not finite" in nan["reason"]


def test_the_contract_comparisons_agree_with_torch(prepare: ModuleType, evaluate: ModuleType) -> None:
    """The evaluator's own finiteness and closeness checks (cheaper than torch's) give torch's answers."""
    want = torch.randn(3, 16, 8)
    for bad in (float("nan"), float("inf"), -float("inf")):
        broken = want.clone()
        broken[1, 5, 2] = bad
        assert evaluate._finite(broken) is False and bool(torch.isfinite(broken).all()) is False
        assert evaluate._close(broken, want) is False and not torch.allclose(broken, want, atol=1e-4, rtol=1e-4)
    assert evaluate._finite(want) and evaluate._finite(want[:, :0])
    for scale in (0.0, 5e-5, 1e-4 * 0.99, 1e-4 * 1.5, 1e-2):
        got = want + scale * (1 + want.abs())
        assert evaluate._close(got, want) == torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert not evaluate._close(want[:1], want)  # a different shape is never close, even where it broadcasts


def dynamic_export(prepare: ModuleType, model: torch.nn.Module, path: Path) -> Path:
    """The model exported for any batch (save_model fixes the batch): what a hand-made archive may hold, shape
    expressions included."""
    idx = torch.zeros((2, prepare.MAX_SEQ_LEN), dtype=torch.long)
    with torch.no_grad():
        program = torch.export.export(model.eval(), (idx,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    program._example_inputs = None
    torch.export.save(program, path)
    return path


def test_a_model_exported_for_any_batch_scores_the_same(
    prepare: ModuleType, evaluate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save_model fixes the batch to the evaluator's (half the export and load time); an archive with a dynamic
    batch is scored with the configured batch, to the same figure; a fixed batch past the limit is refused."""
    model = tiny_gpt(prepare, monkeypatch)
    fixed = evaluator(prepare, prepare.save_model(model), tmp_path, AUTORESEARCH_EVAL_BATCH="2")
    dynamic = evaluator(prepare, dynamic_export(prepare, model, tmp_path / "any.pt2"), tmp_path,
                        AUTORESEARCH_EVAL_BATCH="3")  # fmt: skip
    assert fixed["status"] == dynamic["status"] == "ok" and dynamic["bpb"] == pytest.approx(fixed["bpb"], rel=1e-6)
    monkeypatch.setenv("AUTORESEARCH_EVAL_BATCH", str(evaluate.EVAL_MAX_BATCH + 1))
    huge = evaluator(prepare, prepare.save_model(model), tmp_path)
    assert huge["status"] == "bad_model" and "exported for a batch of" in huge["reason"], huge


def rewrite(path: Path, change: Any) -> Path:
    """A copy of an archive with one member's JSON changed by change(name, data) -> data."""
    out = path.with_name("crafted.pt2")
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info)))
    return out


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda n, d: d.replace(b"torch.ops.aten.linear.default", b"torch.save") if "models/" in n else d,
         "calls torch.save"),
        (lambda n, d: d.replace(b"torch.ops.aten.linear.default", b"torch.ops.aten.from_file.default")
         if "models/" in n else d, "from_file"),
        (lambda n, d: d.replace(b'"expr_str": "', b'"expr_str": "__import__(\'os\').system(\'true\') or ')
         if "models/" in n else d, "plain arithmetic"),
        (lambda n, d: d.replace(b'"use_pickle": false', b'"use_pickle": true') if n.endswith("weights_config.json")
         else d, "pickled"),
    ],
)  # fmt: skip
def test_crafted_archives_are_refused_before_anything_is_loaded(
    prepare: ModuleType, evaluate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any, why: str
) -> None:
    """The loader would unpickle, run sympy on strings, or call what the graph names: the evaluator refuses
    such archives while they are still bytes. (A dynamic batch, so that the archive has shape expressions.)"""
    path = dynamic_export(prepare, tiny_gpt(prepare, monkeypatch), tmp_path / "model.pt2")
    crafted = rewrite(path, change)
    assert crafted.read_bytes() != path.read_bytes()
    with pytest.raises(evaluate.BadModel, match=why):
        evaluate.read_archive(crafted)
    result = evaluator(prepare, crafted, tmp_path)
    assert result["status"] == "bad_model" and why in result["reason"]


def test_an_unexpected_file_in_the_archive_is_refused(
    prepare: ModuleType, evaluate: ModuleType, tmp_path: Path
) -> None:
    path = prepare.save_model(Uniform(prepare.load_meta()["vocab_size"]))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("model/extra/payload.pkl", b"\x80\x04.")
    with pytest.raises(evaluate.BadModel, match="unexpected file"):
        evaluate.read_archive(path)


def test_export_failure_names_the_reason_and_exits_3(prepare: ModuleType, evaluate: ModuleType, tmp_path: Path) -> None:
    """A model torch.export cannot capture: save_model writes why (for the agent) and exits with status 3."""

    class DataDependent(Uniform):
        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            if idx.sum() > 0:  # control flow on data cannot be exported
                return super().forward(idx)
            return super().forward(idx) + 1

    with pytest.raises(SystemExit) as exited:
        prepare.save_model(DataDependent(prepare.load_meta()["vocab_size"]))
    assert exited.value.code == 3
    reason = (Path(os.environ["AUTORESEARCH_OUTPUT"]) / "export_error.txt").read_text()
    assert "data-dependent" in reason and len(reason) < 400
    assert io.StringIO(reason).readline().strip() == reason.strip()  # one line


BF16_CPU = any(getattr(torch.cpu, f"_is_{isa}_supported", lambda: False)() for isa in ("avx512_bf16", "amx_tile"))
AMX_CPU = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
PROBES = """
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import evaluate, prepare
capped = evaluate.pin_cpu_kernels()  # as evaluate_main does, before the first kernel
model, batch = evaluate.load_model(evaluate.Path(sys.argv[2]))
rows, vocab, device = evaluate.eval_rows("val"), int(prepare.load_meta()["vocab_size"]), torch.device("cpu")
refusals = []
for shift in range(1, 13):  # other neighbours each time: the rows shifted, and the same rows changed
    probe = torch.cat([rows[:1], (rows.roll(shift, dims=1) + shift) % vocab])
    try:
        with evaluate.eval_autocast(device):
            evaluate.check_contract(model, probe, vocab, device, batch or 2)
    except evaluate.BadModel as why:
        refusals.append(str(why))
print(json.dumps({"refusals": refusals, "capped": capped}))
"""


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has neither AVX512-BF16 nor AMX: the evaluator checks and scores "
                    "in float32, and the bfloat16 kernels this guards do not run here")  # fmt: skip
def test_an_honest_model_passes_every_probe_in_bfloat16_whatever_its_neighbours(
    prepare: ModuleType, evaluate: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default model at its smallest (16-channel heads, width 32: the shapes refused on an AMX CPU), with
    weights large enough that every path counts, checked 12 times beside other rows in the evaluator's own
    precision and kernels: its rows are independent and causal, so no probe may refuse it."""
    model = tiny_gpt(prepare, monkeypatch)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.5)
    path = prepare.save_model(model)
    out = subprocess.run([sys.executable, "-c", PROBES, str(EXPERIMENT), str(path)], env=dict(os.environ),
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["refusals"] == [] and result["capped"] == (evaluate.EVAL_CPU_ISA if AMX_CPU else None), result


KERNEL = """
import os, sys, torch
sys.path.insert(0, sys.argv[1])
import evaluate
if sys.argv[2] == "simulate":  # this CPU has no AMX: cap one level below what it has, so the cap shows
    torch.cpu._is_amx_tile_supported = lambda: True
    evaluate.EVAL_CPU_ISA = "AVX512_CORE"
if sys.argv[2] != "uncapped":
    evaluate.pin_cpu_kernels()
torch.randn(64, 48).bfloat16() @ torch.randn(48, 64).bfloat16()
"""


def bf16_matmul_kernel(mode: str) -> str:
    """The oneDNN implementation that ran a bf16 matmul in a fresh process (from ONEDNN_VERBOSE)."""
    env = {k: v for k, v in os.environ.items() if k != "ONEDNN_MAX_CPU_ISA"} | {"ONEDNN_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", KERNEL, str(EXPERIMENT), mode], env=env, capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    lines = [line.split(",") for line in out.stdout.splitlines() if ",primitive,exec,cpu,matmul," in line]
    assert lines, out.stdout + out.stderr
    return lines[0][6]


@pytest.mark.skipif(not BF16_CPU, reason="this CPU has no bfloat16 kernels (AVX512-BF16 or AMX) to cap")
def test_the_evaluator_caps_its_cpu_kernels_below_amx_before_the_first_one_runs() -> None:
    """On an AMX CPU the evaluator's bf16 kernels are oneDNN's AVX512-BF16 ones, set from inside the process
    after torch is imported. On a CPU without AMX the cap is simulated one level lower, so that the test
    still proves the mechanism: the kernel changes."""
    if AMX_CPU:
        assert "amx" in bf16_matmul_kernel("uncapped") and "amx" not in bf16_matmul_kernel("capped")
    else:
        assert "avx512_core_bf16" in bf16_matmul_kernel("uncapped")
        assert "avx512_core_bf16" not in bf16_matmul_kernel("simulate")
        assert load_evaluate().pin_cpu_kernels() is None  # nothing to cap here
