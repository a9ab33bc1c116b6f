import Foundation
import Logging
import Recorder
import Store
import ViewportCore

/// Where a run is completed: asked for (``complete(runID:organizationID:status:failureReason:)``), when its session
/// ends, at shutdown, or at the next start after a crash. Completion takes the final screenshot, waits for the
/// session's recording to catch up, cuts the run out of it into a published MP4, stores the final record and queues
/// the webhook.
extension Runs {
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

    /// Completes every open run of a session that ended, as `terminated`.
    func sessionEnded(_ sessionID: String) async {
        let ids = open.values.filter { $0.record.sessionID == sessionID && !$0.completing }.map(\.record.id)
        await terminate(ids, reason: "the browser session ended")
    }

    /// Completes every open run as `terminated`, publishing what was recorded (graceful shutdown).
    func terminateAll(reason: String) async {
        await terminate(open.values.filter { !$0.completing }.map(\.record.id), reason: reason)
    }

    /// Completes these runs as `terminated` (those still open and not being completed), all at once.
    func terminate(_ ids: [String], reason: String) async {
        await withTaskGroup(of: Void.self) { group in
            for id in ids {
                guard var run = open[id], !run.completing else { continue }
                run.completing = true
                open[id] = run
                group.addTask { _ = await self.finalize(run, status: "terminated", failureReason: reason) }
            }
        }
    }

