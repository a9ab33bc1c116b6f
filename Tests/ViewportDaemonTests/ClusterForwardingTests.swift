import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Testing
@testable import ViewportDaemon

/// Any node answers any REST request: nodes in this process on loopback share one real PostgreSQL 15; node A
/// attaches a real Chromium, and B and C act on its session through their own APIs.
@Suite("Cluster: any node answers", .serialized)
struct ClusterForwardingTests {
    static let secret = String(repeating: "c", count: 32)

    /// Runs `body` with the nodes `ids` (in that order) on one new database and a Chromium; stops them however it
    /// ends.
    private func withNodes(_ ids: [String] = ["a", "b", "c"], leaseSeconds: Int = 15,
                           _ body: (PostgresServer, [TestDaemon], Chromium) async throws -> Void) async throws
    {
        let browser = try await Chromium.launch(url: Fixtures.url("anim.html"))
        defer { browser.terminate() }
        try await PostgresServer.with { server in
            let url = try server.createDatabase()
            var nodes: [TestDaemon] = []
            do {
                for id in ids {
                    nodes.append(try await TestDaemon.start {
                        $0.cluster.databaseURL = url
                        $0.cluster.nodeID = id
                        $0.cluster.secret = Self.secret
                        $0.cluster.leaseSeconds = leaseSeconds
                    })
                }
                try await body(server, nodes, browser)
            } catch {
                for node in nodes.reversed() { await node.stop() }
                throw error
            }
            for node in nodes.reversed() { await node.stop() }
        }
    }

    @Test func aSessionAttachedOnAIsListedReadRenewedAndClosedThroughTheOthers() async throws {
        try await withNodes { _, nodes, browser in
            let (a, b, c) = (nodes[0], nodes[1], nodes[2])
            let id = try await a.createSession(browser)
            let (listStatus, list) = try await b.request("GET", "/v1/browser_sessions")
            #expect(listStatus == 200 && list.array.map { $0["browser_session_id"].string } == [id], "\(list)")
            #expect(list[0]["vnc_streaming_supported"].bool == true, "A's live state: it has a VNC screen")
            #expect(try await b.request("GET", "/v1/browser_sessions", key: keyB).1.array.isEmpty, "not org B's")
            for node in [b, c] {
                let (status, session) = try await node.request("GET", "/v1/browser_sessions/\(id)")
                #expect(status == 200 && session["status"].string == "running" && session["vnc_streaming_supported"].bool == true)
                #expect(try await node.request("GET", "/v1/browser_sessions/\(id)", key: keyB).0 == 404)
            }

            let (renewStatus, renewed) = try await c.request("POST", "/v1/browser_sessions/\(id)/renew", json: ["timeout": 30])
            #expect(renewStatus == 200 && renewed["timeout"].int == 30, "\(renewed)")
            let (vncStatus, vnc) = try await c.request("POST", "/v1/browser_sessions/\(id)/vnc")
            #expect(vncStatus == 201 && vnc["port"].int == a.daemon.sessions.vncBridge(id: id)?.port, "A's VNC screen: \(vnc)")

            // A viewer token minted through B is good on A.
            let (tokenStatus, minted) = try await b.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens")
            let token = try #require(minted["token"].string, "\(tokenStatus) \(minted)")
            let viewers = try await Client.watch(a.streamURL(id, query: "token=\(token)"), seconds: 2)
            #expect(viewers.first?.handshakeStatus == 101 && (viewers.first?.frames ?? 0) > 0)

            let (closeStatus, closed) = try await b.request("POST", "/v1/browser_sessions/\(id)/close")
            #expect(closeStatus == 200 && closed["status"].string == "closed", "\(closed)")
            #expect(a.daemon.hub(sessionID: id) == nil, "closed on A, its owner")
            #expect(try await c.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "closed")
            #expect(try await c.request("GET", "/v1/browser_sessions").1.array.isEmpty)
        }
    }

