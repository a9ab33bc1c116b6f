import ArgumentParser
import Foundation
import Synchronization
import ViewportDaemon
import WebSocketIO

struct Live: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The live view, JPEG against H.264, from one run on one session: bytes per viewer-minute and the"
            + " SSIM of what an H.264 viewer decodes, the daemon's CPU with and without a recording, and"
            + " capture-to-screen latency in the watch page.")
    @Option(help: "The page to open.") var page = "../shared/fixtures/scroll.html"
    @Option(help: "Seconds of the wire measurement (both viewers at once).") var seconds = 20.0
    @Option(help: "Seconds per CPU window.") var cpuSeconds = 10.0
    @Option(help: "Seconds of latency samples per codec in the watch page.") var latencySeconds = 15.0
    @Option(help: "H.264 viewers in the many-viewer rows.") var viewers = 100
    @Option(help: "What to measure, comma-separated: wire, cpu, latency.") var parts = "wire,cpu,latency"

    func run() async throws {
        raiseFileLimit()
        signal(SIGPIPE, SIG_IGN)
        try requireOnPath("ffmpeg", "ffprobe")
        let (chromium, path) = try await launchChromium(page: page)
        defer { chromium.terminate() }
        let daemon = try await DaemonProcess.start()
        defer { daemon.stop() }
        let session = try await daemon.createSession(browserAddress: chromium.address)
        let url = try await daemon.viewerURL(session)
        try await Task.sleep(for: .seconds(2))
        print("live: \(path.lastPathComponent), one session, JPEG and H.264 viewers on loopback")

        let parts = Set(parts.split(separator: ",").map(String.init))
        if parts.contains("wire") { try await wire(url: url) }
        if parts.contains("cpu") { try await cpu(daemon: daemon, session: session, url: url) }
        if parts.contains("latency") { try await latency(daemon: daemon, session: session) }
    }

    /// One JPEG and one H.264 viewer at once: their bytes, and what the H.264 viewer decodes against the JPEG
    /// viewer's frames (the source, as the screencast delivered it).
    private func wire(url: String) async throws {
        let jpeg = try StreamCapture(url: url), h264 = try StreamCapture(url: url + "&codec=h264")
        defer { jpeg.close(); h264.close() }
        try await jpeg.waitUntilOpen()
        try await h264.waitUntilOpen()
        try await Task.sleep(for: .seconds(2))
        jpeg.count(true)
        h264.count(true)
        try await Task.sleep(for: .seconds(seconds))
        jpeg.count(false)
        h264.count(false)
        let source = jpeg.frames().filter(\.counted), video = h264.frames()
        guard let first = video.firstIndex(where: \.key), source.count > 10 else {
            throw BenchError("the viewers got \(source.count) JPEG and \(video.count) H.264 frames: no measurement")
        }
        let counted = video.filter(\.counted)
        let perMinute = 60 / seconds
        func megabytes(_ bytes: Int) -> String { String(format: "%7.2f MB/min  %6.2f Mbit/s", Double(bytes) * perMinute / 1e6,
                                                        Double(bytes) * 8 / seconds / 1e6) }
        let ssim = try decodedSSIM(source: source, video: Array(video[first...]))
        print("""
          wire, \(Int(seconds)) s, both viewers at once (bytes are whole WebSocket messages: header + picture)
            JPEG viewer            \(megabytes(jpeg.bytes()))   \(String(format: "%5.1f", Double(source.count) / seconds)) frames/s
            H.264 viewer           \(megabytes(h264.bytes()))   \(String(format: "%5.1f", Double(counted.count) / seconds)) frames/s (\(counted.filter(\.key).count) key frames)
            H.264 / JPEG bytes     1/\(String(format: "%.0f", Double(jpeg.bytes()) / Double(max(1, h264.bytes())))) (target on scroll: at most 1/20)
            SSIM of what the H.264 viewer decoded against the JPEG frames (luma, weighted by time on screen):
              every source frame       \(String(format: "%.3f", ssim.shown)) over \(ssim.frames) frames, \(ssim.skipped) of them skipped (target >= 0.97)
              the frames it decoded    \(String(format: "%.3f", ssim.decoded)) (the encode's quality alone)
        """)
    }

    /// Writes the source frames as a capture and the H.264 viewer's access units as an Annex B stream, and
    /// compares them as the record benchmark does (each source frame against the decoded frame on screen at its
    /// time): over every source frame (what the viewer saw, frames the encode skipped included), and over the
    /// source frames the viewer decoded (the encode's own quality).
    private func decodedSSIM(source: [StreamCapture.Frame], video: [StreamCapture.Frame]) throws
        -> (shown: Double, decoded: Double, frames: Int, skipped: Int)
    {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-bench-live-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let frames = source.filter { $0.sequence >= video[0].sequence && $0.sequence <= video.last!.sequence }
        guard frames.count > 1 else { throw BenchError("the H.264 and JPEG viewers share no frames") }
        let interval = (frames.last!.captured - frames[0].captured) / UInt64(frames.count - 1)
        func capture(_ frames: [StreamCapture.Frame], _ name: String) throws -> CapturedFrames {
            let directory = work.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            for (index, frame) in frames.enumerated() {
                try frame.picture.write(to: directory.appendingPathComponent(CapturedFrames.fileName(index)))
            }
            let times = frames.map { String(format: "%.6f", Double($0.captured) / 1e6) }
                + [String(format: "%.6f", Double(frames.last!.captured + interval) / 1e6)]
            try (times.joined(separator: "\n") + "\n").write(to: directory.appendingPathComponent("times.txt"),
                                                             atomically: true, encoding: .utf8)
            return try CapturedFrames.load(directory)
        }

        var stream = Data()
        for frame in video {
            if frame.key, let description = frame.description { stream += try annexBParameterSets(avcC: description) }
            stream += try annexB(accessUnit: frame.picture)
        }
        let file = work.appendingPathComponent("viewer.h264")
        try stream.write(to: file)
        let info = try VideoInfo(file)
        func ssim(_ frames: [StreamCapture.Frame], _ name: String) throws -> Double {
            let shown = video.map { $0.captured > frames[0].captured ? $0.captured - frames[0].captured : 0 }
            return try viewerSSIM(file, info, times: shown, frames: try capture(frames, name))
        }
        let decodedSequences = Set(video.map(\.sequence))
        let decoded = frames.filter { decodedSequences.contains($0.sequence) }
        return (try ssim(frames, "all"), try ssim(decoded, "decoded"), frames.count, frames.count - decoded.count)
    }

    /// Daemon CPU in windows: viewers alone (JPEG, then H.264 with no recording), then a recording alone and with
    /// H.264 viewers, which share its encode.
    private func cpu(daemon: DaemonProcess, session: String, url: String) async throws {
        print("  daemon CPU, \(Int(cpuSeconds)) s windows: % of one core, and ms per captured frame (the source's frame"
              + " rate varies with the machine's load; the ratios use ms per frame)")
        func captured() async throws -> Double { Double(try await daemon.capturedFrames()) }
        func window(_ name: String, viewers count: Int, codec: String) async throws -> Double {
            var clients: ViewerClients?
            if count > 0 {
                clients = try ViewerClients(count: count, url: url + "&codec=\(codec)")
                try await clients!.waitUntilOpen(timeout: 30)
            }
            try await Task.sleep(for: .seconds(2))
            clients?.reset()
            let start = daemon.cpuSeconds(), framesBefore = try await captured()
            try await Task.sleep(for: .seconds(cpuSeconds))
            let used = daemon.cpuSeconds() - start, frames = try await captured() - framesBefore
            let fps = clients.map { String(format: "%5.1f", Double($0.report().delivered.median) / cpuSeconds) } ?? "    –"
            clients?.close()
            let perFrame = 1000 * used / max(frames, 1)
            print("    \(name.padding(toLength: 40, withPad: " ", startingAt: 0))"
                  + String(format: " %4.0f %%  ", 100 * used / cpuSeconds)
                  + (frames > 0 ? String(format: "%5.2f", perFrame) : "    –") + " ms/frame"
                  + String(format: "  source %4.1f frames/s, viewer ", frames / cpuSeconds) + fps)
            try await Task.sleep(for: .seconds(2))
            return perFrame
        }
        _ = try await window("nobody watching, no recording", viewers: 0, codec: "jpeg")
        _ = try await window("1 JPEG viewer", viewers: 1, codec: "jpeg")
        _ = try await window("1 H.264 viewer, no recording", viewers: 1, codec: "h264")
        _ = try await window("\(viewers) H.264 viewers, no recording", viewers: viewers, codec: "h264")
        let run = try await daemon.api("POST", "/v1/browser_sessions/\(session)/runs", ["title": "live bench"])
        guard let runID = run["run_id"] as? String else { throw BenchError("no run id: \(run)") }
        let alone = try await window("recording alone", viewers: 0, codec: "h264")
        let one = try await window("recording + 1 H.264 viewer", viewers: 1, codec: "h264")
        let many = try await window("recording + \(viewers) H.264 viewers", viewers: viewers, codec: "h264")
        _ = try await daemon.api("POST", "/v1/runs/\(runID)/complete", ["status": "completed"])
        print(String(format: "    recording + 1 viewer / recording alone %.2fx, + %d viewers %.2fx (target <= 1.1x)",
                     one / alone, viewers, many / alone))
    }

    /// The watch page in a second headless Chromium, once with `?codec=jpeg` and once with H.264 (WebCodecs):
    /// capture time (the browser's, on the frame) to the frame drawn on the page's canvas.
    private func latency(daemon: DaemonProcess, session: String) async throws {
        let token = try await daemon.api("POST", "/v1/browser_sessions/\(session)/viewer_tokens", ["ttl_seconds": 3600])
        guard let watch = token["watch_url"] as? String else { throw BenchError("no watch_url: \(token)") }
        print("  watch page in a second headless Chromium, \(Int(latencySeconds)) s each, capture -> drawn on the canvas")
        var medians: [String: (Double, Double, Double)] = [:]
        for codec in ["jpeg", "h264"] {
            let watcher = try await Chromium.launch(url: watch + (codec == "jpeg" ? "&codec=jpeg" : ""))
            defer { watcher.terminate() }
            let page = try await DevToolsPage(browser: watcher.address)
            defer { page.close() }
            let deadline = Date().addingTimeInterval(20)
            while try await page.evaluate("window.viewportd && window.viewportd.codec === '\(codec)'"
                                          + " && window.viewportd.framesDrawn > 30") as? Bool != true {
                guard Date() < deadline else { throw BenchError("the watch page drew no \(codec) frames in 20 s") }
                try await Task.sleep(for: .milliseconds(200))
            }
            _ = try await page.evaluate("window.viewportd.latencySamples.length = 0; window.viewportd.pageSamples.length = 0; window.viewportd.framesDrawn = 0; window.viewportd.framesReceived = 0")
            try await Task.sleep(for: .seconds(latencySeconds))
            let state = try await page.evaluate("JSON.stringify({samples: window.viewportd.latencySamples, page: window.viewportd.pageSamples,"
                                                + " drawn: window.viewportd.framesDrawn, errors: window.viewportd.stats.decoderErrors,"
                                                + " received: window.viewportd.framesReceived,"
                                                + " queue: typeof decoder === 'object' && decoder ? decoder.decodeQueueSize : null,"
                                                + " codec: window.viewportd.codec})") as? String ?? "{}"
            let object = json(Data(state.utf8))
            let samples = ((object["samples"] as? [Double]) ?? []).sorted()
            guard !samples.isEmpty else { throw BenchError("the watch page reported no latency: \(state)") }
            func quantile(_ q: Double, _ values: [Double]? = nil) -> Double {
                let values = values ?? samples
                return values.isEmpty ? .nan : values[min(values.count - 1, Int(Double(values.count) * q))]
            }
            let inPage = ((object["page"] as? [Double]) ?? []).sorted()
            let fps = Double(object["drawn"] as? Int ?? 0) / latencySeconds
            let arrived = Double(object["received"] as? Int ?? 0) / latencySeconds
            medians[codec] = (quantile(0.5), quantile(0.99), fps)
            print(String(format: "    %-6@ p50 %4.0f ms  p99 %4.0f ms  %5.1f frames drawn/s of %5.1f received  decoder errors %d%@",
                         codec == "jpeg" ? "JPEG" : "H.264", quantile(0.5), quantile(0.99), fps, arrived,
                         object["errors"] as? Int ?? -1,
                         (object["queue"] as? Int).map { "  decode queue at the end \($0)" } ?? ""))
            print(String(format: "           of which in the page (message arrived -> drawn: decode and draw) p50 %4.1f ms  p99 %4.1f ms",
                         quantile(0.5, inPage), quantile(0.99, inPage)))
        }
        if let j = medians["jpeg"], let h = medians["h264"] {
            print(String(format: "    H.264 - JPEG: p50 %+.0f ms, p99 %+.0f ms (target: within one frame interval, %.0f ms at"
                             + " the JPEG page's %.0f frames/s)", h.0 - j.0, h.1 - j.1, 1000 / max(j.2, 1), j.2))
        }
    }
}

