// The dashboard shell: the API key, one multiplexed hub socket shared by the views, hash routing, the summary.
import { api, apiKey, forgetKey, remembered, saveKey } from "./api.js";
import { jobsView } from "./jobs.js";
import { jobView } from "./job.js";
import { deadLettersView, queuesView, summary } from "./ops.js";

const HUB = document.querySelector('meta[name="longrun-hub"]').content.replace(/\/+$/, "");
const SUMMARY_MS = 5000;
const stateEl = document.getElementById("state");
const viewEl = document.getElementById("view");
const liveEl = document.getElementById("live");
let hubModule = null;
let generation = 0; // bumped on every (re)connect: work begun with another key is dropped

/** Live job frames over one socket: views watch(jobId, fn) and get every frame for that job. */
class Live {
  constructor() { this.hub = null; this.handlers = new Map(); }

  connect(client) { this.hub = client; for (const id of this.handlers.keys()) client.subscribe(id); }

  watch(jobId, fn, since) {
    let set = this.handlers.get(jobId);
    if (!set) this.handlers.set(jobId, (set = new Set()));
    set.add(fn);
    if (this.hub) this.hub.subscribe(jobId, since);
    return () => this.unwatch(jobId, fn);
  }

  unwatch(jobId, fn) {
    const set = this.handlers.get(jobId);
    if (!set) return;
    set.delete(fn);
    if (!set.size) {
      this.handlers.delete(jobId);
      if (this.hub) this.hub.unsubscribe(jobId);
    }
  }

  deliver(jobId, frame) {
    for (const fn of this.handlers.get(jobId) || []) fn(frame);
  }

  close() { if (this.hub) this.hub.close(); this.hub = null; this.handlers.clear(); }
}

let live = new Live();
let current = null; // the mounted view
let summaryTimer = null;

function setState(text, kind = "") {
  stateEl.textContent = text;
  stateEl.className = `state ${kind}`;
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "jobs";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === parts[0]);
  }
  if (current) current.unmount();
  current = null;
  viewEl.replaceChildren();
  if (!apiKey()) { setState("Enter an API key to see your jobs."); return; }
  const ctx = { live, params, hub: HUB, hubModule, setState, generation };
  if (parts[0] === "jobs" && parts[1]) current = jobView(viewEl, ctx, parts[1]);
  else if (parts[0] === "dead-letters") current = deadLettersView(viewEl, ctx);
  else if (parts[0] === "queues") current = queuesView(viewEl, ctx);
  else current = jobsView(viewEl, ctx);
}

async function refreshSummary(gen) {
  if (gen !== generation) return;
  try {
    const [queues, workers] = await Promise.all([api("/v1/queues"), api("/v1/workers")]);
    if (gen === generation) document.getElementById("summary").replaceChildren(summary(queues.items, workers.items));
  } catch {
    if (gen === generation) document.getElementById("summary").replaceChildren();
  }
}

async function start() {
  const gen = ++generation;
  live.close();
  live = new Live();
  clearInterval(summaryTimer);
  document.body.dataset.live = "0";
  liveEl.textContent = "offline";
  document.getElementById("summary").replaceChildren();
  if (!apiKey()) { route(); return; }
  setState("Connecting…");
  try {
    await api("/v1/stream-token", { method: "POST" }); // checks the key before anything else is shown
    hubModule = hubModule || await import(`${HUB}/v1/client.js`);
  } catch (err) {
    if (gen === generation) setState(`Cannot connect: ${err.message}`, "error");
    return;
  }
  if (gen !== generation) return;
  const mine = live;
  const client = hubModule.connectHub(HUB, {
    // Asked again on every reconnect, so an expired token is never reused.
    token: async () => (await api("/v1/stream-token", { method: "POST" })).token,
    onSnapshot(job, frame) { if (live === mine) mine.deliver(frame.job_id || job.id, frame); },
    onEvent(frame) { if (live === mine) mine.deliver(frame.job_id, frame); },
    onError(err) { if (live === mine && err.jobId === undefined) setState(`Live updates: ${err.message}`, "error"); },
    onOpen() { if (live === mine) { document.body.dataset.live = "1"; liveEl.textContent = "live"; } },
    onClose() { if (live === mine) { document.body.dataset.live = "0"; liveEl.textContent = "reconnecting…"; } },
  });
  mine.connect(client);
  setState("");
  route();
  refreshSummary(gen);
  summaryTimer = setInterval(() => refreshSummary(gen), SUMMARY_MS);
}

const keyInput = document.getElementById("api-key");
const rememberBox = document.getElementById("remember");
keyInput.value = apiKey();
rememberBox.checked = remembered();
document.getElementById("key-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  saveKey(keyInput.value.trim(), rememberBox.checked);
  start();
});
document.getElementById("forget-key").addEventListener("click", () => {
  forgetKey();
  keyInput.value = "";
  rememberBox.checked = false;
  start();
});
document.getElementById("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const id = document.getElementById("search").value.trim();
  if (id) location.hash = `#/jobs/${encodeURIComponent(id)}`;
});
window.addEventListener("hashchange", () => { if (generation) route(); });
start();
