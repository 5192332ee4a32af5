"""The holdout: scored by the server on every kept run, shown to the human, never to the agent; a kept gain
the holdout does not confirm is flagged."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import HAS_BWRAP, make_fake_repo, prepare_dataset, real_experiment_repo
from mcp import Client
from pydantic import ValidationError

from server import app
from server.config import Config, load_config
from server.lab.gate import holdout_bar
from server.lab.loop import Lab
from server.run.holdout import holdout_note, score_holdout
from server.run.pipeline import strictly_better
from server.show.plot import render_png
from server.show.table import fmt_holdout, holdout_caption
from server.show.views import AgentRun, RunDetail
from server.store.history import History, RunRecord, SeedRun

CORPUS = "It was the best of times, it was the worst of times, it was the age of wisdom. " * 600


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in getattr(result, "content", getattr(result, "contents", [])))


def test_train_files_may_not_name_the_evaluation_splits() -> None:
    with pytest.raises(ValidationError, match="only the evaluator may read it"):
        Config.model_validate({"train_files": ["train.bin", "holdout.bin"]})


def test_the_agents_view_of_a_run_has_no_holdout_fields() -> None:
    run = RunRecord(id=1, commit="c", parent="p", description="d", holdout_metric=1.234567, holdout_note="n")
    dumped = RunDetail(run=AgentRun.of(run), diff="", log_tail=[]).model_dump_json()
    schema = str(RunDetail.model_json_schema())
    assert "holdout" not in dumped and "1.234567" not in dumped and "holdout" not in schema


def kept(run_id: int, val: float, holdout: float) -> RunRecord:
    return RunRecord(id=run_id, commit="c", parent="p", description=f"run {run_id}", status="ok", decision="keep",
                     metric=val, holdout_metric=holdout)  # fmt: skip


def test_a_validation_gain_the_holdout_does_not_confirm_is_flagged() -> None:
    before = kept(1, 2.00, 2.10)
    confirmed = holdout_note(before, kept(2, 1.90, 2.05), 2.05, "minimize")
    diverged = holdout_note(before, kept(2, 1.90, 2.12), 2.12, "minimize")
    assert confirmed is None
    assert diverged is not None and "does not appear on the holdout" in diverged and "-0.020000" in diverged


def test_the_flag_shows_in_the_human_table_and_plot(tmp_path: Path) -> None:
    """A crafted history: run 2 gained on validation and lost on the holdout."""
    history = History(tmp_path)
    for run_id, val, hold in ((1, 2.0, 2.1), (2, 1.9, 2.12)):
        run = RunRecord(id=run_id, commit=f"{run_id:07d}", parent="p", description=f"idea {run_id}")
        history.record(run, "start")
        history.record(run.model_copy(update={"status": "ok", "metric": val}), "end")
        runs = history.runs()
        note = holdout_note(runs[0] if run_id == 2 else None, runs[-1], hold, "minimize")
        history.decide(run_id, "keep", holdout_metric=hold, holdout_note=note)
    runs = history.runs()
    assert runs[1].holdout_note is not None and fmt_holdout(runs[1]) == "2.120000 !"
    assert fmt_holdout(runs[0]) == "2.100000"
    caption = holdout_caption(runs)
    assert caption is not None and caption.startswith("! run 2:")
    assert render_png(runs)[:4] == b"\x89PNG"


def test_the_holdout_is_scored_early_only_for_a_run_the_keep_gate_could_take(tmp_path: Path) -> None:
    """The evaluator scores the holdout right after validation only when a keep could take the run without
    force: no best yet; a gain beyond the noise band for a run of one seed; any gain when more seeds follow
    (keep judges their mean)."""
    repo = make_fake_repo(tmp_path / "repo")
    lab = Lab(repo, load_config(repo))
    candidate = RunRecord(id=2, commit="c2", parent="c1", description="an idea")

    def may_keep(metric: float, more_seeds: bool) -> bool:  # the bar the evaluation is given, as measure uses it
        return strictly_better(lab.config, metric, holdout_bar(lab.history.runs(), lab.config, more_seeds))

    assert may_keep(1.0, more_seeds=False)  # no best: the baseline may be kept
    seeds = [SeedRun(seed=0, status="ok", metric=1.00), SeedRun(seed=1, status="ok", metric=1.02)]
    baseline = RunRecord(id=1, commit="c1", parent="c0", description="baseline", repeats=seeds)
    lab.history.record(baseline, "start")
    lab.history.record(baseline.model_copy(update={"status": "ok", "metric": 1.01}), "end")
    lab.history.decide(1, "keep")
    # mean 1.01, std 0.0141 over two seeds: one seed must gain 6.31 * 0.0141 * sqrt(1/2 + 1) = 0.109 at 95%
    assert lab.judge(candidate.model_copy(update={"status": "ok", "metric": 1.0})).required == pytest.approx(
        0.109, abs=1e-3
    )
    assert not may_keep(1.0, more_seeds=False)  # better, inside the noise: keep would refuse it
    assert may_keep(0.89, more_seeds=False)  # beyond the band
    assert may_keep(1.0, more_seeds=True)  # more seeds may carry the mean beyond it
    assert not may_keep(1.05, more_seeds=True)  # worse than the best


# -- a real tiny model through the MCP tools ------------------------------------------------------------------


def real_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """experiment/ in a fresh repository, a tiny model on CPU, 2 s runs, a byte-level dataset with a holdout."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    (tmp_path / "corpus.txt").write_text(CORPUS)
    args = ["--source", "files", "--paths", str(tmp_path / "corpus.txt"), "--byte-level", "--name", "tiny"]
    prepare_dataset(args)
    repo = real_experiment_repo(
        tmp_path / "repo",
        f"""[autoresearch]
tag = "test"
time_budget = 2
noise_seeds = 2
eval_tokens = 2048
sandbox = "{"bwrap" if HAS_BWRAP else "off"}"

[autoresearch.env]
AUTORESEARCH_MODEL_SIZE = "tiny"
AUTORESEARCH_DEVICE = "cpu"
AUTORESEARCH_CACHE = "{cache}"
AUTORESEARCH_DATASET = "tiny"
""",
    )
    monkeypatch.setenv("AUTORESEARCH_ROOT", str(repo))
    return repo


