import Foundation

/// One recipe's output, measured.
struct Recording {
    /// Frames in the file.
    var frames: Int
    /// CPU seconds of the process that wrote it.
    var cpu: Double
    var bytes: Int
    var ssim: Double
    /// The SSIM of the file as it plays, when its frames are not where the recipe meant them.
    var ssimAsProduced: Double?
    /// Where the CPU went, for viewportd's recorder.
    var stages: RecorderCPU?

    /// Measures `file`, whose frames are meant to be shown at `times` (µs from its start).
    init(_ file: URL, video: VideoInfo, times: [UInt64], cpu: Double, frames: CapturedFrames) throws {
        self.frames = video.times.count
        self.cpu = cpu
        bytes = try file.resourceValues(forKeys: [.fileSizeKey]).fileSize ?? 0
        ssim = try viewerSSIM(file, video, times: times, frames: frames)
        if times != video.times { ssimAsProduced = try viewerSSIM(file, video, times: video.times, frames: frames) }
    }
}

/// The three recordings of one capture, each written by a child process whose CPU is measured.
struct Recipes {
    let frames: CapturedFrames
    let work: URL

    private func log(_ name: String) -> URL { work.appendingPathComponent("\(name).log") }

    /// viewportd's Recorder, fed the frames through a frame hub in a `record-worker` child process.
    func viewportd() throws -> Recording {
        let file = work.appendingPathComponent("viewportd.mp4"), stages = work.appendingPathComponent("cpu.json")
        let cpu = try runMeasured("record-worker", ["/proc/self/exe", "record-worker", "--frames-dir",
                                                    frames.directory.path, "--output", file.path,
                                                    "--cpu-report", stages.path], log: log("viewportd")).cpu
        let video = try VideoInfo(file)
        var recording = try Recording(file, video: video, times: video.times, cpu: cpu, frames: frames)
        recording.stages = try JSONDecoder().decode(RecorderCPU.self, from: Data(contentsOf: stages))
        return recording
    }

    /// ffmpeg's CLI fed the JPEGs, every frame at its capture time, to libx264 with its default threads (cropped to
    /// even sizes, which x264's 4:2:0 needs).
    func ffmpegVFR() throws -> Recording {
        // Each JPEG opens as an input of its own; at such an input's default 25 fps time base, the concat demuxer
        // would round every timestamp to 40 ms.
        let entries = (0..<frames.count).map { index in
            "file '\(frames.file(index).path)'\noption framerate 1000000\n"
                + String(format: "duration %.6f", Double(frames.duration(index)) / 1e6)
        }
        let list = work.appendingPathComponent("frames.ffconcat")
        try (["ffconcat version 1.0"] + entries).joined(separator: "\n").write(to: list, atomically: true, encoding: .utf8)
        let file = work.appendingPathComponent("ffmpeg-x264.mp4")
        let cpu = try runMeasured(
            "ffmpeg x264",
            ["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", list.path, "-fps_mode", "passthrough",
             "-vf", "crop=trunc(iw/2)*2:trunc(ih/2)*2", "-c:v", "libx264", "-preset", "veryfast", "-crf", "28",
             "-y", file.path], log: log("ffmpeg-x264")).cpu
        let video = try VideoInfo(file)
        let captured = frames.times.map { $0 - frames.times[0] }
        guard video.times.count == frames.count,
              zip(video.times, captured).allSatisfy({ max($0, $1) - min($0, $1) <= 1000 })
        else { throw BenchError("ffmpeg x264 did not keep every frame at its capture time (\(video.times.count) frames)") }
        return try Recording(file, video: video, times: video.times, cpu: cpu, frames: frames)
    }

    /// Playwright's video recipe: on a 25 fps grid, each 40 ms slot holds the last frame captured before the slot ends
    /// (Playwright numbers frames `floor(t × 25)` and keeps the last of each number), repeated while nothing newer
    /// comes, piped as JPEGs to ffmpeg with Playwright's arguments.
    func playwright() throws -> Recording {
        let slot: UInt64 = 40_000
        let slots = Int((frames.end - frames.times[0] + slot - 1) / slot)
        let file = work.appendingPathComponent("playwright.webm")
        let cpu = try runMeasured(
            "ffmpeg VP8",
            ["ffmpeg", "-loglevel", "error", "-f", "image2pipe", "-avioflags", "direct", "-fpsprobesize", "0",
             "-probesize", "32", "-analyzeduration", "0", "-c:v", "mjpeg", "-i", "pipe:0", "-y", "-an", "-r", "25",
             "-c:v", "vp8", "-qmin", "0", "-qmax", "50", "-crf", "8", "-deadline", "realtime", "-speed", "8",
             "-b:v", "1M", "-threads", "1", file.path], log: log("playwright")
        ) { input in
            var current = (index: -1, jpeg: Data())
            for end in stride(from: slot, through: UInt64(slots) * slot, by: Int(slot)) {
                let index = frames.index(at: end - 1)
                if index != current.index { current = (index, try Data(contentsOf: frames.file(index))) }
                try input.write(contentsOf: current.jpeg)
            }
        }.cpu
        let video = try VideoInfo(file)
        // Debian's ffmpeg drops the second input frame with these input flags (perf-anchors.md), so every later
        // frame plays 40 ms early: measure the frames on the slots they were written for, and as they play.
        let dropped = slots - video.times.count
        guard dropped == 0 || dropped == 1 else {
            throw BenchError("the VP8 file has \(video.times.count) of \(slots) frames")
        }
        let intended = video.times.indices.map { UInt64($0 == 0 ? 0 : $0 + dropped) * slot }
        return try Recording(file, video: video, times: intended, cpu: cpu, frames: frames)
    }
}
