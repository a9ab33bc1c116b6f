import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Logging
import Testing
@testable import ViewportDaemon

/// API keys of the two test organizations.
let keyA = "test-key-org-a-0123456789"
let keyB = "test-key-org-b-0123456789"

enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func url(_ name: String) -> String { directory.appendingPathComponent(name).absoluteString }
}

/// A daemon running in this process on a free loopback port with a fresh (or given) state directory.
final class TestDaemon: Sendable {
    let daemon: Daemon
    let stateDir: String
    private let task: Task<Void, any Error>

    var base: String { "http://\(daemon.config.listen.host):\(daemon.port)" }
    func streamURL(_ id: String, query: String = "") -> String {
        "ws://\(daemon.config.listen.host):\(daemon.port)/stream/browser/\(id)\(query.isEmpty ? "" : "?" + query)"
    }

    static func start(stateDir: String? = nil, _ configure: (inout Config) -> Void = { _ in }) async throws -> TestDaemon {
        var config = Config()
        config.listen.port = 0
        config.stateDir = stateDir ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("viewportd-test-\(UUID().uuidString)").path
        config.apiKeys = [.init(key: keyA, organizationID: "org_a"), .init(key: keyB, organizationID: "org_b")]
        // The tests' webhook receivers listen on loopback, which webhooks reach only when the operator lists it.
        config.network.webhookAllow = ["127.0.0.0/8"]
        configure(&config)
        var logger = Logger(label: "viewportd-test")
        logger.logLevel = .warning
        let daemon = try buildDaemon(config, logger: logger)
        return TestDaemon(daemon: daemon, stateDir: config.stateDir, task: Task { try await daemon.run(signals: []) })
    }

    private init(daemon: Daemon, stateDir: String, task: Task<Void, any Error>) {
        self.daemon = daemon
        self.stateDir = stateDir
        self.task = task
    }

    /// Graceful shutdown, waiting until every service has stopped.
    func stop() async {
        await daemon.shutdown()
        _ = try? await task.value
    }

    /// Registers a session for `browser` as org A and waits until it is attached.
    func createSession(_ browser: Chromium, key: String = keyA) async throws -> String {
        let (status, body) = try await request("POST", "/v1/browser_sessions", key: key,
                                               json: ["browser_address": browser.address])
        try #require(status == 201, "create session: \(status) \(body)")
        let id = try #require(body["browser_session_id"].string)
        try await eventually("session \(id) attached") {
            try await request("GET", "/v1/browser_sessions/\(id)", key: key).1["status"].string == "running"
        }
        return id
    }

    /// Sends a REST request with Foundation's HTTP client and decodes the JSON answer.
    func request(_ method: String, _ path: String, key: String? = keyA, json: Any? = nil, rawBody: Data? = nil)
        async throws -> (Int, JSON)
    {
        try await requestJSON(method, base + path, key: key, json: json, rawBody: rawBody)
    }
}

/// Runs `body` against a fresh daemon (see ``TestDaemon/start(stateDir:_:)``) and stops it, awaited, however `body`
/// ends: a failing test leaves no daemon running into the next one.
func withDaemon<T>(stateDir: String? = nil, _ configure: (inout Config) -> Void = { _ in },
                   _ body: (TestDaemon) async throws -> T) async throws -> T
{
    let daemon = try await TestDaemon.start(stateDir: stateDir, configure)
    let result: T
    do { result = try await body(daemon) } catch {
        await daemon.stop()
        throw error
    }
    await daemon.stop()
    return result
}

/// A REST request and its JSON answer (null when the body is not JSON).
func requestJSON(_ method: String, _ url: String, key: String? = keyA, json: Any? = nil, rawBody: Data? = nil)
    async throws -> (Int, JSON)
{
    let (status, data) = try await httpRaw(method, url, key: key, json: json, rawBody: rawBody)
    return (status, (try? JSONDecoder().decode(JSON.self, from: data)) ?? .null)
}

func httpRaw(_ method: String, _ url: String, key: String? = nil, json: Any? = nil, rawBody: Data? = nil)
    async throws -> (Int, Data)
{
    var request = URLRequest(url: URL(string: url)!)
    request.httpMethod = method
    if let key { request.setValue(key, forHTTPHeaderField: "x-api-key") }
    if let json {
        request.httpBody = try JSONSerialization.data(withJSONObject: json)
        request.setValue("application/json", forHTTPHeaderField: "content-type")
    } else if let rawBody {
        request.httpBody = rawBody
    }
    request.timeoutInterval = 90
    do {
        let (data, response) = try await URLSession.shared.data(for: request)
        return ((response as! HTTPURLResponse).statusCode, data)
    } catch {
        throw DaemonError("\(method) \(url): \(error)")
    }
}

