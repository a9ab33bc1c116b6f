public import Foundation
public import ViewportCore

/// The daemon's state: sessions, runs, steps, artifacts, recording segments, webhook deliveries and the upload
/// outbox. ``SQLiteStore`` keeps it in the embedded database of one host; `PostgresStore` (module PostgresStore) in
/// a PostgreSQL database several hosts share. Both have the same tables, columns and migrations.
///
/// Adding and updating a session block until written (the daemon writes sessions on its own serial dispatch queue,
/// in the order they changed, never on the cooperative pool); everything else suspends the caller.
public protocol Store: Sendable {
    /// The bucket's key prefix when artifacts go to object storage: every artifact stored is then also queued for
    /// upload, in the same transaction. nil: artifacts stay on this host.
    var objectPrefix: String? { get }

    /// Runs `body` while the store is usable, then lets go of its connections. An SQLite store is usable from its
    /// init; a PostgreSQL store connects and applies its migrations first.
    func run(_ body: () async throws -> Void) async throws

    // MARK: Sessions

    /// Adds a new session; throws ``StoreFailure/duplicateSession(_:)`` if its id is taken. Blocks until written.
    func insert(_ session: SessionRecord) throws
    /// Saves a changed session. Blocks until written.
    func update(_ session: SessionRecord) throws
    /// The session with this id, if any.
    func session(id: String) async throws -> SessionRecord?
    /// Sessions of one organization, newest first.
    func sessions(organizationID: String, activeOnly: Bool) async throws -> [SessionRecord]
    /// The `limit` sessions that ended last, latest first.
    func recentlyEndedSessions(limit: Int) async throws -> [SessionRecord]
    /// Every session still open (to re-attach after a restart), oldest first.
    func activeSessions() async throws -> [SessionRecord]
    /// How many sessions are in each status (statuses without any are absent).
    func sessionCounts() async throws -> [SessionStatus: Int]
    /// Throws unless the database takes a write now (a write transaction that changes nothing).
    func checkWritable() async throws

    // MARK: Runs, steps, artifacts, segments

    /// Adds a new run; throws ``StoreFailure/duplicateRun(_:)`` if its id is taken.
    /// Adds a new run; throws ``StoreFailure/duplicateRun(_:)`` if its id is taken. With `uploads` (the run's
    /// manifest for the bucket), queued in the same transaction.
    func insert(_ run: RunRecord, uploads: [UploadRecord]) async throws
    /// Saves a run, queueing `uploads` in the same transaction.
    func update(_ run: RunRecord, uploads: [UploadRecord]) async throws
    func run(id: String) async throws -> RunRecord?
    /// Runs still open (of one session, or of all sessions when nil), oldest first.
    func openRuns(sessionID: String?) async throws -> [RunRecord]
    /// Adds a step (with its screenshot's artifact) and bumps its run's step count, in one transaction.
    func insert(_ step: StepRecord, artifact: ArtifactRecord?) async throws
    func steps(runID: String) async throws -> [StepRecord]
    /// Adds an artifact, queued for upload in the same transaction when artifacts go to a bucket.
    func insert(_ artifact: ArtifactRecord) async throws
    /// Stores a run rebuilt from the bucket (inserted, or replacing the open record a lost host left) with its
    /// artifacts, already stored there, in one transaction.
    func storeRecovered(_ run: RunRecord, session: SessionRecord, artifacts: [ArtifactRecord]) async throws
    func artifact(id: String) async throws -> ArtifactRecord?
    /// Artifacts of a run, oldest first.
    func artifacts(runID: String) async throws -> [ArtifactRecord]
    /// The files sessions list (their runs' recordings and their downloads) that retention has not deleted,
    /// oldest first, by session id (sessions without any are absent): one query for all.
    func sessionFiles(sessionIDs: [String]) async throws -> [String: [ArtifactRecord]]
    func insert(_ segment: SegmentRecord) async throws
    func markFinished(segmentID: String) async throws
    func segment(id: String) async throws -> SegmentRecord?
    /// Segments still being written (or left so by a crash).
    func unfinishedSegments() async throws -> [SegmentRecord]

