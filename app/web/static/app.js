// kdservice dashboard: one page, no build step. It uses the public /v1 API with the key
// the user logs in with, like any other client. The key lives in sessionStorage (gone
// when the tab closes); only "remember me" puts it in localStorage. The page runs under
// a Content-Security-Policy without inline script or style attributes: styles are set
// through the CSSOM (el.style), which the policy allows.
"use strict";

const TERMINAL = ["succeeded", "failed", "cancelled"];
const COLORS = ["#2f6fde", "#e08a1e", "#1f9d55", "#9b51e0", "#d64541", "#00a3a3"];
let stopStream = null; // aborts the SSE reader of the job page we left
let refreshTimer = null;

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else if (k === "style") el.style.cssText = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// replaceChildren without the nulls of conditional parts (the DOM would print "null")
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v);
  }
  for (const c of children) el.append(c instanceof Node ? c : String(c));
  return el;
}

const KEY = "kd_api_key";
const key = () => sessionStorage.getItem(KEY) || localStorage.getItem(KEY);
function forgetKey() {
  sessionStorage.removeItem(KEY);
  localStorage.removeItem(KEY);
}
const fmt = (v, digits = 4) => (typeof v === "number" ? Number(v.toFixed(digits)).toString() : v ?? "–");
const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(2) + " %" : "–");
const bytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(2) + " MiB" : (n / 1024).toFixed(1) + " KiB");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// a service time (UTC, ISO) in the browser's time zone, which it names
const ZONE = new Intl.DateTimeFormat(undefined, { timeZoneName: "short" });
function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  const zone = ZONE.formatToParts(d).find((x) => x.type === "timeZoneName")?.value || "";
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())} ${zone}`;
}
// how long a job ran (or has been running)
function duration(job) {
  if (!job.started_at) return "–";
  const s = Math.max(0, ((job.finished_at ? new Date(job.finished_at) : new Date()) - new Date(job.started_at)) / 1000);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
// "teacher -> student" of a job's spec
function models(spec) {
  const teachers = spec.teachers ? `${spec.teachers.length} teachers` : spec.teacher ? spec.teacher.arch || "onnx" : null;
  return teachers ? `${teachers} → ${spec.student.arch}` : spec.student.arch;
}
const statusBadge = (s) => h("span", { class: `status ${s}`, "data-status": s }, s);

class ApiError extends Error {
  constructor(problem, status) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.problem = problem;
    this.status = status;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${key()}`, ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(options.json);
  }
  const r = await fetch(path, { ...options, headers });
  if (r.status === 401) {
    forgetKey();
    route();
    throw new ApiError({ detail: "the API key was refused" }, 401);
  }
  if (!r.ok) {
    let problem = {};
    try { problem = await r.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(problem, r.status);
  }
  return r.status === 204 ? null : r.json();
}

function showError(where, err) {
  where.prepend(h("div", { class: "error-banner", role: "alert" }, err.message));
}

// ---------- routing ----------

function route() {
  if (stopStream) { stopStream(); stopStream = null; }
  clearInterval(refreshTimer);
  const view = document.getElementById("view");
  fill(view);
  const nav = document.getElementById("nav");
  if (!key()) { nav.hidden = true; return renderLogin(view); }
  nav.hidden = false;
  const hash = location.hash || "#/jobs";
  const m = hash.match(/^#\/jobs\/([\w-]+)$/);
  if (m) return renderJob(view, m[1]);
  const again = hash.match(/^#\/new\?from=([\w-]+)$/);  // "submit again" from a job's page
  if (hash === "#/new" || again) return renderNewJob(view, again ? again[1] : null);
  return renderJobs(view);
}

window.addEventListener("hashchange", route);
document.getElementById("logout").addEventListener("click", () => {
  forgetKey();
  location.hash = "#/jobs";
  route();
});

// ---------- login ----------

function renderLogin(view) {
  const input = h("input", { id: "api-key", type: "password", placeholder: "kd_...", autocomplete: "off" });
  const message = h("div", { class: "field-error", id: "login-error" });
  const remember = h("input", { id: "remember", type: "checkbox" });
  const form = h("form", { class: "card login", id: "login-form" },
    h("h1", {}, "Log in"),
    h("p", { class: "muted" }, "Paste an API key (`kd serve` prints one on its first start and saves it in data/api_key)."),
    input,
    h("p", {}, h("label", {}, remember, " Remember me on this computer (keeps the key in localStorage)")),
    h("p", {}, h("button", { class: "primary", type: "submit", id: "login" }, "Log in")), message);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await fetch("/v1/tenant", { headers: { Authorization: `Bearer ${input.value.trim()}` } });
    if (!r.ok) { message.textContent = "This key was refused."; return; }
    forgetKey();
    (remember.checked ? localStorage : sessionStorage).setItem(KEY, input.value.trim());
    route();
  });
  view.append(form);
}

