import Foundation
import NetworkNamespaces
import Logging
import PostgresStore
import Store
import Testing
@testable import ViewportDaemon

/// Three viewportd nodes as separate hosts (network namespaces a, b and c) on one PostgreSQL database and one
/// bucket, with a browser beside a: a's session through b and c, and what a node does when another is lost, comes
/// back, or is frozen, and when the database goes away for a while.
@Suite("A three-node cluster: any node answers, host loss, fencing and a PostgreSQL restart", .serialized)
struct ClusterTests {
    @Test func aSessionOnAIsReadRecordedWatchedByFiftyViewersEachControlledAndClosedThroughBAndC() async throws {
        try await withCluster { cluster in
            let (a, b, c) = try (cluster.daemon("a"), cluster.daemon("b"), cluster.daemon("c"))
            let id = try await cluster.attachOnA()
            for node in [b, c] {
                let list = try await requestJSON("GET", node.base + "/v1/browser_sessions").1
                #expect(list.array.map { $0["browser_session_id"].string } == [id], "\(list)")
                #expect(try await requestJSON("GET", node.base + "/v1/browser_sessions/\(id)").1["status"].string == "running")
            }
            let (started, run) = try await requestJSON("POST", c.base + "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_net"])
            try #require(started == 201, "\(run)")
            let startedAt = try #require(run["started_at"].string.flatMap(parseISO))

            // 50 viewers through b and 50 through c, half of them JSON; c's come once b's have watched for a while.
            func watch(_ node: ChildDaemon, seconds: Double, json: Bool) async throws -> [ViewerResult] {
                let url = node.base.replacingOccurrences(of: "http://", with: "ws://") + "/stream/browser/\(id)"
                return try await Client.watch(url + (json ? "?format=json" : ""), key: keyA, viewers: 25, seconds: seconds)
            }
            async let onBBinary = watch(b, seconds: 12, json: false)
            async let onBJSON = watch(b, seconds: 12, json: true)
            try await Task.sleep(for: .seconds(2))
            async let onCBinary = watch(c, seconds: 22, json: false)
            async let onCJSON = watch(c, seconds: 22, json: true)
            try await eventually("100 viewers relayed", timeout: 20) {
                let (onB, onC) = (try await gauge(b.base, "viewportd_relayed_viewers"), try await gauge(c.base, "viewportd_relayed_viewers"))
                return onB == 50 && onC == 50
            }
            #expect(try await gauge(a.base, "viewportd_upstream_streams_served") == 2, "one stream per edge node")
            #expect(try await gauge(a.base, "viewportd_viewers") == 0, "the edge nodes' streams are not viewers of a")
            for node in [b, c] { #expect(try await gauge(node.base, "viewportd_upstream_streams") == 1) }
            // b's viewers leave (c's watch on): b's stream closes after its linger, c's stays.
            try await eventually("b's upstream stream closed", timeout: 20) {
                let served = try await gauge(a.base, "viewportd_upstream_streams_served")
                let (fromB, fromC) = (try await gauge(b.base, "viewportd_upstream_streams"), try await gauge(c.base, "viewportd_upstream_streams"))
                return served == 1 && fromB == 0 && fromC == 1
            }
            #expect(try await gauge(c.base, "viewportd_relayed_viewers") == 50, "c's viewers still watch")
            let (onB, onC) = (try await onBBinary + onBJSON, try await onCBinary + onCJSON)
            for viewer in onB + onC {
                #expect(viewer.handshakeStatus == 101 && viewer.hello?["browser_session_id"].string == id)
                #expect(viewer.frameSequences.count >= 20, "an animated page: \(viewer.frameSequences.count) frames")
                #expect(increasing(viewer.frameSequences))
            }
            #expect(onB.first?.pages.first?.hasSuffix("anim.html") == true, "the page URL is announced through the relay")
            // The owner's numbering, kept by the edge nodes: c's stream goes on from where b's viewers were.
            let (firstOnB, firstOnC) = (try #require(onB.first?.frameSequences.first), try #require(onC.first?.frameSequences.first))
            #expect(firstOnC > firstOnB + 10, "c's first frame is numbered by a: \(firstOnB), \(firstOnC)")
            try await eventually("c's upstream stream closed", timeout: 20) {
                try await gauge(a.base, "viewportd_upstream_streams_served") == 0
            }

            // A control viewer through b clicks in a's browser.
            let inA = try cluster.net.host("a").exec
            _ = try await Client.cdp(cluster.browser, "Page.navigate", ["url": Fixtures.url("vnc.html")], page: "anim.html", launcher: inA)
            try await eventually("a's browser shows the click page") {
                (try? await Client.cdp(cluster.browser, "Runtime.evaluate", ["expression": "window.clicks", "returnByValue": true],
                                     page: "vnc.html", launcher: inA))?["result"]["value"].int == 0
            }
            let click = ["mousePressed", "mouseReleased"].map {
                #"{"type":"mouse","event":"\#($0)","x":200,"y":440,"button":"left","click_count":1}"#
            }
            let bStream = b.base.replacingOccurrences(of: "http://", with: "ws://") + "/stream/browser/\(id)"
            let driver = try #require(try await Client.watch(bStream, key: keyA, seconds: 3, send: [#"{"type":"take-control"}"#] + click).first)
            #expect(driver.texts("error").isEmpty, "\(driver.texts("error"))")
            #expect(driver.texts("control").map { $0["controller"].string } == ["agent", "viewer"])
            let clicks = try await Client.cdp(cluster.browser, "Runtime.evaluate", ["expression": "window.clicks", "returnByValue": true],
                                              page: "vnc.html", launcher: inA)["result"]["value"]
            #expect(clicks.int == 1, "the controller's click reached a's browser")

            // The run started through c recorded on a: a step through b, completed through c, its recording in the bucket.
            #expect(try await requestJSON("POST", b.base + "/v1/runs/wr_net/steps", json: ["label": "watched"]).0 == 201)
            let (doneStatus, done) = try await requestJSON("POST", c.base + "/v1/runs/wr_net/complete", json: ["status": "completed"])
            try #require(doneStatus == 200, "\(done)")
            var ended = JSON.null
            try await eventually("the recording is in the bucket", timeout: 30) {
                ended = try await cluster.run("wr_net", on: "b")
                return ended["recording_url"].string?.hasPrefix(cluster.s3.endpoint + "/") == true
            }
            #expect(ended["status"].string == "completed" && ended["step_count"].int == 1, "\(ended)")
            let (videoStatus, video) = try await httpRaw("GET", try #require(ended["recording_url"].string))
            try #require(videoStatus == 200)
            let file = try temporaryFile("net.mp4", video)
            let probe = try ffprobe(file)
            #expect(probe["streams"][0]["codec_name"].string == "h264")
            let duration = try #require(probe["format"]["duration"].string.flatMap(Double.init))
            let length = try #require(ended["finished_at"].string.flatMap(parseISO)).timeIntervalSince(startedAt)
            #expect(abs(duration - length) < 1, "\(duration) s of video for a run of \(length) s")

            let (closeStatus, closed) = try await requestJSON("POST", c.base + "/v1/browser_sessions/\(id)/close")
            #expect(closeStatus == 200 && closed["status"].string == "closed", "\(closed)")
            for node in [a, b] {
                #expect(try await requestJSON("GET", node.base + "/v1/browser_sessions/\(id)").1["status"].string == "closed")
            }
            #expect(try await requestJSON("GET", b.base + "/v1/browser_sessions").1.array.isEmpty)
        }
    }

    @Test func aKilledHostsSessionFailsOnTheOtherNodesAndItsRunEndsWithItsRecordingFromTheBucketAndOneWebhook()
        async throws
    {
        try await withCluster { cluster in
            let (sessionID, run) = try await cluster.recordOnA(runID: "wr_lost", seconds: 10, steps: ["open", "submit"])
            let killed = Date()
            try cluster.net.killAll(in: "a")
            try cluster.net.cutLink("a")

            // Read through b and c: the shared store has the session failed, with the reason.
            let lease = Double(ClusterFixture.leaseSeconds)
            try await eventually("the session is failed on b and c", timeout: lease + 10) {
                let onB = try await cluster.session(sessionID, on: "b")["status"].string
                let onC = try await cluster.session(sessionID, on: "c")["status"].string
                return onB == "failed" && onC == "failed"
            }
            let failedAfter = Date().timeIntervalSince(killed)
            for node in ["b", "c"] {
                #expect(try await cluster.session(sessionID, on: node)["failure_reason"].string
                    == "the host of viewportd node a was lost (its lease expired)")
            }
            var ended = JSON.null
            try await eventually("the run is terminated", timeout: 20) {
                ended = try await cluster.run(run.id, on: "c")
                return ended["status"].string == "terminated"
            }
            let terminatedAfter = Date().timeIntervalSince(killed)
            #expect(ended["failure_reason"].string?.contains("host was lost") == true, "\(ended)")
            #expect(ended["step_count"].int == 2)
            #expect(try await cluster.run(run.id, on: "b")["status"].string == "terminated")
            // The steps' screenshots, stored by a before it died, and the rebuilt recording: each once.
            let artifacts = try await requestJSON("GET", try #require(cluster.nodes["b"]).base + "/v1/runs/\(run.id)/artifacts").1
            #expect(artifacts.array.compactMap { $0["artifact_type"].string }.sorted() == ["recording", "screenshot", "screenshot"],
                    "\(artifacts)")

            // The recording plays up to at most a part's length (and its upload) before the kill.
            let url = try #require(ended["recording_url"].string, "\(ended)")
            #expect(url.hasPrefix(cluster.s3.endpoint + "/"), "a presigned bucket URL: \(url)")
            let (videoStatus, video) = try await httpRaw("GET", url)
            try #require(videoStatus == 200)
            let file = try temporaryFile("lost.mp4", video)
            #expect(try decodeErrors(file).isEmpty)
            let duration = try #require(try ffprobe(file)["format"]["duration"].string.flatMap(Double.init))
            let lived = killed.timeIntervalSince(run.startedAt)
            let segment = Double(ClusterFixture.segmentSeconds)
            #expect(duration >= lived - segment - 1 && duration <= lived + 0.5,
                    "\(duration) s recorded of a run killed after \(lived) s (s3.segment_seconds \(segment))")

            // One webhook, whichever node noticed first, carrying the bucket's recording URL.
            try await eventually("the webhook is delivered", timeout: 20) { try await cluster.receiver.requests().count >= 1 }
            try await Task.sleep(for: .seconds(lease))
            let requests = try await cluster.receiver.requests()
            #expect(requests.count == 1, "\(requests.count) webhooks")
            let hook = try #require(requests.first)
            #expect(hook.signatureValid)
            let body = try JSONDecoder().decode(JSON.self, from: hook.body)
            #expect(body["run_id"].string == run.id && body["status"].string == "terminated", "\(body)")
            #expect(body["recording_url"].string?.hasPrefix(cluster.s3.endpoint + "/") == true, "\(body)")
            #expect(body["screenshot_urls"].array.count == 2, "\(body)")
            print(String(format: "host loss: session failed %.1f s and run terminated %.1f s after the kill "
                             + "(lease %d s); %.2f s of video of a run killed after %.2f s", failedAfter,
                         terminatedAfter, ClusterFixture.leaseSeconds, duration, lived))
            #expect(failedAfter <= lease + 4, "failed \(failedAfter) s after the kill, with a lease of \(lease) s")
        }
    }

