import ArgumentParser
import Foundation
import Logging
import RFBSource
import ViewportCore
import ViewportDaemon

struct VNCBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vnc",
        abstract: "The VNC bridge of one animated CDP session, read by 1, 10 and 50 libvncclient loops.")
    @Option(help: "The page to open.") var page = "Tests/ViewportDaemonTests/Fixtures/anim.html"
    @Option(help: "Seconds per measured window (after 2 s of warm-up).") var seconds = 10.0
    @Option(parsing: .upToNextOption, help: "Client counts, one row each.") var clients: [Int] = [1, 10, 50]

    func run() async throws {
        raiseFileLimit()
        let (chromium, path) = try await launchChromium(page: page)
        defer { chromium.terminate() }
        let daemon = try await DaemonProcess.start()
        defer { daemon.stop() }
        let session = try await daemon.createSession(browserAddress: chromium.address)
        let (port, password) = try await daemon.vncPassword(session)
        var quiet = Logger(label: "bench")
        quiet.logLevel = .critical
        // The screen's size, as a client sees it.
        let probe = FrameHub()
        let watching = probe.subscribe(kind: .viewer, capacity: 1) {}
        let sizer = RFBSource(address: "127.0.0.1:\(port)", password: password, hub: probe, options: .init(), logger: quiet) { _ in }
        sizer.start()
        try await Task.sleep(for: .seconds(2))
        sizer.stop()
        watching.cancel()
        let frame = (width: probe.latest?.width ?? 0, height: probe.latest?.height ?? 0)

        print("vnc: \(path.lastPathComponent) in headless Chromium (\(frame.width)x\(frame.height) frames), \(Int(seconds)) s windows")
        print("  clients are libvncclient loops (RFBSource without consumers: each decodes every update, encodes nothing)")
        print("  clients   updates/s each   viewportd CPU   bytes per client-update   raw bytes of the changed tiles   raw full frame   clients CPU   Chromium CPU")
        for count in clients {
            let before = samples(try await daemon.metrics())
            let sources = (0..<count).map { _ in
                RFBSource(address: "127.0.0.1:\(port)", password: password, hub: FrameHub(), options: .init(), logger: quiet) { _ in }
            }
            let connected = Date()
            for source in sources { source.start() }
            try await Task.sleep(for: .seconds(2))
            let cpuStart = daemon.cpuSeconds(), clientsStart = ProcessTree.cpuSeconds(pid: getpid())
            let browser = ProcessTree(root: chromium.pid)
            let chromiumCPU = try await browser.cpuPercent(over: seconds)
            let cpu = 100 * (daemon.cpuSeconds() - cpuStart) / seconds
            let clientsCPU = 100 * (ProcessTree.cpuSeconds(pid: getpid()) - clientsStart) / seconds
            for source in sources { source.stop() }
            let duration = Date().timeIntervalSince(connected)
            try await Task.sleep(for: .seconds(1.5))  // the bridge counts a client's bytes when it leaves
            let after = samples(try await daemon.metrics())
            func delta(_ name: String) -> Double { (after[name] ?? 0) - (before[name] ?? 0) }
            let updates = delta("viewportd_vnc_updates_sent_total")
            let bytes = delta("viewportd_vnc_bytes_sent_total")
            let raw = delta("viewportd_vnc_raw_equivalent_bytes_total")
            print(String(format: "  %7d   %14.1f   %11.0f %%   %23.0f   %30.0f   %14d   %9.0f %%   %8.0f %%",
                         count, updates / Double(count) / duration, cpu, bytes / max(1, updates), raw / max(1, updates),
                         frame.width * frame.height * 4, clientsCPU, chromiumCPU))
        }
        print("  targets: the issue asks for figures, not limits; a full 32-bit frame is the last column")
    }

    private func samples(_ text: String) -> [String: Double] {
        var values: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.contains("{") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let value = Double(parts[1]) { values[String(parts[0])] = value }
        }
        return values
    }
}
