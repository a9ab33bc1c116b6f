import Foundation
import Testing
@testable import ViewportDaemon
import Store
import ViewportCore

@Suite("Running as a systemd service", .serialized)
struct ServiceTests {
    @Test func underSystemdItSaysReadyPetsTheWatchdogLogsForTheJournalAndSaysStopping() async throws {
        let notify = try NotifySocket()
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-notify-\(UUID().uuidString)").path
        // The journal names its stream by device and inode: those of the log file stand in for it.
        let logPath = stateDir + ".log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        var info = stat()
        try #require(stat(logPath, &info) == 0)
        let daemon = try await ChildDaemon.start(stateDir: stateDir, logPath: logPath, environment: [
            "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000", "JOURNAL_STREAM": "\(info.st_dev):\(info.st_ino)",
        ])
        let first = await notify.receive(for: 10) { $0.contains("READY=1") }
        #expect(first.last?.contains("READY=1") == true, "READY=1 once serving: \(first)")
        let pets = await notify.receive(for: 1.2).filter { $0 == "WATCHDOG=1" }
        #expect(pets.count >= 2, "WATCHDOG=1 about every 200 ms for WatchdogSec=600ms: \(pets.count)")
        #expect(try await httpRaw("GET", daemon.base + "/readyz").0 == 200)

        daemon.signal(SIGTERM)
        let last = await notify.receive(for: 10) { $0.contains("STOPPING=1") }
        #expect(last.last?.contains("STOPPING=1") == true, "STOPPING=1 on SIGTERM: \(last)")
        #expect(try await daemon.exitStatus(within: 20) == 0)

        let lines = daemon.log.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("<6>info viewportd:") && $0.contains("listening") }, "\(lines)")
        #expect(lines.allSatisfy { $0.hasPrefix("<") }, "every line carries a priority for the journal")
        #expect(!lines.contains { $0.contains(try! Regex(#"\d{4}-\d\d-\d\dT\d\d:\d\d"#)) }, "no timestamps: the journal adds them")
    }

    @Test func aStuckServiceThreadStopsTheWatchdogPets() async throws {
        let notify = try NotifySocket()
        setenv("NOTIFY_SOCKET", notify.path, 1)
        setenv("WATCHDOG_USEC", "300000", 1)
        try await withDaemon { daemon in
            let before = await notify.receive(for: 5) { $0 == "WATCHDOG=1" }
            unsetenv("WATCHDOG_USEC")  // read once, at start: later daemons do without
            #expect(before.last == "WATCHDOG=1", "pets while the loop turns: \(before)")

            daemon.daemon.loop.enqueue { usleep(1_500_000) }  // the service thread stuck for 1.5 s
            _ = await notify.receive(for: 0.25)  // a pet already decided before the stall may still come
            let duringStall = await notify.receive(for: 1.0).filter { $0 == "WATCHDOG=1" }
            #expect(duringStall.isEmpty, "no pet while the service thread is stuck: \(duringStall.count)")
            let after = await notify.receive(for: 3) { $0 == "WATCHDOG=1" }
            #expect(after.last == "WATCHDOG=1", "pets again once it turns")
            unsetenv("NOTIFY_SOCKET")
        }
    }

    /// One daemon under a config file: SIGHUP swaps the API keys while a viewer watches and a run records; SIGTERM
    /// tells the viewer, finalizes the run into a playable MP4 and exits 0; nothing secret ever reaches the log.
    @Test func sighupReloadsKeysWithoutDroppingAnythingAndSigtermFinalizesTheRecording() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-life-\(UUID().uuidString)").path
        let configPath = stateDir + ".yaml"
        func writeConfig(key: String) throws {
            try Data("""
                log_level: debug
                api_keys: [{key: \(key), organization_id: org_a}]
                webhooks: {secrets: [{organization_id: org_a, secret: \(webhookTestSecret)}]}
                network: {webhook_allow: [127.0.0.0/8]}
                """.utf8).write(to: URL(fileURLWithPath: configPath))
        }
        try writeConfig(key: keyA)
        let daemon = try await ChildDaemon.start(arguments: ["--config", configPath], stateDir: stateDir)
        let base = daemon.base

        let (_, session) = try await requestJSON("POST", base + "/v1/browser_sessions", json: ["browser_address": browser.address])
        let id = try #require(session["browser_session_id"].string)
        try await eventually("attached") { try await requestJSON("GET", base + "/v1/browser_sessions/\(id)").1["status"].string == "running" }
        let (_, minted) = try await requestJSON("POST", base + "/v1/browser_sessions/\(id)/viewer_tokens", json: [:])
        let token = try #require(minted["token"].string)
        let viewer = Task {
            try await Client.watch("ws://127.0.0.1:\(daemon.port)/stream/browser/\(id)?token=\(token)", seconds: 40)
        }
        let (runStatus, run) = try await requestJSON("POST", base + "/v1/browser_sessions/\(id)/runs",
                                                     json: ["run_id": "wr_life", "webhook_url": receiver.url])
        try #require(runStatus == 201, "\(run)")
        let runStarted = Date()
        try await Task.sleep(for: .seconds(1.5))

        try writeConfig(key: keyB)
        daemon.signal(SIGHUP)
        try await eventually("the new key works") {
            try await requestJSON("GET", base + "/v1/runs/wr_life", key: keyB).0 == 200
        }
        #expect(try await requestJSON("GET", base + "/v1/runs/wr_life", key: keyA).0 == 401, "the removed key is refused")
        try await Task.sleep(for: .seconds(1.5))

        let sigtermAfter = Date().timeIntervalSince(runStarted)
        daemon.signal(SIGTERM)
        #expect(try await daemon.exitStatus(within: 90) == 0)
        let watched = try #require(try await viewer.value.first)
        #expect(watched.statuses.last == "shutting_down", "\(watched.statuses)")
        #expect(watched.closeCode == 1001)
        #expect(watched.frames >= 60, "the viewer kept its frames through the reload: \(watched.frames)")

        // The run was finalized before the exit: the next start serves its recording.
        let again = try await ChildDaemon.start(arguments: ["--config", configPath], port: daemon.port, stateDir: stateDir,
                                                logPath: daemon.logPath)
        let (_, done) = try await requestJSON("GET", base + "/v1/runs/wr_life", key: keyB)
        #expect(done["status"].string == "terminated")
        let recordingURL = try #require(done["recording_url"].string)
        let (videoStatus, video) = try await httpRaw("GET", recordingURL)
        try #require(videoStatus == 200)
        let file = try temporaryFile("sigterm.mp4", video)
        #expect(try decodeErrors(file).isEmpty, "the MP4 decodes fully")
        let boxes = topLevelBoxes(video)
        let moov = try #require(boxes.firstIndex(of: "moov"), "\(boxes)"), mdat = try #require(boxes.firstIndex(of: "mdat"), "\(boxes)")
        #expect(moov < mdat, "faststart: \(boxes)")
        let duration = try #require(try ffprobe(file)["format"]["duration"].string.flatMap(Double.init))
        #expect(abs(duration - sigtermAfter) < 1, "the recording runs to the SIGTERM: \(duration) s of \(sigtermAfter) s")
        // The webhook was stored before the exit; it is delivered now if it was not then.
        try await eventually("the webhook is delivered", timeout: 20) { try await !receiver.requests().isEmpty }
        let signature = try #require(try await receiver.requests().first?.headers["x-viewportd-signature"])
        again.signal(SIGTERM)
        #expect(try await again.exitStatus(within: 30) == 0)

        let log = again.log
        #expect(log.contains("browser_session_id=\(id)"), "events carry their session id")
        #expect(log.contains("configuration reloaded"))
        let query = try #require(URLComponents(string: recordingURL)?.queryItems?.first { $0.name == "signature" }?.value)
        for secret in [keyA, keyB, token, webhookTestSecret, signature, String(signature.dropFirst("sha256=".count)), query] {
            #expect(!log.contains(secret), "a secret reached the log: \(secret.prefix(12))…")
        }
        try? FileManager.default.removeItem(atPath: stateDir)
    }

    @Test func metricsCountFramesViewersRecordingsAndRefusals() async throws {
        try await withLiveSession { daemon, _, id in
            _ = try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 2)
            let (_, _) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_metrics"])
            try await Task.sleep(for: .seconds(1))
            let (doneStatus, _) = try await daemon.request("POST", "/v1/runs/wr_metrics/complete", json: ["status": "completed"])
            #expect(doneStatus == 200)
            #expect(try await daemon.request("GET", "/v1/browser_sessions", key: "not-a-key-0123456789").0 == 401)

            let (status, body, headers) = try await get(daemon.base + "/metrics")
            #expect(status == 200 && headers["Content-Type"]?.hasPrefix("text/plain; version=0.0.4") == true)
            let text = String(decoding: body, as: UTF8.self)
            let captured = prometheusSamples(text, "viewportd_frames_captured_total")[""] ?? 0
            let sent = prometheusSamples(text, "viewportd_frames_sent_total")
            #expect(captured >= 30, "frames captured: \(captured)")
            #expect((sent[#"{consumer="viewer"}"#] ?? 0) >= 30 && (sent[#"{consumer="recorder"}"#] ?? 0) >= 10)
            #expect((sent[#"{consumer="viewer"}"#] ?? 0) <= captured, "a viewer is sent only captured frames")
            #expect(prometheusSamples(text, "viewportd_frames_dropped_total").keys.contains(#"{consumer="viewer"}"#))
            let latency = prometheusSamples(text, "viewportd_capture_to_send_seconds_count")
            #expect(latency[#"{consumer="viewer"}"#] == sent[#"{consumer="viewer"}"#], "one latency sample per frame sent")
            #expect((prometheusSamples(text, "viewportd_encode_seconds_count")[""] ?? 0) >= 10)
            let (_, artifacts) = try await daemon.request("GET", "/v1/runs/wr_metrics/artifacts")
            let mp4 = try #require(artifacts.array.first { $0["artifact_type"].string == "recording" }?["file_size"].int)
            #expect((prometheusSamples(text, "viewportd_recording_bytes_total")[""] ?? 0) >= Double(mp4) / 2,
                    "the session's recording holds at least the run's video (\(mp4) bytes)")
            #expect(prometheusSamples(text, "viewportd_sessions")[#"{status="running"}"#] == 1)
            #expect(prometheusSamples(text, "viewportd_viewers")[""] == 0, "the viewer has left")
            #expect(prometheusSamples(text, "viewportd_auth_failures_total")[#"{credential="api_key"}"#] == 1)
            #expect(try await get(daemon.base + "/readyz").0 == 200)
        }
    }

    @Test func sessionsCanBeRenewedUntilTheyEndAndTimeOutOtherwise() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            // Nothing listens there: the session stays created (open) and retries.
            let (_, created) = try await daemon.request("POST", "/v1/browser_sessions",
                                                       json: ["browser_address": "http://127.0.0.1:9", "timeout": 5])
            let id = try #require(created["browser_session_id"].string)
            let firstExpiry = try #require(created["expires_at"].string.flatMap(parseISO))
            #expect(abs(firstExpiry.timeIntervalSinceNow - 300) < 5)

            let (status, renewed) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/renew", json: ["timeout": 30])
            #expect(status == 200 && renewed["timeout"].int == 30)
            let expiry = try #require(renewed["expires_at"].string.flatMap(parseISO))
            #expect(abs(expiry.timeIntervalSinceNow - 1800) < 5, "30 minutes from now")
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/renew", json: ["timeout": 2]).0 == 422)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/renew", key: keyB).0 == 404)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/pbs_nope/renew").0 == 404)

            daemon.daemon.sessions.closeExpired(now: expiry.addingTimeInterval(-10))
            #expect(try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "created")
            daemon.daemon.sessions.closeExpired(now: expiry.addingTimeInterval(1))
            try await eventually("the timeout closes it") {
                try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "closed"
            }
            let (closedStatus, closed) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/renew")
            #expect(closedStatus == 409 && closed["detail"].string?.contains("closed") == true)
        }
    }
}

