import Digests
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
@testable import ViewportDaemon

@Suite("Runs, recordings and artifacts with a real Chromium", .serialized)
struct RecordingTests {
    @Test func aRunWithStepsPublishesASeekableRecordingScreenshotsAndASignedWebhook() async throws {
        let receiver = try Receiver(statuses: [500, 200])
        defer { receiver.stop() }
        try await withLiveSession(page: "anim.html", { $0.webhooks.secrets = ["org_a": webhookTestSecret] }) { daemon, _, id in
            let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs",
                                                         json: ["run_id": "wr_rec1", "webhook_url": receiver.url, "title": "demo"])
            try #require(status == 201, "\(run)")
            #expect(run["status"].string == "running")
            let started = Date()
            var stepScreenshots: [JSON] = []
            for label in ["open page", "fill form", "submit"] {
                try await Task.sleep(for: .milliseconds(900))
                let (stepStatus, step) = try await daemon.request("POST", "/v1/runs/wr_rec1/steps", json: ["label": label])
                try #require(stepStatus == 201, "\(step)")
                #expect(step["label"].string == label)
                stepScreenshots.append(step["screenshot"])
            }
            #expect(stepScreenshots.map { $0["step"].int } == [1, 2, 3])
            try await Task.sleep(for: .milliseconds(900))
            let beforeComplete = Date().timeIntervalSince(started)
            let (doneStatus, done) = try await daemon.request("POST", "/v1/runs/wr_rec1/complete", json: ["status": "completed"])
            try #require(doneStatus == 200, "\(done)")
            #expect(done["status"].string == "completed" && done["step_count"].int == 3)
            #expect(done["recording_dropped_frames"].int == 0)

            // The run as the platform reads it.
            let (_, got) = try await daemon.request("GET", "/v1/runs/wr_rec1")
            #expect(got["browser_session_id"].string == id)
            #expect(got["screenshot_urls"].array.count == 4, "one per step and a final one")
            let recordingURL = try #require(got["recording_url"].string)
            let (videoStatus, video) = try await httpRaw("GET", recordingURL)
            try #require(videoStatus == 200)
            let file = try temporaryFile("run.mp4", video)
            let probe = try ffprobe(file)
            let stream = probe["streams"][0]
            #expect(stream["codec_name"].string == "h264")
            #expect((stream["width"].int ?? 1) % 2 == 0 && (stream["height"].int ?? 1) % 2 == 0)
            let duration = try #require(probe["format"]["duration"].string.flatMap(Double.init))
            let runStart = try #require(got["started_at"].string.flatMap(parseISO))
            let runEnd = try #require(got["finished_at"].string.flatMap(parseISO))
            let runLength = runEnd.timeIntervalSince(runStart)
            #expect(abs(runLength - beforeComplete) < 0.5, "the run lasted from its start to the complete request")
            #expect(abs(duration - runLength) < 0.5, "video \(duration) s for a run of \(runLength) s")
            #expect(Int(stream["nb_read_frames"].string ?? "") == done["recording_frames"].int)
            #expect((done["recording_frames"].int ?? 0) >= 20, "an animated page gives tens of frames a second")
            #expect(probe["chapters"].array.compactMap { $0["tags"]["title"].string }
                == ["Step 1: open page", "Step 2: fill form", "Step 3: submit"])
            let boxes = topLevelBoxes(video)
            let moov = try #require(boxes.firstIndex(of: "moov"), "\(boxes)"), mdat = try #require(boxes.firstIndex(of: "mdat"), "\(boxes)")
            #expect(moov < mdat, "faststart: \(boxes)")
            #expect(try decodeErrors(file).isEmpty)

