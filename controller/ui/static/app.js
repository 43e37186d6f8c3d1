// bilevel ui: plain JS + SVG, no library, no network beyond this origin's JSON API.
// Loaded last (after dom.js, plots.js, knobplots.js, trialtable.js, compare.js): the
// views and the routing.
// Everything that comes from a run (descriptions, hypotheses, logs, diffs, mechanism
// details) is hostile text: it only ever reaches the DOM as textContent or as a text
// node, never as markup the browser parses, nor in an attribute it interprets.
"use strict";

const main = document.getElementById("main");
const crumb = document.getElementById("crumb");
let current = null; // the view being shown: {stop()}

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
    const state = enumName(r.state, "RUN_STATE_");
    // Why a run stopped matters most when it failed: shown for every run that ended.
    const reason = state === "running" ? "" : r.stop_reason || "";
    return el("tr", { class: "run", "data-state": state }, td(link("/run/" + encodeURIComponent(r.id), r.id)),
      td(state, state === "failed" ? "crash" : ""), td((req.task || {}).preset || ""),
      td(((req.outer || {}).levels || []).map((l) => enumName(l, "LEVEL_").replace("_", ".")).join("+") || "1"),
      td(`${o.name} ${o.maximize ? "↑ max" : "↓ min"}`), td(trials, "num"),
      td(fmt(o.shown(r.baseline_loss)), "num"), td(fmt(o.shown(r.best_loss)), "num"),
      td(reason.length > 300 ? reason.slice(0, 299) + "…" : reason, "desc reason"),
      td(String(r.created_at || "").replace("T", " ").slice(0, 19)));
  });
  const note = data.more ? el("p", { class: "muted" }, "only the newest runs are listed") : null;
  return el("div", {}, table(["run", "state", "preset", "levels", "metric (better)", "trials",
    "baseline", "best", "stop reason", "created"], rows, { id: "runs-table" }), note);
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
                  run: null, lastSeq: 0, selected: null, analysis: null };
  let stopped = false;
  const facts = el("div", { id: "facts" });
  const plotBox = el("div", { id: "plot-box" });
  const trials = makeTrialsTable(select, (picked) => compareView(runId, state, picked, compareBox));
  const detail = el("div", { id: "detail" }, el("p", { class: "muted" },
    "click a trial for its diff and log"));
  const compareBox = el("div", { id: "compare" });
  compareView(runId, state, [], compareBox);
  const knobBox = el("div", { id: "knobs" });
  const curvesBox = el("div", { id: "curves-box" });
  const mechBox = el("div", { id: "mechanisms" });
  const configBox = el("div", { id: "config" });
  main.replaceChildren(facts, el("h2", {}, "Best so far"), plotBox, el("h2", {}, "Trials"),
    exportButtons(runId), trials.node, el("h2", {}, "Trial"), detail,
    el("h2", {}, "Compare two trials"), compareBox, knobBox,
    el("h2", {}, "Training curves"), curvesBox,
    el("h2", {}, "Mechanisms (Level 2)"), mechBox, el("h2", {}, "Configuration (Level 1.5)"), configBox);

  function select(n) {
    state.selected = n;
    history.replaceState(null, "", `#/run/${encodeURIComponent(runId)}/trial/${n}`);
    render();
    showTrial(runId, state, n, detail);
  }

  function render() {
    facts.replaceChildren(runFacts(state));
    plotBox.replaceChildren(plot(state));
    trials.update(state);
    mechBox.replaceChildren(mechanisms(state));
    configBox.replaceChildren(configTable(state));
  }

  // Each trial's reported curve, asked for again when progress events came (one request
  // at a time; a controller without the curves route shows none).
  let drawing = false;
  async function drawCurves() {
    if (drawing || stopped) return;
    drawing = true;
    try {
      const got = await getJSON(`/api/runs/${encodeURIComponent(runId)}/curves`).catch(() => null);
      if (!stopped) curvesBox.replaceChildren(curvesPlot(got ? got.curves : null, state, objective(state.run)));
    } finally {
      drawing = false;
    }
  }

  // The server's trial table (knob values, importance), asked for again whenever more
  // trials have finished than it knew of; one request at a time.
  let analysing = false;
  async function analyse() {
    const finished = sortedTrials(state).filter((t) => t.finished).length;
    const known = state.analysis ? state.analysis.trials.filter((r) => r.finished).length : -1;
    if (analysing || stopped || (finished === known && (!state.finished || state.analysis.run_done))) return;
    analysing = true;
    try {
      state.analysis = await getJSON(`/api/runs/${encodeURIComponent(runId)}/trials`);
      if (stopped) return;
      trials.update(state);
      knobBox.replaceChildren(knobViews(state));
      if (trials.compare().length === 2) compareView(runId, state, trials.compare(), compareBox);
    } catch (e) {
      setStatus(String(e.message || e), true);
    } finally {
      analysing = false;
    }
    const now = sortedTrials(state).filter((t) => t.finished).length;
    if (now !== state.analysis?.trials.filter((r) => r.finished).length) setTimeout(analyse, 1000);
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
        if (got.events.length || got.done) { render(); analyse(); }
        if (got.events.some((e) => e.trial_progress || e.trial_finished) || got.done) drawCurves();
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
  if (base && base.finished && typeof base.finished.loss === "number") return base.finished.loss;
  return state.run ? state.run.baseline_loss : undefined;
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
    [`best ${o.name}`, fmt(o.shown(r.best_loss !== undefined ? r.best_loss
      : (state.bests.length ? state.bests[state.bests.length - 1].loss : undefined)))],
    ["stop reason", (state.finished && state.finished.reason) || r.stop_reason || ""],
    ["elapsed", r.elapsed_seconds ? `${fmt(r.elapsed_seconds, 1)} s` : ""],
    ["LLM tokens", r.llm_tokens_used ? `${r.llm_tokens_used} (≈ $${fmt(r.llm_cost_usd, 4)})` : ""],
    ["summary", (state.finished && state.finished.summary) || r.summary || ""],
  ].filter(([, v]) => v !== "");
  return el("table", { class: "facts" }, el("tbody", {},
    ...rows.map(([k, v]) => el("tr", {}, td(k), td(v, "desc")))));
}

