"""RESULTS.md from the suite's results dictionary."""

from __future__ import annotations

from typing import Any

from report import fmt, table, verdict

PHASE_LABELS = {  # from the server's record of each run: its clock on the run's marker lines
    "startup": "start-up: the run's start (the word to its spare, or a cold process's start) to timed training",
    "training": "timed training (the budget, on the server's clock)",
    "handover": "hand-over: the end of training to the process's exit (torch.export of the model)",
    "evaluation": "evaluation: the server's word to the warm evaluator until its result",
    "holdout": "holdout: the same evaluator, when a keep could take the run (keep then finds it ready)",
    "server_rest": "the rest of the call: commit, snapshot, sandbox set-up, records, reply",
    "decision": "the keep/discard call",
    "think": "the client's think time (--think; left out of the percentages)",
    "client_gap": "client between calls (rest)",
}


def header(res: dict[str, Any]) -> str:
    m = res["machine"]
    rows = [[k, f"`{m[k]}`" if k in ("interpreter", "commit") else m[k]] for k in m]
    rows.append(["load average (1 min) at start / end", f"{res['load'][0]:.2f} / {res['load'][1]:.2f}"])
    return "\n\n".join([
        "# Benchmark results",
        f"Written by `{res['command']}` ({'quick, tiny setting' if res['quick'] else 'full setting'}) in "
        f"{res['elapsed_s']:.0f} s. Figures are `median (min–max, n=repeats)`. The machine is shared (other "
        "processes ran at the same time, see the load average), so single runs are noisy: compare medians. "
        "Each section ends with the commit, settings, machine and load that produced its figures"
        + (" (sections kept by --merge come from earlier runs)." if res.get("merge") else ".")
        + (f" Left out: {', '.join(res['dropped'])}, written before figures carried their provenance."
           if res.get("dropped") else ""),
        table(["machine", ""], rows),
    ])  # fmt: skip


def provenance(p: dict[str, Any]) -> str:
    """The line under a section that says exactly what produced its figures."""
    m, s = p["machine"], p["settings"]
    tree = "with uncommitted changes" if p["dirty"] else "clean tree"
    settings = ", ".join(f"{k}={v}" for k, v in s.items() if v is not None and v is not False) or "defaults"
    return (
        f"*Measured at commit `{p['commit']}` ({tree}), settings: {settings}, by `{p['command']}` on "
        f"{m['date']}, {m['cpu']} ({m['cores']} cores), load average {p['load'][0]:.2f} → {p['load'][1]:.2f}.*"
    )


def overhead(res: dict[str, Any]) -> str:
    parts = ["## 1. Loop overhead: `run_experiment` over stdio vs. the same command by hand",
             "Wall time in the client of one `run_experiment` call (server started as `.venv/bin/autoresearch "
             "serve` over real stdio) against `subprocess.run` of the same argv in a copy of the same tree, with "
             "the same environment and output to a log file; pairs interleaved, one warm-up pair not counted (none "
             "with --quick). "
             "Target: under 0.3 s added per experiment."]  # fmt: skip
    rows, phases = [], []
    for name, r in res.items():
        label = f"{name} (budget {r['budget_s']:g} s)"
        rows.append([label, fmt(r["served"]), fmt(r["direct"]), fmt(r["added"]), f"{r['ratio']:.3f}",
                     verdict(r["met"])])  # fmt: skip
        for key, text in [
            ("before", "before the interpreter's first line"),
            ("inside", "interpreter running"),
            ("exit", "interpreter teardown"),
            ("after", "after the process is gone"),
        ]:
            phases.append([label, text, fmt(r[f"served_{key}"]), fmt(r[f"direct_{key}"])])
        phases.append([label, "keep/discard call (served only, not in the added time)", fmt(r["decision"]), "-"])
    parts.append(table(["experiment", "served s", "direct s", "added s (pairwise)", "ratio of medians",
                        "target < 0.3 s"], rows))  # fmt: skip
    parts.append("Where the time goes (seconds):\n\n" + table(["experiment", "phase", "served", "direct"], phases))
    return "\n\n".join(parts)


def _share(part: dict[str, Any], whole: dict[str, Any]) -> str:
    """Percent of the iteration; n/a where the phase left no stamp (train.py ends with os._exit: no atexit)."""
    median = part.get("median")
    return "n/a" if median is None or median != median else f"{100 * median / whole['median']:.1f}%"


