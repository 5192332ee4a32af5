"""Locked evaluator of the autoresearch experiment: the archive checks, the model checks and the metric.

OWNED BY THE HUMAN who runs the loop; the agent must never edit it. The server starts it for every run that
handed a model over, from the pinned copy of this file and of prepare.py, in a sandbox of its own:
    python experiment/evaluate.py MODEL --result RESULT.json [--split val|holdout]
                                  [--wait-for GO_FILE [--holdout-word FILE]]
It refuses an archive that could run code or touch files before loading anything, then a model that writes
its own state, gives the wrong shape or non-finite logits, mixes the rows of a batch or looks ahead; then it
scores the model with evaluate_bpb (bits per byte, the original's metric) and writes one result file.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import types
import typing
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # prepare.py sits next to this file
import causal  # noqa: E402
import prepare  # noqa: E402

EVAL_TOKENS = 40 * 524288  # validation tokens scored (capped at the split); the server's config sets its own
EVAL_LOSS_CHUNK_CPU = 256  # tokens per cross-entropy slice on a CPU: their logits stay in cache (3x faster)
EVAL_MAX_BATCH = 1024  # rows; the evaluator refuses a model exported for a larger fixed batch
CAUSALITY_PROBES = 4  # rows whose future tokens the evaluator changes: earlier logits must not move


# ---------------------------------------------------------------------------------------------------------
# The metric
# ---------------------------------------------------------------------------------------------------------
def _eval_rows(val: np.ndarray, bos: int, T: int) -> np.ndarray:
    """The fixed evaluation layout: consecutive T-token windows, the last one padded with BOS (0 bytes)."""
    n_rows = math.ceil(len(val) / T)
    flat = np.full(n_rows * T, bos, dtype=np.int64)
    flat[: len(val)] = val
    rows = np.full((n_rows, T + 1), bos, dtype=np.int64)
    rows[:, 1:] = flat.reshape(n_rows, T)
    return rows


def eval_rows(split: str = "val", eval_tokens: int = EVAL_TOKENS, dataset: str | None = None) -> torch.Tensor:
    """The first eval_tokens tokens of the split as (rows, MAX_SEQ_LEN + 1) int64: BOS, then a window."""
    directory = prepare.dataset_dir(dataset)
    meta = json.loads((directory / "meta.json").read_text())
    split_file = prepare.load_split(directory, split)
    verify(split_file, meta, f"{split}.bin")
    tokens = np.asarray(split_file[:eval_tokens])
    return torch.from_numpy(_eval_rows(tokens, int(meta["bos_id"]), prepare.MAX_SEQ_LEN))


def verify(tokens: np.ndarray, meta: dict[str, Any], name: str) -> None:
    """The split's bytes are the ones `autoresearch prepare` wrote, by the sha256 its meta.json recorded: that
    checksum, not the code that fetched the corpus, is what the score rests on."""
    recorded = meta.get("outputs", {}).get(name, {}).get("sha256")
    if recorded is not None and hashlib.sha256(memoryview(tokens).cast("B")).hexdigest() != recorded:
        raise SystemExit(f"{name} does not match the sha256 in its meta.json: the dataset changed after it was "
                         "prepared; run `autoresearch prepare` again")  # fmt: skip


@torch.no_grad()
def evaluate_bpb(
    model: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = prepare.EVAL_BATCH_SIZE,
    rows: torch.Tensor | None = None,
    device: torch.device | None = None,
    dataset: str | None = None,
    pad: bool = False,
) -> float:
    """Bits per byte: the summed cross-entropy (nats) of every non-special target token divided by ln 2 times
    those targets' byte count. `model(idx)` returns logits (B, T, vocab). Independent of the vocabulary, so
    tokenizers and models of any kind compare fairly. Deterministic. The server's evaluator calls it, with `pad`
    for a model exported for a fixed batch: the last batch is filled with BOS rows, which have no bytes."""
    rows = eval_rows(dataset=dataset) if rows is None else rows
    directory = prepare.dataset_dir(dataset)
    token_bytes = torch.from_numpy(np.load(directory / "token_bytes.npy", allow_pickle=False).astype(np.int64))
    device = device or prepare.get_device()
    if pad and len(rows) % batch_size:  # a model exported for a fixed batch: BOS rows fill the last one (0 bytes)
        bos = int(rows[0, 0])
        filler = torch.full((batch_size - len(rows) % batch_size, rows.size(1)), bos, dtype=rows.dtype)
        rows = torch.cat([rows, filler])
    nats, nbytes = torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(rows), batch_size):
        nats_i, bytes_i = _eval_batch(model, rows[i : i + batch_size], token_bytes, device)
        nats, nbytes = nats + nats_i, nbytes + bytes_i
    return float(nats) / (math.log(2) * nbytes)


def _eval_batch(model, rows, token_bytes, device) -> tuple[torch.Tensor, int]:
    batch = rows.to(device)
    x, y = batch[:, :-1], batch[:, 1:]
    logits, targets = model(x), y.reshape(-1)
    logits = logits.reshape(-1, logits.size(-1))
    chunk = len(targets) if logits.is_cuda else EVAL_LOSS_CHUNK_CPU  # the same per-token losses either way
    losses = [F.cross_entropy(logits[i : i + chunk].float(), targets[i : i + chunk], reduction="none")
              for i in range(0, len(targets), chunk)]  # fmt: skip
    loss = torch.cat(losses).double().cpu()
    nb = token_bytes[y.reshape(-1).cpu()]
    if not torch.isfinite(loss[nb > 0]).all():
        raise BadModel("the model's logits give a non-finite loss (NaN or inf) on the validation data")
    return torch.where(nb > 0, loss, 0.0).sum(), int(nb.sum())


# ---------------------------------------------------------------------------------------------------------
# The archive and model checks
# ---------------------------------------------------------------------------------------------------------
class BadModel(Exception):
    """The handed-over model breaks the contract; the message says how, for the agent."""


ARCHIVE_DATA = ("data/weights/", "data/constants/")  # raw tensor bytes and their JSON configs
ARCHIVE_META = ("archive_format", "archive_version", ".data/version", "byteorder", ".data/serialization_id")
ALLOWED_OP_NAMESPACES = ("torch.ops.aten.", "torch.ops.prims.", "_operator.getitem")
ALLOWED_HIGHER_ORDER = (
    "torch.ops.higher_order.wrap_with_set_grad_enabled",
    "torch.ops.higher_order.wrap_with_autocast",
)
FORBIDDEN_OPS = ("from_file", "_nested_from", "save", "load", "_local_scalar")  # files, and data-dependent tricks
SYMBOL_EXPR = re.compile(r"[A-Za-z0-9_+\-*/()., '=]*")  # shape expressions: symbols, numbers, arithmetic
SYMPY_NAMES = {
    "Symbol",
    "Integer",
    "positive",
    "integer",
    "True",
    "False",
    "FloorDiv",
    "Mod",
    "Max",
    "Min",
    "CeilToInt",
    "CleanDiv",
    "PythonMod",
    "ModularIndexing",
    "Where",
    "IntTrueDiv",
    "FloatTrueDiv",
}


def read_archive(path: Path) -> io.BytesIO:
    """The archive with everything that could run code refused: no pickled tensors or custom objects (the
    loader would unpickle them), no sample inputs (pickled too), only aten/prims operations, plain shape
    expressions (the loader hands them to sympy, which evaluates strings)."""
    try:
        zin = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BadModel(
            f"{prepare.MODEL_FILE} is not a torch.export archive ({exc}); hand the model over with save_model"
        ) from exc
    out = io.BytesIO()
    with zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            name = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
            data = zin.read(info)
            if name.startswith("data/sample_inputs/"):
                data = b""
            elif name.startswith("models/") and name.endswith(".json"):
                _check_program_json(data)
            elif name.endswith(".json") and name.startswith(ARCHIVE_DATA):
                if any(key == "use_pickle" and value for key, value in _walk(json.loads(data))):
                    raise BadModel("the model holds pickled tensors (a tensor subclass); use plain tensors")
            elif not name.startswith(ARCHIVE_DATA) and name not in ARCHIVE_META:
                raise BadModel(f"unexpected file {name!r} in the model archive; hand the model over with save_model")
            zout.writestr(info, data)
    out.seek(0)
    return out


def _check_program_json(data: bytes) -> None:
    program = json.loads(data)
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            allowed = value.startswith(ALLOWED_OP_NAMESPACES) or value.startswith(ALLOWED_HIGHER_ORDER)
            if not allowed or any(f".{bad}" in value for bad in FORBIDDEN_OPS):
                raise BadModel(f"the model calls {value}, which the evaluator does not run; use tensor operations only")
        elif key == "expr_str" and isinstance(value, str) and not _plain_expression(value):
            raise BadModel("the model's shape expressions are not plain arithmetic; export it with save_model")
        elif key in ("custom_obj", "as_custom_obj") and value:
            raise BadModel("the model holds a custom object; use plain tensors")


def _plain_expression(text: str) -> bool:
    """A sympy shape expression made of known names, shape symbols (s0, u3) and arithmetic, nothing else:
    the loader passes it to sympy.sympify, which evaluates it as Python."""
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)
    return bool(SYMBOL_EXPR.fullmatch(text)) and all(n in SYMPY_NAMES or re.fullmatch(r"[su]\d+", n) for n in names)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def load_model(path: Path) -> tuple[Callable[[torch.Tensor], torch.Tensor], int | None]:
    """The handed-over model as a function of idx, after the archive and graph checks, and the batch it was
    exported for (None when its batch is dynamic: it takes any)."""
    return as_module(load_program(path))


def load_program(path: Path) -> Any:
    """The handed-over exported program, after the archive and graph checks."""
    with _type_hints_cached():
        program = torch.export.load(read_archive(path))
    signature = program.graph_signature
    if signature.buffers_to_mutate or signature.user_inputs_to_mutate:
        raise BadModel("the model changes its own buffers when called; evaluation must not change the model")
    if len(signature.user_inputs) != 1:
        raise BadModel(f"the model takes {len(signature.user_inputs)} inputs; it must take idx only")
    for node in program.graph.nodes:
        if node.op == "call_function" and any(bad in str(node.target) for bad in FORBIDDEN_OPS):
            raise BadModel(f"the model calls {node.target}, which the evaluator does not run")
    if _writes_to_state(program.graph):
        raise BadModel("the model changes its own buffers when called; evaluation must not change the model")
    return program


def as_module(program: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], int | None]:
    """The program as a function of idx, and the batch it was exported for (None: dynamic, it takes any)."""
    batch = _fixed_batch(program, program.graph_signature.user_inputs[0])
    module = program.module()
    for node in list(module.graph.nodes):  # dtype asserts recorded at export would refuse autocast's bf16
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default:
            module.graph.erase_node(node)
    module.recompile()
    return module, batch


def prove_causal(program: Any) -> None:
    """The structural check (causal.py): every operation that mixes positions is causal by its kind. It runs
    after the probes (which name a peek they catch by how far the logits moved) and catches what they cannot:
    a peek at one position in thousands, after one particular token, in some rows only."""
    try:
        causal.check(program)
    except causal.NotCausal as exc:
        raise BadModel(str(exc)) from None


@contextlib.contextmanager
def _type_hints_cached() -> Iterator[None]:
    """torch's deserializer asks typing.get_type_hints of a schema class again for every object it builds,
    half of loading the default model; the answer for a class does not change while loading, so it is kept.
    Elsewhere (another torch, other callers), get_type_hints is untouched."""
    try:
        from torch._export.serde import schema, serialize
    except ImportError:
        yield
        return
    plain = getattr(serialize, "typing", None)
    if plain is not typing:
        yield
        return
    found: dict[Any, dict[str, Any]] = {}

    def hints(obj: Any, globalns: Any = None, localns: Any = None, include_extras: bool = False) -> dict[str, Any]:
        if globalns is not vars(schema) or localns is not None or include_extras:
            return typing.get_type_hints(obj, globalns, localns, include_extras)
        if obj not in found:
            found[obj] = typing.get_type_hints(obj, globalns)
        return found[obj]

    serialize.typing = types.SimpleNamespace(**{**vars(typing), "get_type_hints": hints})  # type: ignore[attr-defined]
    try:
        yield
    finally:
        serialize.typing = typing  # type: ignore[attr-defined]


def _fixed_batch(program: Any, name: str) -> int | None:
    """The batch of idx when the export fixed it, refused when it is not one the evaluator can score with."""
    value = next((n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name == name), None)
    shape = getattr(value, "shape", None)
    if shape is None or len(shape) != 2:
        raise BadModel("the model's input is not idx of shape (batch, MAX_SEQ_LEN); hand it over with save_model")
    batch = shape[0]
    if not isinstance(batch, int):
        return None
    if not 1 <= batch <= EVAL_MAX_BATCH:
        raise BadModel(f"the model was exported for a batch of {batch} rows; hand it over with save_model")
    return batch


def _writes_to_state(graph: Any) -> bool:
    """Whether an in-place operation writes to a parameter, buffer or input, or to a view of one."""
    state = {node for node in graph.nodes if node.op == "placeholder"}
    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for arg, value in zip(schema.arguments, node.args, strict=False):
            if arg.alias_info is not None and arg.alias_info.is_write and value in state:
                return True
        returns_alias = any(ret.alias_info is not None for ret in schema.returns)
        if returns_alias and any(a in state for a in node.args if hasattr(a, "op")):
            state.add(node)  # a view of the model's state: writing to it writes to the state
    return False


def check_contract(
    model: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, vocab: int, device, batch: int = 2
) -> None:
    """Logits of the right shape and type; a row's logits independent of the other rows of its batch; and
    causal: changing the future of a row must not change the logits before it (probed at random cut points,
    with real text, so that a model cannot tell a probe from the evaluation). Every call is `batch` rows."""
    n = math.ceil(max(CAUSALITY_PROBES, batch) / batch) * batch
    x = rows[:n, :-1]
    while len(x) < n:  # a tiny split: more rows from the first ones, shifted
        x = torch.cat([x, (x.roll(prepare.MAX_SEQ_LEN // 3, dims=1) + 1) % vocab])
    donors = rows[n : n + batch - 1, :-1]  # other real rows; in a tiny split, the batch's own rows changed
    donors = donors if len(donors) == batch - 1 else (x[1:batch] + vocab // 2) % vocab
    x, donors = x[:n].to(device), donors.to(device)
    logits = _forward(model, x, batch, vocab)
    if batch > 1:  # row 0 with other rows beside it: its logits must not move
        mixed = torch.cat([x[:1], donors])
        beside = _forward(model, mixed, batch, vocab)[:1]
        if not _close(beside, logits[:1]):
            raise BadModel(f"a row's logits change with the other rows of its batch ({_moved(beside, logits[:1])}"
                           "); rows must be independent")  # fmt: skip
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
    cuts = [int(rng.integers(1, prepare.MAX_SEQ_LEN)) for _ in range(n)]
    changed = x.clone()  # each row's future replaced by another row's
    for i, cut in enumerate(cuts):
        changed[i, cut:] = x[(i + 1) % n, cut:]
        if torch.equal(changed[i], x[i]):
            changed[i, cut:] = (changed[i, cut:] + 1) % vocab
    after = _forward(model, changed, batch, vocab)
    for i, cut in enumerate(cuts):
        if not _close(after[i, :cut], logits[i, :cut]):
            raise BadModel(f"the logits at position {cut - 1} depend on later tokens (they moved "
                           f"{_moved(after[i, :cut], logits[i, :cut])}); the model must be causal")  # fmt: skip


def _forward(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int, vocab: int) -> torch.Tensor:
    """The model's logits for x as float32, `batch` rows a call, each call's output checked for shape and
    finiteness."""
    out = []
    for i in range(0, len(x), batch):
        logits = model(x[i : i + batch])
        want = (batch, prepare.MAX_SEQ_LEN, vocab)
        if isinstance(logits, torch.Tensor) and logits.is_floating_point() and not _finite(logits):
            raise BadModel("the model's logits are not finite (NaN or inf); check the training for divergence")
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != want or not logits.is_floating_point():
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise BadModel(f"model(idx) must return float logits of shape {want}; it returned {got}")
        out.append(logits.float())
    return torch.cat(out)


def _finite(logits: torch.Tensor) -> bool:
    """torch.isfinite(logits).all() in one pass without a mask: min and max are NaN when any element is."""
    if logits.numel() == 0:  # nothing to check: the shape check says what is wrong
        return True
    low, high = torch.aminmax(logits.detach())
    return bool(torch.isfinite(low) & torch.isfinite(high))


def _close(got: torch.Tensor, want: torch.Tensor, tol: float = 1e-4) -> bool:
    """torch.allclose(got, want, atol=tol, rtol=tol) for a finite `want` of the same shape, in a third of its
    time: |got - want| <= tol + tol |want| everywhere; a NaN or inf in `got` fails the comparison."""
    if not isinstance(got, torch.Tensor) or got.shape != want.shape:
        return False
    error = (got.float() - want).abs_()
    return bool((error <= want.abs().mul_(tol).add_(tol)).all())


def _moved(got: torch.Tensor, want: torch.Tensor) -> str:
    """How far logits moved that must not have: the evidence a refusal names, so that a false refusal can be
    told from a real one by its figures."""
    error = (got.float() - want).abs()
    worst = int(error.argmax())
    position = worst // want.size(-1) % want.size(-2) if want.dim() > 1 else worst
    return f"by up to {float(error.max()):.3g} at position {position} (tolerance 1e-4 + 1e-4 |logit|)"


def eval_autocast(device: torch.device) -> Any:
    """bfloat16 autocast where the hardware has it (CUDA, CPUs with AMX or AVX512-BF16), as training does;
    float32 elsewhere. Fixed per machine, so every run of a night is scored alike."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    fast_cpu = device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in checks)
    if device.type == "cuda" or fast_cpu:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


