internal import CWebSockets
import Foundation

/// Receives the events of one WebSocket, on the service thread. Must not block.
public protocol WebSocketDelegate: AnyObject {
    /// The handshake finished; messages can flow.
    func webSocketDidOpen(_ socket: WebSocket)
    /// A whole message arrived.
    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage)
    /// The socket can take a message: return the next one, or nil when none is waiting.
    func nextMessage(for socket: WebSocket) -> OutboundMessage?
    /// True while ``nextMessage(for:)`` has more to give.
    func hasMessages(for socket: WebSocket) -> Bool
    /// The socket closed (`code` is the peer's close code, or ours when we closed first; nil when the connection
    /// broke or never opened).
    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String)
}

/// One WebSocket, server or client side. Its delegate is called on the service thread; ``requestWrite()`` and
/// ``close(code:reason:)`` may be called from any thread.
///
/// Server sockets use lws's WebSocket role. Client sockets run on lws's raw socket role with the framing done
/// here (``ClientFraming``): lws 4.1 parses client frames one byte per call, which cost more than half the
/// daemon's CPU on 100 kB screencast frames.
///
/// `@unchecked Sendable`: state is confined to the service thread; the two public methods hop onto it.
public final class WebSocket: @unchecked Sendable {
    let loop: EventLoop
    var wsi: OpaquePointer?
    private var delegate: (any WebSocketDelegate)?
    let maxMessageBytes: Int
    private let isClient: Bool
    private var received = Data()
    private var closing: (code: UInt16, reason: [UInt8])?
    private var peerClose: (code: UInt16, reason: String)?
    /// Pong and close replies of a client socket, written before anything else.
    private var controlFrames: [[UInt8]] = []
    private var didClose = false
    /// The upgrade request (server side), or nil for a client socket.
    public let request: HTTPRequest?
    /// True between open and close (service thread only).
    public private(set) var isOpen = false

    init(loop: EventLoop, delegate: any WebSocketDelegate, maxMessageBytes: Int, request: HTTPRequest?) {
        self.loop = loop
        self.delegate = delegate
        self.maxMessageBytes = maxMessageBytes
        self.request = request
        isClient = request == nil
    }

    /// Asks for ``WebSocketDelegate/nextMessage(for:)`` to be called when the socket can take data.
    public func requestWrite() {
        guard loop.inLoop else { loop.enqueue { self.requestWrite() }; return }
        if isOpen, let wsi { lws_callback_on_writable(wsi) }
    }

    /// Sends a close frame with `code` and `reason` at the next writable moment, then closes. Messages the
    /// delegate still holds are not sent.
    public func close(code: UInt16, reason: String) {
        guard loop.inLoop else { loop.enqueue { self.close(code: code, reason: reason) }; return }
        guard isOpen, closing == nil, let wsi else { return }
        closing = (code, Array(reason.utf8.prefix(123)))  // a close frame's payload is at most 125 bytes
        // A peer that does not read never makes the socket writable: drop it if the close frame is not out in 3 s.
        lws_set_timeout(wsi, PENDING_TIMEOUT_CLOSE_SEND, 3)
        lws_callback_on_writable(wsi)
    }

