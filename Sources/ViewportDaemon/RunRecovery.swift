import Digests
import Foundation
public import Logging
import ObjectStore
import Recorder
import Store

/// What the bucket keeps of a run from its start, so that the run can be rebuilt without its host:
/// `{prefix}/runs/{run_id}.json`.
struct RunManifest: Codable, Sendable {
    var runID: String
    var organizationID: String
    var browserSessionID: String
    /// Where the live parts of the session's recording go (nil when recording is off).
    var segmentPrefix: String?
    /// Wall-clock µs where the run's recording starts.
    var startMicros: UInt64
    var title: String?
    var webhookURL: String?
    var createdAt: Date

    enum CodingKeys: String, CodingKey {
        case runID = "run_id", organizationID = "organization_id", browserSessionID = "browser_session_id"
        case segmentPrefix = "segment_prefix", startMicros = "start_us", title, webhookURL = "webhook_url"
        case createdAt = "created_at"
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
    func manifestKey(runID: String) -> String {
        [config.prefix, "runs", "\(runID).json"].filter { !$0.isEmpty }.joined(separator: "/")
    }

    /// The outbox entry of a run's manifest, queued when the run starts.
    func manifestUpload(_ run: RunRecord, organizationID: String) -> UploadRecord? {
        let manifest = RunManifest(
            runID: run.id, organizationID: organizationID, browserSessionID: run.sessionID,
            segmentPrefix: run.segmentID.map { segmentPrefix(organizationID: organizationID, sessionID: run.sessionID,
                                                             segmentID: $0) },
            startMicros: run.startMicros, title: run.title, webhookURL: run.webhookURL, createdAt: run.createdAt)
        guard let body = try? manifest.encoded() else { return nil }
        return UploadRecord(key: manifestKey(runID: run.id), path: nil, body: body, artifactID: nil,
                            contentType: "application/json")
    }
}

/// Why a run cannot be recovered from the bucket.
struct RecoveryError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Rebuilds a run whose host is gone from the bucket alone (`viewportd recover-run`, and a node that finds a host
/// lost): its manifest says where the session's recording went; the recording's init part and its numbered parts,
/// concatenated up to the first missing one, are a fragmented MP4 the run is cut from, up to the last part's time.
/// The MP4 is uploaded under the run's key, the run stored here as `terminated` with it and with the screenshots
/// the bucket holds, and its webhook queued (sent by the daemon using this state directory).
struct RunRecovery: Sendable {
    let bucket: Bucket
    let store: Store
    let files: ArtifactFiles
    let logger: Logger

    static let failureReason = "the run's host was lost; the recording ends at its last part in object storage"

    /// The run as stored after recovery (unchanged when it was complete already).
    func recover(runID: String) async throws -> RunRecord {
        if let run = try await store.run(id: runID), !run.isOpen { return run }
        let manifestKey = bucket.manifestKey(runID: runID)
        let manifestData: Data
        do { manifestData = try await offThread { [bucket] in try bucket.client.getObject(key: manifestKey) } } catch {
            throw RecoveryError("no manifest of run \(runID) in the bucket (\(manifestKey)): \(error)")
        }
        let manifest: RunManifest
        do { manifest = try RunManifest.decode(manifestData) } catch {
            throw RecoveryError("the manifest \(manifestKey) is not valid: \(error)")
        }
        guard manifest.runID == runID else { throw RecoveryError("the manifest \(manifestKey) is of another run") }
        var run = try await store.run(id: runID) ?? RunRecord(
            id: runID, sessionID: manifest.browserSessionID, organizationID: manifest.organizationID,
            status: "running", title: manifest.title, webhookURL: manifest.webhookURL, createdAt: manifest.createdAt,
            startMicros: manifest.startMicros, segmentID: nil)
        var artifacts = try await storedScreenshots(of: run)
        var end = manifest.startMicros
        if let prefix = manifest.segmentPrefix {
            let (recording, summary, last) = try await rebuildRecording(of: run, from: prefix)
            if let recording { artifacts.append(recording) }
            run.framesRecorded = summary?.frames ?? 0
            end = max(end, last ?? end)
            if recording == nil { run.recordingError = "no part of the recording reached the bucket" }
        }
        run.status = "terminated"
        run.failureReason = Self.failureReason
        run.stepCount = max(run.stepCount, artifacts.count { $0.step != nil })
        run.finishedAt = Date(timeIntervalSince1970: Double(end) / 1_000_000)
        try await store.storeRecovered(run, artifacts: artifacts)
        if let url = run.webhookURL {
            let links = Runs.links(artifacts, url: { bucket.url(key: $0.objectKey ?? "") })
            let payload = WebhookPayload(runID: run.id, browserSessionID: run.sessionID, status: run.status,
                                         failureReason: run.failureReason, recordingURL: links.recording,
                                         screenshotUrls: links.screenshots, stepCount: run.stepCount,
                                         createdAt: run.createdAt, finishedAt: run.finishedAt)
            _ = try await store.insertWebhookDelivery(WebhookDelivery(
                runID: run.id, organizationID: run.organizationID, url: url, body: try Webhooks.body(payload)))
        }
        logger.notice("run recovered from the bucket", metadata: [
            "run_id": "\(runID)", "frames": "\(run.framesRecorded)", "artifacts": "\(artifacts.count)",
        ])
        return run
    }

    /// The screenshots of the run that reached the bucket, as artifacts stored there.
    private func storedScreenshots(of run: RunRecord) async throws -> [ArtifactRecord] {
        let directory = "\(run.organizationID)/\(run.sessionID)/\(run.id)"
        guard let prefix = store.objectKey(path: directory) else { return [] }
        let objects = try await offThread { [bucket] in try bucket.client.listObjects(prefix: prefix + "/") }
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

/// `viewportd recover-run RUN_ID`: rebuilds a run whose host is gone from the bucket of `config` (see
/// ``RunRecovery``) into this host's state directory and returns the run as the API shows it (JSON).
public func recoverRun(_ runID: String, config: Config, logger: Logger) async throws -> String {
    guard let bucket = Bucket(config: config) else {
        throw RecoveryError("recover-run needs artifacts.store: s3 (the run's parts are in the bucket)")
    }
    try FileManager.default.createDirectory(atPath: config.stateDir, withIntermediateDirectories: true)
    let store = try Store(path: config.stateDir + "/viewportd.sqlite", objectPrefix: config.s3.prefix)
    let files = try ArtifactFiles(stateDir: config.stateDir)
    let run = try await RunRecovery(bucket: bucket, store: store, files: files, logger: logger).recover(runID: runID)
    let artifacts = try await store.artifacts(runID: runID)
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
