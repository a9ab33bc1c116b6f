public import Foundation
public import Store
public import ViewportCore

// The store's methods, as SQLiteStore's; text ids are ordered bytewise (COLLATE "C"), as SQLite orders them.
// With a node id, what concerns this host only (sessions to attach, runs a crash left open, recordings, the
// uploads of its files, the webhooks it sends, retention of its files, the counts it reports) is what this node
// owns.
extension PostgresStore {
    // MARK: - Sessions

    public func insert(_ session: SessionRecord) throws {
        var session = session
        session.nodeID = session.nodeID ?? nodeID
        try blocking { [self, session] in
            do { try await insert(session, into: "session") } catch let error where Self.isUniqueViolation(error) {
                throw StoreFailure.duplicateSession(session.id)
            }
        }
    }

    public func update(_ session: SessionRecord) throws {
        // The daemon's records do not carry their owner: the row keeps this node's.
        var session = session
        session.nodeID = session.nodeID ?? nodeID
        try blocking { [self, session] in try await update(session, in: "session", key: ["id"]) }
    }

    public func session(id: String) async throws -> SessionRecord? {
        try await record(SessionRecord.self, "SELECT row_to_json(s)::text FROM \"session\" s WHERE id = \(id)")
    }

    public func sessions(organizationID: String, activeOnly: Bool) async throws -> [SessionRecord] {
        let statuses = (activeOnly ? Self.activeStatuses : SessionStatus.allCases).map(\.rawValue)
        return try await records(SessionRecord.self, """
            SELECT row_to_json(s)::text FROM "session" s WHERE "organizationID" = \(organizationID)
            AND status = ANY(\(statuses)) ORDER BY "createdAt" DESC
            """)
    }

    public func recentlyEndedSessions(limit: Int) async throws -> [SessionRecord] {
        try await records(SessionRecord.self, """
            SELECT row_to_json(s)::text FROM "session" s WHERE NOT status = ANY(\(Self.activeStatuses.map(\.rawValue)))
            AND (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID)) ORDER BY "modifiedAt" DESC LIMIT \(limit)
            """)
    }

    public func activeSessions() async throws -> [SessionRecord] {
        try await records(SessionRecord.self, """
            SELECT row_to_json(s)::text FROM "session" s WHERE status = ANY(\(Self.activeStatuses.map(\.rawValue)))
            AND (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID)) ORDER BY "createdAt"
            """)
    }

    public func sessionCounts() async throws -> [SessionStatus: Int] {
        let rows = try await execute("""
            SELECT status, COUNT(*) FROM "session" WHERE (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID)) GROUP BY status
            """)
        return Dictionary(uniqueKeysWithValues: try rows.compactMap { row in
            let count = try row.decode(Int.self, column: 1)
            return SessionStatus(rawValue: try row.decode(String.self)).map { ($0, count) }
        })
    }

    public func checkWritable() async throws {
        try await transaction { try await execute("UPDATE \"session\" SET id = id WHERE false", on: $0) }
    }

    // MARK: - Runs and steps

    public func insert(_ run: RunRecord, uploads: [UploadRecord]) async throws {
        do {
            try await transaction { connection in
                try await insert(run, into: "run", on: connection)
                try await insert(uploads, on: connection)
            }
        } catch let error where Self.isUniqueViolation(error) {
            throw StoreFailure.duplicateRun(run.id)
        }
    }

    public func update(_ run: RunRecord, uploads: [UploadRecord]) async throws {
        try await transaction { connection in
            try await update(run, in: "run", key: ["id"], on: connection)
            try await insert(uploads, on: connection)
        }
    }

    public func run(id: String) async throws -> RunRecord? {
        try await record(RunRecord.self, "SELECT row_to_json(r)::text FROM run r WHERE id = \(id)")
    }

    public func openRuns(sessionID: String?) async throws -> [RunRecord] {
        try await records(RunRecord.self, """
            SELECT row_to_json(r)::text FROM run r WHERE status = 'running'
            AND (\(sessionID)::text IS NULL OR "sessionID" = \(sessionID)) AND (\(nodeID)::text IS NULL OR "sessionID" IN (SELECT id FROM "session" WHERE "nodeID" = \(nodeID))) ORDER BY "createdAt"
            """)
    }

    public func insert(_ step: StepRecord, artifact: ArtifactRecord?) async throws {
        try await transaction { connection in
            if let artifact { try await insert(artifact, on: connection) }
            try await insert(step, into: "step", on: connection)
            try await execute("UPDATE run SET \"stepCount\" = \(step.index) WHERE id = \(step.runID)", on: connection)
        }
    }