async function loadTenant() {
  try {
    const t = await api("/v1/tenant");
    document.getElementById("tenant").textContent = `tenant: ${t.name}`;
  } catch (_) { /* shown by the page */ }
}

// ---------- job list ----------

function renderJobs(view) {
  loadTenant();
  const status = h("select", { id: "filter-status" },
    h("option", { value: "" }, "any status"),
    ...["queued", "running", "cancelling", "succeeded", "failed", "cancelled"].map((s) => h("option", { value: s }, s)));
  const name = h("input", { id: "filter-name", placeholder: "name contains" });
  const tbody = h("tbody", { id: "jobs-body" });
  const more = h("button", { id: "jobs-more", type: "button", hidden: true }, "More");
  let after = null;

  async function load(append) {
    const params = new URLSearchParams({ limit: "50" });
    if (status.value) params.set("status", status.value);
    if (name.value.trim()) params.set("name", name.value.trim());
    if (append && after) params.set("after", after);
    try {
      const page = await api(`/v1/jobs?${params}`);
      if (!append) fill(tbody);
      for (const job of page.data) tbody.append(jobRow(job));
      if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: JOB_COLUMNS.length, class: "muted" }, "No jobs yet.")));
      after = page.next_after;
      more.hidden = !page.has_more;
    } catch (err) { showError(view, err); }
  }
  status.addEventListener("change", () => load(false));
  name.addEventListener("input", () => load(false));
  more.addEventListener("click", () => load(true));
  view.append(
    h("h1", {}, "Jobs"),
    h("div", { class: "filters" }, status, name, h("a", { href: "#/new" }, h("button", { class: "primary", type: "button" }, "New job"))),
    h("div", { class: "card" }, h("table", {},
      h("thead", {}, h("tr", {}, ...JOB_COLUMNS.map((c) => h("th", {}, c)))),
      tbody), more));
  load(false);
  refreshTimer = setInterval(() => { if (!after) load(false); }, 3000);
}

const JOB_COLUMNS = ["Name", "Kind", "Status", "Progress", "Quality", "Models", "Student size", "Duration", "Created", "Id"];

function jobRow(job) {
  const frac = job.progress.fraction ?? (job.status === "succeeded" ? 1 : 0);
  const acc = job.report?.student?.accuracy ?? job.metrics.accuracy;
  const ppl = job.report?.student?.perplexity ?? job.metrics.perplexity;  // language models
  const size = job.report?.student?.bytes_on_disk;
  const cell = (column, ...content) => h("td", { "data-column": column }, ...content);
  return h("tr", { class: "job-row", "data-job-id": job.id, onclick: () => { location.hash = `#/jobs/${job.id}`; } },
    cell("name", job.name), cell("kind", job.kind), cell("status", statusBadge(job.status)),
    cell("progress", h("div", { class: "bar" }, h("div", { style: `width:${Math.round(100 * frac)}%` }))),
    cell("quality", typeof job.report?.student?.spearman === "number" ? `spearman ${fmt(job.report.student.spearman, 3)}`  // embeddings
      : acc == null && typeof ppl === "number" ? `perplexity ${fmt(ppl, 3)}` : pct(acc)),
    cell("models", models(job.spec)),
    cell("size", typeof size === "number" ? bytes(size) : "–"),
    cell("duration", duration(job)),
    h("td", { class: "muted", "data-column": "created" }, when(job.created_at)),
    h("td", { class: "muted", "data-column": "id" }, job.id));
}

// ---------- job page ----------

