internal import CWebSockets
public import Foundation
import Synchronization

extension EventLoop {
    /// Opens a WebSocket to a `ws://` URL (connecting to `address` instead of the URL's host when given). The
    /// delegate hears `webSocketDidOpen` or, if the connection fails or the handshake takes longer than
    /// `handshakeTimeout` seconds, `webSocketDidClose` with a nil code.
    public func connectWebSocket(to url: String, connectingTo address: String? = nil, delegate: any WebSocketDelegate,
                                 maxMessageBytes: Int, handshakeTimeout: Double = 10) throws -> WebSocket
    {
        var endpoint = try Endpoint(url)
        endpoint.connectAddress = address
        let socket = WebSocket(loop: self, delegate: delegate, maxMessageBytes: maxMessageBytes, request: nil)
        connect(WebSocketClientConnection(loop: self, socket: socket, endpoint: endpoint,
                                          handshakeTimeout: handshakeTimeout), to: endpoint, method: "RAW")
        return socket
    }

    /// Performs an HTTP request to an `http://` URL (connecting to `address` instead of the URL's host when
    /// given) and returns the status and body.
    public func httpRequest(_ method: String, _ url: String, connectingTo address: String? = nil,
                            headers: [(name: String, value: String)] = [], body: Data? = nil, timeout: Double = 10)
        async throws -> (status: Int, body: Data)
    {
        var target = try Endpoint(url)
        target.connectAddress = address
        let endpoint = target
        return try await withCheckedThrowingContinuation { continuation in
            let connection = HTTPClientConnection(loop: self, headers: headers, body: body,
                                                  continuation: continuation)
            connect(connection, to: endpoint, method: method)
            // Not through the loop: the request must end even if the loop is gone by then.
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                connection.fail("no answer from \(endpoint.hostHeader) within \(timeout) s")
            }
        }
    }
}

/// A client WebSocket on lws's raw socket role: the upgrade handshake and RFC 6455 framing are done here.
final class WebSocketClientConnection: Connection, @unchecked Sendable {
    private let socket: WebSocket
    private let endpoint: Endpoint
    private let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    private var handshakeSent = false
    private var response: [UInt8]?  // the handshake response until it is complete
    private var framing: ClientFraming
    private let handshakeTimeout: Double

    init(loop: EventLoop, socket: WebSocket, endpoint: Endpoint, handshakeTimeout: Double) {
        self.socket = socket
        self.endpoint = endpoint
        self.handshakeTimeout = handshakeTimeout
        framing = ClientFraming(maxMessageBytes: socket.maxMessageBytes)
        super.init(loop: loop, wsi: nil)
    }

    override func handle(_ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
                         _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32
    {
        guard let wsi else { return -1 }
        switch reason {
        case LWS_CALLBACK_RAW_CONNECTED:
            response = []
            // A peer that accepts the connection and never answers the upgrade is closed by lws after this.
            lws_set_timeout(wsi, PENDING_TIMEOUT_AWAITING_SERVER_RESPONSE, Int32(max(1, handshakeTimeout.rounded(.up))))
            lws_callback_on_writable(wsi)
            return 0
        case LWS_CALLBACK_RAW_WRITEABLE:
            if !handshakeSent {
                handshakeSent = true
                let request = "GET \(endpoint.path) HTTP/1.1\r\nHost: \(endpoint.hostHeader)\r\nUpgrade: websocket\r\n"
                    + "Connection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n"
                    + "User-Agent: viewportd\r\n\r\n"
                return socket.writeRaw(wsi, Array(request.utf8)) ? 0 : -1
            }
            return socket.isOpen ? socket.writable(wsi) : 0
        case LWS_CALLBACK_RAW_RX:
            guard let input, length > 0 else { return 0 }
            return receive(wsi, UnsafeRawBufferPointer(start: input, count: length))
        case LWS_CALLBACK_RAW_CLOSE:
            socket.closed(error: socket.isOpen ? nil : "connection closed during the WebSocket handshake")
            return 0
        case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
            socket.closed(error: Self.errorText(input, length) ?? "connection failed")
            return 0
        default:
            return lws_callback_http_dummy(wsi, reason, user, input, length)
        }
    }

    private func receive(_ wsi: OpaquePointer, _ bytes: UnsafeRawBufferPointer) -> Int32 {
        if var head = response {
            head += bytes
            guard let end = head.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound else {
                if head.count > 16384 { socket.closed(error: "WebSocket handshake response too long"); return -1 }
                response = head
                return 0
            }
            response = nil
            if let problem = checkHandshake(String(decoding: head[..<end], as: UTF8.self)) {
                socket.closed(error: problem)
                return -1
            }
            lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0)
            socket.opened(wsi)
            let rest = head[end...]
            guard !rest.isEmpty else { return 0 }
            return rest.withUnsafeBytes { consume(wsi, $0) }
        }
        return consume(wsi, bytes)
    }

