import CDPSource
import Foundation
import Logging
import ViewportCore
import ViewportDaemon

/// A captured screencast on disk, the identical input of every recording recipe: `frame00000.jpg`, ... and
/// `times.txt`, which holds each frame's capture time (CDP `metadata.timestamp`, seconds since the epoch, raised to
/// the previous frame's where Chrome's goes back, as the frame hub does) on a line of its own, then the end of the
/// capture.
struct CapturedFrames {
    let directory: URL
    /// Capture time of each frame, µs since the Unix epoch.
    let times: [UInt64]
    /// End of the capture: the last frame is on screen until then.
    let end: UInt64
    let width: Int
    let height: Int

    var count: Int { times.count }
    /// Seconds from the first frame to the end of the capture.
    var seconds: Double { Double(end - times[0]) / 1e6 }

    func file(_ index: Int) -> URL { directory.appendingPathComponent(Self.fileName(index)) }
    static func fileName(_ index: Int) -> String { String(format: namePattern, index) }
    /// The frames' names, as a printf (and ffmpeg image2) pattern.
    static let namePattern = "frame%05d.jpg"

    /// Bytes of all the JPEGs.
    func bytes() throws -> Int {
        try (0..<count).reduce(0) { $0 + (try file($1).resourceValues(forKeys: [.fileSizeKey]).fileSize ?? 0) }
    }

    /// How long frame `index` is on screen, in µs.
    func duration(_ index: Int) -> UInt64 { (index + 1 < count ? times[index + 1] : end) - times[index] }

    /// The frame on screen at `time` (µs since the first frame): the last one captured at or before it.
    func index(at time: UInt64) -> Int {
        var low = 0, high = count - 1
        while low < high {
            let middle = (low + high + 1) / 2
            if times[middle] - times[0] <= time { low = middle } else { high = middle - 1 }
        }
        return low
    }

    static func load(_ directory: URL) throws -> CapturedFrames {
        guard let text = try? String(contentsOf: directory.appendingPathComponent("times.txt"), encoding: .utf8) else {
            throw BenchError("no capture in \(directory.path): times.txt is missing")
        }
        let values = try text.split(whereSeparator: \.isNewline).map { line in
            guard let seconds = Double(line) else { throw BenchError("times.txt: not a time: \(line)") }
            return UInt64((seconds * 1e6).rounded())
        }
        guard values.count >= 2 else { throw BenchError("\(directory.path)/times.txt holds no frame") }
        let first = try Data(contentsOf: directory.appendingPathComponent(fileName(0)))
        guard let size = first.withUnsafeBytes({ JPEG.dimensions($0) }) else {
            throw BenchError("\(fileName(0)) is not a JPEG")
        }
        return CapturedFrames(directory: directory, times: Array(values.dropLast()), end: values.last!,
                              width: size.width, height: size.height)
    }

    /// Screencasts `page` in a fresh headless Chromium through viewportd's own CDP source (JPEG q75, every frame
    /// acknowledged at once) and saves `seconds` of frames into `directory`, after a 2 s warm-up. Removes the
    /// directory when it fails.
    static func capture(page: URL, seconds: Double, into directory: URL) async throws -> CapturedFrames {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        do {
            return try await saveScreencast(page: page, seconds: seconds, into: directory)
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
    }

    private static func saveScreencast(page: URL, seconds: Double, into directory: URL) async throws -> CapturedFrames {
        let chromium = try await Chromium.launch(url: page.absoluteString)
        defer { chromium.terminate() }
        let hub = FrameHub()
        var logger = Logger(label: "viewportd-bench")
        logger.logLevel = .warning
        let source = CDPSource(address: chromium.address, hub: hub, loop: clientLoop, options: .init(), logger: logger,
                               onStateChange: { _ in })
        let subscription = hub.subscribe(kind: .recorder, capacity: 10_000, wake: {})
        source.start()
        defer {
            subscription.cancel()
            source.stop()
        }
        try await Task.sleep(for: .seconds(2))
        while subscription.next() != nil {}  // the warm-up, with the first-frame screenshot

        let span = UInt64(seconds * 1e6)
        var times: [UInt64] = []
        let deadline = Date().addingTimeInterval(seconds + 10)
        while Date() < deadline {
            try await Task.sleep(for: .milliseconds(100))
            while let frame = subscription.next() {
                if let first = times.first, frame.captureTime >= first + span {
                    let lines = (times + [first + span]).map { String(format: "%.6f", Double($0) / 1e6) }
                    try (lines.joined(separator: "\n") + "\n").write(to: directory.appendingPathComponent("times.txt"),
                                                                      atomically: true, encoding: .utf8)
                    return try load(directory)
                }
                try frame.jpeg.data.write(to: directory.appendingPathComponent(fileName(times.count)))
                times.append(frame.captureTime)
            }
        }
        throw BenchError("the screencast of \(page.lastPathComponent) gave \(times.count) frames in \(Int(seconds + 10)) s,"
                         + " short of \(Int(seconds)) s of capture: a page that stops changing, or a machine too busy")
    }
}
