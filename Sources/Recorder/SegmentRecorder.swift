import Foundation
import JPEGCodec
public import Logging
public import ViewportCore
import Synchronization

/// Encodes one session's frames into one crash-safe fragmented MP4 (one encode, whatever the runs).
///
/// Frames are decoded and encoded on a thread of its own (not the cooperative pool), woken by the frame hub. Their
/// capture times are their presentation times (no frame is ever duplicated). The file's time 0 is its first frame,
/// at the later of that frame's capture time and `origin`; the file's metadata holds that wall-clock time. Fragments
/// are cut about once a second, and the file's modification time is touched about once a second even when no frame
/// comes, so after a crash ``MP4Cut`` recovers everything up to about a second before it and knows when the writer
/// died.
public final class SegmentRecorder: Sendable {
    private let mailbox: Mailbox
    private let subscription: FrameSubscription

    /// Subscribes to `hub` as a `.recorder` consumer and starts encoding into `path` on a thread of its own.
    /// `origin` (wall-clock µs) is when the recording starts: a frame captured earlier (the hub's latest) is shown
    /// from then. Throws when the file cannot be created.
    public init(hub: FrameHub, path: String, origin: UInt64, settings: EncoderSettings, logger: Logger) throws {
        let writer = try FragmentWriter(path: path)
        let mailbox = Mailbox()
        self.mailbox = mailbox
        subscription = hub.subscribe(kind: .recorder, capacity: settings.queueFrames, maxBytes: settings.queueBytes) {
            mailbox.loop.wake()
        }
        let worker = Worker(mailbox: mailbox, subscription: subscription, writer: writer, path: path, origin: origin,
                            settings: settings, metrics: hub.metrics, logger: logger)
        mailbox.loop.start { worker.run() }
    }

    deinit { mailbox.post { $0.finishing = true } }

    /// Forces a keyframe at `time` (wall-clock µs) showing the latest frame, so a run can be cut from here.
    /// Frames captured before `time` that are still queued are encoded first.
    public func keyframe(at time: UInt64) {
        mailbox.post { s in
            if !s.finishing { s.commands.append(.keyframe(time)) }
        }
    }

    /// Returns once every frame captured before `time` that the recorder has received (and any other frame it has
    /// received by then) is encoded and written to the file in a complete fragment, handed to the kernel and
    /// fsynced. Throws if the recording failed; throws `CancellationError` at once when the task is cancelled (the
    /// recorder still writes what it was asked to).
    public func sync(until time: UInt64) async throws {
        let waiter = SyncWaiter()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                waiter.set(continuation)
                mailbox.post { s in
                    if let failure = s.failure {
                        waiter.resume(with: .failure(failure))
                    } else if s.stopped {
                        waiter.resume(with: .success(()))
                    } else {
                        s.commands.append(.sync(time, waiter))
                    }
                }
            }
        } onCancel: {
            waiter.resume(with: .failure(CancellationError()))
        }
    }

    /// Stops encoding (after the frames already queued), writes the last fragment, closes the file and leaves the
    /// hub. Pending ``sync(until:)`` calls return first. Idempotent: later calls return the same figures.
    @discardableResult public func finish() async -> RecorderStats {
        await withCheckedContinuation { (continuation: CheckedContinuation<RecorderStats, Never>) in
            mailbox.post { s in
                if s.stopped {
                    continuation.resume(returning: s.stats)
                } else {
                    s.finishing = true
                    s.finishWaiters.append(continuation)
                }
            }
        }
    }

    /// Why the recording stopped early (a full disk, an encoder error), once it has; the file keeps every
    /// fragment written before.
    public var failure: RecorderError? { mailbox.state.withLock { $0.failure } }

    /// The counters so far (frames dropped by the hub queue included).
    public var stats: RecorderStats {
        let dropped = subscription.stats.dropped
        return mailbox.state.withLock { s in
            var stats = s.stats
            if !s.stopped { stats.framesDropped = s.framesInvalid + dropped }
            return stats
        }
    }
}

/// What callers hand the encoder thread, and what it reports back.
private final class Mailbox: Sendable {
    enum Command {
        case keyframe(UInt64)
        case sync(UInt64, SyncWaiter)

