import Foundation
import Store
import WebSocketIO

/// Files of published artifacts under `<state_dir>/artifacts/{organization}/{session}/{run}/`, and their serving.
///
/// Paths are built only from ids the API validated and names viewportd chose; a request never names a path.
/// Every file appears by rename once complete, so nothing half-written is ever published.
struct ArtifactFiles: Sendable {
    let root: URL

    init(stateDir: String) throws {
        root = URL(fileURLWithPath: stateDir).appendingPathComponent("artifacts")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    /// The directory of a run's files (created if missing), relative to ``root``.
    func runDirectory(organizationID: String, sessionID: String, runID: String) throws -> String {
        let relative = "\(organizationID)/\(sessionID)/\(runID)"
        try FileManager.default.createDirectory(at: root.appendingPathComponent(relative),
                                                withIntermediateDirectories: true)
        return relative
    }

    func url(_ relative: String) -> URL { root.appendingPathComponent(relative) }

    /// A temporary path beside `relative` (same file system, so the final rename is atomic).
    func temporaryPath(for relative: String) -> String { url(relative).path + ".partial-\(UUID().uuidString)" }

    /// Writes `data` to `relative` atomically and durably.
    func write(_ data: Data, to relative: String) throws {
        let temporary = temporaryPath(for: relative)
        guard FileManager.default.createFile(atPath: temporary, contents: data) else {
            throw DaemonError("cannot write \(temporary)")
        }
        try publish(temporary, as: relative)
    }

    /// Syncs a finished temporary file and renames it into place.
    func publish(_ temporary: String, as relative: String) throws {
        let descriptor = open(temporary, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw DaemonError("cannot open \(temporary)") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0, rename(temporary, url(relative).path) == 0 else {
            unlink(temporary)
            throw DaemonError("cannot publish \(relative): \(String(cString: strerror(errno)))")
        }
    }

    /// Size and SHA-256 (hex) of a published file.
    func measure(_ relative: String) throws -> (size: Int, checksum: String) {
        let data = try Data(contentsOf: url(relative), options: .alwaysMapped)
        return (data.count, Digest.sha256(data).hex)
    }

    /// Removes a file, ignoring one already gone.
    func remove(_ relative: String) { unlink(url(relative).path) }

    /// Removes the run, session and organization directories of `paths` that are empty now.
    func removeEmptyDirectories(of paths: [String]) {
        var directories = Set(paths.map { ($0 as NSString).deletingLastPathComponent })
        while !directories.isEmpty {
            // Level by level (every artifact sits at the same depth): a parent is tried once a child is gone.
            let next = directories.filter { !$0.isEmpty && rmdir(url($0).path) == 0 }
            directories = Set(next.map { ($0 as NSString).deletingLastPathComponent })
        }
    }

    // MARK: - Serving

    /// The artifact's bytes for a GET/HEAD: ETag and conditional requests, one `Range` (206/416), long-lived
    /// caching (an artifact never changes under its id).
    func response(for artifact: ArtifactRecord, request: HTTPRequest) -> HTTPResponse {
        let etag = "\"\(artifact.checksum.prefix(32))\""
        var headers: [(name: String, value: String)] = [
            ("etag", etag), ("accept-ranges", "bytes"), ("cache-control", "private, max-age=3600"),
            ("content-disposition", "inline; filename=\"\(artifact.filename)\""),
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
            switch Self.parseRange(header, size: size) {
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
        guard let file = FileBody(path: url(artifact.path).path, offset: range.lowerBound, length: range.count) else {
            return .json(404, ["detail": "artifact file missing"])
        }
        return HTTPResponse(status: status, contentType: artifact.contentType, headers: headers, file: file)
    }

    /// `bytes=a-b`, `bytes=a-` or `bytes=-n`. nil: ignore the header; `.some(nil)`: unsatisfiable.
    static func parseRange(_ header: String, size: Int) -> Range<Int>?? { HTTPRange.parse(header, size: size) }
}
