/// The watch page served at `/watch/{id}?token=...`, for a person: draws the session's frames on a canvas (H.264
/// with WebCodecs where the browser has it, else JPEG; `?codec=jpeg` asks for JPEG), says which, with the frame rate,
/// bitrate and capture-to-screen latency; with a control-permitted token, offers *Take control* (mouse, wheel,
/// keyboard, paste and a URL bar act on the browser); lists the session's runs and steps as they happen, the
/// current step over the picture and each finished run's replay. `window.viewportd` exposes its state to scripts
/// (`stats.decoderErrors` counts decoder errors).
public enum WatchPage {
    /// The page for one session. The token comes from the page's own URL, not from the server.
    public static func html(sessionID: String) -> String {
        template.replacingOccurrences(of: "{{SESSION_ID}}", with: escape(sessionID))
    }

    private static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    private static let template = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>viewportd · {{SESSION_ID}}</title>
<style>
  html, body { margin: 0; height: 100%; background: #111; color: #ddd; font: 13px system-ui, sans-serif; }
  body { display: flex; flex-direction: column; }
  header, nav { display: flex; gap: 1.2em; align-items: center; padding: 6px 12px; background: #1c1c1c; }
  nav { background: #181818; border-top: 1px solid #262626; }
  nav[hidden] { display: none; }
  header b { color: #fff; }
  #status.running { color: #6c6; } #status.reconnecting, #status.connecting { color: #db6; }
  #status.closed, #status.failed, #status.error { color: #e66; }
  #url { color: #999; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; flex: 1; text-align: right; }
  button { background: #333; color: #eee; border: 1px solid #555; border-radius: 3px; padding: 3px 10px; cursor: pointer; }
  button:disabled { opacity: .5; cursor: default; }
  button.primary { background: #2a5db0; border-color: #2a5db0; }
  #controller.you { color: #6c6; } #controller.viewer { color: #db6; }
  #navigate { display: flex; gap: 4px; flex: 1; }
  #address { flex: 1; background: #222; color: #eee; border: 1px solid #444; border-radius: 3px; padding: 3px 6px; }
  #body { flex: 1; display: flex; min-height: 0; }
  main { flex: 1; position: relative; display: flex; align-items: center; justify-content: center; min-width: 0; }
  canvas { max-width: 100%; max-height: 100%; background: #000; box-shadow: 0 0 12px #000; outline: none; }
  canvas.controlling { box-shadow: 0 0 0 2px #2a5db0; cursor: default; }
  #step { position: absolute; left: 50%; bottom: 14px; transform: translateX(-50%); max-width: 80%;
          padding: 5px 12px; border-radius: 4px; background: rgba(0, 0, 0, .75); color: #fff; pointer-events: none;
          overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
  aside { width: 280px; flex: none; overflow-y: auto; border-left: 1px solid #2a2a2a; padding: 0 10px; }
  aside h2 { font-size: 13px; color: #aaa; margin: 10px 0; }
  .run { margin-bottom: 12px; } .run header { padding: 0; background: none; gap: .6em; }
  .run .status.running { color: #6c6; } .run .status.failed, .run .status.terminated { color: #e66; }
  .run ol { margin: 4px 0; padding-left: 2.2em; color: #bbb; }
  .run a { color: #7ab; }
  #empty { color: #777; }
</style>
</head>
<body>
<header>
  <b>{{SESSION_ID}}</b>
  <span id="status" class="connecting">connecting</span>
  <span id="codec">–</span>
  <span><span id="fps">0</span> fps</span>
  <span id="bitrate">–</span>
  <span>latency <span id="latency">–</span> ms</span>
  <span id="size"></span>
  <span id="url"></span>
</header>
<nav id="controls" hidden>
  <button id="take" class="primary">Take control</button>
  <button id="release" hidden>Release</button>
  <span id="controller">the agent is in control</span>
  <form id="navigate"><input id="address" type="text" placeholder="https://…" disabled><button id="go" disabled>Go</button></form>
</nav>
<div id="body">
  <main><canvas id="screen" width="1280" height="720" tabindex="0"></canvas><div id="step" hidden></div></main>
  <aside><h2>Runs</h2><p id="empty">No run yet.</p><div id="runs"></div></aside>
</div>
<script>
"use strict";
const sessionId = decodeURIComponent(location.pathname.split("/").pop());
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const el = (id) => document.getElementById(id);
const canvas = el("screen");
const ctx = canvas.getContext("2d");
// What the page does, for people (the header) and scripts (tests read it).
const state = window.viewportd = {
  status: "connecting", codec: null, codecString: null, fallback: null,
  framesReceived: 0, framesDrawn: 0, lastSequence: 0, skipped: 0, fps: 0, bitrateKbps: 0,
  latencyMs: null, latencySamples: [], pageSamples: [], clockOffsetMs: 0, width: 0, height: 0, url: null, closeCode: null,
  controlPermitted: false, controller: "agent", inControl: false, runs: [], currentStep: null,
  stats: { decoderErrors: 0, framesDecoded: 0, framesWaitingForKey: 0, lastError: null },
};
const maxRuns = 20;
let ws = null, final = false, useH264 = false;
let drawnTimes = [], received = [];

function setStatus(status, reason) {
  state.status = status;
  el("status").textContent = reason ? status + ": " + reason : status;
  el("status").className = status;
}

function send(message) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

// A frame reached the screen: frame rate and capture-to-screen latency (the server's clock, from ping/pong).
function drew(capturedAtMs, width, height, arrivedAt) {
  const now = performance.now();
  state.framesDrawn++;
  state.latencyMs = Math.max(0, Date.now() + state.clockOffsetMs - capturedAtMs);
  // The last minute of latencies at 60 fps, for the live benchmark's percentiles.
  state.latencySamples.push(state.latencyMs);
  if (state.latencySamples.length > 3600) state.latencySamples.shift();
  // And the page's own share: from the message's arrival to the picture drawn (decode and draw).
  state.pageSamples.push(now - arrivedAt);
  if (state.pageSamples.length > 3600) state.pageSamples.shift();
  drawnTimes.push(now);
  if (state.width !== width || state.height !== height) {
    state.width = width; state.height = height;
    el("size").textContent = width + "×" + height;
  }
}

function fitCanvas(width, height) {
  if (width && height && (canvas.width !== width || canvas.height !== height)) {
    canvas.width = width; canvas.height = height;
  }
}

// JPEG: decode one frame at a time and keep only the newest waiting one, so a slow screen skips, never lags.
let decodingJPEG = false, pendingJPEG = null;
function drawJPEG(frame) {
  decodingJPEG = true;
  createImageBitmap(frame.blob).then((bitmap) => {
    fitCanvas(bitmap.width, bitmap.height);
    ctx.drawImage(bitmap, 0, 0);
    drew(frame.capturedAtMs, bitmap.width, bitmap.height, frame.arrivedAt);
    bitmap.close();
  }).catch(() => {}).finally(() => {
    decodingJPEG = false;
    if (pendingJPEG) { const next = pendingJPEG; pendingJPEG = null; drawJPEG(next); }
  });
}

// H.264 with WebCodecs: configured from hello or config, fed each access unit; a key frame starts the chain.
let decoder = null, needKey = true;
const arrivals = new Map();  // capture time (µs) of each picture given to the decoder → when it arrived
function configure(message) {
  if (!message.codec || !message.description) return;
  const description = Uint8Array.from(atob(message.description), (c) => c.charCodeAt(0));
  try {
    if (!decoder || decoder.state === "closed") decoder = new VideoDecoder({ output: decoded, error: decoderFailed });
    decoder.configure({ codec: message.codec, description, codedWidth: message.coded_width,
                        codedHeight: message.coded_height, optimizeForLatency: true });
    needKey = true;
    state.codec = "h264"; state.codecString = message.codec;
    fitCanvas(message.width, message.height);
  } catch (error) {
    decoderFailed(error);
  }
}

function decodeH264(view, buffer) {
  if (!decoder || decoder.state !== "configured") return;
  const key = (view.getUint8(24) & 1) === 1;
  if (needKey && !key) { state.stats.framesWaitingForKey++; return; }
  needKey = false;
  const timestamp = Number(view.getBigUint64(12));
  arrivals.set(timestamp, performance.now());
  if (arrivals.size > 120) arrivals.delete(arrivals.keys().next().value);  // pictures the decoder never gave back
  try {
    decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp, data: new Uint8Array(buffer, 28) }));
  } catch (error) {
    decoderFailed(error);
  }
}

function decoded(frame) {
  fitCanvas(frame.displayWidth, frame.displayHeight);
  ctx.drawImage(frame, 0, 0, canvas.width, canvas.height);
  state.stats.framesDecoded++;
  const arrivedAt = arrivals.get(frame.timestamp);
  arrivals.delete(frame.timestamp);
  drew(frame.timestamp / 1000, frame.displayWidth, frame.displayHeight, arrivedAt ?? performance.now());
  frame.close();
}

// A decoder that fails is not retried: the page reconnects for JPEG.
function decoderFailed(error) {
  state.stats.decoderErrors++;
  state.stats.lastError = String((error && error.message) || error);
  if (!useH264) return;
  useH264 = false;
  state.fallback = "decoder error: " + state.stats.lastError;
  // The JPEG connection asks for control again, so a person in control stays so; for 5 s, while the daemon lets
  // go of the old connection's.
  retakeUntil = state.inControl ? Date.now() + 5000 : 0;
  if (decoder && decoder.state !== "closed") { try { decoder.close(); } catch {} }
  decoder = null;
  const old = ws;
  ws = null;
  if (old) old.close(1000, "falling back to JPEG");
  connect();
}

function onFrame(buffer) {
  if (buffer.byteLength < 24) return;
  const view = new DataView(buffer);
  const magic = view.getUint32(0);
  received.push([performance.now(), buffer.byteLength]);
  const sequence = Number(view.getBigUint64(4));
  if (state.lastSequence && sequence > state.lastSequence + 1) state.skipped += sequence - state.lastSequence - 1;
  state.lastSequence = sequence;
  state.framesReceived++;
  if (magic === 0x56504631) {  // "VPF1": a JPEG
    const frame = { blob: new Blob([new Uint8Array(buffer, 24)], { type: "image/jpeg" }),
                    capturedAtMs: Number(view.getBigUint64(12)) / 1000, arrivedAt: performance.now() };
    if (decodingJPEG) pendingJPEG = frame; else drawJPEG(frame);
  } else if (magic === 0x56504831 && buffer.byteLength > 28) {  // "VPH1": an H.264 access unit
    decodeH264(view, buffer);
  }
}

// Control: who drives the browser. The server says "a viewer"; this page knows whether it asked.
let takeRequested = false, retakeUntil = 0;
function retake() {
  if (Date.now() > retakeUntil || !state.controlPermitted) return;
  takeRequested = true;
  send({ type: "take-control" });
}
function setController(who) {
  state.controller = who;
  state.inControl = who === "you";
  const label = { agent: "the agent is in control", you: "you are in control", viewer: "another viewer is in control" };
  el("controller").textContent = label[who];
  el("controller").className = who;
  el("take").hidden = state.inControl;
  el("take").disabled = who === "viewer";
  el("release").hidden = !state.inControl;
  el("address").disabled = el("go").disabled = !state.inControl;
  canvas.classList.toggle("controlling", state.inControl);
}

function framePoint(event) {
  const rect = canvas.getBoundingClientRect();
  return { x: Math.round((event.clientX - rect.left) * canvas.width / rect.width),
           y: Math.round((event.clientY - rect.top) * canvas.height / rect.height) };
}
const modifiers = (e) => (e.altKey ? 1 : 0) | (e.ctrlKey ? 2 : 0) | (e.metaKey ? 4 : 0) | (e.shiftKey ? 8 : 0);
const buttonNames = ["left", "middle", "right"];
let pressed = 0, moveTimer = null, pendingMove = null;

function mouse(kind, event, extra) {
  const point = framePoint(event);
  send(Object.assign({ type: "mouse", event: kind, x: point.x, y: point.y, modifiers: modifiers(event) }, extra));
}
canvas.addEventListener("mousedown", (e) => {
  if (!state.inControl) return;
  e.preventDefault();
  canvas.focus();
  pressed++;
  mouse("mousePressed", e, { button: buttonNames[e.button] || "left", click_count: Math.min(3, Math.max(1, e.detail)) });
});
// A button released outside the canvas is released in the browser too (at the edge: the server clamps).
window.addEventListener("mouseup", (e) => {
  if (!state.inControl || pressed === 0) return;
  pressed--;
  mouse("mouseReleased", e, { button: buttonNames[e.button] || "left", click_count: Math.min(3, Math.max(1, e.detail)) });
});
// Moves go at most every 16 ms, the newest one.
canvas.addEventListener("mousemove", (e) => {
  if (!state.inControl) return;
  pendingMove = e;
  if (moveTimer) return;
  moveTimer = setTimeout(() => {
    moveTimer = null;
    if (pendingMove && state.inControl) {
      mouse("mouseMoved", pendingMove, { button: pressed ? "left" : "none" });
    }
    pendingMove = null;
  }, 16);
});
canvas.addEventListener("contextmenu", (e) => { if (state.inControl) e.preventDefault(); });
canvas.addEventListener("wheel", (e) => {
  if (!state.inControl) return;
  e.preventDefault();
  const unit = e.deltaMode === 1 ? 40 : e.deltaMode === 2 ? canvas.height : 1;
  const point = framePoint(e);
  send({ type: "wheel", x: point.x, y: point.y, delta_x: e.deltaX * unit, delta_y: e.deltaY * unit });
}, { passive: false });

function key(kind, e) {
  if (!state.inControl || e.target === el("address")) return;
  // Ctrl/Cmd+V pastes this computer's clipboard (the paste event below), not the remote browser's.
  if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "v") return;
  e.preventDefault();
  const message = { type: "key", event: kind, key: e.key, code: e.code, modifiers: modifiers(e) };
  if (kind === "keyDown" && [...e.key].length === 1 && !(e.ctrlKey || e.altKey || e.metaKey)) message.text = e.key;
  send(message);
}
window.addEventListener("keydown", (e) => key("keyDown", e));
window.addEventListener("keyup", (e) => key("keyUp", e));
document.addEventListener("paste", (e) => {
  if (!state.inControl || e.target === el("address")) return;
  const text = e.clipboardData ? e.clipboardData.getData("text/plain") : "";
  e.preventDefault();
  if (text) send({ type: "paste", text });
});
el("take").addEventListener("click", () => { takeRequested = true; send({ type: "take-control" }); });
el("release").addEventListener("click", () => send({ type: "cede-control" }));
el("navigate").addEventListener("submit", (e) => {
  e.preventDefault();
  let url = el("address").value.trim();
  if (!url) return;
  if (!/^https?:\/\//i.test(url)) url = "https://" + url;
  send({ type: "navigate", url });
  canvas.focus();
});
// Closing the tab closes the socket, which gives control back; say so first where the socket is still open.
window.addEventListener("pagehide", () => { if (state.inControl) send({ type: "cede-control" }); });

// Runs and steps as they happen.
const runs = new Map();
function runView(id) {
  let run = runs.get(id);
  if (run) return run;
  run = { run_id: id, status: "running", started_at: null, finished_at: null, replay_url: null, steps: [] };
  runs.set(id, run);
  state.runs.push(run);
  while (state.runs.length > maxRuns) runs.delete(state.runs.shift().run_id);
  return run;
}

function onRun(message) {
  const run = runView(message.run_id);
  Object.assign(run, { status: message.status, started_at: message.started_at,
                       finished_at: message.finished_at || null, replay_url: message.replay_url || null });
  renderRuns();
}

function onStep(message) {
  const run = runView(message.run_id);
  if (!run.steps.some((step) => step.index === message.index)) {
    run.steps.push({ index: message.index, label: message.label, at: message.at });
    run.steps.sort((a, b) => a.index - b.index);
  }
  renderRuns();
}

function renderRuns() {
  const list = el("runs");
  list.replaceChildren();
  el("empty").hidden = state.runs.length > 0;
  for (const run of state.runs.slice().reverse()) {
    const item = document.createElement("section");
    item.className = "run";
    item.dataset.runId = run.run_id;
    const head = document.createElement("header");
    const name = document.createElement("b");
    name.textContent = run.run_id;
    const status = document.createElement("span");
    status.className = "status " + run.status;
    status.textContent = run.status;
    head.append(name, status);
    if (run.replay_url) {
      const link = document.createElement("a");
      link.className = "replay";
      link.href = run.replay_url;
      link.target = "_blank";
      link.rel = "noopener";
      link.textContent = "Replay";
      head.append(link);
    }
    const steps = document.createElement("ol");
    for (const step of run.steps) {
      const li = document.createElement("li");
      li.value = step.index;
      li.textContent = step.label;
      steps.append(li);
    }
    item.append(head, steps);
    list.append(item);
  }
  const open = state.runs.filter((run) => run.status === "running").pop();
  const current = open && open.steps.length ? open.steps[open.steps.length - 1] : null;
  state.currentStep = current ? current.label : null;
  el("step").hidden = !current;
  el("step").textContent = current ? "Step " + current.index + ": " + current.label : "";
}

// The server's clock: the offset measured by the ping with the shortest round trip of the last few.
let clockSamples = [];
function onPong(message) {
  const now = Date.now();
  if (typeof message.t !== "number" || !message.server_time_us) return;
  const rtt = now - message.t;
  clockSamples.push({ rtt, offset: message.server_time_us / 1000 - (message.t + now) / 2 });
  if (clockSamples.length > 8) clockSamples.shift();
  state.clockOffsetMs = clockSamples.reduce((best, s) => (s.rtt < best.rtt ? s : best)).offset;
}

function onText(text) {
  let message;
  try { message = JSON.parse(text); } catch { return; }
  switch (message.type) {
  case "hello":
    setStatus("running");
    state.controlPermitted = message.control_permitted === true;
    el("controls").hidden = !state.controlPermitted;
    fitCanvas(message.width, message.height);
    if (message.format === "h264") configure(message);
    else {
      if (useH264) state.fallback = "the server sends JPEG";
      useH264 = false;
      state.codec = "jpeg"; state.codecString = null;
    }
    send({ type: "ping", t: Date.now() });
    retake();
    break;
  case "config": configure(message); break;
  case "control":
    if (message.controller === "agent") takeRequested = false;
    setController(message.controller === "agent" ? "agent" : takeRequested ? "you" : "viewer");
    if (state.inControl) retakeUntil = 0;
    else if (message.controller === "agent") retake();
    break;
  case "error":
    if (takeRequested && /another viewer is in control/.test(message.message || "")) {
      takeRequested = false;
      setController("viewer");
    }
    break;
  case "status":
    if (message.status === "closed" || message.status === "failed") final = true;
    setStatus(message.status, message.reason);
    break;
  case "page":
    if (!message.url) break;
    state.url = message.url;
    el("url").textContent = message.url;
    if (document.activeElement !== el("address")) el("address").value = message.url;
    break;
  case "pong": onPong(message); break;
  case "run": onRun(message); break;
  case "step": onStep(message); break;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = ws = new WebSocket(scheme + "//" + location.host + "/stream/browser/" + encodeURIComponent(sessionId) +
                                    "?token=" + encodeURIComponent(token) + (useH264 ? "&codec=h264" : ""));
  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    if (socket === ws) typeof event.data === "string" ? onText(event.data) : onFrame(event.data);
  };
  socket.onclose = (event) => {
    if (socket !== ws) return;  // replaced on purpose (the JPEG fallback)
    state.closeCode = event.code;
    if (state.inControl) setController("agent");
    takeRequested = false;
    if (final) return;
    setStatus("reconnecting", event.code === 1001 ? "viewportd restarting" : "connection lost");
    setTimeout(connect, 1500);
  };
}

function formatRate(kbps) {
  return kbps >= 1000 ? (kbps / 1000).toFixed(1) + " Mbit/s" : Math.round(kbps) + " kbit/s";
}

setInterval(() => {
  const now = performance.now();
  while (drawnTimes.length && drawnTimes[0] < now - 1000) drawnTimes.shift();
  while (received.length && received[0][0] < now - 1000) received.shift();
  state.fps = drawnTimes.length;
  state.bitrateKbps = received.reduce((sum, r) => sum + r[1], 0) * 8 / 1000;
  el("fps").textContent = state.fps;
  el("bitrate").textContent = formatRate(state.bitrateKbps);
  el("latency").textContent = state.latencyMs === null ? "–" : Math.round(state.latencyMs);
  const codec = state.codec === "h264" ? "H.264 (WebCodecs" + (state.codecString ? ", " + state.codecString : "") + ")"
              : state.codec === "jpeg" ? "JPEG" : "–";
  el("codec").textContent = codec + (state.fallback && state.codec === "jpeg" ? " · " + state.fallback : "");
}, 250);
setInterval(() => send({ type: "ping", t: Date.now() }), 2000);

// H.264 where this browser decodes it (WebCodecs), else JPEG; ?codec=jpeg asks for JPEG.
async function start() {
  if (params.get("codec") !== "jpeg" && typeof VideoDecoder !== "undefined") {
    try {
      useH264 = (await VideoDecoder.isConfigSupported({ codec: "avc1.42E01F" })).supported === true;
    } catch {}
    if (!useH264) state.fallback = "this browser cannot decode H.264";
  } else {
    // Browsers offer WebCodecs only to https pages (and localhost): say so, it is the operator's fix.
    state.fallback = params.get("codec") === "jpeg" ? "?codec=jpeg"
                   : window.isSecureContext ? "no WebCodecs in this browser" : "H.264 needs an https link";
  }
  connect();
}
start();
</script>
</body>
</html>
"""#
}