        var time: UInt64 {
            switch self {
            case .keyframe(let time), .sync(let time, _): time
            }
        }

        var keyframeTime: UInt64? { if case .keyframe(let time) = self { time } else { nil } }
    }

    struct State {
        var commands: [Command] = []
        var finishing = false
        var finishWaiters: [CheckedContinuation<RecorderStats, Never>] = []
        /// The thread has ended (finished or failed); the file is closed.
        var stopped = false
        var failure: RecorderError?
        var stats = RecorderStats()
        var framesInvalid: UInt64 = 0
    }

    let state = Mutex(State())
    /// The encoder thread, which ends by itself once finishing (or failed).
    let loop = LoopThread(name: "recorder")

    /// Changes the state, then wakes the encoder thread.
    func post(_ change: (inout State) -> Void) {
        state.withLock { change(&$0) }
        loop.wake()
    }

    /// The time of the earliest keyframe waiting, if any.
    var earliestKeyframe: UInt64? { state.withLock { $0.commands.compactMap(\.keyframeTime).min() } }

    var hasCommands: Bool { state.withLock { !$0.commands.isEmpty } }
}

/// The encoder thread's state.
///
/// `@unchecked Sendable`: handed to the encoder thread by `SegmentRecorder.init` before the thread starts and used
/// by that thread only; callers reach it solely through the `Mailbox` (a mutex) and the `FrameSubscription`
/// (thread-safe).
private final class Worker: @unchecked Sendable {
    private let mailbox: Mailbox
    private let subscription: FrameSubscription
    private let writer: FragmentWriter
    private let path: String
    private let origin: UInt64
    /// The wall-clock time of the file's time 0: its first frame's.
    private var fileOrigin: UInt64 = 0
    private let settings: EncoderSettings
    private let metrics: StreamMetrics
    private let logger: Logger

    private var decoder: JPEGDecoder?
    private var encoder: H264Encoder?
    private var picture: Picture?
    /// Commands taken from the mailbox and not handled yet.
    private var commands: [Mailbox.Command] = []
    /// A frame taken from the queue but captured after the command being handled.
    private var held: Frame?
    private var lastPTS: Int64 = -1
    private var lastWrite = DispatchTime.now()
    private var droppedLogged: UInt64 = 0
    /// Bytes of the file already added to the metrics.
    private var bytesCounted: UInt64 = 0

    /// How late a first frame may come and still be shown from the recording's start (µs).
    private static let firstFrameGrace: UInt64 = 2_000_000

    /// Fragments are cut, and the file touched, this often.
    private static let interval: UInt64 = 1_000_000_000

    init(mailbox: Mailbox, subscription: FrameSubscription, writer: FragmentWriter, path: String, origin: UInt64,
         settings: EncoderSettings, metrics: StreamMetrics, logger: Logger) {
        self.mailbox = mailbox
        self.metrics = metrics
        self.subscription = subscription
        self.writer = writer
        self.path = path
        self.origin = origin
        self.settings = settings
        self.logger = logger
    }

    func run() {
        var failure: RecorderError?
        do throws(RecorderError) {
            do { decoder = try JPEGDecoder() } catch { throw RecorderError("\(error)") }
            var finishing = false
            while true {
                if !finishing { mailbox.loop.wait(until: nextDeadline()) }
                let taken: [Mailbox.Command]
                (taken, finishing) = mailbox.state.withLock { s in
                    defer { s.commands.removeAll() }
                    return (s.commands, s.finishing)
                }
                // In time order (a stable sort keeps the callers' order for equal times).
                commands = taken.enumerated().sorted { ($0.element.time, $0.offset) < ($1.element.time, $1.offset) }
                    .map(\.element)
                while !commands.isEmpty { try handle(commands.removeFirst()) }
                try encodeQueued(before: nil)
                try housekeeping()
                if finishing && held == nil && !mailbox.hasCommands { break }
            }
            try encoder?.drain(write: writer.write)
            try writer.finish()
        } catch {
            failure = error
            logger.error("recording failed", metadata: ["path": "\(path)", "error": "\(error)"])
            writer.abandon()
        }
        stop(failure)
    }