// about n round values from lo to hi (1, 2 or 5 times a power of ten apart)
function ticks(lo, hi, n) {
  const raw = (hi - lo) / Math.max(1, n - 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((m) => m >= raw) || raw;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function lineChart(title, series, xLabel, hline) {
  const W = 520, H = 240, L = 48, R = 12, T = 24, B = 32;
  const pts = series.flatMap((s) => s.points);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  root.append(svg("text", { x: L, y: 14, "font-weight": "600" }, title));
  if (!pts.length) {
    root.append(svg("text", { x: W / 2 - 40, y: H / 2 }, "waiting for data"));
    return root;
  }
  const ys = pts.map((p) => p[1]).concat(hline ? [hline.value] : []);
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    svg("text", { x: W / 2 - 20, y: H - 4 }, xLabel));
  for (const y of ticks(y0, y1, 5)) {  // a grid line and a label at each round value
    root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: sy(y), y2: sy(y) }),
      svg("text", { class: "tick y", x: 4, y: sy(y) + 4 }, fmt(y, 4)));
  }
  for (const x of ticks(x0, x1, 6).filter((x) => Number.isInteger(x))) {
    root.append(svg("text", { class: "tick x", x: sx(x) - 6, y: H - 16 }, String(x)));
  }
  if (hline) {
    root.append(svg("line", { x1: L, x2: W - R, y1: sy(hline.value), y2: sy(hline.value), stroke: "#d64541", "stroke-dasharray": "5 4" }),
      svg("text", { x: W - R - 150, y: sy(hline.value) + 14, fill: "#d64541" }, `${hline.label} ${fmt(hline.value, 4)}`));
  }
  let legends = 0;
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, fill: "none", stroke: s.color || COLORS[i % COLORS.length], "stroke-width": s.faint ? 1 : 2,
      "stroke-opacity": s.faint ? 0.3 : 1, class: s.faint ? "series faint" : "series", "data-series": s.name }));
    // a point to hover for its value (the SVG <title> is the browser's own tooltip);
    // long step series are thinned to about 100 points
    const every = Math.max(1, Math.ceil(s.points.length / 100));
    for (const [j, [x, y]] of s.points.entries()) {
      if (j % every && j !== s.points.length - 1) continue;
      root.append(svg("circle", { cx: sx(x).toFixed(1), cy: sy(y).toFixed(1), r: 3, class: "point", "data-series": s.name,
        style: `fill:${s.color || COLORS[i % COLORS.length]}` }, svg("title", {}, `${s.name}: ${xLabel} ${fmt(x, 0)}, ${fmt(y, 4)}`)));
    }
    if (s.legend === false || s.faint) return;
    // the legend sits in the title row, right of the title; inline style beats the CSS fill
    root.append(svg("text", { x: L + 16 + 7 * title.length + 110 * legends++, y: 14, style: `fill:${s.color || COLORS[i % COLORS.length]}`, class: "legend" }, s.name));
  });
  return root;
}

