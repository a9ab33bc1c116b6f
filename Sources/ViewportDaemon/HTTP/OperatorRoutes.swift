import Foundation
import PostgresStore
import WebSocketIO

/// What operators and their tools read, without credentials: liveness, readiness, metrics, the cluster's nodes
/// and this API's OpenAPI document.
struct OperatorRoutes {
    let sessions: Sessions
    let viewerCounts: @Sendable () -> DaemonMetrics.ViewerCounts
    let metrics: DaemonMetrics
    let cluster: Cluster?

    var routes: [Route] {
        [
            Route("GET", "healthz", .open) { _ in .json(200, encoding: ["status": "ok"]) },
            Route("GET", "readyz", .open) { _ in await readiness() },
            Route("GET", "metrics", .open) { _ in
                HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", headers: [],
                             body: Data(metrics.exposition(sessions: await sessions.statusCounts(),
                                                           viewers: viewerCounts())))
            },
            Route("GET", "v1/openapi.yaml", .open) { _ in Self.openAPIDocument },
            Route("GET", "v1/cluster/nodes", .open) { _ in try await nodes() },
        ]
    }

    /// Every node that registered, by id: its lease, open sessions and viewers (as of its last heartbeat); 404 on
    /// a single host.
    private func nodes() async throws -> HTTPResponse {
        guard let cluster else { throw HTTPFailure(status: 404, detail: "not a cluster: cluster.database_url is not set") }
        return .json(200, encoding: try await cluster.store.nodes().map(NodeView.init))
    }

    /// docs/openapi.yaml, compiled in.
    private static let openAPIDocument = HTTPResponse(status: 200, contentType: "application/yaml", headers: [],
                                                      body: Data(PackageResources.openapi_yaml))

    /// 200 when the listener serves (this answer proves it) and the store takes writes; else 503 saying why.
    private func readiness() async -> HTTPResponse {
        do { try await sessions.checkStoreWritable() } catch {
            return .json(503, encoding: ["status": "not ready", "detail": "the store does not take writes: \(error)"])
        }
        return .json(200, encoding: ["status": "ready"])
    }
}

/// A cluster node as `GET /v1/cluster/nodes` lists it.
struct NodeView: Encodable {
    let nodeID: String
    let advertiseURL: String
    let epoch: Int64
    let startedAt: Date
    let heartbeatAt: Date
    let leaseExpiresAt: Date
    /// `alive`, `expired` (its lease ran out, nobody took it over yet) or `lost` (taken over).
    let status: String
    @Nullable var lostAt: Date?
    @Nullable var lostBy: String?
    let activeSessions: Int
    let viewers: Int
    let relayedViewers: Int
    let upstreamStreams: Int

    init(_ status: NodeStatus) {
        let node = status.node
        (nodeID, advertiseURL, epoch) = (node.id, node.advertiseURL, node.epoch)
        (startedAt, heartbeatAt, leaseExpiresAt) = (node.startedAt, node.heartbeatAt, node.leaseExpiresAt)
        self.status = node.lostAt != nil ? "lost" : status.leaseExpired ? "expired" : "alive"
        (lostAt, lostBy) = (node.lostAt, node.lostBy)
        (activeSessions, viewers) = (status.activeSessions, node.viewers)
        (relayedViewers, upstreamStreams) = (node.relayedViewers, node.upstreamStreams)
    }
}
