import Store
import Synchronization

/// At most `limit` connections to one database, opened when a caller finds none idle, each lent to one caller at a
/// time. A connection that comes back broken, busy or inside a transaction is closed, and so is an idle one the
/// server has written to since (it closed it); its place is free for a new one. Callers beyond the limit wait their
/// turn, first come first served, until their deadline.
final class ConnectionPool: Sendable {
    private let parameters: [(keyword: String, value: String)]
    private let limit: Int
    private let state = Mutex(State())

    private struct State {
        var idle: [Connection] = []
        /// Connections open, being opened or lent, idle ones included.
        var count = 0
        var waiters: [Waiter] = []
        var lastWaiter = 0
        var closed = false

        /// An idle connection, or a place to open one, if there is either.
        mutating func grant(limit: Int) -> Grant? {
            if let connection = idle.popLast() { return .connection(connection) }
            guard count < limit else { return nil }
            count += 1
            return .place
        }
    }

    private typealias Waiter = (id: Int, continuation: CheckedContinuation<Grant, any Error>)

    /// What a caller gets: a connection, or the right to open one.
    private enum Grant {
        case connection(Connection)
        case place
    }

    init(parameters: [(keyword: String, value: String)], limit: Int) {
        self.parameters = parameters
        self.limit = limit
    }

    /// Runs `body` on a connection, got (or opened) before `wait` has passed, else ``StoreFailure/unavailable(_:)``.
    func withConnection<Result>(wait: Duration, _ body: (Connection) async throws -> Result) async throws -> Result {
        let connection = try await connection(until: Deadline(wait))
        defer { giveBack(connection) }
        return try await body(connection)
    }

    /// Closes the idle connections, and the others as they come back; waiting callers fail.
    func close() {
        let (idle, waiters) = state.withLock { state in
            state.closed = true
            state.count -= state.idle.count
            defer { (state.idle, state.waiters) = ([], []) }
            return (state.idle, state.waiters)
        }
        idle.forEach { $0.close() }
        for waiter in waiters { waiter.continuation.resume(throwing: Self.closed) }
    }

    private static let closed = StoreFailure.unavailable("the store's connections to PostgreSQL are closed")

    private func connection(until deadline: Deadline) async throws -> Connection {
        switch try await grant(until: deadline) {
        case .connection(let connection) where connection.isQuiet:
            return connection
        case .connection(let connection):
            connection.close()
        case .place:
            break
        }
        do {
            return try await Connection.open(parameters, until: deadline)
        } catch {
            giveBack(nil)
            throw error
        }
    }

    private func grant(until deadline: Deadline) async throws -> Grant {
        let id = state.withLock { state in
            state.lastWaiter += 1
            return state.lastWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let granted: Result<Grant, any Error>? = state.withLock { state in
                    if state.closed { return .failure(Self.closed) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if let grant = state.grant(limit: limit) { return .success(grant) }
                    state.waiters.append((id, continuation))
                    return nil
                }
                if let granted { return continuation.resume(with: granted) }
                Task { [self] in
                    try? await Task.sleep(until: deadline.instant, clock: .continuous)
                    fail(waiter: id, with: StoreFailure.unavailable("no connection to PostgreSQL within \(deadline.timeout)"))
                }
            }
        } onCancel: {
            fail(waiter: id, with: CancellationError())
        }
    }

    /// Fails waiter `id`, if it still waits.
    private func fail(waiter id: Int, with error: any Error) {
        let waiter = state.withLock { state in
            state.waiters.firstIndex { $0.id == id }.map { state.waiters.remove(at: $0) }
        }
        waiter?.continuation.resume(throwing: error)
    }

    /// Takes `connection` back (nil: one that could not be opened) for the first waiter, or keeps it idle; closes it
    /// unless it is fit to lend again.
    private func giveBack(_ connection: Connection?) {
        let reusable = connection.flatMap { $0.isIdle ? $0 : nil }
        let (waiter, kept) = state.withLock { state -> (Waiter?, Bool) in
            if !state.closed, !state.waiters.isEmpty { return (state.waiters.removeFirst(), false) }
            if let reusable, !state.closed {
                state.idle.append(reusable)
                return (nil, true)
            }
            state.count -= 1
            return (nil, false)
        }
        if let waiter {
            if let reusable { return waiter.continuation.resume(returning: .connection(reusable)) }
            waiter.continuation.resume(returning: .place)
        }
        if !kept { connection?.close() }
    }
}
