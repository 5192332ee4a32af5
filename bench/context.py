"""Benchmark 3, context economy: what the agent reads and writes per iteration with our tools against the
original's shell protocol, on the same train.py and the same scripted ideas, both run for real.
"""

from __future__ import annotations

import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import anyio
from context_shell import TOKENIZER_NAME, Ledger, ShellAgent
from labrepo import EXPERIMENT, FAKE, BenchRepo, fake_repo, git, real_repo, tiny_dataset
from mcp import Client
from report import summarize
from session import Call, call, checked, mcp_name

RUN_RESULT_CAP = 1500  # bytes of one run_experiment result
HISTORY_CAP = 8000  # bytes of get_history over 100 runs
RECENT_ROWS = 15  # get_history's default limit; the shell side reads as many rows with `tail`
ALL_ROWS = 500  # get_history's largest limit; the shell side reads every row with `cat`
REAL_EDITS = [  # (line pattern, new line, idea, keep): one-line edits found in the current train.py
    (r"^MATRIX_LR = [^#\n]*", "MATRIX_LR = 0.04  ", "double the Muon learning rate", True),
    (r"^WARMDOWN_RATIO = [^#\n]*", "WARMDOWN_RATIO = 0.3  ", "shorter warmdown (0.3 of the budget)", False),
    (r"^HEAD_DIM = [^#\n]*", "HEAD_DIM = 24  ", "attention heads of 24 channels", False),  # width % 24 != 0
]


def real_ideas(train_py: Path) -> list[tuple[str, str, str, bool]]:
    """The same three ideas, as exact old/new strings of the train.py being measured."""
    text, ideas = train_py.read_text(), [("", "", "baseline", True)]
    for pattern, new, idea, keep in REAL_EDITS:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"{train_py} has no line matching {pattern!r}; update bench/context.py")
        ideas.append((match.group(0), new, idea, keep))
    return ideas


FAKE_IDEAS = [("", "", "baseline", True), ("METRIC = 1.0", "METRIC = 0.9", "lower the metric", True),
              ("METRIC = 0.9", "METRIC = 0.95", "raise the metric", False),
              ('MODE = "ok"', 'MODE = "crash"', "a deliberate crash", False)]  # fmt: skip
KINDS = ["baseline", "kept", "discarded", "crashed"]


class OurAgent:
    """The same loop through the MCP tools, each call counted by the same rule as the shell side."""

    def __init__(self, client: Client) -> None:
        self.client, self.ledger = client, Ledger()
        self.run_results: list[int] = []

    async def tool(self, name: str, **args: Any) -> Call:
        result = await call(self.client, name, **args)
        self.ledger.add(mcp_name(name), args, result.text)
        return result

    async def iteration(self, old: str, new: str, idea: str, keep: bool) -> str:
        if old:
            await self.tool("write_train", edits=[{"old": old, "new": new}])
        run = await self.tool("run_experiment", description=idea)
        self.run_results.append(len(run.text.encode()))
        status = str(run.data.get("status"))
        if status == "ok" and keep:
            forced = {} if run.data.get("improved") else {"force": True, "reason": "scripted keep (benchmark)"}
            await self.tool("keep", **forced)
        else:
            await self.tool("discard")
        return "crash" if status != "ok" else ("keep" if keep else "discard")

    async def recover(self, limit: int | None = None) -> None:
        """What the search stands at: the best run, what was tried, what awaits a decision or runs now."""
        await self.tool("get_history", **({} if limit is None else {"limit": limit}))

    async def read_script(self) -> None:
        await self.tool("read_train")


