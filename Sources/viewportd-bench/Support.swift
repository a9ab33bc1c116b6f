import Foundation
import Synchronization
import ViewportCore
import WebSocketIO

/// The bench's own client-side loop (HTTP requests, viewers, direct screencasts): one lws service thread.
let clientLoop: EventLoop = {
    let loop = try! EventLoop(.init(port: nil))
    loop.start(server: nil)
    return loop
}()

struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// The sequence number and capture time (µs) in a binary viewer message's header (`VPF1` JPEG or `VPH1` H.264: the
/// same offsets), or nil for a message too short to hold one.
func frameHeader(_ data: Data) -> (sequence: UInt64, captured: UInt64)? {
    guard data.count >= 24 else { return nil }
    return data.withUnsafeBytes { p in
        (UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 4, as: UInt64.self)),
         UInt64(bigEndian: p.loadUnaligned(fromByteOffset: 12, as: UInt64.self)))
    }
}

/// The DevTools WebSocket URL of the first page target of the Chromium whose DevTools answer at `browser`.
func pageTarget(of browser: String) async throws -> String {
    let (_, body) = try await clientLoop.httpRequest("GET", browser + "/json/list")
    let pages = (try JSONSerialization.jsonObject(with: body) as? [[String: Any]] ?? []).filter { $0["type"] as? String == "page" }
    guard let url = pages.first?["webSocketDebuggerUrl"] as? String else { throw BenchError("no page target") }
    return url
}

func json(_ data: Data) -> [String: Any] { (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:] }

/// `viewportd serve` as a child process on a free loopback port, configured through the environment.
final class DaemonProcess: @unchecked Sendable {
    let process = Process()
    /// The address it listens on.
    let host: String
    let port: Int
    let apiKey = "bench-key-0123456789abcdef"
    private let stateDir: String

    private init(host: String, port: Int, stateDir: String) {
        self.host = host
        self.port = port
        self.stateDir = stateDir
    }

    /// A daemon with the bench's settings, and those of the config file `yaml` when given, listening on `host`.
    static func start(config yaml: String? = nil, host: String = "127.0.0.1") async throws -> DaemonProcess {
        let port = try freeLoopbackPort()
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-bench-\(UUID().uuidString)").path
        let daemon = DaemonProcess(host: host, port: port, stateDir: stateDir)
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("viewportd")
        daemon.process.executableURL = binary
        daemon.process.arguments = ["serve"]
        if let yaml {
            let file = stateDir + ".yaml"
            try yaml.write(toFile: file, atomically: true, encoding: .utf8)
            daemon.process.arguments? += ["--config", file]
        }
        var environment = ProcessInfo.processInfo.environment
        environment["VIEWPORTD_LISTEN"] = "\(host):\(port)"
        environment["VIEWPORTD_STATE_DIR"] = stateDir
        environment["VIEWPORTD_API_KEY"] = daemon.apiKey
        environment["VIEWPORTD_ORGANIZATION_ID"] = "org_bench"
        environment["VIEWPORTD_LOG_LEVEL"] = "warning"
        // Every viewer of a benchmark connects at once from 127.0.0.1, and each counts as unauthenticated
        // until its handshake is answered.
        environment["VIEWPORTD_LIMITS_UNAUTHENTICATED_PER_ADDRESS"] = "10000"
        daemon.process.environment = environment
        try daemon.process.run()
        for _ in 0..<200 {
            if let (status, _) = try? await clientLoop.httpRequest("GET", "http://\(host):\(port)/healthz", timeout: 1),
               status == 200 { return daemon }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw BenchError("viewportd (\(binary.path)) did not answer on port \(port)")
    }

    /// The JSON object a 2xx answer of the API holds; throws on any other status.
    func api(_ method: String, _ path: String, _ body: [String: Any] = [:]) async throws -> [String: Any] {
        try await apiJSON(method, path, body) as? [String: Any] ?? [:]
    }

    /// The JSON value (object or array) a 2xx answer of the API holds; throws on any other status.
    func apiJSON(_ method: String, _ path: String, _ body: [String: Any] = [:]) async throws -> Any {
        let data = try JSONSerialization.data(withJSONObject: body)
        let (status, answer) = try await clientLoop.httpRequest(
            method, "http://\(host):\(port)\(path)", headers: [("x-api-key", apiKey), ("content-type", "application/json")],
            body: method == "POST" ? data : nil)
        guard (200..<300).contains(status) else {
            throw BenchError("\(method) \(path): \(status) \(String(decoding: answer, as: UTF8.self))")
        }
        return (try? JSONSerialization.jsonObject(with: answer)) ?? [:]
    }

    func createSession(browserAddress: String) async throws -> String {
        let session = try await api("POST", "/v1/browser_sessions", ["browser_address": browserAddress])
        guard let id = session["browser_session_id"] as? String else { throw BenchError("no session id") }
        for _ in 0..<200 {
            if try await api("GET", "/v1/browser_sessions/\(id)")["status"] as? String == "running" { return id }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw BenchError("session \(id) did not attach")
    }

    func closeSession(_ id: String) async throws -> [String: Any] { try await api("POST", "/v1/browser_sessions/\(id)/close") }

    func viewerURL(_ id: String) async throws -> String {
        let token = try await api("POST", "/v1/browser_sessions/\(id)/viewer_tokens", ["ttl_seconds": 3600])["token"] as? String
        return "ws://\(host):\(port)/stream/browser/\(id)?token=\(token ?? "")"
    }

    /// A view-only VNC password for the session's screen: (port, password).
    func vncPassword(_ id: String) async throws -> (Int, String) {
        let answer = try await api("POST", "/v1/browser_sessions/\(id)/vnc", ["ttl_seconds": 3600])
        guard let port = answer["port"] as? Int, let password = answer["password"] as? String else {
            throw BenchError("no VNC screen: \(answer)")
        }
        return (port, password)
    }

    /// The Prometheus text of /metrics.
    func metrics() async throws -> String {
        let (_, body) = try await clientLoop.httpRequest("GET", "http://\(host):\(port)/metrics")
        return String(decoding: body, as: UTF8.self)
    }

    func cpuSeconds() -> Double { ProcessTree.cpuSeconds(pid: process.processIdentifier) }

    func peakRSSMegabytes() -> Int { Int(peakRSSMiB(of: "\(process.processIdentifier)")) }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExited()
        }
        try? FileManager.default.removeItem(atPath: stateDir)
        try? FileManager.default.removeItem(atPath: stateDir + ".yaml")
    }
}