    public func steps(runID: String) async throws -> [StepRecord] {
        try await records(StepRecord.self, """
            SELECT row_to_json(s)::text FROM step s WHERE "runID" = \(runID) ORDER BY "index"
            """)
    }

    // MARK: - Artifacts

    public func insert(_ artifact: ArtifactRecord) async throws {
        try await transaction { try await insert(artifact, on: $0) }
    }

    /// Inserts `artifact` and, when artifacts go to a bucket and it is not there yet, its upload.
    private func insert(_ artifact: ArtifactRecord, on connection: Connection) async throws {
        try await insert(artifact, into: "artifact", on: connection)
        if artifact.objectKey == nil, let upload = upload(of: artifact) { try await insert([upload], on: connection) }
    }

    public func storeRecovered(_ run: RunRecord, session: SessionRecord, artifacts: [ArtifactRecord]) async throws {
        try await transaction { connection in
            // The session's record too, when this store never saw it: retention expires a session's artifacts once
            // it is closed.
            var session = session
            session.nodeID = session.nodeID ?? nodeID
            try await insert(session, into: "session", onConflictDoNothing: true, on: connection)
            try await update(run, in: "run", key: ["id"], upsert: true, on: connection)
            for artifact in artifacts { try await insert(artifact, on: connection) }
        }
    }

    public func artifact(id: String) async throws -> ArtifactRecord? {
        try await record(ArtifactRecord.self, "SELECT row_to_json(a)::text FROM artifact a WHERE id = \(id)")
    }

    public func artifacts(runID: String) async throws -> [ArtifactRecord] {
        try await artifacts(runID: runID, on: nil)
    }

    /// A run's artifacts, oldest first.
    private func artifacts(runID: String, on connection: Connection?) async throws -> [ArtifactRecord] {
        try await records(ArtifactRecord.self, """
            SELECT row_to_json(a)::text FROM artifact a WHERE "runID" = \(runID) ORDER BY "createdAt", id COLLATE "C"
            """, on: connection)
    }

    public func sessionFiles(sessionIDs: [String]) async throws -> [String: [ArtifactRecord]] {
        let kinds = [ArtifactRecord.Kind.recording, .download].map(\.rawValue)
        return Dictionary(grouping: try await records(ArtifactRecord.self, """
            SELECT row_to_json(a)::text FROM artifact a WHERE "sessionID" = ANY(\(sessionIDs))
            AND kind = ANY(\(kinds)) AND "expiredAt" IS NULL ORDER BY "createdAt"
            """), by: \.sessionID)
    }

    // MARK: - Segments

    public func insert(_ segment: SegmentRecord) async throws { try await insert(segment, into: "segment") }

    public func markFinished(segmentID: String) async throws {
        try await transaction { try await execute("UPDATE segment SET finished = true WHERE id = \(segmentID)", on: $0) }
    }

    public func segment(id: String) async throws -> SegmentRecord? {
        try await record(SegmentRecord.self, "SELECT row_to_json(s)::text FROM segment s WHERE id = \(id)")
    }

    public func unfinishedSegments() async throws -> [SegmentRecord] {
        try await records(SegmentRecord.self, """
            SELECT row_to_json(s)::text FROM segment s WHERE NOT finished AND (\(nodeID)::text IS NULL OR "sessionID" IN (SELECT id FROM "session" WHERE "nodeID" = \(nodeID)))
            """)
    }

    // MARK: - Webhooks

    public func insertWebhookDelivery(_ delivery: WebhookDelivery) async throws -> WebhookDelivery {
        var delivery = delivery
        delivery.nodeID = delivery.nodeID ?? nodeID
        let rows = try await insert(delivery, into: "webhook_delivery", returning: "id")
        delivery.id = try rows.first?.decode(Int64.self)
        return delivery
    }

    public func updateWebhookDelivery(_ delivery: WebhookDelivery) async throws {
        try await update(delivery, in: "webhook_delivery", key: ["id"])
    }

    public func dueWebhookDeliveries(now: Date, excluding excluded: Set<Int64>,
                                     excludingOrganizations organizations: Set<String>, limit: Int)
        async throws -> [WebhookDelivery]
    {
        try await records(WebhookDelivery.self, """
            SELECT row_to_json(d)::text FROM webhook_delivery d WHERE status = 'pending'
            AND NOT id = ANY(\(Array(excluded))) AND NOT "organizationID" = ANY(\(Array(organizations)))
            AND "nextAttemptAt" <= \(RowCoding.text(now))::timestamptz AND (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID))
            ORDER BY "nextAttemptAt", id LIMIT \(limit)
            """)
    }

