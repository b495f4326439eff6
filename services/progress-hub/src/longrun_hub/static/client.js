// Longrun progress hub client: a dependency-free ES module. It renders nothing; it delivers frames.
//
//   import { watchJob, connectHub } from "https://hub.example/v1/client.js";
//
//   // One job: snapshot, then every event in seq order; stops after the terminal event.
//   const sub = watchJob("https://hub.example", jobId, {
//     token: () => fetchStreamToken(jobId),          // a string, or a function (sync or async) for fresh tokens
//     onSnapshot(job, frame) {}, onEvent(frame) {}, onEnd(lastFrame) {}, onError(err) {},
//   });
//   sub.close();
//
//   // Many jobs over one socket (a tenant-scoped token):
//   const hub = connectHub("wss://hub.example/v1/ws", { token, onSnapshot, onEvent, onEnd, onError });
//   hub.subscribe(jobId);  hub.unsubscribe(jobId);  hub.close();
//
// The client remembers the last seq per job. After any disconnect it reconnects with capped, jittered
// exponential backoff and resumes with `since`, so nothing is missed and nothing repeats; a `reconnect`
// frame (close 1012: hub restarting or connection lifetime reached) resumes at once. 4401 asks `token` again
// when it is a function; 4403 / 4404 / 1008 stop with onError. Close 1000 after the terminal event ends it;
// on the multiplexed socket an `end` frame (the job had already ended at `since`) ends that job.

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const FATAL = new Map([
  [1008, "rejected frame"],
  [4403, "stream token not valid for this job"],
  [4404, "unknown job"],
]);

function wsBase(url) {
  const u = String(url).replace(/\/+$/, "");
  if (u.startsWith("https://")) return "wss://" + u.slice(8);
  if (u.startsWith("http://")) return "ws://" + u.slice(7);
  return u;
}

async function resolveToken(token) {
  return typeof token === "function" ? await token() : token;
}

function backoff(options) {
  const min = options.minDelay ?? 250;
  const max = options.maxDelay ?? 10000;
  let attempt = 0;
  return {
    next() {
      const base = Math.min(max, min * 2 ** attempt++);
      return base / 2 + Math.random() * (base / 2);
    },
    reset() { attempt = 0; },
  };
}

function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try { fn(...args); } catch (err) { console.error("longrun client callback failed", err); }
}

// Per-job bookkeeping shared by both socket kinds: drop repeats, remember the last seq, notice the end.
class JobState {
  constructor(jobId, since) {
    this.jobId = jobId;
    this.last = Number.isInteger(since) ? since : null;
    this.done = false;
  }

  accept(frame, handlers) {
    if (frame.type === "end") { // nothing more will come: the job had ended at the seq we resumed from
      this.finish(frame, handlers);
      return;
    }
    if (frame.type === "snapshot") {
      this.last = frame.seq;
      call(handlers.onSnapshot, frame.job, frame);
      if (TERMINAL.has(frame.job && frame.job.status)) this.finish(frame, handlers);
      return;
    }
    if (frame.type !== "progress" && frame.type !== "status") return;
    if (this.last !== null && frame.seq <= this.last) return; // already seen (never expected; cheap to guard)
    this.last = frame.seq;
    call(handlers.onEvent, frame);
    if (TERMINAL.has(frame.status)) this.finish(frame, handlers);
  }

  finish(frame, handlers) {
    if (this.done) return;
    this.done = true;
    call(handlers.onEnd, frame);
  }
}

