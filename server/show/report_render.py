"""The report as a document of sections, written out as Markdown (pictures as PNG files beside it) or as one
self-contained HTML page (pictures inline as base64 PNG)."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

from server.show.plot import write_shared
from server.show.report import Change, Report, gain_of, phase_share
from server.show.report_charts import pictures
from server.store.history import RunRecord

STYLE = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
         "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
         "pre{background:#f6f6f6;padding:8px;overflow-x:auto}img{max-width:100%}.flag{color:#b00020}")  # fmt: skip


@dataclass(frozen=True)
class Block:
    """One piece of a section: a paragraph, a list, a table, a code block or a picture."""

    kind: str  # "p", "ul", "table", "pre", "img"
    items: list[str]
    rows: list[list[str]] | None = None


@dataclass(frozen=True)
class Section:
    id: str
    title: str
    blocks: list[Block]


def _fmt(value: float | None, digits: int = 6) -> str:
    return "-" if value is None else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0.000000"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds:.0f} s"


def _result(run: RunRecord | None) -> list[str]:
    if run is None:
        return ["-", "-", "-"]
    return [f"run {run.id}: {run.description}", _fmt(run.metric), _fmt(run.holdout_metric)]


def summary_section(report: Report) -> Section:
    rows = [["baseline", *_result(report.baseline)], ["best", *_result(report.best)]]
    table = Block("table", ["", "run", f"{report.metric} (validation)", "holdout"], rows)
    floor = report.floor
    noise = "noise floor: not measured (one seed only)"
    if floor is not None:
        noise = (f"noise floor: std {floor.std:.6f} over seeds {floor.seeds} ({floor.how}); a one-seed run must "
                 f"gain more than {floor.single_seed_gain:.6f}")  # fmt: skip
    return Section("summary", "Baseline and best", [table, Block("p", [noise])])


def _change(change: Change) -> list[Block]:
    run = change.run
    gate = "forced" if run.forced else ("beyond noise" if (change.beyond or 0) > 0 else "inside noise")
    lines = [f"gain {_fmt(change.gain)} (needed {_fmt(change.required)}, {gate}, beyond the band by "
             f"{_fmt(change.beyond)})", f"hypothesis: {run.hypothesis or '-'}",
             f"lesson: {run.lesson or '-'}"]  # fmt: skip
    return [Block("p", [f"run {run.id}: {run.description}"]), Block("ul", lines),
            Block("pre", [change.diff or "(no change to the code)"])]  # fmt: skip


def chain_section(report: Report) -> Section:
    blocks = [Block("img", ["gains", "the gain of each kept change"])]
    for change in report.chain:
        blocks += _change(change)
    return Section("chain", "Kept changes, in order", blocks if report.chain else [Block("p", ["no run kept yet"])])


def misses_section(report: Report) -> Section:
    misses = [f"run {r.id} ({_fmt(r.metric)}, gain {_fmt(gain_of(r, report.direction))} on the best then): "
              f"{r.description}" for r in report.near_misses]  # fmt: skip
    ideas = [f"run {run_id}: {text}" for run_id, text in report.ideas]
    return Section("next", "Near misses and ideas for next", [Block("p", ["near misses (discarded, closest to the "
                   "best):"]), Block("ul", misses or ["none"]), Block("p", ["ideas the lessons name:"]),
                   Block("ul", ideas or ["none"])])  # fmt: skip


def failures_section(report: Report) -> Section:
    rows = [[f.status, str(f.count), "; ".join(f"{why} ({n})" for why, n in f.reasons)] for f in report.failures]
    blocks = [Block("table", ["status", "runs", "most common reasons"], rows)] if rows else [Block("p", ["none"])]
    return Section("failures", "Failures", blocks)


def compute_section(report: Report) -> Section:
    share = phase_share(report)
    total = sum(share.values()) or 1.0
    seeds = sum(r.seeds for r in report.runs)
    lines = [f"{len(report.runs)} runs ({seeds} seeds), {report.compute_hours:.2f} {report.device} hours, "
             f"wall time {_hours(report.time.span)}"]  # fmt: skip
    split = [f"{phase}: {_hours(seconds)} ({seconds / total:.0%})" for phase, seconds in share.items()]
    return Section("compute", "Compute and where the time went", [Block("p", lines), Block("ul", split),
                   Block("img", ["time", "where each run's time went"])])  # fmt: skip


def checks_section(report: Report) -> Section:
    checked = [f"run {c.run.id}: holdout {_fmt(c.run.holdout_metric)}" + (f" (flag: {c.run.holdout_note})"
               if c.run.holdout_note else "") for c in report.chain if c.run.holdout_metric is not None]  # fmt: skip
    flags = [f"FLAG: {note}" for note in report.flagged]
    return Section("checks", "Holdout checks and forced keeps", [Block("ul", checked + flags or ["none"])])


def document(report: Report) -> tuple[str, list[Section]]:
    """The heading line and the sections, in reading order."""
    head = f"Report of tag {report.tag}, made {report.made_at}"
    if report.snapshot:
        head = f"SNAPSHOT: the night is still going ({report.snapshot}). " + head
    progress = Section("progress", "Progress", [Block("img", ["progress", "every run and the running best"])])
    return head, [summary_section(report), progress, chain_section(report), misses_section(report),
                  failures_section(report), compute_section(report), checks_section(report)]  # fmt: skip


def _md_block(block: Block, images: dict[str, str]) -> str:
    if block.kind == "p":
        return block.items[0]
    if block.kind == "ul":
        return "\n".join(f"- {item}" for item in block.items)
    if block.kind == "pre":
        return f"```diff\n{block.items[0].rstrip()}\n```"
    if block.kind == "img":
        return f"![{block.items[1]}]({images[block.items[0]]})"
    lines = [block.items, ["---"] * len(block.items), *(block.rows or [])]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in lines)


def markdown(report: Report, images: dict[str, str]) -> str:
    """The report in Markdown; images maps each picture's name to where the Markdown points."""
    head, sections = document(report)
    parts = [f"# {head}"]
    for section in sections:
        parts.append(f"## {section.title}")
        parts += [_md_block(block, images) for block in section.blocks]
    return "\n\n".join(parts) + "\n"


