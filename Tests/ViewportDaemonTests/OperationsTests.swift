import Foundation
import Testing
import Store
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
            holder.waitUntilExited()
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

    /// The daemon's own timer closes a session whose timeout has passed. A session's shortest timeout is 5
    /// minutes, so the test ages one in the store while the daemon is stopped, rather than waiting: the next
    /// daemon re-attaches it, and within a tick of its timer it is closed; a session with time left stays open.
    @Test func theSessionTimerClosesASessionWhoseTimeoutHasPassed() async throws {
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-expiry-\(UUID().uuidString)").path
        let configure: (inout Config) -> Void = { $0.cdp.retrySeconds = 3600 }  // nothing listens: they stay open
        let (expiring, lasting) = try await withDaemon(stateDir: stateDir, configure) { daemon in
            let create = { (timeout: Int) async throws -> String in
                let (_, created) = try await daemon.request("POST", "/v1/browser_sessions",
                                                            json: ["browser_address": "http://127.0.0.1:9", "timeout": timeout])
                return try #require(created["browser_session_id"].string)
            }
            return (try await create(5), try await create(60))
        }
        let store = try SQLiteStore(path: stateDir + "/viewportd.sqlite")
        var aged = try #require(try await store.session(id: expiring))
        aged.createdAt = Date().addingTimeInterval(-6 * 60)
        try store.update(aged)

        try await withDaemon(stateDir: stateDir, configure) { daemon in
            var closed = JSON.null
            try await eventually("the timer closes the expired session", timeout: 10) {
                closed = try await daemon.request("GET", "/v1/browser_sessions/\(expiring)").1
                return closed["status"].string == "closed"
            }
            #expect(closed["completed_at"].string != nil && closed["expires_at"].isNull, "\(closed)")
            let (_, open) = try await daemon.request("GET", "/v1/browser_sessions/\(lasting)")
            #expect(open["status"].string == "created", "a session with time left stays open: \(open)")
        }
    }
}
