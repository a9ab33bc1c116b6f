import Foundation
public import Logging
import PostgresStore
import ServiceLifecycle
import Store
import Synchronization
public import UnixSignals
import ViewerGateway
public import ViewportCore
import WebSocketIO

/// The whole daemon, built from a config: one event loop, the store, the sessions, the viewer gateway and the
/// API. ``run(signals:)`` runs its services in one `ServiceGroup` until SIGTERM/SIGINT or ``shutdown()``; SIGHUP
/// reloads API keys and webhook secrets when the daemon was built with a way to re-read its config.
public final class Daemon: Sendable {
    public let config: Config
    /// The port the API listens on (the kernel's pick when `listen` says port 0).
    public let port: Int
    let loop: EventLoop
    let sessions: Sessions
    let runs: Runs
    let store: any Store
    let files: ArtifactFiles
    let webhooks: Webhooks
    let gateway: ViewerGateway
    let auth: Auth
    let metrics: DaemonMetrics
    let retention: Retention
    /// The bucket of `artifacts.store: s3`, and the uploads into it.
    let bucket: Bucket?
    let uploads: Uploads?
    /// This node of a cluster (`cluster.database_url`); nil on a single host.
    let cluster: Cluster?
    /// Viewers of sessions other nodes own (with `cluster`).
    let relay: ViewerRelay?
    /// The config as loaded (before defaults filled in), to tell what a reload changed.
    private let loadedConfig: Config
    private let reloadConfig: (@Sendable () throws -> Config)?
    private let logger: Logger
    private let group = Mutex<ServiceGroup?>(nil)
    private let shutdownRequested = Atomic(false)

    init(config: Config, logger: Logger, reloadConfig: (@Sendable () throws -> Config)?) throws {
        loadedConfig = config
        self.reloadConfig = reloadConfig
        // A file that reaches RLIMIT_FSIZE must fail its write (the recorder then stops cleanly and says why),
        // not kill the daemon with every session on the host.
        signal(SIGXFSZ, SIG_IGN)
        var config = config
        self.logger = logger
        do { try config.cluster.complete(hostName: ProcessInfo.processInfo.hostName) } catch {
            throw DaemonError("\(error)")
        }
        do {
            try FileManager.default.createDirectory(atPath: config.stateDir, withIntermediateDirectories: true)
        } catch {
            throw DaemonError("cannot create state_dir \(config.stateDir): \(error.localizedDescription)")
        }
        let bucket = Bucket(config: config)
        self.bucket = bucket
        let store = try openStore(config, objectPrefix: bucket.map { _ in config.s3.prefix }, logger: logger)
        auth = Auth(apiKeys: config.apiKeys, tokenSecret: try Auth.tokenSecret(config: config))
        let metrics = DaemonMetrics()
        self.metrics = metrics
        do {
            var options = EventLoop.Configuration(host: config.listen.host, port: config.listen.port,
                                                  customHeaders: ["x-api-key"] + NodeCredential.headerNames,
                                                  maxPendingPerAddress: config.limits.unauthenticatedPerAddress)
            let refusalLog = RateLimit(every: 1)
            options.onRefusedConnection = { [logger] address in
                metrics.stream.peerLimited(.httpUnauthenticated)
                guard refusalLog.allows() else { return }
                logger.warning("connection refused: too many pending connections from its address (limits.unauthenticated_per_address)",
                               metadata: ["address": "\(address)"])
            }
            loop = try EventLoop(options)
        } catch {
            throw DaemonError("\(error)")
        }
        port = loop.port ?? config.listen.port
        if config.publicURL == nil {
            let host = config.listen.host == "0.0.0.0" ? ProcessInfo.processInfo.hostName : config.listen.host
            config.publicURL = "http://\(host):\(port)"
        }
        self.config = config
        do { files = try ArtifactFiles(stateDir: config.stateDir) } catch {
            throw DaemonError("cannot create the artifacts directory in \(config.stateDir): \(error.localizedDescription)")
        }
        self.store = store
        sessions = Sessions(store: store, files: files, loop: loop, config: config, metrics: metrics.stream, logger: logger)
        webhooks = Webhooks(store: store, loop: loop, config: config, metrics: metrics, logger: logger)
        retention = Retention(store: store, files: files, bucket: bucket, config: config, logger: logger)
        let gateway = ViewerGateway(loop: loop, logger: logger, maxPendingBytes: config.viewer.maxPendingKB << 10,
                                    metrics: metrics.stream, evaluateTimeout: config.viewer.evaluateTimeoutSeconds,
                                    maxEvaluateResultBytes: config.viewer.evaluateMaxResultKB << 10)
        self.gateway = gateway
        let runs = Runs(store: store, sessions: sessions, files: files, auth: auth, webhooks: webhooks, config: config,
                        bucket: bucket, gateway: gateway, logger: logger)
        self.runs = runs
        uploads = bucket.map { [files, logger] bucket in
            Uploads(store: store, files: files, bucket: bucket, logger: logger,
                    settled: { await runs.uploadSettled(artifactID: $0) })
        }
        let relayCounts = RelayCounts()
        let cluster: Cluster?
        do {
            cluster = try (store as? PostgresStore).map { store in
                try Cluster(store: store, config: config, runs: runs, logger: logger) {
                    NodeLoad(viewers: gateway.viewerCount,
                             relayedViewers: relayCounts.relayedViewers.load(ordering: .relaxed),
                             upstreamStreams: relayCounts.upstreamStreams.load(ordering: .relaxed))
                }
            }
        } catch {
            throw DaemonError("cannot use cluster.database_url: \(error)")
        }
        self.cluster = cluster
        if let cluster {
            relay = ViewerRelay(cluster: cluster, gateway: gateway, auth: auth, config: config, loop: loop,
                                counts: relayCounts, metrics: metrics.stream, logger: logger)
        } else {
            relay = nil
        }
    }