async def session(outputs: list[str]) -> None:
    """Every tool, resource and prompt a client can reach, around a kept run and a discarded one."""
    async with Client(app.mcp) as client:

        async def tool(name: str, **args: Any) -> dict[str, Any]:
            result = await client.call_tool(name, args)
            outputs.append(text_of(result) + str(result.structured_content))
            assert not result.is_error, text_of(result)
            return result.structured_content or {}

        outputs.append(str(await client.list_tools()))
        baseline = await tool("run_experiment", description="baseline")
        assert baseline["status"] == "ok" and baseline["seeds"] == 2, baseline
        await tool("keep")
        source = (await tool("read_train"))["content"]
        await tool("write_train", content=source.replace("MATRIX_LR = 0.02", "MATRIX_LR = 0.03"))
        await tool("run_experiment", description="higher matrix lr")
        await tool("discard")
        for args in ({}, {"run_id": 1}, {"run_id": 2}, {"match": "baseline"}):
            await tool("get_history", **args)
        for uri in ("autoresearch://runs/1/log", "autoresearch://runs/2/log", "autoresearch://program"):
            outputs.append(text_of(await client.read_resource(uri)))
        outputs.append(str(await client.get_prompt("autoresearch")))


@pytest.mark.slow
def test_kept_runs_are_scored_on_the_holdout_and_no_tool_result_shows_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = real_repo(tmp_path, monkeypatch)
    outputs: list[str] = []
    anyio.run(session, outputs)
    runs = History(repo / ".autoresearch" / "test").runs()
    holdout = runs[0].holdout_metric  # the first seed's model; the run's metric is the mean over its seeds
    first_seed = runs[0].primary_metric
    assert holdout is not None and first_seed is not None and abs(holdout - first_seed) < 1.0
    assert runs[1].decision == "discard" and runs[1].holdout_metric is None  # only kept runs are scored
    seen = "\n".join(outputs)
    for needle in (f"{holdout:.6f}", f"{holdout:.4f}", repr(holdout)):
        assert needle not in seen
    # the word itself only where the gate's budget is shown (get_history's limits): no field, no figure
    assert "holdout" not in re.sub(r"holdout gate: \d+ of \d+ disagreements spent", "", seen)
    run_dir = repo / ".autoresearch" / "test" / "runs" / "1"
    # The baseline might be kept (there was no best), so its evaluator scored the holdout right after validation,
    # with the model loaded and checked, and keep started no evaluator of its own.
    assert "holdout" in runs[0].timing and not (run_dir / "eval-holdout.log").exists()
    ready = run_dir / "eval-holdout" / "result.json"
    assert json.loads(ready.read_text())["bpb"] == holdout
    # Without that result, keep scores the holdout in an evaluator of its own: the same figure.
    ready.unlink()
    lab = Lab(repo, load_config(repo))
    cold, _ = score_holdout(lab.context, lab.history, runs[0])
    assert cold == pytest.approx(holdout, rel=1e-9)
    assert "holdout" in (run_dir / "eval-holdout.log").read_text()  # its log: a file no view reads
    shown = subprocess.run([sys.executable, "-m", "server", "history"], cwd=repo, capture_output=True, text=True,
                           env={"PATH": "/usr/bin:/bin", "COLUMNS": "200"})  # fmt: skip
    assert f"{holdout:.6f}" in shown.stdout and "noise floor" in shown.stdout  # the human sees it
