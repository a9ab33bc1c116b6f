import CFFmpeg
import Foundation
public import Logging
public import ViewportCore
import Synchronization

/// Writes one session's H.264 (its ``SessionEncoder``'s pictures) into one crash-safe fragmented MP4 (one encode,
/// whatever the runs and the viewers).
///
/// Frames' capture times are their presentation times (no frame is ever duplicated, but for the key frames that
/// runs and viewers ask for, which show the picture shown already). The file's time 0 is its first frame, at the
/// later of that frame's capture time and `origin`; the file's metadata holds that wall-clock time. Fragments are
/// cut about once a second, and the file's modification time is touched about once a second even when no frame
/// comes, so after a crash ``MP4Cut`` recovers everything up to about a second before it and knows when the writer
/// died.
public final class SegmentRecorder: Sendable {
    private let encoder: SessionEncoder
    private let sink: RecordingSink

    /// Records `encoder`'s pictures into `path` from `origin` (wall-clock µs); a frame captured earlier (the one
    /// shown) is shown from then. Throws when the file cannot be created.
    public init(encoder: SessionEncoder, path: String, origin: UInt64) throws {
        self.encoder = encoder
        sink = try RecordingSink(path: path, origin: origin, metrics: encoder.mailbox.frames.metrics,
                                 droppedAtStart: encoder.mailbox.framesDropped)
        encoder.mailbox.post(.attach(sink), attaching: true)
    }

    /// Records `hub`'s frames into `path` with an encoder of its own (no viewers).
    public convenience init(hub: FrameHub, path: String, origin: UInt64, settings: EncoderSettings, logger: Logger)
        throws
    {
        try self.init(encoder: SessionEncoder(hub: hub, settings: settings, viewersAlone: false, logger: logger),
                      path: path, origin: origin)
    }

    deinit {
        if !sink.shared.withLock({ $0.stopped }) { encoder.mailbox.post(.finish(sink)) }
    }

    /// Forces a keyframe at `time` (wall-clock µs) showing the latest frame, so a run can be cut from here.
    /// Frames captured before `time` that are still queued are encoded first.
    public func keyframe(at time: UInt64) {
        guard !sink.shared.withLock({ $0.stopped || $0.finishing }) else { return }
        encoder.mailbox.post(.keyframe(time, sink))
    }

    /// Returns once every frame captured before `time` that the encoder has received (and any other frame it has
    /// received by then) is encoded and written to the file in a complete fragment, handed to the kernel and
    /// fsynced. Throws if the recording failed; throws `CancellationError` at once when the task is cancelled (the
    /// recorder still writes what it was asked to).
    public func sync(until time: UInt64) async throws {
        let waiter = SyncWaiter()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                waiter.set(continuation)
                if sink.shared.withLock({ $0.stopped }) {
                    sink.answer(waiter)
                } else {
                    encoder.mailbox.post(.sync(time, sink, waiter))
                }
            }
        } onCancel: {
            waiter.resume(with: .failure(CancellationError()))
        }
    }

    /// Stops recording (after the frames already queued), writes the last fragment and closes the file; the
    /// encoder stops too if nobody else needs it. Pending ``sync(until:)`` calls return first. Idempotent: later
    /// calls return the same figures.
    @discardableResult public func finish() async -> RecorderStats {
        await withCheckedContinuation { (continuation: CheckedContinuation<RecorderStats, Never>) in
            let post = sink.shared.withLock { s in
                if s.stopped {
                    continuation.resume(returning: s.stats)
                    return false
                }
                s.finishWaiters.append(continuation)
                defer { s.finishing = true }
                return !s.finishing
            }
            if post { encoder.mailbox.post(.finish(sink)) }
        }
    }

    /// Why the recording stopped early (a full disk, an encoder error), once it has; the file keeps every
    /// fragment written before.
    public var failure: RecorderError? { sink.shared.withLock { $0.failure } }

    /// The counters so far (frames dropped by the encoder's hub queue included).
    public var stats: RecorderStats {
        let dropped = encoder.mailbox.framesDropped
        return sink.shared.withLock { s in
            var stats = s.stats
            if !s.stopped { stats.framesDropped = s.framesInvalid + dropped - s.droppedAtStart }
            return stats
        }
    }
}

/// One recording's file, written by the encoder thread.
///
/// `@unchecked Sendable`: created by ``SegmentRecorder/init(encoder:path:origin:)`` and handed to the encoder
/// thread, which alone uses everything but `shared` (a mutex) and the constants.
final class RecordingSink: @unchecked Sendable {
    struct Shared {
        var finishing = false
        var finishWaiters: [CheckedContinuation<RecorderStats, Never>] = []
        /// The recording has ended (finished or failed); the file is closed.
        var stopped = false
        var failure: RecorderError?
        var stats = RecorderStats()
        var framesInvalid: UInt64 = 0
        /// The encoder's hub drops when the recording started.
        var droppedAtStart: UInt64
    }

    /// Fragments are cut, and the file touched, this often (ns).
    static let interval: UInt64 = 1_000_000_000

    let path: String
    let origin: UInt64
    let shared: Mutex<Shared>
    private let metrics: StreamMetrics
    private let writer: FragmentWriter
    /// The wall-clock time of the file's time 0: its first frame's.
    private var fileOrigin: UInt64 = 0
    private var lastPTS: Int64 = -1
    private var lastWrite = DispatchTime.now()
    /// Bytes of the file already added to the metrics.
    private var bytesCounted: UInt64 = 0

