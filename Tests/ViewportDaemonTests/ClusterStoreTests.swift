import Foundation
import Logging
@testable import PostgresStore
import Store
import Testing
import ViewportCore
@testable import ViewportDaemon

/// Leases, takeover and fencing as the nodes' stores see them, on a real PostgreSQL 15: no daemon, no sockets.
@Suite(.serialized) struct ClusterStoreTests {
    static let logger = Logger(label: "test")

    /// Stores of nodes `ids` on one new database, each run for the length of `body`, and a lease connection to it.
    private func withNodes(_ ids: [String],
                           _ body: @escaping @Sendable ([PostgresStore], LeaseConnection) async throws -> Void)
        async throws
    {
        try await PostgresServer.with { server in
            let url = try server.createDatabase()
            let stores = try ids.map { try PostgresStore(url: url, nodeID: $0, logger: Self.logger) }
            let lease = try LeaseConnection(url: url, logger: Self.logger)
            func nest(_ index: Int) async throws {
                guard index < stores.count else { return try await body(stores, lease) }
                try await stores[index].run { try await nest(index + 1) }
            }
            try await nest(0)
            await lease.close()
        }
    }

    private static func session(_ id: String, status: SessionStatus = .running) -> SessionRecord {
        SessionRecord(id: id, organizationID: "org-a", status: status, createdAt: Date(), modifiedAt: Date(),
                      timeoutMinutes: 30, browserAddress: "ws://127.0.0.1:1/x")
    }

