import CVNC
import Foundation
public import Logging
import Synchronization
public import WebSocketIO

/// RFB over WebSocket for noVNC: relays one authenticated WebSocket to its session's VNC screen.
///
/// The WebSocket was authenticated by viewportd (API key or viewer token), so the VNC-level password is answered
/// here, with a password minted for this connection alone: noVNC is offered the "None" security type and never
/// prompts. The handshake is RFB 3.8: versions pass through, the screen's security types [VncAuth] become [None]
/// for the client, the client's choice is replaced by VncAuth, the challenge is answered here, and the security
/// result passes through. From then on bytes flow unchanged both ways.
///
/// `@unchecked Sendable`: its state is confined to the event loop's service thread; the reader thread only
/// reads the TCP socket and hands what it read to that thread.
public final class WebSocketRelay: WebSocketDelegate, @unchecked Sendable {
    private enum Stage { case serverVersion, clientVersion, securityTypes, clientChoice, challenge, result, relaying }

    private let bridge: VNCBridge
    private let control: Bool
    private let loop: EventLoop
    private let logger: Logger
    private var fd: Int32 = -1
    private var stage = Stage.serverVersion
    private var fromServer: [UInt8] = []
    private var fromClient: [UInt8] = []
    private var outbox: [OutboundMessage] = []
    private weak var socket: WebSocket?
    private var password = ""
    private var closed = false

    /// A relay to `bridge`; the client may drive the browser when `control`.
    public init(bridge: VNCBridge, control: Bool, loop: EventLoop, logger: Logger) {
        self.bridge = bridge
        self.control = control
        self.loop = loop
        self.logger = logger
    }

    public func webSocketDidOpen(_ socket: WebSocket) {
        self.socket = socket
        password = bridge.passwords.mintInternal(control: control)
        fd = Self.connectLoopback(port: bridge.port)
        guard fd >= 0 else {
            socket.close(code: 1011, reason: "the session's VNC screen is not reachable")
            return
        }
        let reader = Reader(fd: fd)
        let thread = Thread { [loop, fd] in
            reader.run { bytes in
                loop.execute { [weak self] in
                    guard let self else {
                        // The WebSocket is gone and with it the relay: the descriptor is still ours to close.
                        if bytes == nil { close(fd) }
                        return
                    }
                    if let bytes { serverSent(bytes) } else { serverClosed() }
                }
            }
        }
        thread.name = "vnc-relay"
        thread.start()
    }

    public func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        guard message.isBinary else {
            socket.close(code: 1003, reason: "RFB travels in binary messages")
            return
        }
        if stage == .relaying {
            write(Array(message.data))
            return
        }
        fromClient += message.data
        advance()
    }

    public func nextMessage(for socket: WebSocket) -> OutboundMessage? { outbox.isEmpty ? nil : outbox.removeFirst() }

    public func hasMessages(for socket: WebSocket) -> Bool { !outbox.isEmpty }

    public func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        closed = true
        if fd >= 0 {
            shutdown(fd, Int32(SHUT_RDWR))  // the reader sees end of file and closes the descriptor
        }
    }

    // MARK: - Handshake

    private func serverSent(_ bytes: [UInt8]) {
        if stage == .relaying {
            send(bytes)
            return
        }
        fromServer += bytes
        advance()
    }

    private func serverClosed() {
        close(fd)
        fd = -1
        guard !closed else { return }
        socket?.close(code: 1000, reason: "the VNC screen closed")
    }

    /// Moves the handshake on as far as the bytes received allow.
    private func advance() {
        while true {
            switch stage {
            case .serverVersion:
                guard let version = take(12, from: &fromServer) else { return }
                guard version.starts(with: Array("RFB 003.008".utf8)) else { return fail("the VNC screen does not speak RFB 3.8") }
                send(version)
                stage = .clientVersion
            case .clientVersion:
                guard let version = take(12, from: &fromClient) else { return }
                guard version.starts(with: Array("RFB 003.008".utf8)) else { return fail("the client must speak RFB 3.8") }
                write(version)
                stage = .securityTypes
            case .securityTypes:
                guard let count = fromServer.first else { return }
                guard count > 0 else { return fail("the VNC screen refused the connection") }
                guard let types = take(1 + Int(count), from: &fromServer) else { return }
                guard types.dropFirst().contains(2) else { return fail("the VNC screen does not offer VNC authentication") }
                send([1, 1])  // one type: None
                stage = .clientChoice
            case .clientChoice:
                guard let choice = take(1, from: &fromClient) else { return }
                guard choice == [1] else { return fail("the client must choose security type None") }
                write([2])  // VncAuth
                stage = .challenge
            case .challenge:
                guard let challenge = take(16, from: &fromServer) else { return }
                var response = challenge
                var key = Array(password.utf8CString)
                vpd_rfb_encrypt(&response, &key)
                guard response != challenge else { return fail("DES is not available (libgcrypt FIPS mode?)") }
                write(response)
                stage = .result
            case .result:
                guard let result = take(4, from: &fromServer) else { return }
                send(result)
                guard result == [0, 0, 0, 0] else { return fail("the VNC screen refused the relay's password") }
                stage = .relaying
                if !fromServer.isEmpty { send(fromServer) }
                if !fromClient.isEmpty { write(fromClient) }
                fromServer = []
                fromClient = []
                return
            case .relaying:
                return
            }
        }
    }

    private func take(_ count: Int, from buffer: inout [UInt8]) -> [UInt8]? {
        guard buffer.count >= count else { return nil }
        defer { buffer.removeFirst(count) }
        return Array(buffer.prefix(count))
    }

    private func fail(_ reason: String) {
        logger.warning("noVNC relay failed", metadata: ["reason": "\(reason)"])
        socket?.close(code: 1011, reason: reason)
    }

    /// To the WebSocket client.
    private func send(_ bytes: [UInt8]) {
        outbox.append(.binary(Payload(copying: bytes)))
        socket?.requestWrite()
    }

    /// To the VNC screen. Loopback writes of client messages are small and do not block for long.
    private func write(_ bytes: [UInt8]) {
        guard fd >= 0 else { return }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Foundation.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else {
                socket?.close(code: 1011, reason: "the VNC screen went away")
                return
            }
            offset += written
        }
    }

    private static func connectLoopback(port: Int) -> Int32 {
        let fd = Foundation.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            close(fd)
            return -1
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }
}

/// Reads the TCP side on a thread of its own until end of file (the relay owns and closes the descriptor).
private final class Reader: Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }

    /// Calls `deliver` with each chunk read, then once with nil at the end.
    func run(_ deliver: ([UInt8]?) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { break }
            deliver(Array(buffer[0..<count]))
        }
        deliver(nil)
    }
}
