import Foundation
import Logging
import WebSocketIO

/// A request as a route sees it: the HTTP request, the ids its path pattern captured, and the organization whose
/// `x-api-key` it carries (for routes with ``Route/Access/apiKey``).
struct RouteRequest: Sendable {
    let http: HTTPRequest
    let ids: [String]
    let organizationID: String

    /// The JSON body as `Body` (an empty body is `{}`).
    func body<Body: Decodable>(_ type: Body.Type = Body.self) throws(RequestError) -> Body {
        try APIJSON.decode(Body.self, from: http.body)
    }
}

/// One method on one path pattern (`*` captures a component) and its handler.
struct Route: Sendable {
    enum Access: Sendable {
        /// Needs the organization's `x-api-key`, checked before the body is read.
        case apiKey
        /// Needs none, or checks its own credential (a viewer token, a signed URL).
        case open
    }

    /// In a cluster, the node that answers a request whose first captured id names: the owner of that session
    /// (of an open one only: `openSession`), of that run's session, or of the session an artifact's file was made
    /// in while the file is not in the bucket (``Forwarding``).
    enum Owner: Sendable {
        case session, openSession, run, artifactFile
    }

    let method: String
    let pattern: [String]
    let access: Access
    /// nil: any node answers.
    let owner: Owner?
    let handler: @Sendable (RouteRequest) async throws -> HTTPResponse

    init(_ method: String, _ path: String, _ access: Access = .apiKey, owner: Owner? = nil,
         _ handler: @escaping @Sendable (RouteRequest) async throws -> HTTPResponse)
    {
        self.method = method
        pattern = path.split(separator: "/").map(String.init)
        self.access = access
        self.owner = owner
        self.handler = handler
    }

    func match(_ path: [String]) -> [String]? {
        guard path.count == pattern.count else { return nil }
        var captured: [String] = []
        for (part, expected) in zip(path, pattern) {
            if expected == "*" { captured.append(part) } else if part != expected { return nil }
        }
        return captured
    }
}

/// A refusal of the HTTP layer itself: credentials, unknown paths.
struct HTTPFailure: Error {
    let status: Int
    let detail: String
}

/// The error body of every JSON error: `{"detail": "..."}`.
struct ErrorBody: Encodable {
    let detail: String
}

/// The HTTP side of the daemon: finds the route of a request, checks its API key, has the owner answer what
/// another cluster node owns (``Forwarding``), and turns what the route throws into a status and `{"detail"}` (the
/// one place where domain errors become HTTP). WebSocket upgrades go to the viewer routes.
///
/// REST answers JSON in snake_case with ISO-8601 UTC times. Paths are served under `/v1/...` and `/api/v1/...`;
/// viewers connect to `/stream/browser/{id}` (also under `/v1` and `/api/v1`).
final class Router: HTTPServerDelegate {
    private let routes: [Route]
    private let viewers: ViewerRoutes
    private let auth: Auth
    private let metrics: DaemonMetrics
    private let forwarding: Forwarding?

