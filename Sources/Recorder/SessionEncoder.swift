import CFFmpeg
import Foundation
import JPEGCodec
public import Logging
public import ViewportCore
import Synchronization

/// One H.264 encode of a session's frames, shared by its recording (``SegmentRecorder``) and its H.264 viewers
/// (``packets``).
///
/// Frames are decoded and encoded on a thread of its own (not the cooperative pool), woken by the frame hub. The
/// thread runs while anybody needs it: a recording attached, or a viewer subscribed to ``packets``; it stops when
/// nobody does and starts again (with a fresh encoder, so a key frame first) when somebody comes. Each picture is
/// written to every recording attached and, when viewers are subscribed, converted once to AVC format and published
/// to them. While a recording is attached the encoder keeps its size (a frame of another size is scaled into it, as
/// the recording's track has one size); without one it reopens at a frame's new size.
///
/// Viewers ask for key frames (a new viewer, one whose queue overflowed); the encoder makes one at most once per
/// ``keyframeInterval``, from the next frame, or by encoding the picture shown again when no frame comes within
/// ``repeatAfter`` (a still page sends none). Every key frame costs the recording bytes (see docs/protocol.md).
public final class SessionEncoder: Sendable {
    /// The session's H.264 pictures for viewers.
    public let packets: EncodedHub
    let mailbox: EncoderMailbox

    /// Viewer key frames come at most this often (ns), whatever asks for them.
    static let keyframeInterval: UInt64 = 1_000_000_000
    /// How long a viewer's key frame waits for a new frame before the picture shown is encoded again (ns).
    static let repeatAfter: UInt64 = 50_000_000

    /// An encoder of `hub`'s frames with x264 `settings`, idle until needed. With `viewersAlone`, H.264 viewers are
    /// served (``EncodedHub/servesViewers``) even while no recording is attached.
    public init(hub: FrameHub, packets: EncodedHub = EncodedHub(), settings: EncoderSettings, viewersAlone: Bool,
                logger: Logger) {
        self.packets = packets
        let mailbox = EncoderMailbox(frames: hub, packets: packets, settings: settings, viewersAlone: viewersAlone,
                                     logger: logger)
        self.mailbox = mailbox
        packets.servesViewers = viewersAlone
        // Weak: the mailbox holds the hub; its thread holds the mailbox while it runs.
        packets.onDemandChange { [weak mailbox] in
            mailbox?.ensureRunning()
            mailbox?.wake()
        }
        packets.onKeyframeRequest { [weak mailbox] in
            mailbox?.keyRequests.add(1, ordering: .releasing)
            mailbox?.wake()
        }
    }

    /// True while the encoder's thread runs.
    public var isRunning: Bool { mailbox.state.withLock { $0.loop != nil } }

    /// Where the encoder's threads have spent their CPU so far, by stage.
    public var cpu: EncoderCPU { mailbox.cpu.withLock { $0 } }
}

/// CPU time of an encoder's threads (`CLOCK_THREAD_CPUTIME_ID`, ns), by stage: what the record bench prints.
public struct EncoderCPU: Sendable, Equatable, Codable {
    /// Pictures encoded, repeated key frames included.
    public var pictures: UInt64 = 0
    /// Reading the JPEG headers and decoding them (or converting an RFB frame's pixels) into the encoder's picture.
    public var decode: UInt64 = 0
    /// x264, through libavcodec.
    public var encode: UInt64 = 0
    /// Writing packets into the recordings' fragments, cutting fragments, touching files.
    public var mux: UInt64 = 0
    /// Converting packets to AVC and publishing them to viewers.
    public var publish: UInt64 = 0
    /// All the threads' CPU, the stages and everything else (taking frames and commands, waking up).
    public var total: UInt64 = 0
    public init() {}
}

/// The calling thread's CPU time so far (ns).
public func threadCPU() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
    return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
}

/// What callers hand the encoder thread.
final class EncoderMailbox: Sendable {
    enum Command {
        /// A recording starts at its origin.
        case attach(RecordingSink)
        case keyframe(UInt64, RecordingSink)
        case sync(UInt64, RecordingSink, SyncWaiter)
        /// After the frames queued so far.
        case finish(RecordingSink)

        var time: UInt64 {
            switch self {
            case .attach(let sink): sink.origin
            case .keyframe(let time, _), .sync(let time, _, _): time
            case .finish: .max
            }
        }

        /// Frames captured from this time on wait until the command is handled.
        var keyframeTime: UInt64? {
            switch self {
            case .attach(let sink): sink.origin
            case .keyframe(let time, _): time
            case .sync, .finish: nil
            }
        }
    }

