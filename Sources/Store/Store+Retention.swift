public import Foundation
import GRDB
import ViewportCore

/// What retention may delete: the artifacts of closed sessions, oldest closed session first.
extension SQLiteStore {
    static func registerLifecycleMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v4-lifecycle") { db in
            try db.alter(table: "artifact") { t in t.add(column: "expiredAt", .datetime) }
            try db.alter(table: "session") { t in t.add(column: "renewedAt", .datetime) }
        }
        migrator.registerMigration("v5-vnc") { db in
            try db.alter(table: "session") { t in
                t.add(column: "vncAddress", .text)
                t.add(column: "vncPassword", .text)
            }
        }
        migrator.registerMigration("v6-recording-error") { db in
            try db.alter(table: "run") { t in t.add(column: "recordingError", .text) }
        }
        migrator.registerMigration("v7-session-files") { db in
            try db.alter(table: "session") { t in
                t.add(column: "browserType", .text)
                t.add(column: "extensions", .text)
                t.add(column: "downloadPath", .text)
                t.add(column: "deletedAt", .datetime)
            }
            // A download belongs to its session, with or without a run: runID becomes optional (SQLite changes a
            // column's constraint only by copying the table).
            let columns = "id, kind, runID, sessionID, organizationID, step, path, filename, fileSize, checksum, "
                + "contentType, createdAt, modifiedAt, expiredAt"
            try db.create(table: "artifact_v7") { t in
                t.primaryKey("id", .text)
                t.column("kind", .text).notNull()
                t.column("runID", .text)
                t.column("sessionID", .text).notNull()
                t.column("organizationID", .text).notNull()
                t.column("step", .integer)
                t.column("path", .text).notNull()
                t.column("filename", .text).notNull()
                t.column("fileSize", .integer).notNull()
                t.column("checksum", .text).notNull()
                t.column("contentType", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("modifiedAt", .datetime).notNull()
                t.column("expiredAt", .datetime)
            }
            try db.execute(sql: "INSERT INTO artifact_v7 (\(columns)) SELECT \(columns) FROM artifact")
            try db.drop(table: "artifact")
            try db.rename(table: "artifact_v7", to: "artifact")
            try db.create(index: "artifact_on_runID", on: "artifact", columns: ["runID"])
            try db.create(index: "artifact_on_sessionID", on: "artifact", columns: ["sessionID"])
        }
    }

    public func liveArtifactBytes() async throws -> Int {
        try await database.read { db in
            try Int.fetchOne(db, sql: """
                SELECT COALESCE(SUM(fileSize), 0) FROM artifact WHERE expiredAt IS NULL AND objectKey IS NULL
                """) ?? 0
        }
    }

    public func expirableArtifacts(createdBefore: Date?) async throws -> [ArtifactRecord] {
        let closed = SessionStatus.allCases.filter { !$0.isActive }.map(\.rawValue)
        return try await database.read { db in
            var sql = """
                SELECT artifact.* FROM artifact JOIN session ON session.id = artifact.sessionID
                WHERE artifact.expiredAt IS NULL AND session.status IN (\(closed.map { _ in "?" }.joined(separator: ",")))
                """
            var arguments = StatementArguments(closed)
            if let createdBefore {
                sql += " AND artifact.createdAt < ?"
                arguments += [createdBefore]
            }
            sql += " ORDER BY COALESCE(session.completedAt, session.modifiedAt), session.id, artifact.createdAt, artifact.id"
            return try ArtifactRecord.fetchAll(db, sql: sql, arguments: arguments)
        }
    }

    /// Marks artifacts deleted at `date`, and their sessions deleted once none of their files is left.
    /// Those stored in a bucket get their objects' deletion queued in the same transaction (an upload confirmed
    /// after this sees the artifact expired and queues it itself).
    public func markExpired(artifactIDs: [String], at date: Date) async throws {
        guard !artifactIDs.isEmpty else { return }
        try await database.write { db in
            for id in artifactIDs {
                try db.execute(sql: "UPDATE artifact SET expiredAt = ? WHERE id = ?", arguments: [date, id])
                if let key = try String.fetchOne(db, sql: "SELECT objectKey FROM artifact WHERE id = ?", arguments: [id]) {
                    try Self.insert([.deletion(key: key)], db)
                }
            }
            // A session whose files are all gone was deleted (its record stays, saying when).
            try db.execute(sql: """
                UPDATE session SET deletedAt = ? WHERE deletedAt IS NULL
                AND id IN (SELECT sessionID FROM artifact WHERE id IN (SELECT value FROM json_each(?)))
                AND NOT EXISTS (SELECT 1 FROM artifact WHERE artifact.sessionID = session.id AND expiredAt IS NULL)
                """, arguments: [date, String(decoding: try JSONEncoder().encode(artifactIDs), as: UTF8.self)])
        }
    }
}
