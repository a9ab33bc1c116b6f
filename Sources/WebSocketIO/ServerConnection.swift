internal import CWebSockets
import Foundation

/// An accepted connection: HTTP transactions one after another (keep-alive), or a WebSocket after an upgrade.
final class ServerConnection: Connection, @unchecked Sendable {
    private enum State {
        case idle
        case readingBody(HTTPRequest, tooLarge: Bool)
        case waiting(transaction: Int)
        case writing(HTTPResponse, headOnly: Bool, headersSent: Bool, offset: Int)
        case closed
    }

    private var state = State.idle
    private var transaction = 0
    /// Set when a request was answered before its body was read: the connection cannot carry another.
    private var closeAfterResponse = false
    /// The peer's address while the connection counts as pending (no request answered yet) for it.
    var pendingAddress: String?

    private var bodyTooLarge: HTTPResponse {
        .json(413, ["detail": "request body is larger than \(loop.configuration.maxRequestBodyBytes) bytes"])
    }

    /// The connection stops counting as pending for its address.
    private func releasePending() {
        guard let address = pendingAddress else { return }
        pendingAddress = nil
        loop.released(pendingFrom: address)
    }
    private var webSocket: WebSocket?
    /// The transaction whose body completion was delivered (see `LWS_CALLBACK_HTTP_BODY_COMPLETION`).
    private var bodyCompletedIn = -1