def shell_repo(path: Path, source: Path, names: tuple[str, str]) -> Path:
    """The original's layout: train.py and prepare.py at the root, results.tsv untracked."""
    path.mkdir(parents=True)
    shutil.copy(source / names[0], path / "prepare.py")
    shutil.copy(source / names[1], path / "train.py")
    git(path, "init", "-q", "-b", "autoresearch/bench")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "initial")
    (path / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\n")
    return path


def shell_env(repo: BenchRepo) -> dict[str, str]:
    env = repo.run_env(repo.path)
    env.pop("BENCH_STAMP_FILE", None)
    return {**env, "PATH": f"{Path(repo.argv[0]).parent}:{env.get('PATH', '')}"}


def _phase(ledger: Ledger, start: int) -> dict[str, int]:
    part = Ledger(ledger.calls[start:])
    return part.totals()


async def recoveries(ours: OurAgent, shell: ShellAgent) -> dict[str, Any]:
    """Recovery after a lost context, like with like: the latest rows on both sides (get_history against
    `tail -n 15 results.tsv`), then every row on both sides (get_history(limit=500) against `cat results.tsv`).
    Both sides also read what else they need: ours the best, counts and state in the same call; the shell
    side `git log`, `git status` and the end of run.log."""
    out: dict[str, Any] = {}
    for kind, limit, rows in (("latest", None, RECENT_ROWS), ("all", ALL_ROWS, None)):
        marks = (len(ours.ledger.calls), len(shell.ledger.calls))
        await ours.recover(limit)
        shell.recover(rows)
        out[kind] = {"ours": _phase(ours.ledger, marks[0]), "shell": _phase(shell.ledger, marks[1])}
    return out


async def scripted(ours_repo: BenchRepo, shell: ShellAgent, ideas: list[tuple[str, str, str, bool]]) -> dict:
    """Baseline, kept, discarded, crashed; then recovery after a lost context, on both sides."""
    out: dict[str, Any] = {}
    async with Client(ours_repo.server_params()) as client:
        ours = OurAgent(client)
        for kind, (old, new, idea, keep) in zip(KINDS, ideas, strict=True):
            marks = (len(ours.ledger.calls), len(shell.ledger.calls))
            status = (await ours.iteration(old, new, idea, keep), shell.iteration(old, new, idea, keep))
            out[kind] = {"ours": _phase(ours.ledger, marks[0]), "shell": _phase(shell.ledger, marks[1]),
                         "status": {"ours": status[0], "shell": status[1]}}  # fmt: skip
        out["recovery"] = await recoveries(ours, shell)
        marks = (len(ours.ledger.calls), len(shell.ledger.calls))
        await ours.read_script()
        shell.read_script()
        out["script"] = {"ours": _phase(ours.ledger, marks[0]), "shell": _phase(shell.ledger, marks[1])}
        out["run_result_bytes"] = summarize([float(b) for b in ours.run_results])
        tools = await client.list_tools()
        out["tool_definitions_bytes"] = sum(len(t.model_dump_json(by_alias=True, exclude_none=True))
                                            for t in tools.tools)  # fmt: skip
    return out


def fake_ideas(n: int, seed: int = 0) -> list[tuple[str, str, str, bool]]:
    """n ideas on the fake: metric changes, every tenth a crash; kept exactly when strictly better."""
    rng, current, best, ideas = random.Random(seed), 1.0, 1.0, [("", "", "baseline", True)]
    for i in range(1, n):
        if i % 10 == 0:
            ideas.append(('MODE = "ok"', 'MODE = "crash"', f"idea {i}: rewrite the attention block", False))
            continue
        value = round(best * rng.uniform(0.97, 1.02), 6)
        keep = value < best
        ideas.append((f"METRIC = {current}", f"METRIC = {value}", f"idea {i}: scale the LR by {value:.3f}", keep))
        best, current = (value, value) if keep else (best, current)
    return ideas


async def long_history(ours_repo: BenchRepo, shell: ShellAgent, checkpoints: list[int]) -> dict[str, Any]:
    """Runs on the fake on both sides up to the last checkpoint; at each one, recovery on both sides (it changes
    nothing); at the first, the size of get_history(limit=100)."""
    ideas = fake_ideas(checkpoints[-1])
    out: dict[str, Any] = {"runs": checkpoints[0], "recovery_at": {}}
    async with Client(ours_repo.server_params()) as client:
        ours = OurAgent(client)
        for done, (old, new, idea, keep) in enumerate(ideas, 1):
            await ours.iteration(old, new, idea, keep)
            shell.iteration(old, new, idea, keep)
            if done not in checkpoints:
                continue
            if done == checkpoints[0]:
                out["history_100_bytes"] = len((await checked(client, "get_history", limit=100)).text.encode())
            out["recovery_at"][str(done)] = await recoveries(ours, shell)
    out["run_result_bytes"] = summarize([float(b) for b in ours.run_results])
    return out


def verdicts(scripted_out: dict[str, Any], hist: dict[str, Any]) -> dict[str, Any]:
    per_iteration = {k: scripted_out[k]["ours"]["bytes"] <= scripted_out[k]["shell"]["bytes"] for k in KINDS[1:]}
    worst_run = max(scripted_out["run_result_bytes"]["max"], hist["run_result_bytes"]["max"])
    points = [("scripted (4 runs)", scripted_out["recovery"])]
    points += [(f"{n} runs", r) for n, r in hist["recovery_at"].items()]
    ratios = {kind: {name: r[kind]["shell"]["bytes"] / r[kind]["ours"]["bytes"] for name, r in points}
              for kind in ("latest", "all")}  # fmt: skip
    return {"never_more_per_iteration": all(per_iteration.values()), "per_iteration": per_iteration,
            "max_run_result_bytes": worst_run, "run_result_bounded": worst_run < RUN_RESULT_CAP,
            "history_bounded": hist["history_100_bytes"] < HISTORY_CAP, "recovery_ratio": ratios}  # fmt: skip


def run(quick: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-context-"))
    try:
        if quick:  # the fake experiment: seconds, not minutes
            ours_repo = fake_repo(work / "ours", "ok", 1.0)
            shell = ShellAgent(shell_repo(work / "shell", FAKE, ("prepare.py", "train.py")), shell_env(ours_repo))
            script = anyio.run(scripted, ours_repo, shell, FAKE_IDEAS)
        else:
            ours_repo = real_repo(work / "ours", tiny_dataset(work / "data"), 1.0, tiny=True, eval_tokens=4096)
            shell = ShellAgent(shell_repo(work / "shell", EXPERIMENT, ("prepare.py", "train.py")), shell_env(ours_repo))
            script = anyio.run(scripted, ours_repo, shell, real_ideas(EXPERIMENT / "train.py"))
        many_ours = fake_repo(work / "ours100", "ok", 0.1)
        many_shell = ShellAgent(shell_repo(work / "shell100", FAKE, ("prepare.py", "train.py")), shell_env(many_ours))
        hist = anyio.run(long_history, many_ours, many_shell, [20] if quick else [100, 500])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"tokenizer": TOKENIZER_NAME, "train_py": "tests/fake/train.py" if quick else "experiment/train.py (tiny)",
            "scripted": script, "hundred": hist, **verdicts(script, hist)}  # fmt: skip
