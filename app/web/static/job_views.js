// kdservice dashboard: the job page's report panels (teacher / student / baseline, the KD
// verdict, the gate, per-class accuracy, exports, a sweep's trials and Pareto front, the
// spec). Loaded before app.js, whose helpers (h, svg, fmt, pct, bytes) these call when a
// page is drawn. Every figure names the model it belongs to.
"use strict";

function qualityOf(figures) {
  return "accuracy" in figures ? "accuracy" : "perplexity" in figures ? "perplexity" : "mse";
}

const showQuality = (key, v) => (key === "accuracy" ? pct(v) : fmt(v));

// the KD gain in its unit (kdcore/kd_gain.py): accuracy points, or a perplexity/MSE ratio
function kdGainText(r) {
  if (typeof r.kd_gain !== "number") return "–";
  return r.kd_gain_unit === "points" ? `${r.kd_gain >= 0 ? "+" : ""}${fmt(r.kd_gain, 2)} points` : `${fmt(r.kd_gain, 3)}x (${r.kd_gain_unit})`;
}

// a latency measured on a busy machine, or with a wide spread (kdcore/latency.py)
const noisy = (r, batch) => (r.latency?.[batch]?.noisy ? ` — noisy: ${r.latency[batch].why}` : "");

// an embedding job (kdcore/text/embedding): the student's fidelity to the teacher on
// held-out text, and the teacher-initialised student's before training
function fidelityView(r) {
  const s = r.student || {}, t = r.teacher || {}, b = r.baseline || {};
  const top = Object.keys(s).find((k) => /^top\d+_overlap$/.test(k)) || "top10_overlap";
  const row = (label, tv, sv, bv) => h("tr", { "data-row": label }, h("td", {}, label), h("td", {}, tv), h("td", {}, sv), h("td", {}, bv ?? "–"));
  const rows = [
    row("spearman (pairwise cosines)", "1", fmt(s.spearman, 4), b.spearman == null ? "–" : fmt(b.spearman, 4)),
    row(`${top.replace("_overlap", "")} neighbour overlap`, "1", fmt(s[top], 4), b[top] == null ? "–" : fmt(b[top], 4)),
    row("cosine to the teacher", "1", fmt(s.cosine, 4), b.cosine == null ? "–" : fmt(b.cosine, 4)),
    row("tokens/s", fmt(t.tokens_per_s, 0), fmt(s.tokens_per_s, 0)),
    row("latency, batch 1 (ms)", fmt(t.latency_ms_batch1, 2), fmt(s.latency_ms_batch1, 2)),
    row("parameters", t.parameters?.toLocaleString() ?? "–", s.parameters?.toLocaleString()),
  ];
  const columns = ["", "teacher", "student", "student before training"];
  return [h("h2", {}, "Report: fidelity to the teacher"),
    h("table", { class: "kv", id: "report-table" }, h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", {}, c)))), h("tbody", {}, rows)),
    h("p", { id: "report-summary" }, `speed-up ${fmt(r.speedup, 2)}x (tokens/s) · ${fmt(r.training_time_s, 1)} s of training on ${r.device}`)];
}

function reportView(job) {
  const r = job.report;
  if (r.task === "embedding") return fidelityView(r);
  const s = r.student || {}, t = r.teacher || {}, b = r.baseline;
  const quality = qualityOf(s);
  const columns = ["", "teacher", "student"].concat(b ? ["baseline (no teacher)"] : []);
  const row = (label, tv, sv, bv) => h("tr", { "data-row": label }, h("td", {}, label), h("td", {}, tv), h("td", {}, sv), b ? h("td", {}, bv ?? "–") : null);
  const rows = [
    row(quality, showQuality(quality, t[quality]), showQuality(quality, s[quality]), b && showQuality(quality, b[quality])),
    row("architecture", t.arch ?? "–", s.arch),
    row("parameters", t.parameters?.toLocaleString() ?? "–", s.parameters?.toLocaleString()),
    row("size on disk", t.bytes_on_disk ? bytes(t.bytes_on_disk) : "–", s.bytes_on_disk ? bytes(s.bytes_on_disk) : "–"),
  ].concat("tokens_per_s" in s ? [  // a text job measures throughput, not latency
    row("tokens/s", fmt(t.tokens_per_s, 0), fmt(s.tokens_per_s, 0)),
  ] : [
    row(`CPU latency, batch 1 (ms)${noisy(r, "batch1")}`, fmt(t.latency_ms_batch1, 3), fmt(s.latency_ms_batch1, 3)),
    row(`CPU latency, batch 64 (ms)${noisy(r, "batch64")}`, fmt(t.latency_ms_batch64, 3), fmt(s.latency_ms_batch64, 3)),
  ]).concat(b ? [row("training time (s)", "–", fmt(r.training_time_s, 1), fmt(b.training_time_s, 1))] : []);
  const summary = [];
  if (r.compression_ratio) summary.push(`compression ${fmt(r.compression_ratio, 2)}x parameters`, `size ${fmt(r.size_ratio, 2)}x`, `speed-up ${fmt(r.speedup_batch1, 2)}x (batch 1)`);
  if (typeof r.agreement === "number") summary.push(`agreement ${pct(r.agreement)}`);
  if (typeof r.kd_gain === "number") summary.push(`KD gain over scratch ${kdGainText(r)}`);
  return [h("h2", {}, b ? "Report: teacher, student and baseline" : "Report: teacher vs student"),
    h("table", { class: "kv", id: "report-table" }, h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", {}, c)))), h("tbody", {}, rows)),
    h("p", { id: "report-summary" }, summary.join(" · ")),
    r.kd_verdict ? h("p", { id: "kd-verdict", class: r.kd_helped ? "pass" : "fail" }, r.kd_verdict) : null,
    h("p", { class: "muted" }, `student: ${r.epochs} epochs, ${fmt(r.training_time_s, 1)} s, ` +
      (r.train_tokens_per_s ? `${fmt(r.train_tokens_per_s, 0)} tokens/s` : `${fmt(r.train_images_per_s, 0)} img/s`) +
      ` on ${r.device} (${r.precision})`),
    ...gateView(r.gate), ...perClassView(r.readiness), ...exportsView(r.exports), ...sweepView(r.sweep)];
}

// the readiness verdict (spec `gate`), check by check
function gateView(gate) {
  if (!gate) return [];
  const rows = Object.entries(gate.checks || {}).map(([name, c]) => h("tr", { class: c.passed ? "pass" : "fail" },
    h("td", {}, (c.class ? `${name} (${c.class})` : name) + (c.unit ? ` [${c.unit}]` : "") + (c.noisy ? ` — noisy: ${c.why}` : "")), h("td", {}, fmt(c.value, 4)), h("td", {}, fmt(c.limit, 4)), h("td", {}, c.passed ? "ok" : "FAIL")));
  return [h("h3", { id: "gate-verdict", class: gate.passed ? "pass" : "fail" }, `Gate: ${gate.passed ? "passed" : "failed"}`),
    h("table", { class: "kv", id: "gate-table" }, h("thead", {}, h("tr", {}, h("th", {}, "check"), h("th", {}, "value"), h("th", {}, "limit"), h("th", {}, ""))), h("tbody", {}, rows))];
}

// per-class accuracy of teacher and student, two bars a class
function perClassView(ready) {
  if (!ready?.per_class) return [];
  const bar = (v, cls) => h("div", { class: "bar" }, h("div", { class: cls, style: `width:${Math.round(100 * (v ?? 0))}%` }));
  const rows = ready.per_class.map((c) => h("tr", {}, h("td", {}, c.class),
    h("td", {}, bar(c.teacher, "teacher"), bar(c.student, "student")), h("td", {}, `${pct(c.teacher)} → ${pct(c.student)}`)));
  return [h("h3", {}, "Per-class accuracy (teacher, student)"),
    h("table", { class: "kv", id: "per-class" }, h("tbody", {}, rows)),
    h("p", { class: "muted" }, `calibration error (ECE) teacher ${fmt(ready.ece?.teacher, 3)}, student ${fmt(ready.ece?.student, 3)}`)];
}

// report.exports: each written format's test quality, CPU latency and size
function exportsView(exports) {
  if (!exports || !Object.keys(exports).length) return [];
  const rows = Object.entries(exports).map(([format, e]) => h("tr", { "data-format": format },
    h("td", {}, format), h("td", {}, e.runtime ?? "–"), h("td", {}, "accuracy" in e ? pct(e.accuracy) : `mse ${fmt(e.mse)}`),
    h("td", {}, fmt(e.latency_ms_batch1, 3)), h("td", {}, fmt(e.latency_ms_batch64, 3)), h("td", {}, bytes(e.bytes))));
  const head = ["format", "runtime", "quality (test)", "latency b1 (ms)", "latency b64 (ms)", "size"];
  return [h("h3", {}, "Exports"), h("table", { class: "kv", id: "export-table" },
    h("thead", {}, h("tr", {}, ...head.map((c) => h("th", {}, c)))), h("tbody", {}, rows))];
}

// a job on several hosts: each node's host and ranks, its throughput at the last epoch
// end (its own clock), and the hosts an attempt lost (worker killed, network cut)
function hostsView(hosts) {
  const placement = hosts.placement;
  const rows = (placement?.hosts || []).map((n) => {
    const rate = hosts.rates[n.host];
    return h("tr", { "data-host": n.host }, h("td", {}, n.node_rank), h("td", {}, n.host), h("td", {}, n.ranks.join(", ")),
      h("td", {}, rate ? `${fmt(rate.rate, 0)} ${rate.unit} (epoch ${rate.epoch})` : "–"));
  });
  const lost = hosts.lost.map((l) => h("li", { class: "error" }, `attempt ${l.attempt}: node ${l.node_rank} (${l.host}) lost`));
  return [h("h2", {}, placement ? `Hosts (attempt ${placement.attempt}, rendezvous ${placement.rendezvous})` : "Hosts"),
    h("table", { class: "kv", id: "host-table" }, h("thead", {}, h("tr", {}, ...["node", "host", "ranks", "throughput"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)),
    lost.length ? h("ul", { id: "lost-hosts" }, lost) : null];
}

// a sweep: every trial (selected, Pareto front and excluded ones marked) and the front
function sweepView(sweep) {
  if (!sweep) return [];
  const front = new Set(sweep.pareto || []);
  const metric = sweep.metric;
  const rows = (sweep.trials || []).map((t) => {
    const marks = [t.trial === sweep.best ? "selected" : null, front.has(t.trial) ? "Pareto" : null,
      t.excluded_by?.length ? `excluded: ${t.excluded_by.join("; ")}` : null].filter(Boolean).join(", ");
    const cls = t.trial === sweep.best ? "selected" : t.excluded_by?.length ? "excluded" : "";
    return h("tr", { class: cls, "data-trial": t.trial },
      h("td", {}, t.trial), h("td", {}, t.rung), h("td", {}, Object.entries(t.params || {}).map(([k, v]) => `${k.split(".").pop()}=${v}`).join(" ")),
      h("td", {}, showQuality(metric, t[metric])), h("td", {}, fmt(t.latency_ms_batch1, 3)), h("td", {}, t.parameters?.toLocaleString()),
      h("td", {}, `${t.epochs_run ?? 0}/${t.epochs}`), h("td", {}, marks));
  });
  const head = ["trial", "rung", "params", `test ${metric}`, "latency b1 (ms)", "parameters", "epochs", ""];
  return [h("h3", { id: "sweep-title" }, `Sweep (${sweep.strategy}, by validation ${metric}): trial ${sweep.best} selected`),
    h("table", { class: "kv", id: "trial-table" }, h("thead", {}, h("tr", {}, ...head.map((c) => h("th", {}, c)))), h("tbody", {}, rows)),
    h("div", { class: "chart", id: "pareto-chart" }, paretoChart(sweep))];
}

// quality against latency at batch 1, one point a trained trial; the front joined
function paretoChart(sweep) {
  const W = 520, H = 240, L = 48, R = 12, T = 24, B = 32;
  const metric = sweep.metric;
  const trained = (sweep.trials || []).filter((t) => typeof t[metric] === "number" && typeof t.latency_ms_batch1 === "number");
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Pareto front" });
  root.append(svg("text", { x: L, y: 14, "font-weight": "600" }, `${metric} against latency (batch 1, ms): the Pareto front`));
  if (!trained.length) return root;
  const xs = trained.map((t) => t.latency_ms_batch1), ys = trained.map((t) => t[metric]);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x1 === x0) { x0 -= 0.5 * (x0 || 1); x1 += 0.5 * (x1 || 1); }
  if (y1 === y0) { y0 -= 0.01; y1 += 0.01; }
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }), svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    svg("text", { x: 4, y: sy(y1) + 4 }, fmt(y1, 3)), svg("text", { x: 4, y: sy(y0) + 4 }, fmt(y0, 3)),
    svg("text", { x: L, y: H - 10 }, fmt(x0, 3)), svg("text", { x: W - R - 40, y: H - 10 }, fmt(x1, 3)));
  const front = trained.filter((t) => (sweep.pareto || []).includes(t.trial)).sort((a, b) => a.latency_ms_batch1 - b.latency_ms_batch1);
  if (front.length > 1) {
    const d = front.map((t, j) => `${j ? "L" : "M"}${sx(t.latency_ms_batch1).toFixed(1)},${sy(t[metric]).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, fill: "none", stroke: "#1f9d55", "stroke-dasharray": "4 3", class: "front" }));
  }
  for (const t of trained) {
    const selected = t.trial === sweep.best, onFront = (sweep.pareto || []).includes(t.trial);
    root.append(svg("circle", { cx: sx(t.latency_ms_batch1).toFixed(1), cy: sy(t[metric]).toFixed(1), r: selected ? 6 : 4,
      fill: selected ? "#d64541" : onFront ? "#1f9d55" : "#9aa2b1", class: `trial-point${selected ? " selected" : ""}${onFront ? " pareto" : ""}`, "data-trial": t.trial }));
    root.append(svg("text", { x: (sx(t.latency_ms_batch1) + 7).toFixed(1), y: (sy(t[metric]) - 5).toFixed(1) }, String(t.trial)));
  }
  return root;
}

// the job's spec, read-only; copy it, or open the new-job form filled in with it
function specView(job) {
  const text = JSON.stringify(job.spec, null, 2);
  const copied = h("span", { class: "muted", id: "spec-copied" });
  const copy = h("button", { type: "button", id: "copy-spec", onclick: async () => {
    try { await navigator.clipboard.writeText(text); copied.textContent = "copied"; } catch (_) { copied.textContent = "select the text and copy it"; }
  } }, "Copy");
  const again = h("button", { type: "button", id: "submit-again", onclick: () => { location.hash = `#/new?from=${job.id}`; } }, "Submit again");
  return [h("h2", {}, "Spec"), h("p", {}, copy, " ", again, " ", copied), h("pre", { id: "job-spec", class: "spec-text" }, text)];
}
