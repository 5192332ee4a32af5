"""The GPU check's figures in one JSON file: the default experiment run through the real server over stdio
MCP (twice: the second start-up should hit the compile cache), then a short `autoresearch demo`.

    python bench/gpu.py --out bench/gpu.json              # on the GPU machine (scripts/gpu_check.sh runs it)
    python bench/gpu.py --cpu --out /tmp/gpu.json         # CPU fallback: the same path, a tiny model, 1 s runs

Figures per run come from the server's own record (get_history's detail): MFU, tokens/s and peak memory from
the run's summary, time from process start to timed training from the server's clock, epochs. Loop
efficiency is timed training over the wall time of the whole sequence of tool calls. With --cpu the JSON says
`"gpu_figures": false`: those numbers only prove the path works, they are not GPU figures.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from labrepo import PYTHON, ROOT, base_env, git, real_repo, tiny_dataset
from mcp import Client
from report import git_state
from session import checked, decide

from server.run.summary import as_float

LIMIT_S = 480  # the whole check must fit a few minutes of a lent GPU machine
OFFLINE_DATASET = "shakespeare-bpe8192"  # the GPU machine has no network: the offline corpus
DEMO_FILES = ("experiment", "autoresearch.toml", "program.md", ".mcp.json")


def log(message: str) -> None:
    print(f"[gpu] {message}", file=sys.stderr, flush=True)


def run_figures(record: dict[str, Any]) -> dict[str, Any]:
    """One run's figures from its RunRecord (as get_history returns it)."""
    summary = record.get("summary", {})
    training, tokens_m = as_float(summary, "training_seconds"), as_float(summary, "total_tokens_M")
    return {
        "run_id": record["id"], "status": record["status"], "val_bpb": record.get("metric"),
        "mfu_percent": as_float(summary, "mfu_percent"),
        "tokens_per_s": round(tokens_m * 1e6 / training) if tokens_m and training else None,
        "startup_s": record.get("timing", {}).get("startup"), "training_s": record.get("training_seconds"),
        "wall_s": record.get("wall_seconds"), "peak_memory_mb": as_float(summary, "peak_memory_mb"),
        "gpu_memory_gb": record.get("gpu_memory_gb"), "epochs": record.get("epochs"), "flags": record.get("flags", []),
    }  # fmt: skip


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def figures(records: list[dict[str, Any]], loop_wall_s: float) -> dict[str, Any]:
    """The check's headline figures from the records of its runs and the wall time of their tool calls."""
    runs = [run_figures(r) for r in records]
    training = sum(r["training_s"] or 0.0 for r in runs)
    startup = [r["startup_s"] for r in runs]
    return {
        "runs": runs,
        "mfu_percent": _median([r["mfu_percent"] for r in runs]),
        "tokens_per_s": _median([r["tokens_per_s"] for r in runs]),
        "startup_first_s": startup[0] if startup else None,
        "startup_second_s": startup[1] if len(startup) > 1 else None,  # the compile cache is warm by then
        "loop_efficiency_percent": round(100 * training / loop_wall_s, 2) if loop_wall_s > 0 else None,
        "peak_memory_mb": max((r["peak_memory_mb"] for r in runs if r["peak_memory_mb"] is not None), default=None),
    }


async def server_runs(repo_params: Any, runs: int) -> tuple[list[dict[str, Any]], float]:
    """`runs` experiments of the unchanged train.py over stdio MCP, each decided as an agent would; their
    records, and the wall time from the first call to the last decision."""
    records = []
    async with Client(repo_params) as client:
        started = time.time()
        for i in range(1, runs + 1):
            again = {"duplicate_reason": "the check re-measures the unchanged train.py"} if i > 1 else {}
            run = await checked(client, "run_experiment", description=f"gpu check {i}", **again)
            log(f"run {i}: {run.data.get('status')} in {run.seconds:.1f}s")
            await decide(client, run)
            detail = await checked(client, "get_history", run_id=run.data["run_id"])
            records.append(detail.data["detail"]["run"])
        return records, time.time() - started


