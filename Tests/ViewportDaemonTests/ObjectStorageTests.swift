import Digests
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import ObjectStore
import Testing
import ViewportCore
@testable import ViewportDaemon

/// The daemon's config for `artifacts.store: s3` against `server`, with short waits so the tests stay short.
func storingIn(_ server: S3Server, segmentSeconds: Int = 2, _ more: @escaping (inout Config) -> Void = { _ in })
    -> (inout Config) -> Void
{
    { config in
        config.artifacts.store = .s3
        config.s3.endpoint = server.endpoint
        config.s3.bucket = server.bucket
        config.s3.accessKeyID = S3Server.accessKey
        config.s3.secretAccessKey = S3Server.secretKey
        config.s3.prefix = "live-test"
        config.s3.segmentSeconds = segmentSeconds
        config.s3.retryMaxSeconds = 2
        config.s3.timeoutSeconds = 5
        config.webhooks.secrets = ["org_a": webhookTestSecret]
        more(&config)
    }
}

/// Files left under a state directory's artifacts (recordings in progress aside).
func localArtifactFiles(_ stateDir: String) -> [String] {
    let root = stateDir + "/artifacts"
    return (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).filter { path in
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: root + "/" + path, isDirectory: &directory) && !directory.boolValue
            && !path.hasSuffix(".fmp4")
    }
}

@Suite("Artifacts in object storage with a real S3 server and Chromium", .serialized)
struct ObjectStorageTests {
    @Test func aRunsRecordingAndScreenshotsLandInTheBucketAndTheirURLsPlayFromIt() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        let s3 = server.client()
        try await withLiveSession(page: "anim.html", storingIn(server)) { daemon, _, id in
            let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs",
                                                         json: ["run_id": "wr_s3one", "webhook_url": receiver.url])
            try #require(status == 201, "\(run)")
            for label in ["open", "submit"] {
                try await Task.sleep(for: .milliseconds(1500))
                let (stepStatus, step) = try await daemon.request("POST", "/v1/runs/wr_s3one/steps", json: ["label": label])
                try #require(stepStatus == 201, "\(step)")
            }
            try await Task.sleep(for: .seconds(2))
            let (doneStatus, done) = try await daemon.request("POST", "/v1/runs/wr_s3one/complete", json: ["status": "completed"])
            try #require(doneStatus == 200, "\(done)")

