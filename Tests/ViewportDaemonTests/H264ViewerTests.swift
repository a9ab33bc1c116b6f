import Foundation
import Testing
@testable import ViewportDaemon

/// Where `client.py` writes the H.264 viewers' pictures: one Annex B file per viewer.
private func h264Files() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-h264-\(UUID().uuidString)").path
}

/// What a viewer's decoder would find wrong: header errors, a first picture that is not a key frame, a sequence
/// number that goes back (a key frame may repeat the picture before it), a picture whose size is not the one of the
/// configuration it came under, and whatever ffmpeg says decoding the pictures. Returns the decoded picture count.
private func checkDecodable(_ viewer: ViewerResult, sourceLocation: SourceLocation = #_sourceLocation) throws -> Int {
    let h264 = try #require(viewer.h264, "an H.264 viewer", sourceLocation: sourceLocation)
    #expect(h264.errors.isEmpty, "\(h264.errors)", sourceLocation: sourceLocation)
    #expect(h264.keys.first == true, "the first picture is a key frame", sourceLocation: sourceLocation)
    let sequences = viewer.sequences
    #expect(sequences.indices.dropFirst().allSatisfy { i in
        sequences[i] > sequences[i - 1] || (sequences[i] == sequences[i - 1] && h264.keys[i])
    }, "sequence numbers increase: \(sequences)", sourceLocation: sourceLocation)
    for (index, size) in viewer.sizes.enumerated() {
        let config = h264.configs[h264.configIndex[index]]
        #expect([config["width"].int, config["height"].int] == size.map(Optional.some),
                "picture \(index) of \(size) came under \(config)", sourceLocation: sourceLocation)
    }
    let file = try #require(h264.file, sourceLocation: sourceLocation)
    #expect(try decodeErrors(file).isEmpty, sourceLocation: sourceLocation)
    return Int(try ffprobe(file)["streams"][0]["nb_read_frames"].string ?? "") ?? -1
}

