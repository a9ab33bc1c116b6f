public import Foundation
public import Logging
import Store
import Synchronization

/// A viewportd node of a cluster, as its row in the `node` table.
public struct NodeRecord: Sendable, Equatable, Codable {
    public var id: String
    /// Where the other nodes reach its API.
    public var advertiseURL: String
    /// Raised by every registration and by the takeover of a lost node: the fencing token of its writes.
    public var epoch: Int64
    public var startedAt: Date
    public var heartbeatAt: Date
    public var leaseExpiresAt: Date
    /// When another node (`lostBy`) found its lease expired and took its sessions over.
    public var lostAt: Date?
    public var lostBy: String?
    /// As of its last heartbeat: its viewers (relayed ones included), those relayed from another node, and the
    /// streams it takes from other nodes for them.
    public var viewers: Int
    public var relayedViewers: Int
    public var upstreamStreams: Int
}

/// A node with what the database says of it now.
public struct NodeStatus: Sendable, Equatable {
    public var node: NodeRecord
    /// Its lease ran out (by the database's clock) and nobody took it over yet, or somebody did.
    public var leaseExpired: Bool
    /// Sessions it owns that are still open.
    public var activeSessions: Int
    /// Alive: registered, not lost, lease running.
    public var isAlive: Bool { !leaseExpired && node.lostAt == nil }
}

/// What a node reports with its heartbeat.
public struct NodeLoad: Sendable, Equatable {
    public var viewers: Int
    public var relayedViewers: Int
    public var upstreamStreams: Int
    public init(viewers: Int = 0, relayedViewers: Int = 0, upstreamStreams: Int = 0) {
        self.viewers = viewers
        self.relayedViewers = relayedViewers
        self.upstreamStreams = upstreamStreams
    }
}

/// A node this one found lost and took over: its sessions that were open are now failed and owned here, with
/// their runs still open (to be terminated with their recordings rebuilt from the bucket), and its pending
/// webhook deliveries are sent from here.
public struct LostNode: Sendable, Equatable {
    public var id: String
    public var failedSessionIDs: [String]
    /// Its sessions with runs still open, failed ones included: a node lost while it was terminating the runs of
    /// a node it had taken over leaves them so.
    public var openRunSessionIDs: [String]
}

// Leases are timed by the database's clock, so that nodes' clocks need not agree.
extension PostgresStore {
    /// Registers this node (`nodeID`) with a new epoch and a lease of `leaseSeconds`, and returns the epoch. From
    /// here on this store's transactions are fenced by it. A node that registers again (a restart) keeps the
    /// sessions it owns unless its lease was taken meanwhile.
    @discardableResult
    public func register(advertiseURL: String, leaseSeconds: Int) async throws -> Int64 {
        guard let nodeID else { throw PostgresStoreError("a store without a node id cannot register") }
        let rows = try await transaction(fenced: false) { connection in
            try await execute("""
                INSERT INTO node (id, "advertiseURL", epoch, "startedAt", "heartbeatAt", "leaseExpiresAt")
                VALUES (\(nodeID), \(advertiseURL), 1, now(), now(), now() + make_interval(secs => \(leaseSeconds)))
                ON CONFLICT (id) DO UPDATE SET epoch = node.epoch + 1, "advertiseURL" = EXCLUDED."advertiseURL",
                    "startedAt" = now(), "heartbeatAt" = now(), "leaseExpiresAt" = EXCLUDED."leaseExpiresAt",
                    "lostAt" = NULL, "lostBy" = NULL
                RETURNING epoch
                """, on: connection)
        }
        let epoch = try rows.first?.decode(Int64.self) ?? 0
        self.epoch.withLock { $0 = epoch }
        return epoch
    }

    /// Extends this node's lease by `leaseSeconds` from now and records its load, on `lease` (the node's own
    /// connection), failing after `timeout`. False: the lease was taken by another node (or the node re-registered
    /// elsewhere): this node is fenced.
    public func renewLease(leaseSeconds: Int, load: NodeLoad, on lease: LeaseConnection,
                           within timeout: Duration = .seconds(5)) async throws -> Bool
    {
        guard let nodeID, let epoch = epoch.withLock({ $0 }) else { return false }
        let rows = try await lease.query("""
            UPDATE node SET "leaseExpiresAt" = now() + make_interval(secs => \(leaseSeconds)), "heartbeatAt" = now(),
                viewers = \(load.viewers), "relayedViewers" = \(load.relayedViewers),
                "upstreamStreams" = \(load.upstreamStreams)
            WHERE id = \(nodeID) AND epoch = \(epoch) AND "lostAt" IS NULL RETURNING 1
            """, within: timeout)
        return !rows.isEmpty
    }

    /// Every node, with its lease's state and its open sessions.
    public func nodes() async throws -> [NodeStatus] {
        try await nodeStatuses(id: nil)
    }

