"""Helpers shared by the benchmarks: preparing data, running train.py and the evaluator for real, statistics."""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from server.run.summary import as_float, parse_summary

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = ROOT / "experiment"
QUICK_TEXT = "When shall we three meet again, in thunder, lightning, or in rain? " * 400


def load_prepare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("prepare", EXPERIMENT / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_dataset(args: list[str], cache: str | None = None) -> None:
    """Run `autoresearch prepare` (server.dataset) in a subprocess (idempotent: a prepared dataset is left alone)."""
    env = {**os.environ, **({"AUTORESEARCH_CACHE": cache} if cache else {})}
    subprocess.run([sys.executable, "-m", "server.dataset", *args], cwd=ROOT, env=env, check=True)


def quick_dataset() -> dict[str, str]:
    """A tiny byte-level dataset in a fresh temporary cache; returns the env vars that select it."""
    root = Path(tempfile.mkdtemp(prefix="autoresearch-bench-"))
    (root / "corpus.txt").write_text(QUICK_TEXT, encoding="utf-8")
    cache = str(root / "cache")
    prepare_dataset(
        ["--source", "files", "--paths", str(root / "corpus.txt"), "--byte-level", "--name", "quick"], cache
    )
    return {"AUTORESEARCH_CACHE": cache, "AUTORESEARCH_DATASET": "quick", "AUTORESEARCH_MODEL_SIZE": "tiny"}


def number(summary: dict[str, str], key: str) -> float:
    """A figure from a summary block read by the server's own parser (server.run.summary), or a clear stop."""
    value = as_float(summary, key)
    if value is None:
        raise SystemExit(f"train.py's summary has no number for {key!r}: {summary}")
    return value


def run_train(budget: float, extra_env: dict[str, str]) -> dict[str, str]:
    """train.py's summary, with the val_bpb the locked evaluator gives its handed-over model (run by hand,
    as the server's evaluator would, minus the sandbox)."""
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        env = {**os.environ, **extra_env, "AUTORESEARCH_TIME_BUDGET": str(budget), "AUTORESEARCH_OUTPUT": tmp}
        print(f"[bench] train.py with a {budget:g}s budget ...", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, str(EXPERIMENT / "train.py")], env=env, capture_output=True,
                                text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        summary = parse_summary(result.stdout)
        scored = Path(tmp) / "result.json"
        evaluate = [sys.executable, str(EXPERIMENT / "evaluate.py"), str(Path(tmp) / "model.pt2"),
                    "--result", str(scored)]  # fmt: skip
        if result.returncode == 0:
            subprocess.run(evaluate, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        bpb = json.loads(scored.read_text()).get("bpb") if scored.exists() else None
        if result.returncode != 0 or bpb is None:
            raise SystemExit(f"train.py failed ({result.returncode}):\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return {**summary, "val_bpb": f"{bpb:.6f}"}


def stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def fmt(s: dict[str, float], digits: int = 3) -> str:
    if s["n"] == 1:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def write_json(path: str, data: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
    print(f"[bench] wrote {path}", file=sys.stderr)