    @Test func aRunStartedThroughBRecordsOnAAndItsRecordingIsServedThroughEveryNode() async throws {
        try await withNodes { _, nodes, browser in
            let (a, b, c) = (nodes[0], nodes[1], nodes[2])
            let id = try await a.createSession(browser)
            let (startStatus, run) = try await b.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_fwd"])
            try #require(startStatus == 201, "\(run)")
            #expect(await a.daemon.runs.open["wr_fwd"] != nil, "the run is open on A")
            #expect(try await c.request("GET", "/v1/browser_sessions/\(id)").1["runnable_id"].string == "wr_fwd")
            for label in ["one", "two"] {
                try await Task.sleep(for: .milliseconds(700))
                let (status, step) = try await c.request("POST", "/v1/runs/wr_fwd/steps", json: ["label": label])
                #expect(status == 201 && step["step"].int != nil, "\(step)")
            }
            let (doneStatus, done) = try await c.request("POST", "/v1/runs/wr_fwd/complete", json: ["status": "completed"])
            try #require(doneStatus == 200, "\(done)")
            #expect(await a.daemon.runs.open["wr_fwd"] == nil, "completed on A")
            let (againStatus, again) = try await b.request("POST", "/v1/runs/wr_fwd/complete", json: ["status": "failed"])
            #expect(againStatus == 200 && again["status"].string == "completed", "completing twice changes nothing: \(again)")

            // B's link to the recording: B fetches the file from A, where it is (artifacts.store: local).
            let (_, got) = try await b.request("GET", "/v1/runs/wr_fwd")
            #expect(got["status"].string == "completed" && got["step_count"].int == 2)
            let link = try #require(got["recording_url"].string)
            #expect(link.hasPrefix(b.base))
            let (videoStatus, video, headers) = try await get(link)
            try #require(videoStatus == 200, "\(String(decoding: video.prefix(300), as: UTF8.self))")
            #expect(headers["Content-Type"] == "video/mp4" && headers["Etag"] != nil)
            #expect(try ffprobe(try temporaryFile("forwarded.mp4", video))["streams"][0]["codec_name"].string == "h264")
            let (rangeStatus, part, rangeHeaders) = try await get(link, ["Range": "bytes=0-99"])
            #expect(rangeStatus == 206 && part == video.prefix(100))
            #expect(rangeHeaders["Content-Range"] == "bytes 0-99/\(video.count)")

            let artifacts = try await c.request("GET", "/v1/runs/wr_fwd/artifacts").1.array
            let recording = try #require(artifacts.first { $0["artifact_type"].string == "recording" })
            let artifactID = try #require(recording["artifact_id"].string)
            let (keyed, keyedVideo, _) = try await get(c.base + "/v1/artifacts/\(artifactID)/content", ["x-api-key": keyA])
            #expect(keyed == 200 && keyedVideo == video)
            #expect(try await get(c.base + "/v1/artifacts/\(artifactID)/content", ["x-api-key": keyB]).0 == 404)
        }
    }

    @Test func anOwnerThatStoppedIsA503NamingItPromptly() async throws {
        try await withNodes(["a", "b"], leaseSeconds: 3) { _, nodes, browser in
            let (a, b) = (nodes[0], nodes[1])
            let id = try await a.createSession(browser)
            let (_, listed) = try await b.request("GET", "/v1/cluster/nodes")
            #expect(listed.array.map { $0["node_id"].string } == ["a", "b"])
            #expect(listed.array.map { $0["status"].string } == ["alive", "alive"])
            #expect(listed[0]["active_sessions"].int == 1 && listed[0]["advertise_url"].string == a.base)
            await a.stop()

            let started = ContinuousClock.now
            let (status, refused) = try await b.request("POST", "/v1/browser_sessions/\(id)/close")
            #expect(status == 503 && (refused["detail"].string ?? "").contains("node a"), "\(refused)")
            #expect(started.duration(to: .now) < .seconds(3))
            try await eventually("A's lease expires", timeout: 10) {
                try await b.request("GET", "/v1/cluster/nodes").1[0]["status"].string != "alive"
            }
            let (stillStatus, still) = try await b.request("POST", "/v1/browser_sessions/\(id)/renew")
            #expect([503, 409].contains(stillStatus), "expired (503) or taken over and failed (409): \(still)")
            try await eventually("B takes A's session over", timeout: 15) {
                try await b.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "failed"
            }
        }
    }

    @Test func onlyARequestWithAValidNodeCredentialCountsAsForwardedAndIsNeverForwardedAgain() async throws {
        try await withNodes(["a", "b"]) { _, nodes, browser in
            let (a, b) = (nodes[0], nodes[1])
            let id = try await a.createSession(browser)
            let path = "/v1/browser_sessions/\(id)/renew"
            let valid = NodeCredential(secret: Self.secret).headers(nodeID: "a", method: "POST", path: path)
            let forged = NodeCredential(secret: String(repeating: "x", count: 32)).headers(nodeID: "a", method: "POST", path: path)
            // Forged or absent, B does not take it for a forward: it forwards it to A, which renews.
            for headers in [forged, []] {
                let (status, body) = try await post(b.base + path, headers)
                #expect(status == 200, "\(body)")
            }
            // Signed by a node, B does not own the session and does not forward it again.
            let (status, body) = try await post(b.base + path, valid)
            #expect(status == 503 && (body["detail"].string ?? "").contains("not forwarded again"), "\(body)")
            #expect(try await post(a.base + path, valid).0 == 200, "the owner answers a forwarded request")
        }
    }

