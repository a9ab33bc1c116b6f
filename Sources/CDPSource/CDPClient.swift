import Foundation
import Logging
import ViewportCore
import WebSocketIO

/// What a ``CDPClient`` tells its owner, on the service thread.
protocol CDPClientDelegate: AnyObject {
    func clientDidOpen(_ client: CDPClient)
    /// An event; `frame` is its decoded `data` when it carried an image.
    func client(_ client: CDPClient, received event: CDPEvent, session: CDPSession, frame: FrameBytes?)
    /// The connection ended (or never opened); called once, and the client lets its delegate go.
    func clientDidClose(_ client: CDPClient, code: UInt16?, reason: String)
}

/// One DevTools WebSocket: numbers commands, keeps their reply handlers, and holds what waits to be written.
///
/// Holds its delegate strongly until the socket closes (the socket holds the client until then), so an owner
/// lives until its connection has said goodbye. `@unchecked Sendable`: used only on the service thread.
final class CDPClient: WebSocketDelegate, @unchecked Sendable {
    /// Bytes of commands waiting for the browser to read them.
    static let maxOutboxBytes = 1 << 20

    var delegate: (any CDPClientDelegate)?
    weak var socket: WebSocket?
    /// Set when the socket closed or the client gave up on it: nothing is sent any more.
    private(set) var closed = false
    private var outbox: [OutboundMessage] = []
    private var outboxBytes = 0
    private var nextID = 1
    /// Reply handlers, given the reply's JSON (image cut out) and its decoded image.
    private var replies: [Int: (Data, FrameBytes?) -> Void] = [:]
    private let metrics: StreamMetrics
    private let logger: Logger

    init(delegate: any CDPClientDelegate, metrics: StreamMetrics, logger: Logger) {
        self.delegate = delegate
        self.metrics = metrics
        self.logger = logger
    }

    /// Sends `command` to `session`; `reply` gets the result (nil when the browser answered with an error) and
    /// the reply's image, if it had one. Nothing is sent, and `reply` is never called, once the client closed.
    /// Returns the command's id (for ``forget(_:)``), nil when nothing was sent.
    @discardableResult
    func send<Command: CDPCommand>(_ command: Command, to session: CDPSession = .root,
                                   reply: ((Command.Result?, FrameBytes?) -> Void)? = nil) -> Int?
    {
        guard !closed, let socket else { return nil }
        let id = nextID
        nextID += 1
        guard let data = try? JSONEncoder().encode(CDPOutbound(id: id, sessionId: session.id, params: command)) else { return nil }
        // A browser that sends frames and never reads our acknowledgements must not grow the daemon.
        guard outboxBytes + data.count <= Self.maxOutboxBytes else {
            closed = true
            metrics.peerLimited(.browserNotReading)
            socket.close(code: 1008, reason: "browser does not read its messages")
            return nil
        }
        if let reply {
            replies[id] = { json, frame in
                reply((try? CDPInbound.decoder.decode(CDPReply<Command.Result>.self, from: json))?.result, frame)
            }
        }
        outboxBytes += data.count
        outbox.append(.text(Payload(copying: data)))
        socket.requestWrite()
        return id
    }

    /// Drops the reply handler of command `id`: its caller stopped waiting (a reply that may never come).
    func forget(_ id: Int) { replies[id] = nil }

    // MARK: WebSocketDelegate

    func webSocketDidOpen(_ socket: WebSocket) { delegate?.clientDidOpen(self) }

    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        guard let parsed = FrameMessage.parse(message.data) else { return }
        switch parsed.message {
        case .reply(let id):
            replies.removeValue(forKey: id)?(parsed.json, parsed.frame)
        case .event(let event, let session):
            delegate?.client(self, received: event, session: session, frame: parsed.frame)
        }
    }

    func nextMessage(for socket: WebSocket) -> OutboundMessage? {
        guard !outbox.isEmpty else { return nil }
        let message = outbox.removeFirst()
        outboxBytes -= message.count
        return message
    }

    func hasMessages(for socket: WebSocket) -> Bool { !outbox.isEmpty }

    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        if code == 1009, !closed {
            metrics.peerLimited(.browserMessageTooBig)
            logger.warning("browser sent a message over cdp.max_message_mb; reconnecting")
        }
        closed = true
        replies.removeAll()
        let delegate = self.delegate
        self.delegate = nil
        delegate?.clientDidClose(self, code: code, reason: reason)
    }
}