    /// The viewers and streams this node serves, for `/metrics`.
    var viewerCounts: DaemonMetrics.ViewerCounts {
        DaemonMetrics.ViewerCounts(
            viewers: gateway.viewerCount, relayedViewers: relay?.counts.relayedViewers.load(ordering: .relaxed) ?? 0,
            upstreamStreams: relay?.counts.upstreamStreams.load(ordering: .relaxed) ?? 0,
            upstreamStreamsServed: gateway.count(.upstream))
    }

    /// Runs until a graceful shutdown: SIGTERM or SIGINT (when in `signals`) or ``shutdown()``.
    public func run(signals: [UnixSignal] = [.sigterm, .sigint]) async throws {
        let forwarding = cluster.map { cluster in
            Forwarding(cluster: cluster, credential: NodeCredential(secret: config.cluster.secret ?? ""), loop: loop,
                       spoolDirectory: config.stateDir)
        }
        let viewers = ViewerRoutes(sessions: sessions, gateway: gateway, relay: relay, forwarding: forwarding, auth: auth,
                                   config: config, loop: loop, logger: logger)
        let routes = OperatorRoutes(sessions: sessions, viewerCounts: { [self] in viewerCounts }, metrics: metrics,
                                    cluster: cluster).routes
            + SessionRoutes(sessions: sessions, runs: runs, auth: auth, config: config, forwarding: forwarding).routes
            + RunRoutes(runs: runs, auth: auth, config: config).routes
            + ArtifactRoutes(runs: runs, files: files, auth: auth).routes
            + viewers.routes
        let api = Router(routes: routes, viewers: viewers, auth: auth, metrics: metrics, forwarding: forwarding)
        // Started in this order, shut down in reverse: systemd hears STOPPING=1, viewers are told, runs are
        // finalized and sources stop, webhooks still due are left in the store, then the loop stops.
        var services: [any Service] = [
            LoopService(loop: loop, api: api, logger: logger, address: "\(config.listen.host):\(port)"),
        ]
        if let cluster { services.append(ClusterService(cluster: cluster)) }
        services.append(WebhookService(webhooks: webhooks))
        if let uploads { services.append(UploadService(uploads: uploads)) }
        services += [
            RetentionService(retention: retention, interval: .seconds(config.retention.sweepIntervalSeconds)),
            SessionService(sessions: sessions, runs: runs),
            ViewerService(gateway: gateway, relay: relay),
        ]
        if reloadConfig != nil { services.append(ReloadService(daemon: self)) }
        services.append(SystemdService(loop: loop, logger: logger))
        // The store's connections (PostgreSQL's pool) outlive every service.
        try await store.run { [services, cluster] in
            try await cluster?.register()  // before anything else is written: it fences this node's writes
            await runs.recover()  // runs a crash left open: terminated, with their recordings published
            await runs.releaseHeldWebhooks()  // runs whose last upload finished just before a stop
            try await sessions.reattach()  // before the listener serves, so no viewer finds an open session missing
            // A service that fails (a fenced cluster node) stops the others gracefully, and the daemon with its error.
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: services.map { .init(service: $0, failureTerminationBehavior: .gracefullyShutdownGroup) },
                gracefulShutdownSignals: signals, logger: logger))
            self.group.withLock { $0 = group }
            if shutdownRequested.load(ordering: .acquiring) { await group.triggerGracefulShutdown() }
            try await group.run()
        }
    }

    /// Starts a graceful shutdown: viewers get close 1001, sources stop, sessions stay open for the next start.
    public func shutdown() async {
        shutdownRequested.store(true, ordering: .releasing)
        await group.withLock { $0 }?.triggerGracefulShutdown()
    }

    /// Re-reads the config and applies what can change while running: `api_keys` and `webhooks.secrets`. Viewers,
    /// sessions and recordings are untouched; a config that does not load changes nothing.
    func reload() {
        guard let reloadConfig else { return }
        ServiceManager.notify("RELOADING=1\n" + ServiceManager.monotonicNow)
        defer { ServiceManager.notify("READY=1\nSTATUS=serving") }
        let fresh: Config
        do { fresh = try reloadConfig() } catch {
            logger.error("reload failed, the running configuration stays", metadata: ["error": "\(error)"])
            return
        }
        auth.setAPIKeys(fresh.apiKeys)
        webhooks.setSecrets(fresh.webhooks.secrets)
        logger.notice("configuration reloaded", metadata: [
            "api_keys": "\(fresh.apiKeys.count)", "webhook_secrets": "\(fresh.webhooks.secrets.count)",
        ])
        let needRestart = loadedConfig.changedKeys(to: fresh).filter { !Config.reloadableKeys.contains($0) }
        if !needRestart.isEmpty {
            logger.warning("changed keys take effect at the next start", metadata: ["keys": "\(needRestart.joined(separator: ","))"])
        }
    }

    /// Registers a session for `organizationID` (as `POST /v1/browser_sessions` does) and returns its id.
    public func createSession(organizationID: String, browserAddress: String, timeoutMinutes: Int = 60) async throws
        -> String
    {
        try await sessions.create(organizationID: organizationID, browserAddress: browserAddress,
                                  timeoutMinutes: timeoutMinutes, id: nil).id
    }

    /// A watch-page URL for `sessionID` with a viewer token valid for `seconds`.
    public func watchURL(sessionID: String, validFor seconds: Double) -> String {
        let token = auth.viewerToken(sessionID: sessionID, expiresAt: Date().addingTimeInterval(seconds))
        return "\(config.effectivePublicURL)/watch/\(sessionID)?token=\(token)"
    }

    /// The frame hub of an open session.
    public func hub(sessionID: String) -> FrameHub? { sessions.hub(id: sessionID) }

    /// Queue statistics of the viewers of `sessionID`.
    public func viewerStats(sessionID: String) -> [FrameSubscription.Stats] { gateway.viewerStats(sessionID: sessionID) }
}

