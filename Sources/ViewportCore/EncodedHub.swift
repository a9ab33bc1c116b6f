public import Foundation
import Synchronization

/// What a decoder needs before a session's H.264 frames (WebCodecs' `VideoDecoderConfig`).
public struct VideoConfig: Sendable, Equatable {
    /// RFC 6381's codec string, `avc1.PPCCLL`: the SPS's profile_idc, constraint flags and level_idc in hex.
    public var codec: String
    /// The AVCDecoderConfigurationRecord (ISO/IEC 14496-15 `avcC`): SPS and PPS, 4-byte NAL lengths.
    public var avcC: Data
    /// The size of the encoded pictures (the frames' size rounded down to even).
    public var codedWidth: Int
    public var codedHeight: Int

    public init(codec: String, avcC: Data, codedWidth: Int, codedHeight: Int) {
        (self.codec, self.avcC, self.codedWidth, self.codedHeight) = (codec, avcC, codedWidth, codedHeight)
    }
}

/// One encoded picture of a session: an H.264 access unit in AVC format (4-byte big-endian NAL lengths), with the
/// viewer wire header (`VPH1`, docs/protocol.md) written in front of it.
public final class EncodedFrame: Sendable {
    /// Size of the binary header that precedes the access unit in a viewer's message.
    public static let wireHeaderSize = 28

    /// The sequence number of the source frame this picture shows (a key frame that repeats the picture shown
    /// already carries that frame's number).
    public let sequence: UInt64
    /// The source frame's capture time, µs since the Unix epoch.
    public let captureTime: UInt64
    /// The source frame's size (the page's pixels, which input coordinates refer to).
    public let width: Int
    public let height: Int
    /// An IDR picture: a decoder can start here.
    public let isKey: Bool
    public let url: String?
    /// The configuration this picture decodes with.
    public let config: VideoConfig
    /// The access unit, the wire header in its headroom.
    public let accessUnit: FrameBytes

    public init(sequence: UInt64, captureTime: UInt64, width: Int, height: Int, isKey: Bool, url: String?,
                config: VideoConfig, accessUnit: FrameBytes) {
        (self.sequence, self.captureTime, self.width, self.height) = (sequence, captureTime, width, height)
        (self.isKey, self.url, self.config, self.accessUnit) = (isKey, url, config, accessUnit)
        // `VPH1`, sequence, capture time (µs), width, height, flags (bit 0: key frame), 3 zero bytes; big-endian.
        let p = accessUnit.payload - Self.wireHeaderSize
        p.storeBytes(of: UInt32(0x5650_4831).bigEndian, as: UInt32.self)  // "VPH1"
        p.storeBytes(of: sequence.bigEndian, toByteOffset: 4, as: UInt64.self)
        p.storeBytes(of: captureTime.bigEndian, toByteOffset: 12, as: UInt64.self)
        p.storeBytes(of: UInt16(clamping: width).bigEndian, toByteOffset: 20, as: UInt16.self)
        p.storeBytes(of: UInt16(clamping: height).bigEndian, toByteOffset: 22, as: UInt16.self)
        p.storeBytes(of: UInt32(isKey ? 0x0100_0000 : 0).bigEndian, toByteOffset: 24, as: UInt32.self)
    }

    /// Start of the viewer binary message: the wire header followed by the access unit.
    public var wireMessage: UnsafeMutableRawPointer { accessUnit.payload - Self.wireHeaderSize }
    /// Length of ``wireMessage``.
    public var wireMessageCount: Int { Self.wireHeaderSize + accessUnit.count }
    /// Free bytes in front of ``wireMessage``.
    public static var wireMessageHeadroom: Int { FrameBytes.headroom - wireHeaderSize }
}

/// One per session, beside its ``FrameHub``: the session's H.264 pictures, encoded once (by the recorder's
/// `SessionEncoder`) and handed to every H.264 viewer by reference.
///
/// Each viewer has its own bounded queue that starts at a key frame. A queue that overflows is emptied and waits
/// for the next key frame (never a picture whose references the viewer lacks), and asks the encoder for one; so
/// does a new viewer. The encoder runs while the hub has subscribers (``onDemandChange(_:)``).
public final class EncodedHub: Sendable {
    private struct State {
        var config: VideoConfig?
        // Replaced, never mutated in place, so publish can iterate a snapshot outside the lock.
        var subscribers: [EncodedSubscription] = []
        var servesViewers = false
        var demandHandler: (@Sendable () -> Void)?
        var keyframeHandler: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())
    let metrics: StreamMetrics

    public init(metrics: StreamMetrics = .none) { self.metrics = metrics }

    /// The configuration of the latest picture, nil before the encoder's first.
    public var config: VideoConfig? { state.withLock { $0.config } }

    /// Whether a new H.264 viewer is served: the encoder runs for a recording, or may run for viewers alone. Set by
    /// the encoder.
    public var servesViewers: Bool {
        get { state.withLock { $0.servesViewers } }
        set { state.withLock { $0.servesViewers = newValue } }
    }

