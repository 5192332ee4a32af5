"""Run histories as text: compact rows for an agent's context, a rich table for the terminal, JSON and TSV."""

from __future__ import annotations

import json

from rich.table import Table

from server.lab.noise import Floor
from server.store.history import RunRecord, best_run, results_tsv

DESC_WIDTH = 48
MIN_DESC_WIDTH = 16
# The rows go into an agent's context on every call, so their total size is capped, not just each row.
ROWS_BUDGET = 6000
ELLIPSIS = "…"


def outcome(run: RunRecord) -> str:
    """One word per run: running, keep, discard, pending, or crash (any failed status)."""
    if run.status == "running":
        return "running"
    return run.tsv_status


# Failed runs other than crashes are counted under their own status, as words for a heading.
FAILED_WORDS = {"timeout": "timed out", "no_metric": "without a metric", "over_budget": "over budget",
                "cancelled": "cancelled", "interrupted": "interrupted", "tampered": "tampered"}  # fmt: skip


def counts(runs: list[RunRecord]) -> dict[str, int]:
    """How many runs there are, and how many ended each way: kept, discarded, crashed, pending, running, and
    each other failed status under its own name (timeout, over_budget, ...) when there are any."""
    result = {"runs": len(runs), "kept": 0, "discarded": 0, "crashed": 0, "pending": 0, "running": 0}
    for run in runs:
        key = _count_key(run)
        result[key] = result.get(key, 0) + 1
    extra = extra_seed_runs(runs)
    if extra:  # repeats cost runs: the budget counts them
        result["extra_seed_runs"] = extra
    return result


def extra_seed_runs(runs: list[RunRecord]) -> int:
    """The runs repeats added: every seed after a run's first."""
    return sum(run.seeds - 1 for run in runs)


def _count_key(run: RunRecord) -> str:
    if run.status == "ok":
        return {"keep": "kept", "discard": "discarded"}.get(run.decision or "", "pending")
    return "crashed" if run.status == "crash" else run.status


def count_words(runs: list[RunRecord], noun: str = "run") -> str:
    """'5 runs, 2 kept, 1 discarded, 1 crashed, 1 over budget, 2 running': each way a run ended, under its own
    name, then the runs still in flight."""
    c = counts(runs)
    words = [f"{c['runs']} {noun}{'' if c['runs'] == 1 else 's'}", f"{c['kept']} kept",
             f"{c['discarded']} discarded", f"{c['crashed']} crashed"]  # fmt: skip
    words += [f"{c[status]} {word}" for status, word in FAILED_WORDS.items() if c.get(status)]
    if c["running"]:
        words.append(f"{c['running']} running")
    if c.get("extra_seed_runs"):
        words[0] += f" (+{c['extra_seed_runs']} seed repeats)"
    return ", ".join(words)


def matching(runs: list[RunRecord], text: str | None) -> list[RunRecord]:
    """The runs whose description contains `text` (case-insensitive); all of them when it is None."""
    return runs if text is None else [r for r in runs if text.casefold() in r.description.casefold()]


def shorten(text: str, width: int) -> str:
    """The text on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1].rstrip() + ELLIPSIS


def fmt_metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.6f}"


def fmt_delta(run: RunRecord) -> str:
    delta = run.delta
    return "-" if delta is None else f"{delta:+.4f}"


def fmt_memory(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_epochs(value: float | None) -> str:
    """Passes over the training data: over 1, the run repeated its data (a bigger dataset is needed)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def fmt_seeds(run: RunRecord) -> str:
    """'1', or '3 ±0.0021': the seeds the metric is a mean of, and their sample standard deviation."""
    return str(run.seeds) + (f" ±{run.metric_std:.4f}" if run.metric_std is not None else "")


def fmt_gate(run: RunRecord) -> str:
    """What the keep gate made of the run: beyond the noise band, inside it, or kept by force."""
    if run.forced:
        return "forced"
    if run.beyond_noise is None:
        return "-"
    return "beyond" if run.beyond_noise else "inside"


def fmt_holdout(run: RunRecord) -> str:
    """The kept model on the holdout (the human's view only), '!' when it does not confirm the gain."""
    if run.holdout_metric is None:
        return "!" if run.holdout_note else "-"
    return f"{run.holdout_metric:.6f}" + (" !" if run.holdout_note else "")


def _columns(runs: list[RunRecord], metric: str) -> list[list[str]]:
    """Every column but the description, header first; `<`/`>` in front of a header sets its alignment."""
    return [
        [">id", *(str(r.id) for r in runs)],
        [">" + metric, *(fmt_metric(r.metric) for r in runs)],
        [">delta", *(fmt_delta(r) for r in runs)],
        [">GB", *(fmt_memory(r.memory_gb) for r in runs)],
        ["<outcome", *(_outcome_word(r) for r in runs)],
        [">epochs", *(fmt_epochs(r.epochs) for r in runs)],
    ]


def _outcome_word(run: RunRecord) -> str:
    """The decision for a finished run, else its status (crash, timeout, ...): one column, not two.
    The commit is left out: get_history(run_id) has it, and every row would pay for it."""
    if run.status == "ok":
        return run.decision or "pending"
    return run.status