            // Every artifact is in the bucket under its key, with its size, type and checksum; the local copies go.
            var artifacts: [JSON] = []
            try await eventually("the artifacts are stored and their URLs point at the bucket", timeout: 30) {
                artifacts = try await daemon.request("GET", "/v1/runs/wr_s3one/artifacts").1.array
                return artifacts.count == 4 && artifacts.allSatisfy { $0["url"].string?.hasPrefix(server.endpoint) == true }
            }
            let prefix = "live-test/org_a/\(id)/wr_s3one/"
            let objects = try await offThread { try s3.listObjects(prefix: prefix) }
            #expect(Set(objects.map { String($0.key.dropFirst(prefix.count)) })
                == ["recording.mp4", "step-001.jpg", "step-002.jpg", "final.jpg"])
            for artifact in artifacts {
                let name = try #require(artifact["filename"].string?.replacingOccurrences(of: "wr_s3one-", with: "")
                    .replacingOccurrences(of: "wr_s3one.mp4", with: "recording.mp4"))
                let head = try #require(try await offThread { try s3.headObject(key: prefix + name) }, "\(name)")
                #expect(Int(head.size) == artifact["file_size"].int)
                #expect(head.contentType == artifact["content_type"].string)
                #expect(head.metadata["sha256"] == artifact["checksum"].string)
                let (getStatus, bytes) = try await httpRaw("GET", try #require(artifact["url"].string))
                #expect(getStatus == 200 && Digest.sha256(bytes).hex == artifact["checksum"].string, "\(name)")
            }
            #expect(localArtifactFiles(daemon.stateDir).isEmpty, "\(localArtifactFiles(daemon.stateDir))")

            // The artifact route redirects to a fresh presigned URL; a tampered one is refused by the server.
            let recording = try #require(artifacts.first { $0["artifact_type"].string == "recording" })
            let artifactID = try #require(recording["artifact_id"].string)
            let location = try await redirectLocation(daemon.base + "/v1/artifacts/\(artifactID)/content", key: keyA)
            #expect(location?.hasPrefix(server.endpoint + "/") == true && location?.contains("X-Amz-Signature=") == true)
            let presigned = try #require(recording["url"].string)
            let tampered = presigned.replacingOccurrences(of: "wr_s3one/recording.mp4", with: "wr_s3one/final.jpg")
            #expect(try await httpRaw("GET", tampered).0 == 403, "another key under the same signature")

            // The webhook went once everything was stored, with URLs of the bucket.
            try await eventually("the webhook is delivered", timeout: 20) { try await receiver.requests().count == 1 }
            let body = try JSONDecoder().decode(JSON.self, from: try await receiver.requests()[0].body)
            #expect(body["recording_url"].string?.hasPrefix(server.endpoint) == true, "\(body)")
            #expect(body["screenshot_urls"].array.count == 3)
            #expect(body["screenshot_urls"].array.allSatisfy { $0.string?.hasPrefix(server.endpoint) == true })

            // Recovering a run its host completed adopts what the host published: same MP4, same status.
            let (exit, output) = try runProcess(viewportdBinary, ["recover-run", "wr_s3one"], environment: [
                "VIEWPORTD_STATE_DIR": FileManager.default.temporaryDirectory.appendingPathComponent("vp-adopt-\(UUID().uuidString)").path,
                "VIEWPORTD_ARTIFACTS_STORE": "s3", "VIEWPORTD_S3_ENDPOINT": server.endpoint, "VIEWPORTD_S3_BUCKET": server.bucket,
                "VIEWPORTD_S3_PREFIX": "live-test", "AWS_ACCESS_KEY_ID": S3Server.accessKey,
                "AWS_SECRET_ACCESS_KEY": S3Server.secretKey, "VIEWPORTD_LOG_LEVEL": "error",
            ])
            try #require(exit == 0, "\(output)")
            let adopted = try JSONDecoder().decode(JSON.self, from: Data((output.split(separator: "\n").last ?? "").utf8))
            #expect(adopted["status"].string == "completed", "\(adopted)")
            let head = try #require(try await offThread { try s3.headObject(key: prefix + "recording.mp4") })
            #expect(head.metadata["sha256"] == recording["checksum"].string, "the host's MP4 is kept, not rebuilt")

            // A browser plays the recording straight from the bucket: its duration is the run's, seeking lands.
            let (_, got) = try await daemon.request("GET", "/v1/runs/wr_s3one")
            let length = try #require(got["finished_at"].string.flatMap(parseISO))
                .timeIntervalSince(try #require(got["started_at"].string.flatMap(parseISO)))
            let player = try await Chromium.launch(url: Fixtures.url("video.html") + "#"
                + (presigned.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""))
            defer { player.terminate() }
            try await eventually("the player page is up") {
                try await Client.cdp(player, "Runtime.evaluate", ["expression": "typeof window.seek", "returnByValue": true],
                                     page: "video.html")["result"]["value"].string == "function"
            }
            let duration = try await Client.cdp(player, "Runtime.evaluate", [
                "expression": "window.loaded", "awaitPromise": true, "returnByValue": true,
            ], page: "video.html")["result"]["value"].double
            #expect(abs((duration ?? 0) - length) < 0.5, "video \(duration ?? -1) s for a run of \(length) s")
            let seek = try await Client.cdp(player, "Runtime.evaluate", [
                "expression": "window.seek(\(length / 2))", "awaitPromise": true, "returnByValue": true,
            ], page: "video.html")["result"]["value"]
            #expect(abs((seek["time"].double ?? -1) - length / 2) < 0.1, "\(seek)")
            #expect((seek["ready"].int ?? 0) >= 2, "the frame at the seek position is decoded: \(seek)")
            let errors = try await Client.cdp(player, "Runtime.evaluate", [
                "expression": "JSON.stringify(window.errors)", "returnByValue": true,
            ], page: "video.html")["result"]["value"].string
            #expect(errors == "[]")
        }
    }
}

