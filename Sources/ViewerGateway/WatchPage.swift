/// The watch page served at `/watch/{id}?token=...`: draws the session's frames on a canvas and shows the
/// status, frame rate and capture-to-screen latency. `window.viewportd` exposes the same figures to scripts.
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
  header { display: flex; gap: 1.5em; align-items: center; padding: 6px 12px; background: #1c1c1c; }
  header b { color: #fff; }
  #status.running { color: #6c6; } #status.reconnecting, #status.connecting { color: #db6; }
  #status.closed, #status.failed, #status.error { color: #e66; }
  main { flex: 1; display: flex; align-items: center; justify-content: center; min-height: 0; }
  canvas { max-width: 100%; max-height: 100%; background: #000; box-shadow: 0 0 12px #000; }
  #url { color: #999; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; flex: 1; text-align: right; }
</style>
</head>
<body>
<header>
  <b>{{SESSION_ID}}</b>
  <span id="status" class="connecting">connecting</span>
  <span><span id="fps">0</span> fps</span>
  <span>latency <span id="latency">–</span> ms</span>
  <span id="size"></span>
  <span id="url"></span>
</header>
<main><canvas id="screen" width="1280" height="720"></canvas></main>
<script>
"use strict";
const sessionId = "{{SESSION_ID}}";
const token = new URLSearchParams(location.search).get("token") || "";
const canvas = document.getElementById("screen");
const ctx = canvas.getContext("2d");
const el = (id) => document.getElementById(id);
const state = window.viewportd = {
  status: "connecting", framesReceived: 0, framesDrawn: 0, lastSequence: 0, skipped: 0,
  fps: 0, latencyMs: null, width: 0, height: 0, url: null, closeCode: null,
};
let final = false, decoding = false, pending = null, drawnTimes = [];

function setStatus(status, reason) {
  state.status = status;
  const s = el("status");
  s.textContent = reason ? status + ": " + reason : status;
  s.className = status;
}

function draw(frame) {
  decoding = true;
  createImageBitmap(frame.blob).then((bitmap) => {
    if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
      canvas.width = bitmap.width; canvas.height = bitmap.height;
    }
    ctx.drawImage(bitmap, 0, 0);
    state.width = bitmap.width; state.height = bitmap.height;
    bitmap.close();
    const now = performance.now();
    state.framesDrawn++;
    state.latencyMs = Math.max(0, Date.now() - frame.capturedAtMs);
    drawnTimes.push(now);
    while (drawnTimes.length && drawnTimes[0] < now - 1000) drawnTimes.shift();
    state.fps = drawnTimes.length;
    el("size").textContent = state.width + "×" + state.height;
  }).catch(() => {}).finally(() => {
    decoding = false;
    if (pending) { const next = pending; pending = null; draw(next); }
  });
}

function onFrame(buffer) {
  const view = new DataView(buffer);
  if (buffer.byteLength < 24 || view.getUint32(0) !== 0x56504631) return;  // "VPF1"
  const sequence = Number(view.getBigUint64(4));
  if (state.lastSequence && sequence > state.lastSequence + 1) state.skipped += sequence - state.lastSequence - 1;
  state.lastSequence = sequence;
  state.framesReceived++;
  const frame = {
    blob: new Blob([new Uint8Array(buffer, 24)], { type: "image/jpeg" }),
    capturedAtMs: Number(view.getBigUint64(12)) / 1000,
  };
  // Decode one frame at a time and keep only the newest waiting one: a slow screen skips, never lags.
  if (decoding) pending = frame; else draw(frame);
}

function onText(text) {
  let message;
  try { message = JSON.parse(text); } catch { return; }
  if (message.type === "hello") {
    setStatus("running");
    if (message.width && message.height) { canvas.width = message.width; canvas.height = message.height; }
  } else if (message.type === "status") {
    if (message.status === "closed" || message.status === "failed") final = true;
    setStatus(message.status, message.reason);
  } else if (message.type === "page" && message.url) {
    state.url = message.url; el("url").textContent = message.url;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(scheme + "//" + location.host + "/stream/browser/" + encodeURIComponent(sessionId) +
                           "?token=" + encodeURIComponent(token));
  ws.binaryType = "arraybuffer";
  ws.onmessage = (event) => typeof event.data === "string" ? onText(event.data) : onFrame(event.data);
  ws.onclose = (event) => {
    state.closeCode = event.code;
    if (final) return;
    setStatus("reconnecting", event.code === 1001 ? "viewportd restarting" : "connection lost");
    setTimeout(connect, 1500);
  };
}

setInterval(() => {
  const now = performance.now();
  while (drawnTimes.length && drawnTimes[0] < now - 1000) drawnTimes.shift();
  state.fps = drawnTimes.length;
  el("fps").textContent = state.fps;
  el("latency").textContent = state.latencyMs === null ? "–" : Math.round(state.latencyMs);
}, 250);
connect();
</script>
</body>
</html>
"""#
}
