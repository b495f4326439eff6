// Dead letters (single and bulk actions by filter), queues and workers, and the summary strip.
import { api } from "./api.js";
import { ago, badge, clock, duration, el, errorText, notice, put } from "./ui.js";

const REFRESH_MS = 5000;

/** One line under the header: per queue waiting/running and oldest wait; how many workers are up. */
export function summary(queues, workers) {
  return el("div", { class: "summary-line" },
    queues.map((q) => el("a", { class: `q${q.oldest_wait_seconds > 60 ? " slow" : ""}`, href: `#/jobs?queue=${encodeURIComponent(q.name)}` },
      el("strong", {}, q.name), ` ${q.queued + q.retrying} waiting · ${q.running} running`,
      q.oldest_wait_seconds !== null ? ` · oldest ${duration(q.oldest_wait_seconds)}` : "")),
    el("a", { class: `q${workers.length ? "" : " slow"}`, href: "#/queues", id: "worker-count" },
      el("strong", {}, String(workers.length)), workers.length === 1 ? " worker" : " workers"));
}

function table(headers, rows) {
  return el("table", { class: "grid" }, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

export function queuesView(root, ctx) {
  let timer = null;
  let stopped = false;
  const queuesBox = el("section", { class: "card", id: "queues" });
  const workersBox = el("section", { class: "card", id: "workers" });
  root.append(el("div", { class: "two" }, queuesBox, workersBox));

  async function load() {
    try {
      const [queues, workers] = await Promise.all([api("/v1/queues"), api("/v1/workers")]);
      if (stopped) return;
      put(queuesBox, el("h2", {}, "Queues"), el("p", { class: "muted" }, "your jobs in each queue"),
        table(["queue", "waiting", "retrying", "running", "oldest wait"], queues.items.map((q) =>
          el("tr", { dataset: { queue: q.name } }, el("td", {}, el("a", { href: `#/jobs?queue=${encodeURIComponent(q.name)}` }, q.name)),
            el("td", { class: "num" }, q.queued), el("td", { class: "num" }, q.retrying),
            el("td", { class: "num" }, q.running), el("td", { class: "num" }, q.oldest_wait_seconds === null ? "—"
              : duration(q.oldest_wait_seconds))))));
      put(workersBox, el("h2", {}, "Workers"),
        workers.items.length ? table(["worker", "your jobs running"], workers.items.map((w) =>
          el("tr", { dataset: { worker: w.hostname } }, el("td", {}, w.hostname), el("td", { class: "num" }, w.running))))
          : notice("No worker is alive: queued jobs wait until one starts.", "error"));
      ctx.setState("");
    } catch (err) {
      if (!stopped) ctx.setState(`Cannot load queues: ${err.message}`, "error");
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }
  load();
  return { unmount() { stopped = true; clearTimeout(timer); } };
}

export function deadLettersView(root, ctx) {
  const filters = { task: ctx.params.get("task") || "", error_type: ctx.params.get("error_type") || "" };
  const cursors = [null];
  let stopped = false;
  const form = el("form", { class: "filters", id: "dlq-filters" },
    el("input", { name: "task", placeholder: "task (exact)", value: filters.task, "aria-label": "task" }),
    el("input", { name: "error_type", placeholder: "error type", value: filters.error_type, "aria-label": "error type" }),
    el("button", { type: "submit" }, "Apply"), el("a", { href: "#/dead-letters", class: "quiet" }, "clear"),
    el("span", { class: "spacer" }),
    el("button", { type: "button", id: "requeue-all", onclick: () => bulk("requeue") }, "Requeue all matching"),
    el("button", { type: "button", id: "delete-all", class: "danger", onclick: () => bulk("delete") }, "Delete all matching"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const query = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (String(v).trim()) query.set(k, String(v).trim());
    location.hash = `#/dead-letters${query.size ? `?${query}` : ""}`;
  });
  const list = el("div", { id: "letters", class: "card" });
  const older = el("button", { type: "button", id: "older", disabled: true }, "Older →");
  const newer = el("button", { type: "button", id: "newer", disabled: true }, "← Newer");
  root.append(form, list, el("div", { class: "pager" }, newer, older));
  newer.addEventListener("click", () => { if (cursors.length > 1) { cursors.pop(); load(); } });
  older.addEventListener("click", () => { if (older.dataset.cursor) { cursors.push(older.dataset.cursor); load(); } });

  const described = () => [filters.task && `task ${filters.task}`, filters.error_type && `error ${filters.error_type}`]
    .filter(Boolean).join(", ") || "every dead letter";

  async function bulk(what) {
    if (!confirm(`${what === "requeue" ? "Requeue" : "Delete"} ${described()}?`)) return;
    try {
      if (what === "requeue") {
        const done = await api("/v1/dead-letters/requeue", { method: "POST",
          body: { ...(filters.task && { task: filters.task }), ...(filters.error_type && { error_type: filters.error_type }), limit: 500 } });
        ctx.setState(`Requeued ${done.requeued.length} job(s).`);
      } else {
        const done = await api("/v1/dead-letters", { method: "DELETE", query: { ...filters } });
        ctx.setState(`Deleted ${done && typeof done.deleted === "number" ? done.deleted : done && done.deleted ? done.deleted.length : "the matching"} dead letter(s).`);
      }
    } catch (err) {
      ctx.setState(`${what === "requeue" ? "Requeue" : "Delete"} failed: ${err.message}`, "error");
    }
    cursors.splice(1);
    load();
  }

  async function one(letter, what) {
    try {
      if (what === "requeue") await api(`/v1/dead-letters/${letter.id}/requeue`, { method: "POST" });
      else await api(`/v1/dead-letters/${letter.id}`, { method: "DELETE" });
      ctx.setState(`${what === "requeue" ? "Requeued" : "Deleted"} ${letter.job_id}.`);
    } catch (err) {
      ctx.setState(`${what} failed: ${err.message}`, "error");
    }
    load();
  }

  async function load() {
    try {
      const page = await api("/v1/dead-letters", { query: { ...filters, limit: 50, cursor: cursors.at(-1) } });
      if (stopped) return;
      list.replaceChildren(page.items.length ? table(["job", "error", "attempts", "failed", "status now", ""],
        page.items.map((d) => el("tr", { class: "letter", dataset: { letterId: d.id, jobId: d.job_id } },
          el("td", {}, el("a", { href: `#/jobs/${d.job_id}` }, d.task), el("br"), el("small", { class: "id" }, d.job_id)),
          el("td", { class: "error-text" }, errorText(d.error)),
          el("td", { class: "num" }, d.attempts),
          el("td", { title: clock(d.failed_at) }, ago(d.failed_at)),
          el("td", {}, d.job ? badge(d.job) : ""),
          el("td", {}, el("div", { class: "actions" },
            el("button", { type: "button", class: "small", onclick: () => one(d, "requeue") }, "Requeue"),
            el("button", { type: "button", class: "small danger", onclick: () => one(d, "delete") }, "Delete"))))))
        : el("div", { class: "empty" }, "No dead letters match."));
      newer.disabled = cursors.length <= 1;
      older.disabled = !page.next_cursor;
      older.dataset.cursor = page.next_cursor || "";
    } catch (err) {
      if (!stopped) ctx.setState(`Cannot list dead letters: ${err.message}`, "error");
    }
  }
  load();
  return { unmount() { stopped = true; } };
}
