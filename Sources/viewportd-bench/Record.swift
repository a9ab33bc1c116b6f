import ArgumentParser
import Foundation
import Logging
import Recorder
import ViewportCore

struct Record: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Records one captured screencast three ways (viewportd's recorder, ffmpeg x264 VFR, Playwright's"
            + " recipe) and prints CPU, bytes and SSIM of each, with the ratios to the anchors of the same run.")
    @Option(help: "The page to screencast.") var page = "../shared/fixtures/scroll.html"
    @Option(help: "Seconds of frames to capture.") var seconds = 30.0
    @Option(help: "Reuse an earlier capture (the directory this command printed) instead of capturing.")
    var framesDir: String?

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)  // an ffmpeg that dies must fail the write to its pipe, not end the bench
        try requireOnPath("ffmpeg", "ffprobe")
        let frames: CapturedFrames
        if let framesDir {
            frames = try CapturedFrames.load(URL(fileURLWithPath: framesDir))
        } else {
            let path = URL(fileURLWithPath: page).standardizedFileURL
            guard FileManager.default.fileExists(atPath: path.path) else { throw ValidationError("no page at \(page)") }
            let name = "frames-\(path.deletingPathExtension().lastPathComponent)-\(UUID().uuidString.prefix(8))"
            frames = try await CapturedFrames.capture(page: path, seconds: seconds, into: temporary(name))
        }
        try await waitForNoChromium()
        let work = temporary("record-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }

        print(String(format: "record: %d frames in %.1f s (%.1f fps), %.1f KB a frame, %dx%d, in %@"
                         + " (--frames-dir reuses them)", frames.count, frames.seconds,
                     Double(frames.count) / frames.seconds, Double(try frames.bytes()) / Double(frames.count) / 1000,
                     frames.width, frames.height, frames.directory.path))
        if Double(frames.count) / frames.seconds < 50 {
            print("warning: perf-anchors.md's captures run at about 60 fps; a busy machine gives fewer frames, and the"
                  + " VFR recipes' CPU scales with them")
        }
        print("""
          CPU: user + system of the child process that writes the file (wait4 rusage); the SSIM's work is not counted
          SSIM: luma, as ffmpeg's ssim filter computes its Y figure, of every source frame against the video frame on
                screen at its capture time, weighted by how long the source frame is on screen
        """)

        let settings = EncoderSettings()
        let recipes = Recipes(frames: frames, work: work)
        let rows: [(name: String, result: Result<Recording, any Error>)] = [
            ("viewportd recorder, \(settings.preset) crf \(settings.crf), \(settings.threads) thread"
                + (settings.threads == 1 ? "" : "s"), Result { try recipes.viewportd() }),
            ("ffmpeg CLI x264 VFR, veryfast crf 28", Result { try recipes.ffmpegVFR() }),
            ("Playwright: 25 fps grid, VP8 realtime 1M", Result { try recipes.playwright() }),
        ]
        report(rows, seconds: frames.seconds)
        let failed = rows.filter { (try? $0.result.get()) == nil }.count
        if failed > 0 {
            fflush(nil)  // the table before the error when stdout is a pipe
            throw BenchError("\(failed) of \(rows.count) recipes failed")
        }
    }

    /// Prints the table, viewportd's ratios to the anchors of this run against the targets, and perf-anchors.md's
    /// figures from another run.
    private func report(_ rows: [(name: String, result: Result<Recording, any Error>)], seconds: Double) {
        let width = rows.map(\.name.count).max()!
        func pad(_ text: String) -> String { text.padding(toLength: width, withPad: " ", startingAt: 0) }
        print("  \(pad("recipe")) frames in file   CPU s/min   MB/min   SSIM")
        for (name, result) in rows {
            switch result {
            case .success(let r):
                print("  \(pad(name))" + String(format: " %14d   %9.1f   %6.2f   %.3f", r.frames, r.cpu / seconds * 60,
                                                       Double(r.bytes) / seconds * 60 / 1e6, r.ssim)
                      + (r.ssimAsProduced.map { String(format: " (%.3f as produced)", $0) } ?? ""))
            case .failure(let error):
                print("  \(pad(name)) failed: \(error)")
            }
        }

        let ours = try? rows[0].result.get(), x264 = try? rows[1].result.get(), playwright = try? rows[2].result.get()
        if let ours, let stages = ours.stages { printStages(stages, cpu: ours.cpu, frames: ours.frames, seconds: seconds) }
        func verdict(_ met: Bool) -> String { met ? "yes" : "NO" }
        if let ours, let x264 {
            let cpu = ours.cpu / x264.cpu, bytes = Double(ours.bytes) / Double(x264.bytes), ssim = ours.ssim - x264.ssim
            print(String(format: "  viewportd / ffmpeg x264: CPU %.2f (target <= 0.55: %@), bytes %.2f (<= 1.10: %@),"
                             + " SSIM %+.4f (>= -0.005: %@)",
                         cpu, verdict(cpu <= 0.55), bytes, verdict(bytes <= 1.1), ssim, verdict(ssim >= -0.005)))
        }
        if let ours, let playwright {
            let cpu = ours.cpu / playwright.cpu
            print(String(format: "  viewportd / Playwright: CPU %.2f (the issue's first figure, <= 0.33: %@;"
                             + " perf-anchors.md replaces it with the targets above)", cpu, verdict(cpu <= 1.0 / 3)))
        }
        print("""
          perf-anchors.md (another run): CPU s/min ffmpeg x264 VFR anim 22, scroll 39; Playwright anim 11, scroll 21;
            scroll SSIM 0.980 and 0.883 (0.788 as produced), MB/min 3.1 and 7.5
        """)
    }

    /// Prints where the recorder's CPU (`cpu` s, all of its process's) went, stage by stage.
    private func printStages(_ stages: RecorderCPU, cpu: Double, frames: Int, seconds: Double) {
        let e = stages.encoder
        func cpuSeconds(_ ns: UInt64) -> Double { Double(ns) / 1e9 }
        let rest: UInt64 = e.total - e.decode - e.encode - e.mux - e.publish
        let rows: [(String, Double)] = [
            ("JPEG decode into the encoder's YUV 4:2:0 picture", cpuSeconds(e.decode)),
            ("x264 encode", cpuSeconds(e.encode)),
            ("mux: packets into the fragmented MP4", cpuSeconds(e.mux)),
            ("encoder thread, the rest (queues, wake-ups, x264 open)", cpuSeconds(rest)),
            ("MP4Cut: the final MP4 from the fragmented one", cpuSeconds(stages.cut)),
            ("the rest of the process (reading the frames, start-up)", cpu - cpuSeconds(e.total + stages.cut)),
        ]
        print(String(format: "  viewportd recorder's CPU by stage (thread CPU; %d pictures encoded):", e.pictures))
        print("    stage                                                     µs/frame   CPU s/min   share")
        for (name, value) in rows + [("all (wait4)", cpu)] {
            print("    " + name.padding(toLength: 56, withPad: " ", startingAt: 0)
                  + String(format: " %9.0f   %9.2f   %4.0f %%", value / Double(frames) * 1e6, value / seconds * 60,
                           value / cpu * 100))
        }
        print("    perf-anchors.md (another run): JPEG decode alone (ffmpeg), anim 10 CPU s/min, scroll 13")
    }

    private func temporary(_ name: String) -> URL {
        FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-bench-\(name)")
    }

    /// Waits up to 5 s for every Chromium process to exit (ours or not): they would skew the CPU figures.
    private func waitForNoChromium() async throws {
        for _ in 0..<50 {
            let running = try FileManager.default.contentsOfDirectory(atPath: "/proc").contains { entry in
                Int(entry) != nil
                    && ((try? String(contentsOfFile: "/proc/\(entry)/comm", encoding: .utf8)) ?? "").hasPrefix("chrom")
            }
            if !running { return }
            try await Task.sleep(for: .milliseconds(100))
        }
        print("warning: Chromium processes are still running and skew the CPU figures (pkill -9 -f chromium)")
    }
}

