import Foundation
import NetworkNamespaces
import Testing
@testable import ViewportDaemon

@Suite("Cluster test network: hosts in network namespaces", .serialized)
struct ClusterNetTests {
    @Test func daemonsOnTwoHostsAnswerAtTheirAddressesAndEachHostHasItsOwnLoopback() async throws {
        try await ClusterNet.with(hosts: ["a", "b"]) { net in
            let a = try await ChildDaemon.start(stateDir: stateDirectory(), on: try net.host("a"))
            let b = try await ChildDaemon.start(stateDir: stateDirectory(), on: try net.host("b"))
            #expect(a.base == "http://\(try net.address(of: "a")):\(a.port)")
            #expect(try await httpRaw("GET", a.base + "/healthz").0 == 200)
            #expect(try await httpRaw("GET", b.base + "/healthz").0 == 200)
            #expect(try await net.probe(a.base + "/healthz", from: "b") == .status(200))
            #expect(try await net.probe("http://127.0.0.1:\(a.port)/healthz", from: "b") == .refused)
            // What the test holds is viewportd itself (`ip netns exec` execs), so its SIGKILL is the daemon's.
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(a.process.processIdentifier)/exe")
            #expect(executable == URL(fileURLWithPath: viewportdBinary).resolvingSymlinksInPath().path)

            try net.killAll(in: "a")
            #expect(try await a.exitStatus(within: 5) == SIGKILL)
            #expect(try await httpRaw("GET", b.base + "/healthz").0 == 200)
        }
    }

    @Test func aCutLinkMakesConnectionsToAndFromTheHostTimeOutUntilItIsRestored() async throws {
        try await ClusterNet.with(hosts: ["a", "b"]) { net in
            let a = try await ChildDaemon.start(stateDir: stateDirectory(), on: try net.host("a"))
            let b = try await ChildDaemon.start(stateDir: stateDirectory(), on: try net.host("b"))
            func probes() async throws -> [ClusterNet.Probe] {
                // 4 s: longer than the 3 s after which a failed ARP lookup would answer "no route to host".
                async let fromRoot = net.probe(a.base + "/healthz", timeout: 4)
                async let fromB = net.probe(a.base + "/healthz", from: "b", timeout: 4)
                async let fromA = net.probe(b.base + "/healthz", from: "a", timeout: 4)
                return try await [fromRoot, fromB, fromA]
            }
            try net.cutLink("a")
            #expect(try await probes() == [.timedOut, .timedOut, .timedOut])
            try net.restoreLink("a")
            #expect(try await probes() == [.status(200), .status(200), .status(200)])
        }
    }

    @Test func postgresAndS3AtTheBridgeAddressAnswerFromInsideAHost() async throws {
        try await ClusterNet.with(hosts: ["a"]) { net in
            try await PostgresServer.with(host: net.rootAddress) { postgres in
                let url = try postgres.createDatabase()
                #expect(url.hasPrefix("postgres://postgres@\(net.rootAddress):\(postgres.port)/"))
                let (status, output) = try net.run(in: "a", PostgresServer.binaries + "/psql", [
                    "-h", net.rootAddress, "-p", "\(postgres.port)", "-U", "postgres", "-d", "postgres", "-tAc",
                    "select host(inet_client_addr())",
                ])
                #expect(status == 0, "\(output)")
                #expect(output.trimmingCharacters(in: .whitespacesAndNewlines) == (try net.address(of: "a")))
            }
            let s3 = try await S3Server.start(host: net.rootAddress)
            defer { s3.stop() }
            #expect(s3.endpoint == "http://\(net.rootAddress):\(s3.port)")
            // Unsigned, so refused by S3 itself: an HTTP answer is what shows the server is reachable.
            #expect(try await net.probe(s3.endpoint + "/\(s3.bucket)", from: "a") == .status(403))
        }
    }

    @Test func aBrowserInsideAHostIsAttachedByTheDaemonThereAtItsLoopback() async throws {
        try await ClusterNet.with(hosts: ["a", "b"]) { net in
            let browser = try await Chromium.launch(url: Fixtures.url("anim.html"), launcher: try net.host("a").exec)
            defer { browser.terminate() }
            #expect(try await net.probe(browser.address + "/json/version", from: "b") == .refused)
            let a = try await ChildDaemon.start(stateDir: stateDirectory(), environment: [
                "VIEWPORTD_API_KEY": keyA, "VIEWPORTD_ORGANIZATION_ID": "org_a",
            ], on: try net.host("a"))
            let (status, created) = try await requestJSON("POST", a.base + "/v1/browser_sessions", key: keyA,
                                                          json: ["browser_address": browser.address])
            try #require(status == 201, "\(created)")
            let id = try #require(created["browser_session_id"].string)
            try await eventually("session attached on a") {
                try await requestJSON("GET", a.base + "/v1/browser_sessions/\(id)", key: keyA).1["status"].string == "running"
            }
        }
    }