    // MARK: Webhooks

    /// Adds a delivery and returns it with its id.
    func insertWebhookDelivery(_ delivery: WebhookDelivery) async throws -> WebhookDelivery
    /// Saves a delivery after an attempt.
    func updateWebhookDelivery(_ delivery: WebhookDelivery) async throws
    /// Pending deliveries due at `now`, longest due first, leaving out `excluded` ids (those in flight) and those of
    /// `excludingOrganizations`.
    func dueWebhookDeliveries(now: Date, excluding excluded: Set<Int64>, excludingOrganizations organizations: Set<String>,
                              limit: Int) async throws -> [WebhookDelivery]
    /// When the earliest pending delivery not in `excluded` nor of `organizations` is due, or nil when none is
    /// pending.
    func nextWebhookAttemptDate(excluding excluded: Set<Int64>, excludingOrganizations organizations: Set<String>)
        async throws -> Date?
    /// The newest delivery of a run, if it ever had one.
    func latestWebhookDelivery(runID: String) async throws -> WebhookDelivery?

    // MARK: Retention

    /// Bytes of artifact files on this host not expired yet (open sessions' included; not those in the bucket).
    func liveArtifactBytes() async throws -> Int
    /// Artifacts not expired yet whose session is closed or failed, the oldest closed session first (then oldest
    /// artifact first). With `createdBefore`, only artifacts created before then.
    func expirableArtifacts(createdBefore: Date?) async throws -> [ArtifactRecord]
    /// Marks artifacts deleted at `date`, and their sessions deleted once none of their files is left.
    func markExpired(artifactIDs: [String], at date: Date) async throws

    // MARK: Uploads

    /// Queues work for the bucket (a live part with its init part), all or nothing.
    func enqueue(_ uploads: [UploadRecord]) async throws
    /// Work due by `now`, leaving out what is in flight: live parts, manifests and deletions first (they are
    /// small, and a part waiting behind a large file would widen what a lost host loses), then artifacts, oldest
    /// first.
    func dueUploads(now: Date, excluding excluded: Set<Int64>, limit: Int) async throws -> [UploadRecord]
    /// When the next upload not in flight is due; nil when there is none.
    func nextUploadDate(excluding excluded: Set<Int64>) async throws -> Date?
    /// Uploads waiting (due or backing off).
    func pendingUploadCount() async throws -> Int
    /// Records a failed attempt; the upload is tried again at `retryAt`.
    func uploadFailed(id: Int64, error: String, retryAt: Date) async throws
    /// Removes an upload that is no longer wanted (its file went: a finished recording's live segment).
    func dropUpload(id: Int64) async throws
    /// The work is confirmed done: it leaves the outbox, and the artifact it stored, if any, now lives at `key`.
    /// Returns that artifact (its local copy may go now). An artifact retention expired meanwhile gets its object
    /// deleted again, in the same transaction.
    func uploadStored(_ upload: UploadRecord, at date: Date) async throws -> ArtifactRecord?
    /// Queues the delivery `make` builds from the run and its artifacts (oldest first) as they are now, if the
    /// run's webhook was held for its uploads and none is pending any more; returns whether it did. Atomic: of
    /// two callers racing for the same run, one queues it, from the final state of the artifacts.
    /// With `ignoringPending` (artifacts no longer go to a bucket) it is queued whatever is pending.
    func releaseHeldWebhook(runID: String, ignoringPending: Bool,
                            make: @escaping @Sendable (RunRecord, [ArtifactRecord]) throws -> WebhookDelivery)
        async throws -> Bool
    /// Runs whose webhook waits for their uploads.
    func runsAwaitingUploads() async throws -> [RunRecord]
    /// Finished recordings whose live parts are still in the bucket and no longer needed: every run cut from
    /// them is completed with its MP4 stored there, and none of their parts or manifests waits to go up. With the
    /// ids of those runs.
    func segmentsWithSpentLiveParts(limit: Int) async throws -> [(segment: SegmentRecord, runIDs: [String])]
    /// Marks a recording's live parts deleted and queues `deletions` (its parts and manifests), in one transaction.
    func retireLiveParts(segmentID: String, deletions: [UploadRecord]) async throws
}

