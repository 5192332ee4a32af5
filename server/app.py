"""The MCP tools. Each is a thin typed function over Lab; the only module that imports MCP."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from server.config import load_config
from server.errors import AutoresearchError
from server.lab import supervise
from server.lab.edits import Edit
from server.lab.loop import ActiveRun, Lab, RunRequest
from server.run.runner import kill_all_now
from server.show import views
from server.store.history import RunRecord
from server.text import clean_description, clean_note, what_failed

log = logging.getLogger("autoresearch")
T = TypeVar("T")
PROGRESS_EVERY_S = 5.0  # Claude Code's idle timeout is 30 min; progress also shows the agent the run is alive


@dataclass
class AppState:
    """The server's one Lab, built lazily so a fixable set-up error does not stop the server starting."""

    root: Path
    lab: Lab | None = None

    def get(self) -> Lab:
        if self.lab is None:
            self.lab = Lab(self.root, load_config(self.root), spares=True)
        return self.lab


def project_root() -> Path:
    """The repository the server works on: AUTORESEARCH_ROOT, else Claude Code's project dir, else cwd."""
    return Path(os.environ.get("AUTORESEARCH_ROOT") or os.environ.get("CLAUDE_PROJECT_DIR") or os.getcwd())


@asynccontextmanager
async def lifespan(_: MCPServer[AppState]) -> AsyncIterator[AppState]:
    state = AppState(project_root())
    try:
        state.get()
    except AutoresearchError as exc:  # reported by every tool call until it is fixed
        log.warning("not ready: %s", exc)
    except Exception as exc:  # git or the OS: every tool call reports it too, as a sentence
        log.warning("not ready: %s", what_failed(exc), exc_info=True)
    try:
        yield state
    finally:
        if state.lab is not None:
            state.lab.close()  # its spares: no process outlives the server's session


mcp: MCPServer[AppState] = MCPServer(
    "autoresearch",
    instructions=(
        "Tools for an autonomous research loop on one training script. Read program.md "
        "(resource autoresearch://program) first. Loop: read_train, write_train (one idea), run_experiment, "
        "then keep if it improved else discard. Never stop."
    ),
    lifespan=lifespan,
)


async def call(ctx: Context[AppState], fn: Callable[..., T], *args: Any) -> T:
    """Run a domain call in a worker thread; expected failures become ToolErrors the model can read."""
    state = ctx.request_context.lifespan_context
    try:
        lab = state.get()
        return await anyio.to_thread.run_sync(lambda: fn(lab, *args))
    except AutoresearchError as exc:
        raise ToolError(str(exc)) from exc
    except Exception as exc:  # git, the OS, a bug: the SDK would send only "Error executing tool"
        log.exception("tool call failed")
        raise ToolError(f"{what_failed(exc)}; tell the user, who can fix it (the server's log on stderr has the "
                        "details), then call the tool again.") from exc  # fmt: skip


def compact(result: BaseModel) -> CallToolResult:
    """The structured result for programs, and the same as compact JSON text (no indent, no nulls) for the
    model: the SDK's default text is indented JSON, a fifth larger, paid in the agent's context every call."""
    text = result.model_dump_json(exclude_none=True)
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content=result.model_dump(mode="json")
    )


READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


@mcp.tool(annotations=READ_ONLY)
async def read_train(ctx: Context[AppState]) -> Annotated[CallToolResult, views.TrainFile]:
    """The editable training script as it is now, the commit it is based on, and the best result so far."""
    return compact(await call(ctx, views.train_file))


@mcp.tool(annotations=ToolAnnotations(destructive_hint=False, idempotent_hint=True, open_world_hint=False))
async def write_train(
    ctx: Context[AppState],
    content: Annotated[str | None, Field(description="the whole new file; or use edits")] = None,
    edits: Annotated[
        list[views.EditIn] | None,
        Field(
            description="exact search/replace pairs; each `old` must occur exactly once in the file as it is "
            "now (not in what another edit writes), and no two may overlap"
        ),
    ] = None,
) -> Annotated[CallToolResult, views.WriteResult]:
    """Change the training script (the only file you may change). Send `edits` for small changes or `content`
    for a rewrite. Rejected unless it is UTF-8 text that compiles; then the file is left unchanged. Returns the
    diff against the last kept version."""
    pairs = [Edit(e.old, e.new) for e in edits] if edits is not None else None
    return compact(await call(ctx, views.write, content, pairs))


