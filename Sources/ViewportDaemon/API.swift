import CDPSource
import RFBSource
import Foundation
import Store
import Logging
import VNCBridge
import ViewerGateway
import ViewportCore
import WebSocketIO

/// The HTTP API, the watch page and the viewer WebSocket endpoint.
///
/// REST answers JSON in snake_case with ISO-8601 UTC times; errors are `{"detail": "..."}`. Paths are served
/// under `/v1/...` and `/api/v1/...`; viewers connect to `/stream/browser/{id}` (also under `/v1` and `/api/v1`).
final class API: HTTPServerDelegate {
    private let sessions: Sessions
    private let runs: Runs
    private let store: Store
    private let files: ArtifactFiles
    private let webhooks: Webhooks
    private let auth: Auth
    private let gateway: ViewerGateway
    private let metrics: DaemonMetrics
    private let config: Config
    private let loop: EventLoop
    private let logger: Logger

    init(sessions: Sessions, runs: Runs, store: Store, files: ArtifactFiles, webhooks: Webhooks, auth: Auth,
         gateway: ViewerGateway, metrics: DaemonMetrics, config: Config, loop: EventLoop, logger: Logger)
    {
        self.metrics = metrics
        self.loop = loop
        self.logger = logger
        self.sessions = sessions
        self.runs = runs
        self.store = store
        self.files = files
        self.webhooks = webhooks
        self.auth = auth
        self.gateway = gateway
        self.config = config
    }

