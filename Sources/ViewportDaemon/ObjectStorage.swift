import Digests
import Foundation
import Logging
import ObjectStore
import ServiceLifecycle
import Store
import Synchronization

/// The bucket of `artifacts.store: s3`: the client, and the links handed out for stored objects.
struct Bucket: Sendable {
    let client: S3Client
    let config: S3Config
    /// Lifetime of presigned links (`artifacts.url_ttl_seconds`).
    let urlTTL: Int
    /// Signalled when something is queued for upload.
    let queued = Wakeup()

    /// nil unless `artifacts.store` is `s3` (the config loader has checked the section then).
    init?(config: Config) {
        guard config.artifacts.store == .s3, let endpoint = config.s3.endpoint, let bucket = config.s3.bucket else {
            return nil
        }
        self.config = config.s3
        urlTTL = config.artifacts.urlTTLSeconds
        client = S3Client(
            location: S3Location(endpoint: endpoint, region: config.s3.region, bucket: bucket,
                                 pathStyle: config.s3.addressing == .path),
            credentials: S3Credentials(accessKeyID: config.s3.accessKeyID ?? "",
                                       secretAccessKey: config.s3.secretAccessKey ?? "",
                                       sessionToken: config.s3.sessionToken),
            timeoutSeconds: config.s3.timeoutSeconds)
    }

    /// A link to a stored object that works from anywhere: through the CDN of `s3.public_base_url`, or presigned
    /// for `artifacts.url_ttl_seconds`.
    func url(key: String) -> String {
        if let base = config.publicBaseURL {
            return base + "/" + key.split(separator: "/").map { String($0).addingPercentEncoding(
                withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/"))) ?? String($0)
            }.joined(separator: "/")
        }
        return client.presignedGetURL(key: key, expiresIn: urlTTL)
    }

    /// The key prefix of a session's live recording segment: `{prefix}/{organization}/{session}/{segment}`.
    func segmentPrefix(organizationID: String, sessionID: String, segmentID: String) -> String {
        [config.prefix, organizationID, sessionID, segmentID].filter { !$0.isEmpty }.joined(separator: "/")
    }
}

/// Drains the outbox into the bucket: each object goes up from its file off the cooperative pool (in parts when
/// large, so memory does not grow with its size), is confirmed by size and SHA-256, and only then leaves the
/// outbox; an artifact's local copy is deleted then. A failed attempt is retried with exponential backoff (1 s up to
/// `s3.retry_max_seconds`); what is pending at shutdown is resumed at the next start.
final class Uploads: Sendable {
    let store: Store
    let files: ArtifactFiles
    let bucket: Bucket
    let logger: Logger
    /// Called with each artifact confirmed stored (a completed run's webhook may go then).
    let stored: @Sendable (ArtifactRecord) async -> Void
    private var wakeup: Wakeup { bucket.queued }
    /// Uploads at once.
    static let concurrency = 2

    init(store: Store, files: ArtifactFiles, bucket: Bucket, logger: Logger,
         stored: @escaping @Sendable (ArtifactRecord) async -> Void)
    {
        self.store = store
        self.files = files
        self.bucket = bucket
        self.logger = logger
        self.stored = stored
    }

