import CDPSource
import RFBSource
import Recorder
import Foundation
import Logging
import Store
import Synchronization
import VNCBridge
import ViewportCore
import WebSocketIO

/// Why a request about a session failed.
enum SessionError: DomainError, Equatable {
    case notFound(id: String)
    case alreadyExists(id: String)
    /// The session has ended (`status` closed or failed).
    case notOpen(id: String, status: SessionStatus)
    case cannotRenew(id: String, status: SessionStatus)
    case tooManySessions(organizationID: String, limit: Int)
    /// `field` names an address that cannot or may not be reached.
    case addressRefused(field: String, reason: String)
    case vncDisabled
    case noFreeVNCPort(id: String)
    case tooManyVNCScreens(organizationID: String, limit: Int)
    /// The store failed doing `what` (the database unavailable, a disk error).
    case storeFailed(what: String, error: String)

    var kind: FailureKind {
        switch self {
        case .notFound: .notFound
        case .alreadyExists, .notOpen, .cannotRenew, .vncDisabled, .noFreeVNCPort: .conflict
        case .tooManySessions, .tooManyVNCScreens: .limited
        case .addressRefused: .invalid
        case .storeFailed: .unavailable
        }
    }

    var detail: String {
        switch self {
        case .notFound(let id): "browser session \(id) not found"
        case .alreadyExists(let id): "browser session \(id) already exists"
        case .notOpen(let id, let status): "browser session \(id) is \(status.rawValue)"
        case .cannotRenew(let id, let status): "browser session \(id) is \(status.rawValue) and cannot be renewed"
        case .tooManySessions(let organization, let limit):
            "organization \(organization) has \(limit) open sessions, the most it may have (config limits.sessions_per_organization)"
        case .addressRefused(let field, let reason): "\(field): \(reason)"
        case .vncDisabled: "VNC is disabled (config vnc.enabled)"
        case .noFreeVNCPort(let id): "browser session \(id) has no VNC screen (no free port in vnc.port_range)"
        case .tooManyVNCScreens(let organization, let limit):
            "organization \(organization) has \(limit) VNC screens, the most it may have (config limits.vnc_screens_per_organization)"
        case .storeFailed(let what, let error): "cannot \(what): \(error)"
        }
    }
}

/// The open sessions: each with its frame hub and its source. The registry is in memory (viewers look sessions
/// up on the service thread and should not wait for SQLite); every change is written to the store, in order.
final class Sessions: Sendable {
    /// One open session. `@unchecked Sendable`: `record` is read and written only under `Sessions.state`'s lock.
    private final class Open: @unchecked Sendable {
        var record: SessionRecord
        let hub: FrameHub
        /// The session's one H.264 encode: its recording's and its H.264 viewers'.
        let encoder: SessionEncoder
        let source: any FrameSource
        /// The session's VNC screen; nil when `vnc.enabled` is off or no port was free.
        let bridge: VNCBridge?
        /// No screen because the organization has `limits.vnc_screens_per_organization` already.
        let vncLimited: Bool
        init(record: SessionRecord, hub: FrameHub, encoder: SessionEncoder, source: any FrameSource, bridge: VNCBridge?,
             vncLimited: Bool) {
            self.record = record
            self.hub = hub
            self.encoder = encoder
            self.source = source
            self.bridge = bridge
            self.vncLimited = vncLimited
        }

        /// Stops capturing and closes the VNC screen (its clients are disconnected, its port freed).
        func stop() {
            source.stop()
            bridge?.close()
        }
    }

    private struct State {
        var open: [String: Open] = [:]
        /// Sessions that just ended, until their final record is in the store.
        var ended: [String: SessionRecord] = [:]
        /// How the last ``maxRememberedEnded`` sessions ended, for late viewers (the service thread never reads
        /// the store): id → (organization, final status).
        var recentlyEnded: [String: (organizationID: String, status: StreamStatus)] = [:]
        var recentlyEndedOrder: [String] = []

        mutating func remember(_ record: SessionRecord) {
            guard recentlyEnded[record.id] == nil else { return }
            recentlyEnded[record.id] = (record.organizationID, record.streamEnd)
            recentlyEndedOrder.append(record.id)
            if recentlyEndedOrder.count > Sessions.maxRememberedEnded {
                recentlyEnded[recentlyEndedOrder.removeFirst()] = nil
            }
        }
    }