    @Test func aHostThatComesBackAfterItsLeaseWasTakenRejoinsWithANewEpochAndOverwritesNothing() async throws {
        try await withCluster { cluster in
            let (sessionID, run) = try await cluster.recordOnA(runID: "wr_back", seconds: 4, steps: ["open"])
            let epoch = try #require(try await cluster.node("a")).node.epoch
            try cluster.net.killAll(in: "a")
            try cluster.net.cutLink("a")
            let taken = try await cluster.waitForTakeover(sessionID: sessionID, runID: run.id)

            try cluster.net.restoreLink("a")
            let a = try await cluster.start("a")
            let node = try #require(try await cluster.node("a"))
            #expect(node.isAlive && node.node.epoch > epoch + 1, "registered anew after the takeover raised its epoch")
            // Long enough for its lease loop, its uploads and its webhooks to have run a few times.
            try await Task.sleep(for: .seconds(Double(ClusterFixture.leaseSeconds)))
            #expect(try await requestJSON("GET", a.base + "/v1/browser_sessions/\(sessionID)").1["status"].string == "failed")
            #expect(try await cluster.snapshot(sessionID: sessionID, runID: run.id) == taken, "as the taker stored them")
            #expect(try await cluster.receiver.requests().count == 1)
            #expect(try await cluster.node("a")?.activeSessions == 0)
        }
    }