    @Test func nothingOfTheNetworkOutlivesABodyThatThrows() async throws {
        let sleeper = Process()
        var names: (namespace: String, link: String, bridge: String)?
        await #expect(throws: CancellationError.self) {
            try await ClusterNet.with(hosts: ["a"]) { net in
                let a = try net.host("a")
                names = (a.namespace, a.link, net.bridge)
                sleeper.executableURL = URL(fileURLWithPath: a.exec[0])
                sleeper.arguments = Array(a.exec.dropFirst()) + ["/bin/sleep", "600"]
                try sleeper.run()
                // Inside once `ip netns exec` has entered the namespace: a teardown before that has nothing to kill.
                try await eventually("the process is inside", timeout: 5) {
                    !(try runProcess(ClusterNet.ip, ["netns", "pids", a.namespace]).output.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
                }
                throw CancellationError()
            }
        }
        let (namespace, link, bridge) = try #require(names)
        #expect(!(try runProcess(ClusterNet.ip, ["netns", "list"]).output.contains(namespace)))
        #expect(try runProcess(ClusterNet.ip, ["link", "show", link]).status != 0)
        #expect(try runProcess(ClusterNet.ip, ["link", "show", bridge]).status != 0)
        try await eventually("the process inside is killed", timeout: 5) { !sleeper.isRunning }
    }

    @Test func leftoversOfAKilledRunAreRemovedByTheNextNetwork() async throws {
        // As a run killed mid-test leaves them: a namespace with a process inside, and a bridge.
        let (namespace, bridge) = ("vc253-dead-a", "vc253-dead-br")
        try #require(try runProcess(ClusterNet.ip, ["netns", "add", namespace]).status == 0)
        try #require(try runProcess(ClusterNet.ip, ["link", "add", bridge, "type", "bridge"]).status == 0)
        let sleeper = Process()
        sleeper.executableURL = URL(fileURLWithPath: ClusterNet.ip)
        sleeper.arguments = ["netns", "exec", namespace, "/bin/sleep", "600"]
        try sleeper.run()

        try await ClusterNet.with(hosts: ["a"]) { _ in }
        #expect(!(try runProcess(ClusterNet.ip, ["netns", "list"]).output.contains(namespace)))
        #expect(try runProcess(ClusterNet.ip, ["link", "show", bridge]).status != 0)
        try await eventually("the process inside is killed", timeout: 5) { !sleeper.isRunning }
    }

    @Test func shapingAHostLimitsItsThroughput() async throws {
        try await ClusterNet.with(hosts: ["a"]) { net in
            let port = try freeLoopbackPort()
            // A receiver in the root namespace reads to the end, then closes; the sender inside `a` times the lot.
            let receiver = """
                import socket, sys
                s = socket.create_server((sys.argv[1], int(sys.argv[2])))
                print("ready", flush=True)
                while True:
                    c, _ = s.accept()
                    while c.recv(65536): pass
                    c.close()
                """
            let sender = """
                import socket, sys, time
                s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
                start = time.time()
                s.sendall(b"x" * 1_000_000)
                s.shutdown(socket.SHUT_WR)
                s.recv(1)
                print(time.time() - start)
                """
            let server = Process()
            server.executableURL = URL(fileURLWithPath: Client.python)
            server.arguments = ["-c", receiver, net.rootAddress, "\(port)"]
            let ready = Pipe()
            server.standardOutput = ready
            try server.run()
            defer {
                kill(server.processIdentifier, SIGKILL)
                server.waitUntilExited()
            }
            _ = ready.fileHandleForReading.availableData
            func secondsToSendOneMegabyte() throws -> Double {
                let (status, output) = try net.run(in: "a", Client.python, ["-c", sender, net.rootAddress, "\(port)"])
                try #require(status == 0, "\(output)")
                return try #require(Double(output.trimmingCharacters(in: .whitespacesAndNewlines)))
            }
            try net.shape("a", rateMbit: 8)
            let shaped = try secondsToSendOneMegabyte()
            #expect(shaped >= 0.8 && shaped < 3, "1 MB at 8 Mbit/s takes about 1 s, took \(shaped) s")
            try net.unshape("a")
            let unshaped = try secondsToSendOneMegabyte()
            #expect(unshaped < 0.5, "took \(unshaped) s")
        }
    }
}

/// A fresh state directory path for a daemon.
private func stateDirectory() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-net-\(UUID().uuidString)").path
}
