/// The RFB 3.8 handshake the noVNC relay performs with its WebSocket client, without sockets: bytes in from either
/// side, steps out. The session's screen takes the relay's connection as authenticated already (viewportd checked
/// the viewer's credential, see `VNCBridge.attach`): it sends its version and then waits for ClientInit. So the
/// screen's version passes to the client, while the client's version and its choice of security type (None, the
/// only one offered) are answered here and never reach the screen. Then ``isRelaying`` is true and whatever either
/// side sent ahead comes out as the last steps; later bytes pass through unchanged.
///
/// Every input is hostile: each side may have at most ``maxBuffered`` bytes waiting for the handshake to move on,
/// and any violation ends in one ``Step/fail(_:)``, after which all input is ignored.
public struct RelayHandshake {
    public enum Stage: Equatable, Sendable {
        case serverVersion, clientVersion, clientChoice, relaying, failed
    }

    public enum Step: Equatable, Sendable {
        /// Bytes for the WebSocket client.
        case toClient([UInt8])
        /// Bytes for the VNC screen.
        case toServer([UInt8])
        /// The handshake failed: close both sides. `reason` is fit for a log line and a close frame.
        case fail(String)
    }

    /// Most bytes a side may send ahead of the handshake (the real handshake needs 12 + 1 at most).
    public static let maxBuffered = 4096
    static let version = Array("RFB 003.008\n".utf8)

    public private(set) var stage = Stage.serverVersion
    public var isRelaying: Bool { stage == .relaying }
    private var fromServer: [UInt8] = []
    private var fromClient: [UInt8] = []

    public init() {}

    /// Bytes the VNC screen sent.
    public mutating func serverSent(_ bytes: some Collection<UInt8>) -> [Step] {
        switch stage {
        case .relaying: return bytes.isEmpty ? [] : [.toClient(Array(bytes))]
        case .failed: return []
        default:
            fromServer += bytes
            return advance()
        }
    }

    /// Bytes the WebSocket client sent.
    public mutating func clientSent(_ bytes: some Collection<UInt8>) -> [Step] {
        switch stage {
        case .relaying: return bytes.isEmpty ? [] : [.toServer(Array(bytes))]
        case .failed: return []
        default:
            fromClient += bytes
            return advance()
        }
    }

    /// Moves on as far as the bytes received allow.
    private mutating func advance() -> [Step] {
        var steps: [Step] = []
        func fail(_ reason: String) -> [Step] {
            stage = .failed
            fromServer = []
            fromClient = []
            return steps + [.fail(reason)]
        }
        guard fromServer.count <= Self.maxBuffered else { return fail("the VNC screen sent too much during the handshake") }
        guard fromClient.count <= Self.maxBuffered else { return fail("the client sent too much during the handshake") }
        while true {
            switch stage {
            case .serverVersion:
                guard let version = take(12, from: &fromServer) else { return steps }
                guard version == Self.version else { return fail("the VNC screen does not speak RFB 3.8") }
                steps.append(.toClient(version))
                stage = .clientVersion
            case .clientVersion:
                guard let version = take(12, from: &fromClient) else { return steps }
                guard version == Self.version else { return fail("the client must speak RFB 3.8") }
                steps.append(.toClient([1, 1]))  // one security type: None
                stage = .clientChoice
            case .clientChoice:
                guard let choice = take(1, from: &fromClient) else { return steps }
                guard choice == [1] else { return fail("the client must choose security type None") }
                steps.append(.toClient([0, 0, 0, 0]))  // SecurityResult: OK
                stage = .relaying
                if !fromServer.isEmpty { steps.append(.toClient(fromServer)) }
                if !fromClient.isEmpty { steps.append(.toServer(fromClient)) }
                fromServer = []
                fromClient = []
                return steps
            case .relaying, .failed:
                return steps
            }
        }
    }

    private func take(_ count: Int, from buffer: inout [UInt8]) -> [UInt8]? {
        guard buffer.count >= count else { return nil }
        defer { buffer.removeFirst(count) }
        return Array(buffer.prefix(count))
    }

    /// Entry point for fuzzers: plays `script` as chunks, each a header byte (bit 7 set: from the screen, else from
    /// the client; bits 0-6: the length) and that many bytes (fewer at the end). Traps when an invariant breaks:
    /// at most one failure, nothing after it, never more than `maxBuffered` bytes waiting, and once relaying, bytes
    /// pass through unchanged.
    public static func fuzz(_ script: UnsafeRawBufferPointer) {
        var handshake = RelayHandshake()
        var index = 0
        var failed = false
        while index < script.count {
            let header = script[index]
            let end = min(script.count, index + 1 + Int(header & 0x7F))
            let chunk = Array(script[(index + 1)..<end])
            index = end
            let relaying = handshake.isRelaying
            let steps = header & 0x80 != 0 ? handshake.serverSent(chunk) : handshake.clientSent(chunk)
            precondition(!failed || steps.isEmpty, "steps after a failure")
            let failures = steps.filter { if case .fail = $0 { true } else { false } }.count
            precondition(failures <= 1 && (failures == 0 || steps.last.map { if case .fail = $0 { true } else { false } } == true))
            failed = failed || failures == 1
            precondition(handshake.fromServer.count <= maxBuffered && handshake.fromClient.count <= maxBuffered)
            if relaying {
                precondition(steps == (chunk.isEmpty ? [] : [header & 0x80 != 0 ? .toClient(chunk) : .toServer(chunk)]))
            }
        }
    }
}
