import Foundation
import Glibc
public import Logging
import Synchronization
import ViewportCore
public import WebSocketIO

/// RFB over WebSocket for noVNC: relays one authenticated WebSocket to its session's VNC screen.
///
/// The WebSocket was authenticated by viewportd (API key or viewer token), so the screen takes the relay's
/// connection as authenticated too: the relay makes a socket pair, hands one end to the screen
/// (`VNCBridge.attach`), and answers the client's security handshake itself, offering None, so noVNC never prompts
/// (see ``RelayHandshake``). From then on bytes flow unchanged both ways.
///
/// Both directions are bounded in bytes, and the event loop's service thread never blocks:
/// - screen → client: what the reader thread read and the WebSocket has not taken yet (in flight to the service
///   thread or queued) is at most ``Limits/toClientBytes``; beyond, the client is not reading and is closed with
///   1008 "client is not reading".
/// - client → screen: writes to the socket never block (MSG_DONTWAIT); what the screen has not taken waits in
///   a buffer of at most ``Limits/toServerBytes`` and is retried every 10 ms; beyond, the client is closed with 1008.
///
/// `@unchecked Sendable`: its state is confined to the event loop's service thread; the reader thread only
/// reads the relay's end of the socket pair, counts what it read in `budget` and hands it to that thread.
public final class WebSocketRelay: WebSocketDelegate, @unchecked Sendable {
    public struct Limits: Sendable {
        /// Bytes from the screen not yet taken by the WebSocket, at most.
        public var toClientBytes = 8 << 20
        /// Bytes from the client not yet taken by the screen, at most.
        public var toServerBytes = 1 << 20
        public init() {}
    }

    /// Process-wide counts of relays closed for exceeding their limits, for metrics.
    public enum Counters {
        /// Closed because the client did not read what the screen sent (1008 "client is not reading").
        public static var clientNotReading: Int { notReading.load(ordering: .relaxed) }
        /// Closed because the client sent faster than the screen reads.
        public static var screenNotReading: Int { screenBehind.load(ordering: .relaxed) }
        static let notReading = Atomic(0)
        static let screenBehind = Atomic(0)
    }

    /// Largest message handed to the WebSocket at once.
    static let chunk = 256 * 1024

    private let bridge: VNCBridge
    private let control: Bool
    private let loop: EventLoop
    private let logger: Logger
    private let limits: Limits
    private let budget = Budget()
    /// The relay's end of the socket pair (-1 before and after).
    private var fd: Int32 = -1
    private let reading = LoopThread(name: "vnc-relay")
    private var handshake = RelayHandshake()
    /// Bytes for the client; `outboxStart` is the first not yet taken.
    private var outbox: [UInt8] = []
    private var outboxStart = 0
    /// Bytes for the screen that `send` did not take yet.
    private var toServer: [UInt8] = []
    private var flushScheduled = false
    private weak var socket: WebSocket?
    private var closed = false

    /// A relay to `bridge`; the client may drive the browser when `control`.
    public init(bridge: VNCBridge, control: Bool, loop: EventLoop, logger: Logger, limits: Limits = Limits()) {
        self.bridge = bridge
        self.control = control
        self.loop = loop
        self.logger = logger
        self.limits = limits
    }

