import Foundation
import Recorder
import Testing
import ViewportCore

/// Gaps between captures, in ms: irregular, as a screencast's are (VFR).
private let gaps: [UInt64] = [16, 17, 33, 5, 50, 16, 250, 17, 16, 100]
private func captureTimes(from start: UInt64, count: Int) -> [UInt64] {
    var times = [start]
    for i in 1..<count { times.append(times[i - 1] + gaps[i % gaps.count] * 1000) }
    return times
}

private func settings(queue: Int = 300) -> EncoderSettings {
    var settings = EncoderSettings()
    settings.queueFrames = queue
    return settings
}

@Suite("Recorder")
struct RecorderTests {
    @Test func aRecordingKeepsEveryFrameAtItsCaptureTime_inFullRangeH264_withChapters() async throws {
        let scratch = try Scratch()
        // Chrome's screencast is 1280×577: an odd height, cropped to even.
        let jpegs = try makeJPEGs(scratch, "f", width: 640, height: 361, count: 40)
        #expect(try jpegPixelFormat(scratch.path("f001.jpg")) == "yuvj420p")
        #expect(JPEG.dimensions(FrameBytes(copying: jpegs[0]).bytes)! == (640, 361))
        let origin = wallClockMicros() - 60_000_000
        let times = captureTimes(from: origin, count: 40)
        let keyframeTime = times[20] + 8_000
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        for i in 0..<21 { publish(hub, jpegs[i], at: times[i]) }
        recorder.keyframe(at: keyframeTime)
        for i in 21..<40 { publish(hub, jpegs[i], at: times[i]) }
        let end = times[39] + 100_000
        try await recorder.sync(until: end)
        let stats = await recorder.finish()
        #expect(stats.framesEncoded == 41)
        #expect(stats.framesDropped == 0)
        #expect(stats.width == 640 && stats.height == 360)

        let output = scratch.path("run.mp4")
        let summary = try MP4Cut.cut(fragmented: fragmented, output: output, from: times[0], to: end, chapters: [
            .init(time: times[0], title: "Step 1: open"), .init(time: times[30], title: "Step 2: login"),
        ])
        #expect(summary == MP4Cut.Summary(frames: 41, durationMicros: end - times[0], width: 640, height: 360))
        let probe = try Probe(output)
        #expect(probe.codec == "h264")
        #expect(probe.pixelFormat == "yuvj420p" && probe.colorRange == "pc")
        #expect(probe.width == 640 && probe.height == 360)
        let expected = (times[...20] + [keyframeTime] + times[21...]).map { Double($0 - times[0]) / 1e6 }
        #expect(probe.packets.count == expected.count)
        for (packet, time) in zip(probe.packets, expected) { #expect(abs(packet.pts - time) < 0.001) }
        #expect(probe.packets.filter(\.key).map(\.pts) == [0, expected[21]])
        #expect(abs(probe.duration - Double(end - times[0]) / 1e6) < 0.05)
        #expect(probe.chapters == ["Step 1: open", "Step 2: login"])
        let login = Double(times[30] - times[0]) / 1e6, total = Double(end - times[0]) / 1e6
        #expect(probe.chapterTimes.count == 2)
        for (chapter, wanted) in zip(probe.chapterTimes, [0...login, login...total]) {
            #expect(abs(chapter.lowerBound - wanted.lowerBound) < 0.001)
            #expect(abs(chapter.upperBound - wanted.upperBound) < 0.001)
        }
        let boxes = try topLevelBoxes(output).map(\.type)
        let moov = try #require(boxes.firstIndex(of: "moov"), "\(boxes)"), mdat = try #require(boxes.firstIndex(of: "mdat"), "\(boxes)")
        #expect(moov < mdat)
        #expect(try decodeErrors(output) == "")
        #expect(try decodeErrors(fragmented) == "")
        // The pixels: the 4:2:0 JPEG went straight into the encoder, full range, nothing shifted.
        #expect(try ssim(video: output, frame: 5, against: scratch.path("f006.jpg"), width: 640, height: 360) > 0.95)
    }

    @Test func aRunCutFromTheMiddle_startsAtItsKeyframe_showingTheLatestFrame_andLastsUntilItsEnd() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 640, height: 360, count: 60)
        let origin = wallClockMicros() - 60_000_000
        let times = captureTimes(from: origin, count: 60)
        let (runStart, runEnd) = (times[20] + 5_000, times[45] + 3_000)
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        for i in 0..<21 { publish(hub, jpegs[i], at: times[i]) }
        recorder.keyframe(at: runStart)
        for i in 21..<46 { publish(hub, jpegs[i], at: times[i]) }
        try await recorder.sync(until: runEnd)
        for i in 46..<60 { publish(hub, jpegs[i], at: times[i]) }
        await recorder.finish()

