"""Benchmark: how often the locked evaluator refuses an honest trained model (target: 0 of at least 200).

Honest models are trained by the project's experiment/train.py as shipped and with ordinary edits of its
constants (depth, width, head size, batch, learning rates, schedule, soft cap), the tiny model and the
default CPU model, each with a seed of its own, on a byte-level dataset of this project's own text. Each
model is then scored by the locked experiment/evaluate.py, which runs every contract check before it scores
(the loader, the batch-independence and causality probes, the structural causality proof), in every
combination of:

    evaluator   cold (`python evaluate.py MODEL`) or warm (`--wait-for`: imports done, then the word)
    machine     quiet, or with a CPU hog on every core beside it
    precision   this CPU's own path (float32 where it has no bfloat16 instructions), or bfloat16 autocast
                forced on (the path of CPUs with AVX512-BF16 or AMX and of CUDA; emulated where the CPU
                lacks it: the same autocast arithmetic through other kernels)

A refusal is any result other than status "ok"; each is listed with its reason.

    .venv/bin/python bench/false_refusal.py [--tiny 20] [--default 5] [--budget 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from labrepo import PYTHON, base_env, tiny_dataset
from report import summarize

ROOT = Path(__file__).resolve().parents[1]
EDITS = {  # constant: values an honest search would try (train.py's own line is replaced)
    "DEPTH": ["1", "2", "3"],
    "WIDTH": ["32", "64"],
    "HEAD_DIM": ["16", "32"],
    "BATCH_SIZE": ["2", "4"],
    "MATRIX_LR": ["0.01", "0.04"],
    "EMBEDDING_LR": ["0.1", "0.6"],
    "WARMDOWN_RATIO": ["0.2", "0.8"],
    "LOGIT_SOFTCAP": ["10.0", "30.0"],
}
FORCE_BF16 = (
    "import runpy, sys, torch; torch.cpu._is_avx512_bf16_supported = lambda: True; "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def variant(rng: random.Random, tiny: bool, index: int) -> dict[str, str]:
    """The shipped file for the first of each size, then two or three edits of its constants."""
    if index == 0:
        return {}
    names = [n for n in EDITS if tiny or n not in ("DEPTH", "WIDTH", "HEAD_DIM", "BATCH_SIZE")]
    chosen = {name: rng.choice(EDITS[name]) for name in rng.sample(names, rng.randint(2, 3))}
    if int(chosen.get("WIDTH", "32")) % int(chosen.get("HEAD_DIM", "16")):
        chosen.pop("HEAD_DIM")
    return chosen


def edited(folder: Path, edits: dict[str, str]) -> None:
    text = (folder / "train.py").read_text()
    for name, value in edits.items():  # the size constants read TINY first: an edit pins the value for both
        text, count = re.subn(rf"^{name} = .*$", f"{name} = {value}", text, count=1, flags=re.M)
        assert count == 1, name
    (folder / "train.py").write_text(text)


def train(work: Path, data_env: dict[str, str], name: str, edits: dict[str, str], tiny: bool, seed: int,
          budget: float) -> tuple[Path | None, str]:  # fmt: skip
    folder = work / name
    shutil.copytree(ROOT / "experiment", folder, ignore=shutil.ignore_patterns("__pycache__", "output"))
    edited(folder, edits)
    env = {**base_env(), **data_env, "AUTORESEARCH_TIME_BUDGET": f"{budget:g}", "AUTORESEARCH_SEED": str(seed),
           "AUTORESEARCH_OUTPUT": str(folder / "out"), "AUTORESEARCH_DEVICE": "cpu",
           "AUTORESEARCH_MODEL_SIZE": "tiny" if tiny else ""}  # fmt: skip
    done = subprocess.run([PYTHON, "train.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    model = folder / "out" / "model.pt2"
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return (model if done.returncode == 0 and model.is_file() else None), tail[0]


def evaluate(folder: Path, model: Path, data_env: dict[str, str], warm: bool, bf16: bool, tag: str,
             eval_tokens: int) -> dict[str, Any]:  # fmt: skip
    result, word = folder / f"result-{tag}.json", folder / f"go-{tag}"
    argv = [PYTHON, "-c", FORCE_BF16, "evaluate.py"] if bf16 else [PYTHON, "evaluate.py"]
    argv += [str(model), "--result", str(result)] + (["--wait-for", str(word)] if warm else [])
    env = {**base_env(), **data_env, "AUTORESEARCH_DEVICE": "cpu", "AUTORESEARCH_EVAL_TOKENS": str(eval_tokens)}
    began = time.perf_counter()
    process = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if warm:
        time.sleep(3.0)  # its imports, as a warm evaluator's beside a run
        word.write_text("go")
    _, err = process.communicate(timeout=900)
    seconds = time.perf_counter() - began
    try:
        out = json.loads(result.read_text())
    except (OSError, ValueError):
        out = {"status": "no_result", "reason": err.decode(errors="replace").strip()[-300:]}
    return {"status": out.get("status"), "reason": out.get("reason"), "seconds": seconds, "bpb": out.get("bpb")}


class Hog:
    """Every core busy in processes of their own while it is on."""

    def __enter__(self) -> Hog:
        spin = "while True: pass"
        self.procs = [subprocess.Popen([PYTHON, "-c", spin]) for _ in range(os.cpu_count() or 1)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=int, default=20, help="tiny models trained")
    parser.add_argument("--default", type=int, default=5, help="default-size CPU models trained")
    parser.add_argument("--budget", type=float, default=3.0, help="training seconds per model")
    parser.add_argument("--eval-tokens", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "false_refusal.json")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="bench-false-refusal-"))
    try:
        data_env = tiny_dataset(work / "data")
        models, failed = [], []
        plan = [(True, i) for i in range(args.tiny)] + [(False, i) for i in range(args.default)]
        for n, (tiny, index) in enumerate(plan):
            edits = variant(rng, tiny, index)
            name = f"{'tiny' if tiny else 'default'}-{index}"
            model, last = train(work, data_env, name, edits, tiny, 1000 + n, args.budget)
            print(f"[false_refusal] trained {name} {edits}: {'ok' if model else 'FAILED ' + last}", file=sys.stderr)
            (models if model else failed).append({"name": name, "edits": edits, "model": model, "last": last})
        rows = []
        for bf16, hog, warm in itertools.product([False, True], [False, True], [False, True]):
            with Hog() if hog else _Quiet():
                for entry in models:
                    tag = f"{'bf16' if bf16 else 'native'}-{'hog' if hog else 'quiet'}-{'warm' if warm else 'cold'}"
                    got = evaluate(work / entry["name"], entry["model"], data_env, warm, bf16, tag, args.eval_tokens)
                    rows.append({"model": entry["name"], "edits": entry["edits"], "condition": tag, **got})
                    if got["status"] != "ok":
                        print(f"[false_refusal] REFUSED {entry['name']} {tag}: {got['reason']}", file=sys.stderr)
            print(f"[false_refusal] {tag.rsplit('-', 1)[0]}: {len(rows)} evaluations so far", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    refused = [r for r in rows if r["status"] != "ok"]
    by_condition = {c: {"evaluations": sum(r["condition"] == c for r in rows),
                        "refused": sum(r["condition"] == c and r["status"] != "ok" for r in rows),
                        "seconds": summarize([r["seconds"] for r in rows if r["condition"] == c])}
                    for c in dict.fromkeys(r["condition"] for r in rows)}  # fmt: skip
    results = {"models": len(models), "models_failed_to_train": [{k: v for k, v in f.items() if k != "model"}
               for f in failed], "evaluations": len(rows), "refused": len(refused), "refusals": refused,
               "by_condition": by_condition, "cpu": platform.processor() or platform.machine(),
               "load_average": os.getloadavg(), "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(f"{len(refused)} of {len(rows)} evaluations of {len(models)} honest trained models refused")
    for condition, figures in by_condition.items():
        print(f"  {condition}: {figures['refused']} of {figures['evaluations']} refused, "
              f"median {figures['seconds']['median']:.1f} s")  # fmt: skip
    return 0


class _Quiet:
    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


if __name__ == "__main__":
    sys.exit(main())
