import Foundation
import Logging
import Testing
import RFBSource
import Synchronization
@testable import VNCBridge
@testable import ViewportDaemon
import ViewportCore

// MARK: - Sockets and /proc

/// Raises this process's soft descriptor limit (children inherit it) to at least `count`.
func raiseDescriptorLimit(to count: Int) throws {
    var limit = rlimit()
    getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    guard limit.rlim_cur < rlim_t(count) else { return }
    limit.rlim_cur = rlim_t(count)
    if limit.rlim_max < limit.rlim_cur { limit.rlim_max = limit.rlim_cur }
    try #require(setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, "setrlimit: \(errno)")
}

/// A blocking TCP connection to 127.0.0.1:`port` from `source` (any 127.x.y.z works on Linux), or -1.
func tcpConnect(port: Int, from source: String = "127.0.0.1") -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var local = sockaddr_in()
    local.sin_family = sa_family_t(AF_INET)
    local.sin_addr.s_addr = inet_addr(source)
    var remote = sockaddr_in()
    remote.sin_family = sa_family_t(AF_INET)
    remote.sin_port = UInt16(port).bigEndian
    remote.sin_addr.s_addr = inet_addr("127.0.0.1")
    let ok = withUnsafePointer(to: &local) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    } && withUnsafePointer(to: &remote) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard ok else {
        close(fd)
        return -1
    }
    return fd
}

/// Reads what arrives on `fd` within `seconds`: the bytes, and whether the peer closed.
func readAvailable(_ fd: Int32, within seconds: Double, until count: Int = .max) -> (bytes: [UInt8], closed: Bool) {
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    let deadline = Date().addingTimeInterval(seconds)
    while bytes.count < count, deadline > Date() {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000))) > 0 else { continue }
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { return (bytes, true) }
        bytes += buffer[0..<n]
    }
    return (bytes, false)
}

func sendAll(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
}

/// Entries of a /proc/`pid` directory (`task`: threads, `fd`: descriptors).
func procCount(_ pid: Int32, _ directory: String) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/\(directory)").count) ?? -1
}

/// Resident memory of `pid` in MiB.
func residentMiB(_ pid: Int32) -> Double {
    let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return Double(line.split(separator: " ").dropFirst().first ?? "0").map { $0 / 1024 } ?? 0
}

/// Seconds `/healthz` takes to answer 200 (infinity when it does not).
func healthzSeconds(_ base: String) async -> Double {
    let start = Date()
    guard (try? await httpRaw("GET", base + "/healthz"))?.0 == 200 else { return .infinity }
    return Date().timeIntervalSince(start)
}

/// `viewportd serve` as a child process with a session on a Chromium showing `page`.
func withChildSession(page: String, environment: [String: String] = [:],
                      _ body: (ChildDaemon, String) async throws -> Void) async throws {
    let browser = try await Chromium.launch(url: Fixtures.url(page))
    defer { browser.terminate() }
    let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-vnc-\(UUID().uuidString)").path
    let daemon = try await ChildDaemon.start(stateDir: stateDir, environment: [
        "VIEWPORTD_API_KEY": keyA, "VIEWPORTD_ORGANIZATION_ID": "org_a",
    ].merging(environment) { $1 })
    defer {
        daemon.signal(SIGKILL)
        daemon.process.waitUntilExited()
    }
    let (status, created) = try await requestJSON("POST", daemon.base + "/v1/browser_sessions", key: keyA,
                                                  json: ["browser_address": browser.address])
    try #require(status == 201, "\(created)")
    let id = try #require(created["browser_session_id"].string)
    try await eventually("session attached") {
        try await requestJSON("GET", daemon.base + "/v1/browser_sessions/\(id)").1["status"].string == "running"
    }
    try await body(daemon, id)
}