    struct State {
        var commands: [Command] = []
        /// The running thread's loop; nil while none runs.
        var loop: LoopThread?
        /// The running thread's hub queue.
        var subscription: FrameSubscription?
        /// Recordings attached (or about to be) and not stopped.
        var recordings = 0
        /// Frames the hub queues of earlier threads dropped.
        var droppedBefore: UInt64 = 0
    }

    let state = Mutex(State())
    /// The CPU of this encoder's threads, those stopped and the one running (updated after each picture and wake).
    let cpu = Mutex(EncoderCPU())
    /// Key frames asked for by viewers, counted; the thread knows how many it has served.
    let keyRequests = Atomic<UInt64>(0)
    let frames: FrameHub
    let packets: EncodedHub
    let settings: EncoderSettings
    let viewersAlone: Bool
    let logger: Logger

    init(frames: FrameHub, packets: EncodedHub, settings: EncoderSettings, viewersAlone: Bool, logger: Logger) {
        self.frames = frames
        self.packets = packets
        self.settings = settings
        self.viewersAlone = viewersAlone
        self.logger = logger
    }

    /// Queues a command, then wakes the thread or starts one.
    func post(_ command: Command, attaching: Bool = false) {
        let loop = state.withLock { s in
            s.commands.append(command)
            if attaching { s.recordings += 1 }
            return s.loop
        }
        if attaching { packets.servesViewers = true }
        if let loop { loop.wake() } else { ensureRunning() }
    }

    func wake() { state.withLock { $0.loop }?.wake() }

    /// Starts a thread if somebody needs one and none runs.
    func ensureRunning() {
        let loop: LoopThread? = state.withLock { s in
            guard s.loop == nil, !s.commands.isEmpty || s.recordings > 0 || packets.hasSubscribers else { return nil }
            let loop = LoopThread(name: "encoder")
            s.loop = loop
            return loop
        }
        guard let loop else { return }
        let subscription = frames.subscribe(kind: .recorder, capacity: settings.queueFrames,
                                            maxBytes: settings.queueBytes) { loop.wake() }
        state.withLock { $0.subscription = subscription }
        let worker = EncoderWorker(mailbox: self, loop: loop, subscription: subscription)
        loop.start { worker.run() }
    }

    /// For the thread with nothing left to do: true, and it is forgotten, when nobody needs it.
    func mayStop(_ subscription: FrameSubscription) -> Bool {
        state.withLock { s in
            guard s.commands.isEmpty, s.recordings == 0, !packets.hasSubscribers else { return false }
            s.loop = nil
            s.subscription = nil
            s.droppedBefore += subscription.stats.dropped
            return true
        }
    }

    /// A recording stopped (finished or failed).
    func recordingStopped() {
        let recordings = state.withLock { s in
            s.recordings -= 1
            return s.recordings
        }
        packets.servesViewers = viewersAlone || recordings > 0
    }

    /// Frames the encoder's hub queues dropped so far.
    var framesDropped: UInt64 { state.withLock { $0.droppedBefore + ($0.subscription?.stats.dropped ?? 0) } }

    /// The time of the earliest command that holds frames back, if any.
    var earliestKeyframe: UInt64? { state.withLock { $0.commands.compactMap(\.keyframeTime).min() } }
}

/// The encoder thread's state.
///
/// `@unchecked Sendable`: handed to its thread before the thread starts and used by that thread only; callers
/// reach it solely through the `EncoderMailbox` (a mutex) and the `FrameSubscription` (thread-safe).
private final class EncoderWorker: @unchecked Sendable {
    private let mailbox: EncoderMailbox
    private let loop: LoopThread
    private let subscription: FrameSubscription
    private var decoder: JPEGDecoder?
    private var encoder: H264Encoder?
    private var picture: Picture?
    private var config: VideoConfig?
    /// The source frame of the latest picture.
    private var latest: Frame?
    /// The wall-clock time of the encoder's time 0: its first frame's.
    private var encoderOrigin: UInt64 = 0
    private var lastPTS: Int64 = -1
    private var sinks: [RecordingSink] = []
    /// Commands taken from the mailbox and not handled yet.
    private var commands: [EncoderMailbox.Command] = []
    /// A frame taken from the queue but captured after the command being handled.
    private var held: Frame?
    private var droppedLogged: UInt64 = 0
    /// Viewer key frame requests served (those counted before the latest key frame was encoded).
    private var keyRequestsServed: UInt64 = 0
    /// When the latest key frame was encoded, and since when one is asked for (uptime ns).
    private var lastKeyAt: UInt64 = 0
    private var keyAskedAt: UInt64?
    /// This thread's CPU by stage, added to the mailbox's at each wake.
    private var cpu = EncoderCPU()
    private var cpuPublished = EncoderCPU()

