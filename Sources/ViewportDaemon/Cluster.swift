import Digests
import Foundation
import Logging
import PostgresStore
import ServiceLifecycle
import ViewportCore
import Store

/// This node of a cluster (`cluster.database_url`): its registration, its lease and the takeover of lost nodes.
///
/// At start the node registers with a new epoch (the fencing token of everything it writes). Every third of
/// `cluster.lease_seconds` it renews its lease on a connection of its own (``LeaseConnection``), reporting its
/// viewers, and takes over the nodes whose lease expired: their open sessions become failed and owned here, and
/// ``Runs`` terminates their open runs with recordings rebuilt from the bucket. A node takes others over only once
/// its own lease has been renewed without a gap for a whole lease: after a database outage (or anything else that
/// held this node's renewals up) every node gets that long to renew before anyone is declared lost. A node that
/// finds its own lease taken (it was cut off longer than its lease) writes nothing more and stops the daemon with
/// an error; restarted, it registers anew, owning nothing of what was taken.
final class Cluster: Sendable {
    let store: PostgresStore
    let nodeID: String
    /// Where the other nodes reach this node's API.
    let advertiseURL: String
    let leaseSeconds: Int
    private let lease: LeaseConnection
    private let load: @Sendable () -> NodeLoad
    private let runs: Runs
    private let logger: Logger

    init(store: PostgresStore, config: Config, runs: Runs, logger: Logger, load: @escaping @Sendable () -> NodeLoad)
        throws
    {
        self.store = store
        nodeID = store.nodeID ?? ""
        advertiseURL = config.cluster.advertiseURL ?? config.effectivePublicURL
        leaseSeconds = config.cluster.leaseSeconds
        lease = try LeaseConnection(url: config.cluster.databaseURL ?? "", logger: logger)
        self.runs = runs
        self.load = load
        self.logger = logger
    }

    /// Registers this node; before anything else uses the store.
    func register() async throws {
        let epoch = try await store.register(advertiseURL: advertiseURL, leaseSeconds: leaseSeconds)
        logger.notice("cluster node registered", metadata: [
            "node_id": "\(nodeID)", "epoch": "\(epoch)", "advertise_url": "\(advertiseURL)",
        ])
    }

    /// Renews the lease and takes over lost nodes until shutdown; throws when this node is fenced.
    func run() async throws {
        // Rebuilding a lost node's runs takes as long as their recordings take to download and cut: it runs beside
        // the lease loop, never delaying a renewal.
        let (lostNodes, found) = AsyncStream.makeStream(of: LostNode.self)
        async let recoveries: Void = {
            for await node in lostNodes { await runs.recover(lostSessionIDs: node.openRunSessionIDs) }
        }()
        defer { found.finish() }
        do { try await renewLeases { found.yield($0) } } catch {
            await lease.close()
            throw error
        }
        await lease.close()
        found.finish()
        await recoveries
    }

    private func renewLeases(tookOver: (LostNode) -> Void) async throws {
        let tick = Duration.milliseconds(max(1000, leaseSeconds * 1000 / 3))
        // Since when the lease has been renewed without a gap, and when it was last.
        var renewedSince: ContinuousClock.Instant?
        var renewedAt: ContinuousClock.Instant?
        var failures = 0
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            do {
                guard try await store.renewLease(leaseSeconds: leaseSeconds, load: load(), on: lease, within: tick) else {
                    throw DaemonError("cluster node \(nodeID) lost its lease to another node, which took over its sessions; "
                                      + "it stops (restarted, it rejoins owning none of them)")
                }
                if failures > 0 { logger.notice("cluster database reachable again", metadata: ["failed_renewals": "\(failures)"]) }
                failures = 0
                let now = ContinuousClock.now
                // A renewal that comes late (a database that hung, this process stopped) ends a run of renewals too.
                if let last = renewedAt, last.duration(to: now) > tick * 2 { renewedSince = nil }
                renewedAt = now
                let since = renewedSince ?? now
                renewedSince = since
                if since.duration(to: now) >= .seconds(leaseSeconds) { await takeOverLostNodes().forEach(tookOver) }
            } catch let error as DaemonError {
                throw error
            } catch {
                renewedSince = nil
                failures += 1
                if failures.nonzeroBitCount == 1 {
                    logger.error("cannot renew this node's lease", metadata: ["error": "\(error)", "failures": "\(failures)"])
                }
            }
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: tick) }
        }
    }

    private func takeOverLostNodes() async -> [LostNode] {
        let lost: [LostNode]
        do {
            lost = try await store.takeOverLostNodes { node in
                "the host of viewportd node \(node) was lost (its lease expired)"
            }
        } catch {
            logger.error("cannot take over lost nodes", metadata: ["error": "\(error)"])
            return []
        }
        for node in lost {
            logger.warning("took over a lost node", metadata: [
                "lost_node_id": "\(node.id)", "failed_sessions": "\(node.failedSessionIDs.count)",
            ])
        }
        return lost
    }
}