@Suite("Retention")
struct RetentionTests {
    @Test func theOldestClosedSessionsGoFirstAndAnOpenSessionsArtifactsNever() async throws {
        try await withDaemon { daemon in
            let store = daemon.daemon.store, files = daemon.daemon.files
            let now = Date()
            // Three sessions, 1000 bytes of artifacts each: two closed (3 days and 1 day ago) and one open.
            var ids: [String: [String]] = [:]
            for (session, closedDaysAgo) in [("pbs_old", 3.0), ("pbs_recent", 1.0), ("pbs_open", nil)] as [(String, Double?)] {
                var record = SessionRecord(id: session, organizationID: "org_a", status: closedDaysAgo == nil ? .running : .closed,
                                           createdAt: now.addingTimeInterval(-5 * 86400), modifiedAt: now,
                                           timeoutMinutes: 60, browserAddress: "http://127.0.0.1:9")
                record.completedAt = closedDaysAgo.map { now.addingTimeInterval(-$0 * 86400) }
                try store.insert(record)
                for index in 0..<2 {
                    let run = "wr_\(session.dropFirst(4))"
                    let directory = try files.runDirectory(organizationID: "org_a", sessionID: session, runID: run)
                    let path = "\(directory)/step-\(index).jpg"
                    try files.write(Data(repeating: UInt8(index), count: 500), to: path)
                    let artifactID = "art_\(session.dropFirst(4))_\(index)"
                    try await store.insert(ArtifactRecord(id: artifactID, kind: .screenshot, runID: run, sessionID: session,
                                                    organizationID: "org_a", step: index, path: path, filename: "s.jpg",
                                                    fileSize: 500, checksum: "00", contentType: "image/jpeg",
                                                    createdAt: now.addingTimeInterval(-4 * 86400), modifiedAt: now))
                    ids[session, default: []].append(artifactID)
                }
            }
            func content(_ id: String) async throws -> (Int, JSON) {
                try await daemon.request("GET", "/v1/artifacts/\(id)/content")
            }

            // 3000 bytes against a 2500-byte budget: the session closed longest ago goes, whole.
            var config = daemon.daemon.config
            config.retention.maxDiskGB = 2500e-9
            let sweep = try await Retention(store: store, files: files, bucket: nil, config: config, logger: .init(label: "test")).sweep(now: now)
            #expect(Set(sweep.expired) == Set(ids["pbs_old"]!) && sweep.bytesLeft == 2000)
            let (expiredStatus, expired) = try await content(ids["pbs_old"]![0])
            #expect(expiredStatus == 404 && expired["detail"].string == "artifact expired")
            #expect(try await content(ids["pbs_recent"]![0]).0 == 200)
            #expect(!FileManager.default.fileExists(atPath: files.root.appendingPathComponent("org_a/pbs_old").path),
                    "its files and directories are gone")

            // A budget nothing fits: the other closed session goes, the open one stays.
            config.retention.maxDiskGB = 1e-9
            let second = try await Retention(store: store, files: files, bucket: nil, config: config, logger: .init(label: "test")).sweep(now: now)
            #expect(Set(second.expired) == Set(ids["pbs_recent"]!) && second.bytesLeft == 1000)
            for id in ids["pbs_open"]! { #expect(try await content(id).0 == 200, "an open session's artifact stays") }

            // Age: once the open session is closed, its 4-day-old artifacts outlive a 3-day limit no longer.
            var open = try #require(try await store.session(id: "pbs_open"))
            (open.status, open.completedAt) = (.closed, now)
            try store.update(open)
            config.retention.maxDiskGB = 50
            config.retention.maxAgeDays = 3
            let third = try await Retention(store: store, files: files, bucket: nil, config: config, logger: .init(label: "test")).sweep(now: now)
            #expect(Set(third.expired) == Set(ids["pbs_open"]!) && third.bytesLeft == 0)
        }
    }
}