    /// True while a viewer is subscribed.
    public var hasSubscribers: Bool { state.withLock { !$0.subscribers.isEmpty } }

    /// Hands an encoded picture to every subscriber (from the encoder's thread).
    public func publish(_ frame: EncodedFrame) {
        let subscribers = state.withLock { s in
            s.config = frame.config
            return s.subscribers
        }
        var wantKey = false
        for subscriber in subscribers where subscriber.push(frame) { wantKey = true }
        if wantKey { requestKeyframe() }
    }

    /// Adds a viewer whose queue holds `capacity` pictures at most; its first picture will be a key frame, which
    /// is asked for now. `wake` is called (on the encoder's thread) after each picture is queued; it must not block.
    public func subscribe(capacity: Int, wake: @escaping @Sendable () -> Void) -> EncodedSubscription {
        let subscription = EncodedSubscription(hub: self, capacity: max(2, capacity), wake: wake)
        let handler = state.withLock { s in
            s.subscribers.append(subscription)
            return s.subscribers.count == 1 ? s.demandHandler : nil
        }
        // Asked before the encoder starts for it: then its first picture, a key frame anyway, answers the request.
        requestKeyframe()
        handler?()
        return subscription
    }

    fileprivate func remove(_ subscription: EncodedSubscription) {
        let handler = state.withLock { s in
            s.subscribers.removeAll { $0 === subscription }
            return s.subscribers.isEmpty ? s.demandHandler : nil
        }
        handler?()
    }

    /// Calls `handler` when the first subscriber arrives and when the last one leaves (read ``hasSubscribers``).
    public func onDemandChange(_ handler: @escaping @Sendable () -> Void) {
        state.withLock { $0.demandHandler = handler }
    }

    /// Calls `handler` (it must not block) whenever a subscriber needs a key frame: the encoder's.
    public func onKeyframeRequest(_ handler: @escaping @Sendable () -> Void) {
        state.withLock { $0.keyframeHandler = handler }
    }

    func requestKeyframe() { state.withLock { $0.keyframeHandler }?() }
}

/// A viewer's bounded queue on an ``EncodedHub``. Thread-safe; ``cancel()`` it when done.
public final class EncodedSubscription: Sendable {
    private struct Queue {
        var frames: [EncodedFrame] = []
        var waitingForKey = true
        var stats = FrameSubscription.Stats()
        var cancelled = false
    }

    public let capacity: Int
    private let hub: EncodedHub
    private let queue = Mutex(Queue())
    private let wakeHandler: @Sendable () -> Void

    fileprivate init(hub: EncodedHub, capacity: Int, wake: @escaping @Sendable () -> Void) {
        self.hub = hub
        self.capacity = capacity
        self.wakeHandler = wake
    }

    /// Queues `frame`, or skips it while waiting for a key frame. Returns true when the queue overflowed: it was
    /// emptied and now waits for a key frame, which the caller asks for.
    fileprivate func push(_ frame: EncodedFrame) -> Bool {
        let (queued, dropped, overflowed) = queue.withLock { q -> (Bool, Int, Bool) in
            guard !q.cancelled else { return (false, 0, false) }
            if q.waitingForKey && !frame.isKey {
                q.stats.dropped += 1
                return (false, 1, false)
            }
            q.waitingForKey = false
            var dropped = 0, overflowed = false
            if q.frames.count >= capacity {
                // Every queued picture leads up to this one: without them it cannot be decoded either.
                dropped = q.frames.count + (frame.isKey ? 0 : 1)
                q.frames.removeAll()
                overflowed = !frame.isKey
                q.waitingForKey = overflowed
            }
            if !q.waitingForKey { q.frames.append(frame) }
            q.stats.dropped += UInt64(dropped)
            return (!q.waitingForKey, dropped, overflowed)
        }
        for _ in 0..<dropped { hub.metrics.frameDropped(by: .viewer) }
        if queued { wakeHandler() }
        return overflowed
    }

    /// The oldest queued picture, or nil when none is waiting.
    public func next() -> EncodedFrame? {
        queue.withLock { q in
            guard !q.frames.isEmpty else { return nil }
            q.stats.delivered += 1
            return q.frames.removeFirst()
        }
    }

    /// True when a picture is waiting.
    public var hasFrames: Bool { queue.withLock { !$0.frames.isEmpty } }

    /// This viewer's counters: pictures skipped are `dropped`.
    public var stats: FrameSubscription.Stats {
        queue.withLock { q in
            var stats = q.stats
            stats.queued = q.frames.count
            return stats
        }
    }

    /// Leaves the hub and frees the queued pictures.
    public func cancel() {
        let wasActive = queue.withLock { q in
            defer { q.cancelled = true; q.frames.removeAll() }
            return !q.cancelled
        }
        if wasActive { hub.remove(self) }
    }
}
