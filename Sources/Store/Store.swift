public import GRDB
public import ViewportCore

/// The embedded SQLite database of the daemon's state (`viewportd.sqlite` in the state directory).
///
/// Its methods are `async`: GRDB runs them on its own queues and suspends the caller, so no thread of the
/// cooperative pool waits for SQLite (a busy database waits up to 5 s).
public final class Store: Sendable {
    /// Errors the store reports to callers.
    public enum Failure: Error, Equatable {
        /// A session with this id exists already.
        case duplicateSession(String)
        /// A run with this id exists already.
        case duplicateRun(String)
    }

    let database: DatabasePool
    /// The bucket's key prefix when artifacts go to object storage: every artifact stored here is then also queued
    /// for upload, in the same transaction. nil: artifacts stay on this host.
    let objectPrefix: String?

    /// Opens (creating and migrating as needed) the database at `path`. With `objectPrefix`, published artifacts
    /// are queued for upload under it.
    public init(path: String, objectPrefix: String? = nil) throws {
        self.objectPrefix = objectPrefix
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
        registerUploadMigrations(&migrator)
        return migrator
    }

    /// Adds a new session; throws ``Failure/duplicateSession(_:)`` if its id is taken.
    ///
    /// Blocks until written, as updating a session does: the daemon writes sessions on its own serial
    /// queue, in the order they changed; everything else here suspends the caller instead.
    public func insert(_ session: SessionRecord) throws {
        do {
            try database.write { try session.insert($0) }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw Failure.duplicateSession(session.id)
        }
    }

    /// Saves a changed session.
    public func update(_ session: SessionRecord) throws {
        try database.write { try session.update($0) }
    }

    /// The session with this id, if any.
    public func session(id: String) async throws -> SessionRecord? {
        try await database.read { try SessionRecord.fetchOne($0, key: id) }
    }

    /// Sessions of one organization, newest first.
    public func sessions(organizationID: String, activeOnly: Bool) async throws -> [SessionRecord] {
        try await database.read { db in
            var request = SessionRecord.filter(Column("organizationID") == organizationID)
            if activeOnly { request = request.filter(Self.activeStatuses.contains(Column("status"))) }
            return try request.order(Column("createdAt").desc).fetchAll(db)
        }
    }

    /// The `limit` sessions that ended last, latest first.
    public func recentlyEndedSessions(limit: Int) async throws -> [SessionRecord] {
        try await database.read { db in
            try SessionRecord.filter(!Self.activeStatuses.contains(Column("status"))).order(Column("modifiedAt").desc)
                .limit(limit).fetchAll(db)
        }
    }

    /// Every session still open (to re-attach after a restart).
    public func activeSessions() async throws -> [SessionRecord] {
        try await database.read { db in
            try SessionRecord.filter(Self.activeStatuses.contains(Column("status"))).order(Column("createdAt"))
                .fetchAll(db)
        }
    }

    /// How many sessions are in each status (statuses without any are absent).
    public func sessionCounts() async throws -> [SessionStatus: Int] {
        try await database.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT status, COUNT(*) AS n FROM session GROUP BY status")
            return Dictionary(uniqueKeysWithValues: rows.compactMap { row in
                SessionStatus(rawValue: row["status"]).map { ($0, row["n"] as Int) }
            })
        }
    }

    /// Throws unless the database takes its write lock now (an immediate write transaction that changes nothing).
    public func checkWritable() async throws {
        try await database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try db.execute(sql: "UPDATE session SET id = id WHERE 0")
                return .commit
            }
        }
    }

    private static let activeStatuses = SessionStatus.allCases.filter(\.isActive)
}

// Columns are named as the properties (camelCase), so the synthesized coding keys are the columns.
extension SessionRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "session"
}

extension SessionStatus: DatabaseValueConvertible {}
