import Foundation
import Testing
@testable import ViewportDaemon

@Suite("Reconnecting to the browser", .serialized)
struct ReconnectTests {
    @Test func aDroppedDevToolsConnectionIsMadeAgainAndViewersAreToldReconnectingThenRunning() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let proxy = try LoopbackProxy(to: browser.address)
        defer { proxy.stop() }
        try await withDaemon({ $0.cdp.retrySeconds = 60 }) { daemon in
            let (status, created) = try await daemon.request("POST", "/v1/browser_sessions",
                                                            json: ["browser_address": "http://127.0.0.1:\(proxy.port)"])
            try #require(status == 201, "\(created)")
            let id = try #require(created["browser_session_id"].string)
            try await eventually("attached through the proxy") {
                try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "running"
            }

            async let watched = Client.watch(daemon.streamURL(id), key: keyA, seconds: 8)
            try await Task.sleep(for: .seconds(2))
            proxy.drop()
            let viewer = try #require(try await watched.first)
            #expect(viewer.statuses == ["reconnecting", "running"], "\(viewer.texts)")
            #expect((viewer.closedAfter ?? 0) >= 7.5, "the viewer stays connected through the reconnect: \(viewer.closedAfter ?? -1) s")
            #expect(zip(viewer.sequences, viewer.sequences.dropFirst()).allSatisfy { $0 < $1 })
            #expect(try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "running")

            // A viewer joining after the reconnect is told the session runs, right after hello, and gets frames.
            let late = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 3, frames: 3).first)
            #expect(late.texts.map { $0["type"].string ?? "" }.prefix(3) == ["hello", "control", "status"], "\(late.texts)")
            #expect(late.statuses == ["running"])
            #expect(late.frames == 3)
        }
    }
}
