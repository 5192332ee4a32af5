"""Benchmark: the structural causality check (experiment/causal.py) against honest models and sparse peeks.

Two families of models, exported as prepare.save_model exports them and loaded as the evaluator loads them:

    honest    train.py's own GPT at random sizes (depth, width, head size, vocabulary, export batch), and
              the other causal forms the check accepts (attention masked by masked_fill, an additive mask or
              where; sdpa with is_causal or a causal bool mask; scores zeroed above the diagonal; causal
              convolutions; cumulative means; the previous token)
    hostile   models that read later tokens at a fraction of positions only: one position in k (k from 2 to
              512), only after one particular token, only in some rows, k tokens ahead, through a slice, a
              roll, a rotating cat, a gather, an index, a right-padded convolution, unmasked attention, or a
              mask that opens one later key

For each model: whether the structural check refuses it, whether one draw of the evaluator's random probes
(check_contract, 4 probe rows) refuses it, and the check's time. Targets: 0 honest models refused, every
hostile one refused.

    .venv/bin/python bench/causality.py [--honest 200] [--hostile 240] [--out bench/causality.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiment"))
os.environ.setdefault("AUTORESEARCH_DEVICE", "cpu")

import causal  # noqa: E402
import evaluate  # noqa: E402
import prepare  # noqa: E402

T = prepare.MAX_SEQ_LEN


def exported(model: torch.nn.Module, batch: int) -> Any:
    with torch.no_grad():
        program = torch.export.export(model.eval(), (torch.zeros((batch, T), dtype=torch.long),))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    return torch.export.load(buffer)


class Net(torch.nn.Module):
    def __init__(self, vocab: int, width: int, body: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.vocab, self.width = vocab, width
        self.emb, self.head = torch.nn.Embedding(vocab, width), torch.nn.Linear(width, vocab)
        self.qkv, self.conv = torch.nn.Linear(width, 3 * width), torch.nn.Conv1d(width, width, 4)
        self.register_buffer("tril", torch.tril(torch.ones(T, T)))
        self.body = body

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.body(self, idx, self.emb(idx))


def attend(n: Net, x: torch.Tensor, mask: str) -> torch.Tensor:
    q, k, v = n.qkv(x).split(n.width, dim=-1)
    s = q @ k.transpose(-2, -1) / n.width**0.5
    if mask == "masked_fill":
        s = s.masked_fill(n.tril[:T, :T] == 0, float("-inf"))
    elif mask == "additive":
        s = s + torch.full((T, T), float("-inf")).triu(1)
    elif mask == "where":
        s = torch.where(n.tril[:T, :T].bool(), s, torch.tensor(float("-inf")))
    elif mask.startswith("open"):
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1 + int(mask[4:] or 0)), float("-inf"))
    return F.softmax(s, dim=-1) @ v


def sdpa(n: Net, x: torch.Tensor, **kw: Any) -> torch.Tensor:
    b, h = x.size(0), 2
    q, k, v = n.qkv(x).view(b, T, 3, h, n.width // h).permute(2, 0, 3, 1, 4).unbind(0)
    return F.scaled_dot_product_attention(q, k, v, **kw).transpose(1, 2).reshape(b, T, n.width)


HONEST_FORMS: dict[str, Callable[..., torch.Tensor]] = {
    "masked_fill attention": lambda n, idx, x: n.head(attend(n, x, "masked_fill")),
    "additive-mask attention": lambda n, idx, x: n.head(attend(n, x, "additive")),
    "where attention": lambda n, idx, x: n.head(attend(n, x, "where")),
    "sdpa is_causal": lambda n, idx, x: n.head(sdpa(n, x, is_causal=True)),
    "sdpa causal bool mask": lambda n, idx, x: n.head(sdpa(n, x, attn_mask=torch.ones(T, T, dtype=torch.bool).tril())),
    "zeroed linear attention": lambda n, idx, x: n.head(
        (lambda q, k, v: (q @ k.transpose(-2, -1)).tril() @ v)(*n.qkv(x).split(n.width, dim=-1))
    ),
    "causal convolution": lambda n, idx, x: n.head(n.conv(F.pad(x.transpose(1, 2), (3, 0))).transpose(1, 2)),
    "cumulative mean": lambda n, idx, x: n.head(x.cumsum(1) / torch.arange(1, T + 1)[None, :, None]),
    "previous token": lambda n, idx, x: n.head(x + n.emb(F.pad(idx[:, :-1], (1, 0)))),
}


def honest_models(count: int, rng: random.Random) -> list[tuple[str, torch.nn.Module, int]]:
    import train  # the agent's file as shipped: its GPT at random sizes

    models: list[tuple[str, torch.nn.Module, int]] = []
    while len(models) < count:
        batch = rng.choice([1, 2, 4, 8])
        if len(models) % 2 == 0:
            depth, head = rng.randint(1, 3), rng.choice([16, 32])
            width, vocab = head * rng.choice([1, 2, 4]), rng.choice([96, 512, 2048])
            models.append((f"GPT depth {depth} width {width} head {head} vocab {vocab}",
                           train.GPT(vocab, depth, width, head), batch))  # fmt: skip
        else:
            form = rng.choice(list(HONEST_FORMS))
            width, vocab = rng.choice([16, 32, 64]), rng.choice([96, 512])
            models.append((f"{form} width {width} vocab {vocab}", Net(vocab, width, HONEST_FORMS[form]), batch))
    return models


def hostile_models(count: int, rng: random.Random) -> list[tuple[str, torch.nn.Module, int]]:
    models: list[tuple[str, torch.nn.Module, int]] = []
    while len(models) < count:
        vocab, width, batch = rng.choice([96, 512]), rng.choice([16, 32]), rng.choice([1, 2, 4])
        every, token, dist = rng.choice([2, 4, 16, 32, 64, 128, 256, 512]), rng.randrange(vocab), rng.choice([1, 2, 8])
        offset = rng.randrange(every)
        gate = rng.choice(["position", "token", "row"])
        how = rng.choice(["slice", "roll", "cat", "gather", "index", "conv", "attention", "open mask", "sdpa"])

        def body(n: Net, idx: torch.Tensor, x: torch.Tensor, how: str = how, gate: str = gate, every: int = every,
                 offset: int = offset, token: int = token, dist: int = dist) -> torch.Tensor:  # fmt: skip
            if gate == "position":
                g = (torch.arange(T) % every == offset).float()[None, :, None]
            elif gate == "token":
                g = (idx == token).float()[..., None]
            else:
                g = (torch.arange(idx.size(0)) == idx.size(0) - 1).float()[:, None, None]
            if how == "slice":
                later = F.pad(idx[:, dist:], (0, dist))
            elif how == "roll":
                later = idx.roll(-dist, 1)
            elif how == "cat":
                later = torch.cat([idx[:, dist:], idx[:, :dist]], 1)
            elif how == "gather":
                later = idx.gather(1, ((torch.arange(T) + dist) % T)[None, :].expand(idx.size(0), T))
            elif how == "index":
                later = idx[:, (torch.arange(T) + dist).clamp(max=T - 1)]
            else:
                if how == "conv":
                    mixed = n.conv(F.pad(x.transpose(1, 2), (0, 3))).transpose(1, 2)
                elif how == "attention":
                    mixed = attend(n, x, "none")
                elif how == "open mask":
                    mixed = attend(n, x, f"open{dist}")  # keys t+1 .. t+dist open
                else:
                    mixed = sdpa(n, x, is_causal=False)
                return n.head(x + g * mixed)
            return n.head(x) + 8.0 * g * F.one_hot(later, n.vocab).float()

        models.append((f"{how}, {gate} (1 in {every}, token {token}, {dist} ahead)", Net(vocab, width, body), batch))
    return models


def probes_refuse(model: torch.nn.Module, vocab: int, batch: int, rng: random.Random) -> bool:
    """One draw of the evaluator's random probes on real-looking rows (random tokens)."""
    rows = torch.randint(0, vocab, (max(evaluate.CAUSALITY_PROBES, batch) + batch, T + 1),
                         generator=torch.Generator().manual_seed(rng.randrange(2**31)))  # fmt: skip
    try:
        with torch.no_grad():
            evaluate.check_contract(model, rows, vocab, torch.device("cpu"), batch)
    except evaluate.BadModel:
        return True
    return False


