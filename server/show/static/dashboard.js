// The autoresearch dashboard: polls /api/state and redraws the chart (inline SVG), the table and the runs in
// flight. Plain JS and no CDN: the machine running the search may be offline.
"use strict";

const POLL_MS = 2000;
const COLORS = { keep: "#2ca02c", discard: "#9e9e9e", pending: "#4c72b0", running: "#e0a800", crash: "#d62728",
                 holdout: "#ff7f0e" };
const SVG_NS = "http://www.w3.org/2000/svg";
const W = 960, H = 340, PAD = { left: 64, right: 16, top: 30, bottom: 36 };

const params = new URLSearchParams(location.search);
let tag = params.get("tag");
let selected = null;
let lastDrawn = "";

function el(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function finite(x) { return typeof x === "number" && Number.isFinite(x); }

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${r}` : `${m}:${r}`;
}

// The running best at each kept run, carried on to the latest run: the same rule as the terminal plot.
function runningBest(runs, direction) {
  const pick = direction === "maximize" ? Math.max : Math.min;
  const points = [];
  for (const run of runs) {
    if (run.outcome === "keep" && finite(run.metric)) {
      points.push([run.id, points.length ? pick(points[points.length - 1][1], run.metric) : run.metric]);
    }
  }
  if (points.length && runs.length) points.push([Math.max(points[points.length - 1][0], runs[runs.length - 1].id),
                                                  points[points.length - 1][1]]);
  return points;
}

function scales(runs, holdout) {
  const values = runs.filter(r => finite(r.metric)).map(r => r.metric)
    .concat(holdout ? runs.filter(r => finite(r.holdout_metric)).map(r => r.holdout_metric) : []);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (!values.length) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const margin = (hi - lo) * 0.08;
  lo -= margin; hi += margin;
  const first = runs.length ? runs[0].id : 0, last = runs.length ? runs[runs.length - 1].id : 1;
  const span = Math.max(1, last - first);
  const x = id => PAD.left + (id - first + 0.5) / (span + 1) * (W - PAD.left - PAD.right);
  const y = v => PAD.top + (hi - v) / (hi - lo) * (H - PAD.top - PAD.bottom);
  return { x, y, lo, hi, first, last };
}

function drawAxes(svg, s, metric) {
  for (let i = 0; i <= 4; i++) {
    const v = s.lo + (s.hi - s.lo) * i / 4, yy = s.y(v);
    svg.append(el("line", { class: "grid", x1: PAD.left, x2: W - PAD.right, y1: yy, y2: yy }));
    svg.append(el("text", { x: PAD.left - 6, y: yy + 4, "text-anchor": "end" }, v.toFixed(4)));
  }
  svg.append(el("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }));
  svg.append(el("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }));
  const step = Math.max(1, Math.ceil((s.last - s.first + 1) / 12));
  for (let id = s.first; id <= s.last; id += step) {
    svg.append(el("text", { x: s.x(id), y: H - PAD.bottom + 16, "text-anchor": "middle" }, `#${id}`));
  }
  svg.append(el("text", { x: 12, y: 16 }, metric));
}

function stepPath(points, s) {
  return points.map(([id, v], i) => i === 0 ? `M${s.x(id)},${s.y(v)}`
                                            : `H${s.x(id)}V${s.y(v)}`).join("");
}

function drawChart(state) {
  const svg = document.getElementById("chart");
  svg.replaceChildren();
  const runs = state.runs;
  const holdout = runs.some(r => finite(r.holdout_metric));
  const s = scales(runs, holdout);
  drawAxes(svg, s, state.metric);
  const best = runningBest(runs, state.direction);
  if (best.length) {
    svg.append(el("path", { id: "best-line", d: stepPath(best, s), fill: "none", stroke: COLORS.keep,
                            "stroke-width": 3 }));
  }
  if (holdout) {
    const pts = runs.filter(r => finite(r.holdout_metric));
    svg.append(el("path", { id: "holdout-line", fill: "none", stroke: COLORS.holdout, "stroke-width": 1.5,
      "stroke-dasharray": "4 3", d: pts.map((r, i) => `${i ? "L" : "M"}${s.x(r.id)},${s.y(r.holdout_metric)}`).join("") }));
    for (const r of pts) svg.append(el("circle", { class: "pt holdout", cx: s.x(r.id), cy: s.y(r.holdout_metric), r: 3,
                                                    fill: COLORS.holdout }));
  }
  for (const run of runs) {
    if (finite(run.metric)) {
      const dot = el("circle", { class: `pt ${run.outcome}`, cx: s.x(run.id), cy: s.y(run.metric),
                                 r: run.outcome === "keep" ? 6 : 4, fill: COLORS[run.outcome] || COLORS.pending });
      dot.append(el("title", {}, `#${run.id} ${run.outcome} ${run.metric.toFixed(6)} ${run.description}`));
      svg.append(dot);
    } else if (run.outcome === "crash") {
      const cx = s.x(run.id), cy = PAD.top + 6;
      svg.append(el("path", { class: "pt crash", d: `M${cx - 5},${cy - 5}L${cx + 5},${cy + 5}M${cx - 5},${cy + 5}L${cx + 5},${cy - 5}`,
                              stroke: COLORS.crash, "stroke-width": 2 }));
    }
  }
}

