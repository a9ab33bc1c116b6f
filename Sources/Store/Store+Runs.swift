public import Foundation
public import GRDB
public import ViewportCore

/// A run of an agent in a browser session: its steps, screenshots and recording.
public struct RunRecord: Sendable, Equatable, Codable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "run"

    public var id: String
    public var sessionID: String
    public var organizationID: String
    /// `running` until completed, then the final status the platform gave (completed, failed, ...).
    public var status: String
    public var title: String?
    public var webhookURL: String?
    public var createdAt: Date
    public var startedAt: Date?
    public var finishedAt: Date?
    public var failureReason: String?
    public var stepCount: Int
    /// Wall-clock µs where the run's recording starts (its keyframe in the session's segment).
    public var startMicros: UInt64
    /// The recording segment the run is cut from; nil when recording is off.
    public var segmentID: String?
    public var framesRecorded: Int
    public var framesDropped: Int
    /// Why the recording stopped early (a full disk, an encoder error); nil when it did not.
    public var recordingError: String?
    /// The completed run's webhook waits until its artifacts are in the bucket.
    public var webhookAwaitsUploads = false

    public init(id: String, sessionID: String, organizationID: String, status: String, title: String?,
                webhookURL: String?, createdAt: Date, startMicros: UInt64, segmentID: String?)
    {
        self.id = id
        self.sessionID = sessionID
        self.organizationID = organizationID
        self.status = status
        self.title = title
        self.webhookURL = webhookURL
        self.createdAt = createdAt
        self.startedAt = createdAt
        self.startMicros = startMicros
        self.segmentID = segmentID
        self.stepCount = 0
        self.framesRecorded = 0
        self.framesDropped = 0
    }

    /// True until the run is completed.
    public var isOpen: Bool { status == "running" }
}

/// One marked step of a run.
public struct StepRecord: Sendable, Equatable, Codable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "step"

    public var runID: String
    /// 1-based.
    public var index: Int
    public var label: String
    public var createdAt: Date
    /// Wall-clock µs of the mark (chapter start in the recording).
    public var timeMicros: UInt64
    public var artifactID: String?

    public init(runID: String, index: Int, label: String, createdAt: Date, timeMicros: UInt64, artifactID: String?) {
        self.runID = runID
        self.index = index
        self.label = label
        self.createdAt = createdAt
        self.timeMicros = timeMicros
        self.artifactID = artifactID
    }
}

/// A published file: a run's recording or a step's screenshot.
public struct ArtifactRecord: Sendable, Equatable, Codable, FetchableRecord, PersistableRecord {
    public enum Kind: String, Sendable, Codable, DatabaseValueConvertible { case recording, screenshot, download }
    public static let databaseTableName = "artifact"

    public var id: String
    public var kind: Kind
    /// The run it belongs to; nil for a download made while no run was open.
    public var runID: String?
    public var sessionID: String
    public var organizationID: String
    /// The step a screenshot belongs to (nil for recordings and for the final screenshot).
    public var step: Int?
    /// Path relative to the artifacts directory.
    public var path: String
    public var filename: String
    public var fileSize: Int
    /// SHA-256, lower-case hex.
    public var checksum: String
    public var contentType: String
    public var createdAt: Date
    public var modifiedAt: Date
    /// When retention deleted the file; the record stays so the API can say so.
    public var expiredAt: Date?
    /// Its key in the bucket, once confirmed stored there (the local copy is deleted then).
    public var objectKey: String?
    public var storedAt: Date?

    public init(id: String, kind: Kind, runID: String?, sessionID: String, organizationID: String, step: Int?,
                path: String, filename: String, fileSize: Int, checksum: String, contentType: String, createdAt: Date,
                modifiedAt: Date)
    {
        self.id = id
        self.kind = kind
        self.runID = runID
        self.sessionID = sessionID
        self.organizationID = organizationID
        self.step = step
        self.path = path
        self.filename = filename
        self.fileSize = fileSize
        self.checksum = checksum
        self.contentType = contentType
        self.createdAt = createdAt
        self.modifiedAt = modifiedAt
    }
}

/// A session's fragmented recording being written (one encode for all of the session's open runs).
public struct SegmentRecord: Sendable, Equatable, Codable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "segment"

    public var id: String
    public var sessionID: String
    /// Path relative to the artifacts directory.
    public var path: String
    public var originMicros: UInt64
    /// True once every run cut from it is published; the file is then deleted.
    public var finished: Bool
    /// True once its live parts in the bucket are deleted (every run cut from it stored there).
    public var livePartsDeleted = false

    public init(id: String, sessionID: String, path: String, originMicros: UInt64, finished: Bool = false) {
        self.id = id
        self.sessionID = sessionID
        self.path = path
        self.originMicros = originMicros
        self.finished = finished
    }
}