def throughput(r: dict[str, Any]) -> str:
    rows = [[PHASE_LABELS[k], fmt(r[k]), _share(r[k], r["cycle"])] for k in PHASE_LABELS
            if k in r and (k != "think" or r.get("think_s"))]  # fmt: skip
    rows.append(["**whole iteration**", fmt(r["cycle"]), "100%"])
    return "\n\n".join([
        f"## 2. Loop throughput at a {r['budget_s']:g} s budget",
        f"{r['iterations']} iterations of the real `experiment/train.py` ({r['model']}, dataset {r['dataset']}) "
        "driven over stdio; an iteration runs from one `run_experiment` call to the next, keep/discard included"
        + (f"; the client thinks {r['think_s']:g} s after each decision, and the percentages leave that out."
           if r.get("think_s") else "."),
        table(["figure", "value"], [
            ["experiments per hour", fmt(r["experiments_per_hour"], 1)],
            ["limit (3600 / budget)", f"{r['limit_per_hour']:.1f}"],
            ["percent of the limit", fmt(r["percent_of_limit"], 1, "%")],
            ["the original (300 s in ~326 s on an H100)", f"{r['original_percent']:.1f}%"],
            [f"target ≥ {r['target_percent']:g}%", verdict(r["met"])],
            ["runs scored `ok`", fmt(r["ok"], 2)],
            ["a fresh `python -c 'import torch, numpy'` (part of set-up)", fmt(r["import_torch_s"])],
        ]),
        *_setup(r.get("setup")),
        *[f"Run {f['run']} was not scored `ok`: {f['status']} ({f['reason']})." for f in r.get("not_ok", [])],
        "Where an iteration goes (seconds; share of the median iteration):",
        table(["phase", "seconds", "share"], rows),
        *_eval_stages(r.get("eval_stages", {})),
        *_floor(r.get("scoring_floor"), r["target_percent"]),
    ])  # fmt: skip


def _floor(f: dict[str, Any] | None, target: float) -> list[str]:
    """bench/scoring_floor.py's figures: the least scoring can take here, and the loop at that floor."""
    if not f:
        return []
    if "error" in f:
        return [f"The scoring floor was not measured: {' '.join(f['error'])}"]
    rates = ", ".join(f"{name} {rate:g}" for name, rate in f["matmul_gflops"].items() if rate)
    return [f"The scoring's floor on this machine (`bench/scoring_floor.py` on the last iteration's model): "
            f"{f['gflop']:g} GFLOP of matrix products ({f['rows']} rows in {f['batches']} batches) at the best "
            f"{f['precision']} product rate measured here (GFLOP/s: {rates}, {f['threads']} threads) take "
            f"{f['floor_s']:g} s, against the scoring's measured time above. With scoring at that floor and "
            f"every other phase as measured, the loop would reach {fmt(f['best_percent'], 1, '%')} of the limit; "
            f"the target of {target:g}% leaves scoring {fmt(f['scoring_allowed_s'])} s."]  # fmt: skip


def _setup(setup: dict[str, float] | None) -> list[str]:
    """The tag's first run, before the iterations: the baseline on the default gate's seeds."""
    if not setup:
        return []
    holdout = setup.get("holdout_score")
    return [f"Set-up, not counted: the baseline on {setup['seeds']:g} seeds (the noise floor), kept, in "
            f"{setup['call_seconds']:.1f} s" + (f"; its evaluator scored the holdout in {holdout:.2f} s, as it "
            "does for every run a keep could take." if holdout is not None else ".")]  # fmt: skip


EVAL_STAGES = {"load": "load the model (archive checks, deserialising)", "check": "contract check (probes)",
               "score": "scoring (forward passes, bits per byte)"}  # fmt: skip


def _eval_stages(stages: dict[str, Any]) -> list[str]:
    """The evaluator's own clock on its stages, for the validation split and the holdout."""
    rows = [[f"{split}: {label}", fmt(stages[f"{split}_{key}"])] for split in ("val", "holdout")
            for key, label in EVAL_STAGES.items() if f"{split}_{key}" in stages]  # fmt: skip
    if not rows:
        return []
    return ["Inside the evaluator, after the server's word (its own clock; the rest of an evaluation is the "
            "process's start and exit; the holdout is scored by the same process, its model loaded and checked):",
            table(["stage", "seconds"], rows)]  # fmt: skip


def _side(s: dict[str, int]) -> str:
    return f"{s['bytes']} B / {s['tokens']} tok ({s['calls']} calls)"


