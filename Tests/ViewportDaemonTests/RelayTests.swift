import Foundation
import Testing
@testable import ViewportDaemon

/// Three nodes in this process on one PostgreSQL database (the same secret, distinct node ids) and a live session of
/// a real Chromium attached on the first, `a`; `b` and `c` serve its viewers from `a`.
private func withCluster(page: String = "anim.html", leaseSeconds: Int = 15,
                         _ body: (_ a: TestDaemon, _ b: TestDaemon, _ c: TestDaemon, Chromium, _ sessionID: String) async throws -> Void)
    async throws
{
    try await PostgresServer.with { server in
        let url = try server.createDatabase()
        let browser = try await Chromium.launch(url: Fixtures.url(page))
        defer { browser.terminate() }
        var nodes: [TestDaemon] = []
        do {
            for name in ["a", "b", "c"] {
                nodes.append(try await TestDaemon.start {
                    $0.cluster.databaseURL = url
                    $0.cluster.nodeID = name
                    $0.cluster.secret = String(repeating: "s", count: 32)
                    $0.cluster.leaseSeconds = leaseSeconds
                })
            }
            try await body(nodes[0], nodes[1], nodes[2], browser, try await nodes[0].createSession(browser))
        } catch {
            for node in nodes.reversed() { await node.stop() }
            throw error
        }
        // The owner last: the others' streams from it end with their viewers, not with it.
        for node in nodes.reversed() { await node.stop() }
    }
}

@Suite("Viewers relayed from any cluster node", .serialized)
struct RelayTests {
    // Fifty viewers on each of two other nodes, served by one upstream stream per node: ClusterTests, with the
    // nodes as hosts of their own.

    @Test func aViewerThroughAnotherNodeOfAnUnknownSessionOrOneOfAnotherOrganizationIsClosedWith4404() async throws {
        try await withCluster { _, b, _, _, id in
            let unknown = try #require(try await Client.watch(b.streamURL("pbs_404"), key: keyA, seconds: 5).first)
            #expect(unknown.closeCode == 4404 && unknown.closeReason == "browser session pbs_404 not found", "\(unknown)")
            let otherOrganization = try #require(try await Client.watch(b.streamURL(id), key: keyB, seconds: 5).first)
            #expect(otherOrganization.closeCode == 4404 && otherOrganization.hello == nil)
            #expect(b.daemon.viewerCounts.relayedViewers == 0, "never a viewer of a's session")
        }
    }