def measure(models: list[tuple[str, torch.nn.Module, int]], rng: random.Random, probes: bool) -> list[dict[str, Any]]:
    rows = []
    for name, model, batch in models:
        program = exported(model, batch)
        started = time.perf_counter()
        try:
            causal.check(program)
            refused, reason = False, None
        except causal.NotCausal as exc:
            refused, reason = True, str(exc)[:200]
        seconds = time.perf_counter() - started
        vocab = getattr(model, "vocab", None) or model.lm_head.out_features  # type: ignore[union-attr]
        row = {"model": name, "refused": refused, "reason": reason, "check_ms": round(1000 * seconds, 2),
               "nodes": len(program.graph.nodes)}  # fmt: skip
        if probes:
            row["probes_refused"] = probes_refuse(model, vocab, batch, rng)
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--honest", type=int, default=200)
    p.add_argument("--hostile", type=int, default=240)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "causality.json")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    started = time.time()
    honest = measure(honest_models(args.honest, rng), rng, probes=False)
    hostile = measure(hostile_models(args.hostile, rng), rng, probes=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    ms = [r["check_ms"] for r in honest + hostile]
    gpt = [r["check_ms"] for r in honest if r["model"].startswith("GPT")]
    result = {
        "command": f"python bench/causality.py --honest {args.honest} --hostile {args.hostile} --seed {args.seed}",
        "commit": commit.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seconds": round(time.time() - started, 1),
        "honest": len(honest),
        "honest_refused": [r for r in honest if r["refused"]],
        "hostile": len(hostile),
        "hostile_refused_by_check": sum(r["refused"] for r in hostile),
        "hostile_refused_by_probes": sum(r["probes_refused"] for r in hostile),
        "hostile_missed": [r for r in hostile if not r["refused"]],
        "check_ms_median": round(statistics.median(ms), 2),
        "check_ms_max": max(ms),
        "check_ms_gpt_median": round(statistics.median(gpt), 2) if gpt else None,
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "## The structural causality check: honest models and sparse peeks",
        "",
        f"Written by `{result['command']}` in {result['seconds']} s at commit `{result['commit']}` "
        f"({result['machine']}).",
        "",
        "| family | models | refused by the structural check | refused by one draw of the random probes |",
        "|---|---|---|---|",
        f"| honest (train.py's GPT at random sizes, other causal forms) | {len(honest)} | "
        f"**{len(result['honest_refused'])}** | not run |",
        f"| hostile (sparse, token- and row-keyed peeks; 9 ways to look ahead) | {len(hostile)} | "
        f"**{result['hostile_refused_by_check']}** | {result['hostile_refused_by_probes']} |",
        "",
        f"The check's time per model: median {result['check_ms_median']} ms, most {result['check_ms_max']} ms "
        f"(train.py's GPT: median {result['check_ms_gpt_median']} ms); it runs once per evaluation, on the graph, "
        "without a forward pass.",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
