public import Foundation
import GRDB

/// A run of an agent in a browser session: its steps, screenshots and recording.
public struct RunRecord: Sendable, Equatable {
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
public struct StepRecord: Sendable, Equatable {
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
public struct ArtifactRecord: Sendable, Equatable {
    public enum Kind: String, Sendable { case recording, screenshot }
    public var id: String
    public var kind: Kind
    public var runID: String
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

    public init(id: String, kind: Kind, runID: String, sessionID: String, organizationID: String, step: Int?,
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
public struct SegmentRecord: Sendable, Equatable {
    public var id: String
    public var sessionID: String
    /// Path relative to the artifacts directory.
    public var path: String
    public var originMicros: UInt64
    /// True once every run cut from it is published; the file is then deleted.
    public var finished: Bool

    public init(id: String, sessionID: String, path: String, originMicros: UInt64, finished: Bool = false) {
        self.id = id
        self.sessionID = sessionID
        self.path = path
        self.originMicros = originMicros
        self.finished = finished
    }
}

extension Store {
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
    public func insert(_ run: RunRecord) throws {
        do {
            try database.write { try RunRow(run).insert($0) }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicateRun(run.id)
        }
    }

    public func update(_ run: RunRecord) throws { try database.write { try RunRow(run).update($0) } }

    public func run(id: String) throws -> RunRecord? { try database.read { try RunRow.fetchOne($0, key: id)?.record } }

    /// Runs still open (of one session, or of all sessions).
    public func openRuns(sessionID: String? = nil) throws -> [RunRecord] {
        try database.read { db in
            var request = RunRow.filter(Column("status") == "running")
            if let sessionID { request = request.filter(Column("sessionID") == sessionID) }
            return try request.order(Column("createdAt")).fetchAll(db).map(\.record)
        }
    }

    // MARK: - Steps

    /// Adds a step and bumps its run's step count, in one transaction.
    public func insert(_ step: StepRecord, artifact: ArtifactRecord?) throws {
        try database.write { db in
            if let artifact { try ArtifactRow(artifact).insert(db) }
            try StepRow(step).insert(db)
            try db.execute(sql: "UPDATE run SET stepCount = ? WHERE id = ?", arguments: [step.index, step.runID])
        }
    }

    public func steps(runID: String) throws -> [StepRecord] {
        try database.read { db in
            try StepRow.filter(Column("runID") == runID).order(Column("index")).fetchAll(db).map(\.record)
        }
    }

    // MARK: - Artifacts

    public func insert(_ artifact: ArtifactRecord) throws { try database.write { try ArtifactRow(artifact).insert($0) } }

    public func artifact(id: String) throws -> ArtifactRecord? {
        try database.read { try ArtifactRow.fetchOne($0, key: id)?.record }
    }

    /// Artifacts of a run, oldest first.
    public func artifacts(runID: String) throws -> [ArtifactRecord] {
        try database.read { db in
            try ArtifactRow.filter(Column("runID") == runID).order(Column("createdAt"), Column("id")).fetchAll(db)
                .map(\.record)
        }
    }

    /// Recordings of a session's runs that retention has not deleted, oldest first.
    public func recordings(sessionID: String) throws -> [ArtifactRecord] {
        try database.read { db in
            try ArtifactRow.filter(Column("sessionID") == sessionID && Column("kind") == "recording"
                                   && Column("expiredAt") == nil)
                .order(Column("createdAt")).fetchAll(db).map(\.record)
        }
    }

    // MARK: - Segments

    public func insert(_ segment: SegmentRecord) throws { try database.write { try SegmentRow(segment).insert($0) } }

    public func markFinished(segmentID: String) throws {
        try database.write { try $0.execute(sql: "UPDATE segment SET finished = 1 WHERE id = ?", arguments: [segmentID]) }
    }

    public func segment(id: String) throws -> SegmentRecord? {
        try database.read { try SegmentRow.fetchOne($0, key: id)?.record }
    }

    /// Segments still being written (or left so by a crash).
    public func unfinishedSegments() throws -> [SegmentRecord] {
        try database.read { try SegmentRow.filter(Column("finished") == false).fetchAll($0).map(\.record) }
    }
}

private struct RunRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "run"
    var id, sessionID, organizationID, status: String
    var title, webhookURL: String?
    var createdAt: Date
    var startedAt, finishedAt: Date?
    var failureReason: String?
    var stepCount: Int
    var startMicros: Int64
    var segmentID: String?
    var framesRecorded, framesDropped: Int
    var recordingError: String?

    init(_ r: RunRecord) {
        (id, sessionID, organizationID, status, title, webhookURL) =
            (r.id, r.sessionID, r.organizationID, r.status, r.title, r.webhookURL)
        (createdAt, startedAt, finishedAt, failureReason, stepCount) =
            (r.createdAt, r.startedAt, r.finishedAt, r.failureReason, r.stepCount)
        (startMicros, segmentID, framesRecorded, framesDropped) =
            (Int64(r.startMicros), r.segmentID, r.framesRecorded, r.framesDropped)
        recordingError = r.recordingError
    }

    var record: RunRecord {
        var r = RunRecord(id: id, sessionID: sessionID, organizationID: organizationID, status: status, title: title,
                          webhookURL: webhookURL, createdAt: createdAt, startMicros: UInt64(startMicros),
                          segmentID: segmentID)
        (r.startedAt, r.finishedAt, r.failureReason, r.stepCount) = (startedAt, finishedAt, failureReason, stepCount)
        (r.framesRecorded, r.framesDropped, r.recordingError) = (framesRecorded, framesDropped, recordingError)
        return r
    }
}

private struct StepRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "step"
    var runID: String
    var index: Int
    var label: String
    var createdAt: Date
    var timeMicros: Int64
    var artifactID: String?

