// The jobs list: filters, cursor paging, and a live bar per job (frames from the shared hub socket).
import { api } from "./api.js";
import { TERMINAL, ago, applyFrame, badge, bar, el, errorText, metaChips, percentOf, phase, queuedReason, timing }
  from "./ui.js";

const REFRESH_MS = 4000;
const NOT_STARTED = new Set(["waiting", "cancelled-queued"]); // no percent: nothing has run
const STATUSES = ["", "queued", "running", "retrying", "succeeded", "failed", "cancelled"];
const SINCE = { "": "any time", "15m": "last 15 min", "1h": "last hour", "24h": "last 24 h", "7d": "last 7 days" };
const SINCE_SECONDS = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 604800 };

function select(name, options, value) {
  return el("select", { name, "aria-label": name },
    Object.entries(options).map(([v, label]) => el("option", { value: v, selected: v === value }, label)));
}

export function jobsView(root, ctx) {
  const params = ctx.params;
  const filters = {
    status: params.get("status") || "", task: params.get("task") || "", queue: params.get("queue") || "",
    since: params.get("since") || "",
  };
  const limit = Math.min(200, Math.max(1, Number.parseInt(params.get("limit"), 10) || 25));
  const cursors = [null]; // cursor of each page visited; the last one is the page shown
  const rows = new Map(); // job id -> {job, el, unwatch, frames}
  const dirty = new Set();
  let timer = null;
  let stopped = false;
  let frameRequested = false;

  const form = el("form", { class: "filters", id: "filters" },
    select("status", Object.fromEntries(STATUSES.map((s) => [s, s || "any status"])), filters.status),
    el("input", { name: "task", placeholder: "task (exact)", value: filters.task, "aria-label": "task" }),
    el("input", { name: "queue", placeholder: "queue", value: filters.queue, "aria-label": "queue" }),
    select("since", SINCE, filters.since),
    el("button", { type: "submit" }, "Apply"),
    el("a", { href: "#/jobs", class: "quiet" }, "clear"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const data = new FormData(form);
    const query = new URLSearchParams();
    for (const [k, v] of data) if (String(v).trim()) query.set(k, String(v).trim());
    location.hash = `#/jobs${query.size ? `?${query}` : ""}`;
  });
  form.addEventListener("change", (ev) => { if (ev.target.tagName === "SELECT") form.requestSubmit(); });
  const count = el("span", { class: "count", id: "count" });
  const newer = el("button", { type: "button", id: "newer", disabled: true }, "← Newer");
  const older = el("button", { type: "button", id: "older", disabled: true }, "Older →");
  const list = el("div", { id: "jobs", class: "jobs" });
  root.append(form, list, el("div", { class: "pager" }, newer, count, older));

  newer.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); load(); } });
  older.addEventListener("click", () => { if (older.dataset.cursor) { cursors.push(older.dataset.cursor); load(); } });

  function query() {
    const q = { status: filters.status, task: filters.task, queue: filters.queue, limit, cursor: cursors.at(-1) };
    if (SINCE_SECONDS[filters.since]) {
      q.created_after = new Date(Date.now() - SINCE_SECONDS[filters.since] * 1000).toISOString();
    }
    return q;
  }

  function build(id) {
    const node = el("div", { class: "job", dataset: { jobId: id, frames: "0" } });
    const entry = { job: null, el: node, unwatch: null, frames: 0 };
    rows.set(id, entry);
    return entry;
  }

  function cancelButton(job) {
    if (TERMINAL.has(job.status) || job.cancel_requested) return null;
    return el("button", { type: "button", class: "small danger", dataset: { action: "cancel" }, onclick: async (ev) => {
      ev.preventDefault();
      try {
        const done = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
        update(job.id, { ...rows.get(job.id).job, ...(done || {}), cancel_requested: true });
      } catch (err) { ctx.setState(`Cancel failed: ${err.message}`, "error"); }
    } }, "Cancel");
  }

  function render(entry) {
    const job = entry.job;
    const percent = percentOf(job);
    const p = phase(job);
    const node = entry.el;
    Object.assign(node.dataset, { status: job.status, phase: p, percent: String(Math.round(percent)),
      seq: String(job.seq ?? 0), frames: String(entry.frames) });
    const progress = job.progress || {};
    const detail = [progress.stage, progress.message].filter(Boolean).join(" · ");
    const reason = queuedReason(job);
    node.dataset.queuedReason = reason ? job.queued_reason : "";
    const attempt = job.max_attempts ? `attempt ${job.attempt}/${job.max_attempts}` : `attempt ${job.attempt}`;
    node.replaceChildren(
      el("a", { class: "name", href: `#/jobs/${job.id}` }, el("span", { class: "task" }, job.task),
        el("small", { class: "id" }, job.id)),
      el("div", { class: "progress" }, bar(job),
        el("div", { class: "line" },
          p === "failed" || (p === "retrying" && job.error)
            ? el("span", { class: "error-text" }, errorText(job.error) || "failed")
            : reason && !detail ? el("span", { class: "reason" }, reason) : el("span", { class: "message" }, detail),
          metaChips(progress.meta))),
      el("div", { class: "pct" }, NOT_STARTED.has(p) ? "—" : `${Math.round(percent)}%`),
      el("div", { class: "state-col" }, badge(job), el("small", { class: "attempts" }, attempt)),
      el("div", { class: "times" }, el("span", { class: "timing" }, timing(job)),
        el("small", { title: job.created_at }, `${job.queue} · created ${ago(job.created_at)}`)),
      actionsOf(entry));
  }

  // The actions cell is kept across redraws (a frame must not swap the button under the pointer).
  function actionsOf(entry) {
    const key = `${entry.job.status}|${entry.job.cancel_requested}`;
    if (!entry.actions || entry.actionsKey !== key) {
      entry.actions = el("div", { class: "actions" }, cancelButton(entry.job));
      entry.actionsKey = key;
    }
    return entry.actions;
  }

  function flush() {
    frameRequested = false;
    for (const id of dirty) { const entry = rows.get(id); if (entry && entry.job) render(entry); }
    dirty.clear();
  }

  function update(id, job) {
    const entry = rows.get(id);
    if (!entry) return;
    entry.job = job;
    dirty.add(id);
    if (!frameRequested) { frameRequested = true; requestAnimationFrame(flush); }
  }

  function onFrame(id) {
    return (frame) => {
      const entry = rows.get(id);
      if (!entry || !entry.job || frame.seq < (entry.job.seq ?? 0)) return;
      entry.frames += 1;
      update(id, applyFrame(entry.job, frame));
      if (TERMINAL.has(frame.status) && entry.unwatch) { entry.unwatch(); entry.unwatch = null; } // hub is done
    };
  }

  async function load() {
    clearTimeout(timer);
    try {
      const page = await api("/v1/jobs", { query: query() });
      if (stopped) return;
      const ids = new Set(page.items.map((j) => j.id));
      for (const [id, entry] of rows) {
        if (!ids.has(id)) { if (entry.unwatch) entry.unwatch(); entry.el.remove(); rows.delete(id); }
      }
      const ordered = [];
      for (const job of page.items) {
        const entry = rows.get(job.id) || build(job.id);
        // A list answer older than what the hub already pushed must not move the bar back.
        if (!entry.job || (job.seq ?? 0) >= (entry.job.seq ?? 0)) update(job.id, { ...entry.job, ...job });
        if (!TERMINAL.has(job.status) && !entry.unwatch) entry.unwatch = ctx.live.watch(job.id, onFrame(job.id));
        ordered.push(entry.el);
      }
      list.replaceChildren(...ordered);
      if (!page.items.length) list.append(el("div", { class: "empty" }, "No jobs match these filters."));
      const pageNo = cursors.length;
      count.textContent = `page ${pageNo} · ${page.items.length} job(s)`;
      newer.disabled = cursors.length <= 1;
      older.disabled = !page.next_cursor;
      older.dataset.cursor = page.next_cursor || "";
      ctx.setState("");
    } catch (err) {
      if (!stopped) ctx.setState(`Cannot list jobs: ${err.message}`, "error");
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS); // new jobs appear; ended ones settle from SQL
  }

  load();
  return {
    unmount() {
      stopped = true;
      clearTimeout(timer);
      for (const entry of rows.values()) if (entry.unwatch) entry.unwatch();
      rows.clear();
    },
  };
}
