import Digests
import Foundation
import Store

/// Files of published artifacts under `<state_dir>/artifacts/{organization}/{session}/{run}/`.
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
        let path = url(relative).path
        return (try Self.size(ofFile: path), try Digest.sha256(file: path).hex)
    }

    /// The size in bytes of the file at `path`.
    static func size(ofFile path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
    }

    /// A new artifact id.
    static func newID() -> String { "art_\(Digest.randomBytes(12).hex)" }

    /// Where the browser of a session saves its downloads.
    static func downloadsDirectory(organizationID: String, sessionID: String) -> String {
        "\(organizationID)/\(sessionID)/downloads"
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
}