/// Polls `condition` until it holds or `timeout` seconds pass.
func eventually(_ what: String, timeout: Double = 15, _ condition: () async throws -> Bool) async throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(100))
    }
    Issue.record("timed out waiting for \(what)")
    throw CancellationError()
}

/// The real clients of Fixtures/client.py.
enum Client {
    static let python: String = {
        if let configured = ProcessInfo.processInfo.environment["VIEWPORTD_TEST_PYTHON"] { return configured }
        let venv = Fixtures.directory.appendingPathComponent("../../../.venv/bin/python").standardized.path
        return FileManager.default.isExecutableFile(atPath: venv) ? venv : "/usr/bin/python3"
    }()

    /// Runs viewers (`client.py watch`) and returns what each saw.
    /// H.264 viewers write their access units to `h264Out`.INDEX.h264 (Annex B); `pause` stops reading for a while.
    static func watch(_ url: String, key: String? = nil, viewers: Int = 1, seconds: Double = 3, frames: Int = 0,
                      send: [String] = [], sendBytes: Int = 0, h264Out: String? = nil,
                      pause: (after: Double, for: Double)? = nil) async throws -> [ViewerResult]
    {
        var arguments = ["watch", url, "--viewers", "\(viewers)", "--seconds", "\(seconds)", "--frames", "\(frames)"]
        if let h264Out { arguments += ["--h264-out", h264Out] }
        if let pause { arguments += ["--pause-after", "\(pause.after)", "--pause-for", "\(pause.for)"] }
        if let key { arguments += ["--header", "x-api-key:\(key)"] }
        for message in send { arguments += ["--send", message] }
        if sendBytes > 0 { arguments += ["--send-bytes", "\(sendBytes)"] }
        return try JSONDecoder().decode([ViewerResult].self, from: try await run(arguments))
    }

    /// Sends one DevTools command to the browser (or to the page whose URL contains `page`).
    /// `launcher` runs the client where the browser's DevTools port is, e.g. `ip netns exec <namespace>`.
    /// `onNewDocument`: first reload the page with this script run before the page's own.
    static func cdp(_ browser: Chromium, _ method: String, _ params: [String: Any] = [:], page: String? = nil,
                    launcher: [String] = [], onNewDocument: String? = nil) async throws -> JSON
    {
        var arguments = ["cdp", browser.address, method, String(decoding: try JSONSerialization.data(withJSONObject: params), as: UTF8.self)]
        if let page { arguments += ["--page", page] }
        if let onNewDocument { arguments += ["--on-new-document", onNewDocument] }
        return try JSONDecoder().decode(JSON.self, from: try await runScript("client.py", arguments, launcher: launcher))["result"]
    }

    /// Starts a viewer that completes the handshake and then never reads.
    static func startStalledViewer(_ url: String, key: String, seconds: Double) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [Fixtures.directory.appendingPathComponent("client.py").path, "stall", url,
                             "--header", "x-api-key:\(key)", "--seconds", "\(seconds)"]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return process
    }

    static func run(_ arguments: [String]) async throws -> Data { try await runScript("client.py", arguments) }

    /// Runs a Python fixture to its end and returns what it printed; throws if it failed, or if it still runs after
    /// 300 s (then it is killed: a client that hangs fails its test instead of hanging the run).
    static func runScript(_ script: String, _ arguments: [String], launcher: [String] = []) async throws -> Data {
        let limit = 300.0
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                let command = launcher + [python, Fixtures.directory.appendingPathComponent(script).path] + arguments
                let process = Process()
                process.executableURL = URL(fileURLWithPath: command[0])
                process.arguments = Array(command.dropFirst())
                let output = Pipe()
                process.standardOutput = output
                do { try process.run() } catch {
                    continuation.resume(throwing: error)
                    return
                }
                let overdue = DispatchWorkItem { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
                DispatchQueue.global().asyncAfter(deadline: .now() + limit, execute: overdue)
                let data = readToEnd(output.fileHandleForReading.fileDescriptor)
                process.waitUntilExited()
                overdue.cancel()
                if process.terminationReason == .uncaughtSignal, process.terminationStatus == SIGKILL {
                    continuation.resume(throwing: DaemonError("\(script) \(arguments.first ?? "") still ran after \(limit) s"))
                } else if process.terminationStatus != 0 {
                    continuation.resume(throwing: DaemonError("\(script) \(arguments.first ?? "") exited with \(process.terminationStatus)"))
                } else {
                    continuation.resume(returning: data)
                }
            }
        }
    }
}