/// The SPS and PPS of an avcC record (base64, as `hello` and `config` carry it) as Annex B NAL units.
private func annexBParameterSets(avcC base64: String) throws -> Data {
    guard let record = Data(base64Encoded: base64), record.count > 7 else { throw BenchError("not an avcC record") }
    let bytes = [UInt8](record)
    var out = Data(), offset = 5
    for countMask in [0x1F, 0xFF] {
        guard offset < bytes.count else { throw BenchError("a short avcC record") }
        let count = Int(bytes[offset]) & countMask
        offset += 1
        for _ in 0..<count {
            guard offset + 2 <= bytes.count else { throw BenchError("a short avcC record") }
            let length = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
            guard offset + 2 + length <= bytes.count else { throw BenchError("a short avcC record") }
            out += [0, 0, 0, 1] + bytes[offset + 2..<offset + 2 + length]
            offset += 2 + length
        }
    }
    return out
}

/// An AVC-format access unit (4-byte big-endian lengths) as Annex B (start codes).
private func annexB(accessUnit: Data) throws -> Data {
    let bytes = [UInt8](accessUnit)
    var out = Data(capacity: bytes.count + 16), offset = 0
    while offset + 4 <= bytes.count {
        let length = bytes[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
        guard offset + 4 + length <= bytes.count else { throw BenchError("a NAL unit past its access unit") }
        out += [0, 0, 0, 1] + bytes[offset + 4..<offset + 4 + length]
        offset += 4 + length
    }
    return out
}

/// One viewer that keeps every frame it gets while collecting: sequence, capture time, key flag and picture,
/// with the H.264 configuration (avcC) that was current at each key frame.
final class StreamCapture: @unchecked Sendable {
    struct Frame {
        var sequence: UInt64
        var captured: UInt64
        var key: Bool
        var description: String?
        var picture: Data
        /// Whether it came while bytes were being counted.
        var counted: Bool
    }
    private struct State {
        var open = false
        var counting = false
        var description: String?
        var frames: [Frame] = []
        var bytes = 0
    }
    private let state = Mutex(State())
    private var socket: WebSocket?

    init(url: String) throws {
        socket = try clientLoop.connectWebSocket(to: url, delegate: Delegate(owner: self), maxMessageBytes: 16 << 20)
    }

    func waitUntilOpen() async throws {
        for _ in 0..<500 where !state.withLock({ $0.open }) { try await Task.sleep(for: .milliseconds(20)) }
        guard state.withLock({ $0.open }) else { throw BenchError("a viewer did not connect") }
    }

    /// Counts bytes and marks frames while `on`; frames are kept from the start, so a stream of encoded pictures
    /// begins at its first key frame.
    func count(_ on: Bool) { state.withLock { $0.counting = on } }
    func frames() -> [Frame] { state.withLock { $0.frames } }
    func bytes() -> Int { state.withLock { $0.bytes } }
    func close() { socket?.close(code: 1000, reason: "bench done") }

    fileprivate func received(_ message: InboundMessage) {
        state.withLock { s in
            if s.counting { s.bytes += message.data.count }
            guard message.isBinary else {
                let object = json(message.data)
                if let description = object["description"] as? String { s.description = description }
                return
            }
            let data = message.data
            let h264 = data.starts(with: Array("VPH1".utf8))
            let headerBytes = h264 ? 28 : 24
            guard data.count > headerBytes, let (sequence, captured) = frameHeader(data) else { return }
            let key = !h264 || data[data.startIndex + 24] & 1 == 1
            s.frames.append(Frame(sequence: sequence, captured: captured, key: key, description: key ? s.description : nil,
                                  picture: Data(data.dropFirst(headerBytes)), counted: s.counting))
        }
    }

    private final class Delegate: WebSocketDelegate {
        let owner: StreamCapture
        init(owner: StreamCapture) { self.owner = owner }
        func webSocketDidOpen(_ socket: WebSocket) { owner.state.withLock { $0.open = true } }
        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) { owner.received(message) }
        func nextMessage(for socket: WebSocket) -> OutboundMessage? { nil }
        func hasMessages(for socket: WebSocket) -> Bool { false }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {}
    }
}

