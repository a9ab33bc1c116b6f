import Digests
import Foundation
public import Logging
import ObjectStore
import Recorder
import Store
import ViewportCore

/// What the bucket keeps of a run, so that the run can be rebuilt without its host:
/// `{prefix}/runs/{run_id}/{organization_id}.json`, written when it starts and again when it completes.
struct RunManifest: Codable, Sendable {
    var runID: String
    var organizationID: String
    var browserSessionID: String
    /// Where the live parts of the session's recording go.
    var segmentPrefix: String
    /// Wall-clock µs where the run's recording starts.
    var startMicros: UInt64
    var title: String?
    var webhookURL: String?
    var createdAt: Date
    /// Once completed: its final status and when, and what it published is in the bucket (or on its way).
    var status: String
    var finishedAt: Date?
    var failureReason: String?
    var stepCount: Int

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", organizationID = "organization_id", browserSessionID = "browser_session_id"
        case segmentPrefix = "segment_prefix", startMicros = "start_us", title, webhookURL = "webhook_url"
        case createdAt = "created_at", status, finishedAt = "finished_at", failureReason = "failure_reason"
        case stepCount = "step_count"
    }

    func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return try encoder.encode(self)
    }

    static func decode(_ data: Data) throws -> RunManifest {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode(RunManifest.self, from: data)
    }
}

extension Bucket {
    /// The manifests of runs with this id (one per organization that has one) are under this prefix.
    func manifestPrefix(runID: String) -> String {
        [config.prefix, "runs", runID].filter { !$0.isEmpty }.joined(separator: "/")
    }

    func manifestKey(runID: String, organizationID: String) -> String {
        "\(manifestPrefix(runID: runID))/\(organizationID).json"
    }

    /// The outbox entry of a recorded run's manifest as the run is now (nil when the run is not recorded: there
    /// is nothing to rebuild then).
    func manifestUpload(_ run: RunRecord) -> UploadRecord? {
        guard let segmentID = run.segmentID else { return nil }
        let manifest = RunManifest(
            runID: run.id, organizationID: run.organizationID, browserSessionID: run.sessionID,
            segmentPrefix: segmentPrefix(organizationID: run.organizationID, sessionID: run.sessionID,
                                         segmentID: segmentID),
            startMicros: run.startMicros, title: run.title, webhookURL: run.webhookURL, createdAt: run.createdAt,
            status: run.status, finishedAt: run.finishedAt, failureReason: run.failureReason, stepCount: run.stepCount)
        guard let body = try? manifest.encoded() else { return nil }
        return UploadRecord(key: manifestKey(runID: run.id, organizationID: run.organizationID), path: nil, body: body,
                            segmentID: segmentID, contentType: "application/json")
    }
}