function renderJob(view, jobId) {
  loadTenant();
  // validation curves by model: "student", "baseline (no teacher)", or a sweep's "trial N"
  const state = { job: null, losses: {}, curves: {}, valLoss: [], lastSeq: 0, quality: "accuracy",
    hosts: { placement: null, rates: {}, lost: [] } };  // a job on several hosts (resources.nodes)
  const head = h("div", { class: "card", id: "job-head" });
  const lossChart = h("div", { class: "card chart", id: "loss-chart" });
  const accChart = h("div", { class: "card chart", id: "accuracy-chart" });
  const timeline = h("div", { class: "card", id: "timeline" });
  const report = h("div", { class: "card", id: "report" });
  const downloads = h("div", { class: "card downloads", id: "downloads" });
  const spec = h("div", { class: "card", id: "spec" });
  const hosts = h("div", { class: "card", id: "hosts", hidden: true });
  view.append(head, h("div", { class: "grid" }, lossChart, accChart), h("div", { class: "grid" }, timeline, downloads), hosts, report, spec);

  function drawCharts() {
    const lossSeries = Object.entries(state.losses).map(([name, points]) => ({ name, points }));
    if (state.valLoss.length) lossSeries.push({ name: "val loss", points: state.valLoss, color: "#1d2433" });
    fill(lossChart, lineChart("Loss", lossSeries, "step"));
    const t = state.job?.report?.teacher;
    const key = state.quality;  // accuracy, or a language model's perplexity
    const hline = t && typeof t[key] === "number" ? { value: t[key], label: "teacher" } : null;
    fill(accChart, lineChart(`Validation ${key}`, validationSeries(), "epoch", hline));
  }

  // one line per model; a sweep's trials each have theirs, the selected one drawn over
  // the others (faint) once the report names it
  function validationSeries() {
    const best = state.job?.report?.sweep?.best;
    const trials = Object.keys(state.curves).filter((n) => n.startsWith("trial "));
    return Object.entries(state.curves).map(([name, points]) => {
      if (!name.startsWith("trial ")) return { name, points, color: name === "student" ? COLORS[0] : COLORS[1] };
      const selected = best !== undefined && name === `trial ${best}`;
      return { name: selected ? `${name} (selected)` : name, points, color: selected ? "#d64541" : COLORS[trials.indexOf(name) % COLORS.length],
        faint: best !== undefined && !selected, legend: selected || best === undefined && trials.length <= 4 };
    }).sort((a, b) => Number(!!b.faint) - Number(!!a.faint));
  }

  // which model runs, its epoch, step and rate; once the job ended, the student's own
  // training rate from the report (the last progress may be the baseline's)
  function progressText(job) {
    const p = job.progress, r = job.report;
    if (r && job.status === "succeeded") {
      const who = r.sweep ? `selected trial ${r.sweep.best}` : "student";
      return `${who}: ${r.epochs} epochs · ` + (r.train_tokens_per_s ? `${fmt(r.train_tokens_per_s, 0)} tokens/s` : `${fmt(r.train_images_per_s, 0)} img/s`) +
        (r.baseline ? ` · baseline (no teacher) trained for the same budget` : "");
    }
    if (!p.epoch) return "waiting for a worker";
    if (p.stage === "generating") return `generating: ${p.step}/${p.total_steps} answers of the teacher`;
    const who = p.model === "baseline" ? "baseline (no teacher)" : p.trial ? `trial ${p.trial.index} of ${p.trial.of}` : "student";
    return `${who}: epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.total_steps}` +
      (p.images_per_s ? ` · ${fmt(p.images_per_s, 0)} img/s` : "") +
      (p.tokens_per_s ? ` · ${fmt(p.tokens_per_s, 0)} tokens/s` : "") +
      (p.eta_s && job.status === "running" ? ` · ETA ${fmt(p.eta_s, 0)} s` : "");
  }

  function drawHead() {
    const job = state.job;
    const p = job.progress;
    const frac = p.fraction ?? 0;
    const actions = [];
    if (!TERMINAL.includes(job.status) && job.status !== "cancelling") {
      actions.push(h("button", { type: "button", id: "cancel", onclick: async () => { await api(`/v1/jobs/${jobId}/cancel`, { method: "POST" }); refresh(); } }, "Cancel"));
    }
    if (job.status === "failed" || job.status === "cancelled") {
      actions.push(h("button", { type: "button", id: "retry", onclick: async () => {
        const j = await api(`/v1/jobs/${jobId}/retry?from_checkpoint=true`, { method: "POST" });
        location.hash = `#/jobs/${j.id}`;
      } }, "Retry"));
    }
    fill(head,
      h("h1", {}, job.name, " ", statusBadge(job.status)),
      h("p", { class: "muted" }, `${job.id} · ${job.kind} · attempt ${job.attempt}/${job.max_attempts}` +
        (job.queue_position ? ` · position ${job.queue_position} in the queue` : "")),
      h("div", { class: "bar", id: "progress-bar" }, h("div", { style: `width:${Math.round(100 * frac)}%` })),
      h("p", { id: "progress-text" }, progressText(job)),
      job.error ? h("div", { class: "error-banner" }, job.error) : null,
      h("div", {}, actions));
    fill(timeline, h("h2", {}, "Status timeline"), h("ul", { class: "timeline" },
      job.status_transitions.map((t) => h("li", {}, h("span", { class: "muted" }, when(t.at)), " ",
        statusBadge(t.to_status), " ", t.reason))));
    drawReport(job);
    fill(spec, ...specView(job));
  }

  function drawReport(job) {
    if (!job.report) { fill(report, h("h2", {}, "Report"), h("p", { class: "muted" }, "The report appears when the job succeeds.")); return; }
    fill(report, ...reportView(job));
  }

  async function drawDownloads() {
    // fetch everything first, then replace the panel in one go: refresh() may run
    // twice at once (a status and an epoch event), and each draw must be whole
    const arts = await api(`/v1/jobs/${jobId}/artifacts`);
    const curves = arts.find((a) => a.name === "curves.png");
    let image = null;
    if (curves) {
      const blob = await (await fetch(curves.download_url, { headers: { Authorization: `Bearer ${key()}` } })).blob();
      image = h("img", { src: URL.createObjectURL(blob), alt: "curves.png", style: "width:100%", id: "curves-png" });
    }
    fill(downloads, h("h2", {}, "Downloads"), arts.length ? downloadTable(arts) : h("p", { class: "muted" }, "No artifacts yet."),
      image);
  }

  async function refresh() {
    try {
      state.job = await api(`/v1/jobs/${jobId}`);
      drawHead();
      drawCharts();
      if (state.job.status === "succeeded") await drawDownloads();
    } catch (err) { showError(view, err); }
  }

  function onEvent(ev) {
    const d = ev.data;
    if (ev.type === "progress" && d.phase !== "baseline") {
      for (const [name, v] of Object.entries(d.losses || {})) (state.losses[name] ||= []).push([d.step, v]);
    }
    if (ev.type === "epoch") {
      const m = d.metrics || {};
      const name = d.phase === "baseline" ? "baseline (no teacher)" : d.trial ? `trial ${d.trial.index}` : "student";
      const curve = (state.curves[name] ||= []);
      if (typeof m.accuracy === "number") curve.push([d.epoch, m.accuracy]);
      else if (typeof m.perplexity === "number") {
        state.quality = "perplexity";
        curve.push([d.epoch, m.perplexity]);
      } else if (typeof m.mse === "number") {
        state.quality = "mse";
        curve.push([d.epoch, m.mse]);
      }
      if (typeof m.loss === "number" && d.phase !== "baseline") state.valLoss.push([d.step, m.loss]);
    }
    if (ev.type === "hosts") state.hosts.placement = d;  // the newest attempt's placement
    if (ev.type === "host") state.hosts.rates[d.host] = d;
    if (ev.type === "node_lost") state.hosts.lost.push(d);
    if (["hosts", "host", "node_lost"].includes(ev.type)) {
      hosts.hidden = false;
      fill(hosts, ...hostsView(state.hosts));
    }
    if (ev.type === "status" || ev.type === "epoch") refresh(); else drawCharts();
  }

  const controller = new AbortController();
  stopStream = () => controller.abort();
  refresh().then(() => followEvents(jobId, 0, onEvent, controller.signal));
  fill(downloads, h("h2", {}, "Downloads"), h("p", { class: "muted" }, "Available when the job succeeds."));
}

