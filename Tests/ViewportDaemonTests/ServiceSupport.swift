import Foundation
import NetworkNamespaces
import Testing
@testable import ViewportDaemon

/// The `viewportd` executable next to the test bundle (`swift build --build-tests` builds both).
let viewportdBinary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    .appendingPathComponent("viewportd").path

/// Runs `executable` with `arguments` (and `environment` added) to its end; returns its exit status and its
/// standard output and error together.
func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:]) throws
    -> (status: Int32, output: String)
{
    let (status, output) = try runProcess(executable, arguments, environment: environment, stdout: true, stderr: true)
    return (status, String(decoding: output, as: UTF8.self))
}

/// Runs `executable` to its end; returns its exit status and what it printed on the chosen streams.
func runProcess(_ executable: String, _ arguments: [String], environment: [String: String] = [:], stdout: Bool,
                stderr: Bool) throws -> (status: Int32, output: Data)
{
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let pipe = Pipe()
    process.standardOutput = stdout ? pipe : FileHandle.nullDevice
    process.standardError = stderr ? pipe : FileHandle.nullDevice
    try process.run()
    let output = readToEnd(pipe.fileHandleForReading.fileDescriptor)
    process.waitUntilExited()
    return (process.terminationStatus, output)
}

/// Fixtures/proxy.py: a TCP proxy from a free loopback port to the host and port of `url`, whose connections can be
/// dropped; run by `launcher` (e.g. inside a ``ClusterNet`` host, on its loopback).
final class LoopbackProxy: Sendable {
    let process: Process
    let port: Int

    init(to url: String, launcher: [String] = []) throws {
        let target = try #require(URL(string: url))
        let command = launcher + [Client.python, Fixtures.directory.appendingPathComponent("proxy.py").path,
                                  "\(target.host ?? "127.0.0.1"):\(target.port ?? 0)"]
        process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        var line = Data()
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != UInt8(ascii: "\n") { line.append(byte) }
        port = Int(String(decoding: line, as: UTF8.self)) ?? 0
        if port == 0 { kill(process.processIdentifier, SIGKILL) }
        try #require(port > 0, "proxy.py did not say its port")
    }

    /// Aborts every connection it carries; new ones are accepted as before.
    func drop() { kill(process.processIdentifier, SIGUSR1) }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExited()
    }
}

/// True when something accepts TCP connections on 127.0.0.1:`port`.
func listening(onLoopbackPort port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// `viewportd serve` as a child process on a free loopback port (or inside a ``ClusterNet`` host, on its address),
/// with its standard error in a file.
final class ChildDaemon: Sendable {
    let process: Process
    /// The address it listens on: 127.0.0.1, or its ``ClusterNet`` host's.
    let address: String
    let port: Int
    /// Where its standard error goes (appended to by every start with the same path).
    let logPath: String
    var base: String { "http://\(address):\(port)" }

    /// Starts `viewportd serve` with `environment` added (state directory and listen address included) and waits
    /// until it answers `/healthz`. `on` a ``ClusterNet`` host, it runs in that host's namespace (`ip netns exec`,
    /// which execs: `process` is viewportd itself) and listens on the host's address.
    static func start(arguments: [String] = [], port: Int? = nil, stateDir: String, logPath: String? = nil,
                      environment: [String: String] = [:], on host: ClusterNet.Host? = nil) async throws -> ChildDaemon
    {
        try #require(FileManager.default.isExecutableFile(atPath: viewportdBinary), "build viewportd first (swift build --build-tests)")
        let port = try port ?? freeLoopbackPort()
        let logPath = logPath ?? stateDir + ".log"
        if !FileManager.default.fileExists(atPath: logPath) { FileManager.default.createFile(atPath: logPath, contents: nil) }
        let log = try #require(FileHandle(forWritingAtPath: logPath))
        log.seekToEndOfFile()
        let address = host?.address ?? "127.0.0.1"
        let command = (host?.exec ?? []) + [viewportdBinary, "serve"] + arguments
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("VIEWPORTD_") }
            .merging(["VIEWPORTD_LISTEN": "\(address):\(port)", "VIEWPORTD_STATE_DIR": stateDir]) { $1 }
            .merging(environment) { $1 }
        process.standardOutput = FileHandle.nullDevice
        process.standardError = log
        try process.run()
        let child = ChildDaemon(process: process, address: address, port: port, logPath: logPath)
        try await eventually("viewportd answers") {
            guard process.isRunning else { throw DaemonError("viewportd exited with \(process.terminationStatus)") }
            return (try? await httpRaw("GET", child.base + "/healthz"))?.0 == 200
        }
        return child
    }

    private init(process: Process, address: String, port: Int, logPath: String) {
        self.process = process
        self.address = address
        self.port = port
        self.logPath = logPath
    }

    func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Waits for the process to exit and returns its status; SIGKILLs it after `timeout` seconds and fails.
    func exitStatus(within timeout: Double) async throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                signal(SIGKILL)
                process.waitUntilExited()
                Issue.record("viewportd did not exit within \(timeout) s")
                return -1
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        return process.terminationStatus
    }

    /// What it logged so far.
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }
}

/// An AF_UNIX datagram socket standing in for systemd's notify socket (`NOTIFY_SOCKET`).
final class NotifySocket: @unchecked Sendable {
    let path: String
    private let fd: Int32

    init() throws {
        path = FileManager.default.temporaryDirectory.appendingPathComponent("vp-notify-\(UUID().uuidString.prefix(8))").path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8.prefix(raw.count - 1))
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        try #require(fd >= 0 && bound == 0, "cannot bind \(path)")
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Messages received during the next `seconds`, or until one satisfies `stop` (included).
    func receive(for seconds: Double, until stop: @escaping @Sendable (String) -> Bool = { _ in false }) async -> [String] {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { [self] in
                var messages: [String] = []
                let deadline = Date().addingTimeInterval(seconds)
                var buffer = [UInt8](repeating: 0, count: 4096)
                while Date() < deadline {
                    var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    guard poll(&poller, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { continue }
                    let count = recv(fd, &buffer, buffer.count, 0)
                    guard count > 0 else { continue }
                    let message = String(decoding: buffer[0..<count], as: UTF8.self)
                    messages.append(message)
                    if stop(message) { break }
                }
                continuation.resume(returning: messages)
            }
        }
    }
}

/// The unlabelled sample of metric `name` in the `/metrics` of the daemon at `base`.
func gauge(_ base: String, _ name: String) async throws -> Double? {
    let (status, body) = try await httpRaw("GET", base + "/metrics")
    try #require(status == 200)
    return prometheusSamples(String(decoding: body, as: UTF8.self), name)[""]
}

/// Samples of one metric in a Prometheus text exposition, by their label set (`{consumer="viewer"}`, or "").
func prometheusSamples(_ text: String, _ name: String) -> [String: Double] {
    var samples: [String: Double] = [:]
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
        let series = line[..<space]
        let metric = series.prefix { $0 != "{" }
        guard metric == name else { continue }
        samples[String(series.dropFirst(metric.count))] = value
    }
    return samples
}
