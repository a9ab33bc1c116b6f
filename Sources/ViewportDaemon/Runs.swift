import Digests
import Foundation
import Logging
import Recorder
import Store
import ViewerGateway
import ViewportCore

/// Why a request about a run failed.
enum RunError: DomainError, Equatable {
    case notFound(id: String)
    case artifactNotFound(id: String)
    /// Retention deleted the artifact's file.
    case artifactExpired
    case alreadyExists(id: String)
    case session(SessionError)
    case tooManyRecordings(organizationID: String, limit: Int)
    case noFrameYet(sessionID: String)
    /// The run is not open (`status` is its final status).
    case notOpen(id: String, status: String)
    case beingCompleted(id: String)
    case startedByEarlierProcess(id: String)
    case webhookRefused(String)
    case noWebhookSecret(organizationID: String)
    case noWebhook(id: String)
    case stillOpen(id: String)
    case noDelivery(id: String)
    case tooManyRetries(organizationID: String, limit: Int)
    /// The store or the disk failed doing `what`.
    case storageFailed(what: String, error: String)

    var kind: FailureKind {
        switch self {
        case .session(let error): error.kind
        case .notFound, .artifactNotFound, .artifactExpired: .notFound
        case .alreadyExists, .noFrameYet, .notOpen, .beingCompleted, .startedByEarlierProcess, .noWebhook, .stillOpen,
             .noDelivery: .conflict
        case .webhookRefused, .noWebhookSecret: .invalid
        case .tooManyRecordings, .tooManyRetries: .limited
        case .storageFailed: .unavailable
        }
    }

    var detail: String {
        switch self {
        case .session(let error): error.detail
        case .notFound(let id): "run \(id) not found"
        case .artifactNotFound(let id): "artifact \(id) not found"
        case .artifactExpired: "artifact expired"
        case .alreadyExists(let id): "run \(id) already exists"
        case .tooManyRecordings(let organization, let limit):
            "organization \(organization) records \(limit) sessions, the most it may (config limits.recordings_per_organization)"
        case .noFrameYet(let session): "browser session \(session) has shown no frame yet; retry when the page is up"
        case .notOpen(let id, let status): "run \(id) is \(status)"
        case .beingCompleted(let id): "run \(id) is being completed"
        case .startedByEarlierProcess(let id):
            "run \(id) was started by an earlier viewportd process and is being terminated"
        case .webhookRefused(let reason): "webhook_url: \(reason)"
        case .noWebhookSecret(let organization):
            "webhook_url: no webhook secret is configured for organization \(organization) (config webhooks.secrets)"
        case .noWebhook(let id): "run \(id) has no webhook_url"
        case .stillOpen(let id): "run \(id) is not completed yet"
        case .noDelivery(let id): "run \(id) has no webhook delivery yet"
        case .tooManyRetries(let organization, let limit):
            "organization \(organization) retried \(limit) webhooks in the last minute, the most it may (config limits.retry_webhook_per_minute)"
        case .storageFailed(let what, let error): "cannot \(what): \(error)"
        }
    }
}

