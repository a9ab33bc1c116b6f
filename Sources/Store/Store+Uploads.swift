public import Foundation
public import GRDB

/// Work for the bucket, kept until it is done: an object to put (a published artifact's file, a byte range of a
/// recording being written, or a small body such as a run's manifest), or objects to delete. Rows leave the
/// outbox only once the bucket confirmed the work.
public struct UploadRecord: Sendable, Equatable, Codable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "upload"

    /// What to do with `key`.
    public enum Operation: String, Sendable, Codable, DatabaseValueConvertible {
        case put
        case delete
        /// Deletes every object whose key starts with `key` + "/".
        case deletePrefix
    }

    public var id: Int64?
    public var operation: Operation
    /// The object key (a key prefix for `deletePrefix`).
    public var key: String
    /// The file, relative to the artifacts directory; nil when the bytes are `body` (or for a deletion).
    public var path: String?
    /// Small objects (a run's manifest) are kept here rather than in a file.
    public var body: Data?
    /// The byte range of the file to upload; nil: the whole file.
    public var offset: Int64?
    public var length: Int64?
    /// The artifact this object stores (its local copy is deleted once stored).
    public var artifactID: String?
    /// The recording whose live part or run manifest this is (retention waits for them before deleting its parts).
    public var segmentID: String?
    /// SHA-256 (hex) the bytes must have: the checksum the API reports for the artifact.
    public var checksum: String?
    public var contentType: String
    public var attempts: Int
    public var nextAttemptAt: Date
    public var lastError: String?
    public var createdAt: Date
    /// The cluster node whose files these are (only it does the work); nil on a single host.
    public var nodeID: String?

    public init(key: String, path: String?, range: Range<Int64>? = nil, body: Data? = nil, artifactID: String? = nil,
                segmentID: String? = nil, checksum: String? = nil, contentType: String, now: Date = Date())
    {
        operation = .put
        self.key = key
        self.path = path
        self.body = body
        offset = range?.lowerBound
        length = range.map { $0.upperBound - $0.lowerBound }
        self.artifactID = artifactID
        self.segmentID = segmentID
        self.checksum = checksum
        self.contentType = contentType
        attempts = 0
        nextAttemptAt = now
        createdAt = now
    }

    /// Deletes the object at `key` (or, for `.deletePrefix`, every object under `key` + "/").
    public static func deletion(_ operation: Operation = .delete, key: String, now: Date = Date()) -> UploadRecord {
        var record = UploadRecord(key: key, path: nil, contentType: "", now: now)
        record.operation = operation
        return record
    }

    /// The byte range to upload; nil: the whole file.
    public var range: Range<Int64>? { offset.map { $0..<($0 + (length ?? 0)) } }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

extension SQLiteStore {
    static func registerClusterMigrations(_ migrator: inout DatabaseMigrator) {
        // The owning node of what a cluster shares; nil here, where one host owns everything.
        migrator.registerMigration("v9-cluster") { db in
            for table in ["session", "upload", "webhook_delivery"] {
                try db.alter(table: table) { t in t.add(column: "nodeID", .text) }
            }
        }
    }