def demo(work: Path, env: dict[str, str], experiments: int, budget: float) -> dict[str, Any]:
    """`autoresearch demo` in a fresh repository holding the project's experiment (the device's copy of the
    project need not be a git repository)."""
    repo = work / "demo"
    repo.mkdir(parents=True)
    for name in DEMO_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy(source, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "demo")
    argv = [PYTHON, "-m", "server", "demo", "--experiments", str(experiments), "--budget", f"{budget:g}"]
    started = time.time()
    done = subprocess.run(argv, cwd=repo, env={**base_env(), **env}, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    result = {"exit_code": done.returncode, "seconds": round(time.time() - started, 1), "experiments": experiments}
    if done.returncode != 0:
        result["tail"] = (done.stdout + done.stderr)[-2000:]
    return result


def set_constants(source: str, settings: list[str]) -> str:
    """train.py with top-level constants replaced (`BATCH_SIZE=128`): candidate GPU settings are measured by
    the check on its own copy, never changed blind in the project's train.py."""
    for setting in settings:
        name, _, value = setting.partition("=")
        pattern = re.compile(rf"^{re.escape(name)} = .*$", re.MULTILINE)
        if not name.isidentifier() or not value or len(pattern.findall(source)) != 1:
            raise SystemExit(f"--set {setting}: train.py has no single top-level constant {name!r} to set")
        line = f"{name} = {value}  # set by the GPU check"
        source = pattern.sub(lambda _, line=line: line, source)  # a function: no escapes in the value
    return source


def data_env(cpu: bool, work: Path) -> dict[str, str]:
    """The dataset every run uses: a tiny byte-level one on the CPU path, else Shakespeare (offline)."""
    if cpu:
        return {**tiny_dataset(work / "data"), "AUTORESEARCH_MODEL_SIZE": "tiny", "AUTORESEARCH_DEVICE": "cpu"}
    subprocess.run([PYTHON, "-m", "server.dataset", "--source", "shakespeare"], cwd=ROOT, env=base_env(),
                   check=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return {"AUTORESEARCH_DATASET": OFFLINE_DATASET}


def cuda_device() -> str | None:
    """The CUDA device's name as the runs' torch sees it, or None."""
    probe = "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    done = subprocess.run([PYTHON, "-c", probe], capture_output=True, text=True, env=base_env())
    return done.stdout.strip() or None


def check(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        env = data_env(args.cpu, work)
        repo = real_repo(work / "repo", env, args.budget, tiny=args.cpu, eval_tokens=args.eval_tokens,
                         device="cpu" if args.cpu else None)  # fmt: skip
        if args.set:
            train = repo.path / "experiment" / "train.py"
            train.write_text(set_constants(train.read_text(), args.set))
            git(repo.path, "commit", "-qam", "gpu check settings")
        records, loop_wall = anyio.run(server_runs, repo.server_params(), args.runs)
        result = figures(records, loop_wall)
        shown = demo(work, env, args.demo_experiments, args.demo_budget) if args.demo_experiments else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    commit, dirty = git_state(ROOT)
    seconds, gpu = round(time.time() - started, 1), cuda_device()
    on_gpu = gpu is not None and not args.cpu
    return {
        "gpu_figures": on_gpu,
        "note": "measured on the GPU named here" if on_gpu else "NOT GPU figures: a CPU run, to check the path only",
        "device": gpu if on_gpu else "cpu", "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "settings": {"budget_s": args.budget, "runs": args.runs, "eval_tokens": args.eval_tokens,
                     "demo_experiments": args.demo_experiments, "demo_budget_s": args.demo_budget,
                     "dataset": env.get("AUTORESEARCH_DATASET"), "train_py_settings": args.set},
        **result, "demo": shown, "seconds": seconds, "within_limit": seconds <= LIMIT_S,
    }  # fmt: skip


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "gpu.json")
    p.add_argument("--cpu", action="store_true", help="CPU fallback: tiny model, 1 s runs (not GPU figures)")
    p.add_argument("--budget", type=float, help="seconds of training per run (default 30; 1 with --cpu)")
    p.add_argument("--runs", type=int, default=2, help="server runs of the unchanged train.py (at least 2)")
    p.add_argument("--eval-tokens", type=int, default=2 * 524288, help="validation tokens scored per run")
    p.add_argument("--demo-experiments", type=int, default=2, help="demo runs incl. its baseline; 0 skips it")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="measure train.py with a constant changed, e.g. BATCH_SIZE=128 (repeatable)",
    )
    p.add_argument("--demo-budget", type=float, help="seconds of training per demo run (default 15; 1 with --cpu)")
    args = p.parse_args(argv)
    args.budget = args.budget or (1.0 if args.cpu else 30.0)
    args.demo_budget = args.demo_budget or (1.0 if args.cpu else 15.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = check(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log(
        f"wrote {args.out} in {result['seconds']:.0f}s: MFU {result['mfu_percent']}%, {result['tokens_per_s']} "
        f"tokens/s, start-up {result['startup_first_s']}s then {result['startup_second_s']}s, loop "
        f"{result['loop_efficiency_percent']}%{'' if result['gpu_figures'] else ' (not GPU figures)'}"
    )
    failed = [r for r in result["runs"] if r["status"] != "ok"] or (result["demo"] or {}).get("exit_code")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
