// bilevel ui: two trials side by side (knobs, metric, status, and the diff between their
// editable files, made by the server), and the export of a run's trials as CSV or JSON.
"use strict";

function compareView(runId, state, picked, box) {
  if (picked.length < 2) {
    box.replaceChildren(el("p", { class: "muted" },
      picked.length ? `trial ${picked[0]} picked; tick a second one in the cmp column`
        : "tick two trials in the table's cmp column to compare them"));
    return;
  }
  const [a, b] = picked;
  const o = objective(state.run);
  const rows = new Map(((state.analysis || {}).trials || []).map((r) => [r.trial, r]));
  const ta = state.trials.get(a) || {}, tb = state.trials.get(b) || {};
  const fa = ta.finished || {}, fb = tb.finished || {};
  const ra = rows.get(a) || { knobs: {} }, rb = rows.get(b) || { knobs: {} };
  const facts = [
    ["status", enumName(fa.status, "TRIAL_STATUS_"), enumName(fb.status, "TRIAL_STATUS_")],
    [o.name, fmt(o.shown(fa.loss)), fmt(o.shown(fb.loss))],
    ["seconds", fmt(wallSeconds(fa), 1), fmt(wallSeconds(fb), 1)],
    ["source", fa.proposal_source || "", fb.proposal_source || ""],
    ["description", fa.description || "", fb.description || ""],
    ["parent", ra.parent ?? "", rb.parent ?? ""],
    ...((state.analysis || {}).knobs || []).map((k) => [k.name, knobText(ra.knobs[k.name]),
      knobText(rb.knobs[k.name]), "knob"]),
  ];
  const body = facts.map(([name, x, y, kind]) => el("tr",
    { class: (kind || "fact") + (String(x) !== String(y) ? " differs" : "") },
    td(name), td(x, "desc"), td(y, "desc")));
  const better = o.shown(fa.loss) !== undefined && o.shown(fb.loss) !== undefined
    ? `${o.name}: trial ${b} minus trial ${a} = ${fmt(o.shown(fb.loss) - o.shown(fa.loss))} (${o.better})`
    : "";
  const diff = el("pre", { id: "compare-diff" }, "loading…");
  box.replaceChildren(table(["", `trial ${a}`, `trial ${b}`], body, { id: "compare-table" }),
    el("p", { id: "compare-delta" }, better), el("h3", {}, `editable file: trial ${a} -> trial ${b}`), diff);
  fillDiff(`/api/runs/${encodeURIComponent(runId)}/compare?a=${a}&b=${b}`, diff);
}

async function fillDiff(url, pre) {
  try {
    const got = await getJSON(url);
    colourDiff(pre, got.diff || "");
    if (got.note) pre.append(el("span", { class: "muted" }, got.note));
  } catch (e) {
    pre.replaceChildren(el("span", { class: "muted" }, String(e.message || e)));
  }
}

// Lines of a unified diff as text nodes and spans, coloured by their first character.
function colourDiff(pre, text) {
  const lines = text ? text.replace(/\n$/, "").split("\n") : [];
  pre.replaceChildren(...lines.map((line) => {
    let cls = "";
    if (line.startsWith("@@")) cls = "hunk";
    else if (line.startsWith("+") && !line.startsWith("+++")) cls = "add";
    else if (line.startsWith("-") && !line.startsWith("---")) cls = "del";
    return cls ? el("span", { class: cls }, line) : document.createTextNode(line + "\n");
  }));
}

// Buttons that fetch the server's export (it needs the page's key, which a plain link
// could not send) and save it as a file.
function exportButtons(runId) {
  const said = el("span", { class: "muted", id: "export-status" });
  const button = (form) => {
    const b = el("button", { type: "button", id: `export-${form}` }, `export ${form.toUpperCase()}`);
    b.addEventListener("click", async () => {
      try {
        const got = await getJSON(`/api/runs/${encodeURIComponent(runId)}/export?format=${form}`);
        const url = URL.createObjectURL(new Blob([got.text], { type: got.content_type }));
        const a = el("a", { href: url, download: got.filename });
        document.body.append(a);
        a.click();
        a.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
        said.textContent = `saved ${got.filename}: ${got.rows} trials`;
      } catch (e) {
        said.textContent = String(e.message || e);
      }
    });
    return b;
  };
  return el("div", { class: "exports" }, button("csv"), button("json"), said);
}