def _html_block(block: Block, images: dict[str, bytes]) -> str:
    esc = html.escape
    if block.kind == "p":
        return f"<p>{esc(block.items[0])}</p>"
    if block.kind == "ul":
        items = [(' class="flag"' if item.startswith("FLAG") else "", esc(item)) for item in block.items]
        return "<ul>" + "".join(f"<li{cls}>{text}</li>" for cls, text in items) + "</ul>"
    if block.kind == "pre":
        return f"<pre>{esc(block.items[0])}</pre>"
    if block.kind == "img":
        data = base64.b64encode(images[block.items[0]]).decode("ascii")
        return f'<img id="img-{block.items[0]}" alt="{esc(block.items[1])}" src="data:image/png;base64,{data}">'
    head = "".join(f"<th>{esc(cell)}</th>" for cell in block.items)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in block.rows or [])
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(report: Report) -> str:
    """The report as one self-contained page: no link leaves it, the pictures are inline."""
    head, sections = document(report)
    images = pictures(report)
    body = [f"<h1>{html.escape(head)}</h1>"]
    for section in sections:
        inner = "".join(_html_block(block, images) for block in section.blocks)
        body.append(f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>{inner}</section>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(head)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")  # fmt: skip


def write_report(report: Report, out: Path, as_html: bool) -> list[Path]:
    """Write the report (and, for Markdown, its pictures beside it as <stem>-<name>.png); the paths written."""
    if as_html:
        write_shared(out, render_html(report).encode())
        return [out]
    images = pictures(report)
    written = []
    for name, data in images.items():
        path = out.with_name(f"{out.stem}-{name}.png")
        write_shared(path, data)
        written.append(path)
    write_shared(out, markdown(report, {name: f"{out.stem}-{name}.png" for name in images}).encode())
    return [out, *written]
