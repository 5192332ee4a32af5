"""The Ray backend on a multi-node cluster on this machine whose worker nodes share nothing with the server but
Ray (tests/raycluster.py: each worker node a bubblewrap view without the repository, the state, the data cache
or the project's source). Three figures:

layout:   4 slots as 2 nodes x 2 slots against 4 nodes x 1 slot: waves of 4 candidates of the sleep experiment
          (bench/pool.py's wave: started, driven each in a thread, discarded), experiments per hour of each
          layout and their ratio (target >= 0.95). Layouts alternate A B B A, each on a fresh cluster, after one
          warm-up wave per cluster that is not counted.
added:    the real experiment (tiny model, CPU, byte-level data, a training task and an evaluator task per run)
          through LocalRunner and through Ray on an isolated node, in interleaved pairs after one warm-up pair;
          the time Ray adds per run, pair by pair.
transfer: the dataset's first transfer to a node (the server's put, the object store, the node's checks) and
          a second request on the same node, for a synthetic dataset of each size.

    .venv/bin/python bench/ray_cluster.py [--waves 4] [--budget 5] [--pairs 5] [--train-budget 2]
        [--sizes 8,256] [--cases layout,added,transfer] [--out FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from labrepo import GIT_ENV, git, real_repo, tiny_dataset  # noqa: E402
from pool import make_pool, wave  # noqa: E402
from ray_bench import Recording  # noqa: E402
from raycluster import SLOT, LocalCluster, driver_env  # noqa: E402
from report import fmt, summarize, table  # noqa: E402

from server.config import load_config  # noqa: E402
from server.lab.loop import Lab  # noqa: E402
from server.run import ray_data, ray_runner  # noqa: E402
from server.run.runner import LocalRunner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"2x2": (2, 2), "4x1": (4, 1)}  # nodes, slots per node


@contextmanager
def cluster(work: Path, nodes: int, slots: int) -> Iterator[LocalCluster]:
    """A fresh cluster with `nodes` isolated worker nodes of `slots` slots each; this process its driver."""
    import ray

    made = LocalCluster(work / f"cluster-{time.monotonic_ns()}")

    try:
        made.start()
        for i in range(nodes):
            made.add_worker(f"n{i}", slots=slots, cpus=slots, gpus=slots)
        ray_runner.connect(made.address)
        yield made
    finally:
        ray.shutdown()
        made.stop()


def on_cluster(made: LocalCluster) -> str:
    """autoresearch.toml's keys for runs on the worker nodes of the cluster."""
    return f'ray_address = "{made.address}"\nray_resources = {{ {SLOT} = 1 }}\n'


def pin(repo: Path, made: LocalCluster) -> None:
    config = repo / "autoresearch.toml"
    extra = f'runner = "ray"\n{on_cluster(made)}'
    config.write_text(config.read_text().replace("[autoresearch]\n", f"[autoresearch]\n{extra}", 1))
    git(repo, "commit", "-qam", "on the test cluster")


def layout(work: Path, name: str, waves: int, budget: float) -> list[dict[str, float]]:
    nodes, slots = LAYOUTS[name]
    with cluster(work, nodes, slots) as made:
        pool = make_pool(work / f"{name}-{time.monotonic_ns()}", "ray", 4, budget, on_cluster(made))
        wave(pool)  # warm-up: worker pools, the code package on each node
        out = []
        for _ in range(waves):
            figures = wave(pool)
            pool.waves.append(figures)
            out.append(figures)
            print(f"[ray_cluster] {name}: {figures['seconds']:.2f} s, {figures['per_hour']:.0f}/h", file=sys.stderr)
        return out


def measure_layouts(work: Path, waves: int, budget: float) -> dict[str, Any]:
    seen: dict[str, list[dict[str, float]]] = {name: [] for name in LAYOUTS}
    for name in ["2x2", "4x1", "4x1", "2x2"]:
        seen[name] += layout(work, name, waves, budget)
    rates = {name: summarize([w["per_hour"] for w in rows]) for name, rows in seen.items()}
    return {"budget_s": budget, "waves_each": 2 * waves, "per_hour": rates,
            "ok": {name: summarize([w["ok"] for w in rows]) for name, rows in seen.items()},
            "ratio_2x2_to_4x1": rates["2x2"]["median"] / rates["4x1"]["median"]}  # fmt: skip