async function showTrial(runId, state, n, box) {
  const t = state.trials.get(n) || {};
  const f = t.finished || {};
  const p = t.proposed || {};
  const facts = [["trial", n], ["description", f.description || p.description || ""],
    ["hypothesis", f.hypothesis || p.hypothesis || ""],
    ["changes", changesText((((state.analysis || {}).trials || []).find((r) => r.trial === n) || {}).changed)
      || p.changes_json || ""],
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
    if (coloured) colourDiff(pre, a.text);
    else pre.replaceChildren(a.text);
    if (a.truncated) pre.append(el("span", { class: "muted" }, `[${a.size} bytes; the first part shown]`));
  } catch (e) {
    pre.replaceChildren(el("span", { class: "muted" }, String(e.message || e)));
  }
}

// Importance, slices and parallel coordinates from the server's trial table.
function knobViews(state) {
  const a = state.analysis;
  const o = objective(state.run);
  return el("div", {}, el("h2", {}, "Knob importance"), importanceTable(a),
    el("h2", {}, `Slices: each knob against ${o.name} (${o.better})`), slicePlots(a, o),
    el("h2", {}, "Parallel coordinates"), parallelCoordinates(a, o));
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
      .map((run) => run && o.shown(run.best_loss)).filter((x) => typeof x === "number");
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
        run ? fmt(o.shown(run.best_loss), 4) : cell.state || "?"),
        fresh && typeof fresh.value === "number" ? el("div", { class: "muted" }, `fresh ${fmt(o.shown(fresh.value), 4)}`) : null);
    })));
  return el("div", {}, el("p", {}, `task ${spec.task}, ${repeats} repeats of ${spec.trials} trials, ` +
    (spec.finished_at ? "finished" : "running or stopped")),
    el("h2", {}, `Best ${o.name} per run (${o.better}; fresh: re-evaluated on unseen seeds)`),
    table(header, rows, { id: "arms-table" }), armsPlot(arms, repeats, cells, runs, o));
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

takeKey();
window.addEventListener("hashchange", route);
route();
