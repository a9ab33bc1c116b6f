import Foundation
import Testing
@testable import ViewportDaemon

/// Fixtures/proxy.py: a loopback TCP proxy to a browser's DevTools port whose connections can be dropped.
private final class DevToolsProxy: Sendable {
    let process: Process
    let port: Int

    init(to browser: Chromium) throws {
        let target = try #require(URL(string: browser.address))
        process = Process()
        process.executableURL = URL(fileURLWithPath: Client.python)
        process.arguments = [Fixtures.directory.appendingPathComponent("proxy.py").path,
                             "\(target.host ?? "127.0.0.1"):\(target.port ?? 0)"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        var line = Data()
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != UInt8(ascii: "\n") { line.append(byte) }
        port = Int(String(decoding: line, as: UTF8.self)) ?? 0
        if port == 0 { kill(process.processIdentifier, SIGKILL) }
        try #require(port > 0, "proxy.py did not say its port")
    }

    /// Aborts every connection it carries; new ones are accepted as before.
    func drop() { kill(process.processIdentifier, SIGUSR1) }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

@Suite("Reconnecting to the browser", .serialized)
struct ReconnectTests {
    @Test func aDroppedDevToolsConnectionIsMadeAgainAndViewersAreToldReconnectingThenRunning() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let proxy = try DevToolsProxy(to: browser)
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
