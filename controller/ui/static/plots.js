// bilevel ui: the SVG figures of a run (best-so-far, mechanism timeline, arms) and the
// axis helpers knobplots.js shares. Labels from a run go in as textContent (svgEl's
// text), like everywhere else.
"use strict";

// Axis ticks at 1, 2 or 5 x 10^k, about `count` of them, and the domain widened to the
// outer ticks, so a label never falls on an odd value like 0.7431.
function niceTicks(lo, hi, count = 5) {
  if (!(hi - lo > 1e-12 * Math.max(1, Math.abs(hi)))) {
    const d = Math.abs(lo) * 0.05 || 0.5;
    lo -= d; hi += d;
  }
  const raw = (hi - lo) / count;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw * (1 - 1e-9));
  const first = Math.floor(lo / step + 1e-9), last = Math.ceil(hi / step - 1e-9);
  const ticks = [];
  for (let i = first; i <= last; i++) ticks.push(Number((i * step).toPrecision(12)));
  const digits = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
  return { lo: first * step, hi: last * step, ticks, step,
           label: (v) => (digits > 8 ? v.toExponential(1) : v.toFixed(digits)) };
}

// Ticks of a log axis: powers of ten, with 2 and 5 between them over a short range.
function logTicks(lo, hi) {
  const a = Math.floor(Math.log10(lo) + 1e-9), b = Math.ceil(Math.log10(hi) - 1e-9);
  const mantissas = b - a <= 2 ? [1, 2, 5] : [1];
  const ticks = [];
  for (let e = a; e <= Math.max(b, a + 1); e++) {
    for (const m of mantissas) ticks.push(Number((m * Math.pow(10, e)).toPrecision(12)));
  }
  const inside = ticks.filter((t) => t >= Math.pow(10, a) && t <= Math.pow(10, Math.max(b, a + 1)));
  return { lo: Math.pow(10, a), hi: Math.pow(10, Math.max(b, a + 1)), ticks: inside,
           label: (v) => (v >= 1e-3 && v < 1e5 ? String(v) : v.toExponential(0)) };
}

// A numeric axis over `values`: log when all are positive and span two decades.
function numericAxis(values) {
  const lo = Math.min(...values), hi = Math.max(...values);
  if (lo > 0 && hi / lo >= 100) {
    const t = logTicks(lo, hi);
    const [a, b] = [Math.log10(t.lo), Math.log10(t.hi)];
    return { ...t, log: true, unit: (v) => (Math.log10(v) - a) / (b - a) };
  }
  const t = niceTicks(lo, hi);
  return { ...t, log: false, unit: (v) => (v - t.lo) / (t.hi - t.lo) };
}

// Best-so-far plot: every measured trial as a dot, the incumbent as a step line, and
// crashes in their own strip under the axis (no value, so never drawn as one).
function plot(state) {
  const W = 760, H = 320, L = 84, R = 16, T = 12, B = 64;
  const root = svgEl("svg", { id: "plot", width: W, height: H, viewBox: `0 0 ${W} ${H}`,
                              role: "img" });
  const done = sortedTrials(state).filter((t) => t.finished);
  const o = objective(state.run);
  const measured = done.filter((t) => o.shown(t.finished.loss) !== undefined);
  if (!measured.length) {
    root.append(svgEl("text", { x: L, y: T + 20 }, "no measured trial yet"));
    return root;
  }
  const maxTrial = Math.max(1, ...done.map((t) => t.trial));
  const axis = niceTicks(Math.min(...measured.map((t) => o.shown(t.finished.loss))),
    Math.max(...measured.map((t) => o.shown(t.finished.loss))));
  const x = (n) => L + (W - L - R) * (n / maxTrial);
  const y = (v) => T + (H - T - B) * (1 - (v - axis.lo) / (axis.hi - axis.lo));
  const axisY = H - B;
  for (const v of axis.ticks) {
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
    root.append(svgEl("text", { class: "ytick", x: L - 6, y: y(v) + 4, "text-anchor": "end" },
      axis.label(v)));
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
    for (const b of state.bests) steps.push([b.trial, o.shown(b.loss)]);
  } else {
    let best = Infinity;
    for (const t of measured) {
      if (t.finished.status === "TRIAL_STATUS_KEEP" && t.finished.loss < best) {
        best = t.finished.loss;
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
    const dot = svgEl("circle", { class: status, cx: x(t.trial), cy: y(o.shown(t.finished.loss)), r: 4,
                                  "data-trial": t.trial });
    dot.append(svgEl("title", {}, `trial ${t.trial} ${status}: ${fmt(o.shown(t.finished.loss))}`));
    root.append(dot);
  }
  const crashes = done.filter((t) => !measured.includes(t));
  const stripY = axisY + 30;
  root.append(svgEl("text", { x: L - 6, y: stripY + 4, "text-anchor": "end" },
    `no value (${crashes.length})`));
  for (const t of crashes) {
    const cx = x(t.trial);
    const mark = svgEl("path", { class: "crashmark", d: `M${cx - 4},${stripY - 4}l8,8m0,-8l-8,8`,
                                 "data-trial": t.trial });
    mark.append(svgEl("title", {}, `trial ${t.trial}: ${enumName(t.finished.status, "TRIAL_STATUS_")}`));
    root.append(mark);
  }
  return root;
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

function armsPlot(arms, repeats, cells, runs, o) {
  const values = arms.map((arm) => Array.from({ length: repeats }, (_, r) => {
    const cell = cells[`${arm.name}/${r}`] || {};
    const run = runs.get(cell.run_id);
    return run ? o.shown(run.best_loss) : undefined;
  }).filter((v) => typeof v === "number"));
  const all = values.flat();
  const W = 760, L = 130, R = 16, lane = 24, H = 40 + lane * arms.length;
  const root = svgEl("svg", { id: "arms-plot", width: W, height: H, viewBox: `0 0 ${W} ${H}` });
  if (!all.length) { root.append(svgEl("text", { x: L, y: 20 }, "no finished run yet")); return root; }
  const axis = niceTicks(Math.min(...all), Math.max(...all));
  const x = (v) => L + (W - L - R) * (v - axis.lo) / (axis.hi - axis.lo);
  arms.forEach((arm, i) => {
    const cy = 12 + lane * i + lane / 2;
    root.append(svgEl("text", { x: L - 6, y: cy + 4, "text-anchor": "end" }, arm.name));
    root.append(svgEl("line", { class: "grid", x1: L, x2: W - R, y1: cy, y2: cy }));
    for (const v of values[i]) root.append(svgEl("circle", { class: "keep", cx: x(v), cy, r: 4 }));
  });
  for (const v of axis.ticks) {
    root.append(svgEl("text", { x: x(v), y: H - 18, "text-anchor": "middle" }, axis.label(v)));
  }
  root.append(svgEl("text", { x: W - R, y: H - 4, "text-anchor": "end" }, `${o.name} (${o.better})`));
  return root;
}
