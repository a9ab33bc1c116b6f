public import Foundation
import Logging
import Store

/// Uploads the file at `path` as the daemon uploads a published artifact, for `viewportd-bench s3` and its test:
/// recorded as an artifact of a new store in `config.stateDir` (so queued in its outbox in the same transaction),
/// sent by ``Uploads`` from the file (in `s3.part_size_mb` parts when larger), confirmed by size and SHA-256, and its
/// local copy deleted. The artifact is a hard link to `path` (same file system), so `path` itself stays.
///
/// `checksum` is the file's SHA-256 (hex), which the daemon computes when it publishes an artifact and the uploader
/// checks again. Returns the object's key once it is stored. Throws unless `config` stores artifacts in S3, or when
/// the upload has not succeeded within `timeout` seconds (with its last error).
public func uploadAsArtifact(path: String, checksum: String, config: Config, timeout: Double) async throws -> String {
    guard let bucket = Bucket(config: config) else { throw DaemonError("artifacts.store is not s3") }
    let files = try ArtifactFiles(stateDir: config.stateDir)
    let store = try SQLiteStore(path: config.stateDir + "/viewportd.sqlite", objectPrefix: config.s3.prefix)
    let name = URL(fileURLWithPath: path).lastPathComponent
    let relative = try files.runDirectory(organizationID: "org_bench", sessionID: "bs_bench", runID: "wr_bench")
        + "/" + name
    guard link(path, files.url(relative).path) == 0 else {
        throw DaemonError("cannot link \(path) into \(config.stateDir): \(String(cString: strerror(errno)))")
    }
    let size = try ArtifactFiles.size(ofFile: path)
    var logger = Logger(label: "viewportd-bench")
    logger.logLevel = .error
    let (settled, settle) = AsyncStream<Bool>.makeStream()
    let uploads = Uploads(store: store, files: files, bucket: bucket, logger: logger) { _ in settle.yield(true) }
    try await store.insert(ArtifactRecord(
        id: ArtifactFiles.newID(), kind: .download, runID: "wr_bench", sessionID: "bs_bench", organizationID: "org_bench",
        step: nil, path: relative, filename: name, fileSize: size, checksum: checksum,
        contentType: "application/octet-stream", createdAt: Date(), modifiedAt: Date()))
    let running = Task { await uploads.run() }
    defer { running.cancel() }
    let waiting = Task { try? await Task.sleep(for: .seconds(timeout)); settle.yield(false) }
    defer { waiting.cancel() }
    for await done in settled {
        guard done else { break }
        // Settled: stored, or dropped (its file went).
        guard let key = try await store.artifacts(runID: "wr_bench").first?.objectKey else {
            throw DaemonError("the upload of \(name) was dropped")
        }
        return key
    }
    let error = try await store.dueUploads(now: .distantFuture, limit: 1).first?.lastError
    throw DaemonError("\(name) was not stored within \(Int(timeout)) s: \(error ?? "no attempt finished")")
}
