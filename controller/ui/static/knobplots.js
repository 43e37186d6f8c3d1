// bilevel ui: the knob views of a run, drawn from /api/runs/RUN/trials (the server's
// trial table, controller/ui/trials.py): importance, one slice plot per knob (knob
// value vs metric) and parallel coordinates. Knob names are hostile text like the rest:
// they reach the page as text nodes and <title> text only.
"use strict";

// The trials of the table that have a value, each with its knob values.
function measuredRows(analysis) {
  return (analysis.trials || []).filter((r) => r.finished && typeof r.value === "number");
}

function importanceTable(analysis) {
  const imp = analysis.importance || {};
  const parts = [el("p", { class: "muted", id: "importance-method" }, `method: ${imp.method || ""}`)];
  if (imp.note) {
    parts.push(el("p", { id: "importance-note" }, imp.note));
    return el("div", {}, ...parts);
  }
  const rows = (imp.knobs || []).map((k) => el("tr", { class: "importance" }, td(k.name),
    td(k.share === null ? "-" : `${(100 * k.share).toFixed(1)} %`, "num"),
    td(bar(k.share)), td(k.p === null ? "-" : fmt(k.p, 3), "num"), td(k.bins, "num"),
    td(k.trials, "num"), td(k.note || "", "desc")));
  parts.push(table(["knob", "share of variance", "", "p", "bins", "trials", "note"], rows,
    { id: "importance-table" }));
  return el("div", {}, ...parts);
}

function bar(share) {
  const root = svgEl("svg", { class: "bar", width: 120, height: 10, viewBox: "0 0 120 10" });
  root.append(svgEl("rect", { class: "share", x: 0, y: 1, height: 8,
                              width: Math.max(0, Math.min(1, share || 0)) * 120 }));
  return root;
}

// A numeric axis, or evenly spaced categories for anything else.
function knobAxis(values, numeric) {
  if (numeric) return numericAxis(values);
  const cats = [...new Set(values.map((v) => JSON.stringify(v)))].sort();
  return { log: false, ticks: cats, label: (c) => knobText(JSON.parse(c)),
           unit: (v) => (cats.length === 1 ? 0.5 : cats.indexOf(JSON.stringify(v)) / (cats.length - 1)),
           tickUnit: (c) => (cats.length === 1 ? 0.5 : cats.indexOf(c) / (cats.length - 1)) };
}

function tickUnit(axis, t) {
  return axis.tickUnit ? axis.tickUnit(t) : axis.unit(t);
}

// At most about `n` of an axis's ticks: a log axis keeps its powers of ten, any other
// every k-th tick.
function fewer(axis, n) {
  if (axis.ticks.length <= n) return axis.ticks;
  if (axis.log) return axis.ticks.filter((t) => Number.isInteger(Math.round(Math.log10(t) * 1e6) / 1e6));
  const k = Math.ceil(axis.ticks.length / n);
  return axis.ticks.filter((_, i) => i % k === 0);
}

