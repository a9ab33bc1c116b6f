import Foundation

/// Runs `arguments` (the program is looked up on PATH) to completion and returns the CPU seconds, user + system,
/// that it and the children it waited for used, and the largest peak RSS among them, from `wait4`'s rusage. `feed`, when given, writes the child's
/// standard input; its standard output and error go to `log`, whose last line explains a failure (named `name`).
func runMeasured(_ name: String, _ arguments: [String], log: URL, feed: ((FileHandle) throws -> Void)? = nil)
    throws -> (cpu: Double, peakRSSMiB: Double)
{
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    var input: [Int32] = [-1, -1]
    if feed != nil {
        guard pipe(&input) == 0 else { throw BenchError("pipe: \(String(cString: strerror(errno)))") }
        posix_spawn_file_actions_adddup2(&actions, input[0], 0)
        posix_spawn_file_actions_addclose(&actions, input[0])
        posix_spawn_file_actions_addclose(&actions, input[1])
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    }
    posix_spawn_file_actions_addopen(&actions, 2, log.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 2, 1)
    let argv = arguments.map { strdup($0) } + [nil]
    defer { for argument in argv { free(argument) } }
    var pid: pid_t = 0
    let spawned = posix_spawnp(&pid, arguments[0], &actions, nil, argv, environ)
    guard spawned == 0 else { throw BenchError("cannot run \(arguments[0]): \(String(cString: strerror(spawned)))") }

    var feedError: (any Error)?
    if let feed {
        close(input[0])
        let handle = FileHandle(fileDescriptor: input[1], closeOnDealloc: false)
        do { try feed(handle) } catch { feedError = error }
        close(input[1])
    }
    var status: Int32 = 0
    var usage = rusage()
    while wait4(pid, &status, 0, &usage) < 0 {
        guard errno == EINTR else { throw BenchError("wait4 \(arguments[0]): \(String(cString: strerror(errno)))") }
    }
    guard status == 0, feedError == nil else {
        let why = (try? String(contentsOf: log, encoding: .utf8))?.split(separator: "\n").last.map(String.init)
        throw BenchError("\(name) failed"
                         + (status & 0x7f != 0 ? " (signal \(status & 0x7f))" : " (exit \(status >> 8 & 0xff))")
                         + ": \(why ?? feedError.map { "\($0)" } ?? "no message")")
    }
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return (seconds(usage.ru_utime) + seconds(usage.ru_stime), Double(usage.ru_maxrss) / 1024)
}

/// Fails unless every tool is on PATH.
func requireOnPath(_ tools: String...) throws {
    let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
    for tool in tools where !path.contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/\(tool)") }) {
        throw BenchError("\(tool) not found on PATH: install the ffmpeg package")
    }
}

/// A video file's size and its frames' presentation times (µs from the file's zero), from ffprobe.
struct VideoInfo {
    let width: Int
    let height: Int
    let times: [UInt64]

    init(_ file: URL) throws {
        let output = try standardOutput(of: ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                             "stream=width,height:packet=pts_time", "-of", "json", file.path])
        let object = json(output)
        guard let stream = (object["streams"] as? [[String: Any]])?.first, let width = stream["width"] as? Int,
              let height = stream["height"] as? Int, let packets = object["packets"] as? [[String: Any]]
        else { throw BenchError("ffprobe found no video in \(file.path)") }
        self.width = width
        self.height = height
        // Packets come in decode order; sorted, their times are the frames' presentation times.
        times = packets.compactMap { ($0["pts_time"] as? String).flatMap(Double.init) }
            .map { UInt64(max(0, $0 * 1e6).rounded()) }.sorted()
    }
}

/// Runs a tool that is not measured and returns its standard output.
private func standardOutput(of arguments: [String]) throws -> Data {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    try process.run()
    let output = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExited()
    guard process.terminationStatus == 0 else { throw BenchError("\(arguments.joined(separator: " ")) failed") }
    return output
}

/// Every frame of an input, decoded by ffmpeg to 8-bit luma (renumbered, since captures can repeat a timestamp),
/// read one at a time.
private final class GrayFrames {
    let width: Int
    let height: Int
    private(set) var pixels: [UInt8]
    private let process = Process()
    private let output: FileHandle

