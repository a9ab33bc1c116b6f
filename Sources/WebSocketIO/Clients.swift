internal import CWebSockets
public import Foundation
import Synchronization

extension EventLoop {
    /// Opens a WebSocket to a `ws://` URL (connecting to `address` instead of the URL's host when given), sending
    /// `headers` with the upgrade request. The delegate hears `webSocketDidOpen` or, if the connection fails or the
    /// handshake takes longer than `handshakeTimeout` seconds, `webSocketDidClose` with a nil code.
    public func connectWebSocket(to url: String, connectingTo address: String? = nil,
                                 headers: [(name: String, value: String)] = [], delegate: any WebSocketDelegate,
                                 maxMessageBytes: Int, handshakeTimeout: Double = 10) throws -> WebSocket
    {
        var endpoint = try Endpoint(url)
        endpoint.connectAddress = address
        let socket = WebSocket(loop: self, delegate: delegate, maxMessageBytes: maxMessageBytes, request: nil)
        connect(WebSocketClientConnection(loop: self, socket: socket, endpoint: endpoint, headers: headers,
                                          handshakeTimeout: handshakeTimeout), to: endpoint, method: "RAW")
        return socket
    }

    /// Performs an HTTP request to an `http://` URL (connecting to `address` instead of the URL's host when
    /// given) and returns the status and body.
    public func httpRequest(_ method: String, _ url: String, connectingTo address: String? = nil,
                            headers: [(name: String, value: String)] = [], body: Data? = nil, timeout: Double = 10)
        async throws -> (status: Int, body: Data)
    {
        let response = try await httpExchange(method, url, connectingTo: address, headers: headers, body: body,
                                              timeout: timeout)
        return (response.status, response.body)
    }