/// The recorder row's child process: feeds a capture through viewportd's Recorder as the daemon does, as fast as
/// the recorder takes the frames, so that its CPU is measured like ffmpeg's.
struct RecordWorker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record-worker", abstract: "Records a capture with viewportd's Recorder (for `record`).",
        shouldDisplay: false)
    @Option(help: "A capture saved by `record`.") var framesDir: String
    @Option(help: "The MP4 to write.") var output: String
    @Option(help: "Where to write the CPU by stage (JSON).") var cpuReport: String

    func run() async throws {
        let frames = try CapturedFrames.load(URL(fileURLWithPath: framesDir))
        let hub = FrameHub()
        let settings = EncoderSettings()
        let fragmented = output + ".fragmented.mp4"
        let encoder = SessionEncoder(hub: hub, settings: settings, viewersAlone: false,
                                     logger: Logger(label: "record-worker"))
        let recorder = try SegmentRecorder(encoder: encoder, path: fragmented, origin: frames.times[0])
        for index in 0..<frames.count {
            // Frames not encoded yet are in the recorder's queue or its encoder: keep the queue from overflowing.
            while index - Int(recorder.stats.framesEncoded + recorder.stats.framesDropped) >= settings.queueFrames - 8 {
                try await Task.sleep(for: .milliseconds(20))
            }
            let jpeg = FrameBytes(copying: try Data(contentsOf: frames.file(index)))
            guard let size = JPEG.dimensions(jpeg.bytes) else {
                throw BenchError("\(frames.file(index).path) is not a JPEG")
            }
            hub.publish(jpeg: jpeg, width: size.width, height: size.height, captureTime: frames.times[index], url: nil)
        }
        let stats = await recorder.finish()
        guard stats.framesDropped == 0 else { throw BenchError("the recorder dropped \(stats.framesDropped) frames") }
        let cutStart = threadCPU()
        _ = try MP4Cut.cut(fragmented: fragmented, output: output, from: frames.times[0], to: frames.end, chapters: [])
        let report = RecorderCPU(encoder: encoder.cpu, cut: threadCPU() - cutStart)
        try JSONEncoder().encode(report).write(to: URL(fileURLWithPath: cpuReport))
    }
}

/// Where the recorder row's CPU went (thread CPU, ns), as `record-worker` measured it.
struct RecorderCPU: Codable {
    /// The encoder thread's, by stage.
    var encoder: EncoderCPU
    /// MP4Cut's, writing the final file from the fragmented one (as the daemon does when a run ends).
    var cut: UInt64
}
