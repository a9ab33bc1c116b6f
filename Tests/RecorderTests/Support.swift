import Foundation
import Logging
import Recorder
import Testing
import ViewportCore

let testLogger = Logger(label: "RecorderTests")

struct ToolError: Error, CustomStringConvertible {
    var description: String
}

/// A directory of its own per test, removed afterwards.
final class Scratch {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("recorder-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
}

/// Runs a tool found on PATH and returns its standard output and error; a non-zero exit status throws.
@discardableResult
func run(_ arguments: [String]) throws -> (out: String, err: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    // Standard error goes to a file, so neither output can fill a pipe and block the tool.
    let errorFile = FileManager.default.temporaryDirectory
        .appendingPathComponent("recorder-tests-\(UUID().uuidString).err")
    _ = FileManager.default.createFile(atPath: errorFile.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: errorFile) }
    let out = Pipe()
    process.standardOutput = out
    process.standardError = try FileHandle(forWritingTo: errorFile)
    try process.run()
    let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExited()
    let stderr = try String(contentsOf: errorFile, encoding: .utf8)
    guard process.terminationStatus == 0 else {
        throw ToolError(description: "\(arguments.joined(separator: " ")) exited \(process.terminationStatus): "
                            + stderr)
    }
    return (stdout, stderr)
}

/// `count` JPEGs of ffmpeg's moving test pattern (q:v 5, like a q75 screencast), in `pixelFormat`'s subsampling.
func makeJPEGs(_ scratch: Scratch, _ name: String, width: Int, height: Int, count: Int,
               pixelFormat: String = "yuvj420p") throws -> [Data] {
    // Cropped in RGB: a crop in 4:2:0 would round an odd height (Chrome's 577) down to even.
    try run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=\(width)x\(height + height % 2):rate=60",
             "-vf", "format=rgb24,crop=\(width):\(height):0:0,format=\(pixelFormat)", "-frames:v", "\(count)",
             "-q:v", "5", scratch.path("\(name)%03d.jpg")])
    return try (1...count).map { index in
        try Data(contentsOf: URL(fileURLWithPath: scratch.path(String(format: "\(name)%03d.jpg", index))))
    }
}

/// The JPEG at `path` as ffprobe sees it: "yuvj420p" for a 4:2:0 JPEG.
func jpegPixelFormat(_ path: String) throws -> String {
    try run(["ffprobe", "-v", "error", "-show_entries", "stream=pix_fmt", "-of", "csv=p=0", path]).out
        .trimmingCharacters(in: .whitespacesAndNewlines)
}

@discardableResult
func publish(_ hub: FrameHub, _ jpeg: Data, at time: UInt64) -> Frame? {
    let bytes = FrameBytes(copying: jpeg)
    let size = JPEG.dimensions(bytes.bytes)!
    return hub.publish(jpeg: bytes, width: size.width, height: size.height, captureTime: time, url: nil)
}

/// What ffprobe says about an MP4.
struct Probe {
    struct Packet {
        var pts: Double
        var key: Bool
        var pos: Int
        var size: Int
    }

    var codec: String
    var pixelFormat: String
    var colorRange: String
    var width: Int
    var height: Int
    var duration: Double
    var packets: [Packet]
    var chapters: [String]
    /// Start and end of each chapter, in seconds.
    var chapterTimes: [ClosedRange<Double>]

    init(_ path: String) throws {
        let json = try run(["ffprobe", "-v", "error", "-show_streams", "-show_packets", "-show_chapters",
                            "-select_streams", "v:0", "-of", "json", path]).out
        let root = try JSONSerialization.jsonObject(with: Data(json.utf8)) as! [String: Any]
        let stream = (root["streams"] as! [[String: Any]])[0]
        codec = stream["codec_name"] as! String
        pixelFormat = stream["pix_fmt"] as! String
        colorRange = stream["color_range"] as? String ?? "unknown"
        width = stream["width"] as! Int
        height = stream["height"] as! Int
        duration = Double(stream["duration"] as? String ?? "") ?? -1
        packets = (root["packets"] as? [[String: Any]] ?? []).map { p in
            Packet(pts: Double(p["pts_time"] as! String)!, key: (p["flags"] as! String).hasPrefix("K"),
                   pos: Int(p["pos"] as! String)!, size: Int(p["size"] as! String)!)
        }
        let chapterList = root["chapters"] as? [[String: Any]] ?? []
        chapters = chapterList.compactMap { ($0["tags"] as? [String: Any])?["title"] as? String }
        chapterTimes = chapterList.map { Double($0["start_time"] as! String)!...Double($0["end_time"] as! String)! }
    }
}

/// What a full decode of `path` reports as errors (empty when it plays cleanly). Frames keep their own times:
/// ffmpeg's default would put this VFR video on a frame-rate grid and complain of frames closer than a tick.
func decodeErrors(_ path: String) throws -> String {
    try run(["ffmpeg", "-v", "error", "-i", path, "-fps_mode", "passthrough", "-enc_time_base", "-1", "-f", "null",
             "-"]).err
}

/// The file's complete top-level MP4 boxes (a torn last one left out): type, offset and size.
func topLevelBoxes(_ path: String) throws -> [(type: String, offset: Int, size: Int)] {
    let data = try Data(contentsOf: URL(fileURLWithPath: path))
    var boxes: [(String, Int, Int)] = []
    var offset = 0
    while offset + 8 <= data.count {
        var size = data[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
        let type = String(decoding: data[offset + 4..<offset + 8], as: UTF8.self)
        if size == 1 { size = data[offset + 8..<offset + 16].reduce(0) { $0 << 8 | Int($1) } }
        if size == 0 { size = data.count - offset }
        guard size >= 8, offset + size <= data.count else { break }
        boxes.append((type, offset, size))
        offset += size
    }
    return boxes
}

/// SSIM (ffmpeg's "All") of video frame `index` against the image at `imagePath`, both scaled to `width`×`height`.
func ssim(video: String, frame index: Int, against imagePath: String, width: Int, height: Int) throws -> Double {
    let err = try run(["ffmpeg", "-v", "info", "-nostats", "-i", video, "-i", imagePath, "-lavfi",
                       "[0:v]select=eq(n\\,\(index)),scale=\(width):\(height),setpts=0,format=yuvj420p[a];"
                           + "[1:v]scale=\(width):\(height),setpts=0,format=yuvj420p[b];[a][b]ssim",
                       "-frames:v", "1", "-f", "null", "-"]).err
    guard let range = err.range(of: #"All:([0-9.]+)"#, options: .regularExpression) else {
        throw ToolError(description: "no SSIM in: \(err)")
    }
    return Double(err[range].dropFirst(4))!
}

/// Polls `condition` every 50 ms until it holds; gives up (returns false) after `seconds`.
func eventually(within seconds: Double = 30, _ condition: () throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try condition()
}
