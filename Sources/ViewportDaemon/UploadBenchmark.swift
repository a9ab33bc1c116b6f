public import Foundation
import Logging
import Store

/// Uploads the file at `path` as the daemon uploads a published artifact, for `viewportd-bench s3` and its test:
/// recorded as an artifact of a new store in `config.stateDir` (so queued in its outbox in the same transaction),
/// sent by ``Uploads`` from the file (in `s3.part_size_mb` parts when larger), confirmed by size and SHA-256, and its
/// local copy deleted. The artifact is a hard link to `path` (same file system), so `path` itself stays.
///
/// Returns the object's key once it is stored. Throws unless `config` stores artifacts in S3, or when the upload
/// has not succeeded within `timeout` seconds (with its last error).
public func uploadAsArtifact(path: String, config: Config, timeout: Double) async throws -> String {
    guard let bucket = Bucket(config: config) else { throw DaemonError("artifacts.store is not s3") }
    let files = try ArtifactFiles(stateDir: config.stateDir)
    let store = try Store(path: config.stateDir + "/viewportd.sqlite", objectPrefix: config.s3.prefix)
    let name = URL(fileURLWithPath: path).lastPathComponent
    let relative = try files.runDirectory(organizationID: "org_bench", sessionID: "bs_bench", runID: "wr_bench")
        + "/" + name
    guard link(path, files.url(relative).path) == 0 else {
        throw DaemonError("cannot link \(path) into \(config.stateDir): \(String(cString: strerror(errno)))")
    }
    let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
    var logger = Logger(label: "viewportd-bench")
    logger.logLevel = .error
    let (stored, storedArtifact) = AsyncStream<String?>.makeStream()
    let uploads = Uploads(store: store, files: files, bucket: bucket, logger: logger) { storedArtifact.yield($0.objectKey) }
    // The uploader computes the object's checksum itself; the record's is only shown by the API.
    try await store.insert(ArtifactRecord(
        id: ArtifactFiles.newID(), kind: .download, runID: "wr_bench", sessionID: "bs_bench", organizationID: "org_bench",
        step: nil, path: relative, filename: name, fileSize: size, checksum: "", contentType: "application/octet-stream",
        createdAt: Date(), modifiedAt: Date()))
    let running = Task { await uploads.run() }
    defer { running.cancel() }
    let waiting = Task { try? await Task.sleep(for: .seconds(timeout)); storedArtifact.yield(nil) }
    defer { waiting.cancel() }
    for await key in stored {
        if let key { return key }
        break
    }
    let error = try await store.dueUploads(now: .distantFuture, limit: 1).first?.lastError
    throw DaemonError("\(name) was not stored within \(Int(timeout)) s: \(error ?? "no attempt finished")")
}