function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }

function drawTable(state) {
  const body = document.getElementById("runs");
  const holdout = state.runs.some(r => finite(r.holdout_metric));
  document.querySelectorAll(".holdout-col, .key.holdout").forEach(node => { node.hidden = !holdout; });
  document.getElementById("metric-head").textContent = state.metric;
  body.replaceChildren();
  for (const run of [...state.runs].reverse()) {
    const row = body.insertRow();
    row.dataset.id = run.id;
    row.className = run.outcome + (run.id === selected ? " selected" : "");
    cell(row, `#${run.id}`);
    cell(row, run.outcome + (run.id === state.best ? " ★" : ""));
    cell(row, finite(run.metric) ? run.metric.toFixed(6) : "-");
    cell(row, finite(run.delta) ? (run.delta >= 0 ? "+" : "") + run.delta.toFixed(4) : "-");
    if (holdout) cell(row, finite(run.holdout_metric) ? run.holdout_metric.toFixed(6) : "-");
    cell(row, run.status + (run.reason ? `: ${run.reason}` : ""));
    cell(row, run.description);
    cell(row, (run.started_at || "").replace("T", " ").slice(0, 19));
    row.addEventListener("click", () => showRun(run.id));
  }
}

// One line per run in flight (a pool runs several at once), or a single idle line.
function drawRunning(state) {
  const box = document.getElementById("running");
  const runs = state.running || [];
  box.className = runs.length ? "active" : "idle";
  if (!runs.length) { box.textContent = "idle: no experiment running"; return; }
  box.replaceChildren(...runs.map(run => {
    const line = document.createElement("div");
    line.className = "flight";
    line.dataset.run = run.run_id;
    line.textContent = runningText(state, run);
    return line;
  }));
}

function runningText(state, run) {
  const where = [run.slot !== null && run.slot !== undefined ? `slot ${run.slot}` : "",
                 run.device !== null && run.device !== undefined ? `GPU ${run.device}` : ""].filter(Boolean);
  const parts = [`running #${run.run_id}${run.tag && run.tag !== state.tag ? " on tag " + run.tag : ""}` +
                 `${where.length ? " (" + where.join(", ") + ")" : ""}: ${run.description}`];
  if (finite(run.elapsed_s)) parts.push(`elapsed ${clock(run.elapsed_s)}`);
  if (finite(run.left_s)) parts.push(run.left_s > 0 ? `${clock(run.left_s)} left before the deadline` : "past its deadline");
  if (run.step !== null && finite(run.loss)) parts.push(`step ${run.step}, loss ${run.loss.toFixed(4)}`);
  if (finite(run.remaining_s)) parts.push(`${Math.round(run.remaining_s)}s of training left`);
  else if (run.last_line) parts.push(`log: ${run.last_line}`);
  return parts.join(" · ");
}

function drawHeader(state) {
  const select = document.getElementById("tag");
  if (select.options.length !== state.tags.length || select.value !== state.tag) {
    select.replaceChildren(...state.tags.map(t => new Option(t, t, false, t === state.tag)));
  }
  const kept = state.runs.filter(r => r.outcome === "keep").length;
  const best = state.runs.find(r => r.id === state.best);
  document.getElementById("summary").textContent = `${state.runs.length} runs, ${kept} kept` +
    (best ? ` · best ${best.metric.toFixed(6)} (#${best.id})` : "");
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  document.getElementById("report-link").href = `/report?tag=${encodeURIComponent(state.tag)}`;
}

async function showRun(id) {
  selected = id;
  const response = await fetch(`/api/runs/${id}?tag=${encodeURIComponent(tag || "")}`);
  const detail = await response.json();
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-title").textContent = response.ok ? `#${id} ${detail.run.description}` : detail.error;
  document.getElementById("diff").textContent = detail.diff || "(no diff recorded)";
  document.getElementById("log").textContent = detail.log_tail || "(no log recorded)";
  document.querySelectorAll("#runs tr").forEach(tr => tr.classList.toggle("selected", Number(tr.dataset.id) === id));
}

async function refresh() {
  try {
    const response = await fetch(`/api/state${tag ? "?tag=" + encodeURIComponent(tag) : ""}`);
    const state = await response.json();
    tag = state.tag;
    drawHeader(state);
    drawRunning(state);
    const key = JSON.stringify(state.runs);
    if (key !== lastDrawn) { drawChart(state); drawTable(state); lastDrawn = key; }  // keep the table steady
  } catch (err) {
    document.getElementById("updated").textContent = `cannot reach the dashboard server (${err}); is it still running?`;
  }
}

document.getElementById("tag").addEventListener("change", event => {
  tag = event.target.value;
  selected = null; lastDrawn = "";
  history.replaceState(null, "", `?tag=${encodeURIComponent(tag)}`);
  document.getElementById("detail").hidden = true;
  refresh();
});
refresh();
setInterval(refresh, POLL_MS);