        let output = scratch.path("run.mp4")
        let summary = try MP4Cut.cut(fragmented: fragmented, output: output, from: runStart, to: runEnd, chapters: [
            .init(time: runStart, title: "Step 1: login"),
        ])
        // The keyframe re-encoding frame 20, then frames 21...45.
        #expect(summary.frames == 26)
        #expect(summary.durationMicros == runEnd - runStart)
        let probe = try Probe(output)
        #expect(probe.packets.count == 26)
        #expect(probe.packets.first?.key == true && probe.packets.first?.pts == 0)
        #expect(abs(probe.packets[1].pts - Double(times[21] - runStart) / 1e6) < 0.001)
        #expect(abs(probe.duration - Double(runEnd - runStart) / 1e6) < 0.05)
        #expect(probe.chapters == ["Step 1: login"])
        #expect(try decodeErrors(output) == "")
        let shown = try ssim(video: output, frame: 0, against: scratch.path("f021.jpg"), width: 640, height: 360)
        let later = try ssim(video: output, frame: 0, against: scratch.path("f031.jpg"), width: 640, height: 360)
        #expect(shown > 0.95 && shown > later)
    }

    @Test func syncWritesEveryEarlierFrameToTheFile_whileTheRecorderGoesOn() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 30)
        let origin = wallClockMicros() - 60_000_000
        let times = captureTimes(from: origin, count: 30)
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        for i in 0..<30 { publish(hub, jpegs[i], at: times[i]) }
        try await recorder.sync(until: times[29] + 1)
        let copy = scratch.path("copy.fmp4")
        try FileManager.default.copyItem(atPath: fragmented, toPath: copy)
        let summary = try MP4Cut.cut(fragmented: copy, output: scratch.path("run.mp4"), from: origin,
                                     to: times[29] + 50_000, chapters: [])
        #expect(summary.frames == 30)
        #expect(recorder.stats.bytesWritten > 0)
        await recorder.finish()
    }

    @Test func aCancelledSyncReturnsAtOnce_andTheRecorderGoesOn() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 10)
        let origin = wallClockMicros() - 60_000_000
        let times = captureTimes(from: origin, count: 10)
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        for i in 0..<5 { publish(hub, jpegs[i], at: times[i]) }
        // Cancelled before it asks: a run's completion that gave up waiting must not leave the sync hanging.
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await recorder.sync(until: times[4] + 1)
        }
        await #expect(throws: CancellationError.self) { try await cancelled.value }
        for i in 5..<10 { publish(hub, jpegs[i], at: times[i]) }
        try await recorder.sync(until: times[9] + 1)
        let copy = scratch.path("copy.fmp4")
        try FileManager.default.copyItem(atPath: fragmented, toPath: copy)
        let summary = try MP4Cut.cut(fragmented: copy, output: scratch.path("run.mp4"), from: origin,
                                     to: times[9] + 50_000, chapters: [])
        #expect(summary.frames == 10)
        await recorder.finish()
    }

    @Test func framesOfAnotherSizeOrSubsampling_areScaledIntoTheFirstFramesSize() async throws {
        let scratch = try Scratch()
        let first = try makeJPEGs(scratch, "a", width: 640, height: 360, count: 10)
        let larger = try makeJPEGs(scratch, "b", width: 800, height: 450, count: 10)
        let full = try makeJPEGs(scratch, "c", width: 640, height: 360, count: 5, pixelFormat: "yuvj444p")
        #expect(try jpegPixelFormat(scratch.path("c001.jpg")) == "yuvj444p")
        let jpegs = first + larger + full
        let origin = wallClockMicros() - 60_000_000
        let times = captureTimes(from: origin, count: jpegs.count)
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        for (jpeg, time) in zip(jpegs, times) { publish(hub, jpeg, at: time) }
        let stats = await recorder.finish()
        #expect(stats.framesEncoded == 25 && stats.framesDropped == 0)
        let output = scratch.path("run.mp4")
        _ = try MP4Cut.cut(fragmented: fragmented, output: output, from: origin, to: times.last! + 20_000, chapters: [])
        let probe = try Probe(output)
        #expect(probe.width == 640 && probe.height == 360 && probe.packets.count == 25)
        #expect(try decodeErrors(output) == "")
        #expect(try ssim(video: output, frame: 15, against: scratch.path("b006.jpg"), width: 640, height: 360) > 0.9)
        #expect(try ssim(video: output, frame: 22, against: scratch.path("c003.jpg"), width: 640, height: 360) > 0.9)
    }

    @Test func aCutFromBeforeTheFirstFrame_startsThere_andAFrameFromBeforeTheOriginShowsFromIt_asTheRunsKeyframe()
        async throws
    {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 3)
        let origin = wallClockMicros() - 60_000_000
        let hub = FrameHub()
        publish(hub, jpegs[0], at: origin - 5_000_000)  // on screen when the recording starts
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        // A run starting with the recording: its first frame is the keyframe, none is added.
        recorder.keyframe(at: origin)
        publish(hub, jpegs[1], at: origin + 400_000)
        publish(hub, jpegs[2], at: origin + 900_000)
        #expect(await recorder.finish().framesEncoded == 3)
        let summary = try MP4Cut.cut(fragmented: fragmented, output: scratch.path("a.mp4"), from: origin - 1_000_000,
                                     to: origin + 1_000_000, chapters: [])
        #expect(summary.frames == 3 && summary.durationMicros == 1_000_000)
        #expect(try Probe(scratch.path("a.mp4")).packets.map(\.pts) == [0, 0.4, 0.9])
    }

    @Test func aRunThatEndedBeforeItsFirstFrame_getsTheFirstFrameLaterForItsLength() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 1)
        let origin = wallClockMicros() - 60_000_000
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        recorder.keyframe(at: origin)
        let end = origin + 300_000
        publish(hub, jpegs[0], at: end + 50_000)  // e.g. the final screenshot, asked for when the run ended
        try await recorder.sync(until: end)
        let summary = try MP4Cut.cut(fragmented: fragmented, output: scratch.path("run.mp4"), from: origin, to: end,
                                     chapters: [])
        #expect(summary.frames == 1 && summary.durationMicros == end - origin)
        #expect(try decodeErrors(scratch.path("run.mp4")) == "")
        await recorder.finish()
    }

    @Test func aRecordingWithoutFrames_isAnEmptyFile_thatCannotBeCut() async throws {
        let scratch = try Scratch()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: FrameHub(), path: fragmented, origin: wallClockMicros(),
                                           settings: settings(), logger: testLogger)
        recorder.keyframe(at: wallClockMicros())
        try await recorder.sync(until: wallClockMicros())
        #expect(await recorder.finish() == RecorderStats())
        #expect(throws: RecorderError.self) {
            try MP4Cut.cut(fragmented: fragmented, output: scratch.path("a.mp4"), from: 0, to: nil, chapters: [])
        }
    }

    @Test func everyFrameIsEncodedOrCountedAsDropped() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 10)
        let origin = wallClockMicros() - 60_000_000
        let hub = FrameHub()
        let recorder = try SegmentRecorder(hub: hub, path: scratch.path("session.fmp4"), origin: origin,
                                           settings: settings(queue: 2), logger: testLogger)
        let times = captureTimes(from: origin, count: 201)
        for i in 0..<200 { publish(hub, jpegs[i % 10], at: times[i]) }
        publish(hub, Data([0xFF, 0xD8, 0xFF, 0xC0, 0, 17, 8, 0, 16, 0, 16, 3, 1, 0x22, 0, 2, 0x11, 0, 3, 0x11, 0]),
                at: times[200])
        let stats = await recorder.finish()
        #expect(stats.framesEncoded + stats.framesDropped == 201)
        #expect(stats.framesDropped >= 1)
    }

    @Test func finishIsIdempotent_andAnswersPendingSyncs() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 5)
        let origin = wallClockMicros() - 60_000_000
        let hub = FrameHub()
        let recorder = try SegmentRecorder(hub: hub, path: scratch.path("session.fmp4"), origin: origin,
                                           settings: settings(), logger: testLogger)
        for (i, jpeg) in jpegs.enumerated() { publish(hub, jpeg, at: origin + UInt64(i) * 20_000) }
        recorder.keyframe(at: origin + 200_000)
        async let synced: Void = recorder.sync(until: origin + 300_000)
        async let first = recorder.finish()
        async let second = recorder.finish()
        let (a, b) = await (first, second)
        try await synced
        #expect(a == b && a.framesEncoded >= 5)
        #expect(await recorder.finish() == a)
        try await recorder.sync(until: origin + 400_000)
        recorder.keyframe(at: origin + 500_000)
        #expect(recorder.stats == a)
    }

    @Test func theFileIsTouchedEverySecond_evenWithoutFrames() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 1)
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: wallClockMicros(), settings: settings(),
                                           logger: testLogger)
        publish(hub, jpegs[0], at: wallClockMicros())
        var seen = try MP4Cut.lastActivity(of: fragmented)
        for _ in 0..<2 {
            let before = seen
            #expect(try await eventually { seen = try MP4Cut.lastActivity(of: fragmented); return seen > before })
        }
        #expect(recorder.stats.framesEncoded == 1)
        await recorder.finish()
    }

    @Test func aTornFile_isCutUpToItsLastCompleteFragment() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 40)
        let origin = wallClockMicros() - 60_000_000
        let times = captureTimes(from: origin, count: 40)
        let hub = FrameHub()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(hub: hub, path: fragmented, origin: origin, settings: settings(),
                                           logger: testLogger)
        // A sync cuts a fragment: four of them.
        for batch in 0..<4 {
            for i in batch * 10..<batch * 10 + 10 { publish(hub, jpegs[i], at: times[i]) }
            try await recorder.sync(until: times[batch * 10 + 9] + 1)
        }
        await recorder.finish()
        let packets = try Probe(fragmented).packets
        let boxes = try topLevelBoxes(fragmented)
        #expect(boxes.filter { $0.type == "moof" }.count >= 4)

        // Torn inside the moov's box, then inside every later box: just after its header, halfway, one byte short
        // (a moof torn near its start made the demuxer refuse the whole file).
        for box in boxes.dropFirst() {
          for tornAt in Set([box.offset + 9, box.offset + box.size / 2, box.offset + box.size - 1]) {
            let torn = scratch.path("torn-\(tornAt).fmp4")
            var data = try Data(contentsOf: URL(fileURLWithPath: fragmented))
            data.removeSubrange(tornAt...)
            try data.write(to: URL(fileURLWithPath: torn))
            let readable = boxes.filter { $0.offset + $0.size <= tornAt }.last.map { $0.offset + $0.size } ?? 0
            let complete = packets.filter { $0.pos + $0.size <= readable }.count
            let output = scratch.path("torn-\(tornAt).mp4")
            if complete == 0 {
                #expect(throws: RecorderError.self) {
                    try MP4Cut.cut(fragmented: torn, output: output, from: origin, to: nil, chapters: [])
                }
                continue
            }
            let summary = try MP4Cut.cut(fragmented: torn, output: output, from: origin, to: nil, chapters: [])
            #expect(summary.frames == complete, "torn in \(box.type) at \(tornAt)")
            #expect(try decodeErrors(output) == "")
            #expect(try Probe(output).packets.count == complete)
          }
        }
    }

    @Test func aKilledWriter_leavesAFilePlayableUpToItsLastCompleteFragment() async throws {
        let scratch = try Scratch()
        let fragmented = scratch.path("session.fmp4")
        let child = Process()
        child.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
        child.arguments = ["--testing-library", "swift-testing", "--filter", "childProcessRecordsUntilKilled"]
        child.environment = ProcessInfo.processInfo.environment.merging([childPathVariable: fragmented]) { $1 }
        child.standardOutput = FileHandle.nullDevice
        child.standardError = FileHandle.nullDevice
        try child.run()
        let fragments = try await eventually(within: 120) {
            (try? topLevelBoxes(fragmented).filter { $0.type == "moof" }.count) ?? 0 >= 3
        }
        kill(child.processIdentifier, SIGKILL)
        child.waitUntilExited()
        #expect(fragments)
        #expect(child.terminationReason == .uncaughtSignal)

        let boxes = try topLevelBoxes(fragmented)
        let readable = boxes.last.map { $0.offset + $0.size } ?? 0
        let complete = try Probe(fragmented).packets.filter { $0.pos + $0.size <= readable }.count
        let output = scratch.path("run.mp4")
        let summary = try MP4Cut.cut(fragmented: fragmented, output: output, from: 0, to: nil, chapters: [
            .init(time: 0, title: "Step 1: until the crash"),
        ])
        #expect(summary.frames == complete)
        #expect(complete > 0)
        #expect(try decodeErrors(output) == "")
        let probe = try Probe(output)
        #expect(probe.packets.count == complete)
        #expect(probe.chapters == ["Step 1: until the crash"])
    }

    /// The child of the test above: records a frame every 10 ms until it is killed (or for 2 minutes).
    @Test(.enabled(if: ProcessInfo.processInfo.environment[childPathVariable] != nil))
    func childProcessRecordsUntilKilled() async throws {
        let path = ProcessInfo.processInfo.environment[childPathVariable]!
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 20)
        let hub = FrameHub()
        let recorder = try SegmentRecorder(hub: hub, path: path, origin: wallClockMicros(), settings: settings(),
                                           logger: testLogger)
        for i in 0..<12_000 {
            publish(hub, jpegs[i % jpegs.count], at: wallClockMicros())
            try await Task.sleep(for: .milliseconds(10))
        }
        await recorder.finish()
    }
}

private let childPathVariable = "VIEWPORTD_RECORDER_TEST_CHILD_PATH"

@Suite("Image conversion")
struct ImageConversionTests {
    @Test func aJPEGBecomesALosslessPNGOfItsSize() throws {
        let scratch = try Scratch()
        let jpeg = try makeJPEGs(scratch, "f", width: 320, height: 181, count: 1)[0]
        let png = try ImageConversion.png(fromJPEG: jpeg)
        try png.write(to: URL(fileURLWithPath: scratch.path("f.png")))
        let probe = try run(["ffprobe", "-v", "error", "-show_entries", "stream=codec_name,width,height,pix_fmt", "-of",
                             "csv=p=0", scratch.path("f.png")]).out
        #expect(probe.trimmingCharacters(in: .whitespacesAndNewlines) == "png,320,181,rgb24")
        let similarity = try ssim(video: scratch.path("f.png"), frame: 0, against: scratch.path("f001.jpg"), width: 320,
                                  height: 180)
        #expect(similarity > 0.97, "SSIM \(similarity)")  // decoders upsample chroma differently
        #expect(throws: RecorderError.self) { try ImageConversion.png(fromJPEG: Data([0xFF, 0xD8, 0xFF])) }
    }
}