    /// How late a first frame may come and still be shown from a recording's start (µs).
    private static let firstFrameGrace: UInt64 = 2_000_000

    init(mailbox: EncoderMailbox, loop: LoopThread, subscription: FrameSubscription) {
        self.mailbox = mailbox
        self.loop = loop
        self.subscription = subscription
    }

    func run() {
        let cpuStart = threadCPU()
        do { decoder = try JPEGDecoder() } catch {
            mailbox.logger.error("encoder cannot start", metadata: ["error": "\(error)"])
        }
        var first = true
        while true {
            if !first { loop.wait(until: nextDeadline()) }
            first = false
            let taken = mailbox.state.withLock { s in
                defer { s.commands.removeAll() }
                return s.commands
            }
            // In time order (a stable sort keeps the callers' order for equal times).
            commands = (commands + taken).enumerated()
                .sorted { ($0.element.time, $0.offset) < ($1.element.time, $1.offset) }.map(\.element)
            do throws(RecorderError) {
                while !commands.isEmpty { try handle(commands.removeFirst()) }
                try encodeQueued(before: nil)
                try repeatKeyframeIfDue()
            } catch {
                // The encoder failed: every recording with it; viewers get a fresh encoder at the next frame.
                for sink in sinks { stop(sink, error) }
                sinks.removeAll()
                closeEncoder()
            }
            timed(\.mux) { housekeeping() }
            cpu.total = threadCPU() - cpuStart
            publishCPU()
            if sinks.isEmpty, held == nil, commands.isEmpty, mailbox.mayStop(subscription) { break }
        }
        subscription.cancel()
    }

    /// Runs `body`, adding this thread's CPU in it to `stage`.
    private func timed<T, E>(_ stage: WritableKeyPath<EncoderCPU, UInt64>, _ body: () throws(E) -> T) throws(E) -> T {
        let start = threadCPU()
        defer { cpu[keyPath: stage] += threadCPU() - start }
        return try body()
    }

    /// Adds what this thread spent since the last call to the mailbox's figures.
    private func publishCPU() {
        let (now, before) = (cpu, cpuPublished)
        cpuPublished = now
        mailbox.cpu.withLock { c in
            c.pictures += now.pictures - before.pictures
            c.decode += now.decode - before.decode
            c.encode += now.encode - before.encode
            c.mux += now.mux - before.mux
            c.publish += now.publish - before.publish
            c.total += now.total - before.total
        }
    }

    private func handle(_ command: EncoderMailbox.Command) throws(RecorderError) {
        switch command {
        case .attach(let sink):
            try encodeQueued(before: sink.origin)
            sinks.append(sink)
            // The encoder runs already: the recording starts with the picture shown, encoded again as a key frame.
            if let encoder, picture != nil {
                sinkDo(sink) { () throws(RecorderError) in try sink.start(encoder: encoder.context, at: sink.origin) }
                try encodeAgain(at: sink.origin)
            }
        case .keyframe(let time, let sink):
            try encodeQueued(before: time)
            // Before the first frame there is nothing to show; the first frame will be an IDR anyway.
            guard sinks.contains(where: { $0 === sink }), sink.isStarted, !sink.lastPacketIsKey else { return }
            try encodeAgain(at: time)
        case .sync(_, let sink, let waiter):
            // Every frame received so far, not only those captured before the sync's time: a run that ended before
            // its first frame came still gets that frame. Up to the next keyframe, which must follow its own frames.
            do throws(RecorderError) {
                try encodeQueued(before: commands.lazy.compactMap(\.keyframeTime).first)
            } catch {
                // Taken off the list already: answered here, or its caller would wait for ever.
                waiter.resume(with: .failure(error))
                throw error
            }
            guard sinks.contains(where: { $0 === sink }) else { return sink.answer(waiter) }
            sinkDo(sink) { () throws(RecorderError) in try sink.sync() }
            sink.answer(waiter)
        case .finish(let sink):
            try encodeQueued(before: nil)
            guard let index = sinks.firstIndex(where: { $0 === sink }) else { return }
            sinks.remove(at: index)
            do throws(RecorderError) {
                try sink.finish()
                stop(sink, nil)
            } catch {
                stop(sink, error)
            }
        }
    }

