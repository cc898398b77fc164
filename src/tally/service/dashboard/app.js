// The live dashboard of tally serve: one EventSource (/api/events) sends, twice a second,
// the workers, the jobs, new throughput points and new attempt records; this file draws
// them as tables and SVG. With --watch, /api/watch is polled every second for the watched
// objects' results and the running total. No build step, no dependencies.
"use strict";

const WINDOW_S = 60;          // the timeline shows at most the last minute
const THROUGHPUT_S = 300;     // the throughput chart at most the last five minutes
const SVG_NS = "http://www.w3.org/2000/svg";

const view = {
  now: 0,
  workers: [],
  jobs: [],
  counts: {},
  throughput: [],             // [t, MB/s]
  attempts: new Map(),        // attempt id -> {worker, job, start, end, outcome}
  marks: [],                  // {worker, t, kind}: a worker lost, a late result dropped
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function mb(bytes) { return (bytes / 1e6).toFixed(1); }
function seconds(s) {
  if (s === null || s === undefined) return "—";
  if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + " s";
  const min = Math.floor(s / 60), rest = Math.round(s % 60);
  return min + " min" + (rest ? " " + rest + " s" : "");
}
function tail(text, n) { return text.length > n ? "…" + text.slice(text.length - n + 1) : text; }
// the time span a chart shows: since ``first``, within [least, most] seconds
function shown(first, least, most) {
  return Math.min(most, Math.max(least, Math.ceil((view.now - first) / 10) * 10));
}
function queryText(q) {
  if (q.top !== undefined) return "top " + q.top;
  if (q.domain !== undefined) return "domain " + q.domain;
  if (q.all) return "all";
  return JSON.stringify(q);
}

function record(r) {
  const ending = { committed: "committed", cancelled: "dropped", returned: "dropped",
                   failed: "failed", attempt_lost: "lost" };
  if (r.event === "assigned") {
    view.attempts.set(r.attempt, { worker: r.worker, job: r.job, start: r.t, end: null,
                                   outcome: "running" });
  } else if (r.event in ending) {
    const a = view.attempts.get(r.attempt);
    if (a) { a.end = r.t; a.outcome = ending[r.event]; }
  } else if (r.event === "duplicate_dropped") {
    view.marks.push({ worker: r.worker, t: r.t, kind: "dropped" });
  } else if (r.event === "lost") {
    view.marks.push({ worker: r.worker, t: r.t, kind: "lost" });
  }
}

function apply(snap) {
  if (snap.now < view.now) {  // the server restarted: its clock starts again
    view.attempts.clear();
    view.marks = [];
    view.throughput = [];
  }
  view.now = snap.now;
  view.workers = snap.workers;
  view.jobs = snap.jobs;
  view.counts = snap.counts;
  view.draining = snap.draining;
  for (const p of snap.throughput) view.throughput.push(p);
  const oldest = view.now - THROUGHPUT_S;
  while (view.throughput.length && view.throughput[0][0] < oldest) view.throughput.shift();
  for (const r of snap.records) record(r);
  const since = view.now - WINDOW_S;
  for (const [id, a] of view.attempts) if (a.end !== null && a.end < since) view.attempts.delete(id);
  view.marks = view.marks.filter((m) => m.t >= since);
}

function renderSummary() {
  const alive = view.workers.filter((w) => w.state === "alive").length;
  const c = view.counts;
  const parts = [alive + " worker" + (alive === 1 ? "" : "s"),
                 (c.running || 0) + " running", (c.queued || 0) + " queued",
                 (c.succeeded || 0) + " succeeded", (c.failed || 0) + " failed",
                 (c.cancelled || 0) + " cancelled"];
  if (view.draining) parts.push("draining");
  document.getElementById("summary").textContent = parts.join(" · ");
}

function renderWorkers() {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren(...view.workers.map((w) => el("tr",
    { "data-worker-id": w.id, "data-state": w.state },
    el("td", {}, w.id), el("td", {}, w.name), el("td", {}, w.slots), el("td", {}, w.running),
    el("td", {}, w.partitions), el("td", {}, mb(w.bytes)),
    el("td", {}, w.state === "alive" ? seconds(w.heartbeat_age_s) + " ago" : "—"),
    el("td", { class: "state-" + w.state }, w.state))));
}

function renderJobs() {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...view.jobs.slice().reverse().map((j) => {
    const p = j.progress;
    const pct = p.partitions ? Math.floor((100 * p.partitions_done) / p.partitions) : 100;
    const fill = el("span", { style: "width:" + pct + "%" });
    return el("tr", { "data-job-id": j.id, "data-state": j.state, "data-progress": pct },
      el("td", {}, j.id), el("td", { class: "state-" + j.state }, j.state),
      el("td", {}, queryText(j.query)), el("td", { class: "source", title: j.source }, tail(j.source, 40)),
      el("td", {}, el("span", { class: "bar" }, fill),
         el("span", { class: "pct" }, pct + "%"), " " + p.partitions_done + "/" + p.partitions),
      el("td", {}, p.mb_s === null ? "—" : p.mb_s.toFixed(1)),
      el("td", {}, j.state === "running" ? seconds(p.eta_s) : "—"));
  }));
}

