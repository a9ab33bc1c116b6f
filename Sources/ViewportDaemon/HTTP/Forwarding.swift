import Foundation
import PostgresStore
import Store
import ViewportCore
import WebSocketIO

/// In a cluster, the requests another node must answer: a request about a session (or its run, or the file of an
/// artifact made in it and not in the bucket yet) that another live node owns goes to that node's
/// `advertise_url` with the same method, path, query, body and `x-api-key`, signed with the ``NodeCredential``,
/// and its answer (status, content type, body) comes back as it is.
///
/// A request that carries a valid node credential was forwarded already: it is answered here or refused (503),
/// never forwarded again. An owner that is unknown, whose lease expired, that does not answer within
/// ``timeout`` or cannot be reached is 503 `{"detail"}` naming it.
struct Forwarding: Sendable {
    let cluster: Cluster
    let credential: NodeCredential
    let loop: EventLoop
    /// Where an artifact's file from another node is kept while it is sent on.
    let spoolDirectory: String

    /// Seconds a forwarded API request may take; an artifact's file, written to disk before it is sent on, more.
    static let timeout = 10.0
    static let fileTimeout = 120.0
    /// The request headers that go along, and the response headers that come back.
    static let requestHeaders = ["x-api-key", "content-type", "range", "if-none-match", "if-range"]
    static let responseHeaders = ["content-type", "cache-control", "etag", "accept-ranges", "content-disposition",
                                  "content-range", "location", "allow", "x-content-type-options"]

    /// The node a request comes from, when it carries a valid node credential.
    func sender(of request: HTTPRequest) -> String? {
        credential.verify({ request.headers[$0] }, method: request.method, path: request.path)
    }

    /// The owner's answer to a request about what `owner` and `id` name, when another node owns it; nil: this
    /// node answers. With an organization (API-key routes), only that organization's sessions are forwarded.
    func answer(_ request: HTTPRequest, owner: Route.Owner, id: String, organizationID: String) async throws
        -> HTTPResponse?
    {
        guard let session = try await session(owner, id),
              organizationID.isEmpty || session.organizationID == organizationID
        else { return nil }
        guard case .owner(let node, let url) = try await cluster.placement(of: session) else { return nil }
        if let sender = sender(of: request) {
            throw OwnerUnavailable(detail: "browser session \(session.id) is owned by viewportd node \(node), not by "
                                   + "\(cluster.nodeID) to which node \(sender) forwarded the request (not forwarded again)")
        }
        return try await forward(request, to: node, at: url, spool: owner == .artifactFile)
    }

    /// What the other nodes that own some of `sessions` list: each one's answer to `request` (a list, which a
    /// node answers with its own sessions only when forwarded), asked concurrently. A node that does not answer
    /// 200 makes it 503.
    func lists(_ request: HTTPRequest, owning sessions: [SessionRecord]) async throws -> [Any] {
        guard sender(of: request) == nil else { return [] }
        let owners = Dictionary(sessions.compactMap { session in session.nodeID.map { ($0, session) } }) { first, _ in first }
        let bodies = try await withThrowingTaskGroup(of: Data.self) { group in
            for session in owners.values {
                guard case .owner(let node, let url) = try await cluster.placement(of: session) else { continue }
                group.addTask {
                    let answer = try await forward(request, to: node, at: url)
                    guard answer.status == 200 else {
                        throw OwnerUnavailable(detail: "viewportd node \(node), which owns browser session \(session.id), "
                                               + "answered \(answer.status): \(String(decoding: answer.body.prefix(500), as: UTF8.self))")
                    }
                    return answer.body
                }
            }
            return try await group.reduce(into: [Data]()) { $0.append($1) }
        }
        return bodies.flatMap { (try? JSONSerialization.jsonObject(with: $0) as? [Any]) ?? [] }
    }

    /// The session whose owner answers.
    private func session(_ owner: Route.Owner, _ id: String) async throws -> SessionRecord? {
        let sessionID: String?
        switch owner {
        case .session, .openSession: sessionID = id
        case .run: sessionID = try await cluster.store.run(id: id)?.sessionID
        case .artifactFile:
            sessionID = try await cluster.store.artifact(id: id).flatMap { $0.objectKey == nil ? $0.sessionID : nil }
        }
        guard let sessionID, let session = try await cluster.store.session(id: sessionID) else { return nil }
        return owner == .openSession && !session.status.isActive ? nil : session
    }

    /// Sends `request` to node `node` at `base` and returns its answer. With `spool`, the body goes through a
    /// file (an artifact of any size); HEAD is sent as GET (the server leaves the body out of the answer).
    func forward(_ request: HTTPRequest, to node: String, at base: String, spool: Bool = false) async throws
        -> HTTPResponse
    {
        let method = request.method == "HEAD" ? "GET" : request.method
        let query = request.query.sorted { $0.key < $1.key }.map { "\(Self.encoded($0.key))=\(Self.encoded($0.value))" }
        let url = base.trimmingSuffix("/") + request.path + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
        let headers = credential.headers(nodeID: cluster.nodeID, method: method, path: request.path)
            + Self.requestHeaders.compactMap { name in request.headers[name].map { (name, $0) } }
        let file = spool ? "\(spoolDirectory)/forwarded-\(UUID().uuidString)" : nil
        defer { if let file { unlink(file) } }
        let answer: HTTPClientResponse
        do {
            answer = try await loop.httpExchange(method, url, headers: headers,
                                                 body: request.body.isEmpty ? nil : request.body,
                                                 responseHeaders: Self.responseHeaders, bodyFile: file,
                                                 timeout: spool ? Self.fileTimeout : Self.timeout)
        } catch {
            throw OwnerUnavailable(detail: "viewportd node \(node), which owns the session, did not answer at \(base): \(error)")
        }
        let contentType = answer.headers["content-type"] ?? "application/octet-stream"
        let passed = answer.headers.filter { $0.key != "content-type" }.sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        // Opened before the file is unlinked: the descriptor keeps it until the answer is sent.
        if let file, let size = try? FileManager.default.attributesOfItem(atPath: file)[.size] as? Int, size > 0,
           let body = FileBody(path: file, offset: 0, length: size)
        {
            return HTTPResponse(status: answer.status, contentType: contentType, headers: passed, file: body)
        }
        return HTTPResponse(status: answer.status, contentType: contentType, headers: passed, body: answer.body)
    }

    private static func encoded(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }
}

extension String {
    fileprivate func trimmingSuffix(_ suffix: String) -> String { hasSuffix(suffix) ? String(dropLast(suffix.count)) : self }
}
