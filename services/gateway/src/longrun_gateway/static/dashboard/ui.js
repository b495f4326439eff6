// DOM and formatting helpers shared by the views. Text always goes in through textContent (never HTML).
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/** el("div", {class: "x", dataset: {a: 1}, onclick}, child, "text", …) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "dataset") Object.assign(node.dataset, value);
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** node.replaceChildren() that skips null/false children (the DOM one would write "null"). */
export function put(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
  return node;
}

export function epoch(value) {
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms / 1000;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  const s = Math.max(0, seconds);
  if (s < 1) return `${Math.round(s * 1000)}ms`;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.round(s % 60)).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

export function ago(value) {
  const t = epoch(value);
  return t === null ? "" : `${duration(Date.now() / 1000 - t)} ago`;
}

export function clock(value) {
  const t = epoch(value);
  if (t === null) return "—";
  const d = new Date(t * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const time = d.toLocaleTimeString([], { hour12: false }) + `.${String(d.getMilliseconds()).padStart(3, "0")}`;
  return today ? time : `${d.toLocaleDateString()} ${time}`;
}

export function percentOf(job) {
  const progress = job.progress || {};
  let percent = typeof progress.percent === "number" ? progress.percent : null;
  if (percent === null && progress.total) percent = (100 * (progress.current || 0)) / progress.total;
  if (job.status === "succeeded") percent = 100;
  return Math.max(0, Math.min(100, percent ?? 0));
}

/** What the job is doing in words; a job cancelled before it started is not shown like one still waiting. */
export function phase(job) {
  const s = job.status;
  if (s === "cancelled") return job.started_at ? "cancelled" : "cancelled-queued";
  if (!TERMINAL.has(s) && job.cancel_requested) return "cancelling";
  if (s === "queued") return job.attempt > 1 || job.requeued ? "queued" : "waiting";
  return s || "unknown";
}

const LABELS = {
  "cancelled-queued": "cancelled before start", cancelling: "cancelling…", waiting: "waiting",
  queued: "queued again", running: "running", retrying: "retrying", succeeded: "succeeded", failed: "failed",
  cancelled: "cancelled while running", unknown: "unknown",
};

export function badge(job) {
  const p = phase(job);
  return el("span", { class: `badge ${p}`, dataset: { phase: p } }, LABELS[p] || p);
}

export function bar(job, big = false) {
  const percent = percentOf(job);
  const fill = el("div", { class: "fill" });
  fill.style.width = `${percent}%`;
  return el("div", { class: `bar ${phase(job)}${big ? " big" : ""}`, role: "progressbar",
    "aria-valuenow": Math.round(percent), "aria-valuemin": 0, "aria-valuemax": 100 }, fill);
}

// Why a queued job is not on a worker's queue yet (the job view's `queued_reason`), in words.
const REASONS = {
  delayed: "delayed: starts at its set time",
  waiting_for_dependencies: "waiting for the workflow steps it depends on",
  fair_share: "held for fair share: other tenants' jobs go first",
  tenant_concurrency_limit: "held: this tenant already runs as many jobs as its limit allows",
};

/** The `queued_reason` of a job still queued, in words (the code itself for one this page does not know). */
export function queuedReason(job) {
  if (job.status !== "queued" || !job.queued_reason) return null;
  if (job.queued_reason === "delayed" && job.run_at) return `delayed until ${clock(job.run_at)}`;
  return REASONS[job.queued_reason] || job.queued_reason;
}

/** "ETA 12s", "next try in 3s", "took 4.2s", "waited 10s" … the one time that matters for the job now. */
export function timing(job) {
  const now = Date.now() / 1000;
  const started = epoch(job.started_at);
  const finished = epoch(job.finished_at);
  const created = epoch(job.created_at);
  const p = phase(job);
  if (p === "running") {
    const eta = job.progress && job.progress.eta_seconds;
    const ran = started ? `ran ${duration(now - started)}` : "";
    return typeof eta === "number" ? `${ran} · ETA ${duration(eta)}` : ran;
  }
  if (p === "retrying") {
    const next = epoch(job.next_retry_at);
    return next ? `next try in ${duration(next - now)}` : "retry pending";
  }
  const runAt = job.status === "queued" ? epoch(job.run_at) : null;
  if (runAt && runAt > now && p !== "cancelling") return `starts in ${duration(runAt - now)}`;
  if (p === "waiting" || p === "queued" || p === "cancelling") return created ? `waiting ${duration(now - created)}` : "";
  if (finished && started) return `took ${duration(finished - started)}`;
  if (finished && created) return `after ${duration(finished - created)} in queue`;
  return "";
}

export function errorText(error) {
  if (!error) return "";
  return [error.type, error.message].filter(Boolean).join(": ");
}

/** Chips for `progress.meta` (a small object set by the task). */
export function metaChips(meta) {
  if (!meta || typeof meta !== "object") return null;
  const entries = Object.entries(meta).slice(0, 8);
  if (!entries.length) return null;
  return el("span", { class: "meta" }, entries.map(([k, v]) =>
    el("span", { class: "chip" }, `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`.slice(0, 80))));
}

/** A job object updated by a hub frame (snapshot job or event); the times the frame implies are filled in. */
export function applyFrame(job, frame) {
  if (frame.type === "snapshot") {
    const next = { ...job };
    for (const [k, v] of Object.entries(frame.job || {})) if (v !== null && v !== undefined) next[k] = v;
    next.seq = frame.seq;
    return next;
  }
  const next = { ...job, seq: frame.seq, status: frame.status || job.status };
  if (frame.progress) next.progress = frame.progress;
  if (frame.attempt) next.attempt = frame.attempt;
  for (const name of ["error", "result", "next_retry_at"]) if (name in frame) next[name] = frame[name];
  if (frame.status === "running" && !job.started_at) next.started_at = frame.ts;
  if (TERMINAL.has(frame.status) && !job.finished_at) next.finished_at = frame.ts;
  if (frame.status === "queued" && TERMINAL.has(job.status)) { next.requeued = true; next.finished_at = null; }
  return next;
}

export function jsonBlock(value) {
  return el("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function notice(text, kind = "info") {
  return el("div", { class: `notice ${kind}` }, text);
}
