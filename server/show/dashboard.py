"""`autoresearch dashboard`: a live web page of the search, served on 127.0.0.1 only.

The page (server/show/static/) polls two JSON endpoints and draws the chart itself, with no CDN:
    GET /api/state?tag=T        every run of the tag, the best, the runs in flight (a list), all tags
    GET /api/runs/<id>?tag=T    one run's diff and the tail of its log
    GET /report?tag=T           the tag's morning report (server/show/report.py) as one HTML page, made on request
Starlette and uvicorn come with the mcp package, so the dashboard adds no dependency.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from server.schema import tail_text
from server.show.brief import in_flight
from server.show.report import gather
from server.show.report_render import render_html
from server.show.table import outcome
from server.store.history import History, RunRecord, best_run

HOST = "127.0.0.1"  # the history holds code and logs: never reachable from another machine
DEFAULT_PORT = 8765
STATIC = Path(__file__).parent / "static"
LOG_TAIL_BYTES = 16 * 1024
DIFF_BYTES = 200_000  # a diff is capped like the editable file itself
TAG_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def tags(state_dir: Path) -> list[str]:
    """The run tags with a history under the state folder."""
    if not state_dir.is_dir():
        return []
    return sorted(p.name for p in state_dir.iterdir() if (p / "runs.jsonl").is_file())


def run_json(run: RunRecord) -> dict[str, Any]:
    """A run as the page wants it: every recorded field (a holdout metric too, once runs have one), its outcome."""
    return {**run.model_dump(mode="json"), "outcome": outcome(run), "delta": run.delta}


def state_json(state_dir: Path, tag: str, metric: str, direction: str) -> dict[str, Any]:
    runs = History(state_dir / tag).runs()
    best = best_run(runs)
    return {
        "tag": tag,
        "tags": sorted({*tags(state_dir), tag}),
        "metric": metric,
        "direction": direction,
        "runs": [run_json(r) for r in runs],
        "best": best.id if best else None,
        "running": [run.model_dump() for run in in_flight(state_dir)],  # one per slot in flight; [] when idle
        "now": time.time(),
    }


def read_capped(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as fh:
            data = fh.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + ("\n[... cut]" if len(data) > limit else "")


def run_detail(state_dir: Path, tag: str, run_id: int) -> dict[str, Any] | None:
    history = History(state_dir / tag)
    run = history.get(run_id)
    if run is None:
        return None
    folder = history.run_dir(run_id)
    return {"run": run_json(run), "diff": read_capped(folder / "diff.patch", DIFF_BYTES),
            "log_tail": tail_text(folder / "log.txt", LOG_TAIL_BYTES)}  # fmt: skip


def create_app(state_dir: Path, tag: str, metric: str = "val_bpb", direction: str = "minimize") -> Starlette:
    """The dashboard for the tags under state_dir, showing `tag` first."""

    def chosen(request: Request) -> str | None:
        asked = request.query_params.get("tag", tag)
        return asked if TAG_RE.fullmatch(asked) and ".." not in asked else None  # a tag names a folder

    async def page(_: Request) -> Response:
        return FileResponse(STATIC / "dashboard.html")

    async def api_state(request: Request) -> Response:
        name = chosen(request)
        if name is None:
            return JSONResponse({"error": "tag must be letters, digits, '.', '_' or '-'."}, status_code=400)
        return JSONResponse(state_json(state_dir, name, metric, direction))

    async def api_run(request: Request) -> Response:
        name = chosen(request)
        detail = run_detail(state_dir, name, int(request.path_params["run_id"])) if name else None
        if detail is None:
            return JSONResponse({"error": "no such run; pick one from /api/state."}, status_code=404)
        return JSONResponse(detail)

    async def report(request: Request) -> Response:
        name = chosen(request)
        history = History(state_dir / name) if name else None
        if history is None or not history.events_path.exists():
            return JSONResponse({"error": "no such tag; pick one from /api/state."}, status_code=404)
        return HTMLResponse(render_html(gather(history, metric, direction)))

    routes = [Route("/", page), Route("/api/state", api_state), Route("/api/runs/{run_id:int}", api_run),
              Route("/report", report), Mount("/static", StaticFiles(directory=STATIC), name="static")]  # fmt: skip
    return Starlette(routes=routes)


def serve(state_dir: Path, tag: str, metric: str, direction: str, port: int = DEFAULT_PORT) -> None:
    """Serve until Ctrl+C, on the loopback interface only."""
    app = create_app(state_dir, tag, metric, direction)
    uvicorn.run(app, host=HOST, port=port, log_level="warning")