    @Test func aNodeFrozenPastItsLeaseWritesNothingWhenItWakesAndExitsWithAnError() async throws {
        try await withCluster { cluster in
            let (sessionID, run) = try await cluster.recordOnA(runID: "wr_frozen", seconds: 4, steps: ["open"])
            let a = try #require(cluster.nodes["a"])
            a.signal(SIGSTOP)
            let taken = try await cluster.waitForTakeover(sessionID: sessionID, runID: run.id)

            a.signal(SIGCONT)
            let woken = Date()
            let status = try await a.exitStatus(within: Double(ClusterFixture.leaseSeconds))
            print(String(format: "frozen node: exited %.1f s after it was woken", Date().timeIntervalSince(woken)))
            #expect(status != 0 && status != -1, "exits with an error on its own: \(status)")
            #expect(a.log.contains("lost its lease"), "\(a.log.suffix(2000))")
            #expect(try await cluster.session(sessionID, on: "b")["status"].string == "failed")
            #expect(try await cluster.snapshot(sessionID: sessionID, runID: run.id) == taken, "as the taker stored them")
            try await Task.sleep(for: .seconds(2))
            #expect(try await cluster.receiver.requests().count == 1)
        }
    }

    @Test func postgresqlRestartedAndThenDownLongerThanALeaseIsA503MeanwhileLosesNothingAndFailsNoNode() async throws {
        try await withCluster { cluster in
            let (sessionID, run) = try await cluster.recordOnA(runID: "wr_pg", seconds: 2, steps: ["before"])
            let a = try #require(cluster.nodes["a"])
            let lease = Double(ClusterFixture.leaseSeconds)

            try cluster.postgres.restart()
            try await cluster.step(run.id, "after a restart")
            try cluster.postgres.halt()
            let asked = Date()
            for node in ["b", "c"] {
                let (status, answer) = try await requestJSON("GET", try cluster.daemon(node).base + "/v1/browser_sessions/\(sessionID)")
                #expect(status == 503 && answer["detail"].string != nil, "no answer made without the database: \(status) \(answer)")
            }
            #expect(Date().timeIntervalSince(asked) < 12, "503s within the connection wait, not a hang")
            try await Task.sleep(for: .seconds(max(0, lease + 3 - Date().timeIntervalSince(asked))))
            try cluster.postgres.start()
            let back = Date()
            try await eventually("every node renews its lease", timeout: lease) {
                try await cluster.store { try await $0.nodes() }.allSatisfy { $0.node.heartbeatAt > back }
            }
            let renewedAfter = Date().timeIntervalSince(back)
            try await cluster.step(run.id, "after an outage")
            // Every node gets a whole lease to renew once the database is back before any takes others over.
            try await Task.sleep(for: .seconds(max(0, lease + 2 - Date().timeIntervalSince(back))))
            for node in try await cluster.store { try await $0.nodes() } {
                #expect(node.isAlive && node.node.lostAt == nil, "\(node)")
            }
            for node in ["a", "b", "c"] {
                #expect(try await cluster.session(sessionID, on: node)["status"].string == "running", "read on \(node)")
            }

            let (status, done) = try await requestJSON("POST", a.base + "/v1/runs/\(run.id)/complete",
                                                       json: ["status": "completed"])
            try #require(status == 200, "\(done)")
            // The webhook goes once the run's artifacts are in the bucket.
            try await eventually("the webhook is delivered", timeout: 30) { try await cluster.receiver.requests().count >= 1 }
            let ended = try await cluster.run(run.id, on: "b")
            #expect(ended["status"].string == "completed" && ended["step_count"].int == 3, "\(ended)")
            let labels = try await cluster.store { try await $0.steps(runID: run.id).map(\.label) }
            #expect(labels == ["before", "after a restart", "after an outage"])
            let url = try #require(ended["recording_url"].string)
            #expect(url.hasPrefix(cluster.s3.endpoint + "/"), "\(url)")
            let (videoStatus, video) = try await httpRaw("GET", url)
            try #require(videoStatus == 200)
            let file = try temporaryFile("restarted.mp4", video)
            #expect(try decodeErrors(file).isEmpty)
            let duration = try #require(try ffprobe(file)["format"]["duration"].string.flatMap(Double.init))
            let length = try #require(ended["finished_at"].string.flatMap(parseISO)).timeIntervalSince(run.startedAt)
            #expect(abs(duration - length) < 0.5, "\(duration) s of video for a run of \(length) s")
            print(String(format: "PostgreSQL down %.0f s: every node renewed its lease %.1f s after it was back; "
                             + "%.2f s of video for a run of %.2f s", lease + 3, renewedAfter, duration, length))

            try await Task.sleep(for: .seconds(2))
            let requests = try await cluster.receiver.requests()
            #expect(requests.count == 1)
            let body = try JSONDecoder().decode(JSON.self, from: try #require(requests.first).body)
            #expect(body["status"].string == "completed" && body["step_count"].int == 3, "\(body)")
            #expect(body["recording_url"].string?.hasPrefix(cluster.s3.endpoint + "/") == true, "\(body)")
        }
    }
}

/// A run started on a: its id and when it started.
private struct StartedRun {
    let id: String
    let startedAt: Date
}

/// What a cluster test has: the network, PostgreSQL, the bucket, the webhook receiver, a browser on a and a node
/// on each host (each with its own state directory and node id: its host's name).
private final class ClusterFixture {
    static let leaseSeconds = 5
    static let segmentSeconds = 3
    static let secret = String(repeating: "c", count: 32)