            // Every screenshot's bytes match its checksum and the session's recordings list the video.
            let (_, artifacts) = try await daemon.request("GET", "/v1/runs/wr_rec1/artifacts")
            #expect(artifacts.array.filter { $0["artifact_type"].string == "screenshot" }.count == 4)
            for artifact in artifacts.array {
                let (_, bytes) = try await httpRaw("GET", try #require(artifact["url"].string))
                #expect(Digest.sha256(bytes).hex == artifact["checksum"].string)
                #expect(bytes.count == artifact["file_size"].int)
            }
            let (_, session) = try await daemon.request("GET", "/v1/browser_sessions/\(id)")
            #expect(session["recordings"][0]["filename"].string == "wr_rec1.mp4")
            #expect(session["recordings"][0]["checksum"].string == Digest.sha256(video).hex)

            // The webhook: refused once with 500, retried, signed.
            try await eventually("the webhook is retried and delivered", timeout: 20) {
                try await receiver.requests().count == 2
            }
            let deliveries = try await receiver.requests()
            #expect(deliveries.allSatisfy { $0.signatureValid })
            let payload = try JSONDecoder().decode(JSON.self, from: deliveries[1].body)
            #expect(payload["run_id"].string == "wr_rec1" && payload["status"].string == "completed")
            #expect(payload["screenshot_urls"].array.count == 4 && payload["recording_url"].string != nil)
        }
    }

    @Test func artifactContentAnswersRangesConditionalRequestsAndChecksAccess() async throws {
        try await withLiveSession { daemon, _, id in
            let (_, _) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_range"])
            let (_, step) = try await daemon.request("POST", "/v1/runs/wr_range/steps", json: ["label": "one"])
            let artifact = step["screenshot"]
            let url = try #require(artifact["url"].string)
            let size = try #require(artifact["file_size"].int)
            let artifactID = try #require(artifact["artifact_id"].string)

            let (fullStatus, full, fullHeaders) = try await get(url)
            #expect(fullStatus == 200 && full.count == size && fullHeaders["Content-Type"] == "image/jpeg")
            #expect(fullHeaders["Accept-Ranges"] == "bytes")
            let etag = try #require(fullHeaders["Etag"])

            let (partStatus, part, partHeaders) = try await get(url, ["Range": "bytes=10-109"])
            #expect(partStatus == 206 && part == full[10..<110])
            #expect(partHeaders["Content-Range"] == "bytes 10-109/\(size)")
            let (tailStatus, tail, _) = try await get(url, ["Range": "bytes=-100"])
            #expect(tailStatus == 206 && tail == full.suffix(100))
            let (badStatus, _, badHeaders) = try await get(url, ["Range": "bytes=\(size + 10)-"])
            #expect(badStatus == 416 && badHeaders["Content-Range"] == "bytes */\(size)")
            let (cachedStatus, _, _) = try await get(url, ["If-None-Match": etag])
            #expect(cachedStatus == 304)

            let plain = "http://127.0.0.1:\(daemon.daemon.port)/v1/artifacts/\(artifactID)/content"
            #expect(try await get(plain, ["x-api-key": keyA]).0 == 200, "the owner's key works without a signature")
            #expect(try await get(plain, ["x-api-key": keyB]).0 == 404, "another organization sees nothing")
            #expect(try await get(plain).0 == 401)
            let tampered = url.replacingOccurrences(of: "signature=", with: "signature=x")
            #expect(try await get(tampered).0 == 401)
            let (expires, signature) = daemon.daemon.auth.artifactSignature(artifactID: artifactID,
                                                                            expiresAt: Date().addingTimeInterval(-5))
            let (expiredStatus, expiredBody, _) = try await get(plain + "?expires=\(expires)&signature=\(signature)")
            #expect(expiredStatus == 401 && String(decoding: expiredBody, as: UTF8.self).contains("expired"))
            let otherID = plain.replacingOccurrences(of: artifactID, with: "art_../../viewportd.sqlite")
            #expect(try await get(otherID, ["x-api-key": keyA]).0 == 404)
        }
    }

    @Test func runRequestsAreValidatedAndClosingTheSessionTerminatesItsRuns() async throws {
        try await withLiveSession { daemon, _, id in
            let create = "/v1/browser_sessions/\(id)/runs"
            #expect(try await daemon.request("POST", create, json: ["run_id": "bad id"]).0 == 422)
            #expect(try await daemon.request("POST", create, json: ["webhook_url": "http://127.0.0.1:9/x"]).0 == 422,
                    "no webhook secret configured for org_a")
            #expect(try await daemon.request("POST", create, key: keyB, json: [:]).0 == 404)
            let (status, run) = try await daemon.request("POST", create, json: ["run_id": "tsk_valid"])
            try #require(status == 201, "\(run)")
            #expect(try await daemon.request("POST", create, json: ["run_id": "tsk_valid"]).0 == 409)
            #expect(try await daemon.request("POST", "/v1/runs/tsk_valid/steps", json: [:]).0 == 422)
            #expect(try await daemon.request("POST", "/v1/runs/tsk_valid/complete", json: ["status": "done"]).0 == 422)
            #expect(try await daemon.request("GET", "/v1/runs/tsk_valid", key: keyB).0 == 404)
            #expect(try await daemon.request("GET", "/v1/runs/tsk_nope").0 == 404)
            #expect(try await daemon.request("POST", "/v1/runs/tsk_valid/steps", json: ["label": "page is up"]).0 == 201)

            let (closeStatus, _) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/close")
            #expect(closeStatus == 200)
            let (_, ended) = try await daemon.request("GET", "/v1/runs/tsk_valid")
            #expect(ended["status"].string == "terminated")
            #expect(ended["recording_url"].string != nil, "what was recorded is published")
            #expect(try await daemon.request("POST", "/v1/runs/tsk_valid/steps", json: ["label": "late"]).0 == 409)
            let (againStatus, again) = try await daemon.request("POST", "/v1/runs/tsk_valid/complete", json: ["status": "completed"])
            #expect(againStatus == 200 && again["status"].string == "terminated", "completing a completed run changes nothing")
            #expect(try await daemon.request("POST", create, json: [:]).0 == 409, "no run in a closed session")
        }
    }

    @Test func theReplayPagePlaysTheRunAndSeeksToAStep() async throws {
        try await withLiveSession { daemon, browser, id in
            _ = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_replay"])
            for label in ["first", "second"] {
                try await Task.sleep(for: .seconds(1))
                #expect(try await daemon.request("POST", "/v1/runs/wr_replay/steps", json: ["label": label]).0 == 201)
            }
            try await Task.sleep(for: .seconds(1))
            let (_, run) = try await daemon.request("POST", "/v1/runs/wr_replay/complete", json: ["status": "completed"])
            let appURL = try #require(run["app_url"].string)
            #expect(try await httpRaw("GET", appURL.components(separatedBy: "?")[0]).0 == 401, "no token, no replay")

            _ = try await Client.cdp(browser, "Target.createTarget", ["url": appURL])
            let ready = try await Client.cdp(browser, "Runtime.evaluate", [
                "expression": """
                new Promise((resolve) => { const t0 = Date.now(); (function check() {
                  const r = window.viewportdReplay;
                  if (r && (r.ready || r.error)) resolve({ready: r.ready, error: r.error, duration: r.duration, steps: r.steps});
                  else if (Date.now() - t0 > 10000) resolve({ready: false, error: "timeout"});
                  else setTimeout(check, 50); })(); })
                """,
                "awaitPromise": true, "returnByValue": true,
            ], page: "/replay/wr_replay")
            let value = ready["result"]["value"]
            try #require(value["ready"].bool == true, "the video loads: \(value)")
            let duration = try #require(value["duration"].double)
            let (_, probeRun) = try await daemon.request("GET", "/v1/runs/wr_replay")
            let (_, video) = try await httpRaw("GET", try #require(probeRun["recording_url"].string))
            let probed = try #require(try ffprobe(try temporaryFile("replay.mp4", video))["format"]["duration"].string.flatMap(Double.init))
            #expect(abs(duration - probed) < 0.1, "the page's duration \(duration) matches the file's \(probed)")
            let second = try #require(value["steps"][1]["offset"].double)

            let seeked = try await Client.cdp(browser, "Runtime.evaluate", [
                "expression": """
                new Promise((resolve) => { const v = document.getElementById("video");
                  v.addEventListener("seeked", () => resolve({time: v.currentTime, step: window.viewportdReplay.currentStep}), {once: true});
                  document.querySelector('.step[data-index="2"]').click(); })
                """,
                "awaitPromise": true, "returnByValue": true,
            ], page: "/replay/wr_replay")
            #expect(abs((seeked["result"]["value"]["time"].double ?? -1) - second) < 0.05)
            #expect(seeked["result"]["value"]["step"].int == 2)
        }
    }
}

