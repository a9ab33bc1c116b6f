import Foundation
import Store
import ViewportCore
import WebSocketIO

/// `/v1/browser_sessions...`: register, list, read, close and renew sessions; mint viewer tokens and VNC
/// passwords.
struct SessionRoutes {
    let sessions: Sessions
    let runs: Runs
    let auth: Auth
    let config: Config
    let forwarding: Forwarding?

    var routes: [Route] {
        [
            Route("POST", "v1/browser_sessions") { try await create($0) },
            Route("GET", "v1/browser_sessions") { try await list($0) },
            // An open session's owner answers: what only it knows (its VNC screen, its open run) is live.
            Route("GET", "v1/browser_sessions/*", owner: .openSession) { request in
                try await view(sessions.session(id: request.ids[0], organizationID: request.organizationID))
            },
            Route("POST", "v1/browser_sessions/*/close", owner: .session) { request in
                try await view(sessions.close(id: request.ids[0], organizationID: request.organizationID))
            },
            Route("POST", "v1/browser_sessions/*/renew", owner: .session) { request in
                let body = try request.body(RenewSession.self)
                return try await view(sessions.renew(id: request.ids[0], organizationID: request.organizationID,
                                                     timeoutMinutes: body.timeout?.value))
            },
            Route("POST", "v1/browser_sessions/*/viewer_tokens", owner: .session) { try await mintViewerToken($0) },
            Route("POST", "v1/browser_sessions/*/vnc", owner: .session) { try await mintVNCPassword($0) },
        ]
    }

    private func create(_ request: RouteRequest) async throws -> HTTPResponse {
        let body = try request.body(CreateSession.self)
        let address = body.browserAddress?.value
        let vncAddress = body.vncAddress?.value
        guard address != nil || vncAddress != nil else {
            throw RequestError.invalid(
                "browser_address (http://host:port or ws://host:port/devtools/...) or vnc_address (host:port) is required")
        }
        try await sessions.checkReachable(browserAddress: address, vncAddress: vncAddress)
        let record = try await sessions.create(
            organizationID: request.organizationID, browserAddress: address ?? "",
            timeoutMinutes: body.timeout?.value ?? 60, id: body.browserSessionID?.value, vncAddress: vncAddress,
            vncPassword: body.vncPassword?.value, browserType: body.browserType?.value,
            extensions: body.extensions?.value)
        return .json(201, encoding: try await sessionViews([record])[0])
    }

    private func mintViewerToken(_ request: RouteRequest) async throws -> HTTPResponse {
        let id = request.ids[0]
        let body = try request.body(MintViewerToken.self)
        _ = try await sessions.openSession(id: id, organizationID: request.organizationID)
        let control = body.control?.value ?? false
        let expiresAt = Date().addingTimeInterval(Double(body.ttlSeconds?.value ?? config.viewer.tokenTTLSeconds))
        let token = auth.viewerToken(sessionID: id, expiresAt: expiresAt, control: control)
        return .json(201, encoding: ViewerTokenView(
            token: token, expiresAt: expiresAt, watchURL: "\(config.effectivePublicURL)/watch/\(id)?token=\(token)",
            control: control))
    }

    /// A fresh VNC password for the session's screen: view-only unless `control`.
    private func mintVNCPassword(_ request: RouteRequest) async throws -> HTTPResponse {
        let body = try request.body(MintVNCPassword.self)
        let bridge = try await sessions.screen(id: request.ids[0], organizationID: request.organizationID)
        let control = body.control?.value ?? false
        let expiresAt = Date().addingTimeInterval(Double(body.ttlSeconds?.value ?? config.vnc.passwordTTLSeconds))
        let password = bridge.passwords.mint(control: control, expiresAt: expiresAt)
        let host = config.vnc.listen == "0.0.0.0" ? ProcessInfo.processInfo.hostName : config.vnc.listen
        return .json(201, encoding: VNCPasswordView(host: host, port: bridge.port, password: password,
                                                     vncURL: "vnc://\(host):\(bridge.port)", expiresAt: expiresAt,
                                                     control: control))
    }

    private func view(_ record: SessionRecord) async throws -> HTTPResponse {
        .json(200, encoding: try await sessionViews([record])[0])
    }

    /// The organization's open sessions, newest first. In a cluster each is as its owner shows it: the others'
    /// come from their owners (a node asked by another lists only its own).
    private func list(_ request: RouteRequest) async throws -> HTTPResponse {
        let records = try await sessions.active(organizationID: request.organizationID)
        let here = records.filter { $0.nodeID == nil || $0.nodeID == forwarding?.cluster.nodeID }
        guard let forwarding else { return .json(200, encoding: try await sessionViews(here)) }
        let local = try JSONSerialization.jsonObject(with: APIJSON.encoder().encode(try await sessionViews(here))) as? [Any] ?? []
        let all = local + (try await forwarding.lists(request.http, owning: records))
        return .json(200, all.sorted {
            (($0 as? [String: Any])?["created_at"] as? String ?? "") > (($1 as? [String: Any])?["created_at"] as? String ?? "")
        })
    }

