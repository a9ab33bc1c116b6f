import Foundation
import Testing
@testable import ViewportDaemon

/// What an operator relies on: readiness, reload warnings, session timeouts.
@Suite("Operations", .serialized)
struct OperationsTests {
    @Test func readyzIs503WhileTheStoreTakesNoWritesAnd200Again() async throws {
        try await withDaemon { daemon in
            #expect(try await daemon.request("GET", "/readyz", key: nil).0 == 200)
            // Another process holds the database's write lock for longer than the store waits for it (5 s).
            let holder = Process()
            holder.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            holder.arguments = ["-c", """
                import sqlite3, sys, time
                db = sqlite3.connect(sys.argv[1], isolation_level=None)
                db.execute("BEGIN IMMEDIATE")
                print("locked", flush=True)
                time.sleep(9)
                """, daemon.stateDir + "/viewportd.sqlite"]
            let output = Pipe()
            holder.standardOutput = output
            try holder.run()
            defer { kill(holder.processIdentifier, SIGKILL) }
            var byte: UInt8 = 0
            _ = read(output.fileHandleForReading.fileDescriptor, &byte, 1)  // "locked"
            let (status, body) = try await daemon.request("GET", "/readyz", key: nil)
            #expect(status == 503)
            #expect(body["status"].string == "not ready")
            #expect(body["detail"].string?.hasPrefix("the store does not take writes") == true, "\(body)")
            #expect(try await daemon.request("GET", "/healthz", key: nil).0 == 200, "the process still answers")
            kill(holder.processIdentifier, SIGKILL)
            holder.waitUntilExit()
            #expect(try await daemon.request("GET", "/readyz", key: nil).0 == 200)
        }
    }

    @Test func sighupWarnsNamingTheKeysThatApplyAtTheNextStart() async throws {
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-hup-\(UUID().uuidString)").path
        let configPath = stateDir + ".yaml"
        func writeConfig(queueFrames: Int, sweep: Int) throws {
            try Data("""
                api_keys: [{key: \(keyA), organization_id: org_a}]
                viewer: {queue_frames: \(queueFrames)}
                retention: {sweep_interval_seconds: \(sweep)}
                """.utf8).write(to: URL(fileURLWithPath: configPath))
        }
        try writeConfig(queueFrames: 2, sweep: 300)
        let daemon = try await ChildDaemon.start(arguments: ["--config", configPath], stateDir: stateDir)
        defer { daemon.signal(SIGKILL) }
        try writeConfig(queueFrames: 3, sweep: 60)
        daemon.signal(SIGHUP)
        try await eventually("the reload is logged") { daemon.log.contains("take effect at the next start") }
        let warning = try #require(daemon.log.split(separator: "\n").first { $0.contains("take effect at the next start") })
        #expect(warning.contains("viewer.queue_frames") && warning.contains("retention.sweep_interval_seconds"), "\(warning)")
        #expect(!warning.contains("api_keys"), "api_keys apply at once: \(warning)")
        #expect(try await requestJSON("GET", daemon.base + "/v1/browser_sessions").0 == 200, "still serving")
    }

    // A session's shortest timeout is 5 minutes and the daemon has no hook to shorten its clock, so this waits for
    // the real timer: run it with VIEWPORTD_SLOW_TESTS=1.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["VIEWPORTD_SLOW_TESTS"] != nil, "waits 5 minutes"))
    func theSessionTimerClosesASessionAtItsTimeout() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            let (_, created) = try await daemon.request("POST", "/v1/browser_sessions",
                                                        json: ["browser_address": "http://127.0.0.1:9", "timeout": 5])
            let id = try #require(created["browser_session_id"].string)
            try await Task.sleep(for: .seconds(290))
            #expect(try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "created")
            try await eventually("the timer closes it", timeout: 20) {
                try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "closed"
            }
        }
    }
}