    init(routes: [Route], viewers: ViewerRoutes, auth: Auth, metrics: DaemonMetrics, forwarding: Forwarding? = nil) {
        self.routes = routes
        self.viewers = viewers
        self.auth = auth
        self.metrics = metrics
        self.forwarding = forwarding
    }

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        let response: HTTPResponse
        do { response = try await route(request) } catch { response = Self.response(for: error) }
        if response.status == 401 { metrics.authFailed(Self.credential(of: request)) }
        return response
    }

    /// A request to an API-key route whose `x-api-key` is missing or unknown is answered 401 before its body is
    /// read.
    func refuseBeforeBody(_ request: HTTPRequest) -> HTTPResponse? {
        let path = Self.components(request.path)
        guard routes.contains(where: { $0.access == .apiKey && $0.match(path) != nil }) else { return nil }
        do { _ = try organization(request) } catch {
            metrics.authFailed(.apiKey)
            return Self.response(for: error)
        }
        return nil
    }

    func upgrade(_ request: HTTPRequest) -> WebSocketUpgrade {
        let upgrade: WebSocketUpgrade
        do { upgrade = try viewers.upgrade(request, path: Self.components(request.path)) } catch {
            upgrade = .reject(Self.response(for: error))
        }
        if case .reject(let response) = upgrade, response.status == 401 { metrics.authFailed(Self.credential(of: request)) }
        return upgrade
    }

    private func route(_ request: HTTPRequest) async throws -> HTTPResponse {
        let path = Self.components(request.path)
        let candidates = routes.compactMap { route in route.match(path).map { (route, $0) } }
        guard !candidates.isEmpty else { throw HTTPFailure(status: 404, detail: "not found: \(request.path)") }
        let method = request.method == "HEAD" ? "GET" : request.method
        guard let (route, ids) = candidates.first(where: { $0.0.method == method }) else {
            let allowed = Set(candidates.map(\.0.method) + (candidates.contains { $0.0.method == "GET" } ? ["HEAD"] : []))
            var response = Self.error(405, "method \(request.method) not allowed on \(request.path)")
            response.headers.append(("allow", allowed.sorted().joined(separator: ", ")))
            return response
        }
        let organizationID = route.access == .apiKey ? try organization(request) : ""
        if let owner = route.owner, let forwarding,
           let answer = try await forwarding.answer(request, owner: owner, id: ids[0], organizationID: organizationID)
        {
            return answer
        }
        return try await route.handler(RouteRequest(http: request, ids: ids, organizationID: organizationID))
    }

    /// The organization whose API key the request carries.
    func organization(_ request: HTTPRequest) throws(HTTPFailure) -> String {
        guard let key = request.headers["x-api-key"], !key.isEmpty else {
            throw HTTPFailure(status: 401, detail: "missing x-api-key header")
        }
        guard let organization = auth.organization(apiKey: key) else {
            throw HTTPFailure(status: 401, detail: "invalid API key")
        }
        return organization
    }

    // MARK: - Errors to HTTP

    /// The status of each kind of domain failure.
    static func status(of kind: FailureKind) -> Int {
        switch kind {
        case .invalid: 422
        case .notFound: 404
        case .conflict: 409
        case .limited: 429
        case .unavailable: 503
        }
    }

    static func response(for error: any Error) -> HTTPResponse {
        switch error {
        case let error as any DomainError: Self.error(status(of: error.kind), error.detail)
        case let error as HTTPFailure: Self.error(error.status, error.detail)
        case RequestError.malformed(let detail): Self.error(400, detail)
        case RequestError.invalid(let detail): Self.error(422, detail)
        default: Self.error(500, "internal error: \(error)")
        }
    }

    static func error(_ status: Int, _ detail: String) -> HTTPResponse {
        .json(status, encoding: ErrorBody(detail: detail))
    }

    /// Which credential a refused request relied on (for the auth failure metric).
    private static func credential(of request: HTTPRequest) -> DaemonMetrics.AuthFailure {
        if request.headers["x-api-key"] != nil { return .apiKey }
        if request.query["signature"] != nil { return .artifactURL }
        return request.query["token"] != nil ? .viewerToken : .apiKey
    }

    /// Path components without the `/api` prefix and with `/v1/stream/...` folded onto `/stream/...`.
    static func components(_ path: String) -> [String] {
        var parts = path.split(separator: "/").map(String.init)
        if parts.first == "api", parts.dropFirst().first == "v1" { parts.removeFirst() }
        if parts.count >= 2, parts[0] == "v1", parts[1] == "stream" { parts.removeFirst() }
        return parts
    }
}

extension HTTPResponse {
    static func html(_ status: Int, _ html: String) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "text/html; charset=utf-8",
                     headers: [("cache-control", "no-store"), ("referrer-policy", "no-referrer"),
                               ("x-content-type-options", "nosniff")],
                     body: Data(html.utf8))
    }

    /// A plain page saying `text`.
    static func message(_ status: Int, _ text: String) -> HTTPResponse {
        let escaped = text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
        return .html(status, "<!doctype html><meta charset=utf-8><title>viewportd</title>"
            + "<body style=\"font:15px system-ui;background:#111;color:#ddd;padding:2em\"><p>\(escaped)</p></body>")
    }
}
