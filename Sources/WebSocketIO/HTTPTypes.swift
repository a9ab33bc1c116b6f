public import Foundation

/// An HTTP request as the server saw it. For WebSocket upgrades the body is empty.
public struct HTTPRequest: Sendable {
    /// Upper-case method (`GET`, `POST`, ...).
    public var method: String
    /// Path without the query, as lws normalised it.
    public var path: String
    /// Query arguments, URL-decoded; the first occurrence of a name wins.
    public var query: [String: String]
    /// The headers the loop was configured to capture, by lower-case name.
    public var headers: [String: String]
    public var body: Data

    public init(method: String, path: String, query: [String: String] = [:], headers: [String: String] = [:],
                body: Data = Data()) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
    }
}

/// An HTTP response.
public struct HTTPResponse: Sendable {
    public var status: Int
    public var contentType: String
    public var headers: [(name: String, value: String)]
    public var body: Data
    /// When set, the body is this part of a file instead of ``body``.
    public var file: FileBody?

    public init(status: Int, contentType: String, headers: [(name: String, value: String)] = [], body: Data) {
        self.status = status
        self.contentType = contentType
        self.headers = headers
        self.body = body
    }

    /// A response whose body is `file`, read in chunks as the client takes it rather than loaded into memory.
    public init(status: Int, contentType: String, headers: [(name: String, value: String)] = [], file: FileBody) {
        self.init(status: status, contentType: contentType, headers: headers, body: Data())
        self.file = file
    }

    /// Bytes in the body.
    var bodyLength: Int { file?.length ?? body.count }
}

/// A byte range of an open file, sent as a response body. Opening it when the response is made means a file
/// removed or replaced meanwhile is still sent whole, as it was.
public final class FileBody: Sendable {
    let descriptor: Int32
    public let offset: Int
    public let length: Int

    /// Opens `path` read-only; nil when it cannot be opened.
    public init?(path: String, offset: Int, length: Int) {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return nil }
        self.descriptor = descriptor
        self.offset = offset
        self.length = length
    }

    deinit { close(descriptor) }

    /// Reads `count` bytes at `position` of the range into a payload; nil if the file is shorter than it was.
    func chunk(at position: Int, count: Int) -> Payload? {
        let storage = PayloadStorage(count: count)
        var done = 0
        while done < count {
            let n = pread(descriptor, storage.start + done, count - done, off_t(offset + position + done))
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return nil }
            done += n
        }
        return Payload(owner: storage, start: storage.start, count: count, headroom: EventLoop.requiredHeadroom)
    }
}

/// What the server does with a WebSocket upgrade request.
public enum WebSocketUpgrade {
    /// Accept it; `delegate` handles the connection on the service thread.
    case accept(any WebSocketDelegate, maxMessageBytes: Int)
    /// Refuse it with this HTTP response.
    case reject(HTTPResponse)
}

/// Handles requests of the loop's HTTP server.
public protocol HTTPServerDelegate: AnyObject, Sendable {
    /// Answers an HTTP request; runs as a task off the service thread.
    func respond(to request: HTTPRequest) async -> HTTPResponse
    /// Decides on a WebSocket upgrade. Runs on the service thread and must not block.
    func upgrade(_ request: HTTPRequest) -> WebSocketUpgrade
    /// Looks at a request's head before its body is read: an answer here (a missing or wrong credential) is sent
    /// at once, the body is never read and the connection closes. Runs on the service thread; must not block.
    func refuseBeforeBody(_ request: HTTPRequest) -> HTTPResponse?
}

extension HTTPServerDelegate {
    public func refuseBeforeBody(_ request: HTTPRequest) -> HTTPResponse? { nil }
}

/// A message received on a WebSocket.
public struct InboundMessage: Sendable {
    public var isBinary: Bool
    public var data: Data
}

/// A message to send on a WebSocket.
public enum OutboundMessage: Sendable {
    case text(Payload)
    case binary(Payload)

    /// A text message holding `string`.
    public static func text(_ string: String) -> OutboundMessage { .text(Payload(copying: Array(string.utf8))) }

    /// Bytes of the message's payload.
    public var count: Int {
        switch self {
        case .text(let payload), .binary(let payload): payload.count
        }
    }
}

/// Bytes to send with the headroom lws needs in front of them, so a payload shared by many connections is
/// written without a copy.
///
/// `@unchecked Sendable`: `owner` keeps the memory alive; the payload is not changed after creation, and the
/// headroom in front of it is scratch space used only on the service thread.
public struct Payload: @unchecked Sendable {
    let owner: AnyObject
    let start: UnsafeMutableRawPointer
    public let count: Int

    /// Wraps memory that has at least `headroom` writable bytes before `start` and lives as long as `owner`.
    public init(owner: AnyObject, start: UnsafeMutableRawPointer, count: Int, headroom: Int) {
        precondition(headroom >= EventLoop.requiredHeadroom, "payload needs \(EventLoop.requiredHeadroom) bytes of headroom")
        self.owner = owner
        self.start = start
        self.count = count
    }

    /// Copies `bytes` into a new buffer with headroom.
    public init(copying bytes: some Collection<UInt8>) {
        let storage = PayloadStorage(count: bytes.count)
        UnsafeMutableRawBufferPointer(start: storage.start, count: bytes.count).copyBytes(from: bytes)
        self.init(owner: storage, start: storage.start, count: bytes.count, headroom: EventLoop.requiredHeadroom)
    }
}

final class PayloadStorage {
    let allocation: UnsafeMutableRawPointer
    init(count: Int) { allocation = .allocate(byteCount: EventLoop.requiredHeadroom + count, alignment: 16) }
    deinit { allocation.deallocate() }
    var start: UnsafeMutableRawPointer { allocation + EventLoop.requiredHeadroom }
}

/// Errors of the network layer.
public struct NetworkError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Host, port and path of an `http://` or `ws://` URL.
public struct Endpoint: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var path: String
    /// The address to connect to when it differs from `host` (a host name resolved and checked beforehand); the
    /// Host header still names `host`.
    public var connectAddress: String?

    /// Parses `http://host[:port]/path` or `ws://host[:port]/path`. TLS schemes are not supported.
    public init(_ url: String) throws {
        guard let components = URLComponents(string: url), let scheme = components.scheme?.lowercased(),
              let host = components.host, !host.isEmpty
        else { throw NetworkError("not a URL: \(url)") }
        guard scheme == "http" || scheme == "ws" else {
            throw NetworkError("unsupported scheme \(scheme): only http:// and ws:// are supported")
        }
        self.host = host
        self.port = components.port ?? 80
        let path = components.percentEncodedPath.isEmpty ? "/" : components.percentEncodedPath
        self.path = components.percentEncodedQuery.map { "\(path)?\($0)" } ?? path
    }

    /// `host:port`, as sent in the Host header.
    public var hostHeader: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