    init(input: [String], width: Int, height: Int) throws {
        self.width = width
        self.height = height
        pixels = Array(repeating: 0, count: width * height)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["ffmpeg", "-v", "error"] + input + ["-map", "0:v:0", "-fps_mode", "passthrough",
                                                                 "-vf", "setpts=N/(25*TB)", "-f", "rawvideo",
                                                                 "-pix_fmt", "gray", "pipe:1"]
        let pipe = Pipe()
        process.standardOutput = pipe
        output = pipe.fileHandleForReading
        try process.run()
    }

    /// Reads the frames nobody asked for, so ffmpeg can finish (it outlives a SIGTERM while blocked on the pipe).
    deinit {
        while read(at: 0) > 0 {}
        process.waitUntilExited()
    }

    /// Reads the next frame into ``pixels``.
    func next() throws {
        var got = 0
        while got < pixels.count {
            let n = read(at: got)
            guard n > 0 else { throw BenchError("ffmpeg decoded fewer frames than expected") }
            got += n
        }
    }

    /// Reads what ffmpeg has written, up to the end of ``pixels``, into it from `offset`; 0 at the end of the output.
    private func read(at offset: Int) -> Int {
        pixels.withUnsafeMutableBytes { buffer in
            while true {
                let n = Glibc.read(output.fileDescriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if n >= 0 || errno != EINTR { return n }
            }
        }
    }
}

/// What a viewer of the recording sees against the live stream: every source frame compared with the video frame
/// on screen at its capture time (the last one whose presentation time in `times`, µs from the first source
/// frame, is at or before it, give or take 1 ms of timestamp rounding), weighted by how long the source frame is
/// on screen. Luma only, on the area both have.
func viewerSSIM(_ file: URL, _ video: VideoInfo, times: [UInt64], frames: CapturedFrames) throws -> Double {
    let pattern = frames.directory.appendingPathComponent(CapturedFrames.namePattern).path
    let source = try GrayFrames(input: ["-f", "image2", "-i", pattern], width: frames.width, height: frames.height)
    let decoded = try GrayFrames(input: ["-i", file.path], width: video.width, height: video.height)
    try decoded.next()
    var shown = 0
    var total = 0.0
    for index in 0..<frames.count {
        try source.next()
        let time = frames.times[index] - frames.times[0] + 1000
        while shown + 1 < times.count, times[shown + 1] <= time {
            try decoded.next()
            shown += 1
        }
        total += Double(frames.duration(index)) * lumaSSIM(source, decoded)
    }
    return total / Double(frames.end - frames.times[0])
}

/// Mean SSIM of two luma planes over their common top-left area, as ffmpeg's ssim filter computes its Y figure:
/// sums over 4×4 blocks, and the SSIM of every 8×8 window on the 4-pixel grid.
private func lumaSSIM(_ a: GrayFrames, _ b: GrayFrames) -> Double {
    let columns = min(a.width, b.width) / 4, rows = min(a.height, b.height) / 4
    // Per block: sum of a, sum of b, sum of a² + b², sum of a·b.
    var blocks = [SIMD4<Int32>](repeating: .zero, count: columns * rows)
    a.pixels.withUnsafeBufferPointer { pa in
        b.pixels.withUnsafeBufferPointer { pb in
            for row in 0..<rows {
                for column in 0..<columns {
                    var s1: Int32 = 0, s2: Int32 = 0, ss: Int32 = 0, s12: Int32 = 0
                    for y in row * 4..<row * 4 + 4 {
                        for x in column * 4..<column * 4 + 4 {
                            let p = Int32(pa[y * a.width + x]), q = Int32(pb[y * b.width + x])
                            s1 += p
                            s2 += q
                            ss += p * p + q * q
                            s12 += p * q
                        }
                    }
                    blocks[row * columns + column] = SIMD4(s1, s2, ss, s12)
                }
            }
        }
    }
    let c1 = (0.01 * 0.01 * 255 * 255 * 64).rounded(), c2 = (0.03 * 0.03 * 255 * 255 * 64 * 63).rounded()
    var total = 0.0
    for row in 0..<rows - 1 {
        for column in 0..<columns - 1 {
            let i = row * columns + column
            let s = blocks[i] &+ blocks[i + 1] &+ blocks[i + columns] &+ blocks[i + columns + 1]
            let s1 = Double(s[0]), s2 = Double(s[1])
            let variance = Double(s[2]) * 64 - s1 * s1 - s2 * s2, covariance = Double(s[3]) * 64 - s1 * s2
            total += (2 * s1 * s2 + c1) * (2 * covariance + c2) / ((s1 * s1 + s2 * s2 + c1) * (variance + c2))
        }
    }
    return total / Double((rows - 1) * (columns - 1))
}