/** Watch one job over `WS /v1/ws/jobs/{id}`. Returns {close(), get last(), get done()}. */
export function watchJob(hubUrl, jobId, options = {}) {
  const state = new JobState(jobId, options.since);
  const delays = backoff(options);
  let socket = null;
  let stopped = false;
  let timer = null;

  const schedule = (delay) => {
    if (stopped || state.done) return;
    clearTimeout(timer);
    timer = setTimeout(open, delay);
  };

  async function open() {
    if (stopped || state.done) return;
    let token;
    try {
      token = await resolveToken(options.token);
    } catch (err) {
      if (stopped || state.done) return;
      call(options.onError, err);
      schedule(delays.next());
      return;
    }
    if (stopped || state.done) return; // closed while the token was being fetched
    const params = new URLSearchParams({ token });
    if (state.last !== null) params.set("since", String(state.last));
    const ws = new WebSocket(`${wsBase(hubUrl)}/v1/ws/jobs/${encodeURIComponent(jobId)}?${params}`);
    socket = ws;
    let hinted = false;
    ws.onopen = () => call(options.onOpen);
    ws.onmessage = (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      if (frame.type === "reconnect") { hinted = true; return; }
      if (frame.type === "snapshot" || frame.type === "progress" || frame.type === "status") delays.reset();
      state.accept(frame, options);
    };
    ws.onclose = (ev) => {
      if (socket === ws) socket = null;
      call(options.onClose, ev.code, ev.reason);
      if (stopped || state.done) return;
      if (ev.code === 1000) { state.finish(null, options); return; } // the hub says the job is over
      if (FATAL.has(ev.code)) {
        stopped = true;
        call(options.onError, Object.assign(new Error(ev.reason || FATAL.get(ev.code)), { code: ev.code }));
        return;
      }
      if (ev.code === 4401 && typeof options.token !== "function") {
        stopped = true;
        call(options.onError, Object.assign(new Error(ev.reason || "stream token rejected"), { code: 4401 }));
        return;
      }
      schedule(hinted || ev.code === 1012 ? Math.random() * 500 : delays.next());
    };
  }

  open();
  return {
    close() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000);
    },
    get last() { return state.last; },
    get done() { return state.done; },
  };
}

/** Many jobs over the multiplexed `WS /v1/ws`. Returns {subscribe, unsubscribe, close, jobs}. */
export function connectHub(wsUrl, options = {}) {
  const url = wsBase(wsUrl).replace(/\/v1\/ws\/?$/, "") + "/v1/ws";
  const jobs = new Map(); // job id -> JobState (only jobs still wanted)
  const delays = backoff(options);
  let socket = null;
  let ready = false;
  let stopped = false;
  let timer = null;

  const send = (frame) => {
    if (socket && ready) socket.send(JSON.stringify(frame));
  };
  const subscribeFrame = (state) => {
    const frame = { op: "subscribe", job_id: state.jobId };
    if (state.last !== null) frame.since = state.last;
    return frame;
  };
  const schedule = (delay) => {
    if (stopped) return;
    clearTimeout(timer);
    timer = setTimeout(open, delay);
  };

  async function open() {
    if (stopped) return;
    let token;
    try {
      token = await resolveToken(options.token);
    } catch (err) {
      if (stopped) return;
      call(options.onError, err);
      schedule(delays.next());
      return;
    }
    if (stopped) return; // closed while the token was being fetched
    const ws = new WebSocket(`${url}?${new URLSearchParams({ token })}`);
    socket = ws;
    let hinted = false;
    ws.onopen = () => {
      ready = true;
      for (const state of jobs.values()) send(subscribeFrame(state));
      call(options.onOpen);
    };
    ws.onmessage = (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      if (frame.type === "reconnect") { hinted = true; return; }
      const state = jobs.get(frame.job_id);
      if (frame.type === "error") {
        if (!state) return;
        if (frame.code === 1013) { // Redis was unavailable for this job: ask again shortly
          setTimeout(() => jobs.get(state.jobId) === state && send(subscribeFrame(state)), delays.next());
          return;
        }
        jobs.delete(frame.job_id);
        call(options.onError, Object.assign(new Error(frame.message), { code: frame.code, jobId: frame.job_id }));
        return;
      }
      if (!state) return;
      delays.reset();
      state.accept(frame, options);
      if (state.done) jobs.delete(state.jobId);
    };
    ws.onclose = (ev) => {
      if (socket === ws) { socket = null; ready = false; }
      call(options.onClose, ev.code, ev.reason);
      if (stopped) return;
      if (ev.code === 4403 || ev.code === 1008 || (ev.code === 4401 && typeof options.token !== "function")) {
        stopped = true;
        call(options.onError, Object.assign(new Error(ev.reason || `closed ${ev.code}`), { code: ev.code }));
        return;
      }
      schedule(hinted || ev.code === 1012 ? Math.random() * 500 : delays.next());
    };
  }

  open();
  return {
    subscribe(jobId, since) {
      if (jobs.has(jobId)) return;
      const state = new JobState(jobId, since);
      jobs.set(jobId, state);
      send(subscribeFrame(state));
    },
    unsubscribe(jobId) {
      if (jobs.delete(jobId)) send({ op: "unsubscribe", job_id: jobId });
    },
    close() {
      stopped = true;
      clearTimeout(timer);
      if (socket) socket.close(1000);
    },
    get jobs() { return new Map([...jobs].map(([id, s]) => [id, s.last])); },
  };
}
