import Foundation
import NetworkNamespaces
import Testing
@testable import ViewportDaemon

/// The watch page of session `id` opened in a second headless Chromium from a link with a token the API minted
/// (`control` as given), JPEG unless `query` says otherwise; `launcher` runs that Chromium (e.g. in a namespace),
/// which reaches the daemon at `base` (the daemon's own unless given).
private func withWatcher(_ daemon: TestDaemon, _ id: String, control: Bool, query: String = "&codec=jpeg",
                         base: String? = nil, launcher: [String] = [], _ body: (Chromium) async throws -> Void) async throws
{
    let (status, minted) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens",
                                                    json: ["control": control])
    try #require(status == 201, "mint a token: \(status) \(minted)")
    let token = try #require(minted["token"].string)
    let watcher = try await Chromium.launch(url: "\(base ?? daemon.base)/watch/\(id)?token=\(token)\(query)", launcher: launcher)
    defer { watcher.terminate() }
    try await body(watcher)
}

/// The value of `expression` in the watch page (its browser run by `launcher`).
private func evaluate(_ watcher: Chromium, _ expression: String, launcher: [String] = []) async throws -> JSON {
    try await Client.cdp(watcher, "Runtime.evaluate", ["expression": expression, "returnByValue": true],
                         page: "/watch/", launcher: launcher)["result"]["value"]
}

/// Clicks the watch page at its CSS pixel (x, y) with real mouse events.
private func click(_ watcher: Chromium, x: Double, y: Double) async throws {
    for type in ["mousePressed", "mouseReleased"] {
        _ = try await Client.cdp(watcher, "Input.dispatchMouseEvent",
                                 ["type": type, "x": x, "y": y, "button": "left", "clickCount": 1], page: "/watch/")
    }
}