    @Test func aNodeWhoseLeaseExpiresIsTakenOverOnceItsSessionsFailedAndItsWritesRefused() async throws {
        try await withNodes(["a", "b", "c"]) { stores, lease in
            let (a, b, c) = (stores[0], stores[1], stores[2])
            #expect(try await a.register(advertiseURL: "http://10.0.0.1:8200", leaseSeconds: 2) == 1)
            try await b.register(advertiseURL: "http://10.0.0.2:8200", leaseSeconds: 60)
            try await c.register(advertiseURL: "http://10.0.0.3:8200", leaseSeconds: 60)
            try await offThread { try a.insert(Self.session("bs_a1")) }
            try await offThread { try a.insert(Self.session("bs_a2", status: .closed)) }
            try await a.insert(RunRecord(id: "wr_a", sessionID: "bs_a1", organizationID: "org-a", status: "running",
                                         title: nil, webhookURL: nil, createdAt: Date(), startMicros: 0, segmentID: nil))
            var delivery = try await a.insertWebhookDelivery(WebhookDelivery(runID: "wr_old", organizationID: "org-a",
                                                                              url: "https://example.com/h", body: Data("{}".utf8)))
            #expect(try await a.session(id: "bs_a1")?.nodeID == "a" && delivery.nodeID == "a")
            var renewed = Self.session("bs_a1")
            renewed.renewedAt = Date()
            try await offThread { [renewed] in try a.update(renewed) }
            #expect(try await a.session(id: "bs_a1")?.nodeID == "a", "a record written without its owner keeps it")
            #expect(try await b.activeSessions().isEmpty, "b attaches only what it owns")
            #expect(try await b.dueWebhookDeliveries(limit: 10).isEmpty, "b sends only what it owns")
            #expect(try await b.takeOverLostNodes { _ in "lost" }.isEmpty, "a's lease runs")

            try await Task.sleep(for: .milliseconds(2500))
            #expect(try await b.node(id: "a")?.leaseExpired == true)
            // b and c notice together: one takes a over.
            async let byB = b.takeOverLostNodes { "host \($0) lost" }
            async let byC = c.takeOverLostNodes { "host \($0) lost" }
            let taken = try await byB + byC
            #expect(taken.map(\.id) == ["a"] && taken.map(\.failedSessionIDs) == [["bs_a1"]])
            #expect(taken.map(\.openRunSessionIDs) == [["bs_a1"]])
            let session = try #require(try await b.session(id: "bs_a1"))
            #expect(session.status == .failed && session.failureReason == "host a lost")
            #expect(session.nodeID == "b" || session.nodeID == "c")
            let owner = session.nodeID == "b" ? b : c
            #expect(try await owner.openRuns().map(\.id) == ["wr_a"], "its open run is the taker's to terminate")
            #expect(try await owner.dueWebhookDeliveries(limit: 10).map(\.id) == [delivery.id], "and its webhooks")
            #expect(try await b.takeOverLostNodes { _ in "again" }.isEmpty)
            #expect(try await c.takeOverLostNodes { _ in "again" }.isEmpty)
            let lostNode = try #require(try await b.node(id: "a"))
            #expect(lostNode.node.lostAt != nil && lostNode.node.lostBy == session.nodeID && lostNode.node.epoch == 2)

            // a, cut off meanwhile, comes back: its lease is gone and nothing it writes lands.
            #expect(try await a.renewLease(leaseSeconds: 2, load: NodeLoad(), on: lease) == false)
            var stale = Self.session("bs_a1")
            stale.nodeID = "a"
            await #expect(throws: StoreFailure.fenced(nodeID: "a")) { try await offThread { [stale] in try a.update(stale) } }
            await #expect(throws: StoreFailure.fenced(nodeID: "a")) {
                try await a.update(RunRecord(id: "wr_a", sessionID: "bs_a1", organizationID: "org-a", status: "completed",
                                             title: nil, webhookURL: nil, createdAt: Date(), startMicros: 0, segmentID: nil))
            }
            delivery.status = .delivered
            await #expect(throws: StoreFailure.fenced(nodeID: "a")) { try await a.updateWebhookDelivery(delivery) }
            #expect(try await b.session(id: "bs_a1")?.status == .failed)
            #expect(try await b.run(id: "wr_a")?.status == "running")

            // Restarted with the same id, a registers anew and owns none of it.
            #expect(try await a.register(advertiseURL: "http://10.0.0.1:8200", leaseSeconds: 60) == 3)
            #expect(try await a.activeSessions().isEmpty)
            #expect(try await a.openRuns().isEmpty)
            #expect(try await a.node(id: "a")?.isAlive == true)
            #expect(try await a.nodes().map(\.node.id) == ["a", "b", "c"])
        }
    }

    @Test func aNodeRegisteringAgainFencesItsEarlierIncarnation() async throws {
        try await withNodes(["a", "a"]) { stores, lease in
            let (old, new) = (stores[0], stores[1])
            try await old.register(advertiseURL: "http://10.0.0.1:8200", leaseSeconds: 60)
            try await offThread { try old.insert(Self.session("bs_1")) }
            try await new.register(advertiseURL: "http://10.0.0.1:8200", leaseSeconds: 60)
            #expect(try await new.activeSessions().map(\.id) == ["bs_1"], "a restart within its lease keeps its sessions")
            #expect(try await old.renewLease(leaseSeconds: 60, load: NodeLoad(), on: lease) == false)
            await #expect(throws: StoreFailure.fenced(nodeID: "a")) { try await offThread { try old.insert(Self.session("bs_2")) } }
        }
    }

    @Test func theRunsANodeWasTerminatingWhenItWasLostAreTheNextTakersToTerminate() async throws {
        try await withNodes(["a", "b", "c"]) { stores, _ in
            let (a, b, c) = (stores[0], stores[1], stores[2])
            try await a.register(advertiseURL: "http://10.0.0.1:8200", leaseSeconds: 1)
            try await b.register(advertiseURL: "http://10.0.0.2:8200", leaseSeconds: 3)
            try await c.register(advertiseURL: "http://10.0.0.3:8200", leaseSeconds: 60)
            try await offThread { try a.insert(Self.session("bs_a1")) }
            try await a.insert(RunRecord(id: "wr_a", sessionID: "bs_a1", organizationID: "org-a", status: "running",
                                         title: nil, webhookURL: nil, createdAt: Date(), startMicros: 0, segmentID: nil))
            try await offThread { try a.insert(Self.session("bs_a2", status: .closed)) }
            try await Task.sleep(for: .milliseconds(1500))
            #expect(try await b.takeOverLostNodes { _ in "lost" }.map(\.openRunSessionIDs) == [["bs_a1"]])

            // b is lost before it terminated a's run: c finds it among b's sessions, failed already.
            try await Task.sleep(for: .milliseconds(3000))
            let taken = try await c.takeOverLostNodes { _ in "lost" }
            #expect(taken.map(\.id) == ["b"] && taken.map(\.failedSessionIDs) == [[]])
            #expect(taken.map(\.openRunSessionIDs) == [["bs_a1"]])
        }
    }

    /// A connection the server has closed (PostgreSQL restarting, an administrator ending its backend) fails the
    /// query written to it as the database unavailable, rather than the node's lease, uploads or webhooks waiting
    /// for an answer that never comes; the pool then connects again.
    @Test func aQueryOnAConnectionThatHasClosedFailsRatherThanWaitingForever() async throws {
        try await PostgresServer.with { server in
            let store = try PostgresStore(url: try server.createDatabase(), logger: Self.logger)
            try await store.run {
                let started = ContinuousClock.now
                await #expect {
                    try await store.withConnection { connection in
                        let backend = try #require(try await store.execute("SELECT pg_backend_pid()", on: connection).first)
                        // From another connection, waiting until that backend has exited.
                        try await store.execute("SELECT pg_terminate_backend(\(try backend.decode(Int.self))::int, 5000)")
                        return try await store.execute("SELECT 1", on: connection)
                    }
                } throws: { error in
                    if case StoreFailure.unavailable = error { return true }
                    return false
                }
                #expect(started.duration(to: .now) < .seconds(5))
                let rows = try await store.execute("SELECT 1")
                #expect(rows.count == 1, "the pool connects again")
            }
        }
    }
}
