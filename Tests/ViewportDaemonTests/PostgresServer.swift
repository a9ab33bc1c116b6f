import Foundation
import Synchronization
import Testing

/// A real PostgreSQL 15 server for tests: Debian's binaries, a cluster `initdb`'d into a temporary directory (owned
/// by the `postgres` user, as PostgreSQL refuses to run as root) and started on a free loopback port with its
/// socket in that directory, trusting local connections. Debian's own `main` cluster is never used. Given a `host`
/// (a ``ClusterNet``'s `rootAddress`), it also listens there and trusts the hosts of that subnet, and its URLs name it.
///
///     try await PostgresServer.with { server in
///         let url = try server.createDatabase()   // postgres://postgres@127.0.0.1:PORT/db_...?sslmode=disable
///     }
final class PostgresServer: Sendable {
    static let binaries = "/usr/lib/postgresql/15/bin"
    /// Holds the cluster `data/`, the socket and the server's output `postgres.log`.
    let directory: String
    let port: Int
    /// Where its URLs reach it: 127.0.0.1 unless given.
    let host: String
    private let databases = Atomic(0)

    private init(host: String) throws {
        self.host = host
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("pg-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        port = try freeLoopbackPort()
    }

    /// A started server; stopped and removed after `body`.
    static func with(host: String = "127.0.0.1", _ body: (PostgresServer) async throws -> Void) async throws {
        let server = try PostgresServer(host: host)
        defer { server.stop() }
        try server.asPostgres(["/bin/chown", "-R", "postgres:postgres", server.directory], asRoot: true)
        try server.asPostgres([binaries + "/initdb", "-D", server.directory + "/data", "-U", "postgres", "-A", "trust",
                               "-E", "UTF8", "--no-sync", "--no-instructions"])
        if host != "127.0.0.1" {
            let hba = server.directory + "/data/pg_hba.conf"
            try (String(contentsOfFile: hba, encoding: .utf8) + "host all all samenet trust\n")
                .write(toFile: hba, atomically: false, encoding: .utf8)
        }
        try server.start()
        try await body(server)
    }

    /// A new, empty database, and its URL.
    func createDatabase() throws -> String {
        let name = "db_\(databases.add(1, ordering: .relaxed).newValue)"
        try asPostgres([Self.binaries + "/createdb", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", name])
        return url(database: name)
    }

    func url(database: String) -> String { "postgres://postgres@\(host):\(port)/\(database)?sslmode=disable" }

    /// Stops the server at once (as a crash would: `pg_ctl stop -m immediate`) and starts it again on the same data
    /// and port.
    func restart() throws {
        try halt()
        try start()
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`), keeping its data for ``start()``.
    func halt() throws {
        try asPostgres([Self.binaries + "/pg_ctl", "-D", directory + "/data", "stop", "-m", "immediate", "-w"])
    }

    /// Stops the server at once and removes its directory.
    func stop() {
        _ = try? asPostgres([Self.binaries + "/pg_ctl", "-D", directory + "/data", "stop", "-m", "immediate", "-w"])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts the server on its data and port (again, after ``halt()``).
    func start() throws {
        let addresses = host == "127.0.0.1" ? host : "127.0.0.1,\(host)"
        let options = "-p \(port) -k \(directory) -c listen_addresses=\(addresses) -c fsync=off -c full_page_writes=off"
        // Its output goes to postgres.log only: the server it leaves running would hold a pipe open forever.
        try asPostgres([Self.binaries + "/pg_ctl", "-D", directory + "/data", "-l", directory + "/postgres.log",
                        "-o", options, "-w", "-t", "30", "start"], capturing: false)
    }

    /// Runs `arguments` to its end as the `postgres` user (or as root); throws with its output unless it succeeds.
    private func asPostgres(_ arguments: [String], asRoot: Bool = false, capturing: Bool = true) throws {
        let command = asRoot ? arguments : ["/usr/sbin/runuser", "-u", "postgres", "--"] + arguments
        var (status, output) = (Int32(0), "")
        if capturing {
            (status, output) = try runProcess(command[0], Array(command.dropFirst()))
        } else {
            // posix_spawn and waitpid rather than Foundation's Process, which never saw pg_ctl end once it had
            // left the server running.
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            for fd in Int32(0)...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
            var argv = command.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            var pid = pid_t(0)
            let spawned = posix_spawn(&pid, command[0], &actions, nil, &argv, environ)
            guard spawned == 0 else { throw PostgresServerError(description: "cannot run \(command[0]): \(spawned)") }
            var wstatus: Int32 = 0
            while waitpid(pid, &wstatus, 0) < 0 && errno == EINTR {}
            status = (wstatus & 0x7f) == 0 ? (wstatus >> 8) & 0xff : -1
        }
        guard status == 0 else {
            let log = (try? String(contentsOfFile: directory + "/postgres.log", encoding: .utf8)) ?? ""
            throw PostgresServerError(description: "\(arguments.joined(separator: " ")) exited \(status): \(output)\n\(log)")
        }
    }
}

struct PostgresServerError: Error, CustomStringConvertible {
    let description: String
}