    /// The sessions as the API shows them, their files and open runs read once for all.
    func sessionViews(_ records: [SessionRecord]) async throws -> [SessionView] {
        let ids = records.map(\.id)
        let files = try await runs.sessionFiles(sessionIDs: ids)
        let openRuns = await runs.openRunIDs(sessionIDs: ids)
        return records.map { record in
            let runnable = openRuns[record.id]
            return SessionView(
                browserSessionID: record.id, organizationID: record.organizationID, status: record.status,
                createdAt: record.createdAt, modifiedAt: record.modifiedAt, startedAt: record.startedAt,
                completedAt: record.completedAt, timeout: record.timeoutMinutes,
                expiresAt: record.status.isActive ? record.expiresAt : nil,
                browserAddress: record.browserAddress.isEmpty ? nil : record.browserAddress,
                vncAddress: record.vncAddress, appURL: "\(config.effectivePublicURL)/watch/\(record.id)",
                vncStreamingSupported: sessions.vncBridge(id: record.id) != nil,
                runnableType: runnable.map { $0.hasPrefix("wr_") ? "workflow_run" : "task" }, runnableID: runnable,
                extensions: record.extensions, browserType: record.browserType, downloadPath: record.downloadPath,
                downloadedFiles: (files[record.id] ?? []).filter { $0.kind == .download }.map(fileInfo),
                recordings: (files[record.id] ?? []).filter { $0.kind == .recording }.map(fileInfo),
                deletedAt: record.deletedAt, failureReason: record.failureReason)
        }
    }

    private func fileInfo(_ artifact: ArtifactRecord) -> FileInfo {
        FileInfo(url: runs.artifactURL(artifact), checksum: artifact.checksum, filename: artifact.filename,
                 modifiedAt: artifact.modifiedAt)
    }
}

// MARK: - Bodies

struct CreateSession: Decodable {
    enum BrowserAddress: PatternRule {
        static let pattern = #"^\S{1,2048}$"#
        static let rule = "a URL"
    }
    enum VNCAddress: PatternRule {
        static let pattern = #"^\S{1,294}:[0-9]{1,5}$"#
        static let rule = "host:port"
    }
    enum VNCPassword: PatternRule {
        static let pattern = #"^[\s\S]{1,256}$"#
        static let rule = "1-256 characters"
    }
    enum SessionID: PatternRule {
        static let pattern = #"^pbs_[A-Za-z0-9_-]{1,64}$"#
        static let rule = "pbs_ followed by 1-64 of A-Z a-z 0-9 _ -"
    }

    let browserAddress: Checked<BrowserAddress>?
    let vncAddress: Checked<VNCAddress>?
    let vncPassword: Checked<VNCPassword>?
    let timeout: Checked<SessionTimeout>?
    let browserSessionID: Checked<SessionID>?
    let browserType: Checked<BrowserType>?
    let extensions: Checked<Extensions>?

    enum CodingKeys: String, CodingKey {
        case browserAddress = "browser_address", vncAddress = "vnc_address", vncPassword = "vnc_password", timeout
        case browserSessionID = "browser_session_id", browserType = "browser_type", extensions
    }

    /// The platform's browser types; kept as given (viewportd attaches to a browser, it does not start one).
    enum BrowserType: FieldRule {
        static let rule = "msedge or chrome"
        static func accepts(_ value: String) -> Bool { ["msedge", "chrome"].contains(value) }
    }
    enum Extensions: FieldRule {
        static let rule = "a list of distinct ad-blocker, captcha-solver"
        static func accepts(_ value: [String]) -> Bool {
            Set(value).count == value.count && value.allSatisfy(["ad-blocker", "captcha-solver"].contains)
        }
    }
}

/// A session's timeout in minutes.
enum SessionTimeout: RangeRule {
    static let range = 5...1440
    static let unit = "minutes"
}

struct RenewSession: Decodable {
    let timeout: Checked<SessionTimeout>?
}

/// `true` or `false` (not 0 or 1).
enum Flag: FieldRule {
    static let rule = "true or false"
    static func accepts(_ value: Bool) -> Bool { true }
}

struct MintViewerToken: Decodable {
    enum TTL: RangeRule {
        static let range = 10...86400
        static let unit = "seconds"
    }
    let ttlSeconds: Checked<TTL>?
    let control: Checked<Flag>?
    enum CodingKeys: String, CodingKey { case ttlSeconds = "ttl_seconds", control }
}

struct MintVNCPassword: Decodable {
    enum TTL: RangeRule {
        static let range = 5...86400
        static let unit = "seconds"
    }
    let ttlSeconds: Checked<TTL>?
    let control: Checked<Flag>?
    enum CodingKeys: String, CodingKey { case ttlSeconds = "ttl_seconds", control }
}

// MARK: - Views

/// A file of a session (a recording, a download) as the platform lists them.
struct FileInfo: Encodable {
    let url: String
    let checksum: String
    let filename: String
    let modifiedAt: Date
}

/// A session as the platform's API shows it (field for field), plus `vnc_address`, `expires_at` and
/// `failure_reason`.
struct SessionView: Encodable {
    let browserSessionID: String
    let organizationID: String
    let status: SessionStatus
    let createdAt: Date
    let modifiedAt: Date
    @Nullable var startedAt: Date?
    @Nullable var completedAt: Date?
    let timeout: Int
    @Nullable var expiresAt: Date?
    @Nullable var browserAddress: String?
    @Nullable var vncAddress: String?
    let appURL: String
    let vncStreamingSupported: Bool
    @Nullable var runnableType: String?
    @Nullable var runnableID: String?
    @Nullable var extensions: [String]?
    @Nullable var browserType: String?
    @Nullable var downloadPath: String?
    let downloadedFiles: [FileInfo]
    let recordings: [FileInfo]
    @Nullable var deletedAt: Date?
    @Nullable var failureReason: String?
}

struct ViewerTokenView: Encodable {
    let token: String
    let expiresAt: Date
    let watchURL: String
    let control: Bool
}

struct VNCPasswordView: Encodable {
    let host: String
    let port: Int
    let password: String
    let vncURL: String
    let expiresAt: Date
    let control: Bool
}
