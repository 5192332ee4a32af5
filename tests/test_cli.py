"""The `autoresearch` command: history, plot, watch, run, pin, and the user errors that end in one sentence."""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FAKE_CONFIG, REPO_ROOT, git, make_fake_repo, set_mode
from rich.console import Console

from server.config import load_config
from server.demo import report
from server.lab.loop import Lab
from server.store.history import History, RunRecord

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


@pytest.fixture
def decided(repo: Path) -> Lab:
    """A history with a kept, a discarded and a crashed run."""
    lab = Lab(repo, load_config(repo))
    lab.run("baseline")
    lab.keep()
    lab.write(set_mode("ok", 2.0))
    lab.run("worse")
    lab.discard()
    lab.write(set_mode("crash", 1.0))
    lab.run("broken")
    lab.discard()
    return lab


def test_history_json_round_trips_the_records(decided: Lab, repo: Path) -> None:
    out = cli(repo, "history", "--json")
    assert out.returncode == 0, out.stderr
    assert [RunRecord.model_validate(item) for item in json.loads(out.stdout)] == decided.history.runs()


def test_history_tsv_is_the_original_results_file(decided: Lab, repo: Path) -> None:
    out = cli(repo, "history", "--tsv")
    assert out.stdout == decided.history.tsv_path.read_text()


def test_history_table_shows_every_run(decided: Lab, repo: Path) -> None:
    out = cli(repo, "history")
    assert all(word in out.stdout for word in ("baseline", "worse", "broken", "3 runs"))


def test_history_match_filters_every_format(decided: Lab, repo: Path) -> None:
    found = json.loads(cli(repo, "history", "--match", "WORSE", "--json").stdout)
    assert [r["description"] for r in found] == ["worse"]
    table = cli(repo, "history", "--match", "b").stdout
    assert "baseline" in table and "broken" in table and "worse" not in table


def test_plot_writes_a_png(decided: Lab, repo: Path, tmp_path: Path) -> None:
    out = cli(repo, "plot", "--out", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "p.png").read_bytes()[:8] == PNG_SIGNATURE


def test_watch_once_draws_a_frame(decided: Lab, repo: Path) -> None:
    out = cli(repo, "watch", "--once")
    assert out.returncode == 0 and "baseline" in out.stdout


def test_run_by_hand_prints_the_result_and_records_it(repo: Path) -> None:
    out = cli(repo, "run", "by hand")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{") :])["metric"] == 1.0
    assert cli(repo, "keep").returncode == 0
    assert git(repo, "rev-parse", "autoresearch/test") == git(repo, "rev-parse", "refs/autoresearch/test/1")


def test_pin_accepts_a_committed_change_to_a_locked_file(repo: Path) -> None:
    assert cli(repo, "run", "baseline").returncode == 0 and cli(repo, "keep").returncode == 0
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text() + "\n# intended\n")
    refused = cli(repo, "run", "after edit")
    assert refused.returncode == 2 and "autoresearch pin" in refused.stderr
    git(repo, "commit", "-qam", "intended change to the evaluator")
    assert cli(repo, "pin").returncode == 0
    assert cli(repo, "run", "after pin").returncode == 0


def one_sentence(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stderr.count("\n") <= 2, out.stderr
    return out.stderr


def test_not_a_git_repository_is_one_sentence(tmp_path: Path) -> None:
    assert "not a git repository" in one_sentence(cli(tmp_path, "run"))


def test_dirty_locked_file_is_one_sentence(repo: Path) -> None:
    (repo / "prepare.py").write_text("# changed\n")
    assert "prepare.py has uncommitted changes" in one_sentence(cli(repo, "run"))


def test_second_demo_is_one_sentence(repo: Path) -> None:
    lock = repo / ".autoresearch" / "demo.lock"
    lock.parent.mkdir(parents=True)
    with lock.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps({"pid": os.getpid(), "op": "demo"}))
        fh.flush()
        message = one_sentence(cli(repo, "demo"))
    assert f"process {os.getpid()} is doing demo" in message