EVAL_CPU_ISA = "AVX512_CORE_BF16"  # oneDNN's ceiling for the evaluator's kernels on a CPU with AMX


def pin_cpu_kernels() -> str | None:
    """On a CPU with AMX, cap oneDNN (and torch's own brgemm kernels, which ask oneDNN) at AVX512-BF16 in the
    evaluator's process: the same bfloat16 arithmetic, through the kernels whose rows are checked exact on
    AVX512-BF16 CPUs (tests/test_evaluate.py). On an AMX CPU, honest models with 16-channel heads were refused
    as mixing rows; the AMX kernels of the oneDNN in torch 2.13 (3.12) read a K tail past a row's valid
    columns and rely on padding to cancel it, a path upstream found leaking in 2026 (oneDNN issue 5717).
    Runs before the process's first kernel. The ceiling in force, or None on a CPU without AMX; a ceiling
    the human set in ONEDNN_MAX_CPU_ISA is kept."""
    if not getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return None
    return os.environ.setdefault("ONEDNN_MAX_CPU_ISA", EVAL_CPU_ISA)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters


def keep_freed_memory() -> bool:
    """Keep freed memory in the process for its next tensors. glibc gives a block of 32 MiB or more back to
    the system when it is freed, and a CPU evaluation's logits are 32 MiB a batch (2 x 512 x 8192 float32):
    depending on what ran before, every batch's tensors then came back as fresh pages, 580K page faults and a
    third more time in one scoring of the default model. The evaluator lives for one model: nothing is lost.
    False where the C library has no mallopt (not glibc)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, 1 << 30))


def wait_for(go_file: Path) -> bool:
    """A warm evaluator (started with the run, imports done) waits for the server's word: True to score
    the model, False when the run earned no evaluation."""
    while not go_file.exists():
        time.sleep(0.02)
    return go_file.read_text().strip() == "go"


def evaluate_main(
    model_path: Path, result_path: Path, split: str, go_file: Path | None = None, holdout_word: Path | None = None
) -> int:
    """Score a handed-over model and write {"status", "bpb" | "reason", ...} to result_path. With holdout_word,
    a model scored well then waits for a second word: "go" scores the holdout split too, with the model already
    loaded and checked, into holdout.json beside the result (the server asks when the run may be kept)."""
    kernels = pin_cpu_kernels()  # before any kernel runs
    import torch.export.pt2_archive._package  # noqa: F401  # the loader's imports, done before the wait

    kept = keep_freed_memory()
    eval_tokens = int(os.environ.get("AUTORESEARCH_EVAL_TOKENS", EVAL_TOKENS))
    meta, device = prepare.load_meta(), prepare.get_device()
    batch_size = prepare.eval_batch_size(device)
    rows = eval_rows(split, eval_tokens)
    gc.freeze()  # what is loaded so far lives to the end: the collections while scoring need not walk it
    if go_file is not None and not wait_for(go_file):
        return 0
    laps = [time.time()]  # the go, then the end of each stage: load, contract check, scoring
    model = None
    try:
        program = load_program(model_path)
        model, fixed = as_module(program)
        batch_size = fixed or batch_size
        laps.append(time.time())
        with eval_autocast(device):  # the model as it is scored: a model must not be causal in one precision only
            check_contract(model, rows, int(meta["vocab_size"]), device, batch_size)
        prove_causal(program)
        laps.append(time.time())
        bpb = score(model, batch_size, rows, device, fixed is not None)
        laps.append(time.time())
        scored = min(eval_tokens, len(prepare.load_split(prepare.dataset_dir(), split)))
        stages = dict(zip(("load", "check", "score"), np.diff(laps).round(3).tolist(), strict=True))
        result = {"status": "ok", "bpb": bpb, "tokens": scored, "stage_seconds": stages}
    except BadModel as exc:
        result = {"status": "bad_model", "reason": str(exc)}
    except Exception as exc:  # the graph failed to load or to run: the model's fault, said in one line
        result = {"status": "bad_model", "reason": f"the model failed to load or run: {prepare.export_reason(exc)}"}
    result.update(split=split, eval_seconds=round(time.time() - laps[0], 3), device=str(prepare.get_device()),
                  freed_memory_kept=kept, cpu_kernels_capped_at=kernels)  # fmt: skip
    prepare.atomic_write_json(result_path, result)
    print(json.dumps(result), flush=True)
    if result["status"] == "ok" and holdout_word is not None and wait_for(holdout_word):
        started = time.time()
        holdout = {"status": "ok", "split": "holdout", "device": str(prepare.get_device())}
        try:
            holdout["bpb"] = score(model, batch_size, eval_rows("holdout", eval_tokens), device, fixed is not None)
        except Exception as exc:  # scored well on val, so only the data can fail: say so
            holdout = {"status": "bad_model", "split": "holdout", "reason": prepare.export_reason(exc)}
        holdout.update(stage_seconds={"score": round(time.time() - started, 3)})
        prepare.atomic_write_json(result_path.with_name("holdout.json"), holdout)
    return 0


def score(model: Callable[[torch.Tensor], torch.Tensor], batch: int, rows: torch.Tensor, device, pad: bool) -> float:
    """evaluate_bpb under the machine's evaluation autocast."""
    with eval_autocast(device):
        return evaluate_bpb(model, batch, rows, device, pad=pad)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Score a handed-over model (the server runs this).")
    p.add_argument("model", type=Path, help="the handed-over model (model.pt2)")
    p.add_argument("--result", type=Path, default=Path("result.json"), help="where the result goes")
    p.add_argument("--split", default="val", help="the split to score")
    p.add_argument("--wait-for", type=Path, metavar="FILE", help="start warm, score once FILE says go")
    p.add_argument(
        "--holdout-word", type=Path, metavar="FILE", help="(with --wait-for) then the holdout if FILE says go"
    )
    args = p.parse_args(argv)
    return evaluate_main(args.model, args.result, args.split, args.wait_for, args.holdout_word)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()  # the server waits for the evaluator's exit: skip torch's ~0.6 s teardown
    sys.stderr.flush()
    os._exit(code)