/// What one viewer of `client.py watch` saw.
struct ViewerResult: Decodable {
    var handshakeStatus: Int
    var body: String?
    var hello: JSON?
    var texts: [JSON]
    var frames: Int
    var sequences: [UInt64]
    var sizes: [[Int]]
    var pages: [String]
    var framesPerPage: [Int]
    var jsonFrames: [JSON]
    var closeCode: Int?
    var closeReason: String?
    var closedAfter: Double?
    /// An H.264 viewer's pictures.
    var h264: H264Result?

    /// What `client.py` checked of an H.264 viewer's pictures.
    struct H264Result: Decodable {
        /// Per picture: a key frame.
        var keys: [Bool]
        /// Per picture: the index in `configs` of the configuration it came under.
        var configIndex: [Int]
        /// Header or NAL length errors.
        var errors: [String]
        /// Each configuration the viewer was given (`hello`, then `config` messages): codec, coded and source size.
        var configs: [JSON]
        /// The Annex B file of its pictures.
        var file: String?

        enum CodingKeys: String, CodingKey { case keys, configIndex = "config_index", errors, configs, file }
    }

    enum CodingKeys: String, CodingKey {
        case handshakeStatus = "handshake_status", body, hello, texts, frames, sequences, sizes, pages
        case framesPerPage = "frames_per_page", jsonFrames = "json_frames", closeCode = "close_code"
        case closeReason = "close_reason", closedAfter = "closed_after", h264
    }

    /// Status messages, in order.
    var statuses: [String] { texts.filter { $0["type"].string == "status" }.compactMap { $0["status"].string } }

    /// The sequence numbers of its frames, binary or JSON.
    var frameSequences: [UInt64] {
        sequences.isEmpty ? jsonFrames.compactMap { $0["sequence"].int.map(UInt64.init) } : sequences
    }

    /// Its text messages of `type`, in order.
    func texts(_ type: String) -> [JSON] { texts.filter { $0["type"].string == type } }
}

/// Whether every number is greater than the one before it.
func increasing(_ numbers: [UInt64]) -> Bool { zip(numbers, numbers.dropFirst()).allSatisfy { $0 < $1 } }

/// A decoded JSON value, for reading answers in tests.
enum JSON: Decodable, Equatable, CustomStringConvertible {
    case null, bool(Bool), number(Double), string(String), array([JSON]), object([String: JSON])

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSON].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSON].self)) }
    }

    subscript(key: String) -> JSON { if case .object(let o) = self { o[key] ?? .null } else { .null } }
    subscript(index: Int) -> JSON { if case .array(let a) = self, a.indices.contains(index) { a[index] } else { .null } }
    var string: String? { if case .string(let s) = self { s } else { nil } }
    var int: Int? { if case .number(let n) = self { Int(exactly: n) } else { nil } }
    var double: Double? { if case .number(let n) = self { n } else { nil } }
    var bool: Bool? { if case .bool(let b) = self { b } else { nil } }
    var array: [JSON] { if case .array(let a) = self { a } else { [] } }
    var isNull: Bool { self == .null }
    var description: String {
        switch self {
        case .null: "null"
        case .bool(let b): "\(b)"
        case .number(let n): "\(n)"
        case .string(let s): "\"\(s)\""
        case .array(let a): "[\(a.map(\.description).joined(separator: ","))]"
        case .object(let o): "{\(o.map { "\"\($0)\":\($1)" }.joined(separator: ","))}"
        }
    }
}

/// Reads a pipe to its end, retrying reads a signal interrupted (FileHandle traps on EINTR).
func readToEnd(_ fd: Int32) -> Data {
    var data = Data()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &buffer, buffer.count)
        if count > 0 { data.append(buffer, count: count) }
        else if count < 0, errno == EINTR { continue }
        else { return data }
    }
}