    init(path: String, origin: UInt64, metrics: StreamMetrics, droppedAtStart: UInt64) throws(RecorderError) {
        self.path = path
        self.origin = origin
        self.metrics = metrics
        shared = Mutex(Shared(droppedAtStart: droppedAtStart))
        writer = try FragmentWriter(path: path)
    }

    var isStarted: Bool { writer.isStarted }
    var lastPacketIsKey: Bool { writer.lastPacketIsKey }

    func report(_ change: (inout Shared) -> Void) { shared.withLock { change(&$0) } }

    /// Adds the encoder's stream, with the file's time 0 at `time`.
    func start(encoder: CodecContext, at time: UInt64) throws(RecorderError) {
        try writer.start(encoder: encoder, origin: time)
        fileOrigin = time
        publishBytes()
        let (width, height) = (Int(encoder.pointer.pointee.width), Int(encoder.pointer.pointee.height))
        report { s in
            s.stats.width = width
            s.stats.height = height
        }
    }

    /// Writes a packet of a picture shown from `time` (wall-clock µs), after the previous one.
    func write(_ packet: UnsafeMutablePointer<AVPacket>, at time: UInt64) throws(RecorderError) {
        lastPTS = max(time > fileOrigin ? Int64((time - fileOrigin) * 9 / 100) : 0, lastPTS + 1)
        packet.pointee.pts = lastPTS
        packet.pointee.dts = lastPTS
        try writer.write(packet)
        report { $0.stats.framesEncoded += 1 }
    }

    func cutFragmentIfDue() throws(RecorderError) {
        guard let since = writer.pendingSince, DispatchTime.now().uptimeNanoseconds >= since.uptimeNanoseconds
            + Self.interval else { return }
        try writer.cutFragment()
        lastWrite = .now()
        publishBytes()
    }

    /// Cuts a fragment that is a second old, and touches the file when nothing was written for a second (so its
    /// modification time tells when the writer was last alive).
    func housekeeping() throws(RecorderError) {
        try cutFragmentIfDue()
        let now = DispatchTime.now()
        if now.uptimeNanoseconds >= lastWrite.uptimeNanoseconds + Self.interval {
            utimensat(AT_FDCWD, path, nil, 0)
            lastWrite = now
        }
    }

    /// When the encoder thread must wake for this file next (uptime ns).
    var deadline: UInt64 {
        var deadline = lastWrite.uptimeNanoseconds + Self.interval
        if let since = writer.pendingSince { deadline = min(deadline, since.uptimeNanoseconds + Self.interval) }
        return deadline
    }

    /// Writes what is pending as a complete fragment, hands it to the kernel and fsyncs the file.
    func sync() throws(RecorderError) {
        try writer.cutFragment()
        lastWrite = .now()
        // fsync through a descriptor of our own: libavformat keeps its own private.
        let fd = open(path, O_RDONLY)
        if fd >= 0 {
            fsync(fd)
            close(fd)
        }
        publishBytes()
    }

    /// Writes the last fragment and the trailer, and closes the file.
    func finish() throws(RecorderError) { try writer.finish() }

    /// Closes the file after a failure, as it is (see ``FragmentWriter/abandon()``).
    func abandon() { writer.abandon() }

    /// Answers a sync: done, or why the recording failed.
    func answer(_ waiter: SyncWaiter) {
        waiter.resume(with: shared.withLock { $0.failure }.map { .failure($0) } ?? .success(()))
    }

    /// Ends the recording: fixes the figures and answers every caller of finish.
    func stop(_ failure: RecorderError?, framesDropped: UInt64) {
        publishBytes()
        let bytes = writer.bytesWritten
        let (stats, waiters) = shared.withLock { s in
            s.stopped = true
            s.failure = failure
            s.stats.bytesWritten = bytes
            s.stats.framesDropped = s.framesInvalid + framesDropped - s.droppedAtStart
            defer { s.finishWaiters.removeAll() }
            return (s.stats, s.finishWaiters)
        }
        for waiter in waiters { waiter.resume(returning: stats) }
    }

    private func publishBytes() {
        let bytes = writer.bytesWritten
        report { $0.stats.bytesWritten = bytes }
        if bytes > bytesCounted {
            metrics.recordingWritten(bytes: bytes - bytesCounted)
            bytesCounted = bytes
        }
    }
}

/// The caller of one ``SegmentRecorder/sync(until:)``: resumed once, by the encoder thread or by cancellation,
/// whichever comes first (cancellation may come before the continuation exists).
final class SyncWaiter: Sendable {
    private enum State {
        case waiting
        case suspended(CheckedContinuation<Void, any Error>)
        case done(Result<Void, any Error>?)
    }

    private let state = Mutex(State.waiting)

    func set(_ continuation: CheckedContinuation<Void, any Error>) {
        let early: Result<Void, any Error>? = state.withLock { state in
            guard case .done(let result) = state else {
                state = .suspended(continuation)
                return nil
            }
            state = .done(nil)
            return result
        }
        if let early { continuation.resume(with: early) }
    }

    func resume(with result: Result<Void, any Error>) {
        let continuation: CheckedContinuation<Void, any Error>? = state.withLock { state in
            switch state {
            case .waiting:
                state = .done(result)
                return nil
            case .suspended(let continuation):
                state = .done(nil)
                return continuation
            case .done:
                return nil
            }
        }
        continuation?.resume(with: result)
    }
}