    /// Performs an HTTP request as ``httpRequest(_:_:connectingTo:headers:body:timeout:)`` does, and returns the
    /// response headers named in `responseHeaders` (lower-case) too. With `bodyFile`, the body is written to that
    /// file (created or truncated, whatever its size) rather than returned (at most 16 MiB). The whole exchange
    /// takes at most `timeout` seconds.
    public func httpExchange(_ method: String, _ url: String, connectingTo address: String? = nil,
                             headers: [(name: String, value: String)] = [], body: Data? = nil,
                             responseHeaders: [String] = [], bodyFile: String? = nil, timeout: Double = 10)
        async throws -> HTTPClientResponse
    {
        var target = try Endpoint(url)
        target.connectAddress = address
        let endpoint = target
        var file: Int32 = -1
        if let bodyFile {
            file = open(bodyFile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            guard file >= 0 else { throw NetworkError("cannot write \(bodyFile): \(String(cString: strerror(errno)))") }
        }
        // Closed once the request has ended: the connection writes to it only before that.
        defer { if file >= 0 { close(file) } }
        return try await withCheckedThrowingContinuation { continuation in
            let connection = HTTPClientConnection(loop: self, headers: headers, body: body,
                                                  responseHeaders: responseHeaders, bodyFile: file,
                                                  continuation: continuation)
            connect(connection, to: endpoint, method: method)
            // Not through the loop: the request must end even if the loop is gone by then.
            DispatchQueue.global().asyncAfter(deadline: .now() + timeout) {
                connection.fail("no answer from \(endpoint.hostHeader) within \(timeout) s")
            }
        }
    }
}

/// What an HTTP client request got back.
public struct HTTPClientResponse: Sendable {
    public var status: Int
    /// The response headers asked for that the response had, by lower-case name.
    public var headers: [String: String]
    /// Empty when the body went to a file.
    public var body: Data
}

/// A client WebSocket on lws's raw socket role: the upgrade handshake and RFC 6455 framing are done here.
final class WebSocketClientConnection: Connection, @unchecked Sendable {
    private let socket: WebSocket
    private let endpoint: Endpoint
    private let headers: [(name: String, value: String)]
    private let key = Data((0..<16).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
    private var handshakeSent = false
    private var response: [UInt8]?  // the handshake response until it is complete
    private var framing: ClientFraming
    private let handshakeTimeout: Double

    init(loop: EventLoop, socket: WebSocket, endpoint: Endpoint, headers: [(name: String, value: String)],
         handshakeTimeout: Double) {
        self.socket = socket
        self.endpoint = endpoint
        self.headers = headers
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
                    + "User-Agent: viewportd\r\n" + headers.map { "\($0.name): \($0.value)\r\n" }.joined() + "\r\n"
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
    private let responseHeaders: [String]
    /// Where the body goes, or -1 (then into `received`). Written only while the request has not ended (under the
    /// continuation's lock), as its owner closes it once the request ended.
    private let bodyFile: Int32
    private var response = HTTPClientResponse(status: 0, headers: [:], body: Data())
    private let maxBodyBytes = 16 << 20
    private let continuation: Mutex<CheckedContinuation<HTTPClientResponse, any Error>?>

    init(loop: EventLoop, headers: [(name: String, value: String)], body: Data?, responseHeaders: [String] = [],
         bodyFile: Int32 = -1, continuation: CheckedContinuation<HTTPClientResponse, any Error>)
    {
        self.headers = headers
        self.body = body
        self.responseHeaders = responseHeaders
        self.bodyFile = bodyFile
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

    private func finish(_ result: Result<HTTPClientResponse, any Error>) {
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
            response.status = Int(lws_http_client_http_response(wsi))
            for name in responseHeaders {
                if let value = Self.header(wsi, name) { response.headers[name] = value }
            }
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
            if bodyFile >= 0 {
                let written = continuation.withLock { pending in
                    pending == nil || Self.write(bodyFile, UnsafeRawBufferPointer(start: input, count: length))
                }
                if !written { finish(.failure(NetworkError("cannot write the response body: \(String(cString: strerror(errno)))"))) }
                return written ? 0 : -1
            }
            if response.body.count + length > maxBodyBytes {
                finish(.failure(NetworkError("response body over \(maxBodyBytes) bytes")))
                return -1
            }
            response.body.append(input.assumingMemoryBound(to: UInt8.self), count: length)
            return 0
        case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
            finish(.success(response))
            return 0
        case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
            finish(response.status > 0 ? .success(response) : .failure(NetworkError("connection closed")))
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

    /// Response headers lws keeps under a token of its own; any other is read by name.
    private static let tokens: [String: lws_token_indexes] = [
        "content-type": WSI_TOKEN_HTTP_CONTENT_TYPE, "content-range": WSI_TOKEN_HTTP_CONTENT_RANGE,
        "content-disposition": WSI_TOKEN_HTTP_CONTENT_DISPOSITION, "etag": WSI_TOKEN_HTTP_ETAG,
        "accept-ranges": WSI_TOKEN_HTTP_ACCEPT_RANGES, "cache-control": WSI_TOKEN_HTTP_CACHE_CONTROL,
        "location": WSI_TOKEN_HTTP_LOCATION, "allow": WSI_TOKEN_HTTP_ALLOW,
    ]

    private static func header(_ wsi: OpaquePointer, _ name: String) -> String? {
        if let token = tokens[name] {
            let count = Int(lws_hdr_total_length(wsi, token))
            guard count > 0 else { return nil }
            var buffer = [CChar](repeating: 0, count: count + 1)
            guard lws_hdr_copy(wsi, &buffer, Int32(buffer.count), token) >= 0 else { return nil }
            return String(nullTerminated: buffer)
        }
        let key = name + ":"
        let count = Int(lws_hdr_custom_length(wsi, key, Int32(key.utf8.count)))
        guard count >= 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: count + 1)
        guard lws_hdr_custom_copy(wsi, &buffer, Int32(buffer.count), key, Int32(key.utf8.count)) >= 0 else { return nil }
        return String(nullTerminated: buffer)
    }

    /// Writes all of `bytes` to `file`; false when it cannot.
    private static func write(_ file: Int32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(file, bytes.baseAddress! + done, bytes.count - done)
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