    private func consume(_ wsi: OpaquePointer, _ bytes: UnsafeRawBufferPointer) -> Int32 {
        do {
            for event in try framing.consume(bytes) {
                switch event {
                case .message(let message): socket.deliver(message)
                case .control(let opcode, let payload): socket.control(opcode: opcode, payload: payload)
                }
                guard socket.isOpen else { return 0 }
            }
            return 0
        } catch .tooBig {
            socket.close(code: 1009, reason: "message too big")
            return 0
        } catch {
            socket.close(code: 1002, reason: "protocol error")
            return 0
        }
    }

    /// Nil when the response accepts the upgrade, else why not.
    private func checkHandshake(_ head: String) -> String? {
        let lines = head.split(separator: "\r\n")
        guard let status = lines.first, status.split(separator: " ").dropFirst().first == "101" else {
            return "WebSocket handshake refused: \(lines.first ?? "no status line")"
        }
        var digest = [UInt8](repeating: 0, count: 20)
        let material = Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8)
        vpd_sha1(material, material.count, &digest)
        let expected = Data(digest).base64EncodedString()
        let accept = lines.dropFirst().first { $0.lowercased().hasPrefix("sec-websocket-accept:") }
        guard accept?.split(separator: ":", maxSplits: 1).last?.trimmingCharacters(in: .whitespaces) == expected else {
            return "WebSocket handshake without a valid Sec-WebSocket-Accept"
        }
        return nil
    }

    override func destroyed() {
        socket.closed(error: "connection closed")
        super.destroyed()
    }

    override func connectFailed(_ reason: String) { socket.closed(error: reason) }

    static func errorText(_ input: UnsafeMutableRawPointer?, _ length: Int) -> String? {
        guard let input else { return nil }
        return String(cString: input.assumingMemoryBound(to: CChar.self))
    }
}

final class HTTPClientConnection: Connection, @unchecked Sendable {
    private let headers: [(name: String, value: String)]
    private let body: Data?
    private var status = 0
    private var received = Data()
    private let maxBodyBytes = 16 << 20
    private let continuation: Mutex<CheckedContinuation<(status: Int, body: Data), any Error>?>

    init(loop: EventLoop, headers: [(name: String, value: String)], body: Data?,
         continuation: CheckedContinuation<(status: Int, body: Data), any Error>)
    {
        self.headers = headers
        self.body = body
        self.continuation = Mutex(continuation)
        super.init(loop: loop, wsi: nil)
    }

    /// Ends the request with an error (once); safe from any thread.
    func fail(_ reason: String) {
        finish(.failure(NetworkError(reason)))
        loop.execute { [self] in
            if let wsi { lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC) }
        }
    }

    private func finish(_ result: Result<(status: Int, body: Data), any Error>) {
        continuation.withLock { $0.take() }?.resume(with: result)
    }

    override func handle(_ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
                         _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32
    {
        guard let wsi else { return -1 }
        switch reason {
        case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
            guard let input else { return -1 }
            let p = input.assumingMemoryBound(to: UnsafeMutablePointer<UInt8>?.self)
            guard let start = p.pointee else { return -1 }
            let end = start + length
            var all = headers
            if let body { all.append(("content-length", String(body.count))) }
            for header in all {
                let value = Array(header.value.utf8)
                if lws_add_http_header_by_name(wsi, header.name.lowercased() + ":", value, Int32(value.count), p, end)
                    != 0 { return -1 }
            }
            if body != nil {
                lws_client_http_body_pending(wsi, 1)
                lws_callback_on_writable(wsi)
            }
            return 0
        case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE:
            guard let body else { return 0 }
            let payload = Payload(copying: body)
            let written = withExtendedLifetime(payload.owner) {
                lws_write(wsi, payload.start.assumingMemoryBound(to: UInt8.self), payload.count, LWS_WRITE_HTTP_FINAL)
            }
            lws_client_http_body_pending(wsi, 0)
            return written < 0 ? -1 : 0
        case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
            status = Int(lws_http_client_http_response(wsi))
            return 0
        case LWS_CALLBACK_RECEIVE_CLIENT_HTTP:
            var buffer = [CChar](repeating: 0, count: EventLoop.requiredHeadroom + 16 * 1024)
            return buffer.withUnsafeMutableBufferPointer { b -> Int32 in
                var p: UnsafeMutablePointer<CChar>? = b.baseAddress! + EventLoop.requiredHeadroom
                var count = Int32(16 * 1024)
                return lws_http_client_read(wsi, &p, &count) < 0 ? -1 : 0
            }
        case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
            guard let input else { return 0 }
            if received.count + length > maxBodyBytes {
                finish(.failure(NetworkError("response body over \(maxBodyBytes) bytes")))
                return -1
            }
            received.append(input.assumingMemoryBound(to: UInt8.self), count: length)
            return 0
        case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
            finish(.success((status, received)))
            return 0
        case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
            finish(status > 0 ? .success((status, received)) : .failure(NetworkError("connection closed")))
            return 0
        case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
            finish(.failure(NetworkError(WebSocketClientConnection.errorText(input, length) ?? "connection failed")))
            return 0
        default:
            return lws_callback_http_dummy(wsi, reason, user, input, length)
        }
    }

    override func destroyed() {
        finish(.failure(NetworkError("connection closed")))
        super.destroyed()
    }

    override func connectFailed(_ reason: String) { finish(.failure(NetworkError(reason))) }
}
