import Foundation
import Testing
@testable import ViewportDaemon

/// What the page of `input.html` recorded of the input that reached it.
private func recorded(_ browser: Chromium) async throws -> [JSON] {
    let result = try await Client.cdp(browser, "Runtime.evaluate",
                                      ["expression": "JSON.stringify(window.recorded)", "returnByValue": true], page: "input.html")
    return try JSONDecoder().decode(JSON.self, from: Data((result["result"]["value"].string ?? "[]").utf8)).array
}

private func errors(_ viewer: ViewerResult) -> [String] {
    viewer.texts.filter { $0["type"].string == "error" }.compactMap { $0["message"].string }
}

private func controllers(_ viewer: ViewerResult) -> [String] {
    viewer.texts.filter { $0["type"].string == "control" }.compactMap { $0["controller"].string }
}

@Suite("Viewer control of the browser", .serialized)
struct ViewerControlTests {
    @Test func inputReachesThePageClampedToTheFrameWithModifiersMaskedTo4Bits() async throws {
        try await withLiveSession(page: "input.html") { daemon, browser, id in
            // Coordinates are clamped to the latest frame: a watcher makes the browser send one first.
            async let watcher = Client.watch(daemon.streamURL(id), key: keyA, seconds: 6)
            try await eventually("a first frame") { daemon.daemon.sessions.hub(id: id)?.latest != nil }
            let viewer = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 3, send: [
                #"{"type":"take-control"}"#,
                // Far outside the frame, with bit 16 set beside Ctrl (2): the page gets its corner and Ctrl alone.
                #"{"type":"mouse","event":"mousePressed","x":99999,"y":-50,"modifiers":18}"#,
                #"{"type":"mouse","event":"mouseReleased","x":99999,"y":-50}"#,
                #"{"type":"wheel","x":200,"y":200,"delta_y":400}"#,
                #"{"type":"key","event":"keyDown","key":"q"}"#,
            ]).first)
            #expect(errors(viewer).isEmpty, "\(errors(viewer))")
            #expect(controllers(viewer) == ["agent", "viewer"])
            var events: [JSON] = []
            try await eventually("the input reached the page") {
                events = try await recorded(browser)
                return events.contains { $0["type"].string == "keydown" }
            }
            let press = try #require(events.first { $0["type"].string == "mousedown" }, "\(events)")
            let width = try #require(press["width"].double)
            #expect((width - 3...width).contains(press["x"].double ?? -1), "clamped to the right edge: \(press)")
            #expect(press["y"].double == 0, "clamped to the top: \(press)")
            #expect(press["ctrl"].bool == true && press["shift"].bool == false && press["alt"].bool == false
                    && press["meta"].bool == false, "modifiers masked to Ctrl: \(press)")
            #expect(events.contains { $0["type"].string == "mouseup" })
            #expect(events.first { $0["type"].string == "wheel" }?["deltaY"].double == 400, "\(events)")
            #expect(events.first { $0["type"].string == "keydown" }?["key"].string == "q")
            let scrolled = try await Client.cdp(browser, "Runtime.evaluate", ["expression": "scrollY", "returnByValue": true],
                                                page: "input.html")
            #expect((scrolled["result"]["value"].double ?? 0) > 0, "the wheel scrolled the page down")
            _ = try await watcher
        }
    }

    @Test func navigateLoadsAnHTTPPageAndOtherSchemesAreRefused() async throws {
        try await withLiveSession(page: "input.html") { daemon, browser, id in
            let target = daemon.base + "/healthz"
            // Input goes to the tab being shown, so wait until one is (before that it is dropped, as documented).
            async let watcher = Client.watch(daemon.streamURL(id), key: keyA, seconds: 4)
            try await eventually("a first frame") { daemon.daemon.sessions.hub(id: id)?.latest != nil }
            let viewer = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 3, send: [
                #"{"type":"take-control"}"#,
                #"{"type":"navigate","url":"file:///etc/passwd"}"#,
                #"{"type":"navigate","url":"\#(target)"}"#,
            ]).first)
            #expect(errors(viewer) == ["url must be an http:// or https:// URL of at most 2083 characters"])
            try await eventually("the page navigated") {
                try await Client.cdp(browser, "Target.getTargets")["targetInfos"].array
                    .contains { $0["type"].string == "page" && $0["url"].string == target }
            }
            _ = try await watcher
        }
    }

    @Test func oneViewerControlsAtATimeAndControlReturnsToTheAgentWhenItLeaves() async throws {
        try await withLiveSession(page: "input.html") { daemon, browser, id in
            async let first = Client.watch(daemon.streamURL(id), key: keyA, seconds: 3, send: [#"{"type":"take-control"}"#])
            try await Task.sleep(for: .seconds(1.5))
            let second = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 5, send: [
                #"{"type":"take-control"}"#, #"{"type":"key","event":"keyDown","key":"z"}"#, #"{"type":"cede-control"}"#,
            ]).first)
            let controller = try #require(try await first.first)
            #expect(controllers(controller) == ["agent", "viewer"])
            #expect(errors(controller).isEmpty)
            // The second joined while the first was in control; it was refused, then told when the first left.
            #expect(controllers(second) == ["viewer", "agent"])
            #expect(errors(second) == ["another viewer is in control", "take control first", "this viewer is not in control"])
            #expect(try await recorded(browser).isEmpty, "nothing of the refused viewer reached the page")
        }
    }

    @Test func aViewerWithoutControlPermissionCannotDriveTheBrowser() async throws {
        try await withLiveSession(page: "input.html") { daemon, browser, id in
            let (_, minted) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens", json: [:])
            let token = try #require(minted["token"].string)
            let viewer = try #require(try await Client.watch(daemon.streamURL(id, query: "token=\(token)"), seconds: 2, send: [
                #"{"type":"take-control"}"#, #"{"type":"mouse","event":"mousePressed","x":10,"y":10}"#,
            ]).first)
            #expect(viewer.hello?["control_permitted"].bool == false)
            #expect(errors(viewer) == ["this viewer has no control permission", "this viewer has no control permission"])
            #expect(controllers(viewer) == ["agent"])
            #expect(try await recorded(browser).isEmpty)
        }
    }
}

