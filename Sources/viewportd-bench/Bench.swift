import ArgumentParser
import Foundation
import ViewportDaemon

@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viewportd-bench",
        abstract: "Benchmarks that print figures (not tests). Build with -c release.",
        subcommands: [Fanout.self, Capture.self, Record.self, RecordWorker.self, VNCBench.self, S3Bench.self,
                      ClusterBench.self, Live.self, LinkBench.self])
}

struct Fanout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Frames in through the CDP path of one session, out to N loopback WebSocket viewers.")
    @Option(help: "Concurrent viewers.") var viewers = 100
    @Option(help: "Frames per second the fake browser sends.") var fps = 30
    @Option(help: "Size of each JPEG frame in kB.") var frameKb = 80
    @Option(help: "Measured seconds (after a 2 s warm-up).") var seconds = 10.0

    func run() async throws {
        raiseFileLimit()
        let browser = try FakeBrowser(fps: fps, frameBytes: frameKb * 1000)
        let daemon = try await DaemonProcess.start()
        defer { daemon.stop() }
        let session = try await daemon.createSession(browserAddress: browser.address)
        let clients = try ViewerClients(count: viewers, url: try await daemon.viewerURL(session))
        try await clients.waitUntilOpen(timeout: 30)
        try await Task.sleep(for: .seconds(2))

        clients.reset()
        let cpuStart = daemon.cpuSeconds()
        let sentStart = browser.framesSent
        try await Task.sleep(for: .seconds(seconds))
        let cpu = daemon.cpuSeconds() - cpuStart
        let sent = browser.framesSent - sentStart
        let report = clients.report()

        print("""
        fanout: \(viewers) viewers, \(fps) fps, \(frameKb) kB frames, \(Int(seconds)) s measured
          frames sent by the browser      \(sent)
          delivered per viewer            min \(report.delivered.min)  median \(report.delivered.median)  max \(report.delivered.max)
          skipped per viewer (seq gaps)   min \(report.skipped.min)  median \(report.skipped.median)  max \(report.skipped.max)
          viewers that missed no frame    \(report.viewersWithoutGaps) of \(viewers)
          relay latency (browser send -> viewer received, includes CDP JSON + base64 decode)
                                          p50 \(ms(report.latency(0.50))) ms  p99 \(ms(report.latency(0.99))) ms  max \(ms(report.latency(1))) ms
          daemon CPU                      \(String(format: "%.0f", 100 * cpu / seconds)) % of one core
          daemon peak RSS                 \(daemon.peakRSSMegabytes()) MiB
          targets: p99 <= 2 ms (100 viewers, 80 kB, 30 fps); no drops for viewers that keep up (500 viewers); RSS <= 80 MiB
        """)
    }
}

struct Capture: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Chromium's CPU with viewportd sharing one screencast, beside one screencast per viewer (the anchor).")
    @Option(help: "The page to open.") var page = "Tests/ViewportDaemonTests/Fixtures/anim.html"
    @Option(help: "Seconds per measured window.") var seconds = 15.0
    @Option(help: "Viewers in the many-viewer rows.") var viewers = 16
    @Option(help: "The viewers' codec: jpeg, or h264 (the session's one encode, for viewers alone).") var codec = "jpeg"

    func run() async throws {
        raiseFileLimit()
        let (chromium, path) = try await launchChromium(page: page)
        defer { chromium.terminate() }
        try await Task.sleep(for: .seconds(2))
        print("capture: \(path.lastPathComponent), \(Int(seconds)) s windows, \(codec) viewers; Chromium CPU is all its"
              + " processes, % of one core")
        print("  row                                              Chromium CPU   frames/s each   viewportd CPU")

        func row(_ name: String, _ measure: () async throws -> (Double, Double?, Double?)) async throws {
            let (cpu, fps, daemonCPU) = try await measure()
            print("  \(name.padding(toLength: 47, withPad: " ", startingAt: 0))  \(String(format: "%6.0f %%", cpu))"
                  + "   \(fps.map { String(format: "%10.1f", $0) } ?? "         –")"
                  + "   \(daemonCPU.map { String(format: "%8.0f %%", $0) } ?? "        –")")
        }
        let tree = ProcessTree(root: chromium.pid)
        try await row("no screencast (browser alone)") { (try await tree.cpuPercent(over: seconds), nil, nil) }

        let daemon = try await DaemonProcess.start()
        defer { daemon.stop() }
        let session = try await daemon.createSession(browserAddress: chromium.address)
        let url = try await daemon.viewerURL(session) + "&codec=\(codec)"
        try await Task.sleep(for: .seconds(1))
        try await row("viewportd session, nobody watching") {
            let start = daemon.cpuSeconds()
            let cpu = try await tree.cpuPercent(over: seconds)
            return (cpu, nil, 100 * (daemon.cpuSeconds() - start) / seconds)
        }
        for count in [1, viewers] {
            let clients = try ViewerClients(count: count, url: url)
            try await clients.waitUntilOpen(timeout: 30)
            try await Task.sleep(for: .seconds(2))
            clients.reset()
            let start = daemon.cpuSeconds()
            let cpu = try await tree.cpuPercent(over: seconds)
            let daemonCPU = 100 * (daemon.cpuSeconds() - start) / seconds
            let fps = Double(clients.report().delivered.median) / seconds
            clients.close()
            try await row("viewportd, \(count) viewer\(count == 1 ? "" : "s") (one shared screencast)") { (cpu, fps, daemonCPU) }
            try await Task.sleep(for: .seconds(2))
        }
        _ = try await daemon.closeSession(session)
        try await Task.sleep(for: .seconds(2))
        for count in [1, viewers] {
            let subscribers = try await DirectScreencasts(count: count, browser: chromium.address)
            try await Task.sleep(for: .seconds(2))
            subscribers.reset()
            let cpu = try await tree.cpuPercent(over: seconds)
            let fps = subscribers.medianFrames() / seconds
            subscribers.close()
            try await row("anchor: \(count) CDP screencast\(count == 1 ? "" : "s"), one per viewer") { (cpu, fps, nil) }
            try await Task.sleep(for: .seconds(2))
        }
        print("  targets: \(viewers) viewers cost Chromium <= 1.1x one viewer, each >= 95 % of the source rate;"
              + " nobody watching <= browser alone + 5 points")
    }
}

/// Headless Chromium showing the page file at `page`; a usage error if there is none.
func launchChromium(page: String) async throws -> (Chromium, URL) {
    let path = URL(fileURLWithPath: page).standardizedFileURL
    guard FileManager.default.fileExists(atPath: path.path) else { throw ValidationError("no page at \(page)") }
    return (try await Chromium.launch(url: path.absoluteString), path)
}

func ms(_ micros: Double) -> String { String(format: "%.2f", micros / 1000) }

func raiseFileLimit() {
    var limit = rlimit()
    getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    limit.rlim_cur = limit.rlim_max
    setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}
