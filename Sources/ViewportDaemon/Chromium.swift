import Foundation

/// A headless Chromium with remote debugging on a loopback port, for the demo and the tests.
public final class Chromium: Sendable {
    /// `http://127.0.0.1:<port>`: what `browser_address` takes.
    public let address: String
    public let port: Int
    private let process: Process
    private let profile: URL

    /// Starts Chromium showing `url` and waits until its DevTools port is known. Not `headless`, it opens a
    /// full-screen (kiosk) window on `$DISPLAY`, e.g. an Xvnc display.
    /// The binary is `$VIEWPORTD_CHROMIUM`, else the first of chromium, chromium-browser, google-chrome on PATH.
    /// `launcher` is a command it runs under that execs it, e.g. `ip netns exec <namespace>` for a network namespace
    /// (whose loopback its DevTools port is then on).
    public static func launch(url: String, width: Int = 1280, height: Int = 720, headless: Bool = true,
                              launcher: [String] = []) async throws -> Chromium
    {
        guard let binary = findBinary() else {
            throw DaemonError("no Chromium found: install the chromium package or set VIEWPORTD_CHROMIUM")
        }
        killOrphans()
        let profile = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-chromium-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: profile, withIntermediateDirectories: true)
        var command = [
            binary,
            headless ? "--headless=new" : "--kiosk", "--no-sandbox", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            "--user-data-dir=\(profile.path)", "--no-first-run", "--no-default-browser-check",
            "--window-size=\(width),\(height)", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--mute-audio", "--hide-scrollbars", url,
        ]
        // As root, Chromium raises its browser and GPU processes to nice -8; on a small host they then starve the
        // recorder's encoder thread (seen: hundreds of frames dropped, a minute to catch up). Without CAP_SYS_NICE
        // it cannot, and competes with viewportd as an equal.
        if geteuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/setpriv") {
            command = ["/usr/bin/setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice", "--"] + command
        }
        command = launcher + command
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        let portFile = profile.appendingPathComponent("DevToolsActivePort")
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let text = try? String(contentsOf: portFile, encoding: .utf8),
               let port = text.split(separator: "\n").first.flatMap({ Int($0) }), port > 0
            {
                return Chromium(port: port, process: process, profile: profile)
            }
            guard process.isRunning else { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        process.terminate()
        throw DaemonError("Chromium (\(binary)) did not open its DevTools port within 30 s")
    }

    private init(port: Int, process: Process, profile: URL) {
        self.port = port
        self.address = "http://127.0.0.1:\(port)"
        self.process = process
        self.profile = profile
    }

    /// The process id of the browser.
    public var pid: Int32 { process.processIdentifier }

    /// Stops the browser (SIGTERM, then SIGKILL if it still runs 5 s later) and removes its profile.
    public func terminate() {
        if process.isRunning {
            process.terminate()
            if !process.waitUntilExited(within: 5) {
                Foundation.kill(process.processIdentifier, SIGKILL)
                process.waitUntilExited()
            }
        }
        try? FileManager.default.removeItem(at: profile)
    }

    /// Kills the browser at once (SIGKILL), as a crash would.
    public func kill() {
        if process.isRunning {
            Foundation.kill(process.processIdentifier, SIGKILL)
            process.waitUntilExited()
        }
    }

    deinit { terminate() }

    /// Kills browsers an earlier process launched here and left behind when it died (their parent is now init).
    private static func killOrphans() {
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let pid = Int32(entry),
                  let commandLine = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
                  let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")")
            else { continue }
            let arguments = String(decoding: commandLine, as: UTF8.self)
            let parent = stat[stat.index(after: close)...].split(separator: " ").dropFirst().first
            if parent == "1", arguments.contains("--user-data-dir=" + FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-chromium-").path),
               !arguments.contains("--type=")
            {
                Foundation.kill(pid, SIGKILL)
            }
        }
    }

    private static func findBinary() -> String? {
        let environment = ProcessInfo.processInfo.environment
        if let configured = environment["VIEWPORTD_CHROMIUM"], !configured.isEmpty { return configured }
        let path = (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            for dir in path where FileManager.default.isExecutableFile(atPath: "\(dir)/\(name)") { return "\(dir)/\(name)" }
        }
        return nil
    }
}
