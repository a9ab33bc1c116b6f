import Synchronization

/// What a session's stream is doing, as consumers are told.
public enum StreamStatus: Sendable, Equatable {
    /// Frames flow (or will as soon as the page changes).
    case live
    /// The source lost its connection and is retrying.
    case reconnecting
    /// The session closed; no more frames will come.
    case closed
    /// The source gave up; no more frames will come.
    case failed(reason: String)

    /// True once no more frames will come.
    public var isFinal: Bool {
        switch self {
        case .live, .reconnecting: false
        case .closed, .failed: true
        }
    }
}

/// What kind of consumer reads a subscription (for stats and metrics).
public enum ConsumerKind: String, Sendable {
    case viewer, recorder, vncBridge = "vnc_bridge"
    /// A one-off wait for a step's screenshot.
    case screenshot
}

/// One per session: frames are captured once and handed to every consumer by reference.
///
/// Each consumer has its own bounded queue that drops its oldest frame when full and counts the drop, so
/// nothing a consumer does (or fails to do) can block the source or another consumer. A new consumer gets
/// the latest frame at once.
public final class FrameHub: Sendable {
    private struct State {
        var nextSequence: UInt64 = 1
        var lastCaptureTime: UInt64 = 0
        var latest: Frame?
        // Replaced, never mutated in place, so publish can iterate a snapshot outside the lock.
        var subscribers: [FrameSubscription] = []
        var status: StreamStatus = .live
        var statusVersion = 0
        var demandHandler: (@Sendable (Bool) -> Void)?
        /// When input went to the browser with no frame published since (for the input-to-frame latency).
        var inputSentAt: UInt64?
    }

    private let state = Mutex(State())
    /// Where the hub and its consumers count frames.
    public let metrics: StreamMetrics

    public init(metrics: StreamMetrics = .none) {
        self.metrics = metrics
    }

    /// Publishes a captured JPEG, with its uncompressed RGBX `pixels` when the source has them. The capture time
    /// is raised to the previous frame's if it went backwards. The frame's sequence number is the previous one + 1,
    /// or `sequence` when that is higher (a relay keeps the numbers of the hub it relays). Returns the frame, or
    /// nil once the stream has ended.
    @discardableResult
    public func publish(jpeg: FrameBytes, width: Int, height: Int, captureTime: UInt64, url: String?,
                        pixels: FrameBytes? = nil, sequence: UInt64? = nil) -> Frame? {
        let result: (Frame, [FrameSubscription], UInt64?)? = state.withLock { s in
            guard !s.status.isFinal else { return nil }
            let time = max(captureTime, s.lastCaptureTime)
            let number = max(sequence ?? 0, s.nextSequence)
            let frame = Frame(sequence: number, captureTime: time, width: width, height: height, url: url,
                              jpeg: jpeg, pixels: pixels)
            s.nextSequence = number + 1
            s.lastCaptureTime = time
            s.latest = frame
            defer { s.inputSentAt = nil }
            return (frame, s.subscribers, s.inputSentAt)
        }
        guard let (frame, subscribers, inputSentAt) = result else { return nil }
        metrics.captured.increment()
        if let inputSentAt { metrics.inputAnswered(afterMicroseconds: wallClockMicros() &- inputSentAt) }
        for subscriber in subscribers { subscriber.push(frame) }
        return frame
    }

    /// Adds a consumer with a queue of `capacity` frames and at most `maxBytes` bytes of frames (the newest frame
    /// is always kept). `wake` is called (on the publishing thread) after each frame or status change is queued;
    /// it must not block.
    public func subscribe(kind: ConsumerKind, capacity: Int, maxBytes: Int = .max, wake: @escaping @Sendable () -> Void)
        -> FrameSubscription
    {
        let subscription = FrameSubscription(hub: self, kind: kind, capacity: max(1, capacity), maxBytes: maxBytes,
                                             wake: wake)
        let (latest, demandStarted, handler) = state.withLock { s in
            s.subscribers.append(subscription)
            return (s.latest, s.subscribers.count == 1, s.demandHandler)
        }
        if let latest { subscription.push(latest) }
        if demandStarted { handler?(true) }
        return subscription
    }

    /// Adds a consumer that takes no frames, only the stream's status (``FrameSubscription/statusChange()``; `wake`
    /// is called on a change): an H.264 viewer, whose pictures come from the session's encoder.
    public func subscribeToStatus(kind: ConsumerKind, wake: @escaping @Sendable () -> Void) -> FrameSubscription {
        let subscription = FrameSubscription(hub: self, kind: kind, capacity: 0, maxBytes: 0, wake: wake)
        let (demandStarted, handler) = state.withLock { s in
            s.subscribers.append(subscription)
            return (s.subscribers.count == 1, s.demandHandler)
        }
        if demandStarted { handler?(true) }
        return subscription
    }