@Suite("H.264 viewers with a real Chromium", .serialized)
struct H264ViewerTests {
    @Test func h264ViewersStartAtAKeyFrameAndGetPicturesThatDecodeWithoutErrors() async throws {
        try await withLiveSession { daemon, _, id in
            let viewers = try await Client.watch(daemon.streamURL(id, query: "codec=h264"), key: keyA, viewers: 2,
                                                 seconds: 4, h264Out: h264Files())
            for viewer in viewers {
                #expect(viewer.hello?["format"].string == "h264")
                #expect(viewer.frames >= 60, "an animated page gives tens of frames a second: \(viewer.frames)")
                #expect(try checkDecodable(viewer) == viewer.frames, "every picture decodes")
                let config = try #require(viewer.h264?.configs.first)
                #expect(config["codec"].string?.range(of: #"^avc1\.[0-9a-f]{6}$"#, options: .regularExpression) != nil)
                #expect((config["coded_width"].int ?? 1) % 2 == 0 && (config["coded_height"].int ?? 1) % 2 == 0)
                #expect(viewer.pages.first?.hasSuffix("anim.html") == true, "the page URL is announced")
            }
            // One encode: both viewers got the same pictures, with the session's sequence numbers.
            #expect(Set(viewers[0].sequences).intersection(viewers[1].sequences).count >= 60)
            // The encoder runs while somebody needs it.
            let encoder = try #require(daemon.daemon.sessions.encoder(id: id))
            try await eventually("the encoder stops when its last viewer left") { !encoder.isRunning }
            // A viewer that joins a running encoder is told its configuration in hello.
            async let first = Client.watch(daemon.streamURL(id, query: "codec=h264"), key: keyA, seconds: 3)
            try await Task.sleep(for: .seconds(1.5))
            let late = try #require(try await Client.watch(daemon.streamURL(id, query: "codec=h264"), key: keyA,
                                                           seconds: 1.5, h264Out: h264Files()).first)
            #expect(late.hello?["codec"].string?.hasPrefix("avc1.") == true)
            #expect(late.hello?["description"].string?.isEmpty == false)
            #expect(late.texts("config").isEmpty, "nothing changed since hello")
            #expect(late.frames >= 30)
            #expect(try checkDecodable(late) == late.frames)
            _ = try await first
        }
    }

    @Test func anUnknownCodecOrH264AsJSONIsRefusedWith400AndADetail() async throws {
        try await withLiveSession { daemon, _, id in
            for query in ["codec=vp9", "codec=h264&format=json", "codec="] {
                let viewer = try #require(try await Client.watch(daemon.streamURL(id, query: query), key: keyA).first)
                #expect(viewer.handshakeStatus == 400, "\(query)")
                let detail = try JSONDecoder().decode(JSON.self, from: Data((viewer.body ?? "").utf8))["detail"].string
                #expect(detail?.contains("codec") == true, "\(query): \(detail ?? "no detail")")
            }
        }
    }

    @Test func aSizeChangeSendsANewConfigBeforeTheFirstPictureOfTheNewSize() async throws {
        try await withLiveSession { daemon, browser, id in
            async let watched = Client.watch(daemon.streamURL(id, query: "codec=h264"), key: keyA, seconds: 5,
                                             h264Out: h264Files())
            try await Task.sleep(for: .seconds(2))
            let window = try await Client.cdp(browser, "Browser.getWindowForTarget", page: "anim.html")["windowId"]
            _ = try await Client.cdp(browser, "Browser.setWindowBounds",
                                     ["windowId": window.int ?? 0, "bounds": ["width": 901, "height": 600]])
            let viewer = try #require(try await watched.first)
            let configs = try #require(viewer.h264?.configs)
            #expect(configs.count >= 2, "\(configs)")
            let (first, last) = (try #require(configs.first), try #require(configs.last))
            #expect(last["width"].int == 901 && last["height"] != first["height"], "\(configs)")
            #expect(last["coded_width"].int == 900 && last["coded_height"].int == (last["height"].int ?? 0) & ~1,
                    "no recording holds the size: the encoder restarts at the new one, rounded down to even")
            #expect(viewer.sizes.last?.first == 901)
            #expect(try checkDecodable(viewer) == viewer.frames)
        }
    }

    @Test func anH264ViewerThatStopsReadingSkipsToAKeyFrameAndDecodesWithoutErrors() async throws {
        try await withLiveSession(page: "scroll.html", { $0.viewer.h264QueueFrames = 8 }) { daemon, _, id in
            async let watched = Client.watch(daemon.streamURL(id, query: "codec=h264"), key: keyA, seconds: 9,
                                             h264Out: h264Files(), pause: (after: 2, for: 4))
            var dropped: UInt64 = 0
            for _ in 0..<70 {
                try await Task.sleep(for: .milliseconds(100))
                guard let stats = daemon.daemon.viewerStats(sessionID: id).first else { continue }
                #expect(stats.queued <= 8)
                dropped = max(dropped, stats.dropped)
            }
            #expect(dropped > 0, "its queue overflowed while it did not read")
            let viewer = try #require(try await watched.first)
            let keys = try #require(viewer.h264?.keys)
            let sequences = viewer.sequences
            let gap = try #require(sequences.indices.dropFirst().max { sequences[$0] - sequences[$0 - 1] < sequences[$1] - sequences[$1 - 1] })
            #expect(sequences[gap] - sequences[gap - 1] > 8, "it skipped more pictures than its queue holds")
            #expect(keys[gap], "and went on at a key frame")
            #expect(viewer.sequences.count - gap >= 60, "then it caught up")
            #expect(try checkDecodable(viewer) == viewer.frames)
        }
    }

    @Test func aRunWatchedByH264ViewersBeforeAndDuringItIsRecordedAndCutRight() async throws {
        try await withLiveSession { daemon, _, id in
            let url = daemon.streamURL(id, query: "codec=h264")
            async let before = Client.watch(url, key: keyA, seconds: 6, h264Out: h264Files())
            try await Task.sleep(for: .seconds(1))
            let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_h264"])
            try #require(status == 201, "\(run)")
            let started = Date()
            try await Task.sleep(for: .seconds(1))
            async let during = Client.watch(url, key: keyA, viewers: 2, seconds: 2, h264Out: h264Files())
            try await Task.sleep(for: .seconds(1))
            #expect(try await daemon.request("POST", "/v1/runs/wr_h264/steps", json: ["label": "watched"]).0 == 201)
            for viewer in try await during { #expect(try checkDecodable(viewer) == viewer.frames) }
            try await Task.sleep(for: .seconds(0.5))
            let runLength = Date().timeIntervalSince(started)
            let (doneStatus, done) = try await daemon.request("POST", "/v1/runs/wr_h264/complete", json: ["status": "completed"])
            try #require(doneStatus == 200, "\(done)")
            #expect(done["recording_dropped_frames"].int == 0)

            let (_, got) = try await daemon.request("GET", "/v1/runs/wr_h264")
            let (_, video) = try await httpRaw("GET", try #require(got["recording_url"].string))
            let file = try temporaryFile("watched.mp4", video)
            let probe = try ffprobe(file)
            let duration = try #require(probe["format"]["duration"].string.flatMap(Double.init))
            #expect(abs(duration - runLength) < 0.5, "video \(duration) s for a run of \(runLength) s")
            #expect(Int(probe["streams"][0]["nb_read_frames"].string ?? "") == done["recording_frames"].int)
            #expect(probe["chapters"].array.compactMap { $0["tags"]["title"].string } == ["Step 1: watched"])
            #expect(try decodeErrors(file).isEmpty)
            let viewer = try #require(try await before.first)
            #expect(try checkDecodable(viewer) == viewer.frames, "the run's key frame reached the viewer as well")
        }
    }

    @Test func withoutARecordingH264ViewersGetJPEGWhenTheEncoderMayNotRunForThemAlone() async throws {
        try await withLiveSession({ $0.viewer.h264WithoutRecording = false }) { daemon, _, id in
            let url = daemon.streamURL(id, query: "codec=h264")
            let alone = try #require(try await Client.watch(url, key: keyA, seconds: 1.5).first)
            #expect(alone.hello?["format"].string == "jpeg")
            #expect(alone.frames >= 20 && alone.h264 == nil)
            #expect(daemon.daemon.sessions.encoder(id: id)?.isRunning == false)

            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_rec"]).0 == 201)
            let recorded = try #require(try await Client.watch(url, key: keyA, seconds: 2, h264Out: h264Files()).first)
            #expect(recorded.hello?["format"].string == "h264", "a recording session's encode is shared")
            #expect(try checkDecodable(recorded) == recorded.frames)
        }
    }
}