def test_no_data_prepared_is_one_sentence(tmp_path: Path) -> None:
    repo = experiment_repo(tmp_path)
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "empty-cache"), "AUTORESEARCH_DATASET": "missing"}
    message = one_sentence(cli(repo, "run", env=env))
    assert "not prepared" in message and "autoresearch prepare" in message


def experiment_repo(tmp_path: Path) -> Path:
    """A fresh clone's worth of the real project: experiment/, configuration, .mcp.json, program.md."""
    repo = tmp_path / "project"
    repo.mkdir()
    for name in ("experiment", "autoresearch.toml", ".mcp.json", "program.md", ".gitignore"):
        source = REPO_ROOT / name
        target = repo / name
        if source.is_dir():
            target.mkdir()
            for file in source.glob("*.py"):
                (target / file.name).write_bytes(file.read_bytes())
        else:
            target.write_bytes(source.read_bytes())
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "fresh clone")
    return repo


def prepared_tiny(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A fresh clone with the real experiment, its tiny byte-level dataset prepared; the environment for it."""
    repo = experiment_repo(tmp_path)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 4000)
    env = {"AUTORESEARCH_CACHE": str(tmp_path / "cache"), "AUTORESEARCH_DATASET": "tiny-byte",
           "AUTORESEARCH_MODEL_SIZE": "tiny", "AUTORESEARCH_EVAL_TOKENS": "4096"}  # fmt: skip
    prepared = cli(repo, "prepare", "--source", "files", "--paths", str(corpus), "--byte-level", "--name", "tiny-byte",
                   env=env)  # fmt: skip
    assert prepared.returncode == 0, prepared.stderr
    return repo, env


@pytest.mark.slow
def test_demo_runs_the_loop_end_to_end_over_stdio(tmp_path: Path) -> None:
    repo, env = prepared_tiny(tmp_path)
    out = cli(repo, "demo", "--experiments", "3", "--budget", "1", "--out", "progress.png", env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = out.stdout.split("run tag ")[1].split(";")[0]
    history = json.loads(cli(repo, "history", "--json", "--tag", tag).stdout)
    assert len(history) == 3 and all(run["decision"] in ("keep", "discard") for run in history)
    kept = [run for run in history if run["decision"] == "keep"]
    assert git(repo, "rev-parse", f"autoresearch/{tag}") == kept[-1]["commit"]
    assert (repo / "progress.png").read_bytes()[:8] == PNG_SIGNATURE
    assert git(repo, "branch", "--show-current") == "main" and git(repo, "status", "--porcelain") == ""


@pytest.mark.slow
def test_demo_with_two_slots_runs_waves_of_candidates_at_once(tmp_path: Path) -> None:
    repo, env = prepared_tiny(tmp_path)
    out = cli(repo, "demo", "--slots", "2", "--experiments", "5", "--budget", "1", env=env, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "(slot 0)" in out.stdout and "(slot 1)" in out.stdout  # get_history named both runs in flight
    tag = out.stdout.split("run tag ")[1].split(";")[0]
    history = json.loads(cli(repo, "history", "--json", "--tag", tag).stdout)
    assert len(history) >= 5 and all(run["decision"] in ("keep", "discard") for run in history)
    wave = history[1:3]  # the first wave: two candidates from the baseline, each in its own slot
    assert [run["source"] for run in wave] == ["edits", "edits"] and {run["slot"] for run in wave} == {0, 1}
    assert wave[0]["parent"] == wave[1]["parent"] == history[0]["commit"]
    assert wave[1]["started_at"] <= wave[0]["ended_at"]  # in flight together
    assert {run["source"] for run in history[3:]} <= {"edits", "rebase"}
    kept = [run for run in history if run["decision"] == "keep"]
    assert git(repo, "rev-parse", f"autoresearch/{tag}") == kept[-1]["commit"]
    assert git(repo, "branch", "--show-current") == "main" and git(repo, "status", "--porcelain") == ""


def test_commands_find_the_repository_from_a_subfolder(decided: Lab, repo: Path) -> None:
    sub = repo / "notes" / "deeper"
    sub.mkdir(parents=True)
    shown = cli(sub, "history", "--json")
    assert shown.returncode == 0 and len(json.loads(shown.stdout)) == 3
    assert cli(sub, "discard").returncode == 2  # the latest run is decided already: the real repository answered
    assert not (sub / ".git").exists() and not (repo / "notes" / ".git").exists()


def test_run_from_a_subfolder_runs_in_the_repository(repo: Path) -> None:
    (repo / "sub").mkdir()
    out = cli(repo / "sub", "run", "from a subfolder")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout[out.stdout.index("{") :])["run_id"] == 1


@pytest.mark.parametrize("command", [["history"], ["plot", "--out", "p.png"], ["watch", "--once"]])
def test_reading_commands_outside_a_repository_are_one_sentence(tmp_path: Path, command: list[str]) -> None:
    assert "not a git repository, nor inside one" in one_sentence(cli(tmp_path, *command))
    assert not (tmp_path / "p.png").exists()


def test_terminal_messages_name_commands_not_tools(repo: Path) -> None:
    assert cli(repo, "run", "baseline").returncode == 0
    pending = one_sentence(cli(repo, "run", "again"))
    assert "`autoresearch keep` or `autoresearch discard`" in pending
    assert cli(repo, "keep").returncode == 0
    (repo / "train.py").write_text(set_mode("ok", 2.0))
    assert cli(repo, "run", "worse").returncode == 0
    worse = one_sentence(cli(repo, "keep"))
    assert "`autoresearch discard`" in worse and "`autoresearch keep --force --reason TEXT`" in worse
    for message in (pending, worse):
        assert not re.search(r"read_train|write_train|run_experiment|get_history|call (keep|discard)|=true", message)


def test_a_blank_description_is_one_sentence(repo: Path) -> None:
    assert "only whitespace" in one_sentence(cli(repo, "run", "  \t "))


def test_history_table_is_not_cut_when_piped(repo: Path) -> None:
    description = "widen the MLP to four times the model width, retune the LR"
    assert cli(repo, "run", description).returncode == 0
    assert description in cli(repo, "history").stdout


def test_one_run_is_one_run(repo: Path) -> None:
    assert cli(repo, "run", "baseline").returncode == 0
    assert "1 run, 0 kept" in cli(repo, "history").stdout


def test_version_is_printed(tmp_path: Path) -> None:
    out = cli(tmp_path, "--version")
    assert out.returncode == 0 and re.fullmatch(r"autoresearch \S+\n", out.stdout)


def test_prepare_help_names_the_command(tmp_path: Path) -> None:
    out = cli(experiment_repo(tmp_path), "prepare", "--help")
    assert out.returncode == 0 and out.stdout.startswith("usage: autoresearch prepare "), out.stdout


def test_serve_with_a_broken_configuration_exits_with_its_sentence(repo: Path) -> None:
    (repo / "autoresearch.toml").write_text(FAKE_CONFIG + "time_budge = 1\n")
    message = one_sentence(cli(repo, "serve", env={"AUTORESEARCH_ROOT": str(repo)}))
    assert "unknown key 'time_budge' (did you mean 'time_budget'?)" in message


def test_history_and_the_demo_report_use_the_configured_metric(tmp_path: Path) -> None:
    repo = make_fake_repo(tmp_path / "steps", FAKE_CONFIG + 'metric = "num_steps"\ndirection = "maximize"\n')
    assert cli(repo, "run", "baseline").returncode == 0 and cli(repo, "keep").returncode == 0
    assert cli(repo, "history", "--tsv").stdout.startswith("commit\tnum_steps\tmemory_gb\tstatus\tdescription\n")
    assert "num_steps" in cli(repo, "history").stdout
    console = Console(record=True, width=160, file=io.StringIO())
    report(History(repo / ".autoresearch" / "test"), tmp_path / "p.png", console, "test", "num_steps", "maximize")
    assert "num_steps" in console.export_text() and "val_bpb" not in console.export_text()
