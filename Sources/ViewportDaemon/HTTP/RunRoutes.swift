import Foundation
import Store
import WebSocketIO

/// `/v1/browser_sessions/{id}/runs` and `/v1/runs/...`: start, read, step and complete runs, their artifacts and
/// webhook; and the replay page.
struct RunRoutes {
    let runs: Runs
    let auth: Auth
    let config: Config

    var routes: [Route] {
        [
            Route("POST", "v1/browser_sessions/*/runs", owner: .session) { request in
                let body = try request.body(StartRun.self)
                let run = try await runs.start(sessionID: request.ids[0], organizationID: request.organizationID,
                                               runID: body.runID?.value, webhookURL: body.webhookURL?.value,
                                               title: body.title?.value)
                return .json(201, encoding: try await view(run))
            },
            Route("GET", "v1/runs/*") { request in
                .json(200, encoding: try await view(try await runs.run(id: request.ids[0], organizationID: request.organizationID)))
            },
            Route("POST", "v1/runs/*/steps", owner: .run) { request in
                let body = try request.body(MarkStep.self)
                let (step, artifact) = try await runs.step(runID: request.ids[0], organizationID: request.organizationID,
                                                           label: body.label.value)
                return .json(201, encoding: StepView(runID: step.runID, step: step.index, label: step.label,
                                                     createdAt: step.createdAt, screenshot: view(artifact)))
            },
            Route("POST", "v1/runs/*/complete", owner: .run) { request in
                let body = try request.body(CompleteRun.self)
                let run = try await runs.complete(runID: request.ids[0], organizationID: request.organizationID,
                                                  status: body.status.value, failureReason: body.failureReason?.value)
                return .json(200, encoding: try await view(run))
            },
            Route("GET", "v1/runs/*/artifacts") { request in
                let artifacts = try await runs.artifacts(runID: request.ids[0], organizationID: request.organizationID)
                return .json(200, encoding: artifacts.map(view))
            },
            Route("POST", "v1/runs/*/retry_webhook", owner: .run) { request in
                try await runs.retryWebhook(runID: request.ids[0], organizationID: request.organizationID)
                return .json(202, encoding: WebhookQueued(runID: request.ids[0], status: "queued"))
            },
            Route("GET", "replay/*", .open) { await replayPage($0) },
        ]
    }

    /// The replay page, for a token of the run or of its session.
    private func replayPage(_ request: RouteRequest) async -> HTTPResponse {
        let runID = request.ids[0]
        let found: Runs.Replay?
        do { found = try await runs.replay(runID: runID) } catch {
            return .message(503, "This replay cannot be shown now: \(error)")
        }
        guard let replay = found else { return .message(404, "No run \(runID).") }
        guard let token = request.http.query["token"], !token.isEmpty else {
            return .message(401, "This replay link has no token.")
        }
        let granted = [runID, replay.run.sessionID].contains { (try? auth.verifyViewerToken(token, sessionID: $0)) != nil }
        guard granted else { return .message(401, "This replay link is not valid or has expired.") }
        let run = replay.run
        let steps = replay.steps.map { step -> ReplayPage.Step in
            let screenshot = replay.artifacts.first { $0.id == step.artifactID }.map(runs.artifactURL)
            return .init(index: step.index, label: step.label,
                         offset: Double(step.timeMicros > run.startMicros ? step.timeMicros - run.startMicros : 0) / 1_000_000,
                         screenshotURL: screenshot)
        }
        return .html(200, ReplayPage.html(run: .init(id: run.id, title: run.title, status: run.status,
                                                     videoURL: runs.links(replay.artifacts).recording, steps: steps)))
    }

    func view(_ run: RunRecord) async throws(RunError) -> RunView {
        let links = try await runs.links(run)
        return RunView(
            runID: run.id, browserSessionID: run.sessionID, status: run.status, title: run.title,
            createdAt: run.createdAt, startedAt: run.startedAt, finishedAt: run.finishedAt, stepCount: run.stepCount,
            failureReason: run.failureReason, recordingURL: links.recording, screenshotUrls: links.screenshots,
            appURL: runs.replayURL(runID: run.id), webhookURL: run.webhookURL,
            recordingFrames: run.framesRecorded, recordingDroppedFrames: run.framesDropped,
            recordingError: run.recordingError)
    }

    func view(_ artifact: ArtifactRecord) -> ArtifactView {
        ArtifactView(artifactID: artifact.id, artifactType: artifact.kind.rawValue, step: artifact.step,
                     url: runs.artifactURL(artifact), checksum: artifact.checksum, filename: artifact.filename,
                     fileSize: artifact.fileSize, contentType: artifact.contentType, modifiedAt: artifact.modifiedAt,
                     createdAt: artifact.createdAt)
    }
}

// MARK: - Bodies

/// A label or title: 1-200 characters without control characters.
enum Label: PatternRule {
    static let pattern = #"^[^\u0000-\u001f]{1,200}$"#
    static let rule = "1-200 characters without control characters"
}

struct StartRun: Decodable {
    enum RunID: PatternRule {
        static let pattern = #"^(tsk|wr)_[A-Za-z0-9_-]{1,64}$"#
        static let rule = "tsk_ or wr_ followed by 1-64 of A-Z a-z 0-9 _ -"
    }
    enum WebhookURL: PatternRule {
        static let pattern = #"^https?://\S{1,2040}$"#
        static let rule = "an http:// or https:// URL of at most 2048 characters"
    }
    let runID: Checked<RunID>?
    let title: Checked<Label>?
    let webhookURL: Checked<WebhookURL>?
    enum CodingKeys: String, CodingKey { case runID = "run_id", title, webhookURL = "webhook_url" }
}

struct MarkStep: Decodable {
    let label: Checked<Label>
}

struct CompleteRun: Decodable {
    enum Status: FieldRule {
        static var rule: String { "one of \(Runs.finalStatuses.joined(separator: ", "))" }
        static func accepts(_ value: String) -> Bool { Runs.finalStatuses.contains(value) }
    }
    enum Reason: PatternRule {
        static let pattern = #"^[\s\S]{1,4000}$"#
        static let rule = "1-4000 characters"
    }
    let status: Checked<Status>
    let failureReason: Checked<Reason>?
    enum CodingKeys: String, CodingKey { case status, failureReason = "failure_reason" }
}

// MARK: - Views

struct RunView: Encodable {
    let runID: String
    let browserSessionID: String
    let status: String
    @Nullable var title: String?
    let createdAt: Date
    @Nullable var startedAt: Date?
    @Nullable var finishedAt: Date?
    let stepCount: Int
    @Nullable var failureReason: String?
    @Nullable var recordingURL: String?
    let screenshotUrls: [String]
    let appURL: String
    @Nullable var webhookURL: String?
    let recordingFrames: Int
    let recordingDroppedFrames: Int
    @Nullable var recordingError: String?
}

struct ArtifactView: Encodable {
    let artifactID: String
    let artifactType: String
    @Nullable var step: Int?
    let url: String
    let checksum: String
    let filename: String
    let fileSize: Int
    let contentType: String
    let modifiedAt: Date
    let createdAt: Date
}

struct StepView: Encodable {
    let runID: String
    let step: Int
    let label: String
    let createdAt: Date
    let screenshot: ArtifactView
}

struct WebhookQueued: Encodable {
    let runID: String
    let status: String
}