    private func finalize(_ run: OpenRun, status: String, failureReason: String?) async -> RunRecord {
        var record = run.record
        let end = wallClockMicros()
        let id = record.id
        if let frame = await Self.currentFrame(run.hub) {
            do {
                try await store.insert(try await saveScreenshot(frame, id: ArtifactFiles.newID(), run: record, step: nil,
                                                                name: "final"))
            } catch {
                logger.error("cannot save the final screenshot", metadata: ["run_id": "\(id)", "error": "\(error)"])
            }
        }
        if let recording = recordings.recording(of: record), recording.runs.contains(id) {
            // A recorder that failed still left its fragments: the run gets them, and says why it ends early.
            var recordingError: String?
            do { try await Self.sync(recording.recorder, until: end, logger: logger) } catch {
                recordingError = "\(error)"
            }
            do {
                let stats = recording.recorder.stats
                let steps = open[id]?.steps ?? run.steps
                let summary = try await publishRecording(record, steps: steps, segment: recording.record, end: end)
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
        record.webhookAwaitsUploads = bucket != nil && record.webhookURL != nil
        // The manifest says the run completed: recovery then adopts what it published rather than rebuilding it.
        do { try await store.update(record, uploads: bucket?.manifestUpload(record).map { [$0] } ?? []) } catch {
            logger.error("cannot store the run", metadata: ["run_id": "\(id)", "error": "\(error)"])
        }
        open[id] = nil
        tellViewers(record)
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
        try await store.insert(ArtifactRecord(id: ArtifactFiles.newID(), kind: .recording, runID: run.id,
                                        sessionID: run.sessionID, organizationID: run.organizationID, step: nil,
                                        path: relative, filename: "\(run.id).mp4", fileSize: size, checksum: checksum,
                                        contentType: "video/mp4", createdAt: now, modifiedAt: now))
        return summary
    }

    private func notify(_ run: RunRecord) async {
        bucket?.queued.signal()
        guard let url = run.webhookURL else { return }
        guard !run.webhookAwaitsUploads else { return await releaseWebhook(of: run) }
        do {
            try await webhooks.enqueue(runID: run.id, organizationID: run.organizationID, url: url,
                                       payload: webhookPayload(run))
        } catch {
            logger.error("cannot queue the webhook", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
        }
    }

    /// Queues the webhook of a completed run that was held until its artifacts were in the bucket, once the last of
    /// them is (whoever calls first when that happens queues it, once).
    nonisolated func releaseWebhook(of run: RunRecord) async {
        guard run.webhookAwaitsUploads, let url = run.webhookURL else { return }
        do {
            // Without a bucket now (the config changed), nothing will upload what is pending: it goes as it is.
            let released = try await webhooks.release(runID: run.id, organizationID: run.organizationID, url: url,
                                                      ignoringPending: bucket == nil) {
                Self.webhookPayload($0, links: self.links($1))
            }
            if released { logger.debug("webhook released: the run's artifacts are stored", metadata: ["run_id": "\(run.id)"]) }
        } catch {
            logger.error("cannot queue the webhook", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
        }
    }

    /// An artifact's upload is settled (stored, or dropped with its file): its run's webhook may go now.
    nonisolated func uploadSettled(artifactID: String) async {
        guard let runID = (try? await store.artifact(id: artifactID))?.runID,
              let run = try? await store.run(id: runID)
        else { return }
        await releaseWebhook(of: run)
    }

    /// Releases the held webhooks whose runs' uploads all finished before a restart.
    func releaseHeldWebhooks() async {
        for run in (try? await store.runsAwaitingUploads()) ?? [] { await releaseWebhook(of: run) }
    }

    /// The body of the run's webhook.
    nonisolated func webhookPayload(_ run: RunRecord) async -> WebhookPayload {
        Self.webhookPayload(run, links: (try? await links(run)) ?? (nil, []))
    }

    static func webhookPayload(_ run: RunRecord, links: (recording: String?, screenshots: [String])) -> WebhookPayload {
        WebhookPayload(runID: run.id, browserSessionID: run.sessionID, status: run.status,
                       failureReason: run.failureReason, recordingURL: links.recording,
                       screenshotUrls: links.screenshots, stepCount: run.stepCount, createdAt: run.createdAt,
                       finishedAt: run.finishedAt)
    }

    /// Terminates the runs a crash left open (at start, every open run of the sessions this host owns) or, with
    /// `lostSessionIDs`, those of sessions taken over from a lost cluster node. A run whose recording is on this host
    /// gets it up to the writer's last sign of life; one whose recording was on a lost host is rebuilt from the
    /// bucket's parts (``RunRecovery``), or ends without a recording when there is no bucket.
    func recover(lostSessionIDs: [String]? = nil) async {
        var runs: [RunRecord] = []
        do {
            if let lostSessionIDs {
                for id in lostSessionIDs { runs += try await store.openRuns(sessionID: id) }
            } else {
                runs = try await store.openRuns()
            }
        } catch {
            logger.error("cannot read open runs", metadata: ["error": "\(error)"])
            return
        }
        for var run in runs {
            var segment: SegmentRecord?
            if let segmentID = run.segmentID { segment = try? await store.segment(id: segmentID) }
            let recordedHere = segment.map { FileManager.default.fileExists(atPath: files.url($0.path).path) } ?? false
            if lostSessionIDs != nil || (segment != nil && !recordedHere), let bucket {
                do {
                    _ = try await RunRecovery(bucket: bucket, store: store, files: files, logger: logger)
                        .recover(runID: run.id, organizationID: run.organizationID)
                    continue
                } catch {
                    logger.error("cannot rebuild the run's recording from the bucket", metadata: [
                        "run_id": "\(run.id)", "error": "\(error)",
                    ])
                }
            }
            let steps = (try? await store.steps(runID: run.id)) ?? []
            if recordedHere, let segment {
                do {
                    let summary = try await publishRecording(run, steps: steps, segment: segment, end: nil)
                    run.framesRecorded = summary.frames
                } catch {
                    logger.error("cannot recover the recording", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
                }
            }
            run.status = "terminated"
            if lostSessionIDs == nil {
                run.failureReason = "viewportd stopped while the run was open; the recording ends where it stopped"
            } else {
                run.failureReason = "the run's host was lost"
                run.recordingError = bucket == nil
                    ? "its recording was on the lost host (with artifacts.store: s3 it is rebuilt from the bucket)"
                    : "its recording could not be rebuilt from the bucket"
            }
            run.finishedAt = Date()
            run.stepCount = steps.count
            run.webhookAwaitsUploads = bucket != nil && run.webhookURL != nil
            do { try await store.update(run, uploads: bucket?.manifestUpload(run).map { [$0] } ?? []) } catch {
                logger.error("cannot store the run", metadata: ["run_id": "\(run.id)", "error": "\(error)"])
            }
            logger.warning("run terminated after a restart or a lost host", metadata: ["run_id": "\(run.id)"])
            await notify(run)
        }
        webhooks.wake()
        guard lostSessionIDs == nil else { return }
        for segment in (try? await store.unfinishedSegments()) ?? [] {
            try? await store.markFinished(segmentID: segment.id)
            await offThread { [files] in files.remove(segment.path) }
        }
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
}