/// The page target of a Chromium, for `Runtime.evaluate` over DevTools.
final class DevToolsPage: @unchecked Sendable {
    private struct State {
        var open = false
        var nextID = 1
        var outbox: [OutboundMessage] = []
        var answers: [Int: Data] = [:]
    }
    private let state = Mutex(State())
    private var socket: WebSocket!

    init(browser: String) async throws {
        let url = try await pageTarget(of: browser)
        socket = try clientLoop.connectWebSocket(to: url, delegate: Delegate(owner: self), maxMessageBytes: 64 << 20)
        for _ in 0..<500 where !state.withLock({ $0.open }) { try await Task.sleep(for: .milliseconds(20)) }
    }

    /// The value of `expression` in the page (JSON-compatible values only), within 10 s.
    func evaluate(_ expression: String) async throws -> Any? {
        let id = try state.withLock { s in
            let id = s.nextID
            s.nextID += 1
            let data = try JSONSerialization.data(withJSONObject: [
                "id": id, "method": "Runtime.evaluate", "params": ["expression": expression, "returnByValue": true],
            ] as [String: Any])
            s.outbox.append(.text(Payload(copying: data)))
            return id
        }
        socket.requestWrite()
        for _ in 0..<1000 {
            if let answer = state.withLock({ $0.answers.removeValue(forKey: id) }) {
                let result = (json(answer)["result"] as? [String: Any])?["result"] as? [String: Any]
                return result?["value"]
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw BenchError("DevTools did not answer Runtime.evaluate in 10 s")
    }

    func close() { socket.close(code: 1000, reason: "bench done") }

    private final class Delegate: WebSocketDelegate {
        let owner: DevToolsPage
        init(owner: DevToolsPage) { self.owner = owner }
        func webSocketDidOpen(_ socket: WebSocket) { owner.state.withLock { $0.open = true } }
        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            let data = Data(message.data)
            if let id = json(data)["id"] as? Int { owner.state.withLock { $0.answers[id] = data } }
        }
        func nextMessage(for socket: WebSocket) -> OutboundMessage? {
            owner.state.withLock { $0.outbox.isEmpty ? nil : $0.outbox.removeFirst() }
        }
        func hasMessages(for socket: WebSocket) -> Bool { owner.state.withLock { !$0.outbox.isEmpty } }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {}
    }
}