    /// Ended sessions whose viewers still get their final status (older ones: 404).
    static let maxRememberedEnded = 10_000

    /// What a viewer of a session id finds.
    enum ViewerLookup {
        /// `packets`: the session's H.264 (nil for a session that ended).
        case found(organizationID: String, hub: FrameHub, packets: EncodedHub?)
        case notFound
    }

    private let state = Mutex(State())
    private let store: any Store
    private let files: ArtifactFiles
    private let loop: EventLoop
    private let config: Config
    private let metrics: StreamMetrics
    private let logger: Logger
    /// Where sessions' browsers may be (SSRF).
    let policy: NetworkPolicy
    /// Wrong VNC passwords are slowed down per address, across sessions.
    private let vncThrottle = VNCAuthThrottle()
    /// Store writes run here one after another; they are queued under the state lock, so they land in the order
    /// the changes happened.
    private let writes = DispatchQueue(label: "viewportd.store-writes")
    static let unavailableRetrySeconds = 120

    /// A session that ended; `done` (when its closer waits) is resumed once whoever reads ``endings`` is done with it.
    struct Ending: Sendable {
        let id: String
        let done: CheckedContinuation<Void, Never>?
    }

    /// Every session that ends, once (closed, timed out or failed), until ``stopAll()``: the session service ends
    /// their runs.
    let endings: AsyncStream<Ending>
    private let ending: AsyncStream<Ending>.Continuation

    init(store: any Store, files: ArtifactFiles, loop: EventLoop, config: Config, metrics: StreamMetrics, logger: Logger) {
        self.store = store
        self.files = files
        self.loop = loop
        self.config = config
        self.metrics = metrics
        self.logger = logger
        policy = NetworkPolicy(config: config)
        (endings, ending) = AsyncStream.makeStream()
    }

