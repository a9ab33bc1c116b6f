import CoreMetrics
import Prometheus
import ViewportCore

/// The daemon's metrics: one Prometheus registry per daemon, fed through swift-metrics and served at `/metrics`.
///
/// Counters and histograms are updated where things happen; gauges of state (sessions, viewers) are read when
/// scraped.
final class DaemonMetrics: Sendable {
    private let registry = PrometheusCollectorRegistry()
    /// Frames captured, sent and dropped per consumer kind, capture-to-send latency, encode time, recording bytes.
    let stream: StreamMetrics
    private let webhookDeliveries: CoreMetrics.Counter
    private let webhookFailures: CoreMetrics.Counter
    private let authFailures: [AuthFailure: CoreMetrics.Counter]

    /// What a refused credential was.
    enum AuthFailure: String, CaseIterable { case apiKey = "api_key", viewerToken = "viewer_token", artifactURL = "artifact_url" }

    init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets[StreamMetrics.Name.latency] =
            [1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500].map { .microseconds(Int64($0 * 1000)) }
        factory.durationHistogramBuckets[StreamMetrics.Name.encodeTime] =
            [0.5, 1, 2, 4, 8, 16, 33, 66, 133, 250].map { .microseconds(Int64($0 * 1000)) }
        stream = StreamMetrics(factory: factory)
        webhookDeliveries = CoreMetrics.Counter(label: "viewportd_webhook_deliveries_total", factory: factory)
        webhookFailures = CoreMetrics.Counter(label: "viewportd_webhook_failures_total", factory: factory)
        authFailures = Dictionary(uniqueKeysWithValues: AuthFailure.allCases.map {
            ($0, CoreMetrics.Counter(label: "viewportd_auth_failures_total", dimensions: [("credential", $0.rawValue)],
                         factory: factory))
        })
    }

    /// A webhook was answered with 2xx.
    func webhookDelivered() { webhookDeliveries.increment() }

    /// A webhook attempt failed (it may be retried).
    func webhookFailed() { webhookFailures.increment() }

    /// A request or viewer was refused for a missing, unknown, expired or tampered credential.
    func authFailed(_ kind: AuthFailure) { authFailures[kind]?.increment() }

    /// The viewers and streams a node serves.
    struct ViewerCounts: Sendable {
        /// WebSocket viewers connected here, relayed ones included.
        var viewers: Int
        /// Viewers here of sessions another node owns.
        var relayedViewers: Int
        /// Streams this node holds from sessions' owners (one per session owned elsewhere that is watched here).
        var upstreamStreams: Int
        /// Streams other nodes hold from this node's sessions.
        var upstreamStreamsServed: Int
    }

    /// The Prometheus text exposition, with the state gauges read now.
    func exposition(sessions: [SessionStatus: Int], viewers: ViewerCounts) -> [UInt8] {
        for status in SessionStatus.allCases {
            registry.makeGauge(name: "viewportd_sessions", labels: [("status", status.rawValue)],
                               help: "Browser sessions by status")
                .set(Double(sessions[status] ?? 0))
        }
        registry.makeGauge(name: "viewportd_viewers", help: "Connected WebSocket viewers").set(Double(viewers.viewers))
        registry.makeGauge(name: "viewportd_relayed_viewers", help: "Viewers of sessions another node owns")
            .set(Double(viewers.relayedViewers))
        registry.makeGauge(name: "viewportd_upstream_streams", help: "Streams held from the nodes owning sessions watched here")
            .set(Double(viewers.upstreamStreams))
        registry.makeGauge(name: "viewportd_upstream_streams_served", help: "Streams of this node's sessions held by other nodes")
            .set(Double(viewers.upstreamStreamsServed))
        return registry.emitToBuffer()
    }
}