    override func handle(_ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
                         _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32
    {
        guard let wsi else { return -1 }
        switch reason {
        case LWS_CALLBACK_HTTP:
            let request = readRequest(wsi)
            if ["POST", "PUT", "PATCH"].contains(request.method), Self.hasBody(wsi) {
                // Nothing of a body is read for a request that will be refused anyway.
                let tooLarge = Self.contentLength(wsi).map { $0 > loop.configuration.maxRequestBodyBytes } == true
                    ? bodyTooLarge : nil
                if let refusal = loop.server?.refuseBeforeBody(request) ?? tooLarge {
                    closeAfterResponse = true
                    transaction += 1
                    respond(refusal, head: false)
                    return 0
                }
                state = .readingBody(request, tooLarge: false)
                return 0
            }
            dispatch(request)
            return 0
        case LWS_CALLBACK_HTTP_BODY:
            guard case .readingBody(var request, let tooLarge) = state else { return 0 }
            if tooLarge || request.body.count + length > loop.configuration.maxRequestBodyBytes {
                state = .readingBody(request, tooLarge: true)
            } else if let input {
                request.body.append(input.assumingMemoryBound(to: UInt8.self), count: length)
                state = .readingBody(request, tooLarge: false)
            }
            return 0
        case LWS_CALLBACK_HTTP_BODY_COMPLETION:
            guard case .readingBody(let request, let tooLarge) = state else {
                // Once for a request whose body is not read (a GET's). Again for the same request: lws delivers
                // it over and over when more bytes came pipelined behind the body, and the service thread spins
                // and never sends the answer; such a connection is closed.
                if bodyCompletedIn == transaction { return -1 }
                bodyCompletedIn = transaction
                return 0
            }
            if tooLarge {
                respond(bodyTooLarge, head: false)
            } else {
                dispatch(request)
            }
            bodyCompletedIn = transaction
            return 0
        case LWS_CALLBACK_HTTP_WRITEABLE:
            return writeResponse(wsi)
        case LWS_CALLBACK_CLOSED_HTTP:
            state = .closed
            return 0
        case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
            let request = readRequest(wsi)
            guard let server = loop.server else { return -1 }
            switch server.upgrade(request) {
            case .accept(let delegate, let maxMessageBytes):
                releasePending()
                webSocket = WebSocket(loop: loop, delegate: delegate, maxMessageBytes: maxMessageBytes,
                                      request: request)
                return 0
            case .reject(let response):
                return writeImmediately(wsi, response) ? 1 : -1
            }
        case LWS_CALLBACK_ESTABLISHED:
            webSocket?.opened(wsi)
            return 0
        case LWS_CALLBACK_RECEIVE:
            return webSocket?.receive(wsi, input, length) ?? -1
        case LWS_CALLBACK_SERVER_WRITEABLE:
            return webSocket?.writable(wsi) ?? -1
        case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
            webSocket?.peerClosed(UnsafeRawBufferPointer(start: input, count: input == nil ? 0 : length))
            return 0
        case LWS_CALLBACK_CLOSED:
            webSocket?.closed()
            return 0
        default:
            return lws_callback_http_dummy(wsi, reason, user, input, length)
        }
    }

    override func destroyed() {
        releasePending()
        webSocket?.closed()
        super.destroyed()
    }

    // MARK: - HTTP

    private func dispatch(_ request: HTTPRequest) {
        transaction += 1
        let current = transaction
        state = .waiting(transaction: current)
        guard let server = loop.server else {
            respond(.json(503, ["detail": "not ready"]), head: false)
            return
        }
        let head = request.method == "HEAD"
        Task {
            let response = await server.respond(to: request)
            loop.execute {
                guard case .waiting(let transaction) = self.state, transaction == current else { return }
                self.respond(response, head: head)
            }
        }
    }

    private func respond(_ response: HTTPResponse, head: Bool) {
        releasePending()
        guard let wsi else { return }
        state = .writing(response, headOnly: head, headersSent: false, offset: 0)
        lws_callback_on_writable(wsi)
    }

    private func writeResponse(_ wsi: OpaquePointer) -> Int32 {
        guard case .writing(let response, let headOnly, let headersSent, let offset) = state else { return 0 }
        if !headersSent {
            guard writeHeaders(wsi, response) else { return -1 }
            if headOnly || response.bodyLength == 0 { return completeTransaction(wsi) }
            state = .writing(response, headOnly: headOnly, headersSent: true, offset: 0)
            lws_callback_on_writable(wsi)
            return 0
        }
        let end = min(offset + 64 * 1024, response.bodyLength)
        let isFinal = end == response.bodyLength
        let chunk: Payload
        if let file = response.file {
            guard let read = file.chunk(at: offset, count: end - offset) else { return -1 }
            chunk = read
        } else {
            chunk = Payload(copying: response.body[response.body.startIndex + offset..<response.body.startIndex + end])
        }
        let written = withExtendedLifetime(chunk.owner) {
            lws_write(wsi, chunk.start.assumingMemoryBound(to: UInt8.self), chunk.count,
                      isFinal ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP)
        }
        if written < 0 { return -1 }
        if isFinal { return completeTransaction(wsi) }
        state = .writing(response, headOnly: headOnly, headersSent: true, offset: end)
        lws_callback_on_writable(wsi)
        return 0
    }

    private func completeTransaction(_ wsi: OpaquePointer) -> Int32 {
        state = .idle
        if closeAfterResponse { return -1 }
        return lws_http_transaction_completed(wsi) != 0 ? -1 : 0
    }

    /// Writes the status line and headers; false when they do not fit or the write failed.
    private func writeHeaders(_ wsi: OpaquePointer, _ response: HTTPResponse) -> Bool {
        withHeaderBuffer(response, bodyCapacity: 0) { start, p, end in
            if lws_add_http_common_headers(wsi, UInt32(response.status), response.contentType,
                                           lws_filepos_t(response.bodyLength), &p, end) != 0 { return false }
            guard addHeaders(wsi, response.headers, &p, end) else { return false }
            return lws_finalize_write_http_header(wsi, start, &p, end) == 0
        }
    }

    /// Writes a small HTTP/1.1 response, headers and body in one write, as lws expects when refusing an upgrade
    /// (its header helpers would say HTTP/1.0 at that point, which WebSocket clients refuse).
    private func writeImmediately(_ wsi: OpaquePointer, _ response: HTTPResponse) -> Bool {
        var head = "HTTP/1.1 \(response.status) \(HTTPResponse.reasonPhrase(response.status))\r\n"
        head += "content-type: \(response.contentType)\r\ncontent-length: \(response.body.count)\r\n"
        for header in response.headers { head += "\(header.name.lowercased()): \(header.value)\r\n" }
        let message = Payload(copying: Data(head.utf8) + Data("\r\n".utf8) + response.body)
        return withExtendedLifetime(message.owner) {
            lws_write(wsi, message.start.assumingMemoryBound(to: UInt8.self), message.count, LWS_WRITE_HTTP)
                == message.count
        }
    }

    private func withHeaderBuffer(
        _ response: HTTPResponse, bodyCapacity: Int,
        _ body: (UnsafeMutablePointer<UInt8>, inout UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt8>) -> Bool
    ) -> Bool {
        let extra = response.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        let capacity = EventLoop.requiredHeadroom + 1024 + extra + bodyCapacity
        let buffer = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        defer { buffer.deallocate() }
        let start = buffer + EventLoop.requiredHeadroom
        var p: UnsafeMutablePointer<UInt8>? = start
        return body(start, &p, buffer + capacity)
    }

    private func addHeaders(_ wsi: OpaquePointer, _ headers: [(name: String, value: String)],
                            _ p: inout UnsafeMutablePointer<UInt8>?, _ end: UnsafeMutablePointer<UInt8>) -> Bool
    {
        for header in headers {
            let value = Array(header.value.utf8)
            if lws_add_http_header_by_name(wsi, header.name.lowercased() + ":", value, Int32(value.count), &p, end)
                != 0 { return false }
        }
        return true
    }

    // MARK: - Request parsing

    /// lws calls back with a body only when the request announced one.
    private static func hasBody(_ wsi: OpaquePointer) -> Bool {
        if let length = contentLength(wsi) { return length > 0 }
        return lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0
    }

    /// The announced `content-length` (saturating: a number too long for an Int is huge, not absent).
    private static func contentLength(_ wsi: OpaquePointer) -> Int? {
        var buffer = [CChar](repeating: 0, count: 32)
        guard lws_hdr_copy(wsi, &buffer, Int32(buffer.count), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 else { return nil }
        let text = String(nullTerminated: buffer).trimmingCharacters(in: .whitespaces)
        guard !text.isEmpty, text.allSatisfy(\.isASCII), text.allSatisfy(\.isNumber) else { return 0 }
        return Int(text) ?? .max
    }

    private static let methods = ["GET", "POST", "OPTIONS", "PUT", "PATCH", "DELETE", "CONNECT", "HEAD"]
    private static let standardHeaders: [(String, lws_token_indexes)] = [
        ("host", WSI_TOKEN_HOST), ("content-type", WSI_TOKEN_HTTP_CONTENT_TYPE), ("range", WSI_TOKEN_HTTP_RANGE),
        ("if-none-match", WSI_TOKEN_HTTP_IF_NONE_MATCH), ("if-range", WSI_TOKEN_HTTP_IF_RANGE),
        ("authorization", WSI_TOKEN_HTTP_AUTHORIZATION), ("origin", WSI_TOKEN_ORIGIN),
        ("user-agent", WSI_TOKEN_HTTP_USER_AGENT), ("sec-websocket-protocol", WSI_TOKEN_PROTOCOL),
    ]

    private func readRequest(_ wsi: OpaquePointer) -> HTTPRequest {
        var uri: UnsafeMutablePointer<CChar>?
        var uriLength: Int32 = 0
        let methodIndex = Int(lws_http_get_uri_and_method(wsi, &uri, &uriLength))
        let method = Self.methods.indices.contains(methodIndex) ? Self.methods[methodIndex] : "UNKNOWN"
        let path = uri.map { String(decoding: UnsafeRawBufferPointer(start: $0, count: Int(uriLength)), as: UTF8.self) }
            ?? "/"
        var request = HTTPRequest(method: method, path: path)

        let argsLength = Int(lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_URI_ARGS))
        if argsLength > 0 {
            var buffer = [CChar](repeating: 0, count: argsLength + 1)
            var index: Int32 = 0
            while lws_hdr_copy_fragment(wsi, &buffer, Int32(buffer.count), WSI_TOKEN_HTTP_URI_ARGS, index) >= 0 {
                let fragment = String(nullTerminated: buffer)
                let parts = fragment.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(parts[0])
                if !name.isEmpty, request.query[name] == nil {
                    request.query[name] = parts.count > 1 ? String(parts[1]) : ""
                }
                index += 1
            }
        }
        for (name, token) in Self.standardHeaders {
            let count = Int(lws_hdr_total_length(wsi, token))
            guard count > 0 else { continue }
            var buffer = [CChar](repeating: 0, count: count + 1)
            if lws_hdr_copy(wsi, &buffer, Int32(buffer.count), token) >= 0 {
                request.headers[name] = String(nullTerminated: buffer)
            }
        }
        for name in loop.configuration.customHeaders {
            let key = name + ":"
            let count = Int(lws_hdr_custom_length(wsi, key, Int32(key.utf8.count)))
            guard count >= 0 else { continue }
            var buffer = [CChar](repeating: 0, count: count + 1)
            if lws_hdr_custom_copy(wsi, &buffer, Int32(buffer.count), key, Int32(key.utf8.count)) >= 0 {
                request.headers[name] = String(nullTerminated: buffer)
            }
        }
        return request
    }
}

extension HTTPResponse {
    /// A JSON response (keys sorted, slashes unescaped), not cached.
    public static func json(_ status: Int, _ object: Any) -> HTTPResponse {
        let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data()
        return HTTPResponse(status: status, contentType: "application/json", headers: [("cache-control", "no-store")],
                            body: body)
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 409: "Conflict"
        case 429: "Too Many Requests"
        case 503: "Service Unavailable"
        default: "Error"
        }
    }
}

extension String {
    /// Decodes a NUL-terminated C buffer as UTF-8.
    init(nullTerminated buffer: [CChar]) {
        self.init(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