    // MARK: - HTTP

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        let response: HTTPResponse
        do {
            response = try await route(request)
        } catch let error as APIError {
            response = .json(error.status, ["detail": error.detail])
        } catch {
            response = .json(500, ["detail": "internal error: \(error)"])
        }
        if response.status == 401 { metrics.authFailed(Self.credential(of: request)) }
        return response
    }

    /// A REST request whose `x-api-key` is missing or unknown is answered 401 before its body is read (the artifact
    /// and page routes take other credentials and have no body).
    func refuseBeforeBody(_ request: HTTPRequest) -> HTTPResponse? {
        let path = Self.components(request.path)
        guard path.first == "v1" else { return nil }
        let key = request.headers["x-api-key"] ?? ""
        let refusal: String? = key.isEmpty ? "missing x-api-key header"
            : auth.organization(apiKey: key) == nil ? "invalid API key" : nil
        guard let refusal else { return nil }
        metrics.authFailed(.apiKey)
        return .json(401, ["detail": refusal])
    }

    /// Which credential a refused request relied on (for the auth failure metric).
    private static func credential(of request: HTTPRequest) -> DaemonMetrics.AuthFailure {
        if request.headers["x-api-key"] != nil { return .apiKey }
        if request.query["signature"] != nil { return .artifactURL }
        return request.query["token"] != nil ? .viewerToken : .apiKey
    }

    private typealias Handler = @Sendable (API, HTTPRequest, [String]) async throws -> HTTPResponse

    /// Path patterns (`*` captures one component) and their handlers by method.
    private static let routes: [(pattern: [String], methods: [String: Handler])] = [
        (["healthz"], ["GET": { _, _, _ in .json(200, ["status": "ok"]) }]),
        (["readyz"], ["GET": { api, _, _ in api.readiness() }]),
        (["metrics"], ["GET": { api, _, _ in api.metricsText() }]),
        (["watch", "*"], ["GET": { api, request, ids in api.watchPage(sessionID: ids[0], token: request.query["token"]) }]),
        (["v1", "browser_sessions"], ["POST": { api, request, _ in try await api.createSession(request) },
                                      "GET": { api, request, _ in try api.listSessions(request) }]),
        (["v1", "browser_sessions", "*"], ["GET": { api, request, ids in try api.getSession(request, ids[0]) }]),
        (["v1", "browser_sessions", "*", "close"], ["POST": { api, request, ids in try await api.closeSession(request, ids[0]) }]),
        (["v1", "browser_sessions", "*", "vnc"], ["POST": { api, request, ids in try api.mintVNCPassword(request, ids[0]) }]),
        (["v1", "browser_sessions", "*", "renew"], ["POST": { api, request, ids in try await api.renewSession(request, ids[0]) }]),
        (["v1", "browser_sessions", "*", "viewer_tokens"],
         ["POST": { api, request, ids in try api.mintViewerToken(request, ids[0]) }]),
        (["v1", "browser_sessions", "*", "runs"], ["POST": { api, request, ids in try await api.startRun(request, ids[0]) }]),
        (["v1", "runs", "*"], ["GET": { api, request, ids in try await api.getRun(request, ids[0]) }]),
        (["v1", "runs", "*", "steps"], ["POST": { api, request, ids in try await api.markStep(request, ids[0]) }]),
        (["v1", "runs", "*", "complete"], ["POST": { api, request, ids in try await api.completeRun(request, ids[0]) }]),
        (["v1", "runs", "*", "artifacts"], ["GET": { api, request, ids in try await api.listArtifacts(request, ids[0]) }]),
        (["v1", "runs", "*", "retry_webhook"], ["POST": { api, request, ids in try await api.retryWebhook(request, ids[0]) }]),
        (["v1", "artifacts", "*", "content"], ["GET": { api, request, ids in try api.artifactContent(request, ids[0]) }]),
        (["replay", "*"], ["GET": { api, request, ids in await api.replayPage(request, runID: ids[0]) }]),
    ]

    private func route(_ request: HTTPRequest) async throws -> HTTPResponse {
        let path = Self.components(request.path)
        for route in Self.routes {
            guard let captured = Self.match(path, route.pattern) else { continue }
            guard let handler = route.methods[request.method == "HEAD" ? "GET" : request.method] else {
                throw APIError(405, "method \(request.method) not allowed on \(request.path)")
            }
            return try await handler(self, request, captured)
        }
        throw APIError(404, "not found: \(request.path)")
    }

    private static func match(_ path: [String], _ pattern: [String]) -> [String]? {
        guard path.count == pattern.count else { return nil }
        var captured: [String] = []
        for (part, expected) in zip(path, pattern) {
            if expected == "*" { captured.append(part) } else if part != expected { return nil }
        }
        return captured
    }

    private func createSession(_ request: HTTPRequest) async throws(APIError) -> HTTPResponse {
        let organization = try organization(request)
        let body = try Self.jsonBody(request)
        let address = try Self.string(body, "browser_address", pattern: #"^\S{1,2048}$"#, rule: "a URL")
        let vncAddress = try Self.string(body, "vnc_address", pattern: #"^\S{1,300}$"#, rule: "host:port")
        let vncPassword = try Self.string(body, "vnc_password", pattern: #"^[\s\S]{1,256}$"#, rule: "1-256 characters")
        guard address != nil || vncAddress != nil else {
            throw APIError(422, "browser_address (http://host:port or ws://host:port/devtools/...) or vnc_address (host:port) is required")
        }
        if let address {
            do { try CDPSource.validate(address: address) } catch { throw APIError(422, "browser_address: \(error)") }
        }
        if let vncAddress {
            do { try RFBSource.validate(address: vncAddress) } catch { throw APIError(422, "vnc_address: \(error)") }
        }
        try await sessions.checkReachable(browserAddress: address, vncAddress: vncAddress)
        let timeout = try Self.int(body, "timeout", in: 5...1440, default: 60, unit: "minutes")
        let id = try Self.string(body, "browser_session_id", pattern: #"^pbs_[A-Za-z0-9_-]{1,64}$"#,
                                 rule: "pbs_ followed by 1-64 of A-Z a-z 0-9 _ -")
        let record = try await sessions.create(organizationID: organization, browserAddress: address ?? "",
                                               timeoutMinutes: timeout, id: id, vncAddress: vncAddress,
                                               vncPassword: vncPassword)
        return .json(201, sessionJSON(record))
    }

    private func listSessions(_ request: HTTPRequest) throws(APIError) -> HTTPResponse {
        .json(200, sessions.active(organizationID: try organization(request)).map(sessionJSON))
    }

    private func getSession(_ request: HTTPRequest, _ id: String) throws(APIError) -> HTTPResponse {
        .json(200, sessionJSON(try sessions.session(id: id, organizationID: try organization(request))))
    }

    private func closeSession(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        .json(200, sessionJSON(try await sessions.close(id: id, organizationID: try organization(request))))
    }

    private func renewSession(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        let organization = try organization(request)
        let body = try Self.jsonBody(request)
        let timeout = body["timeout"] == nil ? nil : try Self.int(body, "timeout", in: 5...1440, default: 60, unit: "minutes")
        return .json(200, sessionJSON(try await sessions.renew(id: id, organizationID: organization, timeoutMinutes: timeout)))
    }

    /// A fresh VNC password for the session's screen: view-only unless `control`.
    private func mintVNCPassword(_ request: HTTPRequest, _ id: String) throws(APIError) -> HTTPResponse {
        let record = try sessions.session(id: id, organizationID: try organization(request))
        let body = try Self.jsonBody(request)
        let ttl = try Self.int(body, "ttl_seconds", in: 5...86400, default: config.vnc.passwordTTLSeconds, unit: "seconds")
        let control = try Self.bool(body, "control", default: false)
        guard record.status.isActive else { throw APIError(409, "browser session \(id) is \(record.status.rawValue)") }
        guard let bridge = sessions.vncBridge(id: id) else {
            if sessions.vncLimited(id: id) {
                throw APIError(429, "organization \(record.organizationID) has \(config.limits.vncScreensPerOrganization) VNC screens, the most it may have (config limits.vnc_screens_per_organization)")
            }
            throw APIError(409, config.vnc.enabled ? "browser session \(id) has no VNC screen (no free port in vnc.port_range)"
                                                  : "VNC is disabled (config vnc.enabled)")
        }
        let expiresAt = Date().addingTimeInterval(Double(ttl))
        let password = bridge.passwords.mint(control: control, expiresAt: expiresAt)
        let host = config.vnc.listen == "0.0.0.0" ? ProcessInfo.processInfo.hostName : config.vnc.listen
        return .json(201, ["host": host, "port": bridge.port, "password": password,
                           "vnc_url": "vnc://\(host):\(bridge.port)", "expires_at": Self.iso(expiresAt), "control": control])
    }

    /// 200 when the listener serves (this answer proves it) and the store takes writes; else 503 saying why.
    private func readiness() -> HTTPResponse {
        do { try store.checkWritable() } catch {
            return .json(503, ["status": "not ready", "detail": "the store does not take writes: \(error)"])
        }
        return .json(200, ["status": "ready"])
    }

    private func metricsText() -> HTTPResponse {
        let counts = (try? store.sessionCounts()) ?? [:]
        return HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", headers: [],
                            body: Data(metrics.exposition(sessions: counts, viewers: gateway.viewerCount)))
    }

    private func mintViewerToken(_ request: HTTPRequest, _ id: String) throws(APIError) -> HTTPResponse {
        let record = try sessions.session(id: id, organizationID: try organization(request))
        let body = try Self.jsonBody(request)
        let ttl = try Self.int(body, "ttl_seconds", in: 10...86400, default: config.viewer.tokenTTLSeconds, unit: "seconds")
        let control = try Self.bool(body, "control", default: false)
        guard record.status.isActive else { throw APIError(409, "browser session \(id) is \(record.status.rawValue)") }
        let expiresAt = Date().addingTimeInterval(Double(ttl))
        let token = auth.viewerToken(sessionID: id, expiresAt: expiresAt, control: control)
        return .json(201, ["token": token, "expires_at": Self.iso(expiresAt), "watch_url": watchURL(id, token: token),
                           "control": control])
    }

    private func organization(_ request: HTTPRequest) throws(APIError) -> String {
        guard let key = request.headers["x-api-key"], !key.isEmpty else {
            throw APIError(401, "missing x-api-key header")
        }
        guard let organization = auth.organization(apiKey: key) else { throw APIError(401, "invalid API key") }
        return organization
    }

    private func watchPage(sessionID: String, token: String?) -> HTTPResponse {
        guard let token, !token.isEmpty else {
            return .html(401, Self.message("This watch link has no token. Ask the API for one: POST /v1/browser_sessions/\(sessionID)/viewer_tokens."))
        }
        do {
            _ = try auth.verifyViewerToken(token, sessionID: sessionID)
        } catch {
            return .html(401, Self.message(error == .expired ? "This watch link has expired." : "This watch link is not valid."))
        }
        return .html(200, WatchPage.html(sessionID: sessionID))
    }

    private func watchURL(_ id: String, token: String) -> String {
        "\(config.effectivePublicURL)/watch/\(id)?token=\(token)"
    }

    private func sessionJSON(_ record: SessionRecord) -> [String: Any] {
        [
            "browser_session_id": record.id,
            "organization_id": record.organizationID,
            "status": record.status.rawValue,
            "created_at": Self.iso(record.createdAt),
            "modified_at": Self.iso(record.modifiedAt),
            "started_at": record.startedAt.map(Self.iso) ?? NSNull(),
            "completed_at": record.completedAt.map(Self.iso) ?? NSNull(),
            "timeout": record.timeoutMinutes,
            "expires_at": record.status.isActive ? Self.iso(record.expiresAt) : NSNull(),
            "browser_address": record.browserAddress.isEmpty ? NSNull() : record.browserAddress,
            "vnc_address": record.vncAddress ?? NSNull(),
            "app_url": "\(config.effectivePublicURL)/watch/\(record.id)",
            "vnc_streaming_supported": sessions.vncBridge(id: record.id) != nil,
            "recordings": ((try? store.recordings(sessionID: record.id)) ?? []).map { artifact -> [String: Any] in
                ["url": runs.artifactURL(artifact), "checksum": artifact.checksum, "filename": artifact.filename,
                 "modified_at": Self.iso(artifact.modifiedAt)]
            },
            "failure_reason": record.failureReason ?? NSNull(),
        ]
    }

    // MARK: - Runs

    private func startRun(_ request: HTTPRequest, _ sessionID: String) async throws(APIError) -> HTTPResponse {
        let organization = try organization(request)
        let body = try Self.jsonBody(request)
        let runID = try Self.string(body, "run_id", pattern: #"^(tsk|wr)_[A-Za-z0-9_-]{1,64}$"#,
                                    rule: "tsk_ or wr_ followed by 1-64 of A-Z a-z 0-9 _ -")
        let title = try Self.string(body, "title", pattern: #"^[^\u0000-\u001f]{1,200}$"#,
                                    rule: "1-200 characters without control characters")
        let webhookURL = try Self.string(body, "webhook_url", pattern: #"^https?://[^\s]{1,2040}$"#,
                                         rule: "an http:// or https:// URL of at most 2048 characters")
        if let webhookURL {
            do {
                try Webhooks.validate(url: webhookURL)
                try await webhooks.checkReachable(url: webhookURL)
            } catch { throw APIError(422, "webhook_url: \(error)") }
            guard webhooks.hasSecret(organizationID: organization) else {
                throw APIError(422, "webhook_url: no webhook secret is configured for organization \(organization) (config webhooks.secrets)")
            }
        }
        let run = try await runs.start(sessionID: sessionID, organizationID: organization, runID: runID,
                                       webhookURL: webhookURL, title: title)
        return .json(201, runJSON(run))
    }

    private func getRun(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        .json(200, runJSON(try await runs.run(id: id, organizationID: try organization(request))))
    }

    private func markStep(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        let organization = try organization(request)
        let body = try Self.jsonBody(request)
        guard let label = try Self.string(body, "label", pattern: #"^[^\u0000-\u001f]{1,200}$"#,
                                          rule: "1-200 characters without control characters")
        else { throw APIError(422, "label is required") }
        let (step, artifact) = try await runs.step(runID: id, organizationID: organization, label: label)
        return .json(201, ["run_id": id, "step": step.index, "label": step.label, "created_at": Self.iso(step.createdAt),
                           "screenshot": artifactJSON(artifact)])
    }

    private func completeRun(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        let organization = try organization(request)
        let body = try Self.jsonBody(request)
        guard let status = body["status"] as? String, Runs.finalStatuses.contains(status) else {
            throw APIError(422, "status must be one of \(Runs.finalStatuses.joined(separator: ", "))")
        }
        let reason = try Self.string(body, "failure_reason", pattern: #"^[\s\S]{1,4000}$"#, rule: "1-4000 characters")
        return .json(200, runJSON(try await runs.complete(runID: id, organizationID: organization, status: status,
                                                          failureReason: reason)))
    }

    private func listArtifacts(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        .json(200, try await runs.artifacts(runID: id, organizationID: try organization(request)).map(artifactJSON))
    }

    private func retryWebhook(_ request: HTTPRequest, _ id: String) async throws(APIError) -> HTTPResponse {
        let run = try await runs.run(id: id, organizationID: try organization(request))
        guard run.webhookURL != nil else { throw APIError(409, "run \(id) has no webhook_url") }
        guard !run.isOpen else { throw APIError(409, "run \(id) is not completed yet") }
        guard webhooks.allowRetry(organizationID: run.organizationID) else {
            throw APIError(429, "organization \(run.organizationID) retried \(config.limits.retryWebhookPerMinute) webhooks in the last minute, the most it may (config limits.retry_webhook_per_minute)")
        }
        do {
            guard try webhooks.resend(runID: id) else { throw APIError(409, "run \(id) has no webhook delivery yet") }
        } catch let error as APIError { throw error } catch { throw APIError(503, "cannot queue the webhook: \(error)") }
        return .json(202, ["run_id": id, "status": "queued"])
    }

    /// An artifact's bytes, for the owning organization's key or a valid signed URL.
    private func artifactContent(_ request: HTTPRequest, _ id: String) throws(APIError) -> HTTPResponse {
        let artifact = try? store.artifact(id: id)
        if let key = request.headers["x-api-key"], !key.isEmpty {
            guard let organization = auth.organization(apiKey: key) else { throw APIError(401, "invalid API key") }
            guard let artifact, artifact.organizationID == organization else { throw APIError(404, "artifact \(id) not found") }
            return try serve(artifact, request)
        }
        guard let expires = request.query["expires"], let signature = request.query["signature"] else {
            throw APIError(401, "missing credentials: an x-api-key header or a signed URL (expires, signature)")
        }
        do { try auth.verifyArtifactSignature(artifactID: id, expires: expires, signature: signature) } catch {
            throw APIError(401, error == .expired ? "signed URL expired" : "invalid signature")
        }
        guard let artifact else { throw APIError(404, "artifact \(id) not found") }
        return try serve(artifact, request)
    }

    private func serve(_ artifact: ArtifactRecord, _ request: HTTPRequest) throws(APIError) -> HTTPResponse {
        guard artifact.expiredAt == nil else { throw APIError(404, "artifact expired") }
        return files.response(for: artifact, request: request)
    }

    private func replayPage(_ request: HTTPRequest, runID: String) async -> HTTPResponse {
        guard let run = try? store.run(id: runID) else { return .html(404, Self.message("No run \(runID).")) }
        guard let token = request.query["token"], !token.isEmpty else {
            return .html(401, Self.message("This replay link has no token."))
        }
        // A token for the run, or one for watching its session.
        let granted = [runID, run.sessionID].contains { (try? auth.verifyViewerToken(token, sessionID: $0)) != nil }
        guard granted else { return .html(401, Self.message("This replay link is not valid or has expired.")) }
        let artifacts = (try? store.artifacts(runID: runID)) ?? []
        let links = runs.links(artifacts)
        let steps = ((try? store.steps(runID: runID)) ?? []).map { step -> ReplayPage.Step in
            let screenshot = artifacts.first { $0.id == step.artifactID }.map(runs.artifactURL)
            return .init(index: step.index, label: step.label,
                         offset: Double(step.timeMicros > run.startMicros ? step.timeMicros - run.startMicros : 0) / 1_000_000,
                         screenshotURL: screenshot)
        }
        return .html(200, ReplayPage.html(run: .init(id: run.id, title: run.title, status: run.status,
                                                     videoURL: links.recording, steps: steps)))
    }

    private func runJSON(_ run: RunRecord) -> [String: Any] {
        let links = runs.links(run)
        let token = auth.viewerToken(sessionID: run.id,
                                     expiresAt: Date().addingTimeInterval(Double(config.artifacts.urlTTLSeconds)))
        return [
            "run_id": run.id, "browser_session_id": run.sessionID, "status": run.status,
            "title": run.title ?? NSNull(), "created_at": Self.iso(run.createdAt),
            "started_at": run.startedAt.map(Self.iso) ?? NSNull(), "finished_at": run.finishedAt.map(Self.iso) ?? NSNull(),
            "step_count": run.stepCount, "failure_reason": run.failureReason ?? NSNull(),
            "recording_url": links.recording ?? NSNull(), "screenshot_urls": links.screenshots,
            "app_url": "\(config.effectivePublicURL)/replay/\(run.id)?token=\(token)",
            "webhook_url": run.webhookURL ?? NSNull(),
            "recording_frames": run.framesRecorded, "recording_dropped_frames": run.framesDropped,
            "recording_error": run.recordingError ?? NSNull(),
        ]
    }

    private func artifactJSON(_ artifact: ArtifactRecord) -> [String: Any] {
        [
            "artifact_id": artifact.id, "artifact_type": artifact.kind.rawValue, "step": artifact.step ?? NSNull(),
            "url": runs.artifactURL(artifact), "checksum": artifact.checksum, "filename": artifact.filename,
            "file_size": artifact.fileSize, "content_type": artifact.contentType,
            "modified_at": Self.iso(artifact.modifiedAt), "created_at": Self.iso(artifact.createdAt),
        ]
    }

    // MARK: - Viewers

    func upgrade(_ request: HTTPRequest) -> WebSocketUpgrade {
        let upgrade = acceptViewer(request)
        if case .reject(let response) = upgrade, response.status == 401 { metrics.authFailed(Self.credential(of: request)) }
        return upgrade
    }

    private func acceptViewer(_ request: HTTPRequest) -> WebSocketUpgrade {
        let path = Self.components(request.path)
        // /stream/browser/{id}: frames for viewers; /stream/vnc/browser/{id}: RFB for noVNC.
        let rfb = path.count == 4 && path[1] == "vnc" && path[2] == "browser"
        guard path.first == "stream", rfb || (path.count == 3 && path[1] == "browser") else {
            return .reject(.json(404, ["detail": "not found: \(request.path)"]))
        }
        let id = path[path.count - 1]
        let format: ViewerFormat
        switch request.query["format"] ?? "binary" {
        case "binary": format = .binary
        case "json": format = .json
        default: return .reject(.json(400, ["detail": "format must be binary or json"]))
        }
        var organization: String?
        // The organization's own key may drive its browsers; a viewer token only if minted with control.
        let control: Bool
        if let key = request.headers["x-api-key"], !key.isEmpty {
            guard let owner = auth.organization(apiKey: key) else {
                return .reject(.json(401, ["detail": "invalid API key"]))
            }
            organization = owner
            control = true
        } else if let token = request.query["token"], !token.isEmpty {
            do { control = try auth.verifyViewerToken(token, sessionID: id).control } catch {
                return .reject(.json(401, ["detail": error == .expired ? "viewer token expired" : "invalid viewer token"]))
            }
        } else {
            return .reject(.json(401, ["detail": "missing credentials: an x-api-key header or a ?token= viewer token"]))
        }
        switch sessions.hubForViewer(id: id) {
        case .found(let owner, _) where rfb && (organization == nil || organization == owner):
            guard let bridge = sessions.vncBridge(id: id) else {
                return .reject(.json(409, ["detail": "browser session \(id) has no VNC screen"]))
            }
            return .accept(WebSocketRelay(bridge: bridge, control: control, loop: loop, logger: logger.with(sessionID: id)),
                           maxMessageBytes: 1 << 20)
        case .found(let owner, let hub) where organization == nil || organization == owner:
            return gateway.accept(sessionID: id, hub: hub, format: format, queueFrames: config.viewer.queueFrames,
                                  control: control, input: sessions.inputTarget(id: id),
                                  maxViewers: config.limits.viewersPerSession)
        case .found, .notFound:
            return .reject(.json(404, ["detail": "browser session \(id) not found"]))
        }
    }

    // MARK: - Helpers

    /// Path components without the `/api` prefix and with `/v1/stream/...` folded onto `/stream/...`.
    private static func components(_ path: String) -> [String] {
        var parts = path.split(separator: "/").map(String.init)
        if parts.first == "api", parts.dropFirst().first == "v1" { parts.removeFirst() }
        if parts.count >= 2, parts[0] == "v1", parts[1] == "stream" { parts.removeFirst() }
        return parts
    }

    private static func jsonBody(_ request: HTTPRequest) throws(APIError) -> [String: Any] {
        if request.body.isEmpty { return [:] }
        guard let object = try? JSONSerialization.jsonObject(with: request.body) else {
            throw APIError(400, "request body is not valid JSON")
        }
        guard let dictionary = object as? [String: Any] else { throw APIError(400, "request body must be a JSON object") }
        return dictionary
    }

    /// An optional string field that must match `pattern`.
    private static func string(_ body: [String: Any], _ key: String, pattern: String, rule: String) throws(APIError)
        -> String?
    {
        guard let raw = body[key], !(raw is NSNull) else { return nil }
        guard let text = raw as? String, text.range(of: pattern, options: .regularExpression) != nil else {
            throw APIError(422, "\(key) must be \(rule)")
        }
        return text
    }

    private static func int(_ body: [String: Any], _ key: String, in range: ClosedRange<Int>, default value: Int,
                            unit: String) throws(APIError) -> Int
    {
        guard let raw = body[key], !(raw is NSNull) else { return value }
        guard !isBool(raw), let int = raw as? Int, range.contains(int)
        else { throw APIError(422, "\(key) must be an integer from \(range.lowerBound) to \(range.upperBound) \(unit)") }
        return int
    }

    private static func bool(_ body: [String: Any], _ key: String, default value: Bool) throws(APIError) -> Bool {
        guard let raw = body[key], !(raw is NSNull) else { return value }
        guard isBool(raw), let flag = raw as? Bool else { throw APIError(422, "\(key) must be true or false") }
        return flag
    }

    /// True for a JSON true/false. JSONSerialization gives NSNumbers, and 0 and 1 also cast to Bool.
    private static func isBool(_ raw: Any) -> Bool {
        (raw as? NSNumber).map { String(cString: $0.objCType) == "c" } ?? false
    }

    static func iso(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    private static func message(_ text: String) -> String {
        let escaped = text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        return "<!doctype html><meta charset=utf-8><title>viewportd</title>"
            + "<body style=\"font:15px system-ui;background:#111;color:#ddd;padding:2em\"><p>\(escaped)</p></body>"
    }
}

extension HTTPResponse {
    static func html(_ status: Int, _ html: String) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/html; charset=utf-8",
                     headers: [("cache-control", "no-store"), ("referrer-policy", "no-referrer"),
                               ("x-content-type-options", "nosniff")],
                     body: Data(html.utf8))
    }
}