/// The cluster's lease loop as a service; fenced, it fails, and the group shuts down gracefully with its error.
struct ClusterService: Service {
    let cluster: Cluster
    func run() async throws { try await cluster.run() }
}

/// A session whose owner cannot be reached: answered 503 with `{"detail"}`.
struct OwnerUnavailable: DomainError {
    let detail: String
    var kind: FailureKind { .unavailable }
}

/// Where a session's actions and live streams are served.
enum Placement: Equatable, Sendable {
    /// This node owns the session (or there is no cluster).
    case here
    /// Another live node owns it: its id and the URL its API is reached at.
    case owner(nodeID: String, url: String)
}

extension Cluster {
    /// Where `session` is served: here, or at its owner while that node's lease runs. An owner whose lease expired
    /// or that was lost (the session then failed or is about to) is ``OwnerUnavailable``.
    func placement(of session: SessionRecord) async throws -> Placement {
        guard let owner = session.nodeID, owner != nodeID else { return .here }
        guard let status = try await store.node(id: owner) else {
            throw OwnerUnavailable(detail: "session \(session.id) is owned by viewportd node \(owner), which is unknown")
        }
        guard status.isAlive else {
            throw OwnerUnavailable(detail: "session \(session.id) is owned by viewportd node \(owner), whose lease expired")
        }
        return .owner(nodeID: owner, url: status.node.advertiseURL)
    }
}

/// What one node sends another carries its name, a time and an HMAC of both with the method and path under a key
/// derived from `cluster.secret`: `x-viewportd-node`, `x-viewportd-node-time`, `x-viewportd-node-signature`.
/// Valid for a minute either way (nodes' clocks are close; the database keeps leases).
struct NodeCredential: Sendable {
    static let nodeHeader = "x-viewportd-node"
    static let timeHeader = "x-viewportd-node-time"
    static let signatureHeader = "x-viewportd-node-signature"
    /// The three, for the listener to capture.
    static let headerNames = [nodeHeader, timeHeader, signatureHeader]
    private let key: Data

    init(secret: String) {
        key = Digest.hmacSHA256(key: Data(secret.utf8), Data("viewportd node requests".utf8))
    }

    /// The headers of a request from node `nodeID`.
    func headers(nodeID: String, method: String, path: String, now: Date = Date()) -> [(name: String, value: String)] {
        let time = "\(Int(now.timeIntervalSince1970))"
        return [(Self.nodeHeader, nodeID), (Self.timeHeader, time),
                (Self.signatureHeader, signature(nodeID: nodeID, method: method, path: path, time: time))]
    }

    /// The node a request comes from, when it carries a valid credential; nil otherwise.
    func verify(_ headers: (String) -> String?, method: String, path: String, now: Date = Date()) -> String? {
        guard let node = headers(Self.nodeHeader), let time = headers(Self.timeHeader),
              let presented = headers(Self.signatureHeader), let seconds = Int(time),
              abs(now.timeIntervalSince1970 - Double(seconds)) <= 60,
              Digest.constantTimeEqual(Data(presented.utf8),
                                       Data(signature(nodeID: node, method: method, path: path, time: time).utf8))
        else { return nil }
        return node
    }

    private func signature(nodeID: String, method: String, path: String, time: String) -> String {
        Digest.hmacSHA256(key: key, Data("\(nodeID)\n\(method)\n\(path)\n\(time)".utf8)).base64URLEncoded()
    }
}
