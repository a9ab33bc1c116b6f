import CDPSource
import Foundation
import Logging
import Store
import Synchronization
import ViewportCore
import WebSocketIO

/// An API failure: the HTTP status and the `detail` the client sees.
struct APIError: Error, Equatable {
    var status: Int
    var detail: String
    init(_ status: Int, _ detail: String) {
        self.status = status
        self.detail = detail
    }
}

/// The open sessions: each with its frame hub and its source. The registry is in memory (viewers look sessions
/// up on the service thread and must not wait for SQLite); every change is written to the store, in order.
final class Sessions: Sendable {
    /// State of one open session. `@unchecked Sendable`: mutated only under `Sessions.open`'s lock.
    private final class Open: @unchecked Sendable {
        var record: SessionRecord
        let hub = FrameHub()
        var source: CDPSource?
        init(_ record: SessionRecord) { self.record = record }
    }

    private let open = Mutex<[String: Open]>([:])
    private let store: Store
    private let loop: EventLoop
    private let config: Config
    private let logger: Logger
    /// Store writes run here one after another, so they land in the order the changes happened.
    private let writes = DispatchQueue(label: "viewportd.store-writes")

    init(store: Store, loop: EventLoop, config: Config, logger: Logger) {
        self.store = store
        self.loop = loop
        self.config = config
        self.logger = logger
    }

    // MARK: - API

    /// Registers a session and starts attaching to its browser.
    func create(organizationID: String, browserAddress: String, timeoutMinutes: Int, id: String?) async throws(APIError)
        -> SessionRecord
    {
        let now = Date()
        let record = SessionRecord(id: id ?? Self.newID(), organizationID: organizationID, status: .created,
                                   createdAt: now, modifiedAt: now, timeoutMinutes: timeoutMinutes,
                                   browserAddress: browserAddress)
        do {
            try await persisted { try self.store.insert(record) }
        } catch Store.Failure.duplicateSession(let id) {
            throw APIError(409, "browser session \(id) already exists")
        } catch {
            logger.error("cannot store session", metadata: ["browser_session_id": "\(record.id)", "error": "\(error)"])
            throw APIError(503, "cannot store the session: \(error)")
        }
        let session = Open(record)
        open.withLock { $0[record.id] = session }
        start(session)
        logger.info("session created", metadata: ["browser_session_id": "\(record.id)", "organization_id": "\(organizationID)"])
        return record
    }

    /// The session if it exists and belongs to `organizationID`.
    func session(id: String, organizationID: String) throws(APIError) -> SessionRecord {
        let record = open.withLock { $0[id]?.record } ?? (try? store.session(id: id)) ?? nil
        guard let record, record.organizationID == organizationID else {
            throw APIError(404, "browser session \(id) not found")
        }
        return record
    }

    /// Open sessions of `organizationID`, newest first.
    func active(organizationID: String) -> [SessionRecord] {
        open.withLock { $0.values.map(\.record) }.filter { $0.organizationID == organizationID }
            .sorted { $0.createdAt > $1.createdAt }
    }

    /// Closes a session (viewers are told); closing a closed session returns it unchanged.
    func close(id: String, organizationID: String) async throws(APIError) -> SessionRecord {
        let record = try session(id: id, organizationID: organizationID)
        guard record.status.isActive else { return record }
        let closed = finish(id, .closed, reason: nil) ?? record
        await flushWrites()
        return closed
    }

    /// The organization and hub a viewer of `id` reads. A session that has ended gets a hub that says so.
    func hubForViewer(id: String) -> (organizationID: String, hub: FrameHub)? {
        if let session = open.withLock({ $0[id] }) { return (session.record.organizationID, session.hub) }
        guard let record = try? store.session(id: id) else { return nil }
        let hub = FrameHub()
        hub.setStatus(record.status == .failed ? .failed(reason: record.failureReason ?? "failed") : .closed)
        return (record.organizationID, hub)
    }

    /// The hub of an open session (benchmarks and tests publish into it or inspect it).
    func hub(id: String) -> FrameHub? { open.withLock { $0[id]?.hub } }

    // MARK: - Lifecycle

    /// Re-attaches every session left open by the previous run.
    func reattach() throws {
        for record in try store.activeSessions() {
            let session = Open(record)
            open.withLock { $0[record.id] = session }
            start(session)
            logger.info("re-attaching session", metadata: ["browser_session_id": "\(record.id)"])
        }
    }

    /// Closes sessions whose timeout has passed.
    func closeExpired(now: Date = Date()) {
        let expired = open.withLock { $0.values.filter { $0.record.expiresAt <= now }.map(\.record.id) }
        for id in expired {
            logger.info("session timed out", metadata: ["browser_session_id": "\(id)"])
            finish(id, .closed, reason: nil)
        }
    }

    /// Stops every source, leaving the sessions open in the store so the next start re-attaches them.
    func stopAll() async {
        for session in open.withLock({ Array($0.values) }) { session.source?.stop() }
        await flushWrites()
    }

    private func start(_ session: Open) {
        let id = session.record.id
        var options = CDPSource.Options()
        options.quality = config.screencastQuality
        options.maxWidth = config.screencastMaxWidth
        options.maxHeight = config.screencastMaxHeight
        options.retryWindow = Double(config.cdpRetrySeconds)
        let source = CDPSource(address: session.record.browserAddress, hub: session.hub, loop: loop, options: options,
                               logger: logger.with(sessionID: id)) { [weak self] state in
            self?.sourceChanged(id: id, state)
        }
        open.withLock { _ in session.source = source }
        source.start()
    }

    private func sourceChanged(id: String, _ state: CDPSource.State) {
        switch state {
        case .connecting:
            break
        case .connected:
            let hub: FrameHub? = open.withLock { sessions in
                guard let session = sessions[id] else { return nil }
                let now = Date()
                session.record.status = .running
                session.record.startedAt = session.record.startedAt ?? now
                session.record.modifiedAt = now
                save(session.record)
                return session.hub
            }
            hub?.setStatus(.live)
        case .reconnecting:
            open.withLock { $0[id]?.hub }?.setStatus(.reconnecting)
        case .failed(let reason):
            logger.warning("session failed", metadata: ["browser_session_id": "\(id)", "reason": "\(reason)"])
            finish(id, .failed, reason: reason)
        }
    }

    /// Ends an open session: records the final status, tells its viewers, stops its source.
    @discardableResult
    private func finish(_ id: String, _ status: SessionStatus, reason: String?) -> SessionRecord? {
        let ended: (SessionRecord, Open)? = open.withLock { sessions in
            guard let session = sessions.removeValue(forKey: id) else { return nil }
            let now = Date()
            session.record.status = status
            session.record.completedAt = now
            session.record.modifiedAt = now
            session.record.failureReason = reason
            save(session.record)
            return (session.record, session)
        }
        guard let (record, session) = ended else { return nil }
        session.hub.setStatus(status == .failed ? .failed(reason: reason ?? "failed") : .closed)
        session.source?.stop()
        return record
    }

    // MARK: - Store

    private func save(_ record: SessionRecord) {
        writes.async { [store, logger] in
            do { try store.update(record) } catch {
                logger.error("cannot store session", metadata: ["browser_session_id": "\(record.id)", "error": "\(error)"])
            }
        }
    }

    private func persisted(_ work: @escaping @Sendable () throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            writes.async { continuation.resume(with: Result { try work() }) }
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
