import Foundation
import ViewerGateway
import WebSocketIO

/// What operators and their tools read, without credentials: liveness, readiness, metrics and this API's
/// OpenAPI document.
struct OperatorRoutes {
    let sessions: Sessions
    let gateway: ViewerGateway
    let metrics: DaemonMetrics

    var routes: [Route] {
        [
            Route("GET", "healthz", .open) { _ in .json(200, encoding: ["status": "ok"]) },
            Route("GET", "readyz", .open) { _ in await readiness() },
            Route("GET", "metrics", .open) { _ in
                HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", headers: [],
                             body: Data(metrics.exposition(sessions: await sessions.statusCounts(),
                                                           viewers: gateway.viewerCount)))
            },
            Route("GET", "v1/openapi.yaml", .open) { _ in Self.openAPIDocument },
        ]
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
