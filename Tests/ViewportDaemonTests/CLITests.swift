import Foundation
import Testing
@testable import ViewportDaemon

private func viewportd(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
    try #require(FileManager.default.isExecutableFile(atPath: viewportdBinary), "build viewportd first (swift build --build-tests)")
    return try runProcess(viewportdBinary, arguments, environment: environment)
}

@Suite("Command line")
struct CLITests {
    @Test func printsItsVersion() throws {
        let (status, output) = try viewportd(["--version"])
        #expect(status == 0 && output.trimmingCharacters(in: .whitespacesAndNewlines) == viewportdVersion)
    }

    @Test func anInvalidConfigExitsWith2NamingTheKey() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID().uuidString).yaml")
        try Data("screencast:\n  quality: 0\n".utf8).write(to: file)
        let (status, output) = try viewportd(["serve", "--config", file.path])
        #expect(status == 2)
        #expect(output.contains("config key screencast.quality"))
        let (envStatus, envOutput) = try viewportd(["serve"], environment: ["VIEWPORTD_VIEWER_QUEUE_FRAMES": "lots"])
        #expect(envStatus == 2 && envOutput.contains("viewer.queue_frames"))
    }

    @Test func checkConfigPrintsTheEffectiveConfigWithSecretsMasked() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("cfg-\(UUID().uuidString).yaml")
        try Data("""
            api_keys: [{key: \(keyA), organization_id: org_a}]
            webhooks: {secrets: [{organization_id: org_a, secret: \(webhookTestSecret)}]}
            screencast: {quality: 61}
            """.utf8).write(to: file)
        let (status, output) = try viewportd(["check-config", file.path], environment: ["VIEWPORTD_RETENTION_MAX_AGE_DAYS": "9"])
        #expect(status == 0, "\(output)")
        #expect(output.contains("quality: 61") && output.contains("max_age_days: 9"), "file and environment both apply")
        #expect(output.contains("organization_id: \"org_a\"") && output.contains("\"***\""))
        #expect(!output.contains(keyA) && !output.contains(webhookTestSecret))
        try Data("retention: {max_disk_gb: -1}\n".utf8).write(to: file)
        let (badStatus, badOutput) = try viewportd(["check-config", file.path])
        #expect(badStatus == 2 && badOutput.contains("config key retention.max_disk_gb"))
    }

    @Test func theSystemdUnitPassesSystemdAnalyzeVerify() throws {
        let unit = try String(contentsOfFile: Self.repository + "/systemd/viewportd.service", encoding: .utf8)
        for directive in ["Type=notify", "WatchdogSec=", "ExecReload=", "Restart=on-failure", "StateDirectory=viewportd",
                          "ConfigurationDirectory=viewportd", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                          "NoNewPrivileges=yes", "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6", "LimitNOFILE=",
                          "TimeoutStopSec=", "CapabilityBoundingSet=\n", "AmbientCapabilities=\n", "PrivateUsers=yes",
                          "SystemCallFilter=@system-service", "SystemCallErrorNumber=EPERM", "SystemCallArchitectures=native",
                          "MemoryDenyWriteExecute=yes", "ProtectProc=invisible", "ProcSubset=pid", "LimitCORE=0",
                          "TasksMax=", "PrivateIPC=yes", "RemoveIPC=yes", "User=viewportd"] {
            #expect(unit.contains(directive), "the unit sets \(directive)")
        }
        // systemd-analyze checks that ExecStart's binary exists: point it at the one just built.
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("unit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let copy = directory.appendingPathComponent("viewportd.service").path
        try unit.replacingOccurrences(of: "/usr/local/bin/viewportd", with: viewportdBinary)
            .write(toFile: copy, atomically: true, encoding: .utf8)
        let output = String(decoding: try runTool("systemd-analyze", ["verify", copy], stderr: true), as: UTF8.self)
        #expect(output.isEmpty, "systemd-analyze verify: \(output)")
        // The sandbox scores at most 2.0 on systemd-analyze's exposure scale: with --threshold (in tenths) the tool
        // itself exits 1 above that, and the printed overall level is checked too.
        let (status, security) = try runProcess("/usr/bin/systemd-analyze", ["security", "--offline=yes", "--threshold=20", copy])
        #expect(status == 0, "systemd-analyze security exited \(status): \(security)")
        let overall = security.split(separator: "\n").first { $0.contains("Overall exposure level for viewportd.service") }
        let exposure = try #require(overall.flatMap { $0.split(separator: " ").compactMap { Double($0) }.first },
                                    "no overall exposure in: \(security)")
        #expect(exposure <= 2.0, "overall exposure \(exposure)")
    }

    @Test func theInstallScriptIsIdempotentAndKeepsAnEditedConfig() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("root-\(UUID().uuidString)").path
        func install() throws -> Int32 {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.repository + "/scripts/install.sh")
            process.arguments = ["--binary", viewportdBinary]
            process.environment = ProcessInfo.processInfo.environment.merging(["DESTDIR": root]) { $1 }
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            process.waitUntilExited()
            return process.terminationStatus
        }
        #expect(try install() == 0)
        let config = root + "/etc/viewportd/viewportd.yaml"
        for path in ["/usr/local/bin/viewportd", "/etc/systemd/system/viewportd.service", "/etc/viewportd/viewportd.yaml.dist"] {
            #expect(FileManager.default.fileExists(atPath: root + path), "\(path) installed")
        }
        #expect(FileManager.default.isExecutableFile(atPath: root + "/usr/local/bin/viewportd"))
        try Data("log_level: debug\n".utf8).write(to: URL(fileURLWithPath: config))
        #expect(try install() == 0, "a second run succeeds")
        #expect(try String(contentsOfFile: config, encoding: .utf8) == "log_level: debug\n", "the edited config stays")
    }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../..").standardized.path

    @Test func aTakenPortIsAClearErrorNotACrash() async throws {
        try await withDaemon { first in
            let (status, output) = try viewportd(["serve"], environment: [
                "VIEWPORTD_LISTEN": "127.0.0.1:\(first.daemon.port)",
                "VIEWPORTD_STATE_DIR": FileManager.default.temporaryDirectory.appendingPathComponent("vp-\(UUID().uuidString)").path,
            ])
            #expect(status == 1)
            #expect(output.contains("cannot listen on 127.0.0.1:\(first.daemon.port)"))
        }
    }
}