    private func handle(_ command: Mailbox.Command) throws(RecorderError) {
        switch command {
        case .keyframe(let time):
            try encodeQueued(before: time)
            // Before the first frame there is nothing to show; the first frame will be an IDR anyway.
            try keyframe(at: time)
        case .sync(_, let continuation):
            // Every frame received so far, not only those captured before the sync's time: a run that ended before
            // its first frame came still gets that frame. Up to the next keyframe, which must follow its own frames.
            do throws(RecorderError) {
                try encodeQueued(before: commands.lazy.compactMap(\.keyframeTime).first)
                try writer.cutFragment()
            } catch {
                // Taken off the list already: answered here, or its caller would wait for ever.
                continuation.resume(with: .failure(error))
                throw error
            }
            lastWrite = .now()
            fileSync()
            publishBytes()
            continuation.resume(with: .success(()))
        }
    }

    /// Encodes queued frames, up to the first one captured at or after `time` (nil: all of them) or at or after a
    /// keyframe posted meanwhile.
    private func encodeQueued(before time: UInt64?) throws(RecorderError) {
        while let frame = held ?? subscription.next() {
            held = nil
            // Read after taking the frame: a keyframe(at:) posted before this frame was published is seen here.
            let posted = mailbox.earliestKeyframe
            if let limit = time.map({ min($0, posted ?? .max) }) ?? posted, frame.captureTime >= limit {
                held = frame
                return
            }
            try encode(frame)
            try cutFragmentIfDue()
        }
    }

