import ArgumentParser
import Foundation
import NetworkNamespaces
import Synchronization
import ViewportCore
import WebSocketIO

/// A viewer behind a slow link: the daemon and Chromium here, one viewer in a network namespace whose link is
/// shaped, one on loopback beside it for the frames there were to get.
struct LinkBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link",
        abstract: "Frames per second a viewer gets through a shaped link (a network namespace), JPEG beside H.264.",
        subcommands: [LinkViewer.self])
    @Option(parsing: .upToNextOption, help: "The pages to open, one after the other.")
    var pages = ["../shared/fixtures/scroll.html", "../shared/fixtures/anim.html"]
    @Option(parsing: .upToNextOption, help: "The viewers' codecs, one row each.") var codecs = ["jpeg", "h264"]
    @Option(help: "The link's rate in Mbit/s, each direction (tbf).") var rateMbit = 10.0
    @Option(help: "Seconds of warm-up before each window.") var warmup = 5.0
    @Option(help: "Measured seconds per row.") var seconds = 15.0

    func run() async throws {
        raiseFileLimit()
        for page in pages where !FileManager.default.fileExists(atPath: page) { throw ValidationError("no page at \(page)") }
        // Its teardown SIGKILLs the viewer in the namespace, and removes the namespace, however this ends.
        try await ClusterNet.with(hosts: ["viewer"]) { net in
            let far = try net.host("viewer")
            try net.shape(far.name, rateMbit: rateMbit)
            let daemon = try await DaemonProcess.start(host: net.rootAddress)
            defer { daemon.stop() }
            print("""
            link: one viewer through a \(String(format: "%g", rateMbit)) Mbit/s link (tbf, its own network namespace), \
            one on loopback beside it; \(Int(seconds)) s windows after \(Int(warmup)) s; Chromium 1280x720
              page          codec  source fps  loopback fps  link fps  link Mbit/s  latency p50/p99 loopback   through the link
            """)
            for page in pages {
                let (chromium, path) = try await launchChromium(page: page)
                defer { chromium.terminate() }
                let session = try await daemon.createSession(browserAddress: chromium.address)
                try await Task.sleep(for: .seconds(1))
                for codec in codecs {
                    let url = try await daemon.viewerURL(session) + "&codec=\(codec)"
                    let start = wallClockMicros() + UInt64(warmup * 1e6)
                    let window = LinkWindow(from: start, until: start + UInt64(seconds * 1e6))
                    let near = try LinkRecorder(url: url, window: window)
                    let viewer = try LinkViewer.launch(in: far, url: url, window: window)
                    try await window.sleep(until: window.from)
                    let (captured, sent) = (try await daemon.capturedFrames(), try net.bytesSent(to: far.name))
                    try await window.sleep(until: window.until)
                    let sourceFPS = Double(try await daemon.capturedFrames() - captured) / seconds
                    let linkMbit = Double(try net.bytesSent(to: far.name) - sent) * 8 / seconds / 1e6
                    let (n, f) = (near.figures(), try await viewer.figures())
                    near.close()
                    func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
                    print("  " + pad(path.lastPathComponent, 14) + pad(codec, 7)
                          + pad(String(format: "%10.1f", sourceFPS), 12) + pad(String(format: "%12.1f", n.fps(seconds)), 14)
                          + pad(String(format: "%8.1f", f.fps(seconds)), 10) + pad(String(format: "%11.2f", linkMbit), 13)
                          + pad("\(ms(n.latencyP50)) / \(ms(n.latencyP99)) ms", 27) + "\(ms(f.latencyP50)) / \(ms(f.latencyP99)) ms")
                    try await Task.sleep(for: .seconds(2))
                }
                _ = try await daemon.closeSession(session)
            }
            print("""
              source fps: frames the session captured (viewportd_frames_captured_total); fps: distinct frames a viewer got;
              link Mbit/s: bytes out of the daemon's side of the link (the viewer's stream with TCP/IP overhead);
              latency: capture time in the frame header (Chromium's screencast timestamp) to the frame received, one clock
            """)
        }
    }
}

/// The measured window, in wall-clock µs since the epoch (the frames' capture times are on the same clock).
struct LinkWindow: Codable {
    var from: UInt64
    var until: UInt64

    func sleep(until time: UInt64) async throws {
        let now = wallClockMicros()
        if time > now { try await Task.sleep(for: .microseconds(time - now)) }
    }
}

