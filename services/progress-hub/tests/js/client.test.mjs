// client.js under node with a fake WebSocket: run by test_hub_client_js.py (`node client.test.mjs <client.js>`).
// Prints one line per passing check; any failure exits non-zero with the reason.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";

const source = await readFile(process.argv[2], "utf8");
const { watchJob, connectHub } = await import("data:text/javascript;base64," + Buffer.from(source).toString("base64"));

const sockets = [];
class FakeWebSocket {
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closedWith = null;
    sockets.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close(code) { this.closedWith = code; }
}
globalThis.WebSocket = FakeWebSocket;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const slowToken = () => sleep(30).then(() => "tok");
const checks = {
  async "watchJob: close() while the token is fetched opens no socket"() {
    const before = sockets.length;
    const errors = [];
    const sub = watchJob("http://hub", "job-1", { token: slowToken, onError: (e) => errors.push(e) });
    sub.close();
    await sleep(80);
    assert.equal(sockets.length, before, "a socket was opened after close()");
    assert.deepEqual(errors, []);
  },
  async "connectHub: close() while the token is fetched opens no socket"() {
    const before = sockets.length;
    const hub = connectHub("ws://hub/v1/ws", { token: slowToken });
    hub.subscribe("job-1");
    hub.close();
    await sleep(80);
    assert.equal(sockets.length, before, "a socket was opened after close()");
  },
  async "connectHub: an end frame finishes the job"() {
    const ended = [];
    const events = [];
    const hub = connectHub("ws://hub/v1/ws", {
      token: "tok", onEnd: (frame) => ended.push(frame), onEvent: (frame) => events.push(frame),
    });
    hub.subscribe("job-2", 7);
    await sleep(0);
    const ws = sockets.at(-1);
    assert.equal(ws.url, "ws://hub/v1/ws?token=tok");
    ws.onopen();
    assert.deepEqual(ws.sent, [{ op: "subscribe", job_id: "job-2", since: 7 }]);
    const end = { type: "end", job_id: "job-2", seq: 7 };
    ws.onmessage({ data: JSON.stringify(end) });
    assert.deepEqual(ended, [end]);
    assert.deepEqual(events, []);
    assert.equal(hub.jobs.has("job-2"), false, "an ended job is still subscribed");
    ws.onmessage({ data: JSON.stringify(end) }); // a repeat is ignored: onEnd once
    assert.equal(ended.length, 1);
    hub.close();
  },
};

for (const [name, check] of Object.entries(checks)) {
  await check();
  console.log("ok", name);
}
