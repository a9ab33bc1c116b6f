import Foundation
import PostgresStore
import Store
import Testing
import ViewportCore
@testable import ViewportDaemon

/// Both stores on their own, each test on each (SQLite, and a real PostgreSQL 15): records as written and read
/// back, transactions, and an SQLite database of an earlier version.
@Suite struct StoreTests {
    enum Backend: CaseIterable { case sqlite, postgres }

    // Whole milliseconds: the store keeps dates to the millisecond.
    static let t0 = Date(timeIntervalSince1970: 1_760_000_000.25)

    @Test(arguments: Backend.allCases) func sessionsReadBackAsStoredAndChanged(_ backend: Backend) async throws {
        try await withTemporaryStore(backend) { store in
            var session = SessionRecord(id: "bs_1", organizationID: "org-a", status: .created, createdAt: Self.t0,
                                        modifiedAt: Self.t0, timeoutMinutes: 30, browserAddress: "ws://127.0.0.1:1/x")
            try await offThread { [session] in try store.insert(session) }
            #expect(try await store.session(id: "bs_1") == session)
            await #expect(throws: StoreFailure.duplicateSession("bs_1")) {
                try await offThread { [session] in try store.insert(session) }
            }

            session.status = .closed
            (session.modifiedAt, session.startedAt, session.completedAt) = (Self.t0 + 60, Self.t0 + 1, Self.t0 + 60)
            (session.renewedAt, session.failureReason) = (Self.t0 + 30, "closed by request")
            (session.vncAddress, session.vncPassword) = ("127.0.0.1:5901", "secret")
            try await offThread { [session] in try store.update(session) }
            #expect(try await store.session(id: "bs_1") == session)
            #expect(try await store.sessions(organizationID: "org-a", activeOnly: false) == [session])
            #expect(try await store.sessions(organizationID: "org-a", activeOnly: true).isEmpty)
            #expect(try await store.recentlyEndedSessions(limit: 10) == [session])
            #expect(try await store.sessionCounts() == [.closed: 1])
        }
    }

    @Test(arguments: Backend.allCases) func runsStepsArtifactsAndSegmentsReadBackAsStored(_ backend: Backend) async throws {
        try await withTemporaryStore(backend) { store in
            let segment = SegmentRecord(id: "seg_1", sessionID: "bs_1", path: "org-a/seg_1.mp4",
                                        originMicros: 1_760_000_001_000_000)
            try await store.insert(segment)
            #expect(try await store.segment(id: "seg_1") == segment)
            #expect(try await store.unfinishedSegments() == [segment])
            try await store.markFinished(segmentID: "seg_1")
            #expect(try await store.segment(id: "seg_1")?.finished == true)
            #expect(try await store.unfinishedSegments().isEmpty)

            var run = RunRecord(id: "tsk_1", sessionID: "bs_1", organizationID: "org-a", status: "running",
                                title: "A run", webhookURL: "https://example.com/hook", createdAt: Self.t0,
                                startMicros: 1_760_000_000_250_000, segmentID: "seg_1")
            try await store.insert(run)
            #expect(try await store.run(id: "tsk_1") == run)
            #expect(try await store.openRuns(sessionID: "bs_1") == [run])
            await #expect(throws: StoreFailure.duplicateRun("tsk_1")) { try await store.insert(run) }

            let screenshot = Self.artifact("art_1", .screenshot, session: "bs_1", step: 1, at: Self.t0 + 1)
            let step = StepRecord(runID: "tsk_1", index: 1, label: "Opened the page", createdAt: Self.t0 + 1,
                                  timeMicros: 1_760_000_001_250_000, artifactID: "art_1")
            try await store.insert(step, artifact: screenshot)
            let bare = StepRecord(runID: "tsk_1", index: 2, label: "Clicked", createdAt: Self.t0 + 2,
                                  timeMicros: 1_760_000_002_250_000, artifactID: nil)
            try await store.insert(bare, artifact: nil)
            #expect(try await store.steps(runID: "tsk_1") == [step, bare])
            #expect(try await store.artifact(id: "art_1") == screenshot)
            run.stepCount = 2
            #expect(try await store.run(id: "tsk_1") == run)

            (run.status, run.finishedAt, run.failureReason) = ("failed", Self.t0 + 9, "agent gave up")
            (run.framesRecorded, run.framesDropped, run.recordingError) = (1200, 3, "disk full")
            try await store.update(run)
            #expect(try await store.run(id: "tsk_1") == run)
            #expect(try await store.openRuns().isEmpty)

            let recording = Self.artifact("art_2", .recording, session: "bs_1", at: Self.t0 + 10)
            try await store.insert(recording)
            #expect(try await store.artifacts(runID: "tsk_1") == [screenshot, recording])
            #expect(try await store.sessionFiles(sessionIDs: ["bs_1"])["bs_1"] == [recording])
        }
    }

    @Test(arguments: Backend.allCases) func webhookDeliveriesGetAnIDAndReadBackAsStored(_ backend: Backend) async throws {
        try await withTemporaryStore(backend) { store in
            var delivery = try await store.insertWebhookDelivery(WebhookDelivery(
                runID: "tsk_1", organizationID: "org-a", url: "https://example.com/hook", body: Data([0, 1, 2, 255]),
                createdAt: Self.t0))
            let id = try #require(delivery.id)
            #expect(try await store.latestWebhookDelivery(runID: "tsk_1") == delivery)
            #expect(try await store.dueWebhookDeliveries(now: Self.t0, limit: 10) == [delivery])
            #expect(try await store.dueWebhookDeliveries(now: Self.t0, excluding: [id], limit: 10).isEmpty)

            (delivery.attempts, delivery.status, delivery.nextAttemptAt) = (2, .delivered, Self.t0 + 5)
            (delivery.lastError, delivery.lastStatusCode, delivery.deliveredAt) = ("HTTP 500", 200, Self.t0 + 5)
            try await store.updateWebhookDelivery(delivery)
            #expect(try await store.latestWebhookDelivery(runID: "tsk_1") == delivery)
            #expect(try await store.nextWebhookAttemptDate() == nil)

            let next = try await store.insertWebhookDelivery(WebhookDelivery(
                runID: "tsk_1", organizationID: "org-a", url: "https://example.com/hook", body: Data(), createdAt: Self.t0))
            #expect(try #require(next.id) > id)
        }
    }

    /// Fixtures/store-v6.sql is a database as the store wrote it before its records were GRDB records themselves.
    @Test func aDatabaseOfThePreviousVersionOpensWithItsRecords() async throws {
        try await withTemporaryStore(.sqlite, prepare: { path in
            let loader = Process()
            loader.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            loader.arguments = ["-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(open(sys.argv[2]).read())",
                                path, Fixtures.directory.appendingPathComponent("store-v6.sql").path]
            try loader.run()
            loader.waitUntilExited()
            try #require(loader.terminationStatus == 0)
        }) { store in
            var closed = SessionRecord(id: "bs_closed", organizationID: "org-a", status: .closed, createdAt: Self.t0,
                                       modifiedAt: Self.t0 + 600.5, startedAt: Self.t0 + 1,
                                       completedAt: Self.t0 + 600.5, timeoutMinutes: 30,
                                       browserAddress: "ws://127.0.0.1:9222/devtools/browser/x",
                                       failureReason: "closed by request")
            (closed.renewedAt, closed.vncAddress, closed.vncPassword) = (Self.t0 + 300, "127.0.0.1:5901", "secret")
            #expect(try await store.session(id: "bs_closed") == closed)
            let running = SessionRecord(id: "bs_running", organizationID: "org-b", status: .running,
                                        createdAt: Self.t0 + 10, modifiedAt: Self.t0 + 10, timeoutMinutes: 5,
                                        browserAddress: "")
            #expect(try await store.activeSessions() == [running])
            #expect(try await store.sessionCounts() == [.closed: 1, .running: 1])

            var run = RunRecord(id: "tsk_done", sessionID: "bs_closed", organizationID: "org-a", status: "failed",
                                title: "A run", webhookURL: "https://example.com/hook", createdAt: Self.t0 + 2,
                                startMicros: 1_760_000_002_250_000, segmentID: "seg_1")
            (run.finishedAt, run.failureReason, run.stepCount) = (Self.t0 + 500, "agent gave up", 2)
            (run.framesRecorded, run.framesDropped, run.recordingError) = (1200, 3, "disk full")
            #expect(try await store.run(id: "tsk_done") == run)
            #expect(try await store.openRuns().map(\.id) == ["wr_open"])
            #expect(try await store.steps(runID: "tsk_done") == [
                StepRecord(runID: "tsk_done", index: 1, label: "Opened the page", createdAt: Self.t0 + 3,
                           timeMicros: 1_760_000_003_250_000, artifactID: "art_shot"),
                StepRecord(runID: "tsk_done", index: 2, label: "Clicked", createdAt: Self.t0 + 4,
                           timeMicros: 1_760_000_004_250_000, artifactID: nil),
            ])

            let recording = ArtifactRecord(id: "art_rec", kind: .recording, runID: "tsk_done", sessionID: "bs_closed",
                                           organizationID: "org-a", step: nil, path: "org-a/tsk_done/recording.mp4",
                                           filename: "recording.mp4", fileSize: 1_000_000,
                                           checksum: String(repeating: "cd", count: 32), contentType: "video/mp4",
                                           createdAt: Self.t0 + 501, modifiedAt: Self.t0 + 501)
            #expect(try await store.sessionFiles(sessionIDs: ["bs_closed"])["bs_closed"] == [recording])
            let artifacts = try await store.artifacts(runID: "tsk_done")
            #expect(artifacts.map(\.id) == ["art_shot", "art_old", "art_rec"])
            #expect(artifacts.first?.kind == .screenshot && artifacts.first?.step == 1)
            #expect(artifacts.map(\.expiredAt) == [nil, Self.t0 + 700, nil])
            #expect(try await store.liveArtifactBytes() == 2048 + 1_000_000)

            #expect(try await store.segment(id: "seg_1")?.finished == true)
            #expect(try await store.unfinishedSegments() == [
                SegmentRecord(id: "seg_2", sessionID: "bs_running", path: "org-b/seg_2.mp4",
                              originMicros: 1_760_000_011_000_000),
            ])

            let delivered = try #require(try await store.latestWebhookDelivery(runID: "tsk_done"))
            #expect(delivered.id == 1 && delivered.status == .delivered && delivered.attempts == 2)
            #expect(delivered.body == Data(#"{"run_id":"tsk_done"}"#.utf8))
            #expect(delivered.lastStatusCode == 200 && delivered.deliveredAt == Self.t0 + 560)
            var pending = WebhookDelivery(runID: "wr_open", organizationID: "org-b", url: "http://example.org/",
                                          body: Data([0, 1, 2, 255]), createdAt: Self.t0 + 30)
            pending.id = 2
            #expect(try await store.dueWebhookDeliveries(now: Self.t0 + 30, limit: 10) == [pending])

            // Still writable after opening: the migrations found nothing left to do.
            try await store.checkWritable()
            pending.id = nil
            #expect(try await store.insertWebhookDelivery(pending).id == 3)
        }
    }

    @Test(arguments: Backend.allCases) func theFilesOfManySessionsComeFromOneQueryWithoutScreenshotsOrExpiredOnes(_ backend: Backend) async throws {
        try await withTemporaryStore(backend) { store in
            let a1 = Self.artifact("rec_a1", .recording, session: "bs_a", at: Self.t0 + 1)
            let a2 = Self.artifact("dl_a2", .download, session: "bs_a", at: Self.t0 + 2)
            let b1 = Self.artifact("rec_b1", .recording, session: "bs_b", at: Self.t0 + 1)
            let expired = Self.artifact("rec_c1", .recording, session: "bs_c", at: Self.t0)
            for artifact in [a2, b1, a1, expired, Self.artifact("shot_c", .screenshot, session: "bs_c", at: Self.t0)] {
                try await store.insert(artifact)
            }
            try await store.markExpired(artifactIDs: ["rec_c1"], at: Self.t0 + 5)

            // More ids than SQLite binds parameters in one statement (32766): one array for all.
            let unknown = (0..<40_000).map { "bs_unknown_\($0)" }
            let files = try await store.sessionFiles(sessionIDs: ["bs_a", "bs_b", "bs_c"] + unknown)
            #expect(files == ["bs_a": [a1, a2], "bs_b": [b1]])
            #expect(try await store.sessionFiles(sessionIDs: []).isEmpty)
        }
    }

    static func artifact(_ id: String, _ kind: ArtifactRecord.Kind, session: String, step: Int? = nil, at date: Date)
        -> ArtifactRecord
    {
        ArtifactRecord(id: id, kind: kind, runID: "tsk_1", sessionID: session, organizationID: "org-a", step: step,
                       path: "org-a/tsk_1/\(id)", filename: id, fileSize: 100, checksum: String(repeating: "0", count: 64),
                       contentType: kind == .recording ? "video/mp4" : "image/jpeg", createdAt: date, modifiedAt: date)
    }

    /// Runs `body` with a store of `backend` in a fresh database, then removes it: SQLite in a fresh directory (its
    /// database file first given to `prepare`), or a fresh database of a PostgreSQL server started for the test.
    func withTemporaryStore(_ backend: Backend, prepare: (String) throws -> Void = { _ in }, objectPrefix: String? = nil,
                            _ body: (any Store) async throws -> Void) async throws
    {
        if backend == .postgres {
            try await PostgresServer.with { server in
                let store = try PostgresStore(url: try server.createDatabase(), objectPrefix: objectPrefix,
                                              logger: .init(label: "test"))
                try await store.run { try await body(store) }
            }
            return
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("vp-store-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("viewportd.sqlite").path
        try prepare(path)
        try await body(try SQLiteStore(path: path, objectPrefix: objectPrefix))
    }

    @Test(arguments: Backend.allCases) func withABucketEveryStoredArtifactIsQueuedForUploadUnderItsKey(_ backend: Backend) async throws {
        try await withTemporaryStore(backend, objectPrefix: "pre/fix") { store in
            try await store.insert(Self.artifact("art_1", .recording, session: "s1", at: Self.t0))
            try await store.insert(StepRecord(runID: "tsk_1", index: 1, label: "a", createdAt: Self.t0, timeMicros: 1,
                                              artifactID: "art_2"),
                                   artifact: Self.artifact("art_2", .screenshot, session: "s1", step: 1, at: Self.t0))
            let due = try await store.dueUploads(limit: 10)
            #expect(due.map(\.key) == ["pre/fix/org-a/tsk_1/art_1", "pre/fix/org-a/tsk_1/art_2"])
            #expect(due.map(\.artifactID) == ["art_1", "art_2"])
            try #require(due.count == 2)
            // A failed attempt waits for its retry time; a stored one leaves the outbox and marks its artifact.
            try await store.uploadFailed(id: try #require(due[0].id), error: "down", retryAt: Date().addingTimeInterval(60))
            #expect(try await store.dueUploads(limit: 10).map(\.artifactID) == ["art_2"])
            let stored = try #require(try await store.uploadStored(due[1]))
            #expect(stored.objectKey == "pre/fix/org-a/tsk_1/art_2" && stored.storedAt != nil)
            #expect(try await store.pendingUploadCount() == 1)
        }
        try await withTemporaryStore(backend) { store in
            try await store.insert(Self.artifact("art_1", .recording, session: "s1", at: Self.t0))
            #expect(try await store.pendingUploadCount() == 0, "without a bucket nothing is queued")
        }
    }

    @Test(arguments: Backend.allCases) func aHeldWebhookIsQueuedOnceOnlyWhenNoUploadOfItsRunIsPending(_ backend: Backend) async throws {
        try await withTemporaryStore(backend, objectPrefix: "p") { store in
            var run = RunRecord(id: "tsk_1", sessionID: "s1", organizationID: "org-a", status: "running", title: nil,
                                webhookURL: "http://hook", createdAt: Self.t0, startMicros: 1, segmentID: nil)
            try await store.insert(run)
            try await store.insert(Self.artifact("art_1", .recording, session: "s1", at: Self.t0))
            (run.status, run.webhookAwaitsUploads) = ("completed", true)
            try await store.update(run)
            let make: @Sendable (RunRecord, [ArtifactRecord]) throws -> WebhookDelivery = { run, artifacts in
                WebhookDelivery(runID: run.id, organizationID: run.organizationID, url: "http://hook",
                                body: Data(artifacts.map { $0.objectKey ?? "local" }.joined(separator: ",").utf8))
            }
            #expect(try await store.releaseHeldWebhook(runID: "tsk_1", make: make) == false, "its recording is pending")
            let upload = try #require(try await store.dueUploads(limit: 1).first)
            _ = try await store.uploadStored(upload)
            async let first = store.releaseHeldWebhook(runID: "tsk_1", make: make)
            async let second = store.releaseHeldWebhook(runID: "tsk_1", make: make)
            #expect([try await first, try await second].sorted { !$0 && $1 } == [false, true], "queued once")
            let delivery = try #require(try await store.latestWebhookDelivery(runID: "tsk_1"))
            #expect(String(decoding: delivery.body, as: UTF8.self) == "p/org-a/tsk_1/art_1", "built from the stored state")
            #expect(try await store.runsAwaitingUploads().isEmpty)
        }
    }

    @Test func storesOpeningOneDatabaseAtOnceApplyTheMigrationsOnce() async throws {
        try await PostgresServer.with { server in
            let url = try server.createDatabase()
            let stores = try (0..<4).map { _ in try PostgresStore(url: url, logger: .init(label: "test")) }
            try await withThrowingTaskGroup(of: Void.self) { group in
                for store in stores {
                    group.addTask { try await store.run { try await store.checkWritable() } }
                }
                try await group.waitForAll()
            }
            // Each migration recorded once, and the schema whole: a fifth store finds nothing to do and works.
            let (status, output) = try runProcess("/usr/sbin/runuser", ["-u", "postgres", "--",
                PostgresServer.binaries + "/psql", url, "-Atc", "SELECT identifier FROM viewportd_migrations ORDER BY 1"])
            try #require(status == 0, "\(output)")
            #expect(output.split(separator: "\n") == ["v1-sessions", "v2-runs", "v3-webhooks", "v4-lifecycle", "v5-vnc",
                                                       "v6-recording-error", "v7-session-files", "v8-object-store", "v9-cluster"])
            let store = try PostgresStore(url: url, logger: .init(label: "test"))
            try await store.run {
                try await store.insert(Self.artifact("art_1", .recording, session: "bs_1", at: Self.t0))
                #expect(try await store.artifact(id: "art_1") == Self.artifact("art_1", .recording, session: "bs_1", at: Self.t0))
            }
        }
    }
}
