import Foundation
import Store
import WebSocketIO

/// `/v1/artifacts/{id}/content`: an artifact's bytes, for the owning organization's key or a signed URL.
struct ArtifactRoutes {
    let runs: Runs
    let files: ArtifactFiles
    let auth: Auth

    var routes: [Route] {
        // The file of an artifact not in the bucket is on the node that made it: the owner of its session.
        [Route("GET", "v1/artifacts/*/content", .open, owner: .artifactFile) { try await content($0) }]
    }

    private func content(_ request: RouteRequest) async throws -> HTTPResponse {
        let id = request.ids[0]
        let artifact = try await runs.artifact(id: id)
        if let key = request.http.headers["x-api-key"], !key.isEmpty {
            guard let organization = auth.organization(apiKey: key) else {
                throw HTTPFailure(status: 401, detail: "invalid API key")
            }
            guard let artifact, artifact.organizationID == organization else { throw RunError.artifactNotFound(id: id) }
            return try await serveIfKept(artifact, request.http)
        }
        guard let expires = request.http.query["expires"], let signature = request.http.query["signature"] else {
            throw HTTPFailure(status: 401, detail: "missing credentials: an x-api-key header or a signed URL (expires, signature)")
        }
        do { try auth.verifyArtifactSignature(artifactID: id, expires: expires, signature: signature) } catch {
            throw HTTPFailure(status: 401, detail: error == .expired ? "signed URL expired" : "invalid signature")
        }
        guard let artifact else { throw RunError.artifactNotFound(id: id) }
        return try await serveIfKept(artifact, request.http)
    }

    /// The file while it is on this host; once stored in the bucket, a redirect (302) to a fresh presigned URL of
    /// the object (Range and seeking then work against the bucket).
    private func serveIfKept(_ artifact: ArtifactRecord, _ request: HTTPRequest) async throws -> HTTPResponse {
        guard artifact.expiredAt == nil else { throw RunError.artifactExpired }
        if artifact.objectKey != nil { return redirect(to: artifact) }
        if let response = serve(artifact, request) { return response }
        // The upload may have finished and deleted the local copy since the record was read.
        if let stored = try await runs.artifact(id: artifact.id), stored.objectKey != nil { return redirect(to: stored) }
        return Router.error(404, "artifact file missing")
    }

    private func redirect(to artifact: ArtifactRecord) -> HTTPResponse {
        HTTPResponse(status: 302, contentType: "application/json",
                     headers: [("location", runs.artifactURL(artifact)), ("cache-control", "no-store")],
                     body: Data(#"{"detail":"the artifact is in object storage"}"#.utf8))
    }

    /// The artifact's bytes for a GET/HEAD: ETag and conditional requests, one `Range` (206/416), long-lived
    /// caching (an artifact never changes under its id).
    private func serve(_ artifact: ArtifactRecord, _ request: HTTPRequest) -> HTTPResponse? {
        let etag = "\"\(artifact.checksum.prefix(32))\""
        var headers: [(name: String, value: String)] = [
            ("etag", etag), ("accept-ranges", "bytes"), ("cache-control", "private, max-age=3600"),
            // A download is whatever a page sent: never shown inline on this origin.
            ("content-disposition", "\(artifact.kind == .download ? "attachment" : "inline"); filename=\""
                + artifact.filename.replacingOccurrences(of: "\"", with: "_") + "\""),
            ("x-content-type-options", "nosniff"),
        ]
        if let match = request.headers["if-none-match"], match.split(separator: ",").contains(where: {
            $0.trimmingCharacters(in: .whitespaces) == etag || $0.trimmingCharacters(in: .whitespaces) == "*"
        }) {
            return HTTPResponse(status: 304, contentType: artifact.contentType, headers: headers, body: Data())
        }
        let size = artifact.fileSize
        var range = 0..<size
        var status = 200
        // If-Range with another validator means the client's copy is stale: send the whole file.
        if let header = request.headers["range"], request.headers["if-range"].map({ $0 == etag }) ?? true {
            switch HTTPRange.parse(header, size: size) {
            case .some(.some(let satisfiable)):
                range = satisfiable
                status = 206
                headers.append(("content-range", "bytes \(range.lowerBound)-\(range.upperBound - 1)/\(size)"))
            case .some(.none):
                headers.append(("content-range", "bytes */\(size)"))
                return HTTPResponse(status: 416, contentType: "application/json", headers: headers,
                                    body: Data(#"{"detail":"range not satisfiable"}"#.utf8))
            case .none:
                break  // not a single byte range we understand: the whole file, as RFC 9110 allows
            }
        }
        guard let file = FileBody(path: files.url(artifact.path).path, offset: range.lowerBound, length: range.count) else {
            return nil
        }
        return HTTPResponse(status: status, contentType: artifact.contentType, headers: headers, file: file)
    }
}
