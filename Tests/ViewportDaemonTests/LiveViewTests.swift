import Foundation
import Testing
@testable import ViewportDaemon

/// Runs `body` against a daemon with one session attached to a real headless Chromium showing `page`.
func withLiveSession(page: String = "anim.html", _ configure: (inout Config) -> Void = { _ in },
                     _ body: (TestDaemon, Chromium, String) async throws -> Void) async throws
{
    let browser = try await Chromium.launch(url: Fixtures.url(page))
    defer { browser.terminate() }
    try await withDaemon(configure) { daemon in
        try await body(daemon, browser, try await daemon.createSession(browser))
    }
}

@Suite("Live view with a real Chromium", .serialized)
struct LiveViewTests {
    @Test func framesReachThreeConcurrentViewersWithIncreasingSequenceNumbers() async throws {
        try await withLiveSession { daemon, _, id in
            let viewers = try await Client.watch(daemon.streamURL(id), key: keyA, viewers: 3, seconds: 3)
            #expect(viewers.count == 3)
            for viewer in viewers {
                #expect(viewer.handshakeStatus == 101)
                #expect(viewer.hello?["type"].string == "hello")
                #expect(viewer.hello?["browser_session_id"].string == id)
                #expect(viewer.hello?["protocol"].int == 1)
                #expect(viewer.hello?["format"].string == "jpeg")
                #expect(viewer.frames >= 30, "an animated page gives tens of frames a second")
                #expect(zip(viewer.sequences, viewer.sequences.dropFirst()).allSatisfy { $0 < $1 })
                #expect(viewer.pages.first?.hasSuffix("anim.html") == true, "the page URL is announced")
                let size = try #require(viewer.sizes.first)
                #expect(size[0] > 0 && size[0] <= 1280 && size[1] > 0 && size[1] <= 720)
            }
            // Captured once: every viewer sees frames from the one numbering of the session.
            let common = viewers.map { Set($0.sequences) }.reduce(Set(viewers[0].sequences)) { $0.intersection($1) }
            #expect(common.count >= 20)
        }
    }

    @Test func aViewerThatNeverReadsSlowsNobodyAndMemoryStaysBounded() async throws {
        try await withLiveSession(page: "scroll.html") { daemon, _, id in
            let stalled = try Client.startStalledViewer(daemon.streamURL(id), key: keyA, seconds: 20)
            defer { stalled.terminate() }
            try await eventually("the stalled viewer is connected") { daemon.daemon.viewerStats(sessionID: id).count == 1 }
            try await Task.sleep(for: .seconds(2))  // long enough for its socket to fill up
            let rssBefore = residentMegabytes()
            let viewers = try await Client.watch(daemon.streamURL(id), key: keyA, viewers: 2, seconds: 5)
            let rssAfter = residentMegabytes()

            for viewer in viewers {
                // Sequence numbers count every captured frame, so a viewer's span is what the source published
                // while it watched.
                let span = Int((viewer.sequences.last ?? 0) - (viewer.sequences.first ?? 0)) + 1
                #expect(span >= 50, "the source kept capturing: \(span) frames in 5 s")
                #expect(Double(viewer.frames) >= 0.8 * Double(span), "a reading viewer got \(viewer.frames) of \(span)")
            }
            let stalledStats = try #require(daemon.daemon.viewerStats(sessionID: id).first)
            #expect(stalledStats.queued <= 2)
            #expect(stalledStats.dropped > 0)
            #expect(rssAfter - rssBefore < 30, "RSS grew \(rssAfter - rssBefore) MB while a viewer stalled")
        }
    }

    @Test func credentialsAreCheckedAtTheHandshake() async throws {
        try await withLiveSession { daemon, _, id in
            let auth = daemon.daemon.auth
            let valid = auth.viewerToken(sessionID: id, expiresAt: Date().addingTimeInterval(60))
            let expired = auth.viewerToken(sessionID: id, expiresAt: Date().addingTimeInterval(-1))
            let otherSession = auth.viewerToken(sessionID: "pbs_other", expiresAt: Date().addingTimeInterval(60))
            var tampered = Array(valid)
            tampered[tampered.count - 3] = tampered[tampered.count - 3] == "A" ? "B" : "A"
            let cases: [(String, String, String?, Int)] = [
                ("no credentials", daemon.streamURL(id), nil, 401),
                ("unknown API key", daemon.streamURL(id), "not-a-key-0123456789", 401),
                ("another organization's key", daemon.streamURL(id), keyB, 404),
                ("unknown session", daemon.streamURL("pbs_missing"), keyA, 404),
                ("expired token", daemon.streamURL(id, query: "token=\(expired)"), nil, 401),
                ("tampered token", daemon.streamURL(id, query: "token=\(String(tampered))"), nil, 401),
                ("token of another session", daemon.streamURL(id, query: "token=\(otherSession)"), nil, 401),
                ("valid token", daemon.streamURL(id, query: "token=\(valid)"), nil, 101),
                ("valid key", daemon.streamURL(id), keyA, 101),
                ("/v1 path", daemon.streamURL(id).replacingOccurrences(of: "/stream/", with: "/v1/stream/"), keyA, 101),
                ("/api/v1 path", daemon.streamURL(id).replacingOccurrences(of: "/stream/", with: "/api/v1/stream/"), keyA, 101),
            ]
            for (name, url, key, expected) in cases {
                let viewer = try #require(try await Client.watch(url, key: key, seconds: 2, frames: 1).first)
                #expect(viewer.handshakeStatus == expected, "\(name)")
                if expected == 101 {
                    #expect(viewer.frames == 1, "\(name) gets frames")
                } else {
                    #expect(viewer.body?.contains("\"detail\"") == true, "\(name) explains itself: \(viewer.body ?? "")")
                }
            }
        }
    }