    /// Throws `addressRefused` unless `browserAddress` / `vncAddress` are well formed and their hosts may be reached
    /// (resolved now; each connection resolves and checks again and connects to the checked address).
    func checkReachable(browserAddress: String?, vncAddress: String?) async throws(SessionError) {
        if let browserAddress {
            do { try CDPSource.validate(address: browserAddress) } catch {
                throw .addressRefused(field: "browser_address", reason: "\(error)")
            }
        }
        if let vncAddress {
            do { try RFBSource.validate(address: vncAddress) } catch {
                throw .addressRefused(field: "vnc_address", reason: "\(error)")
            }
        }
        if let browserAddress, let endpoint = try? Endpoint(browserAddress) {
            do { _ = try await policy.resolved(endpoint.host, for: .browser) } catch {
                throw .addressRefused(field: "browser_address", reason: "\(error)")
            }
        }
        if let vncAddress, let colon = vncAddress.lastIndex(of: ":") {
            var host = String(vncAddress[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            do { _ = try await policy.resolved(host, for: .browser) } catch {
                throw .addressRefused(field: "vnc_address", reason: "\(error)")
            }
        }
    }

    // MARK: - API

    /// Registers a session and starts attaching to its browser.
    func create(organizationID: String, browserAddress: String, timeoutMinutes: Int, id: String?,
                vncAddress: String? = nil, vncPassword: String? = nil, browserType: String? = nil,
                extensions: [String]? = nil) async throws(SessionError) -> SessionRecord
    {
        let now = Date()
        var draft = SessionRecord(id: id ?? Self.newID(), organizationID: organizationID, status: .created,
                                  createdAt: now, modifiedAt: now, timeoutMinutes: timeoutMinutes,
                                  browserAddress: browserAddress)
        (draft.vncAddress, draft.vncPassword) = (vncAddress, vncPassword)
        (draft.browserType, draft.extensions) = (browserType, extensions)
        if !browserAddress.isEmpty {
            // The browser saves downloads under the session's artifacts (it runs on this host to reach them); the
            // folder is made when the session starts.
            draft.downloadPath = files.url(ArtifactFiles.downloadsDirectory(organizationID: organizationID,
                                                                            sessionID: draft.id)).path
        }
        let record = draft
        let duplicate = SessionError.alreadyExists(id: record.id)
        if try await read("read the session", { try await store.session(id: record.id) }) != nil { throw duplicate }
        let limit = config.limits.sessionsPerOrganization
        let overLimit = SessionError.tooManySessions(organizationID: organizationID, limit: limit)
        guard openCount(organizationID: organizationID) < limit else { throw overLimit }
        let session = makeSession(record)
        // Published and queued for insertion under one lock, so later changes are written after the insert.
        enum Insertion: Sendable { case duplicate, overLimit, stored(Result<Void, any Error>) }
        let insertion: Insertion = await withCheckedContinuation { continuation in
            let refusal = state.withLock { state -> Insertion? in
                guard state.open[record.id] == nil, state.ended[record.id] == nil else { return .duplicate }
                guard state.open.values.count(where: { $0.record.organizationID == organizationID }) < limit else {
                    return .overLimit
                }
                state.open[record.id] = session
                writes.async { [store] in continuation.resume(returning: .stored(Result { try store.insert(record) })) }
                return nil
            }
            if let refusal { continuation.resume(returning: refusal) }
        }
        switch insertion {
        case .duplicate:
            session.stop()
            throw duplicate
        case .overLimit:
            session.stop()
            throw overLimit
        case .stored(.failure(let error)):
            state.withLock { $0.open[record.id] = nil }
            session.stop()
            if case StoreFailure.duplicateSession = error { throw duplicate }
            logger.error("cannot store session", metadata: ["browser_session_id": "\(record.id)", "error": "\(error)"])
            throw .storeFailed(what: "store the session", error: "\(error)")
        case .stored(.success):
            break
        }
        // A close that came in meanwhile wins: its session is no longer open and is not started.
        if state.withLock({ $0.open[record.id] === session }) { start(session) }
        logger.info("session created", metadata: ["browser_session_id": "\(record.id)", "organization_id": "\(organizationID)"])
        return record
    }

    /// The session if it exists and belongs to `organizationID`.
    func session(id: String, organizationID: String) async throws(SessionError) -> SessionRecord {
        guard let record = try await lookup(id), record.organizationID == organizationID else { throw .notFound(id: id) }
        return record
    }

    private func lookup(_ id: String) async throws(SessionError) -> SessionRecord? {
        if let record = state.withLock({ $0.open[id]?.record ?? $0.ended[id] }) { return record }
        return try await read("read the session") { try await store.session(id: id) }
    }

    /// What `query` reads from the store; its failure (the database unavailable) is ``SessionError/storeFailed(what:error:)``
    /// rather than an answer made without it.
    private func read<T>(_ what: String, _ query: () async throws -> T) async throws(SessionError) -> T {
        do { return try await query() } catch { throw .storeFailed(what: what, error: "\(error)") }
    }

    /// The session if it is open and belongs to `organizationID`.
    func openSession(id: String, organizationID: String) async throws(SessionError) -> SessionRecord {
        let record = try await session(id: id, organizationID: organizationID)
        guard record.status.isActive else { throw .notOpen(id: id, status: record.status) }
        return record
    }

    /// The VNC screen of an open session of `organizationID`.
    func screen(id: String, organizationID: String) async throws(SessionError) -> VNCBridge {
        let record = try await openSession(id: id, organizationID: organizationID)
        let (bridge, limited) = state.withLock { ($0.open[id]?.bridge, $0.open[id]?.vncLimited ?? false) }
        if let bridge { return bridge }
        if limited {
            throw .tooManyVNCScreens(organizationID: record.organizationID, limit: config.limits.vncScreensPerOrganization)
        }
        throw config.vnc.enabled ? .noFreeVNCPort(id: id) : .vncDisabled
    }

    /// Sessions in the store by status (for the metrics).
    func statusCounts() async -> [SessionStatus: Int] { (try? await store.sessionCounts()) ?? [:] }

    /// Throws unless the store takes writes now (readiness).
    func checkStoreWritable() async throws { try await store.checkWritable() }

    /// Number of open sessions of `organizationID`.
    func openCount(organizationID: String) -> Int {
        state.withLock { $0.open.values.count { $0.record.organizationID == organizationID } }
    }

    /// Open sessions of `organizationID`, newest first: those open here as they are now, and (in a cluster) those
    /// other nodes hold, as the store has them.
    func active(organizationID: String) async throws(SessionError) -> [SessionRecord] {
        let stored = try await read("list the sessions") {
            try await store.sessions(organizationID: organizationID, activeOnly: true)
        }
        return state.withLock { state in
            state.open.values.map(\.record).filter { $0.organizationID == organizationID }
                + stored.filter { state.open[$0.id] == nil && state.ended[$0.id] == nil }
        }.sorted { $0.createdAt > $1.createdAt }
    }

    /// Closes a session (viewers are told) and returns once its runs are terminated; closing a closed session
    /// returns it unchanged.
    func close(id: String, organizationID: String) async throws(SessionError) -> SessionRecord {
        let record = try await session(id: id, organizationID: organizationID)
        guard record.status.isActive else { return record }
        var ended: SessionRecord?
        await withCheckedContinuation { done in ended = finish(id, .closed, reason: nil, done: done) }
        let closed = if let ended { ended } else { try await lookup(id) ?? record }
        await flushWrites()
        return closed
    }

    /// Restarts an open session's timeout from now, with `timeoutMinutes` (nil: its own); `cannotRenew` once it has
    /// ended.
    func renew(id: String, organizationID: String, timeoutMinutes: Int?) async throws(SessionError) -> SessionRecord {
        _ = try await session(id: id, organizationID: organizationID)
        let renewed: SessionRecord? = state.withLock { state in
            guard let session = state.open[id] else { return nil }
            let now = Date()
            session.record.renewedAt = now
            session.record.timeoutMinutes = timeoutMinutes ?? session.record.timeoutMinutes
            session.record.modifiedAt = now
            save(session.record)
            return session.record
        }
        guard let renewed else {
            throw .cannotRenew(id: id, status: try await lookup(id)?.status ?? .closed)
        }
        await flushWrites()
        logger.info("session renewed", metadata: ["browser_session_id": "\(id)", "timeout_minutes": "\(renewed.timeoutMinutes)"])
        return renewed
    }

    /// The organization and hub a viewer of `id` reads. A session that has ended (one of the last
    /// ``maxRememberedEnded``) gets a hub that says so. Runs on the service thread: memory only, no store read.
    func hubForViewer(id: String) -> ViewerLookup {
        let (open, ended) = state.withLock { state in
            (state.open[id].map { ($0.record.organizationID, $0.hub, $0.encoder.packets) }, state.recentlyEnded[id])
        }
        if let (organization, hub, packets) = open { return .found(organizationID: organization, hub: hub, packets: packets) }
        guard let (organization, status) = ended else { return .notFound }
        let hub = FrameHub()
        hub.setStatus(status)
        return .found(organizationID: organization, hub: hub, packets: nil)
    }

    /// The encoder of an open session.
    func encoder(id: String) -> SessionEncoder? { state.withLock { $0.open[id]?.encoder } }

    /// The hub of an open session (benchmarks and tests publish into it or inspect it).
    func hub(id: String) -> FrameHub? { state.withLock { $0.open[id]?.hub } }

    /// Where an open session's input goes (its source).
    func inputTarget(id: String) -> (any InputTarget)? { state.withLock { $0.open[id]?.source } }

    /// The VNC screen of an open session.
    func vncBridge(id: String) -> VNCBridge? { state.withLock { $0.open[id]?.bridge } }

    /// Ids of the sessions open now.
    var openIDs: Set<String> { state.withLock { Set($0.open.keys) } }

    // MARK: - Lifecycle

    /// Re-attaches every session left open by the previous run. Called before the listener serves, so a viewer
    /// never finds an open session missing.
    func reattach() async throws {
        let ended = try await store.recentlyEndedSessions(limit: Self.maxRememberedEnded)
        state.withLock { state in for record in ended.reversed() { state.remember(record) } }
        for record in try await store.activeSessions() {
            let session = makeSession(record)
            state.withLock { $0.open[record.id] = session }
            start(session)
            logger.info("re-attaching session", metadata: ["browser_session_id": "\(record.id)"])
        }
    }

    /// Starts capturing, with the folder the browser saves downloads into.
    private func start(_ session: Open) {
        let (id, downloads) = state.withLock { _ in (session.record.id, session.record.downloadPath) }
        if let downloads {
            do { try FileManager.default.createDirectory(atPath: downloads, withIntermediateDirectories: true) } catch {
                logger.warning("no folder for the browser's downloads",
                               metadata: ["browser_session_id": "\(id)", "error": "\(error)"])
            }
        }
        session.source.start()
    }

    /// Closes sessions whose timeout has passed.
    func closeExpired(now: Date = Date()) {
        let expired = state.withLock { $0.open.values.filter { $0.record.expiresAt <= now }.map(\.record.id) }
        for id in expired {
            logger.info("session timed out", metadata: ["browser_session_id": "\(id)"])
            finish(id, .closed, reason: nil)
        }
    }

    /// Stops every source, leaving the sessions open in the store so the next start re-attaches them, and ends
    /// ``endings``.
    func stopAll() async {
        for session in state.withLock({ Array($0.open.values) }) { session.stop() }
        ending.finish()
        await flushWrites()
    }

    private func makeSession(_ record: SessionRecord) -> Open {
        let id = record.id
        let hub = FrameHub(metrics: metrics)
        let changed: @Sendable (SourceState) -> Void = { [weak self] state in self?.sourceChanged(id: id, state) }
        let source: any FrameSource
        if record.browserAddress.isEmpty, let vncAddress = record.vncAddress {
            // Only a VNC server: frames and input go through RFB.
            var options = RFBSource.Options()
            options.maxFPS = config.vnc.sourceMaxFPS
            options.quality = config.screencast.quality
            options.retryWindow = Double(config.cdp.retrySeconds)
            options.maxWidth = config.vnc.sourceMaxWidth
            options.maxHeight = config.vnc.sourceMaxHeight
            options.timeout = config.vnc.sourceTimeoutSeconds
            options.resolveHost = { [policy] host in try policy.resolve(host, for: .browser) }
            source = RFBSource(address: vncAddress, password: record.vncPassword, hub: hub, options: options,
                               logger: logger.with(sessionID: id), onStateChange: changed)
        } else {
            var options = CDPSource.Options()
            options.quality = config.screencast.quality
            options.maxWidth = config.screencast.maxWidth
            options.maxHeight = config.screencast.maxHeight
            options.retryWindow = Double(config.cdp.retrySeconds)
            options.maxMessageBytes = config.cdp.maxMessageMB << 20
            options.timeout = Double(config.cdp.timeoutSeconds)
            options.resolveHost = { [policy] host in try await policy.resolved(host, for: .browser) }
            options.downloadPath = record.downloadPath
            options.onDownload = { [weak self] download in self?.downloaded(download, by: record) }
            source = CDPSource(address: record.browserAddress, hub: hub, loop: loop, options: options,
                               logger: logger.with(sessionID: id), onStateChange: changed)
        }
        var bridge: VNCBridge?
        let screens = state.withLock { state in
            state.open.values.count { $0.record.organizationID == record.organizationID && $0.bridge != nil }
        }
        let vncLimited = config.vnc.enabled && screens >= config.limits.vncScreensPerOrganization
        if config.vnc.enabled, !vncLimited {
            var vnc = VNCBridge.Options()
            vnc.host = config.vnc.listen
            vnc.ports = config.vnc.portRange
            vnc.handshakeTimeout = Double(config.vnc.handshakeTimeoutSeconds)
            vnc.maxUnauthenticatedPerAddress = config.limits.unauthenticatedPerAddress
            do {
                bridge = try VNCBridge(hub: hub, options: vnc, throttle: vncThrottle, input: source, name: "viewportd \(id)",
                                       logger: logger.with(sessionID: id))
            } catch {
                logger.warning("session has no VNC screen", metadata: ["browser_session_id": "\(id)", "error": "\(error)"])
            }
        }
        let encoder = SessionEncoder(hub: hub, packets: EncodedHub(metrics: metrics), settings: config.encoderSettings,
                                     viewersAlone: config.viewer.h264WithoutRecording, logger: logger.with(sessionID: id))
        return Open(record: record, hub: hub, encoder: encoder, source: source, bridge: bridge, vncLimited: vncLimited)
    }

    /// Lists a file the session's browser downloaded among the session's files. Called on the service thread:
    /// the file is hashed off the pool, then stored.
    private func downloaded(_ download: CDPDownload, by session: SessionRecord) {
        let relative = ArtifactFiles.downloadsDirectory(organizationID: session.organizationID, sessionID: session.id)
            + "/" + download.guid
        Task { [store, files, logger] in
            do {
                let (size, checksum) = try await offThread { try files.measure(relative) }
                let now = Date()
                try await store.insert(ArtifactRecord(
                    id: ArtifactFiles.newID(), kind: .download, runID: nil, sessionID: session.id,
                    organizationID: session.organizationID, step: nil, path: relative,
                    filename: download.suggestedFilename, fileSize: size, checksum: checksum,
                    contentType: "application/octet-stream", createdAt: now, modifiedAt: now))
                logger.info("download saved", metadata: ["browser_session_id": "\(session.id)", "bytes": "\(size)"])
            } catch {
                logger.warning("download not saved", metadata: ["browser_session_id": "\(session.id)", "error": "\(error)"])
            }
        }
    }

    private func sourceChanged(id: String, _ change: SourceState) {
        switch change {
        case .connecting:
            break
        case .connected:
            let hub: FrameHub? = state.withLock { state in
                guard let session = state.open[id] else { return nil }
                let now = Date()
                session.record.status = .running
                session.record.startedAt = session.record.startedAt ?? now
                session.record.modifiedAt = now
                save(session.record)
                return session.hub
            }
            hub?.setStatus(.live)
        case .reconnecting:
            state.withLock { $0.open[id]?.hub }?.setStatus(.reconnecting)
        case .failed(let reason):
            logger.warning("session failed", metadata: ["browser_session_id": "\(id)", "reason": "\(reason)"])
            finish(id, .failed, reason: reason)
        }
    }

    /// Ends an open session: records the final status, tells its viewers, stops its source, and announces it on
    /// ``endings`` (with `done`, resumed at once when the session was not open or nobody reads any more).
    @discardableResult
    private func finish(_ id: String, _ status: SessionStatus, reason: String?,
                        done: CheckedContinuation<Void, Never>? = nil) -> SessionRecord? {
        let ended: (session: Open, record: SessionRecord)? = state.withLock { state in
            guard let session = state.open.removeValue(forKey: id) else { return nil }
            let now = Date()
            session.record.status = status
            session.record.completedAt = now
            session.record.modifiedAt = now
            session.record.failureReason = reason
            state.ended[id] = session.record
            state.remember(session.record)
            save(session.record)
            return (session, session.record)
        }
        guard let ended else {
            done?.resume()
            return nil
        }
        ended.session.hub.setStatus(status == .failed ? .failed(reason: reason ?? "failed") : .closed)
        ended.session.stop()
        if case .terminated = ending.yield(Ending(id: id, done: done)) { done?.resume() }
        return ended.record
    }

    // MARK: - Store

    /// Queues a write of `record`; call under the state lock. Once written, an ended record leaves memory.
    /// While the database is unavailable (a cluster's PostgreSQL restarting) the write is retried every second for
    /// up to `unavailableRetrySeconds`, holding the writes behind it so that they still land in order.
    private func save(_ record: SessionRecord) {
        writes.async { [self] in
            let deadline = Date().addingTimeInterval(Double(Self.unavailableRetrySeconds))
            var retried = false
            while true {
                do {
                    try store.update(record)
                } catch StoreFailure.unavailable(let reason) where Date() < deadline {
                    if !retried {
                        logger.warning("session not stored yet: the database is unavailable; retrying", metadata: [
                            "browser_session_id": "\(record.id)", "error": "\(reason)",
                        ])
                    }
                    retried = true
                    Thread.sleep(forTimeInterval: 1)
                    continue
                } catch {
                    logger.error("cannot store session", metadata: ["browser_session_id": "\(record.id)", "error": "\(error)"])
                }
                break
            }
            if !record.status.isActive { state.withLock { _ = $0.ended.removeValue(forKey: record.id) } }
        }
    }

    private func flushWrites() async {
        await withCheckedContinuation { continuation in writes.async { continuation.resume() } }
    }

    private static func newID() -> String { "pbs_\(UInt64.random(in: 100_000_000_000_000_000...999_999_999_999_999_999))" }
}

extension Logger {
    func with(sessionID: String) -> Logger {
        var logger = self
        logger[metadataKey: "browser_session_id"] = "\(sessionID)"
        return logger
    }
}