function short(text, n) {
  const s = String(text);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

// One small plot per knob: its value (x) against the metric (y), every measured trial a
// dot. The y axis is the same in every plot, so their spreads compare.
function slicePlots(analysis, o) {
  const rows = measuredRows(analysis);
  const knobs = analysis.knobs || [];
  if (!knobs.length) return el("p", { class: "muted" }, "no trial changed a knob yet");
  if (!rows.length) return el("p", { class: "muted" }, "no measured trial yet");
  const yAxis = niceTicks(Math.min(...rows.map((r) => r.value)), Math.max(...rows.map((r) => r.value)), 4);
  const W = 250, H = 190, L = 56, R = 10, T = 22, B = 34;
  const y = (v) => T + (H - T - B) * (1 - (v - yAxis.lo) / (yAxis.hi - yAxis.lo));
  return el("div", { class: "slices", id: "slices" }, ...knobs.map((k) => {
    const root = svgEl("svg", { class: "slice", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                                "data-knob": k.name });
    const title = svgEl("text", { class: "knob", x: L, y: 14 }, short(k.name, 34));
    title.append(svgEl("title", {}, k.name));
    root.append(title);
    const known = rows.filter((r) => r.knobs[k.name] !== null && r.knobs[k.name] !== undefined);
    for (const v of yAxis.ticks) {
      root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      root.append(svgEl("text", { class: "ytick", x: L - 4, y: y(v) + 4, "text-anchor": "end" },
        yAxis.label(v)));
    }
    root.append(svgEl("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
    if (!known.length) {
      root.append(svgEl("text", { x: L + 4, y: T + 30 }, "value not known (not in the baseline file)"));
      return root;
    }
    const axis = knobAxis(known.map((r) => r.knobs[k.name]), k.numeric);
    const x = (u) => L + 6 + (W - L - R - 12) * u;
    const ticks = fewer(axis, 6);
    for (const t of ticks) {
      root.append(svgEl("text", { class: "xtick", x: x(tickUnit(axis, t)), y: H - B + 14,
                                  "text-anchor": "middle" }, short(axis.label(t), 12)));
    }
    root.append(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" },
      `${axis.log ? "log " : ""}value · ${o.name}`));
    for (const r of known) {
      const dot = svgEl("circle", { class: r.status, cx: x(axis.unit(r.knobs[k.name])), cy: y(r.value),
                                    r: 3.5, "data-trial": r.trial });
      dot.append(svgEl("title", {}, `trial ${r.trial}: ${k.name} = ${JSON.stringify(r.knobs[k.name])}, ${o.name} ${fmt(r.value)}`));
      root.append(dot);
    }
    return root;
  }));
}

// Parallel coordinates: an axis per knob and the metric last; a line per measured trial
// whose every knob value is known, darker the better its metric.
function parallelCoordinates(analysis, o) {
  const knobs = analysis.knobs || [];
  const rows = measuredRows(analysis);
  const complete = rows.filter((r) => knobs.every((k) => r.knobs[k.name] !== null && r.knobs[k.name] !== undefined));
  const W = 760, H = 300, L = 40, R = 70, T = 30, B = 40;
  const root = svgEl("svg", { id: "parcoords", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  if (!knobs.length || !complete.length) {
    root.append(svgEl("text", { x: L, y: T + 20 }, knobs.length
      ? "no measured trial with every knob's value known" : "no trial changed a knob yet"));
    return root;
  }
  const axes = knobs.map((k) => knobAxis(complete.map((r) => r.knobs[k.name]), k.numeric));
  const metricAxis = niceTicks(Math.min(...complete.map((r) => r.value)),
    Math.max(...complete.map((r) => r.value)), 4);
  const n = knobs.length + 1;
  const ax = (i) => L + (W - L - R) * (i / Math.max(1, n - 1));
  const ay = (u) => T + (H - T - B) * (1 - u);
  const metricUnit = (v) => (v - metricAxis.lo) / (metricAxis.hi - metricAxis.lo);
  // Better trials last (drawn on top) and darker.
  const ranked = [...complete].sort((a, b) => (o.maximize ? a.value - b.value : b.value - a.value));
  ranked.forEach((r, i) => {
    const points = knobs.map((k, j) => `${ax(j)},${ay(axes[j].unit(r.knobs[k.name]))}`);
    points.push(`${ax(n - 1)},${ay(metricUnit(r.value))}`);
    const shade = ranked.length > 1 ? i / (ranked.length - 1) : 1;
    const line = svgEl("polyline", { class: "pc-line", points: points.join(" "), "data-trial": r.trial,
      stroke: `rgb(${Math.round(190 - 164 * shade)},${Math.round(200 - 85 * shade)},${Math.round(215 + 17 * shade)})` });
    line.append(svgEl("title", {}, `trial ${r.trial}: ${o.name} ${fmt(r.value)}`));
    root.append(line);
  });
  const labelled = [...axes.map((a, j) => [a, knobs[j].name]), [{ ...metricAxis, unit: metricUnit }, o.name]];
  labelled.forEach(([axis, name], i) => {
    root.append(svgEl("line", { class: "axis", x1: ax(i), x2: ax(i), y1: T, y2: H - B }));
    const label = svgEl("text", { class: "knob", x: ax(i), y: H - B + 16, "text-anchor": "middle" },
      short(name, Math.max(6, Math.floor((W - L - R) / Math.max(1, n - 1) / 7))));
    label.append(svgEl("title", {}, name));
    root.append(label);
    const ticks = fewer(axis, 6);
    for (const t of ticks) {
      root.append(svgEl("text", { class: "pc-tick", x: ax(i) + 3, y: ay(tickUnit(axis, t)) + 4 },
        short(axis.label(t), 10)));
    }
  });
  const left = rows.length - complete.length;
  root.append(svgEl("text", { x: L, y: 16 }, `${complete.length} trials` +
    (left ? `; ${left} with a knob value not known are left out` : "")));
  return root;
}

// Each trial's training curve as the candidate reported it (untrusted: its own claims,
// never its score), a line per trial coloured by how the trial ended; a gap where it
// reported no finite value.
function curvesPlot(curves, state, o) {
  const W = 760, H = 280, L = 70, R = 16, T = 12, B = 40;
  const root = svgEl("svg", { id: "curves", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  const lines = Object.entries(curves || {}).filter(([, pts]) => pts.some((p) => typeof p[1] === "number"));
  if (!lines.length) {
    root.append(svgEl("text", { x: L, y: T + 20 }, "no trial reported a training curve"));
    return root;
  }
  const all = lines.flatMap(([, pts]) => pts.filter((p) => typeof p[1] === "number"));
  const xAxis = niceTicks(0, Math.max(1, ...all.map((p) => p[0])), 6);
  const yAxis = niceTicks(Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1])), 5);
  const x = (s) => L + (W - L - R) * (s - xAxis.lo) / (xAxis.hi - xAxis.lo);
  const y = (v) => T + (H - T - B) * (1 - (v - yAxis.lo) / (yAxis.hi - yAxis.lo));
  for (const v of yAxis.ticks) {
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svgEl("text", { class: "ytick", x: L - 6, y: y(v) + 4, "text-anchor": "end" }, yAxis.label(v)));
  }
  for (const s of xAxis.ticks) {
    root.append(svgEl("text", { x: x(s), y: H - B + 14, "text-anchor": "middle" }, xAxis.label(s)));
  }
  root.append(svgEl("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  root.append(svgEl("text", { x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle" },
    `step · ${o.name} as reported while training (untrusted)`));
  for (const [trial, pts] of lines) {
    const t = state.trials.get(Number(trial));
    const status = t && t.finished ? enumName(t.finished.status, "TRIAL_STATUS_") : "running";
    let d = "", pen = "M";
    for (const [step, v] of pts) {
      if (typeof v !== "number") { pen = "M"; continue; }
      d += `${pen}${x(step).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
    }
    const path = svgEl("path", { class: `curve ${status}` + (state.selected === Number(trial) ? " chosen" : ""),
                                 d, "data-trial": trial });
    path.append(svgEl("title", {}, `trial ${trial} (${status}): ${pts.length} points`));
    root.append(path);
  }
  return root;
}
