import Digests
import Foundation
import Logging
import Recorder
import Store
import ViewportCore

extension Config {
    /// The settings of each session's encoder (its recording's and its H.264 viewers').
    var encoderSettings: EncoderSettings {
        var settings = EncoderSettings()
        settings.preset = recording.preset.rawValue
        settings.crf = recording.crf
        settings.threads = recording.threads
        settings.queueFrames = recording.queueFrames
        settings.queueBytes = recording.queueMB << 20
        return settings
    }
}

/// A session's recording in progress: written from the session's one encoder, whatever its runs, and the runs cut
/// from it.
struct SessionRecording: Sendable {
    let record: SegmentRecord
    let organizationID: String
    let recorder: SegmentRecorder
    /// Sends the file to the bucket as it grows (with `artifacts.store: s3`); cancelled when the recording retires.
    let shipping: Task<Void, Never>?
    /// Ids of the runs that are cut from it once they complete.
    var runs: Set<String> = []

    /// Starts encoding the session's frames into a new segment file from `origin` (wall-clock µs); the segment's
    /// record is not stored yet.
    init(sessionID: String, organizationID: String, encoder: SessionEncoder, origin: UInt64, files: ArtifactFiles,
         bucket: Bucket?, store: any Store) throws
    {
        let id = "seg_\(Digest.randomBytes(8).hex)"
        try FileManager.default.createDirectory(at: files.url("\(organizationID)/\(sessionID)"),
                                                withIntermediateDirectories: true)
        record = SegmentRecord(id: id, sessionID: sessionID, path: "\(organizationID)/\(sessionID)/\(id).fmp4",
                               originMicros: origin)
        self.organizationID = organizationID
        recorder = try SegmentRecorder(encoder: encoder, path: files.url(record.path).path, origin: origin)
        shipping = bucket.map { [record] bucket in
            Task { await Self.ship(record, organizationID: organizationID, to: bucket, store: store, files: files) }
        }
    }

    /// Queues the recording's new complete fragments for the bucket every `s3.segment_seconds` (less the second a
    /// fragment takes to be cut, so that a lost host loses at most that much): first its header as
    /// `{segment prefix}/init.mp4`, then parts `{segment prefix}/{sequence:06}-{µs}.m4s`, where µs is the
    /// wall-clock time of the scan that found it: the recording reaches at least to there, up to about a second
    /// less. Concatenated in key order they are a fragmented MP4 that ``RunRecovery`` cuts runs from. After the
    /// last part, the run's own MP4 is published at completion (and uploaded before a graceful stop ends).
    private static func ship(_ segment: SegmentRecord, organizationID: String, to bucket: Bucket, store: any Store,
                             files: ArtifactFiles) async
    {
        let prefix = bucket.segmentPrefix(organizationID: organizationID, sessionID: segment.sessionID,
                                          segmentID: segment.id)
        let path = files.url(segment.path).path
        let period = max(1, Double(bucket.config.segmentSeconds) - 1.5)
        var shipped: Int64 = 0
        var sequence = 0
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(period))
            let scanned = wallClockMicros()
            let from = shipped
            guard var boxes = try? await offThread({ try MP4Cut.topLevelBoxes(of: path, from: from) }) else { continue }
            var parts: [UploadRecord] = []
            var start = shipped
            if start == 0 {
                // The header (ftyp, moov) is complete once the first fragment follows it.
                guard let first = boxes.firstIndex(where: { $0.type == "moof" }) else { continue }
                start = boxes[first].range.lowerBound
                parts.append(UploadRecord(key: "\(prefix)/init.mp4", path: segment.path, range: 0..<start,
                                          segmentID: segment.id, contentType: "video/mp4"))
                boxes.removeFirst(first)
            }
            // A fragment is a moof and its mdat: ship up to the end of the last complete one.
            guard let last = boxes.lastIndex(where: { $0.type == "mdat" }) else { continue }
            let end = boxes[last].range.upperBound
            parts.append(UploadRecord(key: "\(prefix)/\(String(format: "%06d", sequence + 1))-\(scanned).m4s",
                                      path: segment.path, range: start..<end, segmentID: segment.id,
                                      contentType: "video/iso.segment"))
            // Only once queued: a part that could not be queued is tried again whole, never skipped.
            guard (try? await store.enqueue(parts)) != nil else { continue }
            (shipped, sequence) = (end, sequence + 1)
            bucket.queued.signal()
        }
    }
}

/// The recording of each session that has one, and the recordings that failed (a full disk, an encoder error)
/// while runs still held them: those runs are still cut from what they hold, while the session's next run gets a
/// fresh recording. A recording no run holds any more is handed back to be retired.
struct SessionRecordings {
    /// By session id.
    private var active: [String: SessionRecording] = [:]
    /// By segment id.
    private var failed: [String: SessionRecording] = [:]

    /// The session's recording a new run can join, if any. A failed one is set aside first, and returned as
    /// `retired` when no run holds it.
    mutating func usable(sessionID: String) -> (recording: SessionRecording?, retired: SessionRecording?) {
        guard let recording = active[sessionID] else { return (nil, nil) }
        guard recording.recorder.failure != nil else { return (recording, nil) }
        active[sessionID] = nil
        if recording.runs.isEmpty { return (nil, recording) }
        failed[recording.record.id] = recording
        return (nil, nil)
    }

    /// How many sessions of `organizationID` are recording.
    func count(organizationID: String) -> Int { active.values.count { $0.organizationID == organizationID } }

    /// Adds a run to a session's recording, which becomes the session's if it was new.
    mutating func add(_ runID: String, to recording: SessionRecording) {
        var recording = active[recording.record.sessionID].flatMap { $0.record.id == recording.record.id ? $0 : nil }
            ?? recording
        recording.runs.insert(runID)
        active[recording.record.sessionID] = recording
    }

    /// The recording a run is cut from: its session's, or a failed one it still holds.
    func recording(of run: RunRecord) -> SessionRecording? {
        guard let id = run.segmentID else { return nil }
        if let recording = active[run.sessionID], recording.record.id == id { return recording }
        return failed[id]
    }

    /// Detaches a run from its recording, as the recording is now (other runs of it may have completed meanwhile);
    /// returns the recording when that was the last run out, to be retired.
    mutating func release(_ runID: String, from run: RunRecord) -> SessionRecording? {
        guard var recording = recording(of: run) else { return nil }
        recording.runs.remove(runID)
        let sessionID = recording.record.sessionID
        let isActive = active[sessionID]?.record.id == recording.record.id
        if recording.runs.isEmpty {
            if isActive { active[sessionID] = nil } else { failed[recording.record.id] = nil }
            return recording
        }
        if isActive { active[sessionID] = recording } else { failed[recording.record.id] = recording }
        return nil
    }
}
