import Foundation
import Recorder
import Testing
import ViewportCore

/// `pictures` as an Annex B file (the avcC's SPS and PPS before each key frame), as a decoder fed them would see them.
private func annexB(_ pictures: [EncodedFrame], into path: String) throws {
    var out = Data()
    for picture in pictures {
        if picture.isKey {
            let avcC = [UInt8](picture.config.avcC)
            var offset = 5
            for mask: UInt8 in [0x1F, 0xFF] {
                let count = Int(avcC[offset] & mask)
                offset += 1
                for _ in 0..<count {
                    let length = Int(avcC[offset]) << 8 | Int(avcC[offset + 1])
                    out += [0, 0, 0, 1] + avcC[offset + 2..<offset + 2 + length]
                    offset += 2 + length
                }
            }
        }
        let unit = picture.accessUnit.bytes
        var offset = 0
        while offset + 4 <= unit.count {
            let length = unit[offset..<offset + 4].reduce(0) { $0 << 8 | Int($1) }
            out += [0, 0, 0, 1] + unit[offset + 4..<offset + 4 + length]
            offset += 4 + length
        }
    }
    try out.write(to: URL(fileURLWithPath: path))
}

private func drain(_ subscription: EncodedSubscription) -> [EncodedFrame] {
    var pictures: [EncodedFrame] = []
    while let picture = subscription.next() { pictures.append(picture) }
    return pictures
}

@Suite("Session encoder")
struct SessionEncoderTests {
    @Test func aViewerGetsAKeyFrameFirstThenPicturesThatDecode_andTheEncoderStopsWhenItLeaves() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 640, height: 361, count: 30)
        let hub = FrameHub()
        let encoder = SessionEncoder(hub: hub, settings: EncoderSettings(), viewersAlone: true, logger: testLogger)
        #expect(encoder.packets.servesViewers && !encoder.isRunning)
        let viewer = encoder.packets.subscribe(capacity: 100) {}
        #expect(encoder.isRunning)
        let start = wallClockMicros()
        for i in 0..<30 { publish(hub, jpegs[i], at: start + UInt64(i) * 16_000) }
        #expect(try await eventually { viewer.stats.queued == 30 })
        let pictures = drain(viewer)
        #expect(pictures.map(\.isKey) == [true] + Array(repeating: false, count: 29), "asked once, before the start")
        #expect(pictures.map(\.sequence) == Array(1...30))
        #expect(pictures.allSatisfy { $0.width == 640 && $0.height == 361 })
        let config = try #require(encoder.packets.config)
        #expect(config.codec.range(of: #"^avc1\.[0-9a-f]{6}$"#, options: .regularExpression) != nil)
        #expect(config.codedWidth == 640 && config.codedHeight == 360)
        // The wire header: VPH1, the sequence, the key flag.
        let header = UnsafeRawBufferPointer(start: pictures[0].wireMessage, count: EncodedFrame.wireHeaderSize)
        #expect(Array(header[0..<4]) == Array("VPH1".utf8) && header[11] == 1 && Array(header[24..<28]) == [1, 0, 0, 0])
        let file = scratch.path("viewer.h264")
        try annexB(pictures, into: file)
        #expect(try decodeErrors(file) == "")
        viewer.cancel()
        #expect(try await eventually(within: 5) { !encoder.isRunning })
    }

    @Test func aViewerJoiningAStillPageGetsTheShownPictureAgainAsAKeyFrame_andARecordingKeepsIt() async throws {
        let scratch = try Scratch()
        let jpegs = try makeJPEGs(scratch, "f", width: 320, height: 240, count: 2)
        let hub = FrameHub()
        let encoder = SessionEncoder(hub: hub, settings: EncoderSettings(), viewersAlone: false, logger: testLogger)
        #expect(!encoder.packets.servesViewers, "no recording, and viewers alone may not run it")
        let origin = wallClockMicros()
        let fragmented = scratch.path("session.fmp4")
        let recorder = try SegmentRecorder(encoder: encoder, path: fragmented, origin: origin)
        #expect(encoder.packets.servesViewers)
        publish(hub, jpegs[0], at: origin + 10_000)
        publish(hub, jpegs[1], at: origin + 30_000)
        try await recorder.sync(until: origin + 40_000)
        let first = encoder.packets.subscribe(capacity: 10) {}
        #expect(try await eventually(within: 3) { first.hasFrames }, "no frame comes: the picture shown, again")
        let joined = drain(first)
        #expect(joined.map(\.isKey) == [true] && joined[0].sequence == 2)
        try await recorder.sync(until: wallClockMicros())
        let stats = await recorder.finish()
        #expect(stats.framesEncoded == 3, "the recording has the key frame too")
        #expect(try decodeErrors(fragmented) == "")
        first.cancel()
        #expect(try await eventually(within: 5) { !encoder.isRunning })
    }
}