    /// Uploads until cancelled; attempts in flight then still finish (within the timeout) and are recorded.
    func run() async {
        let inFlight = InFlight()
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let busy = inFlight.ids
                let free = Self.concurrency - busy.count
                let due = free > 0 ? ((try? await store.dueUploads(excluding: busy, limit: free)) ?? []) : []
                for upload in due {
                    guard let id = upload.id else { continue }
                    inFlight.insert(id)
                    group.addTask {
                        await self.attempt(upload)
                        inFlight.remove(id)
                        self.wakeup.signal()
                    }
                }
                let next = (try? await store.nextUploadDate(excluding: inFlight.ids)) ?? nil
                // With work in flight, its end wakes us; otherwise sleep until the next retry is due (at most 5 s,
                // so a clock jump or a missed signal costs little).
                let wait = min(5, max(0.05, next.map { $0.timeIntervalSinceNow } ?? 5))
                await wakeup.wait(seconds: wait)
            }
        }
    }

    private func attempt(_ upload: UploadRecord) async {
        let path = upload.path.map { files.url($0).path }
        let range = upload.range.map { UInt64($0.lowerBound)..<UInt64($0.upperBound) }
        let bucket = bucket
        let partSize = bucket.config.partSizeMB << 20
        let result: Result<Void, UploadFailure> = await offThread {
            do {
                let checksum: String, size: UInt64
                if let body = upload.body {
                    (checksum, size) = (Digest.sha256(body).hex, UInt64(body.count))
                    try bucket.client.putObject(key: upload.key, body: body, contentType: upload.contentType,
                                                metadata: ["sha256": checksum])
                } else {
                    guard let path, FileManager.default.fileExists(atPath: path) else { return .failure(.fileGone) }
                    checksum = try Digest.sha256(file: path, range: range).hex
                    size = try range.map { $0.upperBound - $0.lowerBound } ?? Self.fileSize(path)
                    try bucket.client.uploadFile(key: upload.key, path: path, range: range,
                                                 contentType: upload.contentType, metadata: ["sha256": checksum],
                                                 partSize: partSize)
                }
                // Confirmed only when the bucket reports the size and checksum sent.
                guard let head = try bucket.client.headObject(key: upload.key) else {
                    return .failure(.transfer("the object is missing right after its upload"))
                }
                guard head.size == size, head.metadata["sha256"] == checksum else {
                    return .failure(.transfer("the stored object has size \(head.size), expected \(size)"))
                }
                return .success(())
            } catch let error as S3Error {
                return .failure(.transfer("\(error)"))
            } catch {
                return .failure(error as? UploadFailure ?? .transfer("\(error)"))
            }
        }
        switch result {
        case .success:
            do {
                if let artifact = try await store.uploadStored(upload) {
                    await offThread { [files] in files.remove(artifact.path) }
                    logger.debug("artifact stored", metadata: ["artifact_id": "\(artifact.id)", "key": "\(upload.key)"])
                    await stored(artifact)
                }
            } catch {
                logger.error("cannot record a stored upload", metadata: ["key": "\(upload.key)", "error": "\(error)"])
            }
        case .failure(.fileGone):
            // Retention deleted the artifact, or a finished recording's file went with its live segments.
            logger.warning("upload dropped: its file is gone", metadata: ["key": "\(upload.key)"])
            try? await store.dropUpload(id: upload.id ?? -1)
        case .failure(.transfer(let message)):
            let delay = min(Double(bucket.config.retryMaxSeconds), pow(2, Double(min(upload.attempts, 12))))
            // The first failure and then every power of two: an outage of the bucket does not flood the log.
            let level: Logger.Level = upload.attempts & (upload.attempts &- 1) == 0 ? .warning : .debug
            logger.log(level: level, "upload failed; retrying", metadata: [
                "key": "\(upload.key)", "attempt": "\(upload.attempts + 1)", "retry_in_s": "\(Int(delay))",
                "error": "\(message)",
            ])
            try? await store.uploadFailed(id: upload.id ?? -1, error: message, retryAt: Date().addingTimeInterval(delay))
        }
    }

    private static func fileSize(_ path: String) throws -> UInt64 {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.uint64Value ?? 0
    }

    private enum UploadFailure: Error {
        case fileGone
        case transfer(String)
    }

    /// Ids of uploads being attempted.
    private final class InFlight: Sendable {
        private let storage = Mutex<Set<Int64>>([])
        var ids: Set<Int64> { storage.withLock { $0 } }
        func insert(_ id: Int64) { storage.withLock { _ = $0.insert(id) } }
        func remove(_ id: Int64) { storage.withLock { _ = $0.remove(id) } }
    }
}

/// Runs the uploads until shutdown.
struct UploadService: Service {
    let uploads: Uploads

    func run() async throws {
        try? await cancelWhenGracefulShutdown { await uploads.run() }
    }
}
