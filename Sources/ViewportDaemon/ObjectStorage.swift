import Digests
import Foundation
import Logging
import ObjectStore
import ServiceLifecycle
import Store
import Synchronization
import ViewportCore

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
/// large, so memory does not grow with its size), is confirmed by size and SHA-256 (an artifact's must be the
/// checksum the API reports), and only then leaves the outbox; an artifact's local copy is deleted then. Queued
/// deletions are carried out the same way. A failed attempt is retried with exponential backoff (1 s up to
/// `s3.retry_max_seconds`). A graceful stop waits up to `s3.drain_seconds` for what is due (the runs it just
/// completed); the rest resumes at the next start.
final class Uploads: Sendable {
    let store: any Store
    let files: ArtifactFiles
    let bucket: Bucket
    let logger: Logger
    /// Called with the id of each artifact whose upload is settled, stored or dropped (its run's webhook may go).
    let settled: @Sendable (String) async -> Void
    private var wakeup: Wakeup { bucket.queued }
    /// When set, a graceful stop: stop once nothing is due or in flight, or at this time.
    private let drainDeadline = Mutex<Date?>(nil)
    /// Whether the last attempt failed (the log says when the bucket fails and when it is back, not every attempt).
    private let failing = Mutex(false)
    /// Uploads at once.
    static let concurrency = 2

    init(store: any Store, files: ArtifactFiles, bucket: Bucket, logger: Logger,
         settled: @escaping @Sendable (String) async -> Void)
    {
        self.store = store
        self.files = files
        self.bucket = bucket
        self.logger = logger
        self.settled = settled
    }

    /// Starts a graceful stop: ``run()`` returns once the due work is done or `seconds` have passed.
    func drain(within seconds: Int) {
        drainDeadline.withLock { $0 = Date().addingTimeInterval(Double(seconds)) }
        wakeup.signal()
    }

    /// Works until cancelled or drained; attempts in flight then still finish (within the timeout) and are recorded.
    func run() async {
        let inFlight = InFlight()
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let busy = inFlight.ids
                let free = Self.concurrency - busy.count
                let due = free > 0 ? ((try? await store.dueUploads(excluding: busy, limit: free)) ?? []) : []
                if let deadline = drainDeadline.withLock({ $0 }), Date() >= deadline || (busy.isEmpty && due.isEmpty) {
                    if !busy.isEmpty || !due.isEmpty {
                        logger.warning("stopping with uploads pending; they resume at the next start (s3.drain_seconds)")
                    }
                    break
                }
                for upload in due {
                    guard let id = upload.id else { continue }
                    inFlight.insert(id)
                    group.addTask {
                        await self.attempt(upload)
                        inFlight.remove(id)
                        self.wakeup.signal()
                    }
                }
                // Slots full: the end of an attempt wakes us. Otherwise sleep until the next retry is due (at most
                // 5 s, so a clock jump or a missed signal costs little).
                var wait = 5.0
                if inFlight.ids.count < Self.concurrency, let next = (try? await store.nextUploadDate(excluding: inFlight.ids)) ?? nil {
                    wait = min(5, max(0.05, next.timeIntervalSinceNow))
                }
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
                switch upload.operation {
                case .delete:
                    try bucket.client.deleteObject(key: upload.key)
                    return .success(())
                case .deletePrefix:
                    for object in try bucket.client.listObjects(prefix: upload.key + "/") {
                        try bucket.client.deleteObject(key: object.key)
                    }
                    return .success(())
                case .put:
                    break
                }
                let checksum: String, size: UInt64
                if let body = upload.body {
                    (checksum, size) = (Digest.sha256(body).hex, UInt64(body.count))
                    try bucket.client.putObject(key: upload.key, body: body, contentType: upload.contentType,
                                                metadata: ["sha256": checksum])
                } else {
                    guard let path, FileManager.default.fileExists(atPath: path) else { return .failure(.fileGone) }
                    checksum = try Digest.sha256(file: path, range: range).hex
                    // The bytes must be those the API reported: a file changed since is never stored (nor deleted).
                    if let expected = upload.checksum, expected != checksum {
                        return .failure(.transfer("the file's SHA-256 is \(checksum), not the artifact's \(expected)"))
                    }
                    size = try range.map { $0.upperBound - $0.lowerBound } ?? UInt64(ArtifactFiles.size(ofFile: path))
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
            if failing.withLock({ let was = $0; $0 = false; return was }) {
                logger.notice("the bucket accepts uploads again")
            }
            do {
                if let artifact = try await store.uploadStored(upload) {
                    await offThread { [files] in files.remove(artifact.path) }
                    logger.debug("artifact stored", metadata: ["artifact_id": "\(artifact.id)", "key": "\(upload.key)"])
                    await settled(artifact.id)
                }
            } catch {
                logger.error("cannot record a stored upload", metadata: ["key": "\(upload.key)", "error": "\(error)"])
            }
        case .failure(.fileGone):
            // Retention deleted the artifact's file, or a finished recording's file went with its live parts.
            logger.info("upload dropped: its file is gone", metadata: ["key": "\(upload.key)"])
            try? await store.dropUpload(id: upload.id ?? -1)
            if let artifactID = upload.artifactID { await settled(artifactID) }
        case .failure(.transfer(let message)):
            let delay = min(Double(bucket.config.retryMaxSeconds), pow(2, Double(min(upload.attempts, 12))))
            let first = failing.withLock { let was = $0; $0 = true; return !was }
            logger.log(level: first ? .warning : .debug, "upload to the bucket failed; retrying with backoff", metadata: [
                "key": "\(upload.key)", "attempt": "\(upload.attempts + 1)", "retry_in_s": "\(Int(delay))",
                "error": "\(message)",
            ])
            try? await store.uploadFailed(id: upload.id ?? -1, error: message, retryAt: Date().addingTimeInterval(delay))
        }
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

/// Runs the uploads; on a graceful stop, which comes after the runs were completed, drains what is due for up to
/// `s3.drain_seconds`.
struct UploadService: Service {
    let uploads: Uploads

    func run() async throws {
        await withGracefulShutdownHandler {
            await uploads.run()
        } onGracefulShutdown: {
            uploads.drain(within: uploads.bucket.config.drainSeconds)
        }
    }
}