@Suite("Viewer handshake", .serialized)
struct ViewerHandshakeTests {
    /// Nothing listens there: a session on it stays "created", its source never attached.
    static let unreachable = "http://127.0.0.1:9"

    @Test func aFormatOtherThanBinaryOrJSONIs400() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            let (_, created) = try await daemon.request("POST", "/v1/browser_sessions", json: ["browser_address": Self.unreachable])
            let id = try #require(created["browser_session_id"].string)
            let viewer = try #require(try await Client.watch(daemon.streamURL(id, query: "format=png"), key: keyA, seconds: 1).first)
            #expect(viewer.handshakeStatus == 400)
            let body = try JSONDecoder().decode(JSON.self, from: Data((viewer.body ?? "").utf8))
            #expect(body["detail"].string == "format must be binary or json")
        }
    }

    // docs/protocol.md lists 503 only for a daemon shutting down; before its source attaches, a session's viewers are
    // accepted and told there is no frame yet (hello with width and height 0).
    @Test func aViewerJoiningBeforeTheSourceAttachesIsAcceptedAndToldThereIsNoFrameYet() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            let (_, created) = try await daemon.request("POST", "/v1/browser_sessions", json: ["browser_address": Self.unreachable])
            let id = try #require(created["browser_session_id"].string)
            let viewer = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 1.5).first)
            #expect(viewer.handshakeStatus == 101)
            #expect(viewer.hello?["width"].int == 0 && viewer.hello?["height"].int == 0)
            #expect(viewer.frames == 0)
            #expect((viewer.closedAfter ?? 0) >= 1.4, "stays connected until it leaves: \(viewer.closedAfter ?? -1) s")
        }
    }

    @Test func theHandshakeIs503WhileTheDaemonShutsDown() async throws {
        try await withLiveSession { daemon, _, id in
            // While it shuts down, the daemon tells its viewers goodbye (waiting up to 2 s for one that never reads)
            // and finalizes recordings before its listener stops: the window a new viewer must be refused in.
            let stalled = try Client.startStalledViewer(daemon.streamURL(id), key: keyA, seconds: 20)
            defer { kill(stalled.processIdentifier, SIGKILL) }
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_shutdown"]).0 == 201)
            try await eventually("the stalled viewer is connected") { daemon.daemon.viewerStats(sessionID: id).count == 1 }
            try await Task.sleep(for: .seconds(2))  // its socket fills up
            let handshake = "GET /stream/browser/\(id) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nx-api-key: \(keyA)\r\n\r\n"
            let port = Int(daemon.daemon.port)
            let stopping = Task { await daemon.stop() }
            var answers: [String] = []
            while let (answer, _) = try? HostilePeerTests.raw(port, handshake, timeout: 2), !answer.isEmpty {
                answers.append(answer)
                if !answer.hasPrefix("HTTP/1.1 101") { break }
            }
            await stopping.value
            let refused = try #require(answers.last { !$0.hasPrefix("HTTP/1.1 101") },
                                       "no handshake was refused while shutting down: \(answers.map { $0.prefix(12) })")
            #expect(refused.hasPrefix("HTTP/1.1 503"), "\(refused)")
            #expect(refused.contains("{\"detail\":\"viewportd is shutting down\"}"), "\(refused)")
        }
    }
}