/// The CSS pixel of the watch page where the canvas shows the frame's pixel (x, y), as displayed (scaled).
private func canvasPoint(_ watcher: Chromium, x: Double, y: Double) async throws -> (Double, Double) {
    let point = try await evaluate(watcher, """
        (() => { const c = document.getElementById("screen"), r = c.getBoundingClientRect();
                 return [r.left + \(x) * r.width / c.width, r.top + \(y) * r.height / c.height]; })()
        """)
    return (try #require(point[0].double), try #require(point[1].double))
}

/// The colour of the canvas's pixel (x, y) as the page drew it.
private func canvasPixel(_ watcher: Chromium, x: Int, y: Int) async throws -> [Int] {
    try await evaluate(watcher, """
        Array.from(document.getElementById("screen").getContext("2d").getImageData(\(x), \(y), 1, 1).data).slice(0, 3)
        """).array.compactMap(\.int)
}

private func near(_ pixel: [Int], _ colour: [Int]) -> Bool {
    pixel.count == 3 && zip(pixel, colour).allSatisfy { abs($0 - $1) <= 40 }
}

/// A value the watched page (vnc.html) holds.
private func watched(_ browser: Chromium, _ expression: String) async throws -> JSON {
    try await Client.cdp(browser, "Runtime.evaluate", ["expression": expression, "returnByValue": true],
                         page: "vnc.html")["result"]["value"]
}

@Suite("The watch page in a real Chromium", .serialized)
struct WatchPageTests {
    @Test func aBrowserWithWebCodecsDrawsTheSessionsColoursFromH264WithNoDecoderError() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, _, id in
            try await withWatcher(daemon, id, control: false, query: "") { watcher in
                try await eventually("the page decoded H.264 pictures", timeout: 20) {
                    try await evaluate(watcher, "window.viewportd.stats.framesDecoded").int ?? 0 > 0
                }
                #expect(try await evaluate(watcher, "window.viewportd.codec").string == "h264")
                #expect(try await evaluate(watcher, "document.getElementById('codec').textContent").string?.contains("H.264") == true,
                        "the page says which codec it shows")
                for (x, colour) in [(160, [255, 0, 0]), (480, [0, 255, 0]), (800, [0, 0, 255])] {
                    let pixel = try await canvasPixel(watcher, x: x, y: 100)
                    #expect(near(pixel, colour), "pixel (\(x), 100) is \(pixel), expected \(colour)")
                }
                let lastError = try await evaluate(watcher, "window.viewportd.stats.lastError")
                #expect(try await evaluate(watcher, "window.viewportd.stats.decoderErrors").int == 0, "\(lastError)")
            }
        }
    }

    @Test func aPageWhoseLinkSlowsDownSkipsToTheNextKeyFrameAndDrawsOnWithNoDecoderError() async throws {
        // The watching browser on a host of its own. Its link first carries the H.264 stream of a scrolling page
        // (about 0.4 Mbit/s), then slows to less than that: the daemon's queue for the page
        // (viewer.h264_queue_frames, 60) overflows; then it is fast again.
        try await ClusterNet.with(hosts: ["w"]) { net in
            try net.shape("w", rateMbit: 10)
            let inW = try net.host("w").exec
            try await withLiveSession(page: "scroll.html", { $0.listen.host = net.rootAddress }) { daemon, _, id in
                // WebCodecs only in a secure context, as from https or localhost: the page is loaded through a
                // proxy on the watching host's loopback.
                let proxy = try LoopbackProxy(to: daemon.base, launcher: inW)
                defer { proxy.stop() }
                try await withWatcher(daemon, id, control: false, query: "", base: "http://127.0.0.1:\(proxy.port)",
                                      launcher: inW) { watcher in
                    func page(_ expression: String) async throws -> JSON {
                        try await evaluate(watcher, "window.viewportd." + expression, launcher: inW)
                    }
                    func dropped() -> UInt64 { daemon.daemon.viewerStats(sessionID: id).first?.dropped ?? 0 }
                    try await eventually("the page decoded H.264 pictures") { try await page("stats.framesDecoded").int ?? 0 > 0 }

                    try net.shape("w", rateMbit: 0.05)
                    // An overflow drops the whole queue and the picture that did not fit.
                    try await eventually("the page's queue overflowed", timeout: 15) { dropped() > 60 }
                    try net.shape("w", rateMbit: 10)
                    try await eventually("the page went on past the skip", timeout: 10) { try await page("skipped").int ?? 0 > 60 }
                    let drawn = try await page("framesDrawn").int ?? 0
                    try await eventually("the page drew on", timeout: 10) { try await page("framesDrawn").int ?? 0 >= drawn + 10 }

                    let stats = try await page("stats")
                    #expect(stats["decoderErrors"].int == 0, "\(stats)")
                    #expect(stats["framesWaitingForKey"].int == 0, "the daemon resumed at a key frame: \(stats)")
                    #expect(try await page("codec").string == "h264")
                    #expect(try await page("fallback") == .null, "it did not fall back to JPEG")
                }
            }
        }
    }

    @Test func aBrowserWithoutWebCodecsFallsBackToJPEGAndSaysSo() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, _, id in
            try await withWatcher(daemon, id, control: false, query: "") { watcher in
                // WebCodecs switched off: the page loaded again without it.
                try await eventually("the page runs without WebCodecs", timeout: 30) {
                    let answer = try? await Client.cdp(watcher, "Runtime.evaluate", ["expression": "typeof VideoDecoder", "returnByValue": true],
                                                       page: "/watch/", onNewDocument: "delete window.VideoDecoder; delete window.EncodedVideoChunk;")
                    return answer?["result"]["value"].string == "undefined"
                }
                try await eventually("the page drew frames") {
                    try await evaluate(watcher, "window.viewportd.framesDrawn").int ?? 0 > 0
                }
                #expect(try await evaluate(watcher, "typeof VideoDecoder").string == "undefined", "WebCodecs is off")
                #expect(try await evaluate(watcher, "window.viewportd.codec").string == "jpeg")
                #expect(try await evaluate(watcher, "document.getElementById('codec').textContent").string?.contains("no WebCodecs") == true)
                let pixel = try await canvasPixel(watcher, x: 160, y: 100)
                #expect(near(pixel, [255, 0, 0]), "\(pixel)")
            }
        }
    }

    @Test func aPersonInControlWhenTheDecoderFailsKeepsControlOnTheJPEGFallback() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, _, id in
            try await withWatcher(daemon, id, control: true, query: "") { watcher in
                try await eventually("the page decoded H.264 pictures", timeout: 20) {
                    try await evaluate(watcher, "window.viewportd.stats.framesDecoded").int ?? 0 > 0
                }
                _ = try await evaluate(watcher, "document.getElementById('take').click()")
                try await eventually("the page is in control") {
                    try await evaluate(watcher, "window.viewportd.controller").string == "you"
                }
                // The page's own handler for a VideoDecoder error.
                _ = try await evaluate(watcher, "decoderFailed(new Error('injected decoder error'))")
                try await eventually("the page shows JPEG and says why") {
                    try await evaluate(watcher, "window.viewportd.codec === 'jpeg' && window.viewportd.framesDrawn > 0"
                                       + " && window.viewportd.fallback.includes('injected')").bool == true
                }
                try await eventually("the daemon gave the new connection control") {
                    try await evaluate(watcher, "window.viewportd.controller").string == "you"
                }
                let observer = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 1).first)
                #expect(observer.texts("control").first?["controller"].string == "viewer", "\(observer.texts)")
            }
        }
    }

    @Test func aViewOnlyLinkDrawsTheSessionsColoursInJPEGAndOffersNoControl() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, _, id in
            try await withWatcher(daemon, id, control: false) { watcher in
                try await eventually("the page drew frames") {
                    try await evaluate(watcher, "window.viewportd.framesDrawn").int ?? 0 > 0
                }
                // vnc.html: red, green and blue blocks across the top.
                for (x, colour) in [(160, [255, 0, 0]), (480, [0, 255, 0]), (800, [0, 0, 255])] {
                    let pixel = try await canvasPixel(watcher, x: x, y: 100)
                    #expect(near(pixel, colour), "pixel (\(x), 100) is \(pixel), expected \(colour)")
                }
                #expect(try await evaluate(watcher, "window.viewportd.codec").string == "jpeg")
                #expect(try await evaluate(watcher, "document.getElementById('codec').textContent").string?.hasPrefix("JPEG") == true,
                        "the page says which codec it shows")
                #expect(try await evaluate(watcher, "window.viewportd.stats.decoderErrors").int == 0)
                #expect(try await evaluate(watcher, "window.viewportd.controlPermitted").bool == false)
                #expect(try await evaluate(watcher, "document.getElementById('controls').hidden").bool == true,
                        "a view-only link shows no control")
                #expect(try await evaluate(watcher, "document.getElementById('take').getClientRects().length").int == 0)
            }
        }
    }

    @Test func takeControlThenAClickAndTypedTextOnThePageReachTheWatchedBrowser() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, browser, id in
            try await withWatcher(daemon, id, control: true) { watcher in
                try await eventually("the page drew frames and offers control") {
                    try await evaluate(watcher, "window.viewportd.framesDrawn > 0 && !document.getElementById('controls').hidden").bool == true
                }
                let take = try await evaluate(watcher, """
                    (() => { const r = document.getElementById("take").getBoundingClientRect();
                             return [r.left + r.width / 2, r.top + r.height / 2]; })()
                    """)
                try await click(watcher, x: try #require(take[0].double), y: try #require(take[1].double))
                try await eventually("the page is in control") {
                    try await evaluate(watcher, "window.viewportd.controller").string == "you"
                }
                #expect(try await evaluate(watcher, "document.getElementById('controller').textContent").string == "you are in control")

                // vnc.html's button is at (100-300, 400-480) and its text field at (700-1000, 400-440), in frame
                // pixels; the watcher's window is as wide as the frame, so the canvas shows it scaled down.
                let (buttonX, buttonY) = try await canvasPoint(watcher, x: 200, y: 440)
                try await click(watcher, x: buttonX, y: buttonY)
                let (fieldX, fieldY) = try await canvasPoint(watcher, x: 850, y: 420)
                try await click(watcher, x: fieldX, y: fieldY)
                for (key, code, vk) in [("h", "KeyH", 72), ("i", "KeyI", 73)] {
                    for type in ["keyDown", "keyUp"] {
                        var event: [String: Any] = ["type": type, "key": key, "code": code, "windowsVirtualKeyCode": vk]
                        if type == "keyDown" { event["text"] = key }
                        _ = try await Client.cdp(watcher, "Input.dispatchKeyEvent", event, page: "/watch/")
                    }
                }
                try await eventually("the click and the text reached the watched page") {
                    try await watched(browser, "document.getElementById('field').value").string == "hi"
                }
                #expect(try await watched(browser, "window.clicks").int == 1, "one click on the button")

                let release = try await evaluate(watcher, """
                    (() => { const r = document.getElementById("release").getBoundingClientRect();
                             return [r.left + r.width / 2, r.top + r.height / 2]; })()
                    """)
                try await click(watcher, x: try #require(release[0].double), y: try #require(release[1].double))
                try await eventually("control went back to the agent") {
                    try await evaluate(watcher, "window.viewportd.controller").string == "agent"
                }
            }
        }
    }

    @Test func stepsAppearOnThePageAsARunIsMarkedAndAFinishedRunLinksItsReplay() async throws {
        try await withLiveSession { daemon, _, id in
            try await withWatcher(daemon, id, control: false) { watcher in
                try await eventually("the page drew frames") {
                    try await evaluate(watcher, "window.viewportd.framesDrawn").int ?? 0 > 0
                }
                let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["title": "login"])
                try #require(status == 201, "start a run: \(status) \(run)")
                let runID = try #require(run["run_id"].string)
                try await eventually("the page shows the run") {
                    try await evaluate(watcher, "window.viewportd.runs.map(r => r.run_id + ' ' + r.status).join()").string == "\(runID) running"
                }
                for label in ["Open the login page", "Type the password"] {
                    let (marked, step) = try await daemon.request("POST", "/v1/runs/\(runID)/steps", json: ["label": label])
                    try #require(marked == 201, "mark a step: \(marked) \(step)")
                    try await eventually("the page shows step \(label)") {
                        try await evaluate(watcher, "document.getElementById('step').textContent").string?.hasSuffix(label) == true
                    }
                }
                #expect(try await evaluate(watcher, "document.getElementById('step').hidden").bool == false,
                        "the current step is over the picture")
                #expect(try await evaluate(watcher, "document.getElementById('step').textContent").string == "Step 2: Type the password")
                #expect(try await evaluate(watcher, "[...document.querySelectorAll('.run li')].map(li => li.textContent).join('|')").string
                        == "Open the login page|Type the password")

                // A viewer who joins now is told the open run and its steps right after hello.
                let joiner = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 1).first)
                #expect(joiner.texts.prefix(5).map { $0["type"].string ?? "" } == ["hello", "control", "run", "step", "step"])
                #expect(joiner.texts("run").first?["status"].string == "running")
                #expect(joiner.texts("step").map { $0["index"].int ?? 0 } == [1, 2])
                #expect(joiner.texts("step").last?["label"].string == "Type the password")

                let (completed, _) = try await daemon.request("POST", "/v1/runs/\(runID)/complete", json: ["status": "completed"])
                #expect(completed == 200)
                try await eventually("the page links the finished run's replay", timeout: 30) {
                    try await evaluate(watcher, "document.querySelector('a.replay')?.href ?? ''").string?.contains("/replay/\(runID)?token=") == true
                }
                #expect(try await evaluate(watcher, "window.viewportd.runs[0].status").string == "completed")
                #expect(try await evaluate(watcher, "document.getElementById('step').hidden").bool == true,
                        "no current step once the run ended")
                let replay = try #require(try await evaluate(watcher, "document.querySelector('a.replay').href").string)
                let (replayStatus, page) = try await httpRaw("GET", replay)
                #expect(replayStatus == 200 && String(decoding: page, as: UTF8.self).contains(runID),
                        "the replay link opens without a key")
            }
        }
    }

    @Test func evaluateAnswersAValueAnExceptionATimeoutAndTheCapAndNothingRunsForAViewOnlyViewer() async throws {
        try await withLiveSession(page: "vnc.html", {
            $0.viewer.evaluateTimeoutSeconds = 1
            $0.viewer.evaluateMaxResultKB = 1
        }) { daemon, browser, id in
            let url = daemon.streamURL(id)
            let viewer = try #require(try await Client.watch(url, key: keyA, seconds: 3, send: [
                #"{"type":"evaluate","id":1,"expression":"({title: document.title, sum: 1 + 2, list: [1, 'x', true, null]})"}"#,
                #"{"type":"evaluate","id":"e2","expression":"throw new Error('boom')"}"#,
                #"{"type":"evaluate","id":3,"expression":"new Promise(() => {})"}"#,
            ]).first)
            func result(_ id: JSON) -> JSON? { viewer.texts("evaluate_result").first { $0["id"] == id } }
            #expect(result(.number(1))?["value"] == .object([
                "title": .string("vnc fixture"), "sum": .number(3),
                "list": .array([.number(1), .string("x"), .bool(true), .null]),
            ]), "\(viewer.texts)")
            #expect(result(.string("e2"))?["error"].string?.contains("Error: boom") == true, "\(viewer.texts)")
            #expect(result(.number(3))?["error"].string?.contains("timed out") == true, "\(viewer.texts)")
            #expect(viewer.texts("error").isEmpty, "\(viewer.texts("error"))")

            // A script that never yields is stopped, and the page still answers afterwards.
            let looping = try #require(try await Client.watch(url, key: keyA, seconds: 3, send: [
                #"{"type":"evaluate","id":4,"expression":"while (true) {}"}"#,
            ]).first)
            #expect(looping.texts("evaluate_result").first?["error"].string?.contains("timed out") == true, "\(looping.texts)")
            let capped = try #require(try await Client.watch(url, key: keyA, seconds: 2, send: [
                #"{"type":"evaluate","id":5,"expression":"document.title"}"#,
                #"{"type":"evaluate","id":6,"expression":"'x'.repeat(2000)"}"#,
                #"{"type":"evaluate","id":7,"expression":"({text: 'x'.repeat(2000)})"}"#,
            ]).first)
            let answers = capped.texts("evaluate_result").sorted { ($0["id"].int ?? 0) < ($1["id"].int ?? 0) }
            #expect(answers.first?["value"].string == "vnc fixture", "\(capped.texts)")
            #expect(answers.dropFirst().allSatisfy { $0["error"].string?.contains("over the cap") == true }, "\(capped.texts)")

            // Three at a time: a fourth is refused at once.
            let busy = try #require(try await Client.watch(url, key: keyA, seconds: 3, send: Array(
                repeating: #"{"type":"evaluate","id":8,"expression":"new Promise(() => {})"}"#, count: 4)).first)
            let errors = busy.texts("evaluate_result").compactMap { $0["error"].string }
            #expect(errors.count == 4)
            #expect(errors.first?.contains("3 evaluations are running") == true, "\(errors)")
            #expect(errors.filter { $0.contains("timed out") }.count == 3, "\(errors)")

            let (_, minted) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens", json: [:])
            let token = try #require(minted["token"].string)
            let viewOnly = try #require(try await Client.watch(
                daemon.streamURL(id, query: "token=\(token)"), seconds: 2,
                send: [#"{"type":"evaluate","id":9,"expression":"window.ran = true"}"#]).first)
            #expect(viewOnly.texts("error").map { $0["message"].string } == ["this viewer has no control permission"])
            #expect(viewOnly.texts("evaluate_result").isEmpty)
            #expect(try await watched(browser, "typeof window.ran").string == "undefined", "nothing ran")
        }
    }
}