/// Builds the daemon for `config`: opens the store, binds the listener. Nothing runs until ``Daemon/run(signals:)``.
/// With `reloadConfig` (how to read the config again), SIGHUP applies the new API keys and webhook secrets.
public func buildDaemon(_ config: Config, logger: Logger = Logger(label: "viewportd"),
                        reloadConfig: (@Sendable () throws -> Config)? = nil) throws -> Daemon {
    try Daemon(config: config, logger: logger, reloadConfig: reloadConfig)
}

/// The store `config` names: PostgreSQL at `cluster.database_url`, else SQLite in the state directory.
func openStore(_ config: Config, objectPrefix: String?, logger: Logger) throws -> any Store {
    if let url = config.cluster.databaseURL {
        do { return try PostgresStore(url: url, objectPrefix: objectPrefix, nodeID: config.cluster.nodeID, logger: logger) } catch {
            throw DaemonError("cannot use cluster.database_url: \(error)")
        }
    }
    do { return try SQLiteStore(path: config.stateDir + "/viewportd.sqlite", objectPrefix: objectPrefix) } catch {
        throw DaemonError("cannot open the database in \(config.stateDir): \(error)")
    }
}

/// The service thread: serves from start until the group shuts down, then closes every connection.
private struct LoopService: Service {
    let loop: EventLoop
    let api: Router
    let logger: Logger
    let address: String

    func run() async throws {
        loop.start(server: api)
        logger.info("listening", metadata: ["address": "\(address)"])
        try? await gracefulShutdown()
        loop.shutdown()
    }
}

/// Enforces session timeouts, terminates the runs of sessions that end and retires recordings no run holds; on
/// shutdown finalizes open runs' recordings, then stops sources, waiting for the last runs and recordings.
private struct SessionService: Service {
    let sessions: Sessions
    let runs: Runs

    func run() async throws {
        async let endings: Void = endRuns()
        async let retirements: Void = runs.retireRecordings()
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
            sessions.closeExpired()
        }
        await runs.terminateAll(reason: "viewportd shut down; the recording ends there")
        await sessions.stopAll()
        await endings
        runs.stopRetiring()
        await retirements
    }

    private func endRuns() async {
        for await ending in sessions.endings {
            await runs.sessionEnded(ending.id)
            ending.done?.resume()
        }
    }
}

/// Reloads on SIGHUP until shutdown.
private struct ReloadService: Service {
    let daemon: Daemon

    func run() async throws {
        let hangups = await UnixSignalsSequence(trapping: .sighup)
        try? await cancelWhenGracefulShutdown {
            for await _ in hangups { daemon.reload() }
        }
    }
}

/// Tells viewers the daemon is going away (close 1001) before anything else stops, then closes the streams
/// relayed from other nodes.
private struct ViewerService: Service {
    let gateway: ViewerGateway
    let relay: ViewerRelay?

    func run() async throws {
        try? await gracefulShutdown()
        await gateway.closeAll()
        relay?.stop()
    }
}