    @Test func aViewerThroughOneNodeTakesControlAndClicksInTheOwnersBrowserWhileViewersElsewhereSeeIt() async throws {
        try await withCluster(page: "vnc.html") { a, b, c, browser, id in
            let click = [
                #"{"type":"mouse","event":"mousePressed","x":200,"y":440,"button":"left","click_count":1}"#,
                #"{"type":"mouse","event":"mouseReleased","x":200,"y":440,"button":"left","click_count":1}"#,
            ]
            async let watched = Client.watch(c.streamURL(id), key: keyA, seconds: 9)
            try await Task.sleep(for: .seconds(1.5))
            async let drove = Client.watch(b.streamURL(id), key: keyA, seconds: 4, send: [#"{"type":"take-control"}"#] + click)
            try await eventually("b's viewer is in control") { a.daemon.gateway.count(.controlLine) == 1 }
            try await Task.sleep(for: .seconds(1))
            let contender = try #require(try await Client.watch(c.streamURL(id), key: keyA, seconds: 1,
                                                                send: [#"{"type":"take-control"}"#] + click).first)
            let driver = try #require(try await drove.first)
            let watcher = try #require(try await watched.first)

            #expect(driver.texts("error").isEmpty, "\(driver.texts("error"))")
            #expect(driver.texts("control").map { $0["controller"].string } == ["agent", "viewer"])
            #expect(contender.texts("control").map { $0["controller"].string } == ["viewer"])
            #expect(contender.texts("error").map { $0["message"].string } == ["another viewer is in control", "take control first", "take control first"],
                    "one controller at a time, across nodes")
            #expect(watcher.texts("control").map { $0["controller"].string } == ["agent", "viewer", "agent"],
                    "a viewer through another node sees a viewer take control, and control return when it leaves")
            let clicks = try await Client.cdp(browser, "Runtime.evaluate", ["expression": "window.clicks", "returnByValue": true],
                                              page: "vnc.html")["result"]["value"]
            #expect(clicks.int == 1, "the one click of the controller reached a's browser")
            try await eventually("the control lines closed") { a.daemon.gateway.count(.controlLine) == 0 }
        }
    }

    @Test func aViewerThroughAnotherNodeEvaluatesInTheOwnersPageAndSeesItsRunsAndSteps() async throws {
        try await withCluster(page: "vnc.html") { a, b, c, _, id in
            async let watched = Client.watch(b.streamURL(id), key: keyA, seconds: 7, send: [
                #"{"type":"evaluate","id":1,"expression":"document.title"}"#,
                #"{"type":"evaluate","id":2,"expression":"Promise.reject(new Error('nope'))"}"#,
            ])
            try await eventually("relayed") { b.daemon.viewerCounts.relayedViewers == 1 }
            let (status, run) = try await a.request("POST", "/v1/browser_sessions/\(id)/runs", json: [:])
            try #require(status == 201, "\(run)")
            let runID = try #require(run["run_id"].string)
            let (marked, _) = try await a.request("POST", "/v1/runs/\(runID)/steps", json: ["label": "Look around"])
            #expect(marked == 201)
            // A viewer joining through c is told the open run and its step.
            let joiner = try #require(try await Client.watch(c.streamURL(id), key: keyA, seconds: 2).first)
            let viewer = try #require(try await watched.first)

            let answers = viewer.texts("evaluate_result")
            #expect(answers.first { $0["id"].int == 1 }?["value"].string == "vnc fixture", "\(viewer.texts)")
            #expect(answers.first { $0["id"].int == 2 }?["error"].string?.contains("nope") == true, "\(viewer.texts)")
            #expect(viewer.texts("run").map { $0["status"].string } == ["running"])
            #expect(viewer.texts("step").map { $0["label"].string } == ["Look around"])
            #expect(joiner.texts("run").map { $0["run_id"].string } == [runID], "\(joiner.texts)")
            #expect(joiner.texts("step").map { $0["label"].string } == ["Look around"], "\(joiner.texts)")
        }
    }

    @Test func anH264ViewerThroughAnotherNodeGetsPicturesEncodedThereFromTheOwnersOneStream() async throws {
        try await withCluster { a, b, _, _, id in
            async let direct = Client.watch(a.streamURL(id), key: keyA, seconds: 4)
            let files = FileManager.default.temporaryDirectory.appendingPathComponent("relay-h264-\(UUID().uuidString)").path
            let viewer = try #require(try await Client.watch(b.streamURL(id, query: "codec=h264"), key: keyA, seconds: 3,
                                                             h264Out: files).first)
            #expect(viewer.hello?["format"].string == "h264")
            #expect(viewer.frames >= 30 && viewer.h264?.keys.first == true && viewer.h264?.errors.isEmpty == true)
            let file = try #require(viewer.h264?.file)
            #expect(try decodeErrors(file).isEmpty)
            let owner = try #require(try await direct.first)
            #expect(Set(owner.sequences).intersection(viewer.sequences).count >= 20, "the owner's sequence numbers")
            #expect(a.daemon.sessions.encoder(id: id)?.isRunning == false, "the owner's stream to b stays JPEG")
        }
    }

    @Test func noVNCThroughAnotherNodeReachesTheOwnersScreen() async throws {
        try await withCluster(page: "vnc.html") { _, b, _, _, id in
            let url = b.streamURL(id).replacingOccurrences(of: "/stream/browser/", with: "/stream/vnc/browser/")
            var probe = JSON.null
            try await eventually("the red block through b", timeout: 20) {
                let output = try? await Client.run(["rfb", url, "--header", "x-api-key:\(keyA)", "--x", "160", "--y", "100"])
                probe = output.flatMap { try? JSONDecoder().decode(JSON.self, from: $0) } ?? .null
                return probe["pixel"].array.compactMap(\.int).elementsEqual([255, 0, 0]) { abs($0 - $1) <= 24 }
            }
            #expect(probe["security_types"].array == [.number(1)], "authenticated by b's credential check: None")
            #expect(probe["width"].int == 1280 && (probe["height"].int ?? 0) > 0, "a's screen, the page's size: \(probe)")
            let anonymous = try #require(try await Client.watch(url, seconds: 1).first)
            #expect(anonymous.handshakeStatus == 401)
        }
    }

    @Test func viewersThroughAnotherNodeStayWhileTheOwnerRestartsAndWatchOnAfterwards() async throws {
        try await withCluster { a, b, _, _, id in
            // An evaluation that never ends, in flight through b's control line when the owner goes.
            let watching = Task {
                try await Client.watch(b.streamURL(id), key: keyA, viewers: 2, seconds: 16, send: [
                    #"{"type":"evaluate","id":"pending","expression":"new Promise(() => {})"}"#,
                ])
            }
            try await eventually("relayed") { b.daemon.viewerCounts.relayedViewers == 2 }
            try await Task.sleep(for: .seconds(1))
            await a.stop()
            try await withDaemon(stateDir: a.stateDir, { $0.cluster = a.daemon.config.cluster }) { restarted in
                let started = Date()
                try await eventually("the stream from the restarted owner", timeout: 12) {
                    restarted.daemon.viewerCounts.upstreamStreamsServed == 1
                }
                let reconnected = Date().timeIntervalSince(started)
                let late = try #require(try await Client.watch(b.streamURL(id), key: keyA, seconds: 2).first)
                #expect(late.frames >= 10, "frames flow again: \(late.frames)")
                for viewer in try await watching.value {
                    #expect((viewer.closedAfter ?? 0) >= 15, "stayed connected (\(viewer.closeCode ?? 0) \(viewer.closeReason ?? ""))")
                    #expect(viewer.statuses == ["reconnecting", "running"], "reconnected after \(reconnected) s")
                    #expect(increasing(viewer.sequences), "numbers go on up though the owner's start again")
                    let answers = viewer.texts("evaluate_result").filter { $0["id"].string == "pending" }
                    #expect(answers.count == 1 && answers.first?["error"].string != nil, "answered once, with an error: \(answers)")
                }
            }
        }
    }

    @Test func viewersThroughAnotherNodeAreToldWhenTheOwnerIsGone() async throws {
        try await withCluster(leaseSeconds: 3) { a, b, _, _, id in
            async let watching = Client.watch(b.streamURL(id), key: keyA, viewers: 2, seconds: 25)
            try await eventually("relayed") { b.daemon.viewerCounts.relayedViewers == 2 }
            try await Task.sleep(for: .seconds(1))
            await a.stop()
            for viewer in try await watching {
                #expect(viewer.frames > 0)
                #expect(viewer.statuses.first == "reconnecting", "told at once: \(viewer.statuses)")
                // Closed clearly once a's lease expired: 4503 naming the owner, or, once another node took its
                // sessions over, the session's failure.
                let failed = viewer.closeCode == 1000 && viewer.statuses.last == "failed"
                    && viewer.texts("status").last?["reason"].string?.contains("was lost") == true
                #expect(viewer.closeCode == 4503 && viewer.closeReason?.contains("node a") == true || failed, "\(viewer)")
                #expect((viewer.closedAfter ?? 99) < 20, "within the lease and a few seconds")
            }
            #expect(b.daemon.viewerCounts.upstreamStreams == 0)
        }
    }
}
