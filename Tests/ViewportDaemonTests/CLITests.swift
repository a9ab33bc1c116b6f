import Foundation
import Testing
@testable import ViewportDaemon

/// The `viewportd` executable next to the test bundle (`swift build --build-tests` builds both).
private let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    .appendingPathComponent("viewportd").path

private func viewportd(_ arguments: [String], environment: [String: String] = [:], timeout: Double = 10)
    throws -> (status: Int32, output: String)
{
    try #require(FileManager.default.isExecutableFile(atPath: binary), "build viewportd first (swift build --build-tests)")
    let process = Process()
    process.executableURL = URL(fileURLWithPath: binary)
    process.arguments = arguments
    process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let output = readToEnd(pipe.fileHandleForReading.fileDescriptor)
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: output, as: UTF8.self))
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

    @Test func aTakenPortIsAClearErrorNotACrash() async throws {
        let first = try await TestDaemon.start()
        defer { Task { await first.stop() } }
        let (status, output) = try viewportd(["serve"], environment: [
            "VIEWPORTD_LISTEN": "127.0.0.1:\(first.daemon.port)",
            "VIEWPORTD_STATE_DIR": FileManager.default.temporaryDirectory.appendingPathComponent("vp-\(UUID().uuidString)").path,
        ])
        #expect(status == 1)
        #expect(output.contains("cannot listen on 127.0.0.1:\(first.daemon.port)"))
    }
}

@Suite("Crash recovery", .serialized)
struct CrashRecoveryTests {
    @Test func aRunKilledMidRecordingIsTerminatedWithAPlayableRecordingUpToTheKill() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let stateDir = FileManager.default.temporaryDirectory.appendingPathComponent("vp-crash-\(UUID().uuidString)").path
        let port = try freeLoopbackPort()
        let base = "http://127.0.0.1:\(port)"
        func serve() async throws -> Process {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["serve"]
            process.environment = ProcessInfo.processInfo.environment.merging([
                "VIEWPORTD_LISTEN": "127.0.0.1:\(port)", "VIEWPORTD_STATE_DIR": stateDir, "VIEWPORTD_API_KEY": keyA,
                "VIEWPORTD_ORGANIZATION_ID": "org_a", "VIEWPORTD_LOG_LEVEL": "warning",
            ]) { $1 }
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            try await eventually("viewportd answers") { (try? await httpRaw("GET", base + "/healthz"))?.0 == 200 }
            return process
        }

        let first = try await serve()
        let (_, session) = try await requestJSON("POST", base + "/v1/browser_sessions", json: ["browser_address": browser.address])
        let id = try #require(session["browser_session_id"].string)
        let (status, run) = try await requestJSON("POST", base + "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_crash"])
        try #require(status == 201, "\(run)")
        let started = Date()
        try await Task.sleep(for: .seconds(4))
        kill(first.processIdentifier, SIGKILL)
        let killedAfter = Date().timeIntervalSince(started)
        first.waitUntilExit()

        let second = try await serve()
        defer { second.terminate(); second.waitUntilExit() }
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
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    try #require(bound, "no free port")
    return Int(UInt16(bigEndian: address.sin_port))
}
