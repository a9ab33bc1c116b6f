import Foundation
import Logging
import Synchronization
import Testing
import ViewportCore
import WebSocketIO
@testable import CDPSource

/// Answers every request with a small CSV sent as an attachment.
private final class AttachmentServer: HTTPServerDelegate {
    static let body = Data("quarter,revenue\nQ3,42\n".utf8)
    let loop: EventLoop

    init() throws {
        loop = try EventLoop(.init(host: "127.0.0.1", port: 0))
        loop.start(server: self)
    }

    var address: String { "http://127.0.0.1:\(loop.port ?? 0)" }

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        HTTPResponse(status: 200, contentType: "text/csv",
                     headers: [("Content-Disposition", #"attachment; filename="q3 report.csv""#)], body: Self.body)
    }

    func upgrade(_ request: HTTPRequest) -> WebSocketUpgrade {
        .reject(HTTPResponse(status: 404, contentType: "text/plain", body: Data()))
    }
}

/// A headless Chromium with DevTools on a loopback port, killed (SIGKILL: the test runner blocks SIGTERM) when done.
private final class HeadlessChromium {
    let process = Process()
    let profile = FileManager.default.temporaryDirectory.appendingPathComponent("cdpsource-chromium-\(UUID().uuidString)")
    private(set) var address = ""

    init() async throws {
        let binary = try #require(["/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"]
            .first { FileManager.default.isExecutableFile(atPath: $0) }, "no Chromium installed")
        try FileManager.default.createDirectory(at: profile, withIntermediateDirectories: true)
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--headless=new", "--no-sandbox", "--remote-debugging-port=0",
                             "--remote-debugging-address=127.0.0.1", "--user-data-dir=\(profile.path)", "--no-first-run",
                             "--disable-dev-shm-usage", "--disable-background-networking", "--disable-component-update",
                             "--window-size=640,360", "about:blank"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline, process.isRunning {
            if let text = try? String(contentsOf: profile.appendingPathComponent("DevToolsActivePort"), encoding: .utf8),
               let port = text.split(separator: "\n").first.flatMap({ Int($0) }), port > 0
            {
                address = "http://127.0.0.1:\(port)"
                return
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        kill()
        Issue.record("Chromium opened no DevTools port within 30 s")
        throw CancellationError()
    }

    func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExited()
        }
        try? FileManager.default.removeItem(at: profile)
    }
}

@Suite("Downloads in Chromium", .serialized)
struct DownloadTests {
    @Test func aDownloadIsSavedUnderItsGuidAndReportedWithItsSuggestedName() async throws {
        let server = try AttachmentServer()
        defer { server.loop.shutdown() }
        let chromium = try await HeadlessChromium()
        defer { chromium.kill() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("cdpsource-downloads-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }

        let downloads = Mutex<[CDPDownload]>([])
        var options = CDPSource.Options()
        options.downloadPath = directory.path
        options.onDownload = { download in downloads.withLock { $0.append(download) } }
        let loop = try EventLoop(.init(port: nil))
        loop.start(server: nil)
        defer { loop.shutdown() }
        let hub = FrameHub()
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let source = CDPSource(address: chromium.address, hub: hub, loop: loop, options: options, logger: logger) { _ in }
        source.start()
        defer { source.stop() }

        // A viewer: the active tab is shown once its first frame arrives, and navigation goes to it.
        let subscription = hub.subscribe(kind: .viewer, capacity: 10) {}
        defer { subscription.cancel() }
        #expect(try await eventually { subscription.next() != nil }, "no frame of the tab")
        source.deliver(.navigate(url: server.address + "/export"))

        #expect(try await eventually { downloads.withLock { !$0.isEmpty } }, "no download reported")
        let first = downloads.withLock { $0.first }
        let download = try #require(first)
        #expect(download.suggestedFilename == "q3 report.csv")
        #expect(download.path == directory.appendingPathComponent(download.guid).path)
        #expect(download.size == Int64(AttachmentServer.body.count))
        #expect(FileManager.default.contents(atPath: download.path) == AttachmentServer.body)
    }
}

/// Polls `condition` for up to `seconds` (the machine may be busy with other suites).
private func eventually(seconds: Double = 20, _ condition: () -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return false
}