    public func nextWebhookAttemptDate(excluding excluded: Set<Int64>, excludingOrganizations organizations: Set<String>)
        async throws -> Date?
    {
        try await record(WebhookDelivery.self, """
            SELECT row_to_json(d)::text FROM webhook_delivery d WHERE status = 'pending'
            AND NOT id = ANY(\(Array(excluded))) AND NOT "organizationID" = ANY(\(Array(organizations)))
            AND (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID)) ORDER BY "nextAttemptAt", id LIMIT 1
            """)?.nextAttemptAt
    }

    public func latestWebhookDelivery(runID: String) async throws -> WebhookDelivery? {
        try await record(WebhookDelivery.self, """
            SELECT row_to_json(d)::text FROM webhook_delivery d WHERE "runID" = \(runID) ORDER BY id DESC LIMIT 1
            """)
    }

    // MARK: - Retention

    public func liveArtifactBytes() async throws -> Int {
        try await execute("""
            SELECT COALESCE(SUM("fileSize"), 0)::bigint FROM artifact WHERE "expiredAt" IS NULL AND "objectKey" IS NULL
            AND (\(nodeID)::text IS NULL OR "sessionID" IN (SELECT id FROM "session" WHERE "nodeID" = \(nodeID)))
            """).first?.decode(Int.self) ?? 0
    }

    public func expirableArtifacts(createdBefore: Date?) async throws -> [ArtifactRecord] {
        let closed = SessionStatus.allCases.filter { !$0.isActive }.map(\.rawValue)
        return try await records(ArtifactRecord.self, """
            SELECT row_to_json(a)::text FROM artifact a JOIN "session" s ON s.id = a."sessionID"
            WHERE a."expiredAt" IS NULL AND s.status = ANY(\(closed)) AND (\(nodeID)::text IS NULL OR s."nodeID" = \(nodeID))
            AND (\(createdBefore.map(RowCoding.text))::timestamptz IS NULL
                 OR a."createdAt" < \(createdBefore.map(RowCoding.text))::timestamptz)
            ORDER BY COALESCE(s."completedAt", s."modifiedAt"), s.id COLLATE "C", a."createdAt", a.id COLLATE "C"
            """)
    }

    public func markExpired(artifactIDs: [String], at date: Date) async throws {
        guard !artifactIDs.isEmpty else { return }
        let date = RowCoding.text(date)
        try await transaction { connection in
            // Those stored in a bucket get their objects' deletion queued (an upload confirmed after this sees the
            // artifact expired and queues it itself).
            let keys = try await execute("""
                UPDATE artifact SET "expiredAt" = \(date)::timestamptz WHERE id = ANY(\(artifactIDs))
                RETURNING "objectKey"
                """, on: connection).compactMap { try $0.decode(String?.self) }
            try await insert(keys.map { UploadRecord.deletion(key: $0) }, on: connection)
            // A session whose files are all gone was deleted (its record stays, saying when).
            try await execute("""
                UPDATE "session" s SET "deletedAt" = \(date)::timestamptz WHERE "deletedAt" IS NULL
                AND id IN (SELECT "sessionID" FROM artifact WHERE id = ANY(\(artifactIDs)))
                AND NOT EXISTS (SELECT 1 FROM artifact a WHERE a."sessionID" = s.id AND a."expiredAt" IS NULL)
                """, on: connection)
        }
    }

    // MARK: - Uploads

    public func enqueue(_ uploads: [UploadRecord]) async throws {
        try await transaction { try await insert(uploads, on: $0) }
    }

    func insert(_ uploads: [UploadRecord], on connection: Connection) async throws {
        for var upload in uploads {
            upload.nodeID = upload.nodeID ?? nodeID
            try await insert(upload, into: "upload", on: connection)
        }
    }

    public func dueUploads(now: Date, excluding excluded: Set<Int64>, limit: Int) async throws -> [UploadRecord] {
        try await records(UploadRecord.self, """
            SELECT row_to_json(u)::text FROM upload u WHERE "nextAttemptAt" <= \(RowCoding.text(now))::timestamptz
            AND NOT id = ANY(\(Array(excluded))) AND (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID))
            ORDER BY "artifactID" IS NOT NULL, id LIMIT \(limit)
            """)
    }

    public func nextUploadDate(excluding excluded: Set<Int64>) async throws -> Date? {
        try await record(UploadRecord.self, """
            SELECT row_to_json(u)::text FROM upload u WHERE NOT id = ANY(\(Array(excluded)))
            AND (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID)) ORDER BY "nextAttemptAt" LIMIT 1
            """)?.nextAttemptAt
    }