/// Why a run cannot be recovered from the bucket.
struct RecoveryError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Rebuilds a run whose host is gone from the bucket alone (`viewportd recover-run`, and a node that finds a host
/// lost). Its manifest says where the session's recording went. A run the manifest says completed is adopted as
/// its host published it (its MP4 and screenshots, no second webhook). Otherwise the recording's init part and its
/// numbered parts, concatenated up to the first missing one, are a fragmented MP4 the run is cut from, up to the
/// last part's time; the MP4 is uploaded under the run's key (unless one is there already: then that one is
/// adopted), the run stored here as `terminated` with it and with the screenshots the bucket holds, and its
/// webhook queued (sent by the daemon using this state directory).
struct RunRecovery: Sendable {
    let bucket: Bucket
    let store: any Store
    let files: ArtifactFiles
    let logger: Logger

    static let failureReason = "the run's host was lost; the recording ends at its last part in object storage"

    /// The run as stored after recovery (unchanged when it was complete already). `organizationID` picks the
    /// run when runs of several organizations have this id.
    func recover(runID: String, organizationID: String? = nil) async throws -> RunRecord {
        guard runID.range(of: #"^[A-Za-z0-9_-]{1,200}$"#, options: .regularExpression) != nil else {
            throw RecoveryError("a run id is 1-200 characters of A-Z a-z 0-9 _ -")
        }
        let stored = try await store.run(id: runID).flatMap { organizationID == nil || $0.organizationID == organizationID ? $0 : nil }
        if let stored, !stored.isOpen { return stored }
        var run: RunRecord
        var session: SessionRecord
        let segmentPrefix: String?
        // The artifacts of the run the store has already (a cluster's, where the run's host stored its steps).
        var known: [ArtifactRecord] = []
        if let stored {
            // The store is the one its host used (a cluster's shared database, or the host's own): it has the run as
            // it was, so the manifest has nothing more to say.
            run = stored
            known = try await store.artifacts(runID: runID)
            segmentPrefix = stored.segmentID.map {
                bucket.segmentPrefix(organizationID: stored.organizationID, sessionID: stored.sessionID, segmentID: $0)
            }
            session = try await store.session(id: stored.sessionID) ?? Self.lostSession(
                id: stored.sessionID, organizationID: stored.organizationID, createdAt: stored.createdAt)
        } else {
            let manifest = try await manifest(runID: runID, organizationID: organizationID)
            session = Self.lostSession(id: manifest.browserSessionID, organizationID: manifest.organizationID,
                                       createdAt: manifest.createdAt)
            run = RunRecord(
                id: runID, sessionID: manifest.browserSessionID, organizationID: manifest.organizationID,
                status: "running", title: manifest.title, webhookURL: manifest.webhookURL, createdAt: manifest.createdAt,
                startMicros: manifest.startMicros, segmentID: nil)
            segmentPrefix = manifest.segmentPrefix
            if manifest.status != "running" {
                // Completed on its host, which published it: adopted as it is, its webhook already its host's.
                (run.status, run.finishedAt, run.failureReason) = (manifest.status, manifest.finishedAt, manifest.failureReason)
                run.stepCount = manifest.stepCount
                let artifacts = try await storedScreenshots(of: run) + (try await storedRecording(of: run).map { [$0] } ?? [])
                try await store.storeRecovered(run, session: session, artifacts: artifacts)
                logger.notice("run adopted from the bucket: its host completed it", metadata: ["run_id": "\(runID)"])
                return run
            }
        }
        // What the bucket holds that the store does not know of yet.
        let knownPaths = Set(known.map(\.path))
        var artifacts = try await storedScreenshots(of: run).filter { !knownPaths.contains($0.path) }
        var end = run.startMicros
        if let published = try await storedRecording(of: run) {
            if !knownPaths.contains(published.path) { artifacts.append(published) }
        } else if let segmentPrefix {
            let (recording, summary, last) = try await rebuildRecording(of: run, from: segmentPrefix)
            if let recording { artifacts.append(recording) }
            run.framesRecorded = summary?.frames ?? 0
            end = max(end, last ?? end)
            if recording == nil { run.recordingError = "no part of the recording reached the bucket" }
        }
        let all = known + artifacts
        run.status = "terminated"
        run.failureReason = Self.failureReason
        run.stepCount = max(run.stepCount, all.count { $0.step != nil })
        run.finishedAt = Date(timeIntervalSince1970: Double(end) / 1_000_000)
        try await store.storeRecovered(run, session: session, artifacts: artifacts)
        if let url = run.webhookURL {
            // Only what is in the bucket has a link that works from anywhere.
            let links = Runs.links(all.filter { $0.objectKey != nil }, url: { bucket.url(key: $0.objectKey ?? "") })
            let payload = Runs.webhookPayload(run, links: links)
            _ = try await store.insertWebhookDelivery(WebhookDelivery(
                runID: run.id, organizationID: run.organizationID, url: url, body: try Webhooks.body(payload)))
        }
        logger.notice("run recovered from the bucket", metadata: [
            "run_id": "\(runID)", "frames": "\(run.framesRecorded)", "artifacts": "\(all.count)",
        ])
        return run
    }

    /// The record of a session whose host was lost, for a store that never saw it: retention expires a session's
    /// artifacts once it is closed.
    private static func lostSession(id: String, organizationID: String, createdAt: Date) -> SessionRecord {
        SessionRecord(id: id, organizationID: organizationID, status: .failed, createdAt: createdAt, modifiedAt: Date(),
                      completedAt: Date(), timeoutMinutes: 0, browserAddress: "", failureReason: "its host was lost")
    }

    private func manifest(runID: String, organizationID: String?) async throws -> RunManifest {
        let prefix = bucket.manifestPrefix(runID: runID)
        let keys = try await offThread { [bucket] in try bucket.client.listObjects(prefix: prefix + "/") }.map(\.key)
            .filter { organizationID == nil || $0 == bucket.manifestKey(runID: runID, organizationID: organizationID ?? "") }
        guard let key = keys.first else { throw RecoveryError("no manifest of run \(runID) in the bucket (\(prefix)/)") }
        guard keys.count == 1 else {
            throw RecoveryError("runs of several organizations have the id \(runID): name one (--organization)")
        }
        let data = try await offThread { [bucket] in try bucket.client.getObject(key: key) }
        let manifest: RunManifest
        do { manifest = try RunManifest.decode(data) } catch {
            throw RecoveryError("the manifest \(key) is not valid: \(error)")
        }
        guard manifest.runID == runID else { throw RecoveryError("the manifest \(key) is of another run") }
        return manifest
    }

    /// The run's MP4 if its host (or an earlier recovery) stored it.
    private func storedRecording(of run: RunRecord) async throws -> ArtifactRecord? {
        let relative = "\(run.organizationID)/\(run.sessionID)/\(run.id)/recording.mp4"
        let key = store.objectKey(path: relative) ?? relative
        guard let object = try await offThread({ [bucket] in try bucket.client.headObject(key: key) }) else { return nil }
        return storedArtifact(kind: .recording, run: run, step: nil, path: relative, filename: "\(run.id).mp4",
                              object: object, contentType: "video/mp4")
    }

    /// The screenshots of the run that reached the bucket, as artifacts stored there.
    private func storedScreenshots(of run: RunRecord) async throws -> [ArtifactRecord] {
        let directory = "\(run.organizationID)/\(run.sessionID)/\(run.id)"
        guard let prefix = store.objectKey(path: directory) else { return [] }
        let objects = try await offThread { [bucket] in
            // Listings carry no metadata: each screenshot's checksum comes from its own HEAD.
            try bucket.client.listObjects(prefix: prefix + "/").compactMap { try bucket.client.headObject(key: $0.key) }
        }
        return objects.compactMap { object -> ArtifactRecord? in
            let name = String(object.key.dropFirst(prefix.count + 1))
            let type = name.hasSuffix(".png") ? "image/png" : name.hasSuffix(".jpg") ? "image/jpeg" : nil
            guard let type, !name.contains("/") else { return nil }
            let step = name.hasPrefix("step-") ? Int(name.dropFirst(5).prefix { $0.isNumber }) : nil
            return storedArtifact(kind: .screenshot, run: run, step: step, path: "\(directory)/\(name)",
                                  filename: "\(run.id)-\(name)", object: object, contentType: type)
        }
    }

    /// Concatenates the recording's parts, cuts the run out of them and uploads the MP4; returns it with the
    /// cut's summary and the wall-clock time the last part reaches (nil artifact: no part was there).
    private func rebuildRecording(of run: RunRecord, from prefix: String) async throws
        -> (ArtifactRecord?, MP4Cut.Summary?, UInt64?)
    {
        let objects = try await offThread { [bucket] in try bucket.client.listObjects(prefix: prefix + "/") }
        guard objects.contains(where: { $0.key == "\(prefix)/init.mp4" }) else { return (nil, nil, nil) }
        // Parts in order, up to the first missing one: a later part may need frames of a missing one.
        var parts: [(key: String, end: UInt64)] = []
        for object in objects {
            let name = object.key.dropFirst(prefix.count + 1)
            guard name.hasSuffix(".m4s"), let dash = name.firstIndex(of: "-"), let sequence = Int(name[..<dash]),
                  let end = UInt64(name[name.index(after: dash)...].dropLast(4))
            else { continue }
            guard sequence == parts.count + 1 else { break }
            parts.append((object.key, end))
        }
        guard let last = parts.last else { return (nil, nil, nil) }
        let directory = try files.runDirectory(organizationID: run.organizationID, sessionID: run.sessionID,
                                               runID: run.id)
        let relative = "\(directory)/recording.mp4"
        let joined = files.temporaryPath(for: relative + ".fmp4")
        let output = files.temporaryPath(for: relative)
        defer {
            unlink(joined)
            unlink(output)
        }
        let keys = ["\(prefix)/init.mp4"] + parts.map(\.key)
        let key = store.objectKey(path: relative) ?? relative
        let (summary, object) = try await offThread { [bucket] in
            guard FileManager.default.createFile(atPath: joined, contents: nil),
                  let handle = FileHandle(forWritingAtPath: joined)
            else { throw RecoveryError("cannot write \(joined)") }
            defer { try? handle.close() }
            for key in keys { try handle.write(contentsOf: try bucket.client.getObject(key: key)) }
            try handle.synchronize()
            let summary = try MP4Cut.cut(fragmented: joined, output: output, from: run.startMicros, to: last.end,
                                         chapters: [])
            let checksum = try Digest.sha256(file: output).hex
            try bucket.client.uploadFile(key: key, path: output, contentType: "video/mp4", metadata: ["sha256": checksum],
                                         partSize: bucket.config.partSizeMB << 20)
            guard let object = try bucket.client.headObject(key: key), object.metadata["sha256"] == checksum else {
                throw RecoveryError("the recovered recording of run \(run.id) was not confirmed stored")
            }
            return (summary, object)
        }
        let artifact = storedArtifact(kind: .recording, run: run, step: nil, path: relative, filename: "\(run.id).mp4",
                                      object: object, contentType: "video/mp4")
        return (artifact, summary, last.end)
    }

    private func storedArtifact(kind: ArtifactRecord.Kind, run: RunRecord, step: Int?, path: String, filename: String,
                                object: S3Object, contentType: String) -> ArtifactRecord
    {
        let now = Date()
        var artifact = ArtifactRecord(id: ArtifactFiles.newID(), kind: kind, runID: run.id, sessionID: run.sessionID,
                                      organizationID: run.organizationID, step: step, path: path, filename: filename,
                                      fileSize: Int(object.size), checksum: object.metadata["sha256"] ?? "",
                                      contentType: contentType, createdAt: now, modifiedAt: now)
        artifact.objectKey = object.key
        artifact.storedAt = now
        return artifact
    }
}

/// `viewportd recover-run RUN_ID [--organization ORG]`: rebuilds a run whose host is gone from the bucket of
/// `config` (see ``RunRecovery``) into this host's state directory and returns the run as the API shows it (JSON).
public func recoverRun(_ runID: String, organizationID: String? = nil, config: Config, logger: Logger) async throws
    -> String
{
    guard let bucket = Bucket(config: config) else {
        throw RecoveryError("recover-run needs artifacts.store: s3 (the run's parts are in the bucket)")
    }
    try FileManager.default.createDirectory(atPath: config.stateDir, withIntermediateDirectories: true)
    let store = try openStore(config, objectPrefix: config.s3.prefix, logger: logger)
    let files = try ArtifactFiles(stateDir: config.stateDir)
    var recovered: (run: RunRecord, artifacts: [ArtifactRecord])?
    try await store.run {
        let run = try await RunRecovery(bucket: bucket, store: store, files: files, logger: logger)
            .recover(runID: runID, organizationID: organizationID)
        recovered = (run, try await store.artifacts(runID: runID))
    }
    guard let (run, artifacts) = recovered else { throw RecoveryError("run \(runID) was not recovered") }
    let links = Runs.links(artifacts) { artifact in
        artifact.objectKey.map { bucket.url(key: $0) } ?? "(on the host that recorded it)"
    }
    let view = RecoveredRunView(runID: run.id, browserSessionID: run.sessionID, status: run.status,
                                failureReason: run.failureReason, recordingURL: links.recording,
                                screenshotUrls: links.screenshots, framesRecorded: run.framesRecorded,
                                finishedAt: run.finishedAt)
    return String(decoding: try APIJSON.encoder(sortedKeys: true).encode(view), as: UTF8.self)
}

/// What `recover-run` prints.
private struct RecoveredRunView: Encodable {
    let runID: String
    let browserSessionID: String
    let status: String
    let failureReason: String?
    let recordingURL: String?
    let screenshotUrls: [String]
    let framesRecorded: Int
    let finishedAt: Date?
}