    /// Lets the kernel hold at most about `bytes` of this socket's data not yet sent (`TCP_NOTSENT_LOWAT`: the socket
    /// is writable only below it), so that what a slow peer cannot take waits in the delegate's queue, which may skip
    /// it, rather than in a kernel buffer that grows to megabytes. Service thread only, once open.
    public func limitUnsentBytes(_ bytes: Int) {
        guard let wsi else { return }
        var value = Int32(clamping: bytes)
        setsockopt(lws_get_socket_fd(wsi), Int32(IPPROTO_TCP), TCP_NOTSENT_LOWAT, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    func opened(_ wsi: OpaquePointer) {
        self.wsi = wsi
        isOpen = true
        delegate?.webSocketDidOpen(self)
    }

    /// A whole message arrived (client framing, or the lws server role below).
    func deliver(_ message: InboundMessage) { delegate?.webSocket(self, didReceive: message) }

    /// lws server role: a fragment of a message.
    func receive(_ wsi: OpaquePointer, _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
        if let input, length > 0 {
            if received.count + length > maxMessageBytes {
                var reason = Array("message too big".utf8)
                lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, &reason, reason.count)
                return -1
            }
            received.append(input.assumingMemoryBound(to: UInt8.self), count: length)
        }
        guard lws_is_final_fragment(wsi) != 0, lws_remaining_packet_payload(wsi) == 0 else { return 0 }
        let message = InboundMessage(isBinary: lws_frame_is_binary(wsi) != 0, data: received)
        received = Data()
        deliver(message)
        return 0
    }

    /// Client framing: answer a ping, or echo the peer's close and remember its code.
    func control(opcode: UInt8, payload: [UInt8]) {
        switch opcode {
        case 0x9:
            controlFrames.append(ClientFraming.frame(opcode: 0xA, payload: payload))
        case 0x8:
            payload.withUnsafeBytes { peerClosed($0) }
            if closing == nil { closing = (peerClose?.code ?? 1000, []) }
        default:
            return
        }
        if let wsi { lws_callback_on_writable(wsi) }
    }

    func writable(_ wsi: OpaquePointer) -> Int32 {
        if isClient, !controlFrames.isEmpty {
            return writeRaw(wsi, controlFrames.removeFirst()) ? requestMore(wsi) : -1
        }
        if let closing {
            if isClient {
                let payload = [UInt8(closing.code >> 8), UInt8(closing.code & 0xFF)] + closing.reason
                _ = writeRaw(wsi, ClientFraming.frame(opcode: 0x8, payload: payload))
            } else {
                var reason = closing.reason
                lws_close_reason(wsi, lws_close_status(rawValue: UInt32(closing.code)), &reason, reason.count)
            }
            return -1
        }
        guard let delegate, let message = delegate.nextMessage(for: self) else { return 0 }
        let (payload, binary): (Payload, Bool) =
            switch message {
            case .text(let p): (p, false)
            case .binary(let p): (p, true)
            }
        if isClient {
            let bytes = UnsafeRawBufferPointer(start: payload.start, count: payload.count)
            let frame = withExtendedLifetime(payload.owner) { ClientFraming.frame(opcode: binary ? 0x2 : 0x1, payload: bytes) }
            return writeRaw(wsi, frame) ? requestMore(wsi) : -1
        }
        let written = withExtendedLifetime(payload.owner) {
            lws_write(wsi, payload.start.assumingMemoryBound(to: UInt8.self), payload.count,
                      binary ? LWS_WRITE_BINARY : LWS_WRITE_TEXT)
        }
        return written < 0 ? -1 : requestMore(wsi)
    }

    private func requestMore(_ wsi: OpaquePointer) -> Int32 {
        if !controlFrames.isEmpty || delegate?.hasMessages(for: self) == true { lws_callback_on_writable(wsi) }
        return 0
    }

    /// Writes bytes as they are (client framing and handshake) through lws's raw role.
    func writeRaw(_ wsi: OpaquePointer, _ bytes: [UInt8]) -> Bool {
        let payload = Payload(copying: bytes)
        return withExtendedLifetime(payload.owner) {
            lws_write(wsi, payload.start.assumingMemoryBound(to: UInt8.self), payload.count, LWS_WRITE_HTTP) >= 0  // LWS_WRITE_RAW is a macro for it
        }
    }

    /// Remembers the code and reason of the peer's close frame payload.
    func peerClosed(_ payload: UnsafeRawBufferPointer) {
        guard payload.count >= 2 else { return }
        peerClose = (UInt16(payload[0]) << 8 | UInt16(payload[1]), String(decoding: payload.dropFirst(2), as: UTF8.self))
    }

    /// The connection ended (or never opened); tells the delegate once and lets it go.
    func closed(error: String? = nil) {
        guard !didClose else { return }
        didClose = true
        isOpen = false
        wsi = nil
        let delegate = self.delegate
        self.delegate = nil
        // Without a close frame from the peer, a close we started reports our own code and reason.
        let ours = closing.map { ($0.code, String(decoding: $0.reason, as: UTF8.self)) }
        delegate?.webSocketDidClose(self, code: peerClose?.code ?? ours?.0,
                                    reason: error ?? peerClose?.reason ?? ours?.1 ?? "")
    }
}

/// RFC 6455 framing for the client side: masked frames out, frames in parsed with bulk copies.
struct ClientFraming {
    /// One masked, final frame.
    static func frame(opcode: UInt8, payload: some Collection<UInt8>) -> [UInt8] {
        let count = payload.count
        var frame: [UInt8] = [0x80 | opcode]
        frame.reserveCapacity(count + 14)
        switch count {
        case ..<126: frame.append(0x80 | UInt8(count))
        case ..<65536: frame += [0x80 | 126, UInt8(count >> 8), UInt8(count & 0xFF)]
        default: frame.append(0x80 | 127); frame += (0..<8).reversed().map { UInt8((UInt64(count) >> ($0 * 8)) & 0xFF) }
        }
        let mask = withUnsafeBytes(of: UInt32.random(in: .min ... .max)) { Array($0) }
        frame += mask
        for (index, byte) in payload.enumerated() { frame.append(byte ^ mask[index & 3]) }
        return frame
    }

