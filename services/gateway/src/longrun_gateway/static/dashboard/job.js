// One job: live progress, facts, error with traceback, result, the event timeline replayed from its stream
// (since=0 over the hub), and — for a workflow — its tree of children with live bars.
import { api } from "./api.js";
import { TERMINAL, applyFrame, badge, bar, clock, duration, el, epoch, errorText, jsonBlock, metaChips, notice, put,
  percentOf, phase, queuedReason, timing } from "./ui.js";

const MAX_TIMELINE = 1000; // rows kept on the page; older ones are counted, not drawn

function facts(job) {
  const started = epoch(job.started_at);
  const finished = epoch(job.finished_at);
  const rows = [
    ["queue", job.queue], ["priority", job.priority], ["attempt", `${job.attempt} of ${job.max_attempts ?? "?"}`],
    ["starts at", job.run_at && job.status === "queued" ? clock(job.run_at) : null],
    ["created", clock(job.created_at)], ["started", clock(job.started_at)], ["finished", clock(job.finished_at)],
    ["run time", started ? duration((finished ?? Date.now() / 1000) - started) : "—"],
    ["next retry", job.next_retry_at && !TERMINAL.has(job.status) ? clock(job.next_retry_at) : null],
    ["parent", job.parent_id ? el("a", { href: `#/jobs/${job.parent_id}` }, job.parent_id) : null],
    ["workflow", job.root_id && job.root_id !== job.id ? el("a", { href: `#/jobs/${job.root_id}` }, job.root_id) : null],
    ["seq", job.seq],
  ];
  return el("dl", { class: "facts" }, rows.filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function timelineRow(frame) {
  const progress = frame.progress || {};
  const percent = typeof progress.percent === "number" ? `${progress.percent.toFixed(1)}%` : "";
  const what = frame.type === "snapshot" ? "snapshot (older events trimmed)" : frame.status;
  const text = frame.error ? errorText(frame.error) : [progress.stage, progress.message].filter(Boolean).join(" · ");
  return el("tr", { class: `ev ${frame.type} ${frame.status || ""}`, dataset: { seq: frame.seq } },
    el("td", { class: "num" }, frame.seq), el("td", {}, clock(frame.ts)), el("td", {}, frame.type),
    el("td", {}, what), el("td", { class: "num" }, percent), el("td", { class: "num" }, frame.attempt ?? ""),
    el("td", { class: "text" }, text, frame.child ? ` (child ${frame.child.id.slice(0, 8)} ${frame.child.status})` : ""));
}

export function jobView(root, ctx, jobId) {
  let job = null;
  let stopped = false;
  let watcher = null;
  let letter = null; // the dead letter of a failed job: traceback, attempt history, requeue
  const childWatches = [];
  const head = el("div", { class: "job-head" });
  const progressBox = el("section", { class: "card", id: "progress" });
  const errorBox = el("section", { class: "card error-card", id: "error", hidden: true });
  const treeBox = el("section", { class: "card", id: "tree", hidden: true });
  const factsBox = el("section", { class: "card", id: "facts" });
  const resultBox = el("section", { class: "card", id: "result", hidden: true });
  const tbody = el("tbody");
  const trimmed = el("div", { class: "muted" });
  const timeline = el("section", { class: "card", id: "timeline" }, el("h2", {}, "Timeline"), trimmed,
    el("table", { class: "timeline" }, el("thead", {}, el("tr", {}, ["seq", "time", "type", "status", "%",
      "attempt", "stage · message"].map((h) => el("th", {}, h)))), tbody));
  root.append(el("div", { class: "crumbs" }, el("a", { href: "#/jobs" }, "← jobs")), head,
    el("div", { class: "detail" }, el("div", { class: "main-col" }, progressBox, errorBox, treeBox, resultBox, timeline),
      el("div", { class: "side-col" }, factsBox)));

  async function act(label, fn) {
    try {
      await fn();
      ctx.setState(`${label}: done`);
      if (await reload() && watcher && watcher.done && !TERMINAL.has(job.status)) follow(); // requeued: watch again
    } catch (err) {
      ctx.setState(`${label} failed: ${err.message}`, "error");
    }
  }

  function actions() {
    const buttons = [];
    if (!TERMINAL.has(job.status) && !job.cancel_requested) {
      buttons.push(el("button", { type: "button", class: "danger", id: "cancel", onclick: () =>
        act("Cancel", () => api(`/v1/jobs/${job.id}/cancel`, { method: "POST" })) }, "Cancel job"));
    }
    if (letter && job.status === "failed") {
      buttons.push(el("button", { type: "button", id: "requeue", onclick: () =>
        act("Requeue", () => api(`/v1/dead-letters/${letter.id}/requeue`, { method: "POST" })) }, "Requeue"));
      buttons.push(el("button", { type: "button", class: "danger", id: "delete-letter", onclick: () => {
        if (confirm("Delete this dead letter? The job stays failed.")) {
          act("Delete dead letter", () => api(`/v1/dead-letters/${letter.id}`, { method: "DELETE" }));
        }
      } }, "Delete dead letter"));
    }
    return el("div", { class: "actions" }, buttons);
  }

  function render() {
    const p = phase(job);
    document.title = `${job.task} ${job.id.slice(0, 8)} — Longrun`;
    const key = `${p}|${job.cancel_requested}|${letter ? letter.id : ""}`;
    if (head.dataset.key !== key) { // redrawn only when it changes: a button must not move under the pointer
      head.dataset.key = key;
      put(head, el("h1", {}, job.task, " ", badge(job)), el("code", { class: "id" }, job.id), actions());
    }
    head.dataset.status = job.status;
    head.dataset.phase = p;
    const progress = job.progress || {};
    const reason = queuedReason(job);
    const counts = progress.total ? `${progress.current ?? 0} / ${progress.total}` : "";
    put(progressBox, el("h2", {}, "Progress"), bar(job, true),
      el("div", { class: "big-line" }, el("strong", { id: "percent" }, p === "cancelled-queued" ? "never started"
        : `${percentOf(job).toFixed(1)}%`), el("span", {}, counts), el("span", { class: "timing" }, timing(job))),
      el("div", { class: "stage" }, progress.stage ? el("span", { class: "chip" }, progress.stage) : null,
        el("span", { id: "message" }, progress.message || "")),
      reason ? el("p", { class: "reason", id: "queued-reason", dataset: { reason: job.queued_reason } }, reason) : null,
      metaChips(progress.meta));
    put(factsBox, el("h2", {}, "Job"), facts(job), el("h3", {}, "Arguments"), jsonBlock(job.args ?? {}));
    errorBox.hidden = !job.error;
    if (job.error) {
      const trace = letter && letter.traceback;
      put(errorBox, el("h2", {}, job.status === "failed" ? "Failed" : "Last error"),
        el("p", { class: "error-text", id: "error-message" }, errorText(job.error)),
        job.error.retryable === false ? el("p", { class: "muted" }, "not retryable") : null,
        trace ? el("details", { open: true }, el("summary", {}, "Traceback"), el("pre", { class: "trace" }, trace)) : null,
        letter && letter.history ? historyTable(letter.history) : null);
    }
    resultBox.hidden = job.result === null || job.result === undefined;
    if (!resultBox.hidden) put(resultBox, el("h2", {}, "Result"), jsonBlock(job.result));
  }

  function historyTable(history) {
    return el("table", { class: "history" }, el("thead", {}, el("tr", {}, ["attempt", "status", "worker", "started",
      "finished", "error"].map((h) => el("th", {}, h)))), el("tbody", {}, history.map((a) => el("tr", {},
      el("td", {}, a.attempt), el("td", {}, a.status ?? ""), el("td", {}, a.worker ?? ""), el("td", {}, clock(a.started_at)),
      el("td", {}, clock(a.finished_at)), el("td", {}, errorText(a.error))))));
  }

  let shown = 0;
  function addEvent(frame) {
    shown += 1;
    tbody.prepend(timelineRow(frame)); // newest on top
    if (tbody.children.length > MAX_TIMELINE) tbody.lastElementChild.remove();
    trimmed.textContent = shown > MAX_TIMELINE ? `${shown - MAX_TIMELINE} older event(s) not drawn` : "";
    timeline.dataset.events = String(shown);
  }

  async function loadLetter() {
    letter = null;
    if (job.status !== "failed") return;
    const page = await api("/v1/dead-letters", { query: { job_id: job.id, limit: 1 } });
    if (page.items.length) letter = await api(`/v1/dead-letters/${page.items[0].id}`);
  }

  function follow() {
    if (watcher) watcher.close();
    tbody.replaceChildren();
    shown = 0;
    // Replayed from seq 1 (since=0), then live; the hub closes after the terminal event.
    watcher = ctx.hubModule.watchJob(ctx.hub, job.id, {
      since: 0,
      token: async () => (await api(`/v1/jobs/${job.id}/stream-token`, { method: "POST" })).token,
      onSnapshot: (snap, frame) => { addEvent({ ...frame, ts: epoch(snap.updated_at), status: snap.status }); apply(frame); },
      onEvent: (frame) => { addEvent(frame); apply(frame); },
      onEnd: () => { timeline.dataset.ended = "1"; if (!stopped) reload(); },
      onError: (err) => ctx.setState(`Timeline: ${err.message}`, "error"),
    });
  }

  function apply(frame) {
    if (stopped || !job || frame.seq < (job.seq ?? 0)) return;
    job = applyFrame(job, frame);
    render();
  }

  async function loadTree() {
    for (const off of childWatches.splice(0)) off();
    const rootId = job.root_id || (job.kind === "workflow" ? job.id : null);
    if (!rootId) { treeBox.hidden = true; return; }
    const rootJob = rootId === job.id ? job : await api(`/v1/jobs/${rootId}`);
    const list = el("ul", { class: "tree" });
    put(treeBox, el("h2", {}, "Workflow"), list);
    treeBox.hidden = false;
    await addNode(list, rootJob, 0);
  }

  async function addNode(list, node, depth) {
    let current = node;
    const row = el("div", { class: "node", dataset: { jobId: node.id } });
    const item = el("li", {}, row);
    list.append(item);
    const draw = () => {
      row.dataset.status = current.status;
      row.dataset.percent = String(Math.round(percentOf(current)));
      put(row, el("a", { href: `#/jobs/${current.id}`, class: current.id === job.id ? "self" : "" },
        current.kind === "workflow" ? "workflow" : current.task), bar(current), el("span", { class: "pct" },
        `${Math.round(percentOf(current))}%`), badge(current));
    };
    draw();
    if (!TERMINAL.has(current.status)) {
      childWatches.push(ctx.live.watch(current.id, (frame) => {
        if (frame.seq >= (current.seq ?? 0)) { current = applyFrame(current, frame); draw(); }
      }));
    }
    if (depth > 6) return;
    let cursor = null;
    const children = [];
    do {
      const page = await api(`/v1/jobs/${node.id}/children`, { query: { limit: 200, cursor } });
      children.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && children.length < 1000);
    if (!children.length || stopped) return;
    const sub = el("ul", {});
    item.append(sub);
    for (const child of children) await addNode(sub, child, depth + 1);
  }

  async function reload() {
    try {
      job = await api(`/v1/jobs/${encodeURIComponent(jobId)}`);
      if (stopped) return;
      await loadLetter();
      if (stopped) return;
      ctx.setState("");
      render();
      return job;
    } catch (err) {
      if (stopped) return null;
      root.replaceChildren(el("div", { class: "crumbs" }, el("a", { href: "#/jobs" }, "← jobs")),
        notice(err.status === 404 ? `No job ${jobId} (or not one of yours).` : `Cannot load job: ${err.message}`,
          "error"));
      return null;
    }
  }

  reload().then((found) => {
    if (!found || stopped) return;
    follow();
    loadTree().catch((err) => { treeBox.hidden = false; put(treeBox, notice(`Workflow: ${err.message}`, "error")); });
  });
  return {
    unmount() {
      stopped = true;
      if (watcher) watcher.close();
      for (const off of childWatches.splice(0)) off();
      document.title = "Longrun — operations";
    },
  };
}