extension SQLiteStore {
    static func registerRunMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v2-runs") { db in
            try db.create(table: "segment") { t in
                t.primaryKey("id", .text)
                t.column("sessionID", .text).notNull().indexed()
                t.column("path", .text).notNull()
                t.column("originMicros", .integer).notNull()
                t.column("finished", .boolean).notNull()
            }
            try db.create(table: "run") { t in
                t.primaryKey("id", .text)
                t.column("sessionID", .text).notNull().indexed()
                t.column("organizationID", .text).notNull()
                t.column("status", .text).notNull()
                t.column("title", .text)
                t.column("webhookURL", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("startedAt", .datetime)
                t.column("finishedAt", .datetime)
                t.column("failureReason", .text)
                t.column("stepCount", .integer).notNull()
                t.column("startMicros", .integer).notNull()
                t.column("segmentID", .text)
                t.column("framesRecorded", .integer).notNull()
                t.column("framesDropped", .integer).notNull()
            }
            try db.create(table: "step") { t in
                t.column("runID", .text).notNull()
                t.column("index", .integer).notNull()
                t.column("label", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("timeMicros", .integer).notNull()
                t.column("artifactID", .text)
                t.primaryKey(["runID", "index"])
            }
            try db.create(table: "artifact") { t in
                t.primaryKey("id", .text)
                t.column("kind", .text).notNull()
                t.column("runID", .text).notNull().indexed()
                t.column("sessionID", .text).notNull().indexed()
                t.column("organizationID", .text).notNull()
                t.column("step", .integer)
                t.column("path", .text).notNull()
                t.column("filename", .text).notNull()
                t.column("fileSize", .integer).notNull()
                t.column("checksum", .text).notNull()
                t.column("contentType", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("modifiedAt", .datetime).notNull()
            }
        }
    }

    // MARK: - Runs

    /// Adds a new run; throws ``Failure/duplicateRun(_:)`` if its id is taken.
    /// With `uploads` (the run's manifest for the bucket), queued in the same transaction.
    public func insert(_ run: RunRecord, uploads: [UploadRecord]) async throws {
        do {
            try await database.write { db in
                try run.insert(db)
                try Self.insert(uploads, db)
            }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw StoreFailure.duplicateRun(run.id)
        }
    }

    /// With `uploads` (the run's final manifest for the bucket), queued in the same transaction.
    public func update(_ run: RunRecord, uploads: [UploadRecord]) async throws {
        try await database.write { db in
            try run.update(db)
            try Self.insert(uploads, db)
        }
    }

    public func run(id: String) async throws -> RunRecord? { try await database.read { try RunRecord.fetchOne($0, key: id) } }

    public func openRuns(sessionID: String?) async throws -> [RunRecord] {
        try await database.read { db in
            var request = RunRecord.filter(Column("status") == "running")
            if let sessionID { request = request.filter(Column("sessionID") == sessionID) }
            return try request.order(Column("createdAt")).fetchAll(db)
        }
    }

    // MARK: - Steps

    public func insert(_ step: StepRecord, artifact: ArtifactRecord?) async throws {
        try await database.write { db in
            if let artifact { try insert(artifact, db) }
            try step.insert(db)
            try db.execute(sql: "UPDATE run SET stepCount = ? WHERE id = ?", arguments: [step.index, step.runID])
        }
    }

    public func steps(runID: String) async throws -> [StepRecord] {
        try await database.read { db in
            try StepRecord.filter(Column("runID") == runID).order(Column("index")).fetchAll(db)
        }
    }

    // MARK: - Artifacts

    public func insert(_ artifact: ArtifactRecord) async throws { try await database.write { try insert(artifact, $0) } }

    private func insert(_ artifact: ArtifactRecord, _ db: Database) throws {
        try artifact.insert(db)
        if artifact.objectKey == nil, var upload = upload(of: artifact) { try upload.insert(db) }
    }

    /// Stores a run rebuilt from the bucket (inserted, or replacing the open record a lost host left) with its
    /// artifacts, already stored there, in one transaction.
    public func storeRecovered(_ run: RunRecord, session: SessionRecord, artifacts: [ArtifactRecord]) async throws {
        try await database.write { db in
            // The session's record too, when this store never saw it (a host of its own that was lost): retention
            // expires a session's artifacts once it is closed.
            if try SessionRecord.fetchOne(db, key: session.id) == nil { try session.insert(db) }
            try run.save(db)
            for artifact in artifacts { try insert(artifact, db) }
        }
    }

    public func artifact(id: String) async throws -> ArtifactRecord? {
        try await database.read { try ArtifactRecord.fetchOne($0, key: id) }
    }

    public func artifacts(runID: String) async throws -> [ArtifactRecord] {
        try await database.read { db in
            try ArtifactRecord.ofRun(runID).fetchAll(db)
        }
    }

    public func sessionFiles(sessionIDs: [String]) async throws -> [String: [ArtifactRecord]] {
        // One JSON array bound for all ids: SQLite binds at most 32766 values in a statement.
        let ids = String(decoding: try JSONEncoder().encode(sessionIDs), as: UTF8.self)
        let kinds = [ArtifactRecord.Kind.recording, .download]
        return try await database.read { db in
            Dictionary(grouping: try ArtifactRecord
                .filter(sql: "sessionID IN (SELECT value FROM json_each(?))", arguments: [ids])
                .filter(kinds.contains(Column("kind")) && Column("expiredAt") == nil)
                .order(Column("createdAt")).fetchAll(db), by: \.sessionID)
        }
    }

    // MARK: - Segments

    public func insert(_ segment: SegmentRecord) async throws { try await database.write { try segment.insert($0) } }

    public func markFinished(segmentID: String) async throws {
        try await database.write { try $0.execute(sql: "UPDATE segment SET finished = 1 WHERE id = ?", arguments: [segmentID]) }
    }

    public func segment(id: String) async throws -> SegmentRecord? {
        try await database.read { try SegmentRecord.fetchOne($0, key: id) }
    }

    public func unfinishedSegments() async throws -> [SegmentRecord] {
        try await database.read { try SegmentRecord.filter(Column("finished") == false).fetchAll($0) }
    }
}

extension ArtifactRecord {
    /// A run's artifacts, oldest first.
    static func ofRun(_ runID: String) -> QueryInterfaceRequest<ArtifactRecord> {
        filter(Column("runID") == runID).order(Column("createdAt"), Column("id"))
    }
}