    func remove(_ subscription: FrameSubscription) {
        let (demandEnded, handler) = state.withLock { s in
            let before = s.subscribers.count
            s.subscribers.removeAll { $0 === subscription }
            return (before > 0 && s.subscribers.isEmpty, s.demandHandler)
        }
        if demandEnded { handler?(false) }
    }

    /// A source sent input to the browser: the next frame published answers it (input-to-frame latency).
    public func inputSent() {
        state.withLock { $0.inputSentAt = $0.inputSentAt ?? wallClockMicros() }
    }

    /// The newest frame, if any.
    public var latest: Frame? { state.withLock { $0.latest } }

    /// Number of consumers.
    public var consumerCount: Int { state.withLock { $0.subscribers.count } }

    /// The stream's status.
    public var status: StreamStatus { state.withLock { $0.status } }

    /// Changes the status and wakes every consumer so it can tell its client. A final status is never replaced.
    public func setStatus(_ status: StreamStatus) {
        let subscribers: [FrameSubscription] = state.withLock { s in
            guard !s.status.isFinal, s.status != status else { return [] }
            s.status = status
            s.statusVersion += 1
            return s.subscribers
        }
        for subscriber in subscribers { subscriber.wake() }
    }

    /// Calls `handler(true)` when the first consumer arrives and `handler(false)` when the last one leaves, so
    /// a source can capture only while somebody looks. Called at once with the current demand.
    public func onDemandChange(_ handler: @escaping @Sendable (Bool) -> Void) {
        let demand = state.withLock { s in
            s.demandHandler = handler
            return !s.subscribers.isEmpty
        }
        handler(demand)
    }

    fileprivate func statusSnapshot() -> (StreamStatus, Int) {
        state.withLock { ($0.status, $0.statusVersion) }
    }
}

/// A consumer's bounded queue on a ``FrameHub``. Thread-safe; ``cancel()`` it when done.
public final class FrameSubscription: Sendable {
    /// Counters of one consumer.
    public struct Stats: Sendable, Equatable {
        /// Frames taken with ``FrameSubscription/next()``.
        public var delivered: UInt64 = 0
        /// Frames dropped because the queue was full.
        public var dropped: UInt64 = 0
        /// Frames waiting now.
        public var queued = 0
    }

    private struct Queue {
        var frames: [Frame] = []
        var bytes = 0
        var stats = Stats()
        var seenStatusVersion = 0
        var cancelled = false
    }

    public let kind: ConsumerKind
    public let capacity: Int
    /// Bytes of frames (JPEG and pixels) the queue holds at most, besides the newest frame.
    public let maxBytes: Int
    private let hub: FrameHub
    private let queue = Mutex(Queue())
    private let wakeHandler: @Sendable () -> Void

    fileprivate init(hub: FrameHub, kind: ConsumerKind, capacity: Int, maxBytes: Int,
                     wake: @escaping @Sendable () -> Void) {
        self.hub = hub
        self.kind = kind
        self.capacity = capacity
        self.maxBytes = maxBytes
        self.wakeHandler = wake
    }

    fileprivate func push(_ frame: Frame) {
        let size = frame.byteCount
        let (accepted, dropped) = queue.withLock { q -> (Bool, Int) in
            guard !q.cancelled, capacity > 0 else { return (false, 0) }
            var dropped = 0
            while !q.frames.isEmpty, q.frames.count >= capacity || q.bytes + size > maxBytes {
                q.bytes -= q.frames.removeFirst().byteCount
                dropped += 1
            }
            q.stats.dropped += UInt64(dropped)
            q.frames.append(frame)
            q.bytes += size
            return (true, dropped)
        }
        for _ in 0..<dropped { hub.metrics.frameDropped(by: kind) }
        if accepted { wakeHandler() }
    }

    fileprivate func wake() { wakeHandler() }

    /// The oldest queued frame, or nil when none is waiting.
    public func next() -> Frame? {
        let frame: Frame? = queue.withLock { q in
            guard !q.frames.isEmpty else { return nil }
            q.stats.delivered += 1
            let frame = q.frames.removeFirst()
            q.bytes -= frame.byteCount
            return frame
        }
        if let frame { hub.metrics.frameTaken(frame, by: kind) }
        return frame
    }

    /// True when a frame is waiting.
    public var hasFrames: Bool { queue.withLock { !$0.frames.isEmpty } }

    /// The stream status if it changed since the last call (the first call reports a non-live status).
    public func statusChange() -> StreamStatus? {
        let (status, version) = hub.statusSnapshot()
        return queue.withLock { q in
            guard q.seenStatusVersion != version else { return nil }
            q.seenStatusVersion = version
            return status
        }
    }

    /// This consumer's counters.
    public var stats: Stats {
        queue.withLock { q in
            var stats = q.stats
            stats.queued = q.frames.count
            return stats
        }
    }

    /// Leaves the hub and frees the queued frames.
    public func cancel() {
        let wasActive = queue.withLock { q in
            defer { q.cancelled = true; q.frames.removeAll(); q.bytes = 0 }
            return !q.cancelled
        }
        if wasActive { hub.remove(self) }
    }
}