    /// Runs `body` on a recording; if it fails, so does that recording alone.
    private func sinkDo(_ sink: RecordingSink, _ body: () throws(RecorderError) -> Void) {
        do throws(RecorderError) { try body() } catch {
            sinks.removeAll { $0 === sink }
            stop(sink, error)
        }
    }

    private func stop(_ sink: RecordingSink, _ failure: RecorderError?) {
        if let failure {
            mailbox.logger.error("recording failed", metadata: ["path": "\(sink.path)", "error": "\(failure)"])
            sink.abandon()
        }
        sink.stop(failure, framesDropped: mailbox.framesDropped)
        // Its commands still queued are answered from its final state.
        mailbox.recordingStopped()
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
            timed(\.mux) {
                for sink in sinks { sinkDo(sink) { () throws(RecorderError) in try sink.cutFragmentIfDue() } }
            }
        }
    }

    /// Encodes one frame; a frame that does not decode is counted and skipped, anything else fails the encoder.
    private func encode(_ frame: Frame) throws(RecorderError) {
        // The hub raises a capture time that went backwards to the previous one: such a frame is older than the one
        // already shown and would last zero time (no tick after the last picture's). Leave it out.
        guard let decoder, picture == nil || Self.ticks(frame.captureTime, since: encoderOrigin) > lastPTS else { return }
        let jpeg = frame.jpeg.bytes
        // A frame with its own pixels (an RFB source) is encoded from them; a screencast frame from its JPEG.
        var header: JPEGHeader?
        if frame.pixels == nil {
            do { header = try timed(\.decode) { () throws(JPEGError) in try decoder.header(jpeg) } } catch {
                return skip(frame, RecorderError("\(error)"))
            }
        }
        let (width, height) = header.map { (Int32($0.width), Int32($0.height)) } ?? (Int32(frame.width), Int32(frame.height))
        // Without a recording, a new size is a new encoder (viewers get its configuration before its first picture).
        if let picture, sinks.isEmpty, (width & ~1, height & ~1) != (picture.width, picture.height) { closeEncoder() }
        var time = frame.captureTime
        if picture == nil {
            guard width >= 2, height >= 2 else { return skip(frame, RecorderError("a \(width)x\(height) frame")) }
            // The first frame after a recording asked for frames is the screen as it was when it started (the
            // source sends a fresh screenshot then), so it is shown from the start, unless it is very late.
            if let origin = sinks.map(\.origin).min() {
                if time < origin + Self.firstFrameGrace { time = origin }
                time = max(time, origin)
            }
            try openEncoder(width: width, height: height, at: time)
        }
        guard let picture else { return }
        let started = DispatchTime.now().uptimeNanoseconds
        do {
            try timed(\.decode) { () throws(RecorderError) in
                if let pixels = frame.pixels {
                    try picture.load(rgbx: pixels.payload, width: width, height: height)
                } else if let header {
                    try picture.load(jpeg, header, decoder: decoder)
                }
            }
        } catch { return skip(frame, error) }
        try encode(picture, at: max(time, encoderOrigin), keyframe: keyframeDue(started), showing: frame)
        mailbox.frames.metrics.frameEncoded(nanoseconds: DispatchTime.now().uptimeNanoseconds - started)
    }

    private func skip(_ frame: Frame, _ error: RecorderError) {
        for sink in sinks { sink.report { $0.framesInvalid += 1 } }
        mailbox.logger.warning("recorder skipped a frame it cannot decode",
                               metadata: ["sequence": "\(frame.sequence)", "error": "\(error)"])
    }

    /// Encodes the latest picture again, as an IDR frame at `time`.
    private func encodeAgain(at time: UInt64) throws(RecorderError) {
        guard let picture, let latest else { return }
        try encode(picture, at: time, keyframe: true, showing: latest)
    }

    /// Encodes `picture` (showing source frame `frame`) at `time` and hands the packet to every recording and, when
    /// viewers are subscribed, to them.
    private func encode(_ picture: Picture, at time: UInt64, keyframe: Bool, showing frame: Frame)
        throws(RecorderError)
    {
        guard let encoder else { return }
        let requests = mailbox.keyRequests.load(ordering: .acquiring)
        lastPTS = max(Self.ticks(time, since: encoderOrigin), lastPTS + 1)
        // x264's own time: the whole call less the packet's handling, which is timed as its own stages.
        let (start, handled) = (threadCPU(), cpu.mux + cpu.publish)
        defer { cpu.encode += threadCPU() - start - (cpu.mux + cpu.publish - handled) }
        cpu.pictures += 1
        try encoder.encode(picture.frame, pts: lastPTS, keyframe: keyframe) { packet throws(RecorderError) in
            let isKey = packet.pointee.flags & AV_PKT_FLAG_KEY != 0
            if let config, mailbox.packets.hasSubscribers {
                timed(\.publish) {
                    let accessUnit = AVCFormat.accessUnit(UnsafeRawBufferPointer(start: packet.pointee.data,
                                                                                 count: Int(packet.pointee.size)))
                    mailbox.packets.publish(EncodedFrame(
                        sequence: frame.sequence, captureTime: frame.captureTime, width: frame.width,
                        height: frame.height, isKey: isKey, url: frame.url, config: config, accessUnit: accessUnit))
                }
            }
            timed(\.mux) {
                for sink in sinks where sink.isStarted {
                    sinkDo(sink) { () throws(RecorderError) in try sink.write(packet, at: time) }
                }
            }
            if isKey {
                lastKeyAt = DispatchTime.now().uptimeNanoseconds
                keyRequestsServed = requests
                keyAskedAt = nil
            }
        }
        latest = frame
    }

    /// Whether a viewer's key frame is asked for and may be made now (uptime ns).
    private func keyframeDue(_ now: UInt64) -> Bool {
        guard mailbox.keyRequests.load(ordering: .acquiring) > keyRequestsServed else { return false }
        if keyAskedAt == nil { keyAskedAt = now }
        return now >= lastKeyAt + SessionEncoder.keyframeInterval
    }

    /// When a viewer's key frame is due and no frame came for ``SessionEncoder/repeatAfter``, encodes the picture
    /// shown again.
    private func repeatKeyframeIfDue() throws(RecorderError) {
        let now = DispatchTime.now().uptimeNanoseconds
        guard picture != nil, held == nil, keyframeDue(now), let due = repeatDeadline, now >= due else { return }
        try encodeAgain(at: wallClockMicros())
    }

    private var repeatDeadline: UInt64? {
        guard let keyAskedAt, mailbox.keyRequests.load(ordering: .acquiring) > keyRequestsServed else { return nil }
        return max(lastKeyAt + SessionEncoder.keyframeInterval, keyAskedAt + SessionEncoder.repeatAfter)
    }

    /// Opens the encoder for a frame's size, rounded down to even, with time 0 at `time`; starts the recordings
    /// waiting for their first frame.
    private func openEncoder(width frameWidth: Int32, height frameHeight: Int32, at time: UInt64) throws(RecorderError) {
        let width = frameWidth & ~1, height = frameHeight & ~1
        let picture = try Picture(width: width, height: height)
        let encoder = try H264Encoder(width: width, height: height, settings: mailbox.settings)
        let c = encoder.context.pointer.pointee
        config = AVCFormat.config(extradata: UnsafeRawBufferPointer(start: c.extradata, count: Int(c.extradata_size)),
                                  width: Int(width), height: Int(height))
        self.encoder = encoder
        self.picture = picture
        encoderOrigin = time
        lastPTS = -1
        for sink in sinks { sinkDo(sink) { () throws(RecorderError) in try sink.start(encoder: encoder.context, at: time) } }
    }

    private func closeEncoder() {
        (encoder, picture, config, latest) = (nil, nil, nil, nil)
    }

    private static func ticks(_ wallClock: UInt64, since origin: UInt64) -> Int64 {
        wallClock > origin ? Int64((wallClock - origin) * 9 / 100) : 0
    }

    /// Cuts each recording's fragment that is a second old and touches its file when nothing was written for a
    /// second; reports hub drops.
    private func housekeeping() {
        for sink in sinks { sinkDo(sink) { () throws(RecorderError) in try sink.housekeeping() } }
        let dropped = subscription.stats.dropped
        if dropped > droppedLogged {
            mailbox.logger.warning("recorder is too slow, frames dropped",
                                   metadata: ["dropped": "\(dropped - droppedLogged)", "total": "\(dropped)"])
            droppedLogged = dropped
        }
    }

    private func nextDeadline() -> DispatchTime {
        let now = DispatchTime.now().uptimeNanoseconds
        var deadline = sinks.map(\.deadline).min() ?? now + RecordingSink.interval
        if let due = repeatDeadline { deadline = min(deadline, due) }
        return DispatchTime(uptimeNanoseconds: max(deadline, now + 1_000_000))
    }
}
