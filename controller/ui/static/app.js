// bilevel ui: plain JS + SVG, no library, no network beyond this origin's JSON API.
// Everything that comes from a run (descriptions, hypotheses, logs, diffs, mechanism
// details) is hostile text: it only ever reaches the DOM as textContent or as a text
// node, never as markup the browser parses, nor in an attribute it interprets.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const crumb = document.getElementById("crumb");
let current = null; // the view being shown: {stop()}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function link(hash, text) {
  // Hash links only: the id goes through encodeURIComponent, never a scheme.
  return el("a", { href: "#" + hash }, text);
}

function table(headers, rows, attrs) {
  const head = el("tr", {}, ...headers.map((h) => el("th", {}, h)));
  return el("table", attrs || {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function td(value, cls) {
  return el("td", cls ? { class: cls } : {}, value);
}

function fmt(x, digits = 6) {
  return typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "-";
}

// The task's metric and direction (TaskSpec.metric, .maximize). The API's val_bpb fields
// hold the loss the loop minimises (-metric for a maximised metric): `shown` turns a loss
// back into the metric as the task states it.
function objective(run) {
  const task = (run && run.request && run.request.task) || {};
  const maximize = task.maximize === true;
  return { name: task.metric || "val_bpb", maximize,
           better: maximize ? "higher is better" : "lower is better",
           shown: (v) => (typeof v === "number" && isFinite(v) ? (maximize ? -v : v) : undefined) };
}

function enumName(value, prefix) {
  return typeof value === "string" ? value.replace(prefix, "").toLowerCase() : String(value);
}

function setStatus(text, error) {
  statusLine.textContent = text;
  statusLine.className = error ? "error" : "";
}

async function getJSON(url) {
  const response = await fetch(url, { cache: "no-store" });
  let body;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`HTTP ${response.status}`);
  }
  if (!response.ok) throw new Error(body && body.error ? body.error : `HTTP ${response.status}`);
  return body;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------- runs and ablations

function homeView() {
  crumb.textContent = "";
  let stopped = false;
  const runsBox = el("div", { id: "runs" }, el("p", { class: "muted" }, "loading runs…"));
  const ablBox = el("div", { id: "ablations" });
  main.replaceChildren(el("h2", {}, "Runs"), runsBox, el("h2", {}, "Ablations"), ablBox);

  async function refresh() {
    while (!stopped) {
      try {
        const [runs, abls] = await Promise.all([getJSON("/api/runs"), getJSON("/api/ablations")]);
        if (stopped) return;
        runsBox.replaceChildren(runsTable(runs));
        ablBox.replaceChildren(ablationsTable(abls));
        setStatus(`updated ${new Date().toLocaleTimeString()}`);
      } catch (e) {
        setStatus(String(e.message || e), true);
      }
      await sleep(3000);
    }
  }
  refresh();
  return { stop() { stopped = true; } };
}

function runsTable(data) {
  if (!data.runs.length) return el("p", { class: "muted" }, "no runs yet");
  const rows = data.runs.map((r) => {
    const req = r.request || {};
    const trials = `${Math.max((r.trials_done || 0) - 1, 0)}/${(req.budgets || {}).max_trials || "?"}`;
    const o = objective(r);
    return el("tr", { class: "run" }, td(link("/run/" + encodeURIComponent(r.id), r.id)),
      td(enumName(r.state, "RUN_STATE_")), td((req.task || {}).preset || ""),
      td(((req.outer || {}).levels || []).map((l) => enumName(l, "LEVEL_").replace("_", ".")).join("+") || "1"),
      td(o.name), td(trials, "num"), td(fmt(o.shown(r.baseline_val_bpb)), "num"),
      td(fmt(o.shown(r.best_val_bpb)), "num"),
      td(String(r.created_at || "").replace("T", " ").slice(0, 19)));
  });
  const note = data.more ? el("p", { class: "muted" }, "only the newest runs are listed") : null;
  return el("div", {}, table(["run", "state", "preset", "levels", "metric", "trials", "baseline",
    "best", "created"], rows, { id: "runs-table" }), note);
}

function ablationsTable(data) {
  if (!data.ablations.length) {
    return el("p", { class: "muted" }, `no ablations in ${data.state_dir || "the state dir"}`);
  }
  const rows = data.ablations.map((a) => el("tr", {},
    td(link("/ablation/" + encodeURIComponent(a.id), a.id)), td(a.task || ""),
    td((a.arms || []).map((x) => x.name).join(", ")), td(a.repeats, "num"),
    td(a.trials, "num"), td(a.finished_at ? "finished" : "running or stopped")));
  return table(["ablation", "task", "arms", "repeats", "trials", "state"], rows,
    { id: "ablations-table" });
}

// ---------------------------------------------------------------- one run

// `pick`: the trial whose diff and log to show once it is known (#/run/<id>/trial/<n>).
function runView(runId, pick) {
  crumb.textContent = " / " + runId;
  const state = { trials: new Map(), bests: [], mech: [], config: [], finished: null,
                  run: null, lastSeq: 0, selected: null };
  let stopped = false;
  const facts = el("div", { id: "facts" });
  const plotBox = el("div", { id: "plot-box" });
  const trialsBox = el("div", { id: "trials" });
  const detail = el("div", { id: "detail" }, el("p", { class: "muted" },
    "click a trial for its diff and log"));
  const mechBox = el("div", { id: "mechanisms" });
  const configBox = el("div", { id: "config" });
  main.replaceChildren(facts, el("h2", {}, "Best so far"), plotBox, el("h2", {}, "Trials"),
    trialsBox, el("h2", {}, "Trial"), detail, el("h2", {}, "Mechanisms (Level 2)"), mechBox,
    el("h2", {}, "Configuration (Level 1.5)"), configBox);

  function select(n) {
    state.selected = n;
    history.replaceState(null, "", `#/run/${encodeURIComponent(runId)}/trial/${n}`);
    render();
    showTrial(runId, state, n, detail);
  }

  function render() {
    facts.replaceChildren(runFacts(state));
    plotBox.replaceChildren(plot(state));
    trialsBox.replaceChildren(trialsTable(state, select));
    mechBox.replaceChildren(mechanisms(state));
    configBox.replaceChildren(configTable(state));
  }

  async function pumpEvents() {
    let wait = 0;
    while (!stopped) {
      try {
        const got = await getJSON(`/api/runs/${encodeURIComponent(runId)}/events` +
          `?after=${state.lastSeq}&wait=${wait}`);
        if (stopped) return;
        for (const event of got.events) apply(state, event);
        state.lastSeq = got.last_seq;
        if (got.events.length || got.done) render();
        const wanted = state.trials.get(pick);
        if (state.selected === null && wanted && wanted.finished) select(pick);
        if (got.done) { await refreshRun(); return; }
        if (got.ended) await sleep(3000); // read from the store: nothing to wait on
        wait = got.more ? 0 : 20;
      } catch (e) {
        setStatus(String(e.message || e), true);
        await sleep(2000);
      }
    }
  }

  async function refreshRun() {
    try {
      state.run = await getJSON(`/api/runs/${encodeURIComponent(runId)}`);
      render();
      setStatus(`updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      setStatus(String(e.message || e), true);
    }
  }

  async function pollRun() {
    while (!stopped && !state.finished) {
      await refreshRun();
      await sleep(3000);
    }
  }
  render();
  pumpEvents();
  pollRun();
  return { stop() { stopped = true; } };
}

function trialOf(state, n) {
  if (!state.trials.has(n)) state.trials.set(n, { trial: n });
  return state.trials.get(n);
}

function apply(state, event) {
  if (event.trial_proposed) trialOf(state, event.trial_proposed.trial).proposed = event.trial_proposed;
  else if (event.trial_started) trialOf(state, event.trial_started.trial).started = event;
  else if (event.trial_finished) trialOf(state, event.trial_finished.trial).finished = event.trial_finished;
  else if (event.new_best) state.bests.push(event.new_best);
  else if (event.mechanism) state.mech.push(event.mechanism);
  else if (event.config_adjusted) state.config.push(event.config_adjusted);
  else if (event.run_finished) state.finished = event.run_finished;
}

function sortedTrials(state) {
  return [...state.trials.values()].sort((a, b) => a.trial - b.trial);
}

function baselineOf(state) {
  const base = state.trials.get(0);
  if (base && base.finished && typeof base.finished.val_bpb === "number") return base.finished.val_bpb;
  return state.run ? state.run.baseline_val_bpb : undefined;
}

function runFacts(state) {
  const r = state.run || {};
  const req = r.request || {};
  const o = objective(state.run);
  const done = sortedTrials(state).filter((t) => t.finished).length;
  const rows = [
    ["state", state.finished ? enumName(state.finished.state, "RUN_STATE_")
      : enumName(r.state || "…", "RUN_STATE_")],
    ["preset", (req.task || {}).preset || ""],
    ["trials finished", `${done} (baseline included) of ${((req.budgets || {}).max_trials || 0) + 1}`],
    ["metric", `${o.name} (${o.better})`],
    [`baseline ${o.name}`, fmt(o.shown(baselineOf(state)))],
    [`best ${o.name}`, fmt(o.shown(r.best_val_bpb !== undefined ? r.best_val_bpb
      : (state.bests.length ? state.bests[state.bests.length - 1].val_bpb : undefined)))],
    ["stop reason", (state.finished && state.finished.reason) || r.stop_reason || ""],
    ["elapsed", r.elapsed_seconds ? `${fmt(r.elapsed_seconds, 1)} s` : ""],
    ["LLM tokens", r.llm_tokens_used ? `${r.llm_tokens_used} (≈ $${fmt(r.llm_cost_usd, 4)})` : ""],
    ["summary", (state.finished && state.finished.summary) || r.summary || ""],
  ].filter(([, v]) => v !== "");
  return el("table", { class: "facts" }, el("tbody", {},
    ...rows.map(([k, v]) => el("tr", {}, td(k), td(v, "desc")))));
}

function trialsTable(state, onPick) {
  const o = objective(state.run);
  const base = o.shown(baselineOf(state));
  const rows = sortedTrials(state).map((t) => {
    const f = t.finished;
    const p = t.proposed || {};
    if (!f) {
      return el("tr", { class: "trial pending", "data-trial": t.trial }, td(t.trial, "num"),
        td(""), td(p.description || "", "desc"), td(t.started ? "running" : "proposed"),
        td("-", "num"), td("-", "num"), td("-", "num"));
    }
    const status = enumName(f.status, "TRIAL_STATUS_");
    const v = o.shown(f.val_bpb);
    const delta = v !== undefined && base !== undefined
      ? (v - base >= 0 ? "+" : "") + (v - base).toFixed(6) : "-";
    const row = el("tr", { class: "trial done" + (state.selected === t.trial ? " selected" : ""),
                           "data-trial": t.trial, "data-status": status },
      td(t.trial, "num"), td(f.proposal_source || ""), td(f.description || "", "desc"),
      td(status, status), td(fmt(v), "num"), td(delta, "num"), td(fmt(f.run_seconds ?? f.seconds, 1), "num"));
    row.addEventListener("click", () => onPick(t.trial));
    return row;
  });
  if (!rows.length) return el("p", { class: "muted" }, "no trials yet");
  return table(["trial", "source", "description", "status", o.name, "Δ vs baseline",
    "seconds"], rows, { id: "trials-table" });
}

// Best-so-far plot: every measured trial as a dot, the incumbent as a step line, and
// crashes in their own strip under the axis (no value, so never drawn as one).
function plot(state) {
  const W = 760, H = 320, L = 70, R = 16, T = 12, B = 64;
  const root = svgEl("svg", { id: "plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                              role: "img" });
  const done = sortedTrials(state).filter((t) => t.finished);
  const o = objective(state.run);
  const measured = done.filter((t) => o.shown(t.finished.val_bpb) !== undefined);
  if (!measured.length) {
    root.append(svgEl("text", { x: L, y: T + 20 }, "no measured trial yet"));
    return root;
  }
  const maxTrial = Math.max(1, ...done.map((t) => t.trial));
  let lo = Math.min(...measured.map((t) => o.shown(t.finished.val_bpb)));
  let hi = Math.max(...measured.map((t) => o.shown(t.finished.val_bpb)));
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.06;
  lo -= pad; hi += pad;
  const x = (n) => L + (W - L - R) * (n / maxTrial);
  const y = (v) => T + (H - T - B) * (1 - (v - lo) / (hi - lo));
  const axisY = H - B;
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svgEl("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(4)));
  }
  root.append(svgEl("line", { class: "axis", x1: L, x2: W - R, y1: axisY, y2: axisY }));
  root.append(svgEl("line", { class: "axis", x1: L, x2: L, y1: T, y2: axisY }));
  const step = Math.max(1, Math.ceil(maxTrial / 10));
  for (let n = 0; n <= maxTrial; n += step) {
    root.append(svgEl("text", { x: x(n), y: axisY + 14, "text-anchor": "middle" }, n));
  }
  root.append(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" }, "trial"));
  root.append(svgEl("text", { x: 12, y: T + (H - T - B) / 2, transform:
    `rotate(-90 12 ${T + (H - T - B) / 2})`, "text-anchor": "middle" }, `${o.name} (${o.better})`));

  // The incumbent after each trial: new_best events, else the best kept value.
  const steps = [];
  if (state.bests.length) {
    for (const b of state.bests) steps.push([b.trial, o.shown(b.val_bpb)]);
  } else {
    let best = Infinity;
    for (const t of measured) {
      if (t.finished.status === "TRIAL_STATUS_KEEP" && t.finished.val_bpb < best) {
        best = t.finished.val_bpb;
        steps.push([t.trial, o.shown(best)]);
      }
    }
  }
  if (steps.length) {
    steps.sort((a, b) => a[0] - b[0]);
    let d = `M${x(steps[0][0])},${y(steps[0][1])}`;
    for (let i = 1; i < steps.length; i++) d += `H${x(steps[i][0])}V${y(steps[i][1])}`;
    d += `H${x(maxTrial)}`;
    root.append(svgEl("path", { class: "best", d }));
  }
  for (const t of measured) {
    const status = enumName(t.finished.status, "TRIAL_STATUS_");
    const dot = svgEl("circle", { class: status, cx: x(t.trial), cy: y(o.shown(t.finished.val_bpb)), r: 4,
                                  "data-trial": t.trial });
    dot.append(svgEl("title", {}, `trial ${t.trial} ${status}: ${fmt(o.shown(t.finished.val_bpb))}`));
    root.append(dot);
  }
  const crashes = done.filter((t) => !measured.includes(t));
  const stripY = axisY + 30;
  root.append(svgEl("text", { x: L - 6, y: stripY + 4, "text-anchor": "end" },
    `crash (${crashes.length})`));
  for (const t of crashes) {
    const cx = x(t.trial);
    const mark = svgEl("path", { class: "crashmark", d: `M${cx - 4},${stripY - 4}l8,8m0,-8l-8,8`,
                                 "data-trial": t.trial });
    mark.append(svgEl("title", {}, `trial ${t.trial} crashed`));
    root.append(mark);
  }
  return root;
}

async function showTrial(runId, state, n, box) {
  const t = state.trials.get(n) || {};
  const f = t.finished || {};
  const p = t.proposed || {};
  const facts = [["trial", n], ["description", f.description || p.description || ""],
    ["hypothesis", f.hypothesis || p.hypothesis || ""], ["changes", p.changes_json || ""],
    ["job status", f.job_status ? enumName(f.job_status, "JOB_STATUS_") : ""],
    ["proposal source", f.proposal_source || ""], ["metrics", f.metrics_json || ""],
    ["exception", f.exception && f.exception.message ? f.exception.message : ""]];
  const diffPre = el("pre", { id: "diff" }, "loading…");
  const logPre = el("pre", { id: "log" }, "loading…");
  box.replaceChildren(el("table", { class: "facts" }, el("tbody", {},
    ...facts.filter(([, v]) => v !== "").map(([k, v]) => el("tr", {}, td(k), td(v, "desc"))))),
    el("div", { class: "grid2" }, el("div", {}, el("h3", {}, "diff"), diffPre),
      el("div", {}, el("h3", {}, "log"), logPre)));
  const base = `/api/runs/${encodeURIComponent(runId)}/artifact?name=trials/${n}/`;
  artifactInto(base + "diff", diffPre, true);
  artifactInto(base + "log", logPre, false);
}

async function artifactInto(url, pre, coloured) {
  try {
    const a = await getJSON(url);
    const lines = a.text.split("\n");
    pre.replaceChildren(...lines.map((line) => {
      let cls = "";
      if (coloured && line.startsWith("@@")) cls = "hunk";
      else if (coloured && line.startsWith("+") && !line.startsWith("+++")) cls = "add";
      else if (coloured && line.startsWith("-") && !line.startsWith("---")) cls = "del";
      return cls ? el("span", { class: cls }, line) : document.createTextNode(line + "\n");
    }));
    if (a.truncated) pre.append(el("span", { class: "muted" }, `[${a.size} bytes; the first part shown]`));
  } catch (e) {
    pre.replaceChildren(el("span", { class: "muted" }, String(e.message || e)));
  }
}

function mechanisms(state) {
  const verdicts = (state.run && state.run.mechanisms) || [];
  const parts = [];
  if (!state.mech.length && !verdicts.length) return el("p", { class: "muted" }, "no mechanisms in this run");
  if (state.mech.length) parts.push(timeline(state));
  if (verdicts.length) {
    parts.push(el("h3", {}, "verdicts"), table(["mechanism", "origin", "field", "status",
      "calls", "effective", "failures", "finding", "reason"], verdicts.map((m) => el("tr", {},
      td(m.name), td(m.origin), td(m.field), td(enumName(m.status, "MECHANISM_STATUS_")),
      td(m.calls, "num"), td(m.effective, "num"), td(m.failures, "num"),
      td(m.finding, "desc"), td(m.reason, "desc"))), { id: "verdicts" }));
  }
  if (state.mech.length) {
    parts.push(el("h3", {}, "events"), table(["trial", "mechanism", "action", "origin", "detail"],
      state.mech.map((m) => el("tr", {}, td(m.trial < 0 ? "-" : m.trial, "num"), td(m.mechanism),
        td(m.action), td(m.origin), td(m.detail, "desc"))), { id: "mechanism-events" }));
  }
  return el("div", {}, ...parts);
}

// One lane per mechanism; a mark per lifecycle event at its trial.
function timeline(state) {
  const names = [...new Set(state.mech.map((m) => m.mechanism))];
  const maxTrial = Math.max(1, ...sortedTrials(state).map((t) => t.trial),
    ...state.mech.map((m) => m.trial));
  const W = 760, L = 160, R = 16, lane = 22, H = 30 + lane * names.length;
  const root = svgEl("svg", { id: "timeline", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const x = (n) => L + (W - L - R) * (Math.max(n, 0) / maxTrial);
  names.forEach((name, i) => {
    const cy = 12 + lane * i + lane / 2;
    root.append(svgEl("text", { x: L - 6, y: cy + 4, "text-anchor": "end" },
      name.length > 24 ? name.slice(0, 23) + "…" : name));
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: cy, y2: cy }));
    for (const m of state.mech.filter((e) => e.mechanism === name)) {
      const known = ["kept", "activated", "reverted", "judged"].includes(m.action);
      const mark = svgEl("circle", { class: "ev-" + (known ? m.action : "other"), cx: x(m.trial),
                                     cy, r: 5 });
      mark.append(svgEl("title", {}, `${m.action} at trial ${m.trial}: ${m.detail || ""}`));
      root.append(mark);
    }
  });
  root.append(svgEl("text", { x: L, y: H - 4 }, "trial 0"));
  root.append(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" }, `trial ${maxTrial}`));
  return root;
}

function configTable(state) {
  if (!state.config.length) return el("p", { class: "muted" }, "no Level 1.5 adjustments");
  return table(["trial", "controller", "applied", "freeze", "unfreeze", "strategy", "error"],
    state.config.map((c) => el("tr", {}, td(c.trial, "num"), td(c.controller),
      td(c.applied ? "yes" : "no"), td((c.freeze || []).join(", ")),
      td((c.unfreeze || []).join(", ")), td(c.strategy, "desc"), td(c.error, "desc"))),
    { id: "config-table" });
}

// ---------------------------------------------------------------- one ablation

function ablationView(ablationId) {
  crumb.textContent = " / " + ablationId;
  let stopped = false;
  const box = el("div", { id: "ablation" }, el("p", { class: "muted" }, "loading…"));
  main.replaceChildren(box);
  async function refresh() {
    while (!stopped) {
      let spec = null;
      try {
        const [s, runs] = await Promise.all([
          getJSON(`/api/ablations/${encodeURIComponent(ablationId)}`), getJSON("/api/runs")]);
        spec = s;
        if (stopped) return;
        box.replaceChildren(ablationBody(spec, new Map(runs.runs.map((r) => [r.id, r]))));
        setStatus(`updated ${new Date().toLocaleTimeString()}`);
      } catch (e) {
        setStatus(String(e.message || e), true);
      }
      if (spec && spec.finished_at) return;
      await sleep(5000);
    }
  }
  refresh();
  return { stop() { stopped = true; } };
}

function ablationBody(spec, runs) {
  const arms = spec.arms || [];
  const repeats = Math.min(spec.repeats || 0, 200);
  const cells = spec.cells || {};
  const reeval = spec.reeval || {};
  const o = objective(Object.values(cells).map((c) => runs.get(c.run_id)).find((r) => r));
  const header = ["arm", "mean", ...Array.from({ length: repeats }, (_, r) => `repeat ${r}`)];
  const meanOf = (arm) => {
    const v = Array.from({ length: repeats }, (_, r) => runs.get((cells[`${arm.name}/${r}`] || {}).run_id))
      .map((run) => run && o.shown(run.best_val_bpb)).filter((x) => typeof x === "number");
    return v.length ? `${fmt(v.reduce((a, b) => a + b, 0) / v.length, 4)} (n=${v.length})` : "-";
  };
  const rows = arms.map((arm) => el("tr", { class: "arm" }, td(`${arm.name}: ${arm.title || ""}`),
    td(meanOf(arm), "num"),
    ...Array.from({ length: repeats }, (_, r) => {
      const cell = cells[`${arm.name}/${r}`] || {};
      const run = cell.run_id ? runs.get(cell.run_id) : undefined;
      const fresh = reeval[`${arm.name}/${r}`];
      if (!cell.run_id) return td("-");
      return el("td", { class: "num" }, link("/run/" + encodeURIComponent(cell.run_id),
        run ? fmt(o.shown(run.best_val_bpb), 4) : cell.state || "?"),
        fresh && typeof fresh.value === "number" ? el("div", { class: "muted" }, `fresh ${fmt(o.shown(fresh.value), 4)}`) : null);
    })));
  return el("div", {}, el("p", {}, `task ${spec.task}, ${repeats} repeats of ${spec.trials} trials, ` +
    (spec.finished_at ? "finished" : "running or stopped")),
    el("h2", {}, `Best ${o.name} per run (${o.better}; fresh: re-evaluated on unseen seeds)`),
    table(header, rows, { id: "arms-table" }), armsPlot(arms, repeats, cells, runs, o));
}

function armsPlot(arms, repeats, cells, runs, o) {
  const values = arms.map((arm) => Array.from({ length: repeats }, (_, r) => {
    const cell = cells[`${arm.name}/${r}`] || {};
    const run = runs.get(cell.run_id);
    return run ? o.shown(run.best_val_bpb) : undefined;
  }).filter((v) => typeof v === "number"));
  const all = values.flat();
  const W = 760, L = 130, R = 16, lane = 24, H = 40 + lane * arms.length;
  const root = svgEl("svg", { id: "arms-plot", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  if (!all.length) { root.append(svgEl("text", { x: L, y: 20 }, "no finished run yet")); return root; }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-9) { lo -= 0.5; hi += 0.5; }
  const pad = (hi - lo) * 0.05;
  lo -= pad; hi += pad;
  const x = (v) => L + (W - L - R) * (v - lo) / (hi - lo);
  arms.forEach((arm, i) => {
    const cy = 12 + lane * i + lane / 2;
    root.append(svgEl("text", { x: L - 6, y: cy + 4, "text-anchor": "end" }, arm.name));
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: cy, y2: cy }));
    for (const v of values[i]) root.append(svgEl("circle", { class: "keep", cx: x(v), cy, r: 4 }));
  });
  root.append(svgEl("text", { x: L, y: H - 4 }, lo.toFixed(4)));
  root.append(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" }, `${hi.toFixed(4)} (${o.better})`));
  return root;
}

// ---------------------------------------------------------------- routing

function route() {
  if (current) current.stop();
  const parts = (location.hash.replace(/^#/, "") || "/").split("/").filter(Boolean);
  if (parts[0] === "run" && parts[1]) {
    const pick = parts[2] === "trial" && /^[0-9]+$/.test(parts[3] || "") ? Number(parts[3]) : null;
    current = runView(decodeURIComponent(parts[1]), pick);
  }
  else if (parts[0] === "ablation" && parts[1]) current = ablationView(decodeURIComponent(parts[1]));
  else current = homeView();
}

window.addEventListener("hashchange", route);
route();