def measure_added(work: Path, pairs: int, budget: float) -> dict[str, Any]:
    """Local and Ray (one isolated node) runs of the real experiment, interleaved, each discarded."""
    with cluster(work, 1, 1) as made:
        repo = real_repo(work / "added", tiny_dataset(work / "data"), budget, tiny=True, eval_tokens=4096)
        pin(repo.path, made)
        lab = Lab(repo.path, load_config(repo.path))
        ray, local, rows = Recording(), LocalRunner(), []
        ray.address, ray.num_gpus, ray.resources = made.address, 0.0, {SLOT: 1}
        for i in range(pairs + 1):
            figures = {}
            for name, runner in [("local", local), ("ray", ray)]:
                lab.runner = runner
                began = time.perf_counter()
                run = lab.run(f"{name} {i}", duplicate_reason="the benchmark repeats the same code")
                figures[name], figures[f"{name}_ok"] = time.perf_counter() - began, float(run.status == "ok")
                lab.discard()
            fetched = sum(e.fetched for e in ray.seen[-2:])
            row = {**figures, "added": figures["ray"] - figures["local"], "fetched_bytes": float(fetched)}
            print(f"[ray_cluster] pair {i}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), file=sys.stderr)
            rows.append(row)
        counted = rows[1:]  # the first pair warms up: the node's worker pool, the code, the dataset's first transfer
        return {"budget_s": budget, "first_pair": rows[0], **{key: summarize([r[key] for r in counted]) for key in
                counted[0]}}  # fmt: skip


def _now() -> float:
    return time.time()


def synthetic(folder: Path, megabytes: int) -> Path:
    """A dataset folder: train.bin of the given size, a small val.bin, meta.json with their sha256."""
    folder.mkdir(parents=True)
    files = {"train.bin": os.urandom(megabytes << 20), "val.bin": os.urandom(1 << 20), "tokenizer.json": b"{}"}
    for name, body in files.items():
        (folder / name).write_bytes(body)
    sums = {name: {"sha256": hashlib.sha256(body).hexdigest()} for name, body in files.items()}
    (folder / "meta.json").write_text(json.dumps({"outputs": sums}))
    return folder


def measure_transfer(work: Path, sizes: list[int]) -> dict[str, Any]:
    """The training files of each synthetic dataset sent to a fresh node twice: the first transfer, the second
    (cached). put: the server's ray.put of the files; receive: the node's fetch, checks and writes."""
    import ray

    out = {}
    with cluster(work, 1, 1):
        receive = ray.remote(num_cpus=0, resources={SLOT: 1})(ray_data.receive)
        ray.get(ray.remote(num_cpus=0, resources={SLOT: 1})(_now).remote())  # the node's worker is up first
        for size in sizes:
            data = synthetic(work / f"data-{size}", size)
            shelf = ray_data.Shelf()
            began = time.perf_counter()
            ship = shelf.ship(data, ["train.bin", "tokenizer.json", "meta.json"])
            put = time.perf_counter() - began
            first = ray.get(receive.remote(ship))
            first_total = time.perf_counter() - began
            again = time.perf_counter()
            second = ray.get(receive.remote(ship))
            out[f"{size} MB"] = {"bytes": ship.size, "put_s": put, "node_s": first.seconds,
                                 "first_total_s": first_total, "first_fetched": first.fetched,
                                 "second_total_s": time.perf_counter() - again, "second_fetched": second.fetched,
                                 "mb_per_s": ship.size / 1e6 / first_total}  # fmt: skip
            print(f"[ray_cluster] transfer {size} MB: {out[f'{size} MB']}", file=sys.stderr)
    return out


def markdown(results: dict[str, Any]) -> str:
    parts = []
    if "layout" in results:
        r = results["layout"]
        rows = [[name, fmt(r["per_hour"][name], 0), fmt(r["ok"][name], 2)] for name in LAYOUTS]
        parts.append(table(["layout", "experiments per hour", "ok share"], rows))
        parts.append(f"ratio 2x2 / 4x1 (medians): {r['ratio_2x2_to_4x1']:.3f} (target >= 0.95)")
    if "added" in results:
        r = results["added"]
        first = r["first_pair"]
        row = [f"{r['budget_s']:g}", fmt(r["local"]), fmt(r["ray"]), fmt(r["added"]), fmt(r["fetched_bytes"], 0),
               f"{first['added']:.2f} ({first['fetched_bytes'] / 1e6:.2f} MB sent)"]  # fmt: skip
        parts.append(table(["budget s", "local s", "ray s", "added s (pairwise)", "dataset bytes sent per pair",
                            "first pair added s (uncounted)"], [row]))  # fmt: skip
    if "transfer" in results:
        rows = [[size, f"{t['bytes'] / 1e6:.1f}", f"{t['put_s']:.3f}", f"{t['node_s']:.3f}",
                 f"{t['first_total_s']:.3f}", f"{t['mb_per_s']:.0f}", f"{t['second_total_s']:.3f}",
                 str(t["second_fetched"])] for size, t in results["transfer"].items()]  # fmt: skip
        parts.append(table(["dataset", "MB sent", "server's put s", "node's fetch and check s",
                            "first transfer s (put to checked)", "MB/s", "second request s", "second bytes sent"],
                           rows))  # fmt: skip
    return "\n\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waves", type=int, default=4)
    parser.add_argument("--budget", type=float, default=5.0)
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--train-budget", type=float, default=2.0)
    parser.add_argument("--sizes", default="8,256")
    parser.add_argument("--cases", default="layout,added,transfer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "ray" / "ray_cluster.json")
    args = parser.parse_args(argv)
    os.environ.update(GIT_ENV)
    os.environ.update(driver_env())  # before Ray is first imported: it reads the authentication mode once
    work = Path(tempfile.mkdtemp(prefix="bench-ray-cluster-"))
    cases = args.cases.split(",")
    results: dict[str, Any] = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    steps = {"layout": lambda: measure_layouts(work, args.waves, args.budget),
             "added": lambda: measure_added(work, args.pairs, args.train_budget),
             "transfer": lambda: measure_transfer(work, [int(s) for s in args.sizes.split(",")])}  # fmt: skip
    try:
        for case in cases:
            results[case] = steps[case]()
            results["load_average"] = os.getloadavg()
            args.out.write_text(json.dumps(results, indent=2))  # each case kept as soon as it is measured
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
