import Foundation
import Logging
import ServiceLifecycle
import Store
import ViewportCore

/// Keeps artifacts from filling the disk: deletes those of closed sessions older than `retention.max_age_days`,
/// then, while all artifacts take more than `retention.max_disk_gb`, whole closed sessions' artifacts, the oldest
/// closed session first. An open session's artifacts are never deleted. The records stay, marked expired, so the
/// API answers 404 "artifact expired" for them.
///
/// With a bucket, the disk budget counts (and frees) only what is still on this host; an artifact stored in the
/// bucket expires by age, and its object is deleted then (so no bucket lifecycle rule is needed for artifacts).
struct Retention: Sendable {
    let store: any Store
    let files: ArtifactFiles
    let bucket: Bucket?
    let maxAge: TimeInterval
    let maxBytes: Int
    let logger: Logger

    init(store: any Store, files: ArtifactFiles, bucket: Bucket?, config: Config, logger: Logger) {
        self.store = store
        self.bucket = bucket
        self.files = files
        maxAge = Double(config.retention.maxAgeDays) * 86400
        maxBytes = Int(config.retention.maxDiskGB * 1_000_000_000)
        self.logger = logger
    }

    /// What a sweep did.
    struct Sweep: Equatable {
        var expired: [String] = []
        var bytesFreed = 0
        /// Bytes of the artifacts left, recordings in progress included.
        var bytesLeft = 0
    }

    /// Deletes what the limits say must go, as of `now`.
    @discardableResult
    func sweep(now: Date = Date()) async throws -> Sweep {
        var doomed = try await store.expirableArtifacts(createdBefore: now.addingTimeInterval(-maxAge))
        // Recordings in progress take disk too: they count toward the budget (they are never deleted here).
        let segments = try await store.unfinishedSegments()
        let recording = await offThread { [files] in
            segments.reduce(0) { total, segment in
                total + ((try? ArtifactFiles.size(ofFile: files.url(segment.path).path)) ?? 0)
            }
        }
        var left = try await store.liveArtifactBytes() + recording
            - doomed.filter { $0.objectKey == nil }.reduce(0) { $0 + $1.fileSize }
        if left > maxBytes {
            let chosen = Set(doomed.map(\.id))
            var bySession: [(id: String, artifacts: [ArtifactRecord])] = []
            for artifact in try await store.expirableArtifacts() where !chosen.contains(artifact.id) && artifact.objectKey == nil {
                if bySession.last?.id == artifact.sessionID {
                    bySession[bySession.count - 1].artifacts.append(artifact)
                } else {
                    bySession.append((artifact.sessionID, [artifact]))
                }
            }
            for session in bySession where left > maxBytes {
                doomed += session.artifacts
                left -= session.artifacts.reduce(0) { $0 + $1.fileSize }
            }
        }
        // Marked first: the API never serves a record whose file is going.
        try await store.markExpired(artifactIDs: doomed.map(\.id), at: now)
        let paths = doomed.map(\.path)
        await offThread { [files] in
            for path in paths { files.remove(path) }
            files.removeEmptyDirectories(of: paths)
        }
        if let bucket { await deleteSpentLiveParts(bucket) }
        let local = doomed.filter { $0.objectKey == nil }
        let result = Sweep(expired: doomed.map(\.id), bytesFreed: local.reduce(0) { $0 + $1.fileSize }, bytesLeft: left)
        if !doomed.isEmpty {
            logger.info("retention deleted artifacts", metadata: [
                "artifacts": "\(doomed.count)", "bytes_freed": "\(result.bytesFreed)", "bytes_left": "\(left)",
                "sessions": "\(Set(doomed.map(\.sessionID)).count)",
            ])
        }
        if left > maxBytes {
            logger.warning("artifacts exceed retention.max_disk_gb, but the rest belong to open sessions",
                           metadata: ["bytes": "\(left)", "limit": "\(maxBytes)"])
        }
        return result
    }
}

extension Retention {
    /// Queues the deletion of the live parts of finished recordings (and of their runs' manifests) once every run
    /// cut from them has its own MP4 in the bucket: they were only insurance against losing the host. At most 100
    /// recordings a sweep; the deletions go through the outbox, so a slow bucket never holds the sweep.
    func deleteSpentLiveParts(_ bucket: Bucket) async {
        for (segment, runIDs) in (try? await store.segmentsWithSpentLiveParts(limit: 100)) ?? [] {
            // The segment's path is {organization}/{session}/{segment}.fmp4.
            guard let organizationID = segment.path.split(separator: "/").first.map(String.init) else { continue }
            let prefix = bucket.segmentPrefix(organizationID: organizationID, sessionID: segment.sessionID,
                                              segmentID: segment.id)
            let deletions = [UploadRecord.deletion(.deletePrefix, key: prefix)] + runIDs.map {
                UploadRecord.deletion(key: bucket.manifestKey(runID: $0, organizationID: organizationID))
            }
            do { try await store.retireLiveParts(segmentID: segment.id, deletions: deletions) } catch {
                logger.warning("cannot queue the deletion of a recording's live parts",
                               metadata: ["segment_id": "\(segment.id)", "error": "\(error)"])
            }
        }
        bucket.queued.signal()
    }
}

/// Sweeps at start and then every `retention.sweep_interval_seconds`.
struct RetentionService: Service {
    let retention: Retention
    let interval: Duration

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do { try await retention.sweep() } catch {
                retention.logger.error("retention sweep failed", metadata: ["error": "\(error)"])
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: interval) }
        }
    }
}