// each artifact: its size and sha256 (the ETag; `sha256sum` checks a copy), a download
// button, and the command that fetches it from a terminal
function downloadTable(arts) {
  const command = (a) => `curl -sf -H "Authorization: Bearer $KD_API_KEY" -o ${a.name} ${location.origin}${a.download_url}`;
  const copy = async (a, button) => {
    try {
      await navigator.clipboard.writeText(command(a));
      button.textContent = "copied";
    } catch (_) {
      button.textContent = "copy failed: select the command in its tooltip";
    }
  };
  return h("table", { id: "downloads-table" },
    h("thead", {}, h("tr", {}, ...["Artifact", "Size", "sha256", ""].map((c) => h("th", {}, c)))),
    h("tbody", {}, ...arts.map((a) => h("tr", { "data-artifact-row": a.name },
      h("td", {}, h("button", { type: "button", "data-artifact": a.name, onclick: () => download(a) }, a.name)),
      h("td", {}, bytes(a.bytes)),
      h("td", { class: "sha256", title: a.sha256, "data-sha256": a.sha256 }, `${a.sha256.slice(0, 16)}…`),
      h("td", {}, h("button", { type: "button", class: "copy", "data-copy": a.name, title: command(a),
        onclick: (e) => copy(a, e.currentTarget) }, "Copy command"))))));
}