    static func registerUploadMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v8-object-store") { db in
            try db.create(table: "upload") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("operation", .text).notNull()
                t.column("key", .text).notNull()
                t.column("path", .text)
                t.column("body", .blob)
                t.column("offset", .integer)
                t.column("length", .integer)
                t.column("artifactID", .text).indexed()
                t.column("segmentID", .text).indexed()
                t.column("checksum", .text)
                t.column("contentType", .text).notNull()
                t.column("attempts", .integer).notNull()
                t.column("nextAttemptAt", .datetime).notNull().indexed()
                t.column("lastError", .text)
                t.column("createdAt", .datetime).notNull()
            }
            try db.alter(table: "artifact") { t in
                t.add(column: "objectKey", .text)
                t.add(column: "storedAt", .datetime)
            }
            try db.alter(table: "run") { t in t.add(column: "webhookAwaitsUploads", .boolean).notNull().defaults(to: false) }
            try db.alter(table: "segment") { t in t.add(column: "livePartsDeleted", .boolean).notNull().defaults(to: false) }
        }
    }

    /// Queues work for the bucket (a live part with its init part), all or nothing.
    public func enqueue(_ uploads: [UploadRecord]) async throws {
        try await database.write { db in try Self.insert(uploads, db) }
    }

    static func insert(_ uploads: [UploadRecord], _ db: Database) throws {
        for var upload in uploads { try upload.insert(db) }
    }

    /// Work due by `now`, leaving out what is in flight: live parts, manifests and deletions first (they are
    /// small, and a part waiting behind a large file would widen what a lost host loses), then artifacts, oldest
    /// first.
    public func dueUploads(now: Date, excluding excluded: Set<Int64>, limit: Int) async throws
        -> [UploadRecord]
    {
        try await database.read { db in
            try UploadRecord.filter(Column("nextAttemptAt") <= now && !excluded.contains(Column("id")))
                .order(Column("artifactID") != nil, Column("id")).limit(limit).fetchAll(db)
        }
    }

    public func nextUploadDate(excluding excluded: Set<Int64>) async throws -> Date? {
        try await database.read { db in
            try Date.fetchOne(db, UploadRecord.filter(!excluded.contains(Column("id")))
                .select(min(Column("nextAttemptAt"))))
        }
    }

    public func pendingUploadCount() async throws -> Int {
        try await database.read { try UploadRecord.fetchCount($0) }
    }

    public func uploadFailed(id: Int64, error: String, retryAt: Date) async throws {
        try await database.write { db in
            try db.execute(sql: "UPDATE upload SET attempts = attempts + 1, lastError = ?, nextAttemptAt = ? WHERE id = ?",
                           arguments: [error, retryAt, id])
        }
    }

    public func dropUpload(id: Int64) async throws {
        try await database.write { _ = try UploadRecord.deleteOne($0, key: id) }
    }

    /// The work is confirmed done: it leaves the outbox, and the artifact it stored, if any, now lives at `key`.
    /// Returns that artifact (its local copy may go now). An artifact retention expired meanwhile gets its object
    /// deleted again, in the same transaction.
    public func uploadStored(_ upload: UploadRecord, at date: Date) async throws -> ArtifactRecord? {
        try await database.write { db in
            _ = try UploadRecord.deleteOne(db, key: upload.id)
            guard let id = upload.artifactID else { return nil }
            try db.execute(sql: "UPDATE artifact SET objectKey = ?, storedAt = ? WHERE id = ?",
                           arguments: [upload.key, date, id])
            let artifact = try ArtifactRecord.fetchOne(db, key: id)
            if artifact?.expiredAt != nil { try Self.insert([.deletion(key: upload.key)], db) }
            return artifact
        }
    }

    /// Queues the delivery `make` builds from the run and its artifacts (oldest first) as they are now, if the
    /// run's webhook was held for its uploads and none is pending any more; returns whether it did. Atomic: of
    /// two callers racing for the same run, one queues it, from the final state of the artifacts.
    /// With `ignoringPending` (artifacts no longer go to a bucket) it is queued whatever is pending.
    public func releaseHeldWebhook(
        runID: String, ignoringPending: Bool,
        make: @escaping @Sendable (RunRecord, [ArtifactRecord]) throws -> WebhookDelivery
    ) async throws -> Bool {
        try await database.write { db in
            let pending = try Bool.fetchOne(db, sql: """
                SELECT EXISTS (SELECT 1 FROM upload JOIN artifact ON artifact.id = upload.artifactID
                               WHERE artifact.runID = ? AND upload.operation = 'put')
                """, arguments: [runID]) ?? false
            guard !pending || ignoringPending else { return false }
            try db.execute(sql: """
                UPDATE run SET webhookAwaitsUploads = 0 WHERE id = ? AND webhookAwaitsUploads AND status != 'running'
                """, arguments: [runID])
            guard db.changesCount == 1, let run = try RunRecord.fetchOne(db, key: runID) else { return false }
            let artifacts = try ArtifactRecord.ofRun(runID).fetchAll(db)
            var delivery = try make(run, artifacts)
            try delivery.insert(db)
            return true
        }
    }

    public func runsAwaitingUploads() async throws -> [RunRecord] {
        try await database.read { db in
            try RunRecord.filter(Column("webhookAwaitsUploads") == true && Column("status") != "running").fetchAll(db)
        }
    }

    /// Finished recordings whose live parts are still in the bucket and no longer needed: every run cut from
    /// them is completed with its MP4 stored there, and none of their parts or manifests waits to go up. With the
    /// ids of those runs.
    public func segmentsWithSpentLiveParts(limit: Int) async throws -> [(segment: SegmentRecord, runIDs: [String])] {
        try await database.read { db in
            let segments = try SegmentRecord.fetchAll(db, sql: """
                SELECT * FROM segment WHERE finished AND NOT livePartsDeleted
                AND NOT EXISTS (SELECT 1 FROM run WHERE run.segmentID = segment.id AND (run.status = 'running'
                    OR NOT EXISTS (SELECT 1 FROM artifact WHERE artifact.runID = run.id AND artifact.kind = 'recording'
                                   AND artifact.objectKey IS NOT NULL)))
                AND NOT EXISTS (SELECT 1 FROM upload WHERE upload.segmentID = segment.id AND upload.operation = 'put')
                LIMIT ?
                """, arguments: [limit])
            return try segments.map { segment in
                (segment, try String.fetchAll(db, sql: "SELECT id FROM run WHERE segmentID = ?", arguments: [segment.id]))
            }
        }
    }

    /// Marks a recording's live parts deleted and queues their deletion (`deletions`), in one transaction.
    public func retireLiveParts(segmentID: String, deletions: [UploadRecord]) async throws {
        try await database.write { db in
            try db.execute(sql: "UPDATE segment SET livePartsDeleted = 1 WHERE id = ?", arguments: [segmentID])
            try Self.insert(deletions, db)
        }
    }
}