@Suite("Object storage outages and lost hosts", .serialized)
struct ObjectStorageRecoveryTests {
    @Test func aGracefulStopUploadsWhatTheRunsItCompletesPublish() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let daemon = try await TestDaemon.start(storingIn(server))
        let id = try await daemon.createSession(browser)
        let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_stop"])
        try #require(status == 201, "\(run)")
        try await Task.sleep(for: .seconds(2))
        await daemon.stop()
        let prefix = "live-test/org_a/\(id)/wr_stop/"
        let keys = try await offThread { try server.client().listObjects(prefix: prefix) }.map(\.key)
        #expect(Set(keys) == [prefix + "recording.mp4", prefix + "final.jpg"], "\(keys)")
        #expect(localArtifactFiles(daemon.stateDir).isEmpty, "\(localArtifactFiles(daemon.stateDir))")
    }

    @Test func aBucketDownDuringARunAndAMinuteAfterLosesNothingAcrossARestart() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-s3down-\(UUID().uuidString)").path
        let configure = storingIn(server)
        var daemon = try await TestDaemon.start(stateDir: stateDir, configure)
        let id = try await daemon.createSession(browser)
        let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs",
                                                     json: ["run_id": "wr_s3down", "webhook_url": receiver.url])
        try #require(status == 201, "\(run)")
        try await Task.sleep(for: .seconds(3))
        server.stopAndKeepData()
        let (stepStatus, _) = try await daemon.request("POST", "/v1/runs/wr_s3down/steps", json: ["label": "while down"])
        #expect(stepStatus == 201, "a step does not wait for the bucket")
        try await Task.sleep(for: .seconds(2))
        let (doneStatus, done) = try await daemon.request("POST", "/v1/runs/wr_s3down/complete", json: ["status": "completed"])
        try #require(doneStatus == 200, "\(done)")

        // Meanwhile the URLs point at this host's copies, which serve their bytes.
        func checkServedLocally() async throws {
            let artifacts = try await daemon.request("GET", "/v1/runs/wr_s3down/artifacts").1.array
            #expect(artifacts.count == 3)
            for artifact in artifacts {
                let url = try #require(artifact["url"].string)
                #expect(url.hasPrefix(daemon.base), "\(url)")
                let (getStatus, bytes) = try await httpRaw("GET", url)
                #expect(getStatus == 200 && Digest.sha256(bytes).hex == artifact["checksum"].string)
            }
        }
        try await checkServedLocally()
        try await Task.sleep(for: .seconds(25))
        #expect(try await receiver.requests().isEmpty, "the webhook waits for the bucket")

        // viewportd restarts while the bucket is still down; what was pending is still pending.
        await daemon.stop()
        daemon = try await TestDaemon.start(stateDir: stateDir, configure)
        try await checkServedLocally()
        try await Task.sleep(for: .seconds(30))
        try await checkServedLocally()

        // The bucket is back: the outbox drains, the local copies go, the webhook goes with the bucket's URLs.
        try await server.restart()
        var artifacts: [JSON] = []
        try await eventually("the outbox drains into the bucket", timeout: 30) {
            artifacts = try await daemon.request("GET", "/v1/runs/wr_s3down/artifacts").1.array
            return artifacts.count == 3 && artifacts.allSatisfy { $0["url"].string?.hasPrefix(server.endpoint) == true }
        }
        for artifact in artifacts {
            let (getStatus, bytes) = try await httpRaw("GET", try #require(artifact["url"].string))
            #expect(getStatus == 200 && Digest.sha256(bytes).hex == artifact["checksum"].string)
        }
        #expect(localArtifactFiles(stateDir).isEmpty, "\(localArtifactFiles(stateDir))")
        try await eventually("the webhook is delivered", timeout: 20) { try await receiver.requests().count == 1 }
        let body = try JSONDecoder().decode(JSON.self, from: try await receiver.requests()[0].body)
        #expect(body["recording_url"].string?.hasPrefix(server.endpoint) == true, "\(body)")
        await daemon.stop()
    }

    @Test func aRunWhoseHostIsKilledAndWipedIsRebuiltFromTheBucketUpToItsLastPart() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let environment = [
            "VIEWPORTD_API_KEY": keyA, "VIEWPORTD_ORGANIZATION_ID": "org_a", "VIEWPORTD_LOG_LEVEL": "warning",
            "VIEWPORTD_ARTIFACTS_STORE": "s3", "VIEWPORTD_S3_ENDPOINT": server.endpoint,
            "VIEWPORTD_S3_BUCKET": server.bucket, "AWS_ACCESS_KEY_ID": S3Server.accessKey,
            "AWS_SECRET_ACCESS_KEY": S3Server.secretKey,
        ]
        let lostDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-lost-\(UUID().uuidString)").path
        let host = try await ChildDaemon.start(stateDir: lostDir, environment: environment)
        let (_, session) = try await requestJSON("POST", host.base + "/v1/browser_sessions", json: ["browser_address": browser.address])
        let id = try #require(session["browser_session_id"].string)
        let (status, run) = try await requestJSON("POST", host.base + "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_lost"])
        try #require(status == 201, "\(run)")
        let (_, step) = try await requestJSON("POST", host.base + "/v1/runs/wr_lost/steps", json: ["label": "one"])
        #expect(step["step"].int == 1)
        try await Task.sleep(for: .seconds(30))
        host.signal(SIGKILL)
        host.process.waitUntilExited()
        let killed = Date()
        try FileManager.default.removeItem(atPath: lostDir)
        let started = try #require(run["started_at"].string.flatMap(parseISO))

        // Another host, with nothing but the bucket.
        let newDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-new-\(UUID().uuidString)").path
        let (exit, output) = try runProcess(viewportdBinary, ["recover-run", "wr_lost"],
                                            environment: environment.merging(["VIEWPORTD_STATE_DIR": newDir]) { $1 })
        try #require(exit == 0, "\(output)")
        // It prints the run as JSON, on the last line (its log goes to standard error before it).
        let recovered = try JSONDecoder().decode(JSON.self, from: Data((output.split(separator: "\n").last ?? "").utf8))
        #expect(recovered["status"].string == "terminated")
        #expect(recovered["screenshot_urls"].array.count == 1, "the step's screenshot reached the bucket")
        let (videoStatus, video) = try await httpRaw("GET", try #require(recovered["recording_url"].string))
        try #require(videoStatus == 200)
        let file = try temporaryFile("recovered.mp4", video)
        #expect(try decodeErrors(file).isEmpty)
        let duration = try #require(try ffprobe(file)["format"]["duration"].string.flatMap(Double.init))
        let lived = killed.timeIntervalSince(started)
        print("recover-run: \(duration) s of video recovered from a run killed after \(lived) s")
        #expect(duration >= lived - 10 && duration <= lived + 0.5,
                "\(duration) s recovered of a run killed after \(lived) s (s3.segment_seconds 10)")

        // The new host answers for the run: terminated, its recording in the bucket.
        try await withDaemon(stateDir: newDir, storingIn(server)) { daemon in
            let (_, got) = try await daemon.request("GET", "/v1/runs/wr_lost")
            #expect(got["status"].string == "terminated")
            #expect(got["failure_reason"].string?.contains("host was lost") == true)
            #expect(got["recording_url"].string?.hasPrefix(server.endpoint) == true)
        }
        // Recovering twice changes nothing.
        let (again, second) = try runProcess(viewportdBinary, ["recover-run", "wr_lost"],
                                             environment: environment.merging(["VIEWPORTD_STATE_DIR": newDir]) { $1 })
        #expect(again == 0, "\(second)")
    }
}