function renderThroughput() {
  const chart = document.getElementById("throughput");
  const W = chart.clientWidth || 900, H = 160, L = 40, B = 20, T = 8;
  chart.setAttribute("viewBox", "0 0 " + W + " " + H);
  const span = shown(view.throughput.length ? view.throughput[0][0] : view.now, 60, THROUGHPUT_S);
  const t1 = view.now, t0 = t1 - span;
  const top = Math.max(1, ...view.throughput.map((p) => p[1])) * 1.1;
  const x = (t) => L + ((t - t0) / span) * (W - L - 4);
  const y = (v) => H - B - (v / top) * (H - B - T);
  const nodes = [svg("line", { class: "axis", x1: L, y1: H - B, x2: W, y2: H - B }),
                 svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
                 svg("text", { class: "axis-label", x: 2, y: T + 10 }, top.toFixed(0)),
                 svg("text", { class: "axis-label", x: 2, y: H - B }, "0"),
                 svg("text", { class: "axis-label", x: L, y: H - 4 }, "-" + seconds(span)),
                 svg("text", { class: "axis-label", x: W - 30, y: H - 4 }, "now")];
  if (view.throughput.length) {
    const pts = view.throughput.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1));
    const first = x(view.throughput[0][0]).toFixed(1), last = x(view.throughput.at(-1)[0]).toFixed(1);
    nodes.push(svg("polygon", { class: "rate-area",
      points: first + "," + (H - B) + " " + pts.join(" ") + " " + last + "," + (H - B) }));
    nodes.push(svg("polyline", { class: "rate", points: pts.join(" ") }));
  }
  chart.replaceChildren(...nodes);
}

