public import CoreMetrics

/// The frame pipeline's metrics, shared by every hub of a daemon and reached by consumers through their hub.
///
/// Built from a swift-metrics factory (the daemon's Prometheus registry); ``none`` records nothing.
public final class StreamMetrics: Sendable {
    /// Frames published by sources.
    let captured: Counter
    /// Frames taken by consumers, by consumer kind.
    private let sent: [ConsumerKind: Counter]
    /// Frames a full queue dropped, by consumer kind.
    private let dropped: [ConsumerKind: Counter]
    /// From capture to a consumer taking the frame (a viewer's socket ready to send it, the encoder starting on it).
    private let latency: [ConsumerKind: Timer]
    /// Time to decode and encode one frame into a recording.
    private let encodeTime: Timer
    /// Bytes written to recordings.
    private let recordingBytes: Counter
    /// From input sent to the browser to its next frame.
    private let inputLatency: Timer
    /// Connected VNC clients (all sessions).
    private let vncClients: Meter
    private let vncBytes: Counter
    private let vncRawBytes: Counter
    private let vncUpdates: Counter
    /// Frames refused before anything was allocated for them, by reason.
    private let refused: [FrameRefusal: Counter]
    /// Peers closed or refused for going over a limit, by peer and limit.
    private let limited: [PeerLimit: Counter]

    /// Metrics names, as exported.
    public enum Name {
        public static let captured = "viewportd_frames_captured_total"
        public static let sent = "viewportd_frames_sent_total"
        public static let dropped = "viewportd_frames_dropped_total"
        public static let latency = "viewportd_capture_to_send_seconds"
        public static let encodeTime = "viewportd_encode_seconds"
        public static let recordingBytes = "viewportd_recording_bytes_total"
        public static let inputLatency = "viewportd_input_to_frame_seconds"
        public static let vncClients = "viewportd_vnc_clients"
        public static let vncBytes = "viewportd_vnc_bytes_sent_total"
        public static let vncRawBytes = "viewportd_vnc_raw_equivalent_bytes_total"
        public static let vncUpdates = "viewportd_vnc_updates_sent_total"
        public static let refused = "viewportd_frames_refused_total"
        public static let limited = "viewportd_peer_limit_total"
    }

    public init(factory: any MetricsFactory) {
        let kinds: [ConsumerKind] = [.viewer, .recorder, .vncBridge, .screenshot]
        func each<M>(_ make: (ConsumerKind) -> M) -> [ConsumerKind: M] {
            Dictionary(uniqueKeysWithValues: kinds.map { ($0, make($0)) })
        }
        captured = Counter(label: Name.captured, factory: factory)
        sent = each { Counter(label: Name.sent, dimensions: [("consumer", $0.rawValue)], factory: factory) }
        dropped = each { Counter(label: Name.dropped, dimensions: [("consumer", $0.rawValue)], factory: factory) }
        latency = each { Timer(label: Name.latency, dimensions: [("consumer", $0.rawValue)], factory: factory) }
        encodeTime = Timer(label: Name.encodeTime, factory: factory)
        recordingBytes = Counter(label: Name.recordingBytes, factory: factory)
        inputLatency = Timer(label: Name.inputLatency, factory: factory)
        vncClients = Meter(label: Name.vncClients, factory: factory)
        vncBytes = Counter(label: Name.vncBytes, factory: factory)
        vncRawBytes = Counter(label: Name.vncRawBytes, factory: factory)
        vncUpdates = Counter(label: Name.vncUpdates, factory: factory)
        refused = Dictionary(uniqueKeysWithValues: FrameRefusal.allCases.map {
            ($0, Counter(label: Name.refused, dimensions: [("reason", $0.rawValue)], factory: factory))
        })
        limited = Dictionary(uniqueKeysWithValues: PeerLimit.allCases.map {
            ($0, Counter(label: Name.limited, dimensions: [("peer", $0.peer), ("limit", $0.limit)], factory: factory))
        })
    }

    /// A source refused a frame.
    public func frameRefused(_ reason: FrameRefusal) { refused[reason]?.increment() }

    /// A peer went over a limit and was closed or refused.
    public func peerLimited(_ limit: PeerLimit) { limited[limit]?.increment() }

    /// Records nothing (tests and tools that build hubs of their own).
    public static let none = StreamMetrics(factory: NOOPMetricsHandler.instance)

    func frameTaken(_ frame: Frame, by kind: ConsumerKind) {
        sent[kind]?.increment()
        let now = wallClockMicros()
        latency[kind]?.recordNanoseconds(Int64(now > frame.captureTime ? (now - frame.captureTime) * 1000 : 0))
    }

    func frameDropped(by kind: ConsumerKind) { dropped[kind]?.increment() }

    /// A recorder took `nanoseconds` to decode and encode one frame.
    public func frameEncoded(nanoseconds: UInt64) { encodeTime.recordNanoseconds(Int64(nanoseconds)) }

    /// The first frame after input came `microseconds` after the input was sent.
    func inputAnswered(afterMicroseconds microseconds: UInt64) {
        inputLatency.recordNanoseconds(Int64(clamping: microseconds &* 1000))
    }

    /// A VNC client connected (+1) or left (-1).
    public func vncClientsChanged(by delta: Int) {
        if delta > 0 { vncClients.increment(by: Double(delta)) } else { vncClients.decrement(by: Double(-delta)) }
    }

    /// A VNC client that left was sent `bytes` in `updates` framebuffer updates, which raw pixels of the same
    /// rectangles would have taken `rawBytes`.
    public func vncClientSent(bytes: Int, rawBytes: Int, updates: Int) {
        vncBytes.increment(by: Int64(bytes))
        vncRawBytes.increment(by: Int64(rawBytes))
        vncUpdates.increment(by: Int64(updates))
    }

    /// A recorder wrote `bytes` more to its file.
    public func recordingWritten(bytes: UInt64) { recordingBytes.increment(by: Int64(bytes)) }
}

/// Why a source refused a frame.
public enum FrameRefusal: String, Sendable, CaseIterable {
    /// Larger than the configured maximum size (`screencast.max_width/height`, `vnc.source_max_width/height`).
    case tooLarge = "too_large"
    /// Not a JPEG the source could read the size of.
    case malformed
}

/// A limit a peer went over (a fixed set, so the metric's labels stay bounded).
public enum PeerLimit: String, Sendable, CaseIterable {
    case browserMessageTooBig = "browser.message_too_big"
    case browserNotReading = "browser.not_reading"
    case vncServerTimeout = "vnc_server.timeout"
    case vncServerScreenTooLarge = "vnc_server.screen_too_large"
    case viewerNotReading = "viewer.not_reading"
    case viewerMessageTooBig = "viewer.message_too_big"
    case viewersPerSession = "viewer.per_session"
    case relayNotReading = "relay.not_reading"
    case vncClientHandshakeTimeout = "vnc_client.handshake_timeout"
    case vncClientUnauthenticated = "vnc_client.unauthenticated"
    case vncClientDescriptors = "vnc_client.descriptors"
    case relayScreenNotReading = "relay.screen_not_reading"
    case recorderQueueBytes = "recorder.queue_bytes"
    case httpUnauthenticated = "http.unauthenticated"

    var peer: String { String(rawValue.split(separator: ".")[0]) }
    var limit: String { String(rawValue.split(separator: ".")[1]) }
}