/// Runs of agents in sessions: steps with screenshots, one recording per session cut into one MP4 per run,
/// artifacts and the completion webhook. A run's completion is in RunCompletion.swift, the sessions' recordings
/// in SessionRecording.swift.
///
/// An actor: what a call decides between two `await`s happens atomically, so each call decides in memory first
/// (which recording a run joins, a step's index) and then writes to the store and the disk, undoing its decision
/// when that fails. Runs are open only in the process that started them; a run found open at start-up was cut
/// short by a crash and is terminated with what its recording holds.
actor Runs {
    /// An open run and what it has collected.
    struct OpenRun {
        var record: RunRecord
        let hub: FrameHub
        var steps: [StepRecord] = []
        var droppedAtStart: UInt64 = 0
        var completing = false
    }

    /// Final statuses `complete` accepts.
    static let finalStatuses = ["completed", "failed", "terminated", "timed_out", "canceled"]

    // Not private: run completion (RunCompletion.swift) uses them too.
    let store: any Store
    let files: ArtifactFiles
    let webhooks: Webhooks
    let config: Config
    let logger: Logger
    /// The bucket artifacts go to, with `artifacts.store: s3`.
    let bucket: Bucket?
    private(set) var recordings = SessionRecordings()
    var open: [String: OpenRun] = [:]

    private let sessions: Sessions
    private let auth: Auth
    /// Told of runs starting and ending and of steps, for the sessions' viewers.
    private let gateway: ViewerGateway
    /// Ids of runs being started (stored next), so that a second start of the same id is refused.
    private var starting: Set<String> = []
    /// Recordings no run holds any more, retired in order by ``retireRecordings()``.
    private let retirements: AsyncStream<SessionRecording>
    private let retiring: AsyncStream<SessionRecording>.Continuation

    init(store: any Store, sessions: Sessions, files: ArtifactFiles, auth: Auth, webhooks: Webhooks, config: Config,
         bucket: Bucket?, gateway: ViewerGateway, logger: Logger)
    {
        self.gateway = gateway
        self.bucket = bucket
        self.store = store
        self.sessions = sessions
        self.files = files
        self.auth = auth
        self.webhooks = webhooks
        self.config = config
        self.logger = logger
        (retirements, retiring) = AsyncStream.makeStream()
    }

    // MARK: - API

    /// Starts a run in an open session; its recording starts with a keyframe now.
    func start(sessionID: String, organizationID: String, runID: String?, webhookURL: String?, title: String?)
        async throws(RunError) -> RunRecord
    {
        if let webhookURL {
            do {
                try Webhooks.validate(url: webhookURL)
                try await webhooks.checkReachable(url: webhookURL)
            } catch { throw .webhookRefused("\(error)") }
            guard webhooks.hasSecret(organizationID: organizationID) else {
                throw .noWebhookSecret(organizationID: organizationID)
            }
        }
        let session: SessionRecord
        do { session = try await sessions.openSession(id: sessionID, organizationID: organizationID) } catch {
            throw .session(error)
        }
        guard let hub = sessions.hub(id: sessionID), let encoder = sessions.encoder(id: sessionID) else {
            throw .session(.notOpen(id: sessionID, status: session.status))
        }
        let id = runID ?? "wr_\(Digest.randomBytes(12).hex)"
        let stored = (try? await store.run(id: id)) ?? nil
        guard open[id] == nil, !starting.contains(id), stored == nil else { throw .alreadyExists(id: id) }
        let now = Date()
        let start = wallClockMicros()
        let (existing, retired) = recordings.usable(sessionID: sessionID)
        if let retired { retiring.yield(retired) }
        var recording = existing
        if recording == nil, config.recording.enabled {
            let limit = config.limits.recordingsPerOrganization
            guard recordings.count(organizationID: organizationID) < limit else {
                throw .tooManyRecordings(organizationID: organizationID, limit: limit)
            }
            do {
                recording = try SessionRecording(sessionID: sessionID, organizationID: organizationID,
                                                 encoder: encoder, origin: start, files: files, bucket: bucket,
                                                 store: store)
            } catch {
                logger.error("cannot start recording", metadata: ["browser_session_id": "\(sessionID)", "error": "\(error)"])
                throw .storageFailed(what: "start the recording", error: "\(error)")
            }
        }
        recording?.recorder.keyframe(at: start)
        let record = RunRecord(id: id, sessionID: sessionID, organizationID: organizationID, status: "running",
                               title: title, webhookURL: webhookURL, createdAt: now, startMicros: start,
                               segmentID: recording?.record.id)
        if let recording { recordings.add(id, to: recording) }
        starting.insert(id)
        defer { starting.remove(id) }
        do {
            if existing == nil, let recording { try await store.insert(recording.record) }
            // With a bucket, the run's manifest (what recovery needs) is queued in the same transaction.
            try await store.insert(record, uploads: bucket?.manifestUpload(record).map { [$0] } ?? [])
            bucket?.queued.signal()
        } catch {
            release(id, from: record)
            if case StoreFailure.duplicateRun = error { throw .alreadyExists(id: id) }
            throw .storageFailed(what: "store the run", error: "\(error)")
        }
        open[id] = OpenRun(record: record, hub: hub, droppedAtStart: recording?.recorder.stats.framesDropped ?? 0)
        logger.info("run started", metadata: ["run_id": "\(id)", "browser_session_id": "\(sessionID)"])
        tellViewers(record)
        // A session that ended while the run was being stored did not see it: the run ends with it here.
        if sessions.hub(id: sessionID) !== hub { await terminate([id], reason: "the browser session ended") }
        return record
    }

    /// Marks a step: takes the newest frame as its screenshot (waiting up to 2 s for a first one).
    func step(runID: String, organizationID: String, label: String) async throws(RunError) -> (StepRecord, ArtifactRecord) {
        let run = try await openRun(runID, organizationID: organizationID)
        let time = wallClockMicros()
        guard let frame = await Self.currentFrame(run.hub) else {
            throw .noFrameYet(sessionID: run.record.sessionID)
        }
        // The run may have been completed while this step waited for a frame.
        guard var current = open[runID], !current.completing else { throw .notOpen(id: runID, status: "completed") }
        let index = (current.steps.last?.index ?? 0) + 1
        let artifactID = ArtifactFiles.newID()
        let step = StepRecord(runID: runID, index: index, label: label, createdAt: Date(), timeMicros: time,
                              artifactID: artifactID)
        current.steps.append(step)
        current.record.stepCount = current.steps.count
        open[runID] = current
        do {
            let artifact = try await saveScreenshot(frame, id: artifactID, run: current.record, step: index,
                                                    name: String(format: "step-%03d", index))
            try await store.insert(step, artifact: artifact)
            bucket?.queued.signal()
            gateway.stepMarked(StepEvent(runID: runID, index: index, label: label, at: APIJSON.iso(step.createdAt)),
                               sessionID: current.record.sessionID)
            return (step, artifact)
        } catch {
            open[runID]?.steps.removeAll { $0.index == index }
            open[runID]?.record.stepCount = open[runID]?.steps.count ?? 0
            throw .storageFailed(what: "save the step", error: "\(error)")
        }
    }

    /// The run if it exists and belongs to `organizationID`.
    func run(id: String, organizationID: String) async throws(RunError) -> RunRecord {
        if let run = open[id], run.record.organizationID == organizationID { return run.record }
        return try await stored(id, organizationID: organizationID)
    }

    /// Signed links to a run's recording and screenshots (newest first), valid for `artifacts.url_ttl_seconds`.
    nonisolated func links(_ run: RunRecord) async throws(RunError) -> (recording: String?, screenshots: [String]) {
        do { return links(try await store.artifacts(runID: run.id)) } catch {
            throw .storageFailed(what: "read the run's artifacts", error: "\(error)")
        }
    }

    /// The same, from a run's artifacts already read (oldest first).
    nonisolated func links(_ artifacts: [ArtifactRecord]) -> (recording: String?, screenshots: [String]) {
        Self.links(artifacts, url: artifactURL)
    }

    /// The recording's link and the screenshots' (newest first) of a run's artifacts (oldest first).
    static func links(_ artifacts: [ArtifactRecord], url: (ArtifactRecord) -> String)
        -> (recording: String?, screenshots: [String])
    {
        (artifacts.last { $0.kind == .recording }.map(url), artifacts.filter { $0.kind == .screenshot }.reversed().map(url))
    }

    /// Queues the completed run's webhook again (at most `limits.retry_webhook_per_minute` a minute).
    func retryWebhook(runID: String, organizationID: String) async throws(RunError) {
        let run = try await run(id: runID, organizationID: organizationID)
        guard run.webhookURL != nil else { throw .noWebhook(id: runID) }
        guard !run.isOpen else { throw .stillOpen(id: runID) }
        guard webhooks.allowRetry(organizationID: organizationID) else {
            throw .tooManyRetries(organizationID: organizationID, limit: config.limits.retryWebhookPerMinute)
        }
        let queued: Bool
        do { queued = try await webhooks.resend(runID: runID) } catch {
            throw .storageFailed(what: "queue the webhook", error: "\(error)")
        }
        guard queued else { throw .noDelivery(id: runID) }
    }

    /// What a run's replay page shows; nil when there is no such run.
    struct Replay: Sendable {
        let run: RunRecord
        let artifacts: [ArtifactRecord]
        let steps: [StepRecord]
    }

    func replay(runID: String) async throws -> Replay? {
        let run: RunRecord? = if let open = open[runID]?.record { open } else { try await store.run(id: runID) }
        guard let run else { return nil }
        return Replay(run: run, artifacts: try await store.artifacts(runID: runID), steps: try await store.steps(runID: runID))
    }

    /// An artifact by id, whoever owns it (the caller checks).
    func artifact(id: String) async throws(RunError) -> ArtifactRecord? {
        do { return try await store.artifact(id: id) } catch {
            throw .storageFailed(what: "read the artifact", error: "\(error)")
        }
    }

    /// The files each session lists (its runs' recordings, its downloads), oldest first.
    func sessionFiles(sessionIDs: [String]) async throws(RunError) -> [String: [ArtifactRecord]] {
        do { return try await store.sessionFiles(sessionIDs: sessionIDs) } catch {
            throw .storageFailed(what: "read the sessions' files", error: "\(error)")
        }
    }

    /// The run open in each session that has one (the newest when several are).
    func openRunIDs(sessionIDs: [String]) -> [String: String] {
        let wanted = Set(sessionIDs)
        var newest: [String: RunRecord] = [:]
        for run in open.values.map(\.record) where wanted.contains(run.sessionID) && !(open[run.id]?.completing ?? true) {
            if newest[run.sessionID].map({ $0.createdAt < run.createdAt }) ?? true { newest[run.sessionID] = run }
        }
        return newest.mapValues(\.id)
    }

    /// Artifacts of a run, oldest first.
    func artifacts(runID: String, organizationID: String) async throws(RunError) -> [ArtifactRecord] {
        _ = try await run(id: runID, organizationID: organizationID)
        do { return try await store.artifacts(runID: runID) } catch {
            throw .storageFailed(what: "read the run's artifacts", error: "\(error)")
        }
    }

    /// A URL of an artifact's content that works without a key: the bucket's (presigned, or through its CDN) once
    /// the object is stored there, else viewportd's own, signed.
    nonisolated func artifactURL(_ artifact: ArtifactRecord) -> String {
        if let key = artifact.objectKey, let bucket { return bucket.url(key: key) }
        let (expires, signature) = auth.artifactSignature(
            artifactID: artifact.id, expiresAt: Date().addingTimeInterval(Double(config.artifacts.urlTTLSeconds)))
        return "\(config.effectivePublicURL)/v1/artifacts/\(artifact.id)/content?expires=\(expires)&signature=\(signature)"
    }

    /// The run's replay page, with a token of the run valid for `artifacts.url_ttl_seconds`.
    nonisolated func replayURL(runID: String) -> String {
        let token = auth.viewerToken(sessionID: runID,
                                     expiresAt: Date().addingTimeInterval(Double(config.artifacts.urlTTLSeconds)))
        return "\(config.effectivePublicURL)/replay/\(runID)?token=\(token)"
    }

    /// Tells the viewers of the run's session that it started or ended (with its replay page).
    func tellViewers(_ run: RunRecord) {
        gateway.runChanged(RunEvent(runID: run.id, status: run.status, startedAt: APIJSON.iso(run.startedAt ?? run.createdAt),
                                    finishedAt: run.finishedAt.map(APIJSON.iso),
                                    replayURL: run.isOpen ? nil : replayURL(runID: run.id)),
                           sessionID: run.sessionID)
    }

    // MARK: - Recordings

    /// Detaches a run from its recording; the last run out hands the recording to ``retireRecordings()``.
    func release(_ runID: String, from run: RunRecord) {
        if let retired = recordings.release(runID, from: run) { retiring.yield(retired) }
    }

    /// Stops the encoder of each recording no run holds any more and deletes its file, until ``stopRetiring()``
    /// and the last one queued before it (the session service runs this, so shutdown waits for it).
    func retireRecordings() async {
        for await recording in retirements {
            recording.shipping?.cancel()
            await recording.recorder.finish()
            try? await store.markFinished(segmentID: recording.record.id)
            await offThread { [files] in files.remove(recording.record.path) }
        }
    }

    /// Ends ``retireRecordings()`` once the recordings queued so far are retired; later ones are left to the next
    /// start's recovery.
    nonisolated func stopRetiring() { retiring.finish() }

    // MARK: - Helpers

    private func openRun(_ id: String, organizationID: String) async throws(RunError) -> OpenRun {
        guard let run = open[id], run.record.organizationID == organizationID else {
            throw .notOpen(id: id, status: try await stored(id, organizationID: organizationID).status)
        }
        guard !run.completing else { throw .beingCompleted(id: id) }
        return run
    }

    func stored(_ id: String, organizationID: String) async throws(RunError) -> RunRecord {
        let record: RunRecord?
        do { record = try await store.run(id: id) } catch { throw .storageFailed(what: "read the run", error: "\(error)") }
        guard let record, record.organizationID == organizationID else { throw .notFound(id: id) }
        return record
    }

    /// The newest frame of a session as it is now: the hub's latest while somebody consumes (the screencast
    /// runs), else the first fresh frame after asking for one, waiting up to 2 s.
    static func currentFrame(_ hub: FrameHub) async -> Frame? {
        if hub.consumerCount > 0, let latest = hub.latest { return latest }
        let stale = hub.latest?.sequence ?? 0
        let (wakes, continuation) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        let subscription = hub.subscribe(kind: .screenshot, capacity: 1) { continuation.yield() }
        defer { subscription.cancel() }
        let timeout = Task {
            try? await Task.sleep(for: .seconds(2))
            continuation.finish()
        }
        defer { timeout.cancel() }
        for await _ in wakes {
            while let frame = subscription.next() {
                if frame.sequence > stale { return frame }
            }
            if hub.status.isFinal { return hub.latest }
        }
        return nil
    }

    /// Writes a frame as a run's screenshot (converted to PNG if so configured), off the cooperative pool.
    func saveScreenshot(_ frame: Frame, id: String, run: RunRecord, step: Int?, name: String) async throws
        -> ArtifactRecord
    {
        let png = config.screenshotFormat == .png
        let filename = "\(name).\(png ? "png" : "jpg")"
        let (relative, size, checksum) = try await offThread { [files] in
            let directory = try files.runDirectory(organizationID: run.organizationID, sessionID: run.sessionID,
                                                   runID: run.id)
            let data = png ? try ImageConversion.png(fromJPEG: frame.jpeg.data) : frame.jpeg.data
            try files.write(data, to: "\(directory)/\(filename)")
            return ("\(directory)/\(filename)", data.count, Digest.sha256(data).hex)
        }
        let now = Date()
        return ArtifactRecord(id: id, kind: .screenshot, runID: run.id, sessionID: run.sessionID,
                              organizationID: run.organizationID, step: step, path: relative,
                              filename: "\(run.id)-\(filename)", fileSize: size, checksum: checksum,
                              contentType: png ? "image/png" : "image/jpeg", createdAt: now, modifiedAt: now)
    }

}

