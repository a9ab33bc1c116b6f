import Logging
@testable import PostgresStore
import Store
import Testing

/// PostgresStore's connections to a real PostgreSQL 15: the pool's bound and wait, a restart, the lease's timeout.
@Suite(.serialized) struct PostgresConnectionTests {
    static let logger = Logger(label: "test")

    @Test func queriesBeyondThePoolsConnectionsWaitForOneAndFailAsUnavailableOnceTheWaitIsOver() async throws {
        try await PostgresServer.with { server in
            let store = try PostgresStore(url: try server.createDatabase(), logger: Self.logger)
            try await store.run {
                let queries = 3 * PostgresStore.maxConnections
                let answered = try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<queries { group.addTask { try await store.execute("SELECT pg_sleep(0.2)").count } }
                    return try await group.reduce(0, +)
                }
                #expect(answered == queries, "each waits its turn")

                try await withThrowingTaskGroup(of: Void.self) { group in
                    for _ in 0..<PostgresStore.maxConnections {
                        group.addTask { _ = try await store.execute("SELECT pg_sleep(6.5)") }
                    }
                    try await Task.sleep(for: .milliseconds(500))
                    let started = ContinuousClock.now
                    await #expect(throws: StoreFailure.unavailable(
                        "no connection to PostgreSQL within \(PostgresStore.connectionWait)")) {
                        try await store.execute("SELECT 1")
                    }
                    let waited = started.duration(to: .now)
                    #expect(waited > .milliseconds(4900) && waited < .seconds(6), "\(waited)")
                    try await group.waitForAll()
                }
            }
        }
    }

    @Test func afterPostgreSQLRestartsTheFirstQueryIsAnsweredOnANewConnection() async throws {
        try await PostgresServer.with { server in
            let store = try PostgresStore(url: try server.createDatabase(), logger: Self.logger)
            try await store.run {
                #expect(try await store.execute("SELECT 1").count == 1)
                try server.restart()
                #expect(try await store.execute("SELECT 1").count == 1, "the idle connection the restart closed is not lent")
            }
        }
    }

    @Test func aLeaseQueryThatOutlastsItsTimeoutFailsAsUnavailableAndTheNextConnectsAgain() async throws {
        try await PostgresServer.with { server in
            let lease = try LeaseConnection(url: try server.createDatabase(), logger: Self.logger)
            let started = ContinuousClock.now
            await #expect(throws: StoreFailure.unavailable("no answer from PostgreSQL within \(Duration.seconds(1))")) {
                try await lease.query("SELECT pg_sleep(10)", within: .seconds(1))
            }
            #expect(started.duration(to: .now) < .seconds(2))
            #expect(try await lease.query("SELECT 1", within: .seconds(5)).count == 1)
            await lease.close()
        }
    }

    @Test func aURLThatIsNotPostgresOrHasAnUnknownSSLModeIsRefusedUpFront() throws {
        #expect(throws: PostgresStoreError.self) { try PostgresStore(url: "mysql://db/x", logger: Self.logger) }
        #expect(throws: PostgresStoreError.self) {
            try PostgresStore(url: "postgres://db/x?sslmode=sometimes", logger: Self.logger)
        }
    }
}
