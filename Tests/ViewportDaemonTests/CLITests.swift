import Foundation
import Testing
import ViewportDaemon

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