    let net: ClusterNet
    let postgres: PostgresServer
    let databaseURL: String
    let s3: S3Server
    let receiver: Receiver
    let browser: Chromium
    private(set) var nodes: [String: ChildDaemon] = [:]
    /// Each node's state directory, by host name (its log is the directory's path + ".log").
    let stateDirs: [String: String]

    init(net: ClusterNet, postgres: PostgresServer, s3: S3Server, receiver: Receiver, browser: Chromium) throws {
        (self.net, self.postgres, self.s3, self.receiver, self.browser) = (net, postgres, s3, receiver, browser)
        databaseURL = try postgres.createDatabase()
        let run = UUID().uuidString.prefix(8)
        stateDirs = Dictionary(uniqueKeysWithValues: net.hosts.map { host in
            (host.name, FileManager.default.temporaryDirectory.appendingPathComponent("vp-cluster-\(run)-\(host.name)").path)
        })
    }

    /// Starts (or starts again) the node of host `name`.
    @discardableResult
    func start(_ name: String) async throws -> ChildDaemon {
        let stateDir = try #require(stateDirs[name])
        let node = try await ChildDaemon.start(stateDir: stateDir, environment: [
            "VIEWPORTD_API_KEY": keyA, "VIEWPORTD_ORGANIZATION_ID": "org_a", "VIEWPORTD_LOG_LEVEL": "info",
            "VIEWPORTD_CLUSTER_DATABASE_URL": databaseURL, "VIEWPORTD_CLUSTER_NODE_ID": name,
            "VIEWPORTD_CLUSTER_SECRET": Self.secret, "VIEWPORTD_CLUSTER_LEASE_SECONDS": "\(Self.leaseSeconds)",
            "VIEWPORTD_ARTIFACTS_STORE": "s3", "VIEWPORTD_S3_ENDPOINT": s3.endpoint, "VIEWPORTD_S3_BUCKET": s3.bucket,
            "VIEWPORTD_S3_PREFIX": "cluster", "VIEWPORTD_S3_SEGMENT_SECONDS": "\(Self.segmentSeconds)",
            "VIEWPORTD_S3_RETRY_MAX_SECONDS": "2", "VIEWPORTD_S3_TIMEOUT_SECONDS": "5",
            "AWS_ACCESS_KEY_ID": S3Server.accessKey, "AWS_SECRET_ACCESS_KEY": S3Server.secretKey,
            "VIEWPORTD_NETWORK_WEBHOOK_ALLOW": "[10.77.0.0/16]",
            "VIEWPORTD_WEBHOOKS_SECRETS": "[{organization_id: org_a, secret: \(webhookTestSecret)}]",
            // The tests' viewers all connect from the bridge's address, 50 at once.
            "VIEWPORTD_LIMITS_UNAUTHENTICATED_PER_ADDRESS": "200",
        ], on: try net.host(name))
        nodes[name] = node
        return node
    }