    enum Event {
        case message(InboundMessage)
        case control(opcode: UInt8, payload: [UInt8])
    }

    enum Failure: Error { case tooBig, protocolError(String) }

    private var header: [UInt8] = []
    private var frameOpcode: UInt8 = 0
    private var final = false
    private var mask: [UInt8]?
    private var maskOffset = 0
    private var remaining = 0
    private var inPayload = false
    private var messageBinary = false
    private var message = Data()
    private var controlPayload: [UInt8] = []
    let maxMessageBytes: Int

    init(maxMessageBytes: Int) { self.maxMessageBytes = maxMessageBytes }

    /// Consumes received bytes and returns the complete messages and control frames in them.
    mutating func consume(_ bytes: UnsafeRawBufferPointer) throws(Failure) -> [Event] {
        var events: [Event] = []
        var index = 0
        while index < bytes.count {
            if !inPayload {
                header.append(bytes[index])
                index += 1
                guard let needed = headerLength(), header.count == needed else { continue }
                try startFrame()
                if remaining == 0, let event = try finishFrame() { events.append(event) }
                continue
            }
            let take = min(remaining, bytes.count - index)
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[index..<index + take])
            if let mask {
                let unmasked = chunk.enumerated().map { $1 ^ mask[($0 + maskOffset) & 3] }
                maskOffset += take
                if frameOpcode >= 8 { controlPayload += unmasked } else { message.append(contentsOf: unmasked) }
            } else if frameOpcode >= 8 {
                controlPayload += chunk
            } else {
                message.append(chunk.assumingMemoryBound(to: UInt8.self))
            }
            index += take
            remaining -= take
            if remaining == 0, let event = try finishFrame() { events.append(event) }
        }
        return events
    }

    /// Bytes of the frame header once its first two bytes say how long it is.
    private func headerLength() -> Int? {
        guard header.count >= 2 else { return nil }
        let lengthBytes = switch header[1] & 0x7F { case 126: 2; case 127: 8; default: 0 }
        return 2 + lengthBytes + (header[1] & 0x80 != 0 ? 4 : 0)
    }

    private mutating func startFrame() throws(Failure) {
        final = header[0] & 0x80 != 0
        frameOpcode = header[0] & 0x0F
        var length = Int(header[1] & 0x7F)
        var offset = 2
        if length == 126 {
            length = Int(header[2]) << 8 | Int(header[3])
            offset = 4
        } else if length == 127 {
            // RFC 6455: the most significant bit must be 0; refusing it also keeps the length a positive Int.
            guard header[2] & 0x80 == 0 else { throw .protocolError("64-bit length with the top bit set") }
            length = header[2..<10].reduce(0) { $0 << 8 | Int($1) }
            offset = 10
        }
        mask = header[1] & 0x80 != 0 ? Array(header[offset..<offset + 4]) : nil
        maskOffset = 0
        header.removeAll(keepingCapacity: true)
        if frameOpcode >= 8 {
            guard final, length <= 125 else { throw .protocolError("bad control frame") }
            controlPayload.removeAll(keepingCapacity: true)
        } else {
            if frameOpcode != 0 {
                message = Data()
                messageBinary = frameOpcode == 2
            }
            // Checked before anything is allocated: the length is the peer's word (up to 2^63).
            guard length <= maxMessageBytes - message.count else { throw .tooBig }
            // Capped too: the usual unfragmented message then lands with one copy, and a lie costs little.
            if frameOpcode != 0 { message.reserveCapacity(min(length, 8 << 20)) }
        }
        remaining = length
        inPayload = length > 0
    }

    private mutating func finishFrame() throws(Failure) -> Event? {
        inPayload = false
        if frameOpcode >= 8 { return .control(opcode: frameOpcode, payload: controlPayload) }
        guard final else { return nil }
        defer { message = Data() }
        return .message(InboundMessage(isBinary: messageBinary, data: message))
    }
}