/// A loopback TCP port free now.
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard bound else { throw BenchError("no free port") }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// The peak resident set size (VmHWM) of process `pid` ("self": this one) so far, in MiB.
func peakRSSMiB(of pid: String = "self") -> Double {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmHWM:") } ?? ""
    return Double(line.split(separator: " ").dropFirst().first ?? "0").map { $0 / 1024 } ?? 0
}

/// CPU time of a process and its descendants, from /proc.
struct ProcessTree {
    let root: Int32

    static func cpuSeconds(pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command: state(0) ppid(1) ... utime(11) stime(12)
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    private func descendants() -> [Int32] {
        var parent: [Int32: Int32] = [:]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry), let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { continue }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            if fields.count > 1, let ppid = Int32(fields[1]) { parent[pid] = ppid }
        }
        return parent.keys.filter { pid in
            var current: Int32? = pid
            while let p = current, p > 1 {
                if p == root { return true }
                current = parent[p]
            }
            return false
        }
    }

    /// CPU of the tree over `seconds`, in % of one core.
    func cpuPercent(over seconds: Double) async throws -> Double {
        let pids = descendants()
        let before = Dictionary(uniqueKeysWithValues: pids.map { ($0, Self.cpuSeconds(pid: $0)) })
        try await Task.sleep(for: .seconds(seconds))
        let after = descendants()
        let used = after.reduce(0.0) { $0 + max(0, Self.cpuSeconds(pid: $1) - (before[$1] ?? 0)) }
        return 100 * used / seconds
    }
}

/// N WebSocket viewers of one session on the bench's client loop, measuring relay latency and skipped frames.
final class ViewerClients: @unchecked Sendable {
    struct Report {
        var delivered: (min: Int, median: Int, max: Int)
        var skipped: (min: Int, median: Int, max: Int)
        var viewersWithoutGaps: Int
        var latencies: [UInt32]
        func latency(_ quantile: Double) -> Double {
            guard !latencies.isEmpty else { return .nan }
            return Double(latencies[min(latencies.count - 1, Int(Double(latencies.count) * quantile))])
        }
    }

    private struct Stats {
        var open = 0
        var delivered: [Int]
        var skipped: [Int]
        var lastSequence: [UInt64]
        var latencies: [UInt32] = []
    }

    private let stats: Mutex<Stats>
    private var sockets: [WebSocket] = []

    init(count: Int, url: String) throws {
        stats = Mutex(Stats(delivered: Array(repeating: 0, count: count), skipped: Array(repeating: 0, count: count),
                            lastSequence: Array(repeating: 0, count: count)))
        for index in 0..<count {
            sockets.append(try clientLoop.connectWebSocket(to: url, delegate: Viewer(clients: self, index: index),
                                                           maxMessageBytes: 16 << 20))
        }
    }

