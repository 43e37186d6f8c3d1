// bilevel ui: a run's trials table, one column per knob, sortable (click a header) and
// filterable (a box under each header). Rows come from the run's events as they arrive
// (app.js's state.trials); knob values from the server's trial table (state.analysis).
// The header and its filter boxes are built only when the columns change, so typing in
// a box is never interrupted by a new trial; the body is rebuilt on every update.
"use strict";

// Filter text for a numeric column: "<0.5", ">=3", "1..2", or a number (equal);
// anything else matches the shown text, ignoring case.
function matches(filter, value, shown) {
  const f = filter.trim();
  if (!f) return true;
  const num = typeof value === "number" ? value : NaN;
  let m = /^(<=|>=|<|>|=)\s*(-?[0-9.eE+-]+)$/.exec(f);
  if (m && !isNaN(num)) {
    const v = Number(m[2]);
    return { "<": num < v, ">": num > v, "<=": num <= v, ">=": num >= v, "=": num === v }[m[1]];
  }
  m = /^(-?[0-9.eE+-]+)\s*\.\.\s*(-?[0-9.eE+-]+)$/.exec(f);
  if (m && !isNaN(num)) return num >= Number(m[1]) && num <= Number(m[2]);
  return String(shown).toLowerCase().includes(f.toLowerCase());
}

function knobText(v) {
  if (v === null || v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v);
}

function changesText(changed) {
  return (changed || []).map(([name, old, now]) =>
    `${name} ${old === null || old === undefined ? "?" : knobText(old)} -> ${knobText(now)}`).join(", ");
}

// One row's cells: {value for sorting and filtering, text shown, class}.
function rowCells(t, a, o, base) {
  const f = t.finished;
  const p = t.proposed || {};
  const status = f ? enumName(f.status, "TRIAL_STATUS_") : (t.started ? "running" : "proposed");
  const v = f ? o.shown(f.loss) : undefined;
  const delta = v !== undefined && base !== undefined ? v - base : undefined;
  const seconds = f ? wallSeconds(f) : undefined;
  const cells = {
    trial: { value: t.trial, text: t.trial, cls: "num" },
    source: { value: f ? f.proposal_source || "" : "", text: f ? f.proposal_source || "" : "" },
    description: { value: (f && f.description) || p.description || "", cls: "desc",
                   changes: a ? changesText(a.changed) : "" },
    status: { value: status, text: status, cls: status },
    metric: { value: v, text: f ? fmt(v) : "-", cls: "num" },
    delta: { value: delta, text: delta === undefined ? "-" : (delta >= 0 ? "+" : "") + delta.toFixed(6), cls: "num" },
    seconds: { value: seconds, text: f ? fmt(seconds, 1) : "-", cls: "num" },
  };
  cells.description.text = cells.description.value;
  return cells;
}