    /// A session attached on a (created through a's API) and a run with the receiver's webhook recording there for
    /// `seconds`, its `steps` marked along the way.
    func recordOnA(runID: String, seconds: Double, steps: [String]) async throws -> (String, StartedRun) {
        let a = try daemon("a")
        let sessionID = try await attachOnA()
        let (runStatus, run) = try await requestJSON("POST", a.base + "/v1/browser_sessions/\(sessionID)/runs",
                                                     json: ["run_id": runID, "webhook_url": receiver.url])
        try #require(runStatus == 201, "\(run)")
        let startedAt = try #require(run["started_at"].string.flatMap(parseISO))
        let pause = seconds / Double(steps.count + 1)
        for label in steps {
            try await Task.sleep(for: .seconds(pause))
            try await step(runID, label)
        }
        try await Task.sleep(for: .seconds(pause))
        return (sessionID, StartedRun(id: runID, startedAt: startedAt))
    }

    /// A session of the browser attached on a (created through a's API), once it runs.
    func attachOnA() async throws -> String {
        let a = try daemon("a")
        let (status, created) = try await requestJSON("POST", a.base + "/v1/browser_sessions",
                                                      json: ["browser_address": browser.address])
        try #require(status == 201, "\(created)")
        let sessionID = try #require(created["browser_session_id"].string)
        try await eventually("the session is attached on a") {
            try await requestJSON("GET", a.base + "/v1/browser_sessions/\(sessionID)").1["status"].string == "running"
        }
        return sessionID
    }

