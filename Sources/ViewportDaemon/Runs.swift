import Foundation
import Logging
import Recorder
import Store
import Synchronization
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
/// artifacts and the completion webhook.
///
/// An actor: what a call decides between two `await`s happens atomically, so each call decides in memory first
/// (which recording a run joins, a step's index) and then writes to the store and the disk, undoing its decision
/// when that fails. Runs are open only in the process that started them; a run found open at start-up was cut
/// short by a crash and is terminated with what its recording holds.
actor Runs {
    /// A session's recording in progress and the runs it serves.
    private struct Segment {
        let record: SegmentRecord
        let organizationID: String
        let recorder: SegmentRecorder
        var runs: Set<String>
    }

    /// An open run and what it has collected.
    private struct OpenRun {
        var record: RunRecord
        let hub: FrameHub
        var steps: [StepRecord] = []
        var droppedAtStart: UInt64 = 0
        var completing = false
    }

    /// Final statuses `complete` accepts.
    static let finalStatuses = ["completed", "failed", "terminated", "timed_out", "canceled"]

    private let store: Store
    private let sessions: Sessions
    private let files: ArtifactFiles
    private let auth: Auth
    private let webhooks: Webhooks
    private let config: Config
    private let logger: Logger
    /// The recording of each session, by session id.
    private var segments: [String: Segment] = [:]
    /// Recordings that failed (a full disk, an encoder error) while runs were open, by segment id: those runs are
    /// still cut from what they hold, while the session's next run gets a fresh recording.
    private var failed: [String: Segment] = [:]
    private var open: [String: OpenRun] = [:]
    /// Ids of runs being started (stored next), so that a second start of the same id is refused.
    private var starting: Set<String> = []
    /// Recordings no run holds any more, retired in order by ``retireSegments()``.
    private let retirements: AsyncStream<Segment>
    private let retiring: AsyncStream<Segment>.Continuation

    init(store: Store, sessions: Sessions, files: ArtifactFiles, auth: Auth, webhooks: Webhooks, config: Config,
         logger: Logger)
    {
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
        guard let hub = sessions.hub(id: sessionID) else {
            throw .session(.notOpen(id: sessionID, status: session.status))
        }
        let id = runID ?? "wr_\(Digest.randomBytes(12).hex)"
        let stored = (try? await store.run(id: id)) ?? nil
        guard open[id] == nil, !starting.contains(id), stored == nil else { throw .alreadyExists(id: id) }
        let now = Date()
        let start = wallClockMicros()
        if let broken = segments[sessionID], broken.recorder.failure != nil {
            segments[sessionID] = nil
            if broken.runs.isEmpty { retiring.yield(broken) } else { failed[broken.record.id] = broken }
        }
        let existing = segments[sessionID]
        var segment = existing
        if segment == nil, config.recording.enabled {
            let limit = config.limits.recordingsPerOrganization
            guard segments.values.count(where: { $0.organizationID == organizationID }) < limit else {
                throw .tooManyRecordings(organizationID: organizationID, limit: limit)
            }
            segment = try startSegment(sessionID: sessionID, organizationID: organizationID, hub: hub, origin: start)
        }
        segment?.recorder.keyframe(at: start)
        let record = RunRecord(id: id, sessionID: sessionID, organizationID: organizationID, status: "running",
                               title: title, webhookURL: webhookURL, createdAt: now, startMicros: start,
                               segmentID: segment?.record.id)
        if var segment {
            segment.runs.insert(id)
            segments[sessionID] = segment
        }
        starting.insert(id)
        defer { starting.remove(id) }
        do {
            if existing == nil, let segment { try await store.insert(segment.record) }
            try await store.insert(record)
        } catch {
            release(id, from: record)
            if case Store.Failure.duplicateRun = error { throw .alreadyExists(id: id) }
            throw .storageFailed(what: "store the run", error: "\(error)")
        }
        open[id] = OpenRun(record: record, hub: hub, droppedAtStart: segment?.recorder.stats.framesDropped ?? 0)
        logger.info("run started", metadata: ["run_id": "\(id)", "browser_session_id": "\(sessionID)"])
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
        let artifactID = Self.newArtifactID()
        let step = StepRecord(runID: runID, index: index, label: label, createdAt: Date(), timeMicros: time,
                              artifactID: artifactID)
        current.steps.append(step)
        current.record.stepCount = current.steps.count
        open[runID] = current
        do {
            let artifact = try await saveScreenshot(frame, id: artifactID, run: current.record, step: index,
                                                    name: String(format: "step-%03d", index))
            try await store.insert(step, artifact: artifact)
            return (step, artifact)
        } catch {
            open[runID]?.steps.removeAll { $0.index == index }
            open[runID]?.record.stepCount = open[runID]?.steps.count ?? 0
            throw .storageFailed(what: "save the step", error: "\(error)")
        }
    }

    /// Completes a run: final screenshot, the recording cut and published, the webhook queued. Completing a
    /// completed run returns it unchanged.
    func complete(runID: String, organizationID: String, status: String, failureReason: String?) async throws(RunError)
        -> RunRecord
    {
        guard var run = open[runID] else {
            let record = try await stored(runID, organizationID: organizationID)
            guard record.isOpen else { return record }
            throw .startedByEarlierProcess(id: runID)
        }
        guard run.record.organizationID == organizationID else { throw .notFound(id: runID) }
        guard !run.completing else { throw .beingCompleted(id: runID) }
        run.completing = true
        open[runID] = run
        return await finalize(run, status: status, failureReason: failureReason)
    }

    /// The run if it exists and belongs to `organizationID`.
    func run(id: String, organizationID: String) async throws(RunError) -> RunRecord {
        if let run = open[id], run.record.organizationID == organizationID { return run.record }
        return try await stored(id, organizationID: organizationID)
    }

    /// Completes every open run of a session that ended, as `terminated`.
    func sessionEnded(_ sessionID: String) async {
        let ids = open.values.filter { $0.record.sessionID == sessionID && !$0.completing }.map(\.record.id)
        await terminate(ids, reason: "the browser session ended")
    }

    /// Completes every open run as `terminated`, publishing what was recorded (graceful shutdown).
    func terminateAll(reason: String) async {
        await terminate(open.values.filter { !$0.completing }.map(\.record.id), reason: reason)
    }

    private func terminate(_ ids: [String], reason: String) async {
        await withTaskGroup(of: Void.self) { group in
            for id in ids {
                guard var run = open[id], !run.completing else { continue }
                run.completing = true
                open[id] = run
                group.addTask { _ = await self.finalize(run, status: "terminated", failureReason: reason) }
            }
        }
    }

    // MARK: - Completion

    private func finalize(_ run: OpenRun, status: String, failureReason: String?) async -> RunRecord {
        var record = run.record
        let end = wallClockMicros()
        let id = record.id
        if let frame = await Self.currentFrame(run.hub) {
            do {
                try await store.insert(try await saveScreenshot(frame, id: Self.newArtifactID(), run: record, step: nil,
                                                                name: "final"))
            } catch {
                logger.error("cannot save the final screenshot", metadata: ["run_id": "\(id)", "error": "\(error)"])
            }
        }
        if let segment = segment(of: record), segment.runs.contains(id) {
            // A recorder that failed still left its fragments: the run gets them, and says why it ends early.
            var recordingError: String?
            do { try await Self.sync(segment.recorder, until: end, logger: logger) } catch {
                recordingError = "\(error)"
            }
            do {
                let stats = segment.recorder.stats
                let steps = open[id]?.steps ?? run.steps
                let summary = try await publishRecording(record, steps: steps, segment: segment.record, end: end)
                record.framesRecorded = summary.frames
                record.framesDropped = Int(clamping: Int64(stats.framesDropped) - Int64(run.droppedAtStart))
            } catch {
                logger.error("cannot publish the recording", metadata: ["run_id": "\(id)", "error": "\(error)"])
                recordingError = recordingError ?? "cannot publish the recording: \(error)"
            }
            record.recordingError = recordingError
            release(id, from: record)
        }
        record.status = status
        // Finished when completion was asked for, which is also where the recording ends.
        record.finishedAt = Date(timeIntervalSince1970: Double(end) / 1_000_000)
        record.failureReason = failureReason
        record.stepCount = open[id]?.steps.count ?? run.steps.count
        do { try await store.update(record) } catch {
            logger.error("cannot store the run", metadata: ["run_id": "\(id)", "error": "\(error)"])
        }
        open[id] = nil
        logger.info("run completed", metadata: ["run_id": "\(id)", "status": "\(status)", "steps": "\(record.stepCount)",
                                                 "frames": "\(record.framesRecorded)", "dropped": "\(record.framesDropped)"])
        await notify(record)
        return record
    }

    /// Cuts the run out of its session's segment into a faststart MP4 with a chapter per step, and publishes it.
    private func publishRecording(_ run: RunRecord, steps: [StepRecord], segment: SegmentRecord, end: UInt64?)
        async throws -> MP4Cut.Summary
    {
        let directory = try files.runDirectory(organizationID: run.organizationID, sessionID: run.sessionID,
                                               runID: run.id)
        let relative = "\(directory)/recording.mp4"
        let temporary = files.temporaryPath(for: relative)
        let chapters = steps.map { MP4Cut.Chapter(time: $0.timeMicros, title: "Step \($0.index): \($0.label)") }
        let source = files.url(segment.path).path
        let (summary, size, checksum) = try await offThread { [files] in
            let summary = try MP4Cut.cut(fragmented: source, output: temporary, from: run.startMicros, to: end,
                                         chapters: chapters)
            try files.publish(temporary, as: relative)
            let (size, checksum) = try files.measure(relative)
            return (summary, size, checksum)
        }
        let now = Date()
        try await store.insert(ArtifactRecord(id: Self.newArtifactID(), kind: .recording, runID: run.id,
                                        sessionID: run.sessionID, organizationID: run.organizationID, step: nil,
                                        path: relative, filename: "\(run.id).mp4", fileSize: size, checksum: checksum,
                                        contentType: "video/mp4", createdAt: now, modifiedAt: now))
        return summary
    }

    private func notify(_ run: RunRecord) async {
        guard let url = run.webhookURL else { return }
        do {
            try await webhooks.enqueue(runID: run.id, organizationID: run.organizationID, url: url,
                                       payload: webhookPayload(run))
        } catch {
            logger.error("cannot queue the webhook", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
        }
    }

    /// The body of the run's webhook.
    nonisolated func webhookPayload(_ run: RunRecord) async -> WebhookPayload {
        let links = await links(run)
        return WebhookPayload(runID: run.id, browserSessionID: run.sessionID, status: run.status,
                              failureReason: run.failureReason, recordingURL: links.recording,
                              screenshotUrls: links.screenshots, stepCount: run.stepCount, createdAt: run.createdAt,
                              finishedAt: run.finishedAt)
    }

    /// Signed links to a run's recording and screenshots (newest first), valid for `artifacts.url_ttl_seconds`.
    nonisolated func links(_ run: RunRecord) async -> (recording: String?, screenshots: [String]) {
        links((try? await store.artifacts(runID: run.id)) ?? [])
    }

    /// The same, from a run's artifacts already read (oldest first).
    nonisolated func links(_ artifacts: [ArtifactRecord]) -> (recording: String?, screenshots: [String]) {
        let recording = artifacts.last { $0.kind == .recording }.map(artifactURL)
        return (recording, artifacts.filter { $0.kind == .screenshot }.reversed().map(artifactURL))
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

    func replay(runID: String) async -> Replay? {
        let run: RunRecord? = if let open = open[runID]?.record { open } else { (try? await store.run(id: runID)) ?? nil }
        guard let run else { return nil }
        return Replay(run: run, artifacts: (try? await store.artifacts(runID: runID)) ?? [],
                      steps: (try? await store.steps(runID: runID)) ?? [])
    }

    /// An artifact by id, whoever owns it (the caller checks).
    func artifact(id: String) async -> ArtifactRecord? { (try? await store.artifact(id: id)) ?? nil }

    /// The published files (recordings) of each session, oldest first.
    func sessionFiles(sessionIDs: [String]) async -> [String: [ArtifactRecord]] {
        (try? await store.recordings(sessionIDs: sessionIDs)) ?? [:]
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
        return (try? await store.artifacts(runID: runID)) ?? []
    }

    /// A signed URL of an artifact's content.
    nonisolated func artifactURL(_ artifact: ArtifactRecord) -> String {
        let (expires, signature) = auth.artifactSignature(
            artifactID: artifact.id, expiresAt: Date().addingTimeInterval(Double(config.artifacts.urlTTLSeconds)))
        return "\(config.effectivePublicURL)/v1/artifacts/\(artifact.id)/content?expires=\(expires)&signature=\(signature)"
    }

    // MARK: - Segments

    /// A new recording of the session; its record is not stored yet.
    private func startSegment(sessionID: String, organizationID: String, hub: FrameHub, origin: UInt64)
        throws(RunError) -> Segment
    {
        let id = "seg_\(Digest.randomBytes(8).hex)"
        do {
            try FileManager.default.createDirectory(at: files.url("\(organizationID)/\(sessionID)"),
                                                    withIntermediateDirectories: true)
            let record = SegmentRecord(id: id, sessionID: sessionID, path: "\(organizationID)/\(sessionID)/\(id).fmp4",
                                       originMicros: origin)
            var settings = EncoderSettings()
            settings.preset = config.recording.preset.rawValue
            settings.crf = config.recording.crf
            settings.threads = config.recording.threads
            settings.queueFrames = config.recording.queueFrames
            settings.queueBytes = config.recording.queueMB << 20
            let recorder = try SegmentRecorder(hub: hub, path: files.url(record.path).path, origin: origin,
                                               settings: settings, logger: logger.with(sessionID: sessionID))
            return Segment(record: record, organizationID: organizationID, recorder: recorder, runs: [])
        } catch {
            logger.error("cannot start recording", metadata: ["browser_session_id": "\(sessionID)", "error": "\(error)"])
            throw .storageFailed(what: "start the recording", error: "\(error)")
        }
    }

    /// The recording a run is cut from: its session's, or a failed one it still holds.
    private func segment(of run: RunRecord) -> Segment? {
        guard let id = run.segmentID else { return nil }
        if let segment = segments[run.sessionID], segment.record.id == id { return segment }
        return failed[id]
    }

    /// Detaches a completed run from its segment, as the segment is now (other runs of it may have completed while
    /// this one waited); the last one out stops the encoder and deletes the segment.
    private func release(_ runID: String, from run: RunRecord) {
        guard var segment = segment(of: run) else { return }
        segment.runs.remove(runID)
        let sessionID = segment.record.sessionID
        let active = segments[sessionID]?.record.id == segment.record.id
        if segment.runs.isEmpty {
            if active { segments[sessionID] = nil } else { failed[segment.record.id] = nil }
            retiring.yield(segment)
        } else if active {
            segments[sessionID] = segment
        } else {
            failed[segment.record.id] = segment
        }
    }

    /// Stops the encoder of each recording no run holds any more and deletes its file, until ``stopRetiring()``
    /// and the last one queued before it (the session service runs this, so shutdown waits for it).
    func retireSegments() async {
        for await segment in retirements { await retire(segment) }
    }

    /// Ends ``retireSegments()`` once the recordings queued so far are retired; later ones are left to the next
    /// start's recovery.
    nonisolated func stopRetiring() { retiring.finish() }

    private func retire(_ segment: Segment) async {
        await segment.recorder.finish()
        try? await store.markFinished(segmentID: segment.record.id)
        await offThread { [files] in files.remove(segment.record.path) }
    }

    // MARK: - Recovery

    /// Terminates the runs a crash left open: each gets its recording up to the writer's last sign of life.
    func recover() async {
        let runs: [RunRecord]
        do { runs = try await store.openRuns() } catch {
            logger.error("cannot read open runs", metadata: ["error": "\(error)"])
            return
        }
        for var run in runs {
            let steps = (try? await store.steps(runID: run.id)) ?? []
            if let segmentID = run.segmentID, let segment = try? await store.segment(id: segmentID) {
                do {
                    let summary = try await publishRecording(run, steps: steps, segment: segment, end: nil)
                    run.framesRecorded = summary.frames
                } catch {
                    logger.error("cannot recover the recording", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
                }
            }
            run.status = "terminated"
            run.failureReason = "viewportd stopped while the run was open; the recording ends where it stopped"
            run.finishedAt = Date()
            run.stepCount = steps.count
            do { try await store.update(run) } catch {
                logger.error("cannot store the run", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
            }
            logger.warning("run terminated after a restart", metadata: ["run_id": "\(run.id)"])
            await notify(run)
        }
        for segment in (try? await store.unfinishedSegments()) ?? [] {
            try? await store.markFinished(segmentID: segment.id)
            await offThread { [files] in files.remove(segment.path) }
        }
    }

    // MARK: - Helpers

    private func openRun(_ id: String, organizationID: String) async throws(RunError) -> OpenRun {
        guard let run = open[id], run.record.organizationID == organizationID else {
            throw .notOpen(id: id, status: try await stored(id, organizationID: organizationID).status)
        }
        guard !run.completing else { throw .beingCompleted(id: id) }
        return run
    }

    private func stored(_ id: String, organizationID: String) async throws(RunError) -> RunRecord {
        guard let record = (try? await store.run(id: id)) ?? nil, record.organizationID == organizationID else {
            throw .notFound(id: id)
        }
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

    /// Waits for the recorder to have written every frame up to `end`, for at most a minute: an encoder far behind
    /// must not hold the completion forever; the cut then takes what the file holds.
    private static func sync(_ recorder: SegmentRecorder, until end: UInt64, logger: Logger) async throws {
        let caughtUp = try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await recorder.sync(until: end)
                return true
            }
            group.addTask {
                try await Task.sleep(for: .seconds(60))
                return false
            }
            // The loser is cancelled (a sync returns at once when cancelled), so the group ends with the winner.
            defer { group.cancelAll() }
            return try await group.next() ?? false
        }
        if !caughtUp { logger.error("recorder did not catch up within 60 s; publishing what it has written") }
    }

    /// Writes a frame as a run's screenshot (converted to PNG if so configured), off the cooperative pool.
    private func saveScreenshot(_ frame: Frame, id: String, run: RunRecord, step: Int?, name: String) async throws
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

    private static func newArtifactID() -> String { "art_\(Digest.randomBytes(12).hex)" }
}