/// What one viewer got in the window.
struct LinkFigures: Codable {
    var frames: Int
    var bytes: Int
    var latencyP50: Double
    var latencyP99: Double

    func fps(_ seconds: Double) -> Double { Double(frames) / seconds }
}

/// One viewer (JPEG or H.264: both headers have the sequence at byte 4, the capture time at 12) recording the
/// distinct frames it gets in a window.
final class LinkRecorder: @unchecked Sendable {
    private struct State {
        var sequences = Set<UInt64>()
        var bytes = 0
        /// Signed: Chromium's capture times can be a few ms ahead of this clock.
        var latencies: [Int64] = []
    }

    private let window: LinkWindow
    private let state = Mutex(State())
    private var socket: WebSocket?

    init(url: String, window: LinkWindow) throws {
        self.window = window
        socket = try clientLoop.connectWebSocket(to: url, delegate: Delegate(recorder: self), maxMessageBytes: 16 << 20)
    }

    func figures() -> LinkFigures {
        state.withLock { s in
            let sorted = s.latencies.sorted()
            func quantile(_ q: Double) -> Double {
                sorted.isEmpty ? .nan : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * q))])
            }
            return LinkFigures(frames: s.sequences.count, bytes: s.bytes, latencyP50: quantile(0.5), latencyP99: quantile(0.99))
        }
    }

    func close() { socket?.close(code: 1000, reason: "bench done") }

    fileprivate func received(_ data: Data) {
        let now = wallClockMicros()
        guard now >= window.from, now < window.until, let (sequence, captured) = frameHeader(data) else { return }
        state.withLock { s in
            s.bytes += data.count
            if s.sequences.insert(sequence).inserted { s.latencies.append(Int64(bitPattern: now &- captured)) }
        }
    }

    private final class Delegate: WebSocketDelegate {
        let recorder: LinkRecorder
        init(recorder: LinkRecorder) { self.recorder = recorder }
        func webSocketDidOpen(_ socket: WebSocket) {}
        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            if message.isBinary { recorder.received(message.data) }
        }
        func nextMessage(for socket: WebSocket) -> OutboundMessage? { nil }
        func hasMessages(for socket: WebSocket) -> Bool { false }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {}
    }
}

/// `link viewer`: the viewer on the far side of the link, this executable run inside the namespace. It prints its
/// ``LinkFigures`` as JSON when the window is over.
struct LinkViewer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viewer", abstract: "One viewer for a window, its figures printed as JSON (run by link).",
        shouldDisplay: false)
    @Option var url: String
    @Option var from: UInt64
    @Option var until: UInt64

    func run() async throws {
        let window = LinkWindow(from: from, until: until)
        let recorder = try LinkRecorder(url: url, window: window)
        try await window.sleep(until: until)
        recorder.close()
        let output = try JSONEncoder().encode(recorder.figures())
        FileHandle.standardOutput.write(output)
    }

    /// Starts this executable's `link viewer` inside `host`.
    static func launch(in host: ClusterNet.Host, url: String, window: LinkWindow) throws -> Running {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: host.exec[0])
        process.arguments = Array(host.exec.dropFirst()) + [
            try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"), "link", "viewer",
            "--url", url, "--from", "\(window.from)", "--until", "\(window.until)",
        ]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        return Running(process: process, output: pipe)
    }

    struct Running {
        let process: Process
        let output: Pipe

        /// Its figures, once it has printed them and exited.
        func figures() async throws -> LinkFigures {
            let (process, output) = (process, output)
            let data = await withCheckedContinuation { continuation in
                DispatchQueue.global().async { continuation.resume(returning: output.fileHandleForReading.readDataToEndOfFile()) }
            }
            process.waitUntilExited()
            guard process.terminationStatus == 0, let figures = try? JSONDecoder().decode(LinkFigures.self, from: data) else {
                throw BenchError("the viewer in the namespace exited \(process.terminationStatus): \(String(decoding: data, as: UTF8.self))")
            }
            return figures
        }
    }
}

extension DaemonProcess {
    /// `viewportd_frames_captured_total`: frames the sources published.
    func capturedFrames() async throws -> Int {
        let line = try await metrics().split(separator: "\n").first { $0.hasPrefix("viewportd_frames_captured_total ") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") }.map { Int($0) } ?? 0
    }
}

extension ClusterNet {
    /// Bytes the root namespace has sent to the host over its link.
    func bytesSent(to name: String) throws -> Int {
        let path = "/sys/class/net/\(try host(name).link)/statistics/tx_bytes"
        return Int(try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }
}