func mintVNC(_ base: String, _ id: String) async throws -> (port: Int, password: String) {
    let (status, body) = try await requestJSON("POST", base + "/v1/browser_sessions/\(id)/vnc", json: ["control": false])
    try #require(status == 201, "\(body)")
    return (try #require(body["port"].int), try #require(body["password"].string))
}

// MARK: - The relay's handshake, without sockets

@Suite("noVNC relay handshake as a pure state machine")
struct RelayHandshakeTests {
    static let version = Array("RFB 003.008\n".utf8)

    private func failures(_ steps: [RelayHandshake.Step]) -> [String] {
        steps.compactMap { if case .fail(let reason) = $0 { reason } else { nil } }
    }

    @Test func aWellBehavedHandshakeOffersNoneAnswersItHereAndThenPassesBytesThrough() {
        var h = RelayHandshake()
        #expect(h.serverSent(Self.version) == [.toClient(Self.version)])
        #expect(h.clientSent(Self.version) == [.toClient([1, 1])], "the client's version stays here; None offered")
        #expect(h.clientSent([1, 1, 9]) == [.toClient([0, 0, 0, 0]), .toServer([1, 9])],
                "None accepted here; ClientInit and what follows go to the screen")
        #expect(h.isRelaying)
        #expect(h.clientSent([1]) == [.toServer([1])])
        #expect(h.serverSent([7, 8]) == [.toClient([7, 8])])
    }

    @Test func bytesArrivingOneAtATimeGiveTheSameSteps() {
        var h = RelayHandshake()
        var steps: [RelayHandshake.Step] = []
        for byte in Self.version { steps += h.serverSent([byte]) }
        for byte in Self.version + [1] { steps += h.clientSent([byte]) }
        #expect(steps == [.toClient(Self.version), .toClient([1, 1]), .toClient([0, 0, 0, 0])])
        #expect(h.isRelaying)
    }

    @Test func theClientWaitsForTheScreensVersionAndWhatTheScreenSendsAheadFollowsTheResult() {
        var h = RelayHandshake()
        #expect(h.clientSent(Self.version + [1]).isEmpty, "nothing before the screen spoke")
        #expect(h.serverSent(Self.version + [5]) == [.toClient(Self.version), .toClient([1, 1]), .toClient([0, 0, 0, 0]),
                                                     .toClient([5])])
        #expect(h.isRelaying)
    }

    @Test func truncatedInputsWaitWithoutFailing() {
        var h = RelayHandshake()
        #expect(h.serverSent(Self.version.prefix(11)).isEmpty)
        #expect(h.serverSent(Self.version.suffix(1)) == [.toClient(Self.version)])
        #expect(h.clientSent(Self.version.prefix(5)).isEmpty)
        #expect(h.stage == .clientVersion)
    }

    @Test func wrongVersionsAndWrongChoicesFailOnce() {
        var h = RelayHandshake()
        #expect(failures(h.serverSent(Array("RFB 003.003\n".utf8))) == ["the VNC screen does not speak RFB 3.8"])
        #expect(h.serverSent(Self.version).isEmpty && h.clientSent(Self.version).isEmpty, "nothing after a failure")

        h = RelayHandshake()
        _ = h.serverSent(Self.version)
        #expect(failures(h.clientSent(Array("RFB 004.000\n".utf8))) == ["the client must speak RFB 3.8"])

        h = RelayHandshake()
        _ = h.serverSent(Self.version)
        _ = h.clientSent(Self.version)
        #expect(failures(h.clientSent([2])) == ["the client must choose security type None"], "VncAuth is not offered")
        #expect(h.stage == .failed)
    }

    @Test func eitherSideSendingTooMuchAheadFailsInsteadOfBuffering() {
        var h = RelayHandshake()
        #expect(failures(h.clientSent([UInt8](repeating: 0x41, count: RelayHandshake.maxBuffered + 1)))
                == ["the client sent too much during the handshake"])
        h = RelayHandshake()
        _ = h.serverSent(Self.version)
        #expect(failures(h.serverSent([UInt8](repeating: 0, count: 10 << 20))) == ["the VNC screen sent too much during the handshake"])
    }

    @Test func theFuzzEntryPointSurvivesRandomAndHandshakeShapedScripts() {
        var generator = SystemRandomNumberGenerator()
        for round in 0..<3000 {
            var script = (0..<Int.random(in: 0...600, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if round % 2 == 0 {
                // A valid prefix, so relaying is reached too.
                script = [0x8C] + Self.version + [0x0C] + Self.version + [0x01, 1] + script
            }
            script.withUnsafeBytes { RelayHandshake.fuzz($0) }
        }
    }
}

// MARK: - The screen's doors, in process

@Suite("VNC screen before authentication", .serialized)
struct VNCScreenAdmissionTests {
    private func bridge(_ configure: (inout VNCBridge.Options) -> Void = { _ in }) throws -> (VNCBridge, FrameHub) {
        let hub = FrameHub()
        var options = VNCBridge.Options()
        options.ports = 5950...5999
        configure(&options)
        return (try VNCBridge(hub: hub, options: options, throttle: VNCAuthThrottle(), input: nil, name: "test",
                              logger: Logger(label: "test")), hub)
    }

    @Test func theScreenFollowsTheFramesOnlyOnceAClientAuthenticated() async throws {
        let (bridge, hub) = try bridge()
        defer { bridge.close() }
        let peer = tcpConnect(port: bridge.port)
        defer { close(peer) }
        #expect(readAvailable(peer, within: 2, until: 12).bytes == Array("RFB 003.008\n".utf8))
        sendAll(peer, Array("RFB 003.008\n".utf8))
        #expect(readAvailable(peer, within: 2, until: 2).bytes == [1, 2], "offered VncAuth")
        try await Task.sleep(for: .milliseconds(300))
        #expect(!bridge.isSubscribed && bridge.clientCount == 0 && bridge.unauthenticatedCount == 1,
                "an unauthenticated client costs no decoding and does not count")

        let password = bridge.passwords.mint(control: false, expiresAt: Date().addingTimeInterval(60))
        let seen = FrameHub()
        let client = RFBSource(address: "127.0.0.1:\(bridge.port)", password: password, hub: seen, options: .init(),
                               logger: Logger(label: "test")) { _ in }
        client.start()
        try await eventually("the authenticated client subscribes the screen", timeout: 10) {
            bridge.isSubscribed && bridge.clientCount == 1
        }
        _ = hub
        client.stop()
        try await eventually("the screen lets go of the frames when it leaves", timeout: 10) {
            !bridge.isSubscribed && bridge.clientCount == 0
        }
    }

    @Test func threeWrongPasswordsFromAnAddressBlockEvenTheRightOneUntilTheBackoffEnds() async throws {
        let (bridge, hub) = try bridge()
        defer { bridge.close() }
        let pixels = FrameBytes(count: 64 * 48 * 4)
        pixels.payload.initializeMemory(as: UInt8.self, repeating: 0x80, count: pixels.count)
        hub.publish(jpeg: FrameBytes(count: 0), width: 64, height: 48, captureTime: 1, url: nil, pixels: pixels)
        let password = bridge.passwords.mint(control: false, expiresAt: Date().addingTimeInterval(60))
        /// Whether a libvncclient client with `password` gets in.
        func connects(_ password: String) async throws -> Bool {
            let outcome = Mutex<Bool?>(nil)
            let client = RFBSource(address: "127.0.0.1:\(bridge.port)", password: password, hub: FrameHub(),
                                   options: .init(), logger: Logger(label: "test")) { state in
                switch state {
                case .connected: outcome.withLock { $0 = $0 ?? true }
                case .failed: outcome.withLock { $0 = $0 ?? false }
                default: break
                }
            }
            client.start()
            defer { client.stop() }
            try await eventually("the client gets in or is refused", timeout: 10) { outcome.withLock { $0 } != nil }
            return outcome.withLock { $0 } == true
        }
        for wrong in ["wrongpw1", "wrongpw2", "wrongpw3"] { #expect(try await !connects(wrong)) }
        let blockedAt = Date()
        #expect(try await !connects(password), "the right password is refused while the address is blocked")
        try #require(Date().timeIntervalSince(blockedAt) < 1, "the attempt came within the 1 s block")
        try await Task.sleep(for: .seconds(1.2))
        #expect(try await connects(password), "and let in after the backoff")
    }

    @Test func aClientThatNeverFinishesTheHandshakeIsDisconnectedAfterTheTimeout() async throws {
        let (bridge, _) = try bridge { $0.handshakeTimeout = 1 }
        defer { bridge.close() }
        let before = VNCBridge.Counters.handshakeTimeouts
        let silent = tcpConnect(port: bridge.port)
        let halfway = tcpConnect(port: bridge.port)
        defer { close(silent); close(halfway) }
        let start = Date()
        sendAll(halfway, Array("RFB 003.008\n".utf8))  // and never chooses a security type
        let (_, silentClosed) = readAvailable(silent, within: 4)
        let (_, halfwayClosed) = readAvailable(halfway, within: 4)
        #expect(silentClosed && halfwayClosed)
        let elapsed = Date().timeIntervalSince(start)
        #expect(elapsed >= 0.9 && elapsed < 2.5, "closed after \(elapsed) s")
        #expect(VNCBridge.Counters.handshakeTimeouts - before == 2)
        try await eventually("nothing is left of them") { bridge.unauthenticatedCount == 0 }
    }

    @Test func unauthenticatedClientsAreCappedPerAddressAndPerScreen() async throws {
        let (bridge, _) = try bridge { options in
            options.maxUnauthenticatedPerAddress = 3
            options.maxUnauthenticated = 5
        }
        defer { bridge.close() }
        let before = VNCBridge.Counters.refusedUnauthenticated
        func greeted(_ fd: Int32) -> Bool { readAvailable(fd, within: 2, until: 12).bytes.count == 12 }
        func refused(_ fd: Int32) -> Bool { readAvailable(fd, within: 2).closed }
        let first = (0..<3).map { _ in tcpConnect(port: bridge.port, from: "127.0.0.2") }
        let fourth = tcpConnect(port: bridge.port, from: "127.0.0.2")
        let other = (0..<2).map { _ in tcpConnect(port: bridge.port, from: "127.0.0.3") }
        let sixth = tcpConnect(port: bridge.port, from: "127.0.0.4")
        defer { (first + other + [fourth, sixth]).forEach { close($0) } }
        #expect(first.allSatisfy(greeted))
        #expect(refused(fourth), "a fourth from one address")
        #expect(other.allSatisfy(greeted))
        #expect(refused(sixth), "a sixth on the screen")
        #expect(VNCBridge.Counters.refusedUnauthenticated - before == 2)
        #expect(bridge.unauthenticatedCount == 5)
        close(first[0])
        try await eventually("a place frees up") { bridge.unauthenticatedCount == 4 }
        let again = tcpConnect(port: bridge.port, from: "127.0.0.4")
        defer { close(again) }
        #expect(greeted(again))
    }
}

// MARK: - The relay's door to the screen, in process

@Suite("noVNC relay's connection to the VNC screen", .serialized)
struct VNCScreenHandoffTests {
    /// Input the screen forwarded.
    private final class InputLog: InputTarget {
        let events = Mutex<[RemoteInput]>([])
        func deliver(_ input: RemoteInput) { events.withLock { $0.append(input) } }
    }

    @Test func aHandedConnectionSkipsTheSecurityHandshakeAndItsInputFollowsTheViewersGrant() async throws {
        let hub = FrameHub()
        let pixels = FrameBytes(count: 64 * 48 * 4)
        pixels.payload.initializeMemory(as: UInt8.self, repeating: 0x80, count: pixels.count)
        hub.publish(jpeg: FrameBytes(count: 0), width: 64, height: 48, captureTime: 1, url: nil, pixels: pixels)
        let input = InputLog()
        var options = VNCBridge.Options()
        options.ports = 5950...5999
        let bridge = try VNCBridge(hub: hub, options: options, throttle: VNCAuthThrottle(), input: input, name: "test",
                                   logger: Logger(label: "test"))
        defer { bridge.close() }
        let press = [5, 1, 0, 10, 0, 10] as [UInt8], release = [5, 0, 0, 10, 0, 10] as [UInt8]

        for control in [false, true] {
            var ends: [Int32] = [-1, -1]
            try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
            let viewer = ends[1]
            defer { close(viewer) }
            #expect(bridge.attach(ends[0], control: control))
            #expect(readAvailable(viewer, within: 2, until: 12).bytes == Array("RFB 003.008\n".utf8))
            sendAll(viewer, [1])  // ClientInit (shared) at once: no version, no security type, no password
            let serverInit = readAvailable(viewer, within: 2, until: 24 + 4).bytes
            try #require(serverInit.count == 28, "ServerInit: \(serverInit)")
            #expect(Array(serverInit[0..<4]) == [0, 64, 0, 48], "the screen at the frame's size")
            #expect(bridge.clientCount == 1 && bridge.unauthenticatedCount == 0 && bridge.isSubscribed)
            sendAll(viewer, press + release)
            if control {
                try await eventually("the press and release reach the browser") { input.events.withLock { $0.count } >= 3 }
            } else {
                try await Task.sleep(for: .milliseconds(300))
                #expect(input.events.withLock { $0.isEmpty }, "a view-only viewer's input is ignored")
            }
            close(ends[1])
            try await eventually("the screen lets it go") { bridge.clientCount == 0 }
        }
    }

    @Test func aHandedDescriptorPastSelectsLimitIsRefusedAndLeftToTheCaller() throws {
        try raiseDescriptorLimit(to: 2048)
        let hub = FrameHub()
        var options = VNCBridge.Options()
        options.ports = 5950...5999
        let bridge = try VNCBridge(hub: hub, options: options, throttle: VNCAuthThrottle(), input: nil, name: "test",
                                   logger: Logger(label: "test"))
        defer { bridge.close() }
        var ends: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        let high = fcntl(ends[0], F_DUPFD, 1100)
        defer { close(ends[0]); close(ends[1]); close(high) }
        try #require(high >= 1024)
        let before = VNCBridge.Counters.refusedDescriptors
        #expect(!bridge.attach(high, control: false))
        #expect(VNCBridge.Counters.refusedDescriptors - before == 1)
        #expect(fcntl(high, F_GETFD) >= 0, "still open: the caller closes it")
    }
}

// MARK: - A daemon under hostile VNC peers

@Suite("viewportd under hostile VNC peers", .serialized)
struct VNCHostilePeerTests {
    @Test func aClientThatSendsPartOfAMessageStallsTheScreenForSecondsNotTwenty() async throws {
        try await withChildSession(page: "vnc.html") { daemon, id in
            let (port, password) = try await mintVNC(daemon.base, id)
            // From another address, 11 of the 12 bytes of a protocol version, then nothing.
            let slow = tcpConnect(port: port, from: "127.0.0.3")
            defer { close(slow) }
            #expect(readAvailable(slow, within: 2, until: 12).bytes.count == 12, "the screen greets it")
            sendAll(slow, Array("RFB 003.008".utf8))  // no newline: 11 of 12 bytes
            try await Task.sleep(for: .milliseconds(200))
            let start = Date()
            let capture = try vncdo(port: port, password: password, ["capture", scratchPNG()], timeout: 30)
            let took = Date().timeIntervalSince(start)
            print("a client stuck mid-message: another client's capture took \(took) s")
            #expect(capture.status == 0, "\(capture.output)")
            // libvncserver waits this long for the rest of a message (vpd_rfb_set_max_client_wait, 3 s; its default
            // was 20 s), and the capture itself takes a few seconds.
            #expect(took < 12, "the screen was stalled for \(took) s")
        }
    }

    @Test func aThousandIdleConnectionsNeitherStopTheDaemonNorAValidClientAndLeaveNothingBehind() async throws {
        try raiseDescriptorLimit(to: 8192)
        try await withChildSession(page: "vnc.html") { daemon, id in
            let pid = daemon.process.processIdentifier
            let (port, password) = try await mintVNC(daemon.base, id)
            #expect(try vncdo(port: port, password: password, ["capture", scratchPNG()]).status == 0)
            try await Task.sleep(for: .seconds(1))
            let (threads, descriptors) = (procCount(pid, "task"), procCount(pid, "fd"))

            let idle = (0..<1000).map { _ in tcpConnect(port: port, from: "127.0.0.2") }
            defer { idle.forEach { if $0 >= 0 { close($0) } } }
            #expect(idle.allSatisfy { $0 >= 0 }, "every connection was accepted by the kernel")
            let healthz = await healthzSeconds(daemon.base)
            #expect(healthz < 1, "healthz took \(healthz) s")
            let start = Date()
            let capture = try vncdo(port: port, password: password, ["capture", scratchPNG()])
            #expect(capture.status == 0, "a valid client from another address gets a frame while they wait: \(capture.output)")
            print("1000 idle: healthz \(healthz) s, vncdo capture \(Date().timeIntervalSince(start)) s, daemon fds \(procCount(pid, "fd")) threads \(procCount(pid, "task")) (baseline \(descriptors), \(threads))")
            try await eventually("the idle ones time out and the daemon's descriptors return to baseline", timeout: 35) {
                procCount(pid, "fd") <= descriptors
            }
            #expect(daemon.log.contains("handshake not finished"))
            #expect(daemon.log.contains("too many unauthenticated clients"))
            idle.forEach { close($0) }
            try await eventually("threads and descriptors at baseline", timeout: 10) {
                procCount(pid, "fd") <= descriptors && procCount(pid, "task") <= threads
            }
            print("after: daemon fds \(procCount(pid, "fd")) threads \(procCount(pid, "task"))")
            #expect(await healthzSeconds(daemon.base) < 1)
        }
    }

    @Test func aDaemonWithMoreThan1024DescriptorsRefusesVNCClientsItCannotSelectOnAndKeepsRunning() async throws {
        try raiseDescriptorLimit(to: 8192)
        // Idle HTTP connections from one address are capped (limits.unauthenticated_per_address): lifted here, so
        // that they can push the daemon past FD_SETSIZE.
        try await withChildSession(page: "vnc.html", environment: ["VIEWPORTD_LIMITS_UNAUTHENTICATED_PER_ADDRESS": "10000"]) { daemon, id in
            let pid = daemon.process.processIdentifier
            let (port, password) = try await mintVNC(daemon.base, id)
            // Idle HTTP connections push the daemon's descriptors past FD_SETSIZE.
            var held = (0..<1100).map { _ in tcpConnect(port: daemon.port) }
            defer { held.forEach { if $0 >= 0 { close($0) } } }
            try await eventually("the daemon holds more than 1024 descriptors") { procCount(pid, "fd") > 1100 }
            let result = try vncdo(port: port, password: password, ["capture", scratchPNG()], timeout: 5)
            print("vncdo with the daemon at \(procCount(pid, "fd")) descriptors: status \(result.status)")
            #expect(daemon.process.isRunning, "no crash")
            #expect(await healthzSeconds(daemon.base) < 1)
            #expect(daemon.log.contains("descriptor past select()'s limit"), "refused and logged")
            held.forEach { close($0) }
            held = []
            try await eventually("descriptors back below 1024") { procCount(pid, "fd") < 200 }
            #expect(try vncdo(port: port, password: password, ["capture", scratchPNG()]).status == 0, "and VNC works again")
        }
    }

    @Test(arguments: ["paced", "tight"])
    func aNoVNCClientThatAsksForUpdatesWithoutReadingIsClosedWhileOthersKeepWatching(pace: String) async throws {
        try await withChildSession(page: "anim.html") { daemon, id in
            let pid = daemon.process.processIdentifier
            let (_, minted) = try await requestJSON("POST", daemon.base + "/v1/browser_sessions/\(id)/viewer_tokens", json: [:])
            let token = try #require(minted["token"].string)
            let url = "ws://127.0.0.1:\(daemon.port)/stream/vnc/browser/\(id)?token=\(token)"
            try await Task.sleep(for: .seconds(1))
            let baseline = residentMiB(pid)

            let flood = Process()
            flood.executableURL = URL(fileURLWithPath: Client.python)
            flood.arguments = [Fixtures.directory.appendingPathComponent("rfb_flood.py").path, url, "30", pace]
            let output = Pipe()
            flood.standardOutput = output
            flood.standardError = output
            try flood.run()
            let sampler = Task {
                var peak = 0.0
                while !Task.isCancelled {
                    peak = max(peak, residentMiB(pid))
                    try? await Task.sleep(for: .milliseconds(50))
                }
                return peak
            }
            let viewer = try #require(try await Client.watch("ws://127.0.0.1:\(daemon.port)/stream/browser/\(id)?token=\(token)",
                                                             seconds: 4).first)
            let healthz = await healthzSeconds(daemon.base)
            let data = readToEnd(output.fileHandleForReading.fileDescriptor)
            flood.waitUntilExited()
            sampler.cancel()
            let peak = await sampler.value
            let result = try #require(try? JSONDecoder().decode(JSON.self, from: data), "\(String(decoding: data, as: UTF8.self))")
            let closing = daemon.log.split(separator: "\n").filter { $0.contains("noVNC relay closed") }
            print("flood (\(pace)): \(result), RSS baseline \(baseline) MiB, peak \(peak) MiB, healthz \(healthz) s, viewer frames \(viewer.frames), log: \(closing)")
            #expect(result["handshake"].bool == true)
            let closedAfter = try #require(result["closed_after"].double)
            #expect(closedAfter < 10, "closed after \(closedAfter) s")
            if pace == "paced" {
                #expect(closing.contains { $0.contains("client is not reading") }, "\(closing)")
            } else {
                #expect(!closing.isEmpty)
            }
            #expect(peak - baseline < 64, "RSS grew \(peak - baseline) MiB")
            #expect(healthz < 1, "healthz took \(healthz) s")
            #expect(viewer.frames >= 20, "another viewer kept getting frames: \(viewer.frames)")
        }
    }
}
