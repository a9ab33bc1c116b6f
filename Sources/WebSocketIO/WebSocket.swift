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
    /// The socket closed (`code` is the peer's close code, nil when the connection broke or never opened).
    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String)
}

/// One WebSocket, server or client side. Its delegate is called on the service thread; ``requestWrite()`` and
/// ``close(code:reason:)`` may be called from any thread.
///
/// `@unchecked Sendable`: state is confined to the service thread; the two public methods hop onto it.
public final class WebSocket: @unchecked Sendable {
    let loop: EventLoop
    var wsi: OpaquePointer?
    private var delegate: (any WebSocketDelegate)?
    private let maxMessageBytes: Int
    private var received = Data()
    private var closing: (code: UInt16, reason: [UInt8])?
    private var peerClose: (code: UInt16, reason: String)?
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
        lws_callback_on_writable(wsi)
    }

    func opened(_ wsi: OpaquePointer) {
        self.wsi = wsi
        isOpen = true
        delegate?.webSocketDidOpen(self)
    }

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
        delegate?.webSocket(self, didReceive: message)
        return 0
    }

    func writable(_ wsi: OpaquePointer, client: Bool) -> Int32 {
        if let closing {
            var reason = closing.reason
            lws_close_reason(wsi, lws_close_status(rawValue: UInt32(closing.code)), &reason, reason.count)
            return -1
        }
        guard let delegate, let message = delegate.nextMessage(for: self) else { return 0 }
        let (payload, kind): (Payload, lws_write_protocol) =
            switch message {
            case .text(let p): (p, LWS_WRITE_TEXT)
            case .binary(let p): (p, LWS_WRITE_BINARY)
            }
        // A client masks the payload in place, so it must never write shared bytes.
        let bytes = client ? Payload(copying: UnsafeRawBufferPointer(start: payload.start, count: payload.count))
                           : payload
        let written = withExtendedLifetime(bytes.owner) {
            lws_write(wsi, bytes.start.assumingMemoryBound(to: UInt8.self), bytes.count, kind)
        }
        if written < 0 { return -1 }
        if delegate.hasMessages(for: self) { lws_callback_on_writable(wsi) }
        return 0
    }

    func peerInitiatedClose(_ input: UnsafeMutableRawPointer?, _ length: Int) {
        guard let input, length >= 2 else { return }
        let bytes = UnsafeRawBufferPointer(start: input, count: length)
        let code = UInt16(bytes[0]) << 8 | UInt16(bytes[1])
        peerClose = (code, String(decoding: bytes.dropFirst(2), as: UTF8.self))
    }

    /// The connection ended (or never opened); tells the delegate once and lets it go.
    func closed(error: String? = nil) {
        guard !didClose else { return }
        didClose = true
        isOpen = false
        wsi = nil
        let delegate = self.delegate
        self.delegate = nil
        delegate?.webSocketDidClose(self, code: peerClose?.code, reason: error ?? peerClose?.reason ?? "")
    }
}