async function download(artifact) {
  const r = await fetch(artifact.download_url, { headers: { Authorization: `Bearer ${key()}` } });
  const url = URL.createObjectURL(await r.blob());
  const a = h("a", { href: url, download: artifact.name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// SSE with an Authorization header (EventSource cannot send one): fetch + a stream reader;
// a dropped stream resumes from the last seen event with Last-Event-ID.
async function followEvents(jobId, after, onEvent, signal) {
  let last = after;
  while (!signal.aborted) {
    try {
      const r = await fetch(`/v1/jobs/${jobId}/events/stream`, { headers: { Authorization: `Bearer ${key()}`, "Last-Event-ID": String(last) }, signal });
      if (!r.ok) return;
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev = { seq: null, type: "message", data: null };
          for (const line of block.split("\n")) {
            if (line.startsWith("id: ")) ev.seq = Number(line.slice(4));
            else if (line.startsWith("event: ")) ev.type = line.slice(7);
            else if (line.startsWith("data: ")) ev.data = JSON.parse(line.slice(6));
          }
          if (ev.seq === null || ev.seq <= last) continue;
          last = ev.seq;
          onEvent(ev);
          if (ev.type === "status" && TERMINAL.includes(ev.data.status)) return;
        }
      }
    } catch (_) {
      if (signal.aborted) return;
    }
    await sleep(2000);
  }
}

// ---------- new job form ----------

const FIELDS = {
  // form field -> [JSON pointer in the spec, how to read it]
  name: ["/name", String], kind: ["/kind", String],
  teacher_arch: ["/teacher/arch", String], student_arch: ["/student/arch", String],
  dataset: ["/dataset/name", String], image_size: ["/dataset/image_size", Number],
  method: ["/distillation/method", String], temperature: ["/distillation/temperature", Number],
  ce_weight: ["/distillation/ce_weight", Number], kd_weight: ["/distillation/kd_weight", Number],
  epochs: ["/training/epochs", Number], batch_size: ["/training/batch_size", Number],
  lr: ["/training/lr", Number], optimizer: ["/training/optimizer", String],
  schedule: ["/training/schedule", String], crop_padding: ["/augment/crop_padding", Number],
};

// the form's fields over `base` (a job's spec, for "submit again"): what the form does
// not show is kept as that job had it
function buildSpec(form, teacherCheckpoint, base = {}) {
  const v = (n) => form.elements[n].value.trim();
  const spec = structuredClone(base);
  const section = (name) => (spec[name] && typeof spec[name] === "object" ? spec[name] : (spec[name] = {}));
  Object.assign(spec, { name: v("name"), kind: v("kind"), baseline: form.elements.baseline.checked,
    export: [...form.querySelectorAll("input[name=export]:checked")].map((box) => box.value) });
  Object.assign(section("student"), { arch: v("student_arch") });
  Object.assign(section("dataset"), { name: v("dataset") });
  Object.assign(section("training"), { epochs: Number(v("epochs")), batch_size: Number(v("batch_size")), lr: Number(v("lr")), optimizer: v("optimizer"), schedule: v("schedule") });
  Object.assign(section("augment"), { crop_padding: Number(v("crop_padding") || 0), hflip: form.elements.hflip.checked });
  if (v("image_size")) spec.dataset.image_size = Number(v("image_size"));
  else delete spec.dataset.image_size;
  if (spec.kind === "distill") {
    spec.teacher = { ...(base.teacher || {}), arch: v("teacher_arch") };
    delete spec.teacher.checkpoint;
    delete spec.teachers;
    if (teacherCheckpoint) spec.teacher.checkpoint = teacherCheckpoint;
    spec.distillation = { ...(base.distillation || {}), method: v("method") };
    for (const n of ["temperature", "ce_weight", "kd_weight"]) delete spec.distillation[n];
    // a blank weight is left to the method's own default (GET /v1/capabilities: method_defaults)
    for (const n of ["temperature", "ce_weight", "kd_weight"]) if (v(n) !== "") spec.distillation[n] = Number(v(n));
  } else {
    spec.baseline = false;
    delete spec.teacher;
    delete spec.teachers;
    delete spec.distillation;
  }
  return spec;
}

// a job's spec into the form's fields (the rest stays in the base buildSpec starts from)
function fillForm(form, spec, teacherSource) {
  const at = (pointer) => pointer.split("/").slice(1).reduce((o, k) => (o == null ? undefined : o[k]), spec);
  for (const [name, [pointer]] of Object.entries(FIELDS)) {
    const value = at(pointer);
    const el = form.elements[name];
    if (value === undefined || value === null || !el) continue;
    if (el.tagName === "SELECT" && ![...el.options].some((o) => o.value === String(value))) el.append(h("option", { value: String(value) }, String(value)));
    el.value = String(value);
  }
  form.elements.baseline.checked = !!spec.baseline;
  form.elements.hflip.checked = !!spec.augment?.hflip;
  for (const box of form.querySelectorAll("input[name=export]")) box.checked = box.disabled || (spec.export || []).includes(box.value);
  const checkpoint = spec.teacher?.checkpoint;
  if (checkpoint) {
    if (![...teacherSource.options].some((o) => o.value === checkpoint)) teacherSource.append(h("option", { value: checkpoint }, checkpoint));
    teacherSource.value = checkpoint;
  }
  form.elements.kind.dispatchEvent(new Event("change"));
}

// The teacher's weights: one of the tenant's trained students (a job's
// student.safetensors artifact) or uploaded checkpoints, or a new upload.
async function teacherChoices() {
  const [artifacts, files] = await Promise.all([
    api("/v1/artifacts?name=student.safetensors&limit=100"),
    api("/v1/files?purpose=checkpoint&limit=100"),
  ]);
  const trained = artifacts.map((a) => h("option", { value: a.id, "data-arch": a.arch || "" },
    `${a.job_name}: ${a.arch || "?"} (${a.job_kind} job ${a.job_id})`));
  const uploaded = files.data.map((f) => h("option", { value: f.id }, `${f.filename} (${f.id}, ${bytes(f.bytes)})`));
  return [
    h("option", { value: "" }, "none: upload a file below (or leave the teacher untrained)"),
    h("optgroup", { label: "trained in this service", id: "teacher-trained" }, ...trained),
    h("optgroup", { label: "uploaded checkpoints", id: "teacher-uploaded" }, ...uploaded),
  ];
}

async function renderNewJob(view, fromJob) {
  loadTenant();
  let caps, choices, base = {};
  try {
    [caps, choices] = await Promise.all([api("/v1/capabilities"), teacherChoices()]);
    if (fromJob) base = (await api(`/v1/jobs/${fromJob}`)).spec;
  } catch (err) { return showError(view, err); }
  const options = (list, chosen) => list.map((x) => h("option", { value: x, selected: x === chosen }, x));
  const field = (label, name, control) => h("label", { for: name }, label, control, h("span", { class: "field-error", "data-error-for": name }));
  const input = (name, value, type = "text") => h("input", { id: name, name, value, type, step: type === "number" ? "any" : undefined });
  // an architecture list (1,500 names with timm and transformers) with a search box:
  // typing keeps the names that contain what was typed, ignoring case and punctuation
  // (`resnet-20` finds cifar_resnet20)
  const plain = (text) => text.toLowerCase().replace(/[^a-z0-9]/g, "");
  function archPicker(name, chosen) {
    const select = h("select", { id: name, name }, options(caps.architectures, chosen));
    const count = h("span", { class: "muted arch-count", id: `${name}_count` }, `${caps.architectures.length} architectures`);
    const search = h("input", { id: `${name}_search`, type: "search", placeholder: "search architectures", autocomplete: "off" });
    search.addEventListener("input", () => {
      const query = plain(search.value);
      let shown = 0;
      for (const option of select.options) {
        option.hidden = query !== "" && !plain(option.value).includes(query);
        shown += option.hidden ? 0 : 1;
      }
      if (select.selectedOptions[0]?.hidden) {
        const first = [...select.options].find((o) => !o.hidden);
        if (first) select.value = first.value;
      }
      count.textContent = query ? `${shown} of ${caps.architectures.length} match` : `${caps.architectures.length} architectures`;
    });
    return h("span", { class: "arch-picker" }, search, select, count);
  }
  const teacherSource = h("select", { id: "teacher_source", name: "teacher_source" }, ...choices);
  const teacherInput = h("input", { id: "teacher_file", name: "teacher_file", type: "file", accept: ".safetensors,.pt,.pth,.bin,.onnx" });
  const teacherInfo = h("span", { class: "muted", id: "teacher-file-id" });
  const messages = h("ul", { class: "messages", id: "validation-messages" });
  const exports = caps.export_formats.map((f) => h("label", { class: "inline" },
    h("input", { type: "checkbox", name: "export", value: f, id: `export_${f}`, checked: f === "safetensors", disabled: f === "safetensors" }), ` ${f}`));

  const form = h("form", { class: "spec card", id: "new-job-form", novalidate: true },
    field("Name", "name", input("name", "digits-kd")),
    field("Kind", "kind", h("select", { id: "kind", name: "kind" }, options(caps.kinds, "distill"))),
    field("Dataset", "dataset", h("select", { id: "dataset", name: "dataset" }, options(["digits", "fashion_mnist", "synthetic"], "digits"))),
    field("Teacher architecture", "teacher_arch", archPicker("teacher_arch", "cifar_resnet20")),
    field("Teacher weights: a job's trained student, or an uploaded checkpoint", "teacher_source", teacherSource),
    field("… or upload a checkpoint (safetensors, weights-only .pt, ONNX)", "teacher_file", h("span", {}, teacherInput, teacherInfo)),
    field("Student architecture", "student_arch", archPicker("student_arch", "small_cnn")),
    field("Method", "method", h("select", { id: "method", name: "method", onchange: (e) => showMethodDefaults(e.target.value) }, options(caps.methods, "kd"))),
    field("Temperature", "temperature", input("temperature", "4", "number")),
    field("Image size (blank: native)", "image_size", input("image_size", "", "number")),
    field("CE weight", "ce_weight", input("ce_weight", "0.1", "number")),
    field("KD weight", "kd_weight", input("kd_weight", "0.9", "number")),
    field("Optimizer", "optimizer", h("select", { id: "optimizer", name: "optimizer" }, options(["sgd", "adamw"], "sgd"))),
    field("Learning-rate schedule", "schedule", h("select", { id: "schedule", name: "schedule" }, options(caps.schedules, "cosine"))),
    field("Epochs", "epochs", input("epochs", "5", "number")),
    field("Batch size", "batch_size", input("batch_size", "64", "number")),
    field("Learning rate", "lr", input("lr", "0.05", "number")),
    field("Augmentation: random-crop padding in pixels (0: none)", "crop_padding", input("crop_padding", "0", "number")),
    h("label", { for: "hflip" }, "Augmentation: flips", h("span", {}, h("input", { type: "checkbox", name: "hflip", id: "hflip" }), " random horizontal flips")),
    h("div", { class: "wide", id: "exports" }, h("span", { class: "muted" }, "Exports (safetensors always): "), ...exports, h("span", { class: "field-error", "data-error-for": "export" })),
    h("label", { class: "wide" }, h("span", {}, h("input", { type: "checkbox", name: "baseline", id: "baseline" }), " also train the student from scratch (baseline, reports the KD gain)")),
    h("div", { class: "wide" }, messages),
    h("div", { class: "wide" }, h("button", { type: "button", id: "validate" }, "Validate"), " ",
      h("button", { type: "submit", class: "primary", id: "submit" }, "Submit job")));

  function showMethodDefaults(method) {
    // each method has its own tuned weights; show them, blank where it has none
    const defaults = (caps.method_defaults || {})[method] || {};
    for (const n of ["temperature", "ce_weight", "kd_weight"]) {
      form.elements[n].value = defaults[n] === undefined ? "" : String(defaults[n]);
    }
  }

  function showValidation(result) {
    form.querySelectorAll(".field-error").forEach((el) => { el.textContent = ""; });
    fill(messages);
    const byPointer = Object.fromEntries(Object.entries(FIELDS).map(([n, [p]]) => [p, n]));
    byPointer["/teacher/checkpoint"] = "teacher_source";
    byPointer["/export"] = "export";
    for (const e of result.errors || []) {
      const name = byPointer[e.loc] || Object.entries(byPointer).find(([p]) => e.loc.startsWith(p))?.[1];
      const slot = name && form.querySelector(`[data-error-for="${name}"]`);
      if (slot) slot.textContent = e.msg;
      messages.append(h("li", { class: "error" }, `${e.loc}: ${e.msg}`));
    }
    for (const w of result.warnings || []) messages.append(h("li", { class: "warning" }, w));
    if (result.valid) messages.append(h("li", {}, "The spec is valid."));
  }

  async function validate() {
    const result = await api("/v1/jobs/validate", { method: "POST", json: buildSpec(form, teacherSource.value, base) });
    showValidation(result);
    return result.valid;
  }

  teacherSource.addEventListener("change", () => {
    // a job's student brings its architecture along
    const arch = teacherSource.selectedOptions[0]?.dataset.arch;
    if (arch && caps.architectures.includes(arch)) form.elements.teacher_arch.value = arch;
  });
  teacherInput.addEventListener("change", async () => {
    if (!teacherInput.files.length) return;
    const body = new FormData();
    body.append("file", teacherInput.files[0]);
    body.append("purpose", "checkpoint");
    teacherInfo.textContent = "uploading…";
    try {
      const f = await api("/v1/files", { method: "POST", body });
      form.querySelector("#teacher-uploaded").prepend(h("option", { value: f.id }, `${f.filename} (${f.id}, ${bytes(f.bytes)})`));
      teacherSource.value = f.id;
      teacherInfo.textContent = `uploaded as ${f.id}`;
      teacherInfo.dataset.fileId = f.id;
    } catch (err) {
      teacherInfo.textContent = `upload refused: ${err.message}`;
    }
  });
  form.elements.kind.addEventListener("change", () => {
    const distill = form.elements.kind.value === "distill";
    for (const n of ["teacher_arch", "teacher_source", "teacher_file", "method", "temperature", "ce_weight", "kd_weight"]) {
      form.querySelector(`label[for="${n}"]`).hidden = !distill;
    }
  });
  form.querySelector("#validate").addEventListener("click", () => validate().catch((err) => showError(view, err)));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      if (!(await validate())) return;
      const job = await api("/v1/jobs", { method: "POST", json: buildSpec(form, teacherSource.value, base), headers: { "Idempotency-Key": crypto.randomUUID ? crypto.randomUUID() : `web-${Date.now()}-${Math.random()}` } });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (err.problem?.errors) showValidation({ errors: err.problem.errors, warnings: [] });
      else showError(view, err);
    }
  });
  if (fromJob) fillForm(form, base, teacherSource);
  const note = fromJob ? [h("p", { class: "muted", id: "from-job" }, `Filled in from job ${fromJob}; fields the form does not show are kept as that job had them.`)] : [];
  view.append(h("h1", {}, "New job"), ...note, form);
}

route();