    @Test func theActiveTabIsFollowed() async throws {
        try await withLiveSession { daemon, browser, id in
            async let watched = Client.watch(daemon.streamURL(id), key: keyA, seconds: 10)
            try await Task.sleep(for: .seconds(2.5))
            _ = try await Client.cdp(browser, "Target.createTarget", ["url": Fixtures.url("scroll.html")])
            try await Task.sleep(for: .seconds(3))
            let targets = try await Client.cdp(browser, "Target.getTargets")["targetInfos"].array
            let first = try #require(targets.first { $0["type"].string == "page" && $0["url"].string?.hasSuffix("anim.html") == true })
            _ = try await Client.cdp(browser, "Target.activateTarget", ["targetId": first["targetId"].string ?? ""])
            let viewer = try #require(try await watched.first)
            #expect(viewer.pages.map { URL(string: $0)?.lastPathComponent } == ["anim.html", "scroll.html", "anim.html"])
            #expect(viewer.framesPerPage.allSatisfy { $0 > 0 }, "frames after each switch: \(viewer.framesPerPage)")
            #expect(zip(viewer.sequences, viewer.sequences.dropFirst()).allSatisfy { $0 < $1 })
        }
    }

    @Test func killingChromiumTellsViewersTheSessionFailedWithinTheRetryWindow() async throws {
        try await withLiveSession({ $0.cdp.retrySeconds = 2 }) { daemon, browser, id in
            async let watched = Client.watch(daemon.streamURL(id), key: keyA, seconds: 15)
            try await Task.sleep(for: .seconds(1.5))
            browser.kill()
            let viewer = try #require(try await watched.first)
            #expect(viewer.statuses.suffix(2) == ["reconnecting", "failed"])
            #expect(viewer.texts.last?["reason"].string?.isEmpty == false)
            #expect(viewer.closeCode == 1000)
            #expect((viewer.closedAfter ?? 99) < 1.5 + 2 + 3, "told within the retry window: \(viewer.closedAfter ?? -1) s")
            let (status, session) = try await daemon.request("GET", "/v1/browser_sessions/\(id)")
            #expect(status == 200)
            #expect(session["status"].string == "failed")
            #expect(session["completed_at"].string != nil)
            #expect(session["failure_reason"].string?.contains("unreachable") == true)
        }
    }

