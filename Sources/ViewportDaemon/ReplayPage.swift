import Foundation

/// The replay page served at `/replay/{run_id}?token=...`: the run's video with play/pause, speed, a timeline
/// and the list of steps (click one to seek to it, its screenshot beside it). `window.viewportdReplay` exposes
/// the player's state to scripts.
enum ReplayPage {
    struct Step: Encodable {
        var index: Int
        var label: String
        /// Seconds from the start of the run's video.
        var offset: Double
        var screenshotURL: String?
    }

    struct Run: Encodable {
        var id: String
        var title: String?
        var status: String
        var videoURL: String?
        var steps: [Step]
    }

    static func html(run: Run) -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        // `<` escaped so no string in the data can close the script element.
        let data = String(decoding: (try? encoder.encode(run)) ?? Data("{}".utf8), as: UTF8.self)
            .replacingOccurrences(of: "<", with: "\\u003c")
        return template.replacingOccurrences(of: "{{RUN_JSON}}", with: data)
    }

    private static let template = #"""
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>viewportd replay</title>
<style>
  html, body { margin: 0; height: 100%; background: #111; color: #ddd; font: 13px system-ui, sans-serif; }
  body { display: grid; grid-template-columns: 1fr 340px; grid-template-rows: auto 1fr auto; height: 100%; }
  header { grid-column: 1 / 3; padding: 6px 12px; background: #1c1c1c; display: flex; gap: 1.5em; }
  header b { color: #fff; }
  main { display: flex; align-items: center; justify-content: center; min-height: 0; min-width: 0; }
  video { max-width: 100%; max-height: 100%; background: #000; }
  #controls { grid-column: 1; display: flex; gap: 8px; align-items: center; padding: 8px 12px; background: #1c1c1c; }
  #timeline { flex: 1; }
  button { background: #333; color: #eee; border: 1px solid #555; border-radius: 3px; padding: 3px 10px; cursor: pointer; }
  button.on { background: #2a5db0; border-color: #2a5db0; }
  aside { grid-column: 2; grid-row: 2 / 4; overflow-y: auto; border-left: 1px solid #333; }
  .step { display: flex; gap: 8px; padding: 8px; border-bottom: 1px solid #222; cursor: pointer; }
  .step:hover { background: #1d1d1d; } .step.current { background: #24324a; }
  .step img { width: 120px; height: auto; flex: none; background: #000; }
  .step small { color: #999; display: block; }
  #empty { padding: 2em; color: #999; }
</style>
</head>
<body>
<header><b id="title"></b><span id="status"></span><span id="clock">0:00.0 / 0:00.0</span></header>
<main><video id="video" preload="auto" playsinline></video><p id="empty" hidden>This run has no recording.</p></main>
<div id="controls">
  <button id="play">Play</button>
  <button data-rate="0.5">0.5×</button><button data-rate="1" class="on">1×</button><button data-rate="2">2×</button>
  <input id="timeline" type="range" min="0" max="0" step="0.01" value="0">
</div>
<aside id="steps"></aside>
<script>
"use strict";
const run = {{RUN_JSON}};
const video = document.getElementById("video"), timeline = document.getElementById("timeline");
const play = document.getElementById("play"), clock = document.getElementById("clock");
const state = window.viewportdReplay = { ready: false, error: null, duration: 0, steps: run.steps,
  seekToStep(index) {
    const step = run.steps.find(s => s.index === index);
    if (step) video.currentTime = Math.min(step.offset, state.duration || step.offset);
  } };
document.getElementById("title").textContent = run.title || run.id;
document.getElementById("status").textContent = run.status;
const format = t => `${Math.floor(t / 60)}:${(t % 60).toFixed(1).padStart(4, "0")}`;
const list = document.getElementById("steps");
for (const step of run.steps) {
  const row = document.createElement("div");
  row.className = "step";
  row.dataset.index = step.index;
  if (step.screenshot_url) {
    const img = document.createElement("img");
    img.src = step.screenshot_url; img.alt = `Step ${step.index}`; img.loading = "lazy";
    row.append(img);
  }
  const text = document.createElement("div");
  const label = document.createElement("div");
  label.textContent = `Step ${step.index}: ${step.label}`;
  const at = document.createElement("small");
  at.textContent = format(step.offset);
  text.append(label, at);
  row.append(text);
  row.addEventListener("click", () => state.seekToStep(step.index));
  list.append(row);
}
if (!run.video_url) {
  video.hidden = true;
  document.getElementById("empty").hidden = false;
} else {
  video.src = run.video_url;
}
video.addEventListener("loadedmetadata", () => {
  state.duration = video.duration;
  timeline.max = video.duration;
  state.ready = true;
  update();
});
video.addEventListener("error", () => { state.error = video.error ? video.error.message || `code ${video.error.code}` : "error"; });
function update() {
  timeline.value = video.currentTime;
  clock.textContent = `${format(video.currentTime)} / ${format(state.duration)}`;
  play.textContent = video.paused ? "Play" : "Pause";
  let current = null;
  for (const step of run.steps) if (step.offset <= video.currentTime + 0.05) current = step.index;
  state.currentStep = current;
  for (const row of list.children) row.classList.toggle("current", Number(row.dataset.index) === current);
}
for (const event of ["timeupdate", "seeked", "play", "pause"]) video.addEventListener(event, update);
play.addEventListener("click", () => video.paused ? video.play() : video.pause());
timeline.addEventListener("input", () => { video.currentTime = Number(timeline.value); });
for (const button of document.querySelectorAll("[data-rate]")) {
  button.addEventListener("click", () => {
    video.playbackRate = Number(button.dataset.rate);
    for (const other of document.querySelectorAll("[data-rate]")) other.classList.toggle("on", other === button);
  });
}
</script>
</body>
</html>
"""#
}