    public func webSocketDidOpen(_ socket: WebSocket) {
        self.socket = socket
        var ends: [Int32] = [-1, -1]
        // SOCK_CLOEXEC is O_CLOEXEC on Linux; the constant itself is not visible in every build of this module
        // (the C library's socket header can be claimed by the CVNC module).
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | O_CLOEXEC, 0, &ends) == 0 else {
            socket.close(code: 1011, reason: "the session's VNC screen is not reachable")
            return
        }
        // The screen selects on its end (libvncserver, FD_SETSIZE): it gets the lower descriptor.
        let (screenEnd, ownEnd) = (min(ends[0], ends[1]), max(ends[0], ends[1]))
        guard bridge.attach(screenEnd, control: control) else {
            close(screenEnd)
            close(ownEnd)
            socket.close(code: 1011, reason: "the session's VNC screen is not reachable")
            return
        }
        fd = ownEnd
        let reader = Reader(fd: fd, budget: budget, limit: limits.toClientBytes)
        reading.start(interrupt: { [fd] in _ = shutdown(fd, Int32(SHUT_RDWR)) }) { [loop, fd] in
            reader.run { event in
                loop.execute { [weak self] in
                    guard let self else {
                        // The WebSocket is gone and with it the relay: the descriptor is still ours to close.
                        if case .bytes = event {} else { close(fd) }
                        return
                    }
                    switch event {
                    case .bytes(let bytes): serverSent(bytes)
                    case .end: serverClosed(code: 1000, reason: "the VNC screen closed")
                    case .overBudget:
                        Counters.notReading.add(1, ordering: .relaxed)
                        bridge.metrics.peerLimited(.relayNotReading)
                        logger.warning("noVNC relay closed: client is not reading",
                                       metadata: ["buffered_bytes": "\(budget.bytes.load(ordering: .relaxed))"])
                        serverClosed(code: 1008, reason: "client is not reading")
                    }
                }
            }
        }
    }

    public func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        guard message.isBinary else {
            socket.close(code: 1003, reason: "RFB travels in binary messages")
            return
        }
        perform(handshake.clientSent(message.data))
    }

    public func nextMessage(for socket: WebSocket) -> OutboundMessage? {
        let count = min(outbox.count - outboxStart, Self.chunk)
        guard count > 0 else { return nil }
        let message = OutboundMessage.binary(Payload(copying: outbox[outboxStart..<(outboxStart + count)]))
        outboxStart += count
        if outboxStart == outbox.count {
            outbox.removeAll(keepingCapacity: outbox.capacity <= 2 * Self.chunk)
            outboxStart = 0
        } else if outboxStart >= outbox.count / 2 {
            outbox.removeFirst(outboxStart)
            outboxStart = 0
        }
        budget.bytes.subtract(count, ordering: .relaxed)
        return message
    }

    public func hasMessages(for socket: WebSocket) -> Bool { outbox.count > outboxStart }

    public func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        closed = true
        toServer = []
        // The reader's socket is shut down: it reports the end, and `serverClosed` closes the descriptor.
        if fd >= 0 { reading.stop() }
    }

    private func serverSent(_ bytes: [UInt8]) {
        // The reader counted these; what reaches the outbox is counted again in `sendToClient` (during the
        // handshake that differs from what the screen sent).
        budget.bytes.subtract(bytes.count, ordering: .relaxed)
        perform(handshake.serverSent(bytes))
    }

    /// Ends the relay: the reader has stopped, the descriptor is closed here.
    private func serverClosed(code: UInt16, reason: String) {
        if fd >= 0 { close(fd) }
        fd = -1
        guard !closed else { return }
        socket?.close(code: code, reason: reason)
    }

    private func perform(_ steps: [RelayHandshake.Step]) {
        for step in steps {
            switch step {
            case .toClient(let bytes): sendToClient(bytes)
            case .toServer(let bytes): write(bytes)
            case .fail(let reason):
                logger.warning("noVNC relay failed", metadata: ["reason": "\(reason)"])
                socket?.close(code: 1011, reason: reason)
            }
        }
    }

    private func sendToClient(_ bytes: [UInt8]) {
        guard !closed else { return }
        budget.bytes.add(bytes.count, ordering: .relaxed)
        outbox += bytes
        socket?.requestWrite()
    }

    /// To the VNC screen, without blocking: what the socket does not take now waits, up to the limit.
    private func write(_ bytes: [UInt8]) {
        guard fd >= 0, !closed else { return }
        toServer += bytes
        flush()
    }

    private func flush() {
        flushScheduled = false
        guard fd >= 0, !closed else { return }
        var offset = 0
        while offset < toServer.count {
            let written = toServer[offset...].withUnsafeBytes {
                Foundation.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if written < 0, errno == EINTR { continue }
            if written < 0, errno == EAGAIN || errno == EWOULDBLOCK { break }
            guard written > 0 else {
                toServer = []
                socket?.close(code: 1011, reason: "the VNC screen went away")
                return
            }
            offset += written
        }
        toServer.removeFirst(offset)
        guard !toServer.isEmpty else { return }
        guard toServer.count <= limits.toServerBytes else {
            Counters.screenBehind.add(1, ordering: .relaxed)
            bridge.metrics.peerLimited(.relayScreenNotReading)
            logger.warning("noVNC relay closed: client sends faster than the VNC screen reads",
                           metadata: ["buffered_bytes": "\(toServer.count)"])
            toServer = []
            socket?.close(code: 1008, reason: "client sends faster than the screen reads")
            return
        }
        guard !flushScheduled else { return }
        flushScheduled = true
        loop.schedule(after: 0.01) { [weak self] in self?.flush() }
    }
}

/// Bytes the reader read from the screen that the WebSocket has not taken yet.
private final class Budget: Sendable {
    let bytes = Atomic(0)
}

/// Reads the relay's end of the socket pair on a thread of its own until end of file or until the client falls too
/// far behind (the relay owns and closes the descriptor).
private final class Reader: Sendable {
    enum Event: Sendable {
        case bytes([UInt8])
        case end
        case overBudget
    }

    let fd: Int32
    let budget: Budget
    let limit: Int
    init(fd: Int32, budget: Budget, limit: Int) {
        self.fd = fd
        self.budget = budget
        self.limit = limit
    }

    /// Calls `deliver` with each chunk read, then once with `.end` or `.overBudget` and stops.
    func run(_ deliver: (Event) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            if budget.bytes.add(count, ordering: .relaxed).newValue > limit {
                deliver(.overBudget)
                return
            }
            deliver(.bytes(Array(buffer[0..<count])))
        }
        deliver(.end)
    }
}
