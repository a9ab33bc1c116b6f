import Foundation
import Testing
@testable import ViewportDaemon

/// Runs through the REST API, on sessions whose browser never answers (no frames) or a real Chromium.
@Suite("Runs", .serialized)
struct RunTests {
    /// Nothing listens there: a session on it stays "created" and shows no frame.
    static let unreachable = "http://127.0.0.1:9"

    /// A session that never shows a frame, with retries for an hour.
    private static func frameless(_ daemon: TestDaemon) async throws -> String {
        let (status, created) = try await daemon.request("POST", "/v1/browser_sessions", json: ["browser_address": unreachable])
        try #require(status == 201, "\(created)")
        return try #require(created["browser_session_id"].string)
    }

    @Test func aStepWaits2SecondsForAFirstFrameThenIs409() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            let id = try await Self.frameless(daemon)
            let (started, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_noframe"])
            try #require(started == 201, "\(run)")
            let start = Date()
            let (status, body) = try await daemon.request("POST", "/v1/runs/wr_noframe/steps", json: ["label": "first"])
            let waited = Date().timeIntervalSince(start)
            #expect(status == 409)
            #expect(body["detail"].string?.contains("has shown no frame yet") == true, "\(body)")
            #expect(waited >= 1.9 && waited < 5, "waited \(waited) s")
        }
    }

    @Test(arguments: ["failed", "timed_out", "canceled"])
    func completingARunWithAFinalStatusKeepsItAndItsReason(_ final: String) async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            let id = try await Self.frameless(daemon)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_final"]).0 == 201)
            let (status, completed) = try await daemon.request("POST", "/v1/runs/wr_final/complete",
                                                               json: ["status": final, "failure_reason": "because \(final)"])
            #expect(status == 200, "\(completed)")
            #expect(completed["status"].string == final)
            #expect(completed["failure_reason"].string == "because \(final)")
            #expect(completed["finished_at"].string != nil)
            let (_, fetched) = try await daemon.request("GET", "/v1/runs/wr_final")
            #expect(fetched["status"].string == final && fetched["failure_reason"].string == "because \(final)")
            let (again, againBody) = try await daemon.request("POST", "/v1/runs/wr_final/complete", json: ["status": "completed"])
            #expect(again == 200 && againBody["status"].string == final, "a completed run stays as it ended: \(againBody)")
        }
    }

    @Test func completingWithAnUnknownStatusIs422ListingTheStatuses() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 3600 }) { daemon in
            let id = try await Self.frameless(daemon)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_bad"]).0 == 201)
            let (status, body) = try await daemon.request("POST", "/v1/runs/wr_bad/complete", json: ["status": "done"])
            #expect(status == 422)
            #expect(body["detail"].string == "status must be one of completed, failed, terminated, timed_out, canceled")
        }
    }

    @Test func retryWebhookQueuesACompletedRunsWebhookAndRefusesOtherwise() async throws {
        try await withDaemon({
            $0.cdp.retrySeconds = 3600
            $0.webhooks.secrets = ["org_a": webhookTestSecret]
            $0.limits.retryWebhookPerMinute = 2
        }) { daemon in
            let id = try await Self.frameless(daemon)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_nohook"]).0 == 201)
            _ = try await daemon.request("POST", "/v1/runs/wr_nohook/complete", json: ["status": "completed"])
            let (noHook, noHookBody) = try await daemon.request("POST", "/v1/runs/wr_nohook/retry_webhook")
            #expect(noHook == 409 && noHookBody["detail"].string == "run wr_nohook has no webhook_url", "\(noHookBody)")

            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs",
                                             json: ["run_id": "wr_hook", "webhook_url": "http://127.0.0.1:9/hook"]).0 == 201)
            let (open, openBody) = try await daemon.request("POST", "/v1/runs/wr_hook/retry_webhook")
            #expect(open == 409 && openBody["detail"].string == "run wr_hook is not completed yet", "\(openBody)")

            _ = try await daemon.request("POST", "/v1/runs/wr_hook/complete", json: ["status": "completed"])
            let (queued, queuedBody) = try await daemon.request("POST", "/v1/runs/wr_hook/retry_webhook")
            #expect(queued == 202 && queuedBody == .object(["run_id": .string("wr_hook"), "status": .string("queued")]), "\(queuedBody)")
            #expect(try await daemon.request("POST", "/v1/runs/wr_hook/retry_webhook").0 == 202)
            let (limited, limitedBody) = try await daemon.request("POST", "/v1/runs/wr_hook/retry_webhook")
            #expect(limited == 429)
            #expect(limitedBody["detail"].string?.contains("limits.retry_webhook_per_minute") == true, "\(limitedBody)")
            #expect(try await daemon.request("POST", "/v1/runs/wr_hook/retry_webhook", key: keyB).0 == 404)
        }
    }

    @Test func screenshotURLsAreListedNewestFirst() async throws {
        try await withLiveSession { daemon, _, id in
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_order"]).0 == 201)
            var urls: [String] = []
            for label in ["one", "two", "three"] {
                let (status, step) = try await daemon.request("POST", "/v1/runs/wr_order/steps", json: ["label": label])
                try #require(status == 201, "\(step)")
                urls.append(try #require(step["screenshot"]["url"].string))
            }
            let listed = try await daemon.request("GET", "/v1/runs/wr_order").1["screenshot_urls"].array.compactMap(\.string)
            // Signed URLs differ per answer: compare the artifacts they point at.
            func artifact(_ url: String) -> String? { URL(string: url)?.deletingLastPathComponent().lastPathComponent }
            #expect(listed.map(artifact) == urls.reversed().map(artifact), "\(listed)")
            #expect(listed.count == 3)
        }
    }

    @Test func retentionSweepsOnItsOwnTimer() async throws {
        try await withLiveSession({
            $0.retention.sweepIntervalSeconds = 1
            $0.retention.maxDiskGB = 1e-9  // nothing fits: a closed session's artifacts go at the next sweep
        }) { daemon, _, id in
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_swept"]).0 == 201)
            let (status, step) = try await daemon.request("POST", "/v1/runs/wr_swept/steps", json: ["label": "one"])
            try #require(status == 201, "\(step)")
            let artifact = try #require(step["screenshot"]["artifact_id"].string)
            _ = try await daemon.request("POST", "/v1/runs/wr_swept/complete", json: ["status": "completed"])
            try await Task.sleep(for: .seconds(2.5))
            #expect(try await daemon.request("GET", "/v1/artifacts/\(artifact)/content").0 == 200, "an open session's artifacts stay")
            _ = try await daemon.request("POST", "/v1/browser_sessions/\(id)/close")
            // No request starts a sweep: only the timer can expire it.
            var answer: (Int, JSON) = (0, .null)
            try await eventually("the timer's sweep expires the closed session's screenshot", timeout: 10) {
                answer = try await daemon.request("GET", "/v1/artifacts/\(artifact)/content")
                return answer.0 == 404
            }
            #expect(answer.1["detail"].string == "artifact expired")
            let (_, session) = try await daemon.request("GET", "/v1/browser_sessions/\(id)")
            #expect(session["deleted_at"].string != nil, "its files gone, the session says when: \(session)")
            #expect(session["recordings"].array.isEmpty)
        }
    }
}