    /// The node `id`, if it ever registered.
    public func node(id: String) async throws -> NodeStatus? {
        try await nodeStatuses(id: id).first
    }

    private func nodeStatuses(id: String?) async throws -> [NodeStatus] {
        let active = Self.activeStatuses.map(\.rawValue)
        return try await execute("""
            SELECT row_to_json(n)::text, n."leaseExpiresAt" < now(),
                (SELECT COUNT(*) FROM "session" s WHERE s."nodeID" = n.id AND s.status = ANY(\(active)))
            FROM node n WHERE \(id)::text IS NULL OR n.id = \(id) ORDER BY n.id COLLATE "C"
            """).map { row in
            NodeStatus(node: try RowCoding.decode(NodeRecord.self, from: try row.decode(String.self)),
                       leaseExpired: try row.decode(Bool.self, column: 1), activeSessions: try row.decode(Int.self, column: 2))
        }
    }

    /// Takes over every node whose lease expired, in one transaction per call: each is marked lost (its epoch
    /// raised, so that whatever it still writes is refused), its open sessions are failed with `reason(node)` and
    /// owned here, as are its other sessions (those with runs still open are named) and its pending webhook
    /// deliveries. Of nodes racing to take over the same node, one does (its row is locked and skipped by the
    /// others).
    public func takeOverLostNodes(reason: @Sendable (String) -> String) async throws -> [LostNode] {
        guard let nodeID else { return [] }
        let active = Self.activeStatuses.map(\.rawValue)
        return try await transaction { connection in
            let lost = try await execute("""
                SELECT id FROM node WHERE "leaseExpiresAt" < now() AND "lostAt" IS NULL AND id <> \(nodeID)
                ORDER BY id FOR UPDATE SKIP LOCKED
                """, on: connection).map { try $0.decode(String.self) }
            var taken: [LostNode] = []
            for id in lost {
                try await execute("""
                    UPDATE node SET "lostAt" = now(), "lostBy" = \(nodeID), epoch = epoch + 1 WHERE id = \(id)
                    """, on: connection)
                let failed = try await execute("""
                    UPDATE "session" SET status = 'failed', "failureReason" = \(reason(id)), "completedAt" = now(),
                        "modifiedAt" = now(), "nodeID" = \(nodeID)
                    WHERE "nodeID" = \(id) AND status = ANY(\(active)) RETURNING id
                    """, on: connection).map { try $0.decode(String.self) }
                let openRuns = try await execute("""
                    WITH taken AS (UPDATE "session" SET "nodeID" = \(nodeID) WHERE "nodeID" = \(id) RETURNING id)
                    SELECT DISTINCT "sessionID" FROM run WHERE status = 'running'
                    AND ("sessionID" IN (SELECT id FROM taken) OR "sessionID" = ANY(\(failed))) ORDER BY 1
                    """, on: connection).map { try $0.decode(String.self) }
                try await execute("""
                    UPDATE webhook_delivery SET "nodeID" = \(nodeID) WHERE "nodeID" = \(id) AND status = 'pending'
                    """, on: connection)
                taken.append(LostNode(id: id, failedSessionIDs: failed, openRunSessionIDs: openRuns))
            }
            return taken
        }
    }
}

/// The connection a node renews its lease on: its own, not one of the store's pool, where a renewal could wait for a
/// connection behind the node's other queries. This connection is made again at every renewal that finds none, and
/// dropped after any failure or a renewal that takes too long (a hung server, a cut network).
public final class LeaseConnection: Sendable {
    private let parameters: [(keyword: String, value: String)]
    private let logger: Logger
    private let current = Mutex<Connection?>(nil)

    /// For the database at `url` (as ``PostgresStore/init(url:objectPrefix:nodeID:logger:)`` takes it); nothing
    /// connects until the first query.
    public init(url: String, logger: Logger) throws {
        parameters = try PostgresStore.connectionParameters(url: url)
        self.logger = logger
    }

    /// Runs `query`, connecting first if needed; throws ``StoreFailure/unavailable(_:)`` once `timeout` has passed,
    /// the connection then dropped.
    func query(_ query: SQL, within timeout: Duration) async throws -> [Row] {
        let deadline = Deadline(timeout)
        // Taken out while it queries: one caller at a time.
        let connection: Connection
        if let kept = current.withLock({ $0.take() }) {
            connection = kept
        } else {
            connection = try await Connection.open(parameters, until: deadline)
        }
        do {
            let rows = try await connection.rows(query, until: deadline)
            let spare = current.withLock { current -> Connection? in
                guard current == nil else { return connection }
                current = connection
                return nil
            }
            spare?.close()
            return rows
        } catch {
            connection.close()
            logger.debug("lease connection dropped", metadata: ["error": "\(error)"])
            throw error
        }
    }

    /// Closes the connection, if there is one.
    public func close() async {
        current.withLock { $0.take() }?.close()
    }
}