@Suite("A large artifact going to a real S3 server", .serialized)
struct LargeUploadTests {
    /// The uploader must stream a file from disk in parts: an artifact of any size then costs the memory of a few
    /// parts, never the file's size.
    @Test func aFiveHundredMegabyteArtifactUploadsWholeWithMemoryBoundedByThePartSize() async throws {
        let bench = URL(fileURLWithPath: viewportdBinary).deletingLastPathComponent()
            .appendingPathComponent("viewportd-bench").path
        try #require(FileManager.default.isExecutableFile(atPath: bench), "build it first (swift build --build-tests)")
        let server = try await S3Server.start()
        defer { server.stop() }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("large-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size = 500 * 1_000_000
        let checksum = try writeRandomFile(directory + "/artifact.bin", bytes: size)

        // The bench's upload measure: the file goes through the daemon's outbox and uploader in a process of its own,
        // which reports its key and its peak RSS before and after.
        let (status, output) = try runProcess(
            bench, ["s3", "--measures", "upload", "--no-anchor", "--json", "--file", directory + "/artifact.bin",
                    "--part-size-mb", "16", "--endpoint", server.endpoint, "--bucket", server.bucket],
            environment: ["AWS_ACCESS_KEY_ID": S3Server.accessKey, "AWS_SECRET_ACCESS_KEY": S3Server.secretKey])
        try #require(status == 0, "\(output)")
        let lastLine = try #require(output.split(separator: "\n").last, "no output")
        let upload = try JSONDecoder().decode(JSON.self, from: Data(lastLine.utf8))["upload"]
        let key = try #require(upload["key"].string, "\(output)")

        let head = try #require(try await offThread { try server.client().headObject(key: key) })
        #expect(head.size == UInt64(size))
        try await offThread { try server.client(timeoutSeconds: 30).downloadObject(key: key, to: directory + "/copy.bin") }
        #expect(try Digest.sha256(file: directory + "/copy.bin").hex == checksum, "the object holds the file's bytes")

        let before = try #require(upload["peak_rss_before_mib"].double), after = try #require(upload["peak_rss_after_mib"].double)
        print(String(format: "500 MB upload in %.1f s; the uploading process's peak RSS %.0f MiB before, %.0f MiB after (+%.0f MiB)",
                     upload["seconds"].double ?? 0, before, after, after - before))
        #expect(after - before < Double(3 * 16 + 64), "peak RSS grew by \(after - before) MiB with 16 MiB parts")
    }

    /// Writes `bytes` random bytes to a new file at `path`; returns their SHA-256 (hex).
    private func writeRandomFile(_ path: String, bytes: Int) throws -> String {
        let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
        defer { try? random.close() }
        try #require(FileManager.default.createFile(atPath: path, contents: nil))
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        defer { try? output.close() }
        var hasher = SHA256Hasher()
        var remaining = bytes
        while remaining > 0 {
            let chunk = try random.read(upToCount: min(remaining, 1 << 20)) ?? Data()
            chunk.withUnsafeBytes { hasher.update($0) }
            try output.write(contentsOf: chunk)
            remaining -= chunk.count
        }
        return hasher.finalize().hex
    }
}

/// Where a GET is redirected to (nil when it is not), without following it.
func redirectLocation(_ url: String, key: String?) async throws -> String? {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
    process.arguments = ["-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"]
        + (key.map { ["-H", "x-api-key: \($0)"] } ?? []) + [url]
    let output = Pipe()
    process.standardOutput = output
    try process.run()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExited()
    let parts = String(decoding: data, as: UTF8.self).split(separator: " ", maxSplits: 1).map(String.init)
    return parts.first == "302" && parts.count == 2 ? parts[1] : nil
}
