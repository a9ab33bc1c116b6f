import Foundation
import PostgresNIO
import Store
import Synchronization

extension PostgresConnection {
    /// The rows of `query`; or, once the connection has closed and `query` is still unanswered a second later, an
    /// error. PostgresNIO never answers a query written to a connection that has just closed (the pool may lease
    /// one the server is closing: vapor/postgres-nio#487, reverted by #501): its caller would wait forever.
    func rows(_ query: PostgresQuery, logger: Logger) async throws -> [PostgresRow] {
        let answer = Answer()
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                answer.wait(continuation)
                answer.run(query: Task {
                    do { answer.resume(.success(try await self.query(query, logger: logger).collect())) } catch {
                        answer.resume(.failure(error))
                    }
                }, watch: Task {
                    while !Task.isCancelled, !self.isClosed { try? await Task.sleep(for: .seconds(1)) }
                    try? await Task.sleep(for: .seconds(1))
                    guard !Task.isCancelled else { return }
                    answer.resume(.failure(StoreFailure.unavailable("the connection to PostgreSQL closed before it answered")))
                })
            }
        } onCancel: {
            answer.cancel()
        }
    }
}

/// Where the answer of ``PostgresConnection/rows(_:logger:)`` goes: the first of the query's result and the
/// connection's closing resumes the caller.
private final class Answer: Sendable {
    private struct State {
        var continuation: CheckedContinuation<[PostgresRow], any Error>?
        var tasks: [Task<Void, Never>] = []
        var cancelled = false
    }
    private let state = Mutex(State())

    /// Called first: the answer goes to `continuation`.
    func wait(_ continuation: CheckedContinuation<[PostgresRow], any Error>) {
        state.withLock { $0.continuation = continuation }
    }

    /// The task running the query and the one watching the connection, cancelled with the caller.
    func run(query: Task<Void, Never>, watch: Task<Void, Never>) {
        let cancelled = state.withLock { state in
            state.tasks = [query, watch]
            // Answered already: the watch is over.
            return state.cancelled || state.continuation == nil
        }
        if cancelled { cancel() }
    }

    func resume(_ result: Result<[PostgresRow], any Error>) {
        let (continuation, tasks) = state.withLock { state in
            defer { state.continuation = nil }
            return (state.continuation, state.tasks)
        }
        guard let continuation else { return }
        continuation.resume(with: result)
        // The watch ends; a query still waiting for an answer that never comes is left to it.
        for task in tasks { task.cancel() }
    }

    func cancel() {
        let tasks = state.withLock { state in
            state.cancelled = true
            return state.tasks
        }
        for task in tasks { task.cancel() }
    }
}