    @Test func withPostgreSQLDownRESTAnswers503QuicklyAndNothingIsLostOnceItIsBack() async throws {
        try await withNodes(["a", "b"]) { server, nodes, browser in
            let (a, b) = (nodes[0], nodes[1])
            let id = try await a.createSession(browser)
            let (runStatus, run) = try await b.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_pgdown"])
            try #require(runStatus == 201, "\(run)")
            try await Task.sleep(for: .milliseconds(700))
            #expect(try await a.request("POST", "/v1/runs/wr_pgdown/steps", json: ["label": "before"]).0 == 201)

            try server.halt()
            let requests = [(b, "GET", "/v1/browser_sessions"), (a, "GET", "/v1/runs/wr_pgdown"),
                            (b, "GET", "/v1/browser_sessions/\(id)"), (a, "POST", "/v1/runs/wr_pgdown/steps"),
                            (b, "POST", "/v1/browser_sessions/\(id)/close")]
            let started = ContinuousClock.now
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (node, method, path) in requests {
                    group.addTask {
                        let (status, body) = try await node.request(method, path, json: path.hasSuffix("steps") ? ["label": "down"] : nil)
                        #expect(status == 503 && (body["detail"].string ?? "").contains("the database is unavailable"),
                                "\(method) \(path): \(status) \(body)")
                    }
                }
                try await group.waitForAll()
            }
            #expect(started.duration(to: .now) < .seconds(8), "answered within the store's 5 s wait for a connection")
            try server.start()

            try await eventually("the nodes reach PostgreSQL again", timeout: 30) {
                try await b.request("GET", "/v1/browser_sessions").0 == 200
            }
            #expect(try await b.request("GET", "/v1/browser_sessions").1.array.map { $0["browser_session_id"].string } == [id])
            let (stepStatus, step) = try await b.request("POST", "/v1/runs/wr_pgdown/steps", json: ["label": "after"])
            #expect(stepStatus == 201 && step["step"].int == 2, "\(step)")
            let (doneStatus, done) = try await b.request("POST", "/v1/runs/wr_pgdown/complete", json: ["status": "completed"])
            #expect(doneStatus == 200 && done["step_count"].int == 2, "\(done)")
            #expect(try await b.request("GET", "/v1/runs/wr_pgdown/artifacts").1.array.count == 4, "2 steps, a final screenshot, the video")
        }
    }

    @Test func onASingleHostThereIsNoClusterToList() async throws {
        try await withDaemon { daemon in
            let (status, body) = try await daemon.request("GET", "/v1/cluster/nodes", key: nil)
            #expect(status == 404 && body["detail"].string == "not a cluster: cluster.database_url is not set")
        }
    }

    @Test func aNodeCredentialHoldsForItsRequestAndSecretOnlyWithinAMinute() {
        let credential = NodeCredential(secret: Self.secret)
        let now = Date()
        let headers = Dictionary(uniqueKeysWithValues: credential.headers(nodeID: "b", method: "POST", path: "/v1/x", now: now))
        func verify(_ headers: [String: String], by credential: NodeCredential = credential, method: String = "POST",
                    path: String = "/v1/x", at time: Date = now) -> String? {
            credential.verify({ headers[$0] }, method: method, path: path, now: time)
        }
        #expect(verify(headers) == "b")
        #expect(verify(headers, at: now.addingTimeInterval(59)) == "b")
        #expect(verify(headers, at: now.addingTimeInterval(61)) == nil, "expired")
        #expect(verify(headers, at: now.addingTimeInterval(-61)) == nil, "from the future")
        #expect(verify(headers, method: "GET") == nil && verify(headers, path: "/v1/y") == nil, "another request")
        var renamed = headers
        renamed[NodeCredential.nodeHeader] = "c"
        #expect(verify(renamed) == nil, "another node's name")
        var tampered = headers
        tampered[NodeCredential.signatureHeader] = String((headers[NodeCredential.signatureHeader] ?? "").reversed())
        #expect(verify(tampered) == nil)
        #expect(verify(headers, by: NodeCredential(secret: String(repeating: "d", count: 32))) == nil, "another secret")
        #expect(verify([:]) == nil)
    }
}

/// A POST with extra headers and org A's key, and its JSON answer.
private func post(_ url: String, _ headers: [(name: String, value: String)]) async throws -> (Int, JSON) {
    var request = URLRequest(url: try #require(URL(string: url)))
    request.httpMethod = "POST"
    request.setValue(keyA, forHTTPHeaderField: "x-api-key")
    for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
    let (data, response) = try await URLSession.shared.data(for: request)
    let status = (response as? HTTPURLResponse)?.statusCode ?? 0
    return (status, (try? JSONDecoder().decode(JSON.self, from: data)) ?? .null)
}
