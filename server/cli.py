"""The `autoresearch` command: prepare, run, keep, discard, noise, serve, history, plot, report, finalize, watch.

Every error a user can make ends with one sentence on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import git
from rich.console import Console

from server.config import Config, load_config
from server.errors import AutoresearchError, ConfigError, RepoError
from server.store.history import History
from server.text import clean_description, what_failed

EXIT_USER_ERROR = 2
PIPE_WIDTH = 200  # rich draws for 80 columns when stdout is not a terminal; a pipe or a file has no width
err = Console(stderr=True)
out = Console() if sys.stdout.isatty() or "COLUMNS" in os.environ else Console(width=PIPE_WIDTH)
# The domain's messages are written for the agent and name its tools; a person at the terminal has commands.
FOR_PERSON = [
    ("call keep or discard before run_experiment", "run `autoresearch keep` or `autoresearch discard` first"),
    ("call keep or discard", "run `autoresearch keep` or `autoresearch discard`"),
    ("call run_experiment first", "run `autoresearch run` first"),
    ("keep with force=true needs a reason", "`autoresearch keep --force` needs --reason"),
    ("keep with force=true and a reason", "run `autoresearch keep --force --reason TEXT`"),
    ("call discard", "run `autoresearch discard`"),
    ("wait, then call get_history", "wait, then see `autoresearch history`"),
    ("write_train a new version", "write a new version"),
]


def for_person(message: str) -> str:
    """The message with each tool call the agent would make replaced by the command a person would run."""
    for tool_words, command_words in FOR_PERSON:
        message = message.replace(tool_words, command_words)
    return message


def find_root(start: Path) -> Path:
    """The repository holding `start`: the nearest folder at or above it with a `.git` (a worktree's is a file).

    From a subfolder, the commands work on the project, as git does, rather than asking for a new repository."""
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    raise RepoError(f"{start} is not a git repository, nor inside one; run this in your project's folder "
                    "or pass --root PATH.")  # fmt: skip


def root_of(args: argparse.Namespace) -> Path:
    return find_root(Path(args.root or ".").resolve())


def history_of(args: argparse.Namespace) -> tuple[Config, History]:
    """The configuration and the tag's history, without touching git (read-only commands)."""
    root = root_of(args)
    config = load_config(root)
    tag = args.tag or config.tag
    state = root / config.state_dir
    return config, History(state / tag)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve, unless the configuration is broken: exiting with its sentence on stderr is what makes a client
    (`claude mcp list`) show the server as failed. Anything fixable later (no data yet) does not stop it."""
    from server.app import project_root, serve

    if args.root:
        os.environ["AUTORESEARCH_ROOT"] = str(Path(args.root).resolve())
    load_config(project_root())
    serve()
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    """The one-time data preparation (server/dataset/, its own progress bar), in this interpreter."""
    return subprocess.call([sys.executable, "-m", "server.dataset", *args.prepare_args], cwd=root_of(args))


def cmd_run(args: argparse.Namespace) -> int:
    """One experiment by hand, through the server's runner, with a live progress bar."""
    from server.demo import data_problem
    from server.lab.loop import Lab
    from server.show.live import run_with_progress
    from server.show.views import run_result

    description = clean_description(args.description)
    root = root_of(args)
    lab = Lab(root, load_config(root))
    problem = data_problem(root)
    if problem:
        raise ConfigError(problem)
    record = run_with_progress(lab, description, out, args.repeats)
    result = run_result(lab, record)
    out.print_json(result.model_dump_json())
    return 0 if record.status == "ok" else 1


def cmd_decide(args: argparse.Namespace) -> int:
    from server.lab.loop import Lab

    root = root_of(args)
    lab = Lab(root, load_config(root))
    run = lab.keep(force=args.force, reason=args.reason) if args.command == "keep" else lab.discard()
    out.print(f"run {run.id} {run.decision}: {run.description}")
    return 0


def cmd_noise(args: argparse.Namespace) -> int:
    """Measure the noise floor again: the best run's code on several seeds, kept as the new best."""
    from server.lab.loop import Lab
    from server.show import table

    root = root_of(args)
    lab = Lab(root, load_config(root))
    run = lab.remeasure(args.seeds)
    seeds = ", ".join(f"{s.seed}: {s.metric:.6f}" for s in run.repeats if s.metric is not None)
    out.print(f"run {run.id} {run.status}: {seeds}", highlight=False)
    out.print(table.noise_line(lab.floor(), lab.config.metric), highlight=False)
    return 0 if run.status == "ok" else 1


def cmd_history(args: argparse.Namespace) -> int:
    from server.lab import noise
    from server.show import table
    from server.store.history import best_run

    config, history = history_of(args)
    every = history.runs()
    runs = table.matching(every, args.match)
    if args.json:
        print(table.to_json(runs))
    elif args.tsv:
        print(table.to_tsv(runs, config.metric), end="")
    else:
        out.print(table.render_table(runs[-args.limit :], config.metric, heading=table.title(runs)))
        floor = noise.floor_of(every, best_run(every), config.confidence)
        out.print(table.noise_line(floor, config.metric), highlight=False)
    for problem in history.problems():  # an edited history is said, never silently repaired
        err.print(f"[bold red]history problem:[/] {problem}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from server.show.plot import plot_progress

    config, history = history_of(args)
    path = plot_progress(history.runs(), Path(args.out), config.metric, config.direction)
    out.print(f"wrote {path}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """The morning report of one tag: Markdown with its pictures beside it, or one HTML page."""
    from server.show.report import default_out, gather
    from server.show.report_render import write_report

    config, history = history_of(args)
    if not history.events_path.exists():
        raise ConfigError(f"there is no history for tag {history.folder.name!r} under {history.folder.parent}; "
                          "pass --tag with a tag that has run.")  # fmt: skip
    report = gather(history, config.metric, config.direction, config.confidence)
    out_path = Path(args.out) if args.out else default_out(history.folder.parent, report.tag, args.html)
    written = write_report(report, out_path, args.html)
    out.print(f"wrote {written[0]}" + (f" (a snapshot: {report.snapshot})" if report.snapshot else ""))
    return 0


def cmd_finalize(args: argparse.Namespace) -> int:
    """The kept changes as a reviewable branch from the tag's base; the run branch and history stay as they are."""
    from server.show.finalize import describe, finalize
    from server.store.gitops import open_repo

    config, history = history_of(args)
    done = finalize(open_repo(root_of(args)), history, args.onto, config.editable, config.metric, config.direction)
    for line in describe(done):
        out.print(line, highlight=False, markup=False)
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from server.show.watch import watch

    config, history = history_of(args)
    watch(history.folder.parent, history.folder.name, out, once=args.once)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """The live web dashboard on 127.0.0.1, until Ctrl+C."""
    from server.show.dashboard import HOST, serve

    config, history = history_of(args)
    out.print(f"dashboard of tag {history.folder.name} at http://{HOST}:{args.port}/ (Ctrl+C stops it)")
    serve(history.folder.parent, history.folder.name, config.metric, config.direction, args.port)
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    """Re-pin the locked files after an intended, committed change: a human act."""
    from server.lab.loop import Lab

    root = root_of(args)
    lab = Lab(root, load_config(root))
    for path, digest in lab.pin().items():
        out.print(f"pinned {path} {digest[:12]}")
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    """End the night at the next decision point: no further run starts; the run in flight finishes."""
    from server.schema import STOP_FILE

    root = root_of(args)
    state = root / load_config(root).state_dir
    state.mkdir(parents=True, exist_ok=True)
    (state / STOP_FILE).touch()
    out.print(f"no further experiment will start (remove {state / STOP_FILE} to allow them again)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from server.demo import run_demo

    return run_demo(root_of(args), args.experiments, args.budget, args.out, out, seed=args.seed, slots=args.slots)


def add_arguments(name: str, parser: argparse.ArgumentParser) -> None:
    if name in ("history", "plot", "watch", "report", "finalize"):
        parser.add_argument("--tag", help="the run tag to show (default: the configuration's)")
    if name == "run":
        parser.add_argument("description", nargs="?", default="by hand", help="what this run tries")
        parser.add_argument("--repeats", type=int, default=None, help="seeds to run it with (seed, seed+1, ...)")
    elif name == "noise":
        parser.add_argument("--seeds", type=int, default=None, help="seeds (default: noise_seeds, at least 2)")
    elif name == "keep":
        parser.add_argument("--force", action="store_true", help="keep although not better")
        parser.add_argument("--reason", help="why, with --force")
    elif name == "history":
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--json", action="store_true", help="every record as JSON")
        group.add_argument("--tsv", action="store_true", help="the original's results.tsv")
        parser.add_argument("--limit", type=int, default=50, help="rows to show")
        parser.add_argument("--match", help="only runs whose description contains this (case-insensitive)")
    elif name == "plot":
        parser.add_argument("--out", default="progress.png", help="the PNG to write")
    elif name == "report":
        parser.add_argument("--html", action="store_true", help="one self-contained HTML page, pictures inline")
        parser.add_argument("--out", help="the file to write (default: <state_dir>/reports/<tag>.md or .html)")
    elif name == "finalize":
        parser.add_argument("--onto", required=True, help="the new branch (BRANCH-squashed gets one commit)")
    elif name == "watch":
        parser.add_argument("--once", action="store_true", help="draw one frame and exit")
    elif name == "dashboard":
        parser.add_argument("--tag", help="the run tag to show first (default: the configuration's)")
        parser.add_argument("--port", type=int, default=8765, help="the port on 127.0.0.1")
    elif name == "demo":
        parser.add_argument("--experiments", type=int, default=8, help="runs including the baseline")
        parser.add_argument("--budget", type=float, default=30.0, help="seconds of training per run")
        parser.add_argument("--out", default="progress.png", help="where to write the plot")
        parser.add_argument("--seed", type=int, default=0, help="the built-in agent's choice of ideas")
        parser.add_argument("--slots", type=int, default=1, help="runs at once; above 1, waves of candidates")


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "demo": (cmd_demo, "the whole loop on this machine, driven by a built-in agent over MCP"),
    "prepare": (cmd_prepare, "one-time data and tokenizer preparation (options: prepare --help)"),
    "run": (cmd_run, "one experiment by hand, with a live progress bar"),
    "keep": (cmd_decide, "keep the latest run (as the agent's keep tool)"),
    "discard": (cmd_decide, "discard the latest run (as the agent's discard tool)"),
    "noise": (cmd_noise, "measure the noise floor again: the best run's code on several seeds"),
    "history": (cmd_history, "the results as a table (--json, --tsv)"),
    "plot": (cmd_plot, "progress.png: every run, the running best"),
    "report": (cmd_report, "the morning report of a tag: best, kept changes, failures, time (--html for a page)"),
    "finalize": (cmd_finalize, "the kept changes as a branch to review, one commit each, and BRANCH-squashed"),
    "watch": (cmd_watch, "a live view of the running experiment and the latest runs"),
    "dashboard": (cmd_dashboard, "a live web page on 127.0.0.1: chart, history, diffs, logs, the run in flight"),
    "pin": (cmd_pin, "re-pin the locked files after an intended, committed change"),
    "stop": (cmd_stop, "end the night: no further experiment starts (the run in flight finishes)"),
    "serve": (cmd_serve, "the MCP server on stdio (what .mcp.json starts)"),
}


def version() -> str:
    try:
        return importlib.metadata.version("autoresearch-mcp")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="the repository (default: the one holding the "
                        "current directory)")  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # prepare's options, --help included, belong to server/dataset/build.py
        add_arguments(name, sub.add_parser(name, help=help_text, description=help_text, add_help=name != "prepare"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "prepare":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.prepare_args = [a for a in extra if a != "--"]  # prepare passes its options on
    started = time.monotonic()
    try:
        return COMMANDS[args.command][0](args)
    except AutoresearchError as exc:
        return fail(args.command, for_person(str(exc)))
    except (git.GitCommandError, OSError) as exc:  # the machine's problem, not a bug: one sentence, no traceback
        return fail(args.command, f"{what_failed(exc)}; fix that and run the command again.")
    except KeyboardInterrupt:
        err.print(f"autoresearch {args.command}: interrupted after {time.monotonic() - started:.0f}s")
        return 130


def fail(command: str, sentence: str) -> int:
    err.print(f"autoresearch {command}: {sentence}", markup=False, highlight=False, soft_wrap=True)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