RECOVERY_SEES = {  # what each side has in front of it after recovering, so the byte counts compare fairly
    "latest": ("get_history: the latest 15 runs as rows, plus the best run (however old), the count of every "
               "outcome, the run awaiting a decision and the run in flight",
               "`tail -n 15 results.tsv`: the latest 15 rows (no header); the best only if it is among them "
               "(git log shows kept commits' messages, not their metric); no counts; git status and the end of "
               "run.log show an unfinished edit or run"),
    "all": ("get_history(limit=500): every run as a row (descriptions shortened to keep the rows near 6 KB), "
            "plus the same best, counts and state",
            "`cat results.tsv`: every row in full; the best, the counts and the state are the agent's to work out "
            "from the rows, git log, git status and run.log"),
}  # fmt: skip


def _recovery_rows(sc: dict[str, Any], hd: dict[str, Any]) -> list[list[str]]:
    points = [("4 runs (scripted)", sc["recovery"])] + [(f"{n} runs", p) for n, p in hd["recovery_at"].items()]
    rows = []
    for kind, label in (("latest", "latest 15 rows"), ("all", "every row")):
        for name, point in points:
            o, s = point[kind]["ours"], point[kind]["shell"]
            rows.append([f"recovery, {label}, after {name}", _side(o), _side(s), f"{s['bytes'] / o['bytes']:.2f}"])
    return rows


def context(r: dict[str, Any]) -> str:
    sc, hd = r["scripted"], r["hundred"]
    rows = []
    for kind in ["kept", "discarded", "crashed", "script"]:
        o, s = sc[kind]["ours"], sc[kind]["shell"]
        label = {"script": "reading train.py (both, before an edit)"}
        rows.append([label.get(kind, kind), _side(o), _side(s), f"{o['bytes'] / s['bytes']:.2f}"])
    sees = table(["recovery", "ours sees", "the shell side sees"],
                 [[kind, ours, shell] for kind, (ours, shell) in RECOVERY_SEES.items()])  # fmt: skip
    checks = [
        ["never more than the shell protocol per iteration",
         ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in r["per_iteration"].items()),
         verdict(r["never_more_per_iteration"])],
        ["a run result under 1.5 KB", f"max {r['max_run_result_bytes']:.0f} B (median "
         f"{sc['run_result_bytes']['median']:.0f} B)", verdict(r["run_result_bounded"])],
        [f"get_history(limit=100) of {hd['runs']} runs under 8 KB", f"{hd['history_100_bytes']} B",
         verdict(r["history_bounded"])],
    ]  # fmt: skip
    return "\n\n".join([
        "## 3. Context economy: our tools vs. the original's shell protocol",
        f"Both sides really run, on {r['train_py']}, with the same scripted one-line ideas. Shell side: Claude "
        "Code's Edit (old_string/new_string, short result), `git commit -am`, `python train.py > run.log 2>&1`, "
        "`grep \"^val_bpb:\\|^peak_memory_mb:\" run.log`, `tail -n 50 run.log` on a crash, an `echo -e ... >> "
        "results.tsv` row, `git reset --hard HEAD~1` unless kept. Our side: write_train (edits), run_experiment, "
        "keep/discard. Reading train.py before the next edit (Read, `cat -n` style, vs read_train) is the same "
        "work on both sides and is shown apart. "
        "Counting rule, same for both: each call costs its tool_use block `{type, id, name, input}` plus its "
        "tool_result block `{type, tool_use_id, content}` as compact UTF-8 JSON (our tool names are "
        "`mcp__autoresearch__*`; our content is the server's text content, compact JSON). A failed Bash "
        f"command's result starts with `Exit code N`; an empty output counts as empty. Tokens: {r['tokenizer']}.",
        table(["iteration", "ours", "shell", "ours / shell"], rows),
        "Recovering the search state after a lost context (the best run, what was tried, whether an edit or a "
        "run was in flight) is measured twice, like with like: the latest rows on both sides, and every row on "
        "both sides. The shell side adds `git log --oneline -20`, `git status --short` and `tail -n 5 run.log` "
        "to either. What each side then has in front of it:",
        sees,
        table(["recovery", "ours", "shell", "shell / ours"], _recovery_rows(sc, hd)),
        table(["target", "measured", "verdict"], checks),
        f"One-time cost, not per iteration: our six tool definitions are {sc['tool_definitions_bytes']} B of "
        "JSON schema in the agent's context (Claude Code's Bash/Edit/Read are there on both sides).",
    ])  # fmt: skip