    public func pendingUploadCount() async throws -> Int {
        try await execute("""
            SELECT COUNT(*) FROM upload WHERE (\(nodeID)::text IS NULL OR "nodeID" = \(nodeID))
            """).first?.decode(Int.self) ?? 0
    }

    public func uploadFailed(id: Int64, error: String, retryAt: Date) async throws {
        try await transaction {
            try await execute("""
                UPDATE upload SET attempts = attempts + 1, "lastError" = \(error),
                "nextAttemptAt" = \(RowCoding.text(retryAt))::timestamptz WHERE id = \(id)
                """, on: $0)
        }
    }

    public func dropUpload(id: Int64) async throws {
        try await transaction { try await execute("DELETE FROM upload WHERE id = \(id)", on: $0) }
    }

    public func uploadStored(_ upload: UploadRecord, at date: Date) async throws -> ArtifactRecord? {
        try await transaction { connection in
            try await execute("DELETE FROM upload WHERE id = \(upload.id)", on: connection)
            guard let id = upload.artifactID else { return nil }
            let artifact = try await record(ArtifactRecord.self, """
                UPDATE artifact a SET "objectKey" = \(upload.key), "storedAt" = \(RowCoding.text(date))::timestamptz
                WHERE id = \(id) RETURNING row_to_json(a)::text
                """, on: connection)
            if artifact?.expiredAt != nil { try await insert([.deletion(key: upload.key)], on: connection) }
            return artifact
        }
    }

    public func releaseHeldWebhook(
        runID: String, ignoringPending: Bool,
        make: @escaping @Sendable (RunRecord, [ArtifactRecord]) throws -> WebhookDelivery
    ) async throws -> Bool {
        try await transaction { connection in
            // The run's row lock orders racing callers: the second sees the flag the first cleared.
            let pending = try await execute("""
                SELECT 1 FROM upload JOIN artifact ON artifact.id = upload."artifactID"
                WHERE artifact."runID" = \(runID) AND upload.operation = 'put' LIMIT 1
                """, on: connection)
            guard pending.isEmpty || ignoringPending else { return false }
            guard let run = try await record(RunRecord.self, """
                UPDATE run r SET "webhookAwaitsUploads" = false
                WHERE id = \(runID) AND "webhookAwaitsUploads" AND status != 'running' RETURNING row_to_json(r)::text
                """, on: connection)
            else { return false }
            let artifacts = try await artifacts(runID: runID, on: connection)
            var delivery = try make(run, artifacts)
            delivery.nodeID = delivery.nodeID ?? nodeID
            try await insert(delivery, into: "webhook_delivery", on: connection)
            return true
        }
    }

    public func runsAwaitingUploads() async throws -> [RunRecord] {
        try await records(RunRecord.self, """
            SELECT row_to_json(r)::text FROM run r WHERE "webhookAwaitsUploads" AND status != 'running'
            AND (\(nodeID)::text IS NULL OR "sessionID" IN (SELECT id FROM "session" WHERE "nodeID" = \(nodeID)))
            """)
    }

    public func segmentsWithSpentLiveParts(limit: Int) async throws -> [(segment: SegmentRecord, runIDs: [String])] {
        let rows = try await execute("""
            SELECT row_to_json(segment)::text, to_json(ARRAY(SELECT id FROM run WHERE "segmentID" = segment.id))::text
            FROM segment WHERE finished AND NOT "livePartsDeleted" AND (\(nodeID)::text IS NULL OR "sessionID" IN (SELECT id FROM "session" WHERE "nodeID" = \(nodeID)))
            AND NOT EXISTS (SELECT 1 FROM run WHERE run."segmentID" = segment.id AND (run.status = 'running'
                OR NOT EXISTS (SELECT 1 FROM artifact WHERE artifact."runID" = run.id AND artifact.kind = 'recording'
                               AND artifact."objectKey" IS NOT NULL)))
            AND NOT EXISTS (SELECT 1 FROM upload WHERE upload."segmentID" = segment.id AND upload.operation = 'put')
            LIMIT \(limit)
            """)
        return try rows.map { row in
            (try RowCoding.decode(SegmentRecord.self, from: try row.decode(String.self)),
             try RowCoding.decode([String].self, from: try row.decode(String.self, column: 1)))
        }
    }

    public func retireLiveParts(segmentID: String, deletions: [UploadRecord]) async throws {
        try await transaction { connection in
            try await execute("UPDATE segment SET \"livePartsDeleted\" = true WHERE id = \(segmentID)", on: connection)
            try await insert(deletions, on: connection)
        }
    }
}
