import ArgumentParser
import Foundation

/// One session on an origin node, watched through an edge node: what the extra hop costs.
struct ClusterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "One session on an origin node, N viewers on an edge node of the same cluster (PostgreSQL 15).")
    @Option(parsing: .upToNextOption, help: "Viewer counts on the edge, one row each.") var viewers = [1, 100, 500]
    @Option(help: "Frames per second the fake browser sends.") var fps = 30
    @Option(help: "Size of each JPEG frame in kB.") var frameKb = 80
    @Option(help: "Measured seconds per row (after a 2 s warm-up).") var seconds = 10.0

    func run() async throws {
        raiseFileLimit()
        let database = try BenchPostgres.start()
        defer { database.stop() }
        let url = try database.createDatabase()
        func node(_ id: String) -> String {
            """
            cluster:
              database_url: "\(url)"
              node_id: \(id)
              secret: bench-cluster-secret-0123456789abcdef
            """
        }
        let browser = try FakeBrowser(fps: fps, frameBytes: frameKb * 1000)
        let origin = try await DaemonProcess.start(config: node("origin"))
        defer { origin.stop() }
        let edge = try await DaemonProcess.start(config: node("edge"))
        defer { edge.stop() }
        let session = try await origin.createSession(browserAddress: browser.address)
        let direct = try await origin.viewerURL(session)
        // The token verifies on every node (signed with a key from the cluster's secret).
        let relayed = direct.replacingOccurrences(of: ":\(origin.port)/", with: ":\(edge.port)/")

        print("""
        cluster: one session on the origin, N viewers on the edge; \(fps) fps, \(frameKb) kB frames, \
        \(Int(seconds)) s per row; one direct viewer on the origin in every row for the latency beside
          N     origin CPU   origin bytes out/s   edge CPU   edge CPU/viewer   latency p50/p99 direct   via edge     edge viewers without gaps
        """)
        for count in viewers {
            let near = try ViewerClients(count: 1, url: direct)
            let far = try ViewerClients(count: count, url: relayed)
            try await near.waitUntilOpen(timeout: 30)
            try await far.waitUntilOpen(timeout: 60)
            try await Task.sleep(for: .seconds(2))
            near.reset()
            far.reset()
            let (originCPU, edgeCPU, written) = (origin.cpuSeconds(), edge.cpuSeconds(), origin.bytesWritten())
            try await Task.sleep(for: .seconds(seconds))
            let originUsed = origin.cpuSeconds() - originCPU
            let edgeUsed = edge.cpuSeconds() - edgeCPU
            let bytes = Double(origin.bytesWritten() - written) / seconds
            let (n, f) = (near.report(), far.report())
            func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
            print("  " + pad("\(count)", 6)
                  + pad(String(format: "%8.1f %%", 100 * originUsed / seconds), 13)
                  + pad(String(format: "%14.2f MB/s", bytes / 1e6), 21)
                  + pad(String(format: "%6.1f %%", 100 * edgeUsed / seconds), 11)
                  + pad(String(format: "%11.3f %%", 100 * edgeUsed / seconds / Double(count)), 18)
                  + pad("\(ms(n.latency(0.5)))/\(ms(n.latency(0.99))) ms", 25)
                  + pad("\(ms(f.latency(0.5)))/\(ms(f.latency(0.99))) ms", 17)
                  + "\(f.viewersWithoutGaps) of \(count)")
            near.close()
            far.close()
            try await Task.sleep(for: .seconds(2))
        }
        print("""
          origin bytes out: bytes acknowledged on the connections to the origin's port (the edge's stream, the direct viewer)
          targets: origin CPU and bytes flat in N (one upstream stream per session per edge)
        """)
    }
}

extension DaemonProcess {
    /// Bytes the kernel has sent (acknowledged) on the TCP connections accepted on the daemon's port: its viewer
    /// streams, from `ss -ti`.
    func bytesWritten() -> Int {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/ss")
        process.arguments = ["-tinH", "state", "established", "( sport = :\(port) )"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return 0 }
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExited()
        return output.split(whereSeparator: \.isWhitespace).reduce(0) { sum, field in
            field.hasPrefix("bytes_acked:") ? sum + (Int(field.dropFirst(12)) ?? 0) : sum
        }
    }
}

/// A throwaway PostgreSQL 15 server (Debian's binaries) in a temporary directory on a free loopback port, run as
/// the `postgres` user.
struct BenchPostgres {
    static let binaries = "/usr/lib/postgresql/15/bin"
    let directory: String
    let port: Int

    static func start() throws -> BenchPostgres {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("bench-pg-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let server = BenchPostgres(directory: directory, port: try freeLoopbackPort())
        try run("/bin/chown", ["-R", "postgres:postgres", directory])
        try server.asPostgres(binaries + "/initdb", ["-D", directory + "/data", "-U", "postgres", "-A", "trust",
                                                      "--no-sync", "--no-instructions"])
        try server.asPostgres(binaries + "/pg_ctl", [
            "-D", directory + "/data", "-l", directory + "/postgres.log", "-w", "start",
            "-o", "-p \(server.port) -k \(directory) -c listen_addresses=127.0.0.1 -c fsync=off",
        ])
        return server
    }

    func createDatabase() throws -> String {
        try asPostgres(Self.binaries + "/createdb", ["-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "bench"])
        return "postgres://postgres@127.0.0.1:\(port)/bench?sslmode=disable"
    }

    func stop() {
        try? asPostgres(Self.binaries + "/pg_ctl", ["-D", directory + "/data", "stop", "-m", "immediate", "-w"])
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func asPostgres(_ executable: String, _ arguments: [String]) throws {
        try Self.run("/usr/sbin/runuser", ["-u", "postgres", "--", executable] + arguments)
    }

    /// Runs a command to its end with /dev/null for its output, through posix_spawn and waitpid: Foundation's
    /// Process never sees pg_ctl end once it has left the server running.
    private static func run(_ executable: String, _ arguments: [String]) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in Int32(0)...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
        var argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid = pid_t(0)
        guard posix_spawn(&pid, executable, &actions, nil, &argv, environ) == 0 else { throw BenchError("cannot run \(executable)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else {
            throw BenchError("\(executable) \(arguments.joined(separator: " ")) exited with status \(status)")
        }
    }
}