@mcp.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
async def run_experiment(
    ctx: Context[AppState],
    description: Annotated[str, Field(min_length=1, max_length=200, description="the idea, in a few words")],
    repeats: Annotated[
        int | None,
        Field(
            ge=1,
            le=10,
            description="run it with this many seeds (each a full run); on a near miss awaiting a "
            "decision, with the script unchanged, adds this many seeds to it",
        ),
    ] = None,
    hypothesis: Annotated[
        str | None, Field(max_length=300, description="what you expect and why; kept with the run for later")
    ] = None,
    duplicate_reason: Annotated[
        str | None, Field(max_length=300, description="run code identical to an earlier run's anyway: why")
    ] = None,
    edits: Annotated[
        list[views.EditIn] | None,
        Field(
            description="run a candidate: these search/replace edits applied to the best's code, leaving "
            "train.py (your draft) untouched; several candidates can run at once, one per free slot"
        ),
    ] = None,
    rebase: Annotated[
        int | None,
        Field(
            ge=1,
            description="re-run this undecided run's edits on the current best (when keep says the best "
            "moved); that run is discarded",
        ),
    ] = None,
    wait: Annotated[
        bool,
        Field(
            description="block until scored (default); false: return at once with the run id, then "
            "collect it with get_history(wait_for=[run_id])"
        ),
    ] = True,
) -> Annotated[CallToolResult, views.RunResult]:
    """Commit the current script (or a candidate: edits to the best) and run it as one experiment with the
    fixed time budget; blocks until it is scored (minutes) and returns the metric (the mean over its seeds),
    its change against the best, whether that is beyond the noise, and on failure the reason and the end of the
    log. With wait=false it returns at once (status running). The tag's first run measures the noise floor on
    several seeds. Code identical to an earlier run's is refused with that run's result. Afterwards call keep
    or discard."""
    pairs = [Edit(e.old, e.new) for e in edits] if edits else None

    def start(lab: Lab) -> ActiveRun:  # bad text is refused inside call: a ToolError, like any refusal
        request = RunRequest(clean_description(description), repeats, None, clean_note(hypothesis),
                             clean_note(duplicate_reason), pairs, rebase)  # fmt: skip
        return lab.start(request, launch_now=wait)

    active = await call(ctx, start)
    if not wait:
        return compact(await call(ctx, lambda lab: views.run_result(lab, supervise.spawn(lab, active))))
    record = await drive(ctx, active)
    return compact(await call(ctx, views.run_result, record))


class ClientGone(BaseException):
    """The request was cancelled (the client went away): the run is killed and recorded cancelled."""


async def drive(ctx: Context[AppState], active: ActiveRun) -> RunRecord:
    """Lab.drive in a worker thread, its progress sent to the client every PROGRESS_EVERY_S. A cancelled
    request stops the run within a second (the callback raises in the thread), and the run is recorded
    before the cancellation goes on: no run or slot is left behind."""
    lab = ctx.request_context.lifespan_context.get()
    started = time.monotonic()
    total = lab.config.hard_timeout * (1 + len(active.seeds_left))
    gone, done = threading.Event(), threading.Event()
    sent = [started]

    def progress(run: ActiveRun) -> None:
        if gone.is_set():
            raise ClientGone
        if time.monotonic() - sent[0] >= PROGRESS_EVERY_S:
            sent[0] = time.monotonic()
            with contextlib.suppress(Exception):  # a progress message is never worth the run
                anyio.from_thread.run(ctx.report_progress, sent[0] - started, total,
                                      views.progress_message(run, started))  # fmt: skip

    def drive_here() -> RunRecord:
        try:
            return lab.drive(active, progress, every=min(1.0, PROGRESS_EVERY_S))
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(drive_here, abandon_on_cancel=True)
    except AutoresearchError as exc:  # raised in the thread once the run was recorded
        raise ToolError(str(exc)) from exc
    except Exception as exc:
        log.exception("run %d failed", active.record.id)
        raise ToolError(f"{what_failed(exc)}; tell the user, who can fix it (the server's log on stderr has the "
                        "details), then call the tool again.") from exc  # fmt: skip
    except BaseException:
        gone.set()  # the thread cancels the run at its next tick and records it; wait for that, shielded
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(done.wait)
        raise