    func waitUntilOpen(timeout: Double) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while stats.withLock({ $0.open }) < sockets.count {
            guard Date() < deadline else { throw BenchError("only \(stats.withLock { $0.open }) of \(sockets.count) viewers connected") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func reset() {
        stats.withLock { s in
            for i in s.delivered.indices { s.delivered[i] = 0; s.skipped[i] = 0 }
            s.latencies.removeAll(keepingCapacity: true)
        }
    }

    func report() -> Report {
        stats.withLock { s in
            func spread(_ values: [Int]) -> (Int, Int, Int) {
                let sorted = values.sorted()
                return (sorted.first ?? 0, sorted.isEmpty ? 0 : sorted[sorted.count / 2], sorted.last ?? 0)
            }
            return Report(delivered: spread(s.delivered), skipped: spread(s.skipped),
                          viewersWithoutGaps: s.skipped.filter { $0 == 0 }.count, latencies: s.latencies.sorted())
        }
    }

    func close() { for socket in sockets { socket.close(code: 1000, reason: "bench done") } }

    fileprivate func opened() { stats.withLock { $0.open += 1 } }

    fileprivate func received(_ index: Int, sequence: UInt64, latency: UInt64) {
        stats.withLock { s in
            let last = s.lastSequence[index]
            if last != 0, sequence > last + 1 { s.skipped[index] += Int(sequence - last - 1) }
            s.lastSequence[index] = sequence
            s.delivered[index] += 1
            s.latencies.append(UInt32(clamping: latency))
        }
    }

    private final class Viewer: WebSocketDelegate {
        let clients: ViewerClients
        let index: Int
        init(clients: ViewerClients, index: Int) {
            self.clients = clients
            self.index = index
        }
        func webSocketDidOpen(_ socket: WebSocket) { clients.opened() }
        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            let now = wallClockMicros()
            guard message.isBinary, let (sequence, captured) = frameHeader(message.data) else { return }
            clients.received(index, sequence: sequence, latency: now > captured ? now - captured : 0)
        }
        func nextMessage(for socket: WebSocket) -> OutboundMessage? { nil }
        func hasMessages(for socket: WebSocket) -> Bool { false }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {}
    }
}

/// The anchor: N separate CDP screencasts of one page, each acking its own frames (one screencast per viewer).
final class DirectScreencasts: @unchecked Sendable {
    private let frames: Mutex<[Int]>
    private var sockets: [WebSocket] = []

    init(count: Int, browser: String) async throws {
        frames = Mutex(Array(repeating: 0, count: count))
        let url = try await pageTarget(of: browser)
        for index in 0..<count {
            sockets.append(try clientLoop.connectWebSocket(to: url, delegate: Subscriber(owner: self, index: index),
                                                           maxMessageBytes: 64 << 20))
        }
    }

    func reset() { frames.withLock { for i in $0.indices { $0[i] = 0 } } }
    func medianFrames() -> Double { frames.withLock { Double($0.sorted()[$0.count / 2]) } }
    func close() { for socket in sockets { socket.close(code: 1000, reason: "bench done") } }
    fileprivate func counted(_ index: Int) { frames.withLock { $0[index] += 1 } }

    private final class Subscriber: WebSocketDelegate {
        let owner: DirectScreencasts
        let index: Int
        var outbox: [OutboundMessage] = []
        var nextID = 1
        init(owner: DirectScreencasts, index: Int) {
            self.owner = owner
            self.index = index
        }
        func send(_ socket: WebSocket, _ method: String, _ params: [String: Any]) {
            let data = try! JSONSerialization.data(withJSONObject: ["id": nextID, "method": method, "params": params])
            nextID += 1
            outbox.append(.text(Payload(copying: data)))
            socket.requestWrite()
        }
        func webSocketDidOpen(_ socket: WebSocket) {
            send(socket, "Page.startScreencast", ["format": "jpeg", "quality": 75, "maxWidth": 1280, "maxHeight": 720])
        }
        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            let object = json(message.data)
            guard object["method"] as? String == "Page.screencastFrame",
                  let params = object["params"] as? [String: Any], let session = params["sessionId"] else { return }
            send(socket, "Page.screencastFrameAck", ["sessionId": session])
            owner.counted(index)
        }
        func nextMessage(for socket: WebSocket) -> OutboundMessage? { outbox.isEmpty ? nil : outbox.removeFirst() }
        func hasMessages(for socket: WebSocket) -> Bool { !outbox.isEmpty }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {}
    }
}