@Suite("Crash recovery", .serialized)
struct CrashRecoveryTests {
    @Test func aRunKilledMidRecordingIsTerminatedWithAPlayableRecordingUpToTheKill() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-crash-\(UUID().uuidString)").path
        let environment = ["VIEWPORTD_API_KEY": keyA, "VIEWPORTD_ORGANIZATION_ID": "org_a", "VIEWPORTD_LOG_LEVEL": "warning"]
        let first = try await ChildDaemon.start(stateDir: stateDir, environment: environment)
        let base = first.base
        let (_, session) = try await requestJSON("POST", base + "/v1/browser_sessions", json: ["browser_address": browser.address])
        let id = try #require(session["browser_session_id"].string)
        let (status, run) = try await requestJSON("POST", base + "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_crash"])
        try #require(status == 201, "\(run)")
        let started = Date()
        try await Task.sleep(for: .seconds(4))
        first.signal(SIGKILL)
        let killedAfter = Date().timeIntervalSince(started)
        first.process.waitUntilExited()

        let second = try await ChildDaemon.start(port: first.port, stateDir: stateDir, environment: environment)
        defer { second.signal(SIGKILL); second.process.waitUntilExited() }
        let (_, recovered) = try await requestJSON("GET", base + "/v1/runs/wr_crash")
        #expect(recovered["status"].string == "terminated")
        #expect(recovered["failure_reason"].string?.contains("stopped") == true)
        let (videoStatus, video) = try await httpRaw("GET", try #require(recovered["recording_url"].string))
        try #require(videoStatus == 200)
        let file = try temporaryFile("crash.mp4", video)
        #expect(try decodeErrors(file).isEmpty, "the recovered MP4 decodes fully")
        let duration = try #require(try ffprobe(file)["format"]["duration"].string.flatMap(Double.init))
        #expect(abs(duration - killedAfter) <= 1.0, "covers \(duration) s of the \(killedAfter) s before the kill")
        try? FileManager.default.removeItem(atPath: stateDir)
    }
}

/// A loopback port nobody listens on now.
func freeLoopbackPort() throws -> Int {
    let (fd, port) = try boundLoopbackSocket()
    close(fd)
    return port
}

/// A TCP socket bound to a free loopback port, and the port.
func boundLoopbackSocket() throws -> (fd: Int32, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    if !bound { close(fd) }
    try #require(bound, "no free port")
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}
