"""The benchmark suite, one command: what the loop costs and what it buys.

    python bench/run.py            # full: about 15-30 minutes on 2 CPU cores; writes bench/RESULTS.md
    python bench/run.py --quick    # tiny setting, for the smoke test; writes bench/out/quick/
    python bench/run.py --only overhead context --merge   # re-measure two parts, keep the others' figures
    python bench/run.py --only pool --merge   # parallel slots, locally and through Ray (about 5 minutes)

Writes RESULTS.md and results.json: a full run into bench/ (the committed figures), a quick one into
bench/out/quick/ (ignored by git), either into --out when given. Every part's figures carry their own
provenance (commit, uncommitted changes, settings, machine, load average), so a --merge of parts measured
at different commits says which commit produced which figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import context
import overhead
import pool
import render
import sandbox
import throughput
from labrepo import PYTHON, ROOT
from report import git_state, machine

PARTS = ["overhead", "throughput", "context", "quality", "data", "sandbox", "pool"]
BENCH = Path(__file__).parent
QUICK_OUT = BENCH / "out" / "quick"  # quick figures are for smoke tests: never over the committed ones by default
EXTERNAL = {"quality": ("bench_quality.py", "4. Baseline quality"), "data": ("bench_data.py", "5. Data pipeline")}


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def external(part: str, quick: bool, out_dir: Path) -> dict[str, Any]:
    """The other benchmarks are scripts with --quick and --out; their JSON is folded in as it is."""
    script, _ = EXTERNAL[part]
    path = Path(__file__).parent / script
    if not path.exists():
        return {"skipped": f"bench/{script} is not there yet."}
    out = out_dir / "out" / f"{path.stem}{'_quick' if quick else ''}.json"
    argv = [PYTHON, str(path), "--out", str(out), *(["--quick"] if quick else [])]
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    command = " ".join(["python", f"bench/{script}", *argv[2:]])
    if done.returncode != 0 or not out.exists():
        return {"skipped": f"`{command}` failed (exit {done.returncode}): {done.stderr.strip()[-800:]}"}
    return {"command": command, "seconds": seconds, "out": str(out), "stdout": done.stdout,
            **json.loads(out.read_text())}  # fmt: skip


def run_part(part: str, args: argparse.Namespace) -> dict[str, Any]:
    if part == "overhead":
        return overhead.run(args.quick)
    if part == "throughput":
        return throughput.run(args.quick, args.iterations, args.budget, args.think)
    if part == "context":
        return context.run(args.quick)
    if part == "sandbox":
        return sandbox.run(args.quick)
    if part == "pool":
        return pool.run(args.quick, args.pool_budget, args.pool_waves)
    return external(part, args.quick, args.out)


def markdown(res: dict[str, Any]) -> str:
    parts = [render.header(res)]
    drawn = (("overhead", render.overhead), ("throughput", render.throughput), ("context", render.context),
             ("sandbox", render.sandbox), ("pool", render.pool))  # fmt: skip
    for name, draw in drawn:
        if name in res:
            body = f"## {name}\n\nFailed: {res[name]['error']}" if "error" in res[name] else draw(res[name])
            parts.append(body + "\n\n" + render.provenance(res["provenance"][name]))
    parts += [render.external(EXTERNAL[p][1], res[p]) + "\n\n" + render.provenance(res["provenance"][p])
              for p in ("quality", "data") if p in res]  # fmt: skip
    missing = [p for p in PARTS if p not in res]
    if missing:
        parts.append("Not run in this invocation (see `--only`): " + ", ".join(missing) + ".")
    return "\n\n".join(parts) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny setting: seconds, not minutes")
    p.add_argument("--only", nargs="+", choices=PARTS, default=PARTS, help="run only these parts")
    p.add_argument("--out", type=Path, help=f"folder for RESULTS.md, results.json (default: bench/, or "
                   f"{QUICK_OUT.relative_to(BENCH.parent)}/ with --quick)")  # fmt: skip
    p.add_argument("--merge", action="store_true", help="keep the parts not run from the existing results.json, "
                   "each with its own commit and settings")  # fmt: skip
    p.add_argument("--iterations", type=int, help="throughput iterations (default 3; quick 1)")
    p.add_argument("--budget", type=float, help="throughput budget in seconds (default 60; quick 1)")
    p.add_argument(
        "--think",
        type=float,
        default=0.0,
        help="throughput: seconds the client waits after each "
        "decision, as an agent thinks; percentages then leave that time out (default 0)",
    )
    p.add_argument("--pool-budget", type=float, help="pool: the sleep experiment's budget (default 5; quick 1)")
    p.add_argument("--pool-waves", type=int, help="pool: waves counted per runner and slot count (default 5; quick 1)")
    args = p.parse_args(argv)
    args.out = args.out or (QUICK_OUT if args.quick else BENCH)
    return args


def provenance(args: argparse.Namespace, load_start: float) -> dict[str, Any]:
    """Where one part's figures come from: enough to tell them apart from any other part's after a --merge."""
    commit, dirty = git_state(ROOT)
    settings = {"quick": args.quick, "iterations": args.iterations, "budget": args.budget,
                "pool_budget": args.pool_budget, "pool_waves": args.pool_waves}  # fmt: skip
    command = " ".join(["python bench/run.py", *args.argv])
    return {"commit": commit, "dirty": dirty, "settings": settings, "machine": machine(ROOT),
            "load": [load_start, os.getloadavg()[0]], "command": command}  # fmt: skip


def merged(previous: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
    """The earlier parts that say where they come from, with their provenance; parts written before figures
    carried their own provenance cannot say which commit produced them, so they are left out, and named."""
    known = previous.get("provenance", {})
    kept = [p for p in PARTS if p in previous and p in known]
    res.update({p: previous[p] for p in kept})
    res["provenance"] = {p: known[p] for p in kept}
    res["dropped"] = [p for p in PARTS if p in previous and p not in known]
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    started, load_start = time.perf_counter(), os.getloadavg()[0]
    res: dict[str, Any] = {"command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                           "quick": args.quick, "merge": args.merge, "machine": machine(ROOT)}  # fmt: skip
    res["provenance"] = {}
    previous = args.out / "results.json"
    if args.merge and previous.exists():  # keep the other parts' figures from the last run, with their provenance
        res = merged(json.loads(previous.read_text()), res)
    failed = False
    for part in args.only:
        log(f"{part} ...")
        part_started, part_load = time.perf_counter(), os.getloadavg()[0]
        try:
            res[part] = run_part(part, args)
        except Exception as exc:  # noqa: BLE001 - one broken part must not lose the others' figures
            res[part], failed = {"error": f"{type(exc).__name__}: {exc}"}, True
            log(f"{part} failed: {traceback.format_exc()}")
        res["provenance"][part] = provenance(args, part_load)
        log(f"{part} done in {time.perf_counter() - part_started:.0f} s")
        res.update(elapsed_s=time.perf_counter() - started, load=[load_start, os.getloadavg()[0]])
        (args.out / "results.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
        (args.out / "RESULTS.md").write_text(markdown(res))  # after every part: a late failure keeps the rest
    log(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