    /// Encodes one frame; a frame that does not decode is counted and skipped, anything else fails the recording.
    private func encode(_ frame: Frame) throws(RecorderError) {
        // The hub raises a capture time that went backwards to the previous one: such a frame is older than the one
        // already shown and would last zero time (no tick after the last picture's). Leave it out.
        guard let decoder, picture == nil || Self.ticks(frame.captureTime, since: fileOrigin) > lastPTS else { return }
        let jpeg = frame.jpeg.bytes
        // A frame with its own pixels (an RFB source) is recorded from them; a screencast frame from its JPEG.
        var header: JPEGHeader?
        if frame.pixels == nil {
            do { header = try decoder.header(jpeg) } catch { return skip(frame, RecorderError("\(error)")) }
        }
        let (width, height) = header.map { (Int32($0.width), Int32($0.height)) } ?? (Int32(frame.width), Int32(frame.height))
        var time = frame.captureTime
        if picture == nil {
            guard width >= 2, height >= 2 else { return skip(frame, RecorderError("a \(width)x\(height) frame")) }
            // The first frame after the recording asked for frames is the screen as it was when it started (the
            // source sends a fresh screenshot then), so it is shown from the start, unless it is very late.
            if time < origin + Self.firstFrameGrace { time = origin }
            try openEncoder(width: width, height: height, at: max(time, origin))
        }
        guard let encoder, let picture else { return }
        let started = DispatchTime.now().uptimeNanoseconds
        do {
            if let pixels = frame.pixels {
                try picture.load(rgbx: pixels.payload, width: width, height: height)
            } else if let header {
                try picture.load(jpeg, header, decoder: decoder)
            }
        } catch { return skip(frame, error) }
        try encode(picture, with: encoder, at: max(time, fileOrigin), keyframe: false)
        metrics.frameEncoded(nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
    }

    private func skip(_ frame: Frame, _ error: RecorderError) {
        report { $0.framesInvalid += 1 }
        logger.warning("recorder skipped a frame it cannot decode",
                       metadata: ["sequence": "\(frame.sequence)", "error": "\(error)"])
    }

    /// Re-encodes the latest picture as an IDR frame at `time`, unless the latest packet already is one (a run
    /// starting with the session's recording: the first frame).
    private func keyframe(at time: UInt64) throws(RecorderError) {
        guard let encoder, let picture, !writer.lastPacketIsKey else { return }
        try encode(picture, with: encoder, at: time, keyframe: true)
    }

    private func encode(_ picture: Picture, with encoder: H264Encoder, at time: UInt64, keyframe: Bool)
        throws(RecorderError)
    {
        try encoder.encode(picture.frame, pts: presentationTime(time), keyframe: keyframe, write: writer.write)
        report { $0.stats.framesEncoded += 1 }
    }

    /// Opens the encoder and the file's stream for the first frame's size, rounded down to even, with time 0 at
    /// `time`.
    private func openEncoder(width frameWidth: Int32, height frameHeight: Int32, at time: UInt64) throws(RecorderError) {
        let width = frameWidth & ~1, height = frameHeight & ~1
        let picture = try Picture(width: width, height: height)
        let encoder = try H264Encoder(width: width, height: height, settings: settings)
        try writer.start(encoder: encoder.context, origin: time)
        self.encoder = encoder
        self.picture = picture
        fileOrigin = time
        publishBytes()
        report { s in
            s.stats.width = Int(width)
            s.stats.height = Int(height)
        }
    }

    /// 90 kHz ticks since the file's time 0, always after the previous frame's.
    private func presentationTime(_ wallClock: UInt64) -> Int64 {
        lastPTS = max(Self.ticks(wallClock, since: fileOrigin), lastPTS + 1)
        return lastPTS
    }

    private static func ticks(_ wallClock: UInt64, since origin: UInt64) -> Int64 {
        wallClock > origin ? Int64((wallClock - origin) * 9 / 100) : 0
    }

    private func cutFragmentIfDue() throws(RecorderError) {
        guard let since = writer.pendingSince, DispatchTime.now().uptimeNanoseconds >= since.uptimeNanoseconds
            + Self.interval else { return }
        try writer.cutFragment()
        lastWrite = .now()
        publishBytes()
    }

    /// Cuts a fragment that is a second old, touches the file when nothing was written for a second (so its
    /// modification time tells when the writer was last alive), and reports hub drops.
    private func housekeeping() throws(RecorderError) {
        try cutFragmentIfDue()
        let now = DispatchTime.now()
        if now.uptimeNanoseconds >= lastWrite.uptimeNanoseconds + Self.interval {
            utimensat(AT_FDCWD, path, nil, 0)
            lastWrite = now
        }
        let dropped = subscription.stats.dropped
        if dropped > droppedLogged {
            logger.warning("recorder is too slow, frames dropped",
                           metadata: ["dropped": "\(dropped - droppedLogged)", "total": "\(dropped)"])
            droppedLogged = dropped
        }
    }

    private func nextDeadline() -> DispatchTime {
        var deadline = lastWrite.uptimeNanoseconds + Self.interval
        if let since = writer.pendingSince { deadline = min(deadline, since.uptimeNanoseconds + Self.interval) }
        return DispatchTime(uptimeNanoseconds: max(deadline, DispatchTime.now().uptimeNanoseconds + 1_000_000))
    }

    /// fsync through a descriptor of our own: libavformat keeps its own private.
    private func fileSync() {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }

    private func report(_ change: (inout Mailbox.State) -> Void) { mailbox.state.withLock { change(&$0) } }

    private func publishBytes() {
        let bytes = writer.bytesWritten
        report { $0.stats.bytesWritten = bytes }
        if bytes > bytesCounted {
            metrics.recordingWritten(bytes: bytes - bytesCounted)
            bytesCounted = bytes
        }
    }

    /// Ends the thread's work: leaves the hub, fixes the figures and answers every waiting caller.
    private func stop(_ failure: RecorderError?) {
        let dropped = subscription.stats.dropped
        subscription.cancel()
        publishBytes()
        let bytes = writer.bytesWritten
        let (stats, syncs, waiters) = mailbox.state.withLock { s in
            s.stopped = true
            s.failure = failure
            s.stats.bytesWritten = bytes
            s.stats.framesDropped = s.framesInvalid + dropped
            let syncs = (commands + s.commands).compactMap { command -> SyncWaiter? in
                if case .sync(_, let continuation) = command { continuation } else { nil }
            }
            s.commands.removeAll()
            defer { s.finishWaiters.removeAll() }
            return (s.stats, syncs, s.finishWaiters)
        }
        commands.removeAll()
        for sync in syncs { sync.resume(with: failure.map { .failure($0) } ?? .success(())) }
        for waiter in waiters { waiter.resume(returning: stats) }
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