function renderTimeline() {
  const chart = document.getElementById("timeline");
  const lanes = view.workers;
  const W = chart.clientWidth || 900, L = 150, LANE = 22, AXIS = 18;
  const H = Math.max(1, lanes.length) * LANE + AXIS;
  chart.setAttribute("viewBox", "0 0 " + W + " " + H);
  chart.style.height = H + "px";
  let first = view.now;
  for (const a of view.attempts.values()) first = Math.min(first, a.start);
  const span = shown(first, 10, WINDOW_S);
  const t1 = view.now, t0 = t1 - span;
  const x = (t) => L + ((Math.max(t, t0) - t0) / span) * (W - L - 4);
  const row = new Map(lanes.map((w, i) => [w.id, i]));
  const nodes = [];
  lanes.forEach((w, i) => {
    nodes.push(svg("rect", { class: "lane", x: L, y: i * LANE + 2, width: W - L - 4, height: LANE - 4 }));
    const label = "#" + w.id + " " + w.name + (w.state === "alive" ? "" : " (" + w.state + ")");
    nodes.push(svg("text", { class: "lane-label" + (w.state === "alive" ? "" : " gone"),
                             x: 2, y: i * LANE + 15 }, label.slice(0, 24)));
  });
  for (const [id, a] of view.attempts) {
    if (!row.has(a.worker)) continue;
    const end = a.end === null ? t1 : a.end;
    if (end < t0) continue;
    const i = row.get(a.worker);
    const rect = svg("rect", { class: a.outcome, x: x(a.start).toFixed(1), y: i * LANE + 4,
      width: Math.max(1.5, x(end) - x(a.start)).toFixed(1), height: LANE - 8,
      "data-attempt": id, "data-outcome": a.outcome });
    rect.append(svg("title", {}, "attempt " + id + " of job " + a.job + ": " + a.outcome));
    nodes.push(rect);
  }
  for (const m of view.marks) {
    if (!row.has(m.worker)) continue;
    const i = row.get(m.worker);
    nodes.push(svg("line", { class: "mark " + m.kind, x1: x(m.t), x2: x(m.t), y1: i * LANE + 1,
                             y2: (i + 1) * LANE - 1 }));
  }
  const base = lanes.length * LANE;
  nodes.push(svg("text", { class: "axis-label", x: L, y: base + 13 }, "-" + seconds(span)));
  nodes.push(svg("text", { class: "axis-label", x: W - 30, y: base + 13 }, "now"));
  chart.replaceChildren(...nodes);
}

function render() {
  renderSummary();
  renderWorkers();
  renderJobs();
  renderThroughput();
  renderTimeline();
}

// --- watched storage (tally serve --watch) ---------------------------------------------------

const WATCH_EVERY_MS = 1000;
const TOTAL_ROWS = 10;

function cells(row) { return Object.values(row).map((v) => String(v)); }
function resultText(result, n) {
  if (!result) return "—";
  return result.rows.slice(0, n).map((r) => cells(r).join(" ")).join(", ") +
    (result.rows.length > n ? ", …" : "");
}
function clock(t) { return t ? new Date(t * 1000).toLocaleTimeString() : "—"; }

function renderWatch(w) {
  document.getElementById("watch-places").textContent = w.source + " → " + w.output;
  const total = w.total;
  document.getElementById("watch-summary").textContent = total
    ? w.objects_seen + " object(s) seen; the total covers " + total.lines + " lines (" +
      total.malformed_lines + " malformed)"
    : w.objects_seen + " object(s) seen; no total written yet";
  const table = document.getElementById("watch-total");
  table.dataset.lines = total ? total.lines : "";
  const names = total && total.rows.length ? Object.keys(total.rows[0]) : [];
  table.tHead.rows[0].replaceChildren(...names.map((name) => el("th", {}, name)));
  table.tBodies[0].replaceChildren(...(total ? total.rows.slice(0, TOTAL_ROWS) : []).map((r) =>
    el("tr", {}, ...cells(r).map((c) => el("td", {}, c)))));
  document.querySelector("#watch tbody").replaceChildren(...w.objects.map((o) =>
    el("tr", { "data-object": o.object, "data-state": o.state,
               "data-lines": o.result ? o.result.lines : "" },
      el("td", { class: "source", title: o.object }, tail(o.object, 40)),
      el("td", { title: o.version }, tail(String(o.version), 12)),
      el("td", { class: "state-" + o.state }, o.state),
      el("td", {}, o.result ? o.result.lines : "—"),
      el("td", { class: "result" }, resultText(o.result, 3)),
      el("td", {}, clock(o.finished)))));
}

async function pollWatch() {
  const section = document.getElementById("watch-section");
  try {
    const response = await fetch("/api/watch");
    if (response.status === 404) return;  // not watching: nothing to show, stop asking
    if (response.ok) {
      renderWatch(await response.json());
      section.hidden = false;
    }
  } catch (e) { /* the server is restarting: ask again */ }
  setTimeout(pollWatch, WATCH_EVERY_MS);
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("/api/events");
  source.onopen = () => { status.textContent = "live"; status.className = "connection live"; };
  source.onmessage = (event) => { apply(JSON.parse(event.data)); render(); };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "connection"; };
}

connect();
pollWatch();
