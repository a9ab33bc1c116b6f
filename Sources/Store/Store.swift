public import Foundation
import GRDB
public import ViewportCore

/// The embedded SQLite database of the daemon's state (`viewportd.sqlite` in the state directory).
public final class Store: Sendable {
    /// Errors the store reports to callers.
    public enum Failure: Error, Equatable {
        /// A session with this id exists already.
        case duplicateSession(String)
        /// A run with this id exists already.
        case duplicateRun(String)
    }

    let database: DatabasePool

    /// Opens (creating and migrating as needed) the database at `path`.
    public init(path: String) throws {
        var configuration = Configuration()
        configuration.busyMode = .timeout(5)
        database = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(database)
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-sessions") { db in
            try db.create(table: "session") { t in
                t.primaryKey("id", .text)
                t.column("organizationID", .text).notNull().indexed()
                t.column("status", .text).notNull().indexed()
                t.column("createdAt", .datetime).notNull()
                t.column("modifiedAt", .datetime).notNull()
                t.column("startedAt", .datetime)
                t.column("completedAt", .datetime)
                t.column("timeoutMinutes", .integer).notNull()
                t.column("browserAddress", .text).notNull()
                t.column("failureReason", .text)
            }
        }
        registerRunMigrations(&migrator)
        registerWebhookMigrations(&migrator)
        registerLifecycleMigrations(&migrator)
        return migrator
    }

    /// Adds a new session; throws ``Failure/duplicateSession(_:)`` if its id is taken.
    public func insert(_ session: SessionRecord) throws {
        do {
            try database.write { try SessionRow(session).insert($0) }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicateSession(session.id)
        }
    }

    /// Saves a changed session.
    public func update(_ session: SessionRecord) throws {
        try database.write { try SessionRow(session).update($0) }
    }

    /// The session with this id, if any.
    public func session(id: String) throws -> SessionRecord? {
        try database.read { try SessionRow.fetchOne($0, key: id)?.record }
    }

    /// Sessions of one organization, newest first.
    public func sessions(organizationID: String, activeOnly: Bool) throws -> [SessionRecord] {
        try database.read { db in
            var request = SessionRow.filter(Column("organizationID") == organizationID)
            if activeOnly { request = request.filter(Self.activeStatuses.contains(Column("status"))) }
            return try request.order(Column("createdAt").desc).fetchAll(db).map(\.record)
        }
    }

    /// The `limit` sessions that ended last, latest first.
    public func recentlyEndedSessions(limit: Int) throws -> [SessionRecord] {
        try database.read { db in
            try SessionRow.filter(!Self.activeStatuses.contains(Column("status"))).order(Column("modifiedAt").desc)
                .limit(limit).fetchAll(db).map(\.record)
        }
    }

    /// Every session still open (to re-attach after a restart).
    public func activeSessions() throws -> [SessionRecord] {
        try database.read { db in
            try SessionRow.filter(Self.activeStatuses.contains(Column("status"))).order(Column("createdAt"))
                .fetchAll(db).map(\.record)
        }
    }

    /// How many sessions are in each status (statuses without any are absent).
    public func sessionCounts() throws -> [SessionStatus: Int] {
        try database.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT status, COUNT(*) AS n FROM session GROUP BY status")
            return Dictionary(uniqueKeysWithValues: rows.compactMap { row in
                SessionStatus(rawValue: row["status"]).map { ($0, row["n"] as Int) }
            })
        }
    }

    /// Throws unless the database takes its write lock now (an immediate write transaction that changes nothing).
    public func checkWritable() throws {
        try database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try db.execute(sql: "UPDATE session SET id = id WHERE 0")
                return .commit
            }
        }
    }

    private static let activeStatuses = SessionStatus.allCases.filter(\.isActive).map(\.rawValue)
}

private struct SessionRow: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "session"
    var id: String
    var organizationID: String
    var status: String
    var createdAt: Date
    var modifiedAt: Date
    var startedAt: Date?
    var completedAt: Date?
    var timeoutMinutes: Int
    var browserAddress: String
    var failureReason: String?
    var renewedAt: Date?
    var vncAddress: String?
    var vncPassword: String?

    init(_ r: SessionRecord) {
        id = r.id
        organizationID = r.organizationID
        status = r.status.rawValue
        createdAt = r.createdAt
        modifiedAt = r.modifiedAt
        startedAt = r.startedAt
        completedAt = r.completedAt
        timeoutMinutes = r.timeoutMinutes
        browserAddress = r.browserAddress
        failureReason = r.failureReason
        renewedAt = r.renewedAt
        vncAddress = r.vncAddress
        vncPassword = r.vncPassword
    }

    var record: SessionRecord {
        var record = SessionRecord(id: id, organizationID: organizationID,
                                   status: SessionStatus(rawValue: status) ?? .failed, createdAt: createdAt,
                                   modifiedAt: modifiedAt, startedAt: startedAt, completedAt: completedAt,
                                   timeoutMinutes: timeoutMinutes, browserAddress: browserAddress,
                                   failureReason: failureReason)
        record.renewedAt = renewedAt
        (record.vncAddress, record.vncPassword) = (vncAddress, vncPassword)
        return record
    }
}