@mcp.tool(annotations=READ_ONLY)
async def get_history(
    ctx: Context[AppState],
    limit: Annotated[int, Field(ge=1, le=500, description="how many recent runs to list")] = 15,
    run_id: Annotated[int | None, Field(ge=1, description="show this run's detail: diff, log tail, summary")] = None,
    match: Annotated[
        str | None, Field(min_length=1, max_length=100, description="only runs whose description contains this")
    ] = None,
    wait_for: Annotated[
        list[int] | None,
        Field(
            max_length=64,
            description="first wait until these runs have ended (or wait_seconds passed); "
            "their results come back in `results`",
        ),
    ] = None,
    wait_seconds: Annotated[
        float, Field(ge=0, le=3600, description="the longest to wait for wait_for; call again if still running")
    ] = 50.0,
) -> Annotated[CallToolResult, views.HistoryView]:
    """What has been tried: the latest runs as compact rows, the best run, counts, the runs in flight and those
    awaiting a decision, the noise floor; match finds earlier runs of an idea (case-insensitive); run_id shows
    that run's full detail; wait_for collects runs started with wait=false."""
    if wait_for:
        started = time.monotonic()
        while True:
            step = min(PROGRESS_EVERY_S, max(0.0, wait_seconds - (time.monotonic() - started)))
            waited = await call(ctx, lambda lab, ids, seconds: lab.wait_for(ids, seconds), wait_for, step)
            if all(r.status != "running" for r in waited) or time.monotonic() - started >= wait_seconds:
                break
            running = ", ".join(str(r.id) for r in waited if r.status == "running")
            await ctx.report_progress(time.monotonic() - started, wait_seconds, f"waiting for run(s) {running}")
    return compact(await call(ctx, views.history_view, limit, run_id, match, wait_for))


@mcp.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
async def keep(
    ctx: Context[AppState],
    force: Annotated[bool, Field(description="keep a run that is not better (simpler code, equal result)")] = False,
    reason: Annotated[str | None, Field(max_length=300, description="required with force")] = None,
    run_id: Annotated[int | None, Field(ge=1, description="the run to keep; default the latest finished")] = None,
    lesson: Annotated[str | None, Field(max_length=300, description="what this run taught; kept for later")] = None,
) -> Annotated[CallToolResult, views.DecisionResult]:
    """Accept a finished run (the latest by default; give run_id when several await a decision): the run branch
    advances to its commit. Only a gain on the best it started from beyond the noise band (run_experiment's
    required_gain) is kept unless force is given with a reason; if the best moved since, rebase it. Crashed
    runs can never be kept."""
    return compact(await call(ctx, views.decide, "keep", run_id, force, reason, clean_note(lesson)))


@mcp.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=False, open_world_hint=False))
async def discard(
    ctx: Context[AppState],
    run_id: Annotated[int | None, Field(ge=1, description="the run to discard; default the latest")] = None,
    lesson: Annotated[str | None, Field(max_length=300, description="what this run taught; kept for later")] = None,
) -> Annotated[CallToolResult, views.DecisionResult]:
    """Reject a finished run (the latest by default; give run_id when several await a decision): a training
    script still holding its code returns to the last kept version. Its result stays in the history."""
    return compact(await call(ctx, views.decide, "discard", run_id, False, None, clean_note(lesson)))


def _refuse_unknown_arguments() -> None:
    """A misspelt argument must be an error, not silently dropped (the SDK's models allow extras).

    Uses the SDK's tool manager; tests/test_reliability_io.py fails if a new SDK changes this."""
    for registered in mcp._tool_manager.list_tools():
        registered.fn_metadata.arg_model.model_config["extra"] = "forbid"
        registered.fn_metadata.arg_model.model_rebuild(force=True)


_refuse_unknown_arguments()


@mcp.resource("autoresearch://program", mime_type="text/markdown", description="the agent's instructions")
def program() -> str:
    path = project_root() / "program.md"
    return path.read_text(encoding="utf-8") if path.exists() else "program.md is missing from the repository."


@mcp.resource("autoresearch://runs/{run_id}/log", mime_type="text/plain", description="a run's log (tail)")
def run_log(run_id: str) -> str:
    return views.log_text(project_root(), run_id)


@mcp.prompt(name="autoresearch", description="Start or resume the autonomous research loop")
def loop_prompt() -> str:
    return views.loop_prompt(project_root())


def _on_sigterm(signum: int, _frame: object) -> None:
    """Clients stop a server with SIGTERM (the SDK's after 2 s, Claude Code's on exit): no run may outlive it.
    The run stays `running` in the history; the next start records it as interrupted."""
    kill_all_now()
    os._exit(128 + signum)


def serve() -> None:
    """Serve over stdio; logs go to stderr, never stdout (the MCP wire)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    mcp.run("stdio")