def external(name: str, r: dict[str, Any]) -> str:
    if r.get("skipped"):
        return f"## {name}\n\nNot run: {r['skipped']}"
    body = r.get("table") or r.get("stdout", "").strip()
    return f"## {name}\n\n`{r['command']}` in {r['seconds']:.0f} s; its JSON: `{r['out']}`.\n\n{body}"


def sandbox(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"## 6. The sandbox and the server's measurement\n\nSkipped: {r['skipped']}"
    sb, v = r["sandbox"], r["verification"]
    return "\n\n".join([
        "## 6. The sandbox and the server's measurement",
        f"The same quick experiment through the Lab, sandboxed (bubblewrap) and unsandboxed, {sb['pairs']} "
        "interleaved pairs after a warm-up pair (seconds per run):",
        table(["figure", "value"], [
            ["sandboxed", fmt(sb["sandboxed"])], ["unsandboxed", fmt(sb["unsandboxed"])],
            ["added by the sandbox (pair by pair)", fmt(sb["added"])],
            [f"target < {sb['target_added_s']:g} s", verdict(sb["met"])],
        ]),
        f"What the server's measurement adds to a run of the real experiment ({v['model']}, {v['budget_s']:g} s "
        f"budget, {v['runs']} runs, sandboxed), from the server's record of each run:",
        table(["phase", "seconds"], [
            ["start-up (to timed training)", fmt(v["startup"])], ["timed training", fmt(v["training"])],
            ["hand-over (torch.export)", fmt(v["handover"])],
            ["evaluation (warm evaluator, after the server's word)", fmt(v["evaluation"])],
            ["**export + evaluation**", fmt(v["export_plus_evaluation"])], ["whole run", fmt(v["wall"])],
            ["runs scored `ok`", fmt(v["ok"], 2)],
        ]),
    ])  # fmt: skip


def pool(r: dict[str, Any]) -> str:
    header = ["runner", "slots", "experiments/h", "limit N·3600/budget", "ratio to N × 1 slot",
              f"target ≥ {r['target_ratio']:g}", "wave s", "slowest start_run s", "all started after s",
              "decisions after the last record s", "runs `ok`"]  # fmt: skip
    rows = []
    for runner, by_slots in r["pool"].items():
        for n, p in by_slots.items():
            rows.append([runner, n, fmt(p["per_hour"], 0), f"{p['limit_per_hour']:.0f}", fmt(p["ratio"]),
                         verdict(p["met"]), fmt(p["seconds"]), fmt(p["start_each"]), fmt(p["all_started"]),
                         fmt(p["decisions_after"]), fmt(p["ok"], 2)])  # fmt: skip
    parts = [
        f"## 7. Parallel slots: experiments per hour with 1, 2 and 4 slots ({r['budget_s']:g} s budget)",
        "The test suite's fake experiment sleeping through its budget (almost no CPU: the ratio measures the "
        "server's parallelism, not the 2 cores), on a Lab with N slots. A wave starts N candidates (edits against "
        "the best) one after another, drives each to its end and discards it in a thread of its own; its wall "
        "time runs from the first start to the last decision. Waves of every runner and N interleaved round by "
        f"round, {r['waves']} counted after one warm-up each. Ratio: a wave's rate over N times the median "
        f"single-slot rate of the same runner; target ≥ {r['target_ratio']:g}. Ray: a cluster started on this "
        f"machine with logical resources {r.get('ray_cluster', {})}, each run a task asking for 1 GPU, 1 CPU.",
        table(header, rows),
    ]
    if "ray_overhead" in r:
        o = r["ray_overhead"]
        parts.append(f"What Ray adds to one run (bench/ray_bench.py's sleep case, {o['added']['n']:g} interleaved "
                     f"pairs after a warm-up pair, the same Lab with LocalRunner and RayRunner, seconds):\n\n"
                     + table(["local", "ray", "added (pairwise)", "submit to start", "stream delay (median)"],
                             [[fmt(o["local"]), fmt(o["ray"]), fmt(o["added"]), fmt(o["to_start"]),
                               fmt(o["stream_delay_median"], 4)]]))  # fmt: skip
    else:
        parts.append(f"Ray: not measured ({r.get('ray_skipped', 'skipped')}).")
    return "\n\n".join(parts)