    init(_ s: StepRecord) {
        (runID, index, label, createdAt, timeMicros, artifactID) =
            (s.runID, s.index, s.label, s.createdAt, Int64(s.timeMicros), s.artifactID)
    }

    var record: StepRecord {
        StepRecord(runID: runID, index: index, label: label, createdAt: createdAt, timeMicros: UInt64(timeMicros),
                   artifactID: artifactID)
    }
}

struct ArtifactRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "artifact"
    var id, kind, runID, sessionID, organizationID: String
    var step: Int?
    var path, filename: String
    var fileSize: Int
    var checksum, contentType: String
    var createdAt, modifiedAt: Date
    var expiredAt: Date?

    init(_ a: ArtifactRecord) {
        (id, kind, runID, sessionID, organizationID, step) = (a.id, a.kind.rawValue, a.runID, a.sessionID, a.organizationID, a.step)
        (path, filename, fileSize, checksum, contentType) = (a.path, a.filename, a.fileSize, a.checksum, a.contentType)
        (createdAt, modifiedAt, expiredAt) = (a.createdAt, a.modifiedAt, a.expiredAt)
    }

    var record: ArtifactRecord {
        var record = ArtifactRecord(id: id, kind: ArtifactRecord.Kind(rawValue: kind) ?? .screenshot, runID: runID,
                                    sessionID: sessionID, organizationID: organizationID, step: step, path: path,
                                    filename: filename, fileSize: fileSize, checksum: checksum,
                                    contentType: contentType, createdAt: createdAt, modifiedAt: modifiedAt)
        record.expiredAt = expiredAt
        return record
    }
}

private struct SegmentRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "segment"
    var id, sessionID, path: String
    var originMicros: Int64
    var finished: Bool

    init(_ s: SegmentRecord) { (id, sessionID, path, originMicros, finished) = (s.id, s.sessionID, s.path, Int64(s.originMicros), s.finished) }

    var record: SegmentRecord {
        SegmentRecord(id: id, sessionID: sessionID, path: path, originMicros: UInt64(originMicros), finished: finished)
    }
}