function makeTrialsTable(onPick, onCompare) {
  const view = { sort: { col: "trial", dir: 1 }, filters: {}, columnsKey: "", compare: [] };
  const box = el("div", { id: "trials" });
  const tableEl = el("table", { id: "trials-table" });
  const thead = el("thead", {});
  const tbody = el("tbody", {});
  tableEl.append(thead, tbody);
  const shown = el("p", { class: "muted", id: "trials-shown" });
  box.append(tableEl, shown);
  let last = null;

  function columns(state) {
    const o = objective(state.run);
    const fixed = [["trial", "trial"], ["source", "source"], ["description", "description"],
      ["status", "status"], ["metric", o.name], ["delta", "Δ vs baseline"], ["seconds", "seconds"]];
    const knobs = ((state.analysis || {}).knobs || []).map((k) => ["knob:" + k.name, k.name, k.numeric]);
    return [...fixed, ...knobs];
  }

  function header(cols) {
    const names = el("tr", {}, el("th", { title: "pick two trials to compare" }, "cmp"),
      ...cols.map(([id, label]) => {
        const th = el("th", { class: "sortable", "data-col": id }, label);
        if (view.sort.col === id) th.setAttribute("aria-sort", view.sort.dir > 0 ? "ascending" : "descending");
        th.addEventListener("click", () => {
          view.sort = { col: id, dir: view.sort.col === id ? -view.sort.dir : 1 };
          for (const h of names.querySelectorAll("th[data-col]")) h.removeAttribute("aria-sort");
          th.setAttribute("aria-sort", view.sort.dir > 0 ? "ascending" : "descending");
          if (last) body(last);
        });
        return th;
      }));
    const filters = el("tr", { class: "filters" }, el("th", {}),
      ...cols.map(([id]) => {
        const input = el("input", { type: "search", "data-col": id, placeholder: "filter",
          title: "text, or for numbers <x, >=x, a..b" });
        input.value = view.filters[id] || "";
        input.addEventListener("input", () => { view.filters[id] = input.value; if (last) body(last); });
        return el("th", {}, input);
      }));
    thead.replaceChildren(names, filters);
  }

  function body(state) {
    const cols = columns(state);
    const o = objective(state.run);
    const base = o.shown(baselineOf(state));
    const analysed = new Map(((state.analysis || {}).trials || []).map((r) => [r.trial, r]));
    const all = sortedTrials(state).map((t) => {
      const a = analysed.get(t.trial);
      const cells = rowCells(t, a, o, base);
      for (const [id, name] of cols.slice(7)) {
        const v = a ? a.knobs[name] : undefined;
        cells[id] = { value: v, text: knobText(v), cls: typeof v === "number" ? "num" : "" };
      }
      return { t, cells };
    });
    const kept = all.filter(({ cells }) => cols.every(([id]) =>
      matches(view.filters[id] || "", cells[id].value, cells[id].text)));
    const { col, dir } = view.sort;
    kept.sort((x, y) => {
      const [a, b] = [x.cells[col].value, y.cells[col].value];
      const gap = isMissing(a) - isMissing(b); // missing last, whichever the direction
      return gap || (gap === 0 && !isMissing(a) ? compareValues(a, b) * dir : 0) || x.t.trial - y.t.trial;
    });
    tbody.replaceChildren(...kept.map(({ t, cells }) => row(state, t, cells, cols)));
    shown.textContent = kept.length === all.length ? "" : `${kept.length} of ${all.length} trials shown`;
  }

  function row(state, t, cells, cols) {
    const done = !!t.finished;
    const attrs = { class: done ? "trial done" + (state.selected === t.trial ? " selected" : "") : "trial pending",
                    "data-trial": t.trial };
    if (done) attrs["data-status"] = cells.status.value;
    const pick = el("input", { type: "checkbox", class: "cmp", "data-trial": t.trial });
    pick.checked = view.compare.includes(t.trial);
    pick.disabled = !done;
    pick.addEventListener("click", (e) => {
      e.stopPropagation();
      view.compare = view.compare.filter((n) => n !== t.trial);
      if (pick.checked) view.compare = [...view.compare, t.trial].slice(-2);
      if (last) body(last);
      onCompare(view.compare);
    });
    const tr = el("tr", attrs, el("td", {}, pick), ...cols.map(([id]) => {
      const c = cells[id];
      const cell = td(c.text, c.cls);
      if (id === "description" && c.changes) cell.append(el("div", { class: "changes" }, c.changes));
      return cell;
    }));
    if (done) tr.addEventListener("click", () => onPick(t.trial));
    return tr;
  }

  return {
    node: box,
    compare: () => view.compare,
    update(state) {
      last = state;
      const cols = columns(state);
      const key = JSON.stringify(cols.map((c) => c[0]).concat(objective(state.run).name));
      if (key !== view.columnsKey) { view.columnsKey = key; header(cols); }
      body(state);
    },
  };
}

function isMissing(v) {
  return v === undefined || v === null || v === "" || (typeof v === "number" && !isFinite(v));
}

// Numbers by value, anything else by its text.
function compareValues(a, b) {
  if (typeof a === "number" && typeof b === "number") return a - b;
  return knobText(a).localeCompare(knobText(b));
}
