/// The RFB 3.8 handshake the noVNC relay performs between its WebSocket client and the session's VNC screen,
/// without sockets: bytes in from either side, steps out. The client is offered security type None; the screen's
/// VncAuth challenge is answered by `respond` (the relay's minted password).
///
/// Versions pass through (both must be RFB 003.008), the screen's security types (which must include VncAuth, 2)
/// become [None] for the client, the client's choice (which must be None, 1) becomes VncAuth, the challenge is
/// answered here and the security result passes through. Then ``isRelaying`` is true and whatever either side sent
/// ahead comes out as the last steps; later bytes pass through unchanged.
///
/// Every input is hostile: each side may have at most ``maxBuffered`` bytes waiting for the handshake to move on,
/// and any violation ends in one ``Step/fail(_:)``, after which all input is ignored.
public struct RelayHandshake {
    public enum Stage: Equatable, Sendable {
        case serverVersion, clientVersion, securityTypes, clientChoice, challenge, result, relaying, failed
    }

    public enum Step: Equatable, Sendable {
        /// Bytes for the WebSocket client.
        case toClient([UInt8])
        /// Bytes for the VNC screen.
        case toServer([UInt8])
        /// The handshake failed: close both sides. `reason` is fit for a log line and a close frame.
        case fail(String)
    }

    /// Most bytes a side may send ahead of the handshake (the real handshake needs 12 + 256 + 16 + 4 at most).
    public static let maxBuffered = 4096
    static let version = Array("RFB 003.008\n".utf8)

    public private(set) var stage = Stage.serverVersion
    public var isRelaying: Bool { stage == .relaying }
    private var fromServer: [UInt8] = []
    private var fromClient: [UInt8] = []
    /// The VncAuth response to a 16-byte challenge, or nil when it cannot be computed.
    private let respond: ([UInt8]) -> [UInt8]?

    public init(respond: @escaping (_ challenge: [UInt8]) -> [UInt8]?) { self.respond = respond }

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
                steps.append(.toServer(version))
                stage = .securityTypes
            case .securityTypes:
                guard let count = fromServer.first else { return steps }
                guard count > 0 else { return fail("the VNC screen refused the connection") }
                guard let types = take(1 + Int(count), from: &fromServer) else { return steps }
                guard types.dropFirst().contains(2) else { return fail("the VNC screen does not offer VNC authentication") }
                steps.append(.toClient([1, 1]))  // one type: None
                stage = .clientChoice
            case .clientChoice:
                guard let choice = take(1, from: &fromClient) else { return steps }
                guard choice == [1] else { return fail("the client must choose security type None") }
                steps.append(.toServer([2]))  // VncAuth
                stage = .challenge
            case .challenge:
                guard let challenge = take(16, from: &fromServer) else { return steps }
                guard let response = respond(challenge), response.count == 16, response != challenge else {
                    return fail("DES is not available (libgcrypt FIPS mode?)")
                }
                steps.append(.toServer(response))
                stage = .result
            case .result:
                guard let result = take(4, from: &fromServer) else { return steps }
                steps.append(.toClient(result))
                guard result == [0, 0, 0, 0] else { return fail("the VNC screen refused the relay's password") }
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
    /// the client; bits 0-6: the length) and that many bytes (fewer at the end), against a handshake whose
    /// challenge response is fixed. Traps when an invariant breaks: at most one failure, nothing after it, never
    /// more than `maxBuffered` bytes waiting, and once relaying, bytes pass through unchanged.
    public static func fuzz(_ script: UnsafeRawBufferPointer) {
        var handshake = RelayHandshake { challenge in challenge.map { $0 ^ 0x5A } }
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