// MARK: - Helpers

func parseISO(_ text: String) -> Date? { try? Date(text, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) }

/// A GET with extra headers: status, body and headers (canonical names as Foundation gives them).
func get(_ url: String, _ headers: [String: String] = [:]) async throws -> (Int, Data, [String: String]) {
    var request = URLRequest(url: URL(string: url)!)
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    request.cachePolicy = .reloadIgnoringLocalAndRemoteCacheData
    let (data, response) = try await URLSession.shared.data(for: request)
    let http = response as! HTTPURLResponse
    var fields: [String: String] = [:]
    for (name, value) in http.allHeaderFields { fields[String(describing: name).capitalized] = "\(value)" }
    return (http.statusCode, data, fields)
}

func temporaryFile(_ name: String, _ data: Data) throws -> String {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID().uuidString)-\(name)")
    try data.write(to: url)
    return url.path
}

/// ffprobe's JSON for a media file: format, first video stream with counted frames, chapters.
func ffprobe(_ path: String) throws -> JSON {
    let output = try runTool("ffprobe", ["-v", "error", "-count_frames", "-select_streams", "v:0", "-show_format",
                                         "-show_streams", "-show_chapters", "-of", "json", path])
    return try JSONDecoder().decode(JSON.self, from: output)
}

/// What `ffmpeg -v error` says when decoding every frame of the file (empty: it decodes cleanly). Frames keep their
/// own times (`passthrough`): the null muxer otherwise re-times variable-rate video on a guessed constant rate and
/// complains about frames closer together than that rate, which says nothing about the file.
func decodeErrors(_ path: String) throws -> String {
    String(decoding: try runTool("ffmpeg", ["-v", "error", "-i", path, "-fps_mode", "passthrough", "-enc_time_base", "-1",
                                            "-f", "null", "-"], stderr: true), as: UTF8.self)
}

/// Runs /usr/bin/`name` and returns its standard output, or its standard error when `stderr` is set; throws,
/// with what it printed, when it exits non-zero.
func runTool(_ name: String, _ arguments: [String], stderr: Bool = false) throws -> Data {
    let (status, output) = try runProcess("/usr/bin/\(name)", arguments, stdout: !stderr, stderr: stderr)
    guard status == 0 else { throw DaemonError("\(name) \(arguments.first ?? "") exited with \(status): \(String(decoding: output.prefix(2000), as: UTF8.self))") }
    return output
}

/// Top-level MP4 box types in file order.
func topLevelBoxes(_ data: Data) -> [String] {
    var boxes: [String] = []
    var offset = 0
    while offset + 8 <= data.count {
        let bytes = [UInt8](data[offset..<offset + 8])
        var size = Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3])
        if size == 1, offset + 16 <= data.count {
            size = data[offset + 8..<offset + 16].reduce(0) { $0 << 8 | Int($1) }
        }
        boxes.append(String(decoding: bytes[4..<8], as: UTF8.self))
        guard size >= 8 else { break }
        offset += size
    }
    return boxes
}
