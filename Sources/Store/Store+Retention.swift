public import Foundation
import GRDB
import ViewportCore

/// What retention may delete: the artifacts of closed sessions, oldest closed session first.
extension Store {
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
    }

    /// Bytes of artifact files not expired yet (open sessions' included).
    public func liveArtifactBytes() async throws -> Int {
        try await database.read { db in
            try Int.fetchOne(db, sql: "SELECT COALESCE(SUM(fileSize), 0) FROM artifact WHERE expiredAt IS NULL") ?? 0
        }
    }

    /// Artifacts not expired yet whose session is closed or failed, the oldest closed session first (then oldest
    /// artifact first). With `createdBefore`, only artifacts created before then.
    public func expirableArtifacts(createdBefore: Date? = nil) async throws -> [ArtifactRecord] {
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

    /// Marks artifacts as expired (their files are about to be deleted).
    public func markExpired(artifactIDs: [String], at date: Date) async throws {
        guard !artifactIDs.isEmpty else { return }
        try await database.write { db in
            for id in artifactIDs {
                try db.execute(sql: "UPDATE artifact SET expiredAt = ? WHERE id = ?", arguments: [date, id])
            }
        }
    }
}
