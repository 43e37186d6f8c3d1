// bilevel ui: DOM and data helpers shared by the other scripts (loaded first).
// Everything that comes from a run (descriptions, hypotheses, logs, diffs, mechanism
// details) is hostile text: it only ever reaches the DOM as textContent or as a text
// node, never as markup the browser parses, nor in an attribute it interprets.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";

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

// The task's metric and direction (TaskSpec.metric, .maximize). The API's loss fields
// hold the loss the loop minimises (-metric for a maximised metric): `shown` turns a loss
// back into the metric as the task states it.
function objective(run) {
  const task = (run && run.request && run.request.task) || {};
  const maximize = task.maximize === true;
  return { name: task.metric || "val_bpb", maximize,
           better: maximize ? "higher is better" : "lower is better",
           shown: (v) => (typeof v === "number" && isFinite(v) ? (maximize ? -v : v) : undefined) };
}

// A trial's wall time, ended_at - started_at (what the terminal's live view shows):
// every job of the trial with its start and teardown, not only the job's own run time.
function wallSeconds(finished) {
  const at = (s) => Date.parse(String(s || "").replace(/(\.\d{3})\d*Z$/, "$1Z"));
  const start = at(finished.started_at), end = at(finished.ended_at);
  if (start > 0 && end >= start) return (end - start) / 1000;
  return finished.run_seconds;
}

function enumName(value, prefix) {
  return typeof value === "string" ? value.replace(prefix, "").toLowerCase() : String(value);
}

function setStatus(text, error) {
  const statusLine = document.getElementById("status");
  statusLine.textContent = text;
  statusLine.className = error ? "error" : "";
}

// The page's key: `bilevel ui` prints its URL once with "#key=..." (a fragment: never
// sent to a server; a route may follow it: "#key=K/run/RUN"). It is kept in this
// origin's localStorage (no other port or site reads it) and sent with every API
// request; without it the API answers 403.
const KEY_ITEM = "bilevel-ui-key";

function takeKey() {
  const found = /^#key=([A-Za-z0-9_-]{16,128})(\/.*)?$/.exec(location.hash);
  if (!found) return;
  localStorage.setItem(KEY_ITEM, found[1]);
  history.replaceState(null, "", location.pathname + location.search + "#" + (found[2] || "/"));
}

async function getJSON(url) {
  const key = localStorage.getItem(KEY_ITEM) || "";
  const response = await fetch(url, { cache: "no-store", headers: { "X-Bilevel-Key": key } });
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