    @Test func jsonModeSendsPlatformCompatibleTextFrames() async throws {
        try await withLiveSession { daemon, _, id in
            let viewer = try #require(try await Client.watch(daemon.streamURL(id, query: "format=json"), key: keyA,
                                                             seconds: 5, frames: 5).first)
            #expect(viewer.jsonFrames.count == 5)
            let frame = try #require(viewer.jsonFrames.first)
            #expect(frame["browser_session_id"].string == id)
            #expect(frame["status"].string == "running")
            #expect(frame["format"].string == "jpeg")
            #expect(frame["screenshot"]["is_jpeg"].bool == true)
            #expect((frame["viewport_width"].int ?? 0) > 0 && (frame["viewport_height"].int ?? 0) > 0)
            #expect(frame["url"].string?.hasSuffix("anim.html") == true)
        }
    }

    @Test func viewersCanPingAndAreToldAboutBadMessages() async throws {
        try await withLiveSession { daemon, _, id in
            let viewer = try #require(try await Client.watch(
                daemon.streamURL(id), key: keyA, seconds: 2,
                send: [#"{"type":"ping","t":42.5}"#, #"{"type":"dance"}"#, "not json"]).first)
            let pong = try #require(viewer.texts.first { $0["type"].string == "pong" })
            #expect(pong["t"].double == 42.5)
            #expect((pong["server_time_us"].double ?? 0) > 1.7e15)
            let errors = viewer.texts.filter { $0["type"].string == "error" }
            #expect(errors.count == 2)
            #expect(errors.first?["message"].string?.contains("dance") == true)

            // A watch-only viewer may send 64 KiB; one that may drive the browser (the API key) 2 MiB, for pastes.
            let (_, minted) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens", json: [:])
            let watchOnly = daemon.streamURL(id, query: "token=\(try #require(minted["token"].string))")
            let flooder = try #require(try await Client.watch(watchOnly, seconds: 3, sendBytes: 70_000).first)
            #expect(flooder.closeCode == 1009)
            let controller = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 2,
                                                                 sendBytes: 70_000).first)
            #expect(controller.closeCode != 1009, "70 kB is within a control viewer's limit")
            let bigFlooder = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 3,
                                                                 sendBytes: 2_200_000).first)
            #expect(bigFlooder.closeCode == 1009)
        }
    }

    @Test func closingASessionTellsItsViewersAndIsIdempotent() async throws {
        try await withLiveSession { daemon, _, id in
            async let watched = Client.watch(daemon.streamURL(id), key: keyA, seconds: 10)
            try await Task.sleep(for: .seconds(1.5))
            let (status, closed) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/close")
            #expect(status == 200)
            #expect(closed["status"].string == "closed")
            #expect(closed["completed_at"].string != nil)
            let viewer = try #require(try await watched.first)
            #expect(viewer.statuses.last == "closed")
            #expect(viewer.closeCode == 1000)
            #expect((viewer.closedAfter ?? 99) < 5)

            let (again, reclosed) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/close")
            #expect(again == 200 && reclosed["status"].string == "closed")
            #expect(try await daemon.request("GET", "/v1/browser_sessions").1.array.isEmpty)
            let late = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 3).first)
            #expect(late.statuses == ["closed"] && late.closeCode == 1000, "a late viewer learns it is over")
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens").0 == 409)
        }
    }

    @Test func anExpiredSessionClosesAndItsViewersAreTold() async throws {
        try await withLiveSession { daemon, _, id in
            async let watched = Client.watch(daemon.streamURL(id), key: keyA, seconds: 8)
            try await Task.sleep(for: .seconds(1.5))
            daemon.daemon.sessions.closeExpired(now: Date().addingTimeInterval(59 * 60))
            #expect(try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "running",
                    "not yet: the default timeout is 60 minutes")
            daemon.daemon.sessions.closeExpired(now: Date().addingTimeInterval(61 * 60))
            let viewer = try #require(try await watched.first)
            #expect(viewer.statuses.last == "closed")
            #expect(try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "closed")
        }
    }

    @Test func aRestartKeepsAndReattachesOpenSessions() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        let (id, stateDir) = try await withDaemon { first in (try await first.createSession(browser), first.stateDir) }

        try await withDaemon(stateDir: stateDir) { second in
            try await eventually("session re-attached") {
                try await second.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "running"
            }
            #expect(try await second.request("GET", "/v1/browser_sessions").1.array.map { $0["browser_session_id"].string } == [id])
            let viewer = try #require(try await Client.watch(second.streamURL(id), key: keyA, seconds: 3, frames: 10).first)
            #expect(viewer.frames == 10)
        }
    }

    @Test func theWatchPageDrawsFramesInARealBrowser() async throws {
        try await withLiveSession { daemon, _, id in
            let (status, token) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens",
                                                           json: ["ttl_seconds": 120])
            #expect(status == 201)
            let watchURL = try #require(token["watch_url"].string)
            #expect(watchURL.hasPrefix(daemon.base + "/watch/\(id)?token="))

            let viewerBrowser = try await Chromium.launch(url: watchURL)
            defer { viewerBrowser.terminate() }
            var state = JSON.null
            try await eventually("the watch page drew frames") {
                let result = try await Client.cdp(viewerBrowser, "Runtime.evaluate",
                                                  ["expression": "JSON.stringify(window.viewportd)", "returnByValue": true],
                                                  page: "/watch/")
                state = (try? JSONDecoder().decode(JSON.self, from: Data((result["result"]["value"].string ?? "null").utf8))) ?? .null
                return (state["framesDrawn"].int ?? 0) >= 10
            }
            #expect(state["status"].string == "running")
            #expect((state["width"].int ?? 0) > 0)

            #expect(try await httpRaw("GET", daemon.base + "/watch/\(id)").0 == 401)
            #expect(try await httpRaw("GET", daemon.base + "/watch/\(id)?token=v1.x.1.v.bad").0 == 401)
        }
    }
}

/// This process's resident memory in MiB.
func residentMegabytes() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) / 1024
}
