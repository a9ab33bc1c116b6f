public import GRDB
public import ViewportCore

/// The embedded SQLite database of the daemon's state (`viewportd.sqlite` in the state directory).
///
/// Its async methods let GRDB run them on its own queues and suspend the caller, so no thread of the
/// cooperative pool waits for SQLite (a busy database waits up to 5 s).
public final class SQLiteStore: Store {
    let database: DatabasePool
    public let objectPrefix: String?

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
        registerClusterMigrations(&migrator)
        return migrator
    }

    /// Opened and migrated at init.
    public func run(_ body: () async throws -> Void) async throws { try await body() }

    public func insert(_ session: SessionRecord) throws {
        do {
            try database.write { try session.insert($0) }
        } catch let error as DatabaseError where error.resultCode == .SQLITE_CONSTRAINT {
            throw StoreFailure.duplicateSession(session.id)
        }
    }

    public func update(_ session: SessionRecord) throws {
        try database.write { try session.update($0) }
    }

    public func session(id: String) async throws -> SessionRecord? {
        try await database.read { try SessionRecord.fetchOne($0, key: id) }
    }

    public func sessions(organizationID: String, activeOnly: Bool) async throws -> [SessionRecord] {
        try await database.read { db in
            var request = SessionRecord.filter(Column("organizationID") == organizationID)
            if activeOnly { request = request.filter(Self.activeStatuses.contains(Column("status"))) }
            return try request.order(Column("createdAt").desc).fetchAll(db)
        }
    }

    public func recentlyEndedSessions(limit: Int) async throws -> [SessionRecord] {
        try await database.read { db in
            try SessionRecord.filter(!Self.activeStatuses.contains(Column("status"))).order(Column("modifiedAt").desc)
                .limit(limit).fetchAll(db)
        }
    }

    public func activeSessions() async throws -> [SessionRecord] {
        try await database.read { db in
            try SessionRecord.filter(Self.activeStatuses.contains(Column("status"))).order(Column("createdAt"))
                .fetchAll(db)
        }
    }

    public func sessionCounts() async throws -> [SessionStatus: Int] {
        try await database.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT status, COUNT(*) AS n FROM session GROUP BY status")
            return Dictionary(uniqueKeysWithValues: rows.compactMap { row in
                SessionStatus(rawValue: row["status"]).map { ($0, row["n"] as Int) }
            })
        }
    }

    public func checkWritable() async throws {
        try await database.writeWithoutTransaction { db in
            try db.inTransaction(.immediate) {
                try db.execute(sql: "UPDATE session SET id = id WHERE 0")
                return .commit
            }
        }
    }
}

// Columns are named as the properties (camelCase), so the synthesized coding keys are the columns.
extension SessionRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "session"
}

extension SessionStatus: DatabaseValueConvertible {}