    /// The running node of host `name`.
    func daemon(_ name: String) throws -> ChildDaemon { try #require(nodes[name], "node \(name) is not running") }

    /// Marks a step of a run on a, trying again while a cannot reach the database.
    func step(_ runID: String, _ label: String) async throws {
        let a = try #require(nodes["a"])
        try await eventually("step \(label) is marked", timeout: 20) {
            try await requestJSON("POST", a.base + "/v1/runs/\(runID)/steps", json: ["label": label]).0 == 201
        }
    }

    /// The session as node `name` answers it.
    func session(_ id: String, on name: String) async throws -> JSON {
        try await requestJSON("GET", try #require(nodes[name]).base + "/v1/browser_sessions/\(id)").1
    }

    /// The run as node `name` answers it.
    func run(_ id: String, on name: String) async throws -> JSON {
        try await requestJSON("GET", try #require(nodes[name]).base + "/v1/runs/\(id)").1
    }

    /// What the store holds of a session, its run and the run's artifacts and steps: only a write changes it.
    func snapshot(sessionID: String, runID: String) async throws -> String {
        try await store { store in
            let session = try #require(try await store.session(id: sessionID))
            let run = try #require(try await store.run(id: runID))
            let artifacts = try await store.artifacts(runID: runID).map { "\($0.id) \($0.checksum) \($0.objectKey ?? "")" }
            let steps = try await store.steps(runID: runID).map { "\($0.index) \($0.label)" }
            return "\(String(describing: session)) \(String(describing: run)) \(artifacts) \(steps)"
        }
    }

    /// Waits until b or c took a's session and run over and the run's webhook is delivered; returns their
    /// snapshot then.
    func waitForTakeover(sessionID: String, runID: String) async throws -> String {
        try await eventually("the session is failed", timeout: Double(Self.leaseSeconds) + 10) {
            try await session(sessionID, on: "b")["status"].string == "failed"
        }
        try await eventually("the run is terminated and its webhook delivered", timeout: 30) {
            let ended = try await run(runID, on: "b")["status"].string == "terminated"
            let delivered = try await receiver.requests().count == 1
            return ended && delivered
        }
        return try await snapshot(sessionID: sessionID, runID: runID)
    }

    /// The node `id` as the database has it.
    func node(_ id: String) async throws -> NodeStatus? {
        try await store { try await $0.node(id: id) }
    }

    /// Runs `body` with a store of the cluster's database that sees every node's rows.
    func store<T: Sendable>(_ body: @escaping @Sendable (PostgresStore) async throws -> T) async throws -> T {
        var logger = Logger(label: "cluster-test")
        logger.logLevel = .critical
        let store = try PostgresStore(url: databaseURL, logger: logger)
        var result: T?
        try await store.run { result = try await body(store) }
        return try #require(result)
    }
}

/// Builds the cluster, starts a, b and c, runs `body`, and tears it all down, the nodes' state and logs included.
private func withCluster(_ body: (ClusterFixture) async throws -> Void) async throws {
    var stateDirs: [String] = []
    defer {
        for dir in stateDirs { for path in [dir, dir + ".log"] { try? FileManager.default.removeItem(atPath: path) } }
    }
    try await ClusterNet.with(hosts: ["a", "b", "c"]) { net in
        try await PostgresServer.with(host: net.rootAddress) { postgres in
            let s3 = try await S3Server.start(host: net.rootAddress)
            defer { s3.stop() }
            let receiver = try Receiver(statuses: [200], host: net.rootAddress)
            defer { receiver.stop() }
            let browser = try await Chromium.launch(url: Fixtures.url("anim.html"), launcher: try net.host("a").exec)
            defer { browser.kill() }
            let cluster = try ClusterFixture(net: net, postgres: postgres, s3: s3, receiver: receiver, browser: browser)
            stateDirs = Array(cluster.stateDirs.values)
            for name in ["a", "b", "c"] { try await cluster.start(name) }
            do { try await body(cluster) } catch {
                for (name, node) in cluster.nodes.sorted(by: { $0.key < $1.key }) {
                    print("--- log of node \(name)\n\(node.log.suffix(4000))")
                }
                throw error
            }
        }
    }
}