def _pad(columns: list[list[str]]) -> list[str]:
    """The columns side by side, each as wide as its widest cell, one line per row."""
    padded = []
    for column in columns:
        align, cells = column[0][0], [column[0][1:], *column[1:]]
        width = max(len(cell) for cell in cells)
        padded.append([f"{cell:{align}{width}}" for cell in cells])
    return [" ".join(parts) + " " for parts in zip(*padded, strict=True)]


def _desc_width(fixed: int, rows: int) -> int:
    """The widest description (up to DESC_WIDTH) that keeps all rows within ROWS_BUDGET bytes."""
    if not rows:
        return DESC_WIDTH
    # +1 for the newline; the ellipsis takes more bytes than the one character it replaces
    fits = ROWS_BUDGET // rows - fixed - 1 - (len(ELLIPSIS.encode()) - 1)
    return max(MIN_DESC_WIDTH, min(DESC_WIDTH, fits))


def format_rows(runs: list[RunRecord], limit: int = 20, metric: str = "val_bpb", match: str | None = None) -> list[str]:
    """A header and one fixed-width line per run: the latest `limit` runs, oldest first. `match` names the
    filter that chose `runs`, for the header."""
    shown = runs[-limit:] if limit > 0 else []
    lines = _pad(_columns(shown, metric))
    width = _desc_width(len(lines[0].encode()), len(shown))
    header = lines[0] + "description"
    notes = [] if match is None else [f"{len(runs)} matching {match!r}"]
    if len(shown) < len(runs):
        notes.append(f"{len(runs) - len(shown)} earlier {'of them ' if match else 'runs '}not shown")
    if notes:
        header += f" ({', '.join(notes)})"
    rows = zip(lines[1:], shown, strict=True)
    return [header, *((line + shorten(run.description, width)).rstrip() for line, run in rows)]


def _style(run: RunRecord) -> str:
    """Kept runs stand out, crashes alarm, discards recede, runs in flight wait in yellow."""
    return {"keep": "bold green", "crash": "red", "discard": "dim", "running": "yellow"}.get(outcome(run), "")


def pooled(runs: list[RunRecord]) -> bool:
    """Whether the runs came from a pool of several slots (a run in a slot past the first)."""
    return any((run.slot or 0) > 0 for run in runs)


def title(runs: list[RunRecord]) -> str:
    """A one-line summary of a history: counts and the best metric."""
    best = best_run(runs)
    text = count_words(runs)
    return text + (f" — best {best.metric:.6f} (#{best.id})" if best and best.metric is not None else "")


def render_table(
    runs: list[RunRecord], metric: str = "val_bpb", caption: str | None = None, heading: str | None = None
) -> Table:
    """A rich table of the runs for the terminal: kept runs green, crashes red, discards dim, runs in flight
    yellow; a slot column when the runs came from a pool of several slots."""
    caption = caption if caption is not None else holdout_caption(runs)
    table = Table(title=title(runs) if heading is None else heading, caption=caption, header_style="bold")
    slots = pooled(runs)
    widths = {"#": 3, "commit": 7, metric: 8, "seeds": 5, "delta": 7, "gate": 6, "holdout": 8, "mem GB": 6,
              "outcome": 9, "epochs": 6, **({"slot": 4} if slots else {})}  # fmt: skip
    for name, width in widths.items():
        table.add_column(name, justify="left" if name in ("commit", "outcome") else "right", no_wrap=True,
                         min_width=max(width, len(name)))  # fmt: skip
    # one line per run, even when narrow: the description gives up its width first
    table.add_column("description", no_wrap=True, overflow="ellipsis", ratio=1)
    for run in runs:
        word = _outcome_word(run) + (" (forced)" if run.forced else "")
        cells = [str(run.id), run.commit[:7], fmt_metric(run.metric), fmt_seeds(run), fmt_delta(run), fmt_gate(run),
                 fmt_holdout(run), fmt_memory(run.memory_gb)]  # fmt: skip
        where = [str(run.slot) if run.slot is not None else "-"] if slots else []
        table.add_row(*cells, word, fmt_epochs(run.epochs), *where, shorten(run.description, 60), style=_style(run))
    return table


def holdout_caption(runs: list[RunRecord]) -> str | None:
    """The kept runs whose validation gain the holdout did not confirm, for the human."""
    notes = [f"! run {run.id}: {run.holdout_note}" for run in runs if run.holdout_note]
    return "\n".join(notes) or None


def noise_line(floor: Floor | None, metric: str) -> str:
    """The noise floor in one line for the terminal."""
    if floor is None:
        return "noise floor: not measured yet (the tag's first run measures it)"
    seeds = f"{floor.seeds[0]}-{floor.seeds[-1]}" if floor.seeds else "?"
    return (f"noise floor: {metric} std {floor.std:.6f} over {len(floor.seeds)} seeds ({seeds}) of run "
            f"{floor.run_id}, {floor.how}; a one-seed run must gain more than {floor.single_seed_gain:.6f} "
            f"({floor.confidence:.0%} one-sided t-test)")  # fmt: skip


def to_json(runs: list[RunRecord]) -> str:
    """The records as a JSON list; RunRecord.model_validate on each item gives them back."""
    return json.dumps([run.model_dump(mode="json") for run in runs], indent=1)


def to_tsv(runs: list[RunRecord], metric: str = "val_bpb") -> str:
    """The original's results.tsv: commit, the metric (val_bpb in the original), memory_gb, status, description."""
    return results_tsv(runs, metric)