/// Errors a store reports to callers.
public enum StoreFailure: Error, Equatable {
    /// A session with this id exists already.
    case duplicateSession(String)
    /// A run with this id exists already.
    case duplicateRun(String)
    /// This cluster node's lease was taken by another node: nothing it writes is accepted any more.
    case fenced(nodeID: String)
    /// The database cannot be reached now (down, refusing or dropping connections, no connection within the
    /// store's wait): nothing was read or written. Says why.
    case unavailable(String)
}

extension StoreFailure: CustomStringConvertible {
    public var description: String {
        switch self {
        case .duplicateSession(let id): "browser session \(id) already exists"
        case .duplicateRun(let id): "run \(id) already exists"
        case .fenced(let node): "cluster node \(node) lost its lease: the database takes nothing more from it"
        case .unavailable(let reason): "the database is unavailable: \(reason)"
        }
    }
}

// Defaults: a requirement cannot have them, and calls giving every argument still reach the requirement.
extension Store {
    public func openRuns(sessionID: String? = nil) async throws -> [RunRecord] { try await openRuns(sessionID: sessionID) }

    public func dueWebhookDeliveries(now: Date = Date(), excluding excluded: Set<Int64> = [],
                                     excludingOrganizations organizations: Set<String> = [], limit: Int)
        async throws -> [WebhookDelivery]
    {
        try await dueWebhookDeliveries(now: now, excluding: excluded, excludingOrganizations: organizations, limit: limit)
    }

    public func nextWebhookAttemptDate(excluding excluded: Set<Int64> = [],
                                       excludingOrganizations organizations: Set<String> = []) async throws -> Date? {
        try await nextWebhookAttemptDate(excluding: excluded, excludingOrganizations: organizations)
    }

    public func expirableArtifacts(createdBefore: Date? = nil) async throws -> [ArtifactRecord] {
        try await expirableArtifacts(createdBefore: createdBefore)
    }

    public func dueUploads(now: Date = Date(), excluding excluded: Set<Int64> = [], limit: Int) async throws
        -> [UploadRecord]
    {
        try await dueUploads(now: now, excluding: excluded, limit: limit)
    }

    public func nextUploadDate(excluding excluded: Set<Int64> = []) async throws -> Date? {
        try await nextUploadDate(excluding: excluded)
    }

    public func uploadStored(_ upload: UploadRecord, at date: Date = Date()) async throws -> ArtifactRecord? {
        try await uploadStored(upload, at: date)
    }

    public func insert(_ run: RunRecord) async throws { try await insert(run, uploads: []) }
    public func update(_ run: RunRecord) async throws { try await update(run, uploads: []) }

    public func releaseHeldWebhook(
        runID: String, make: @escaping @Sendable (RunRecord, [ArtifactRecord]) throws -> WebhookDelivery
    ) async throws -> Bool {
        try await releaseHeldWebhook(runID: runID, ignoringPending: false, make: make)
    }
}

extension Store {
    /// The object key of a published artifact: the artifacts directory's layout under the bucket's prefix,
    /// `{prefix}/{organization_id}/{browser_session_id}/{run_id}/{filename}`.
    public func objectKey(path: String) -> String? {
        objectPrefix.map { $0.isEmpty ? path : "\($0)/\(path)" }
    }

    /// The outbox row of an artifact being published, when artifacts go to a bucket.
    public func upload(of artifact: ArtifactRecord) -> UploadRecord? {
        objectKey(path: artifact.path).map {
            UploadRecord(key: $0, path: artifact.path, artifactID: artifact.id, checksum: artifact.checksum,
                         contentType: artifact.contentType)
        }
    }

    /// The statuses of sessions still open.
    public static var activeStatuses: [SessionStatus] { SessionStatus.allCases.filter(\.isActive) }
}
