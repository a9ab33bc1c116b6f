import CPostgres
import Foundation
import Store
import ViewportCore

/// One connection to PostgreSQL: a libpq `PGconn`, in non-blocking mode, waited on with `poll()` up to a
/// ``Deadline``. Its blocking calls run on a Dispatch thread (``offThread(_:)``), never on the cooperative pool.
///
/// `@unchecked Sendable`: the handle is used by one caller at a time (a ``ConnectionPool`` lends it to one task, a
/// ``LeaseConnection`` takes it out while it queries), and that caller awaits each call before the next, so two
/// threads never touch it at once.
///
/// The connection failing (refused, dropped, the server shutting down: SQLSTATE classes 08 and 57P) or a deadline
/// passing is ``StoreFailure/unavailable(_:)``, and closes it: a connection with a query in flight is never used
/// again. The server refusing a statement is a ``PostgresError``.
final class Connection: @unchecked Sendable {
    private var handle: OpaquePointer?

    /// Connects with `parameters` (libpq's keywords and values, a `dbname` URL expanded in place).
    static func open(_ parameters: [(keyword: String, value: String)], until deadline: Deadline) async throws -> Connection {
        try await offThread { try Connection(parameters, until: deadline) }
    }

    private init(_ parameters: [(keyword: String, value: String)], until deadline: Deadline) throws {
        let keywords = parameters.map { strdup($0.keyword) } + [nil]
        let values = parameters.map { strdup($0.value) } + [nil]
        defer { (keywords + values).forEach { free($0) } }
        handle = keywords.map { UnsafePointer($0) }.withUnsafeBufferPointer { keywords in
            values.map { UnsafePointer($0) }.withUnsafeBufferPointer { values in
                PQconnectStartParams(keywords.baseAddress, values.baseAddress, 1)
            }
        }
        do {
            guard let handle, PQstatus(handle) != CONNECTION_BAD else { throw failure() }
            // Notices (`CREATE TABLE IF NOT EXISTS` finding the table) would go to stderr.
            PQsetNoticeProcessor(handle, { _, _ in }, nil)
            // libpq's own connect_timeout applies to the blocking PQconnectdb only: this loop keeps the deadline.
            var polling = PGRES_POLLING_WRITING
            while polling != PGRES_POLLING_OK {
                switch polling {
                case PGRES_POLLING_READING: try wait(for: POLLIN, until: deadline, timedOut: "no connection to PostgreSQL")
                case PGRES_POLLING_WRITING: try wait(for: POLLOUT, until: deadline, timedOut: "no connection to PostgreSQL")
                default: throw failure()
                }
                polling = PQconnectPoll(handle)
            }
            guard PQsetnonblocking(handle, 1) == 0 else { throw failure() }
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Closes the connection; queries on it then fail as unavailable.
    func close() {
        if let handle { PQfinish(handle) }
        handle = nil
    }

    /// Open, and idle outside a transaction: fit to lend again.
    var isIdle: Bool {
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK && PQtransactionStatus(handle) == PQTRANS_IDLE
    }

    /// Idle, and the server has sent nothing since: an idle connection the server closed (a restart, an idle
    /// timeout) has its error or its end waiting to be read.
    var isQuiet: Bool {
        guard isIdle, let handle else { return false }
        var descriptor = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) == 0
    }

    /// The rows of `sql`, waited for until `deadline` (for ever without one).
    func rows(_ sql: SQL, until deadline: Deadline? = nil) async throws -> [Row] {
        try await offThread { try self.query(sql, until: deadline) }
    }

    private func query(_ sql: SQL, until deadline: Deadline?) throws -> [Row] {
        guard let handle else { throw StoreFailure.unavailable("the connection to PostgreSQL is closed") }
        do {
            let values = sql.parameters.map { $0.text.map { strdup($0) } ?? nil }
            defer { values.forEach { free($0) } }
            let sent = sql.parameters.map(\.type).withUnsafeBufferPointer { types in
                values.map { UnsafePointer($0) }.withUnsafeBufferPointer { values in
                    PQsendQueryParams(handle, sql.text, Int32(types.count), types.baseAddress, values.baseAddress, nil,
                                      nil, 0)
                }
            }
            guard sent == 1 else { throw failure() }
            while true {
                let flushed = PQflush(handle)
                if flushed == 0 { break }
                guard flushed == 1 else { throw failure() }
                let events = try wait(for: POLLIN | POLLOUT, until: deadline, timedOut: "no answer from PostgreSQL")
                if events & Int16(POLLIN) != 0, PQconsumeInput(handle) == 0 { throw failure() }
            }
            var rows: [Row] = []
            var refusal: (any Error)?
            while true {
                while PQisBusy(handle) == 1 {
                    try wait(for: POLLIN, until: deadline, timedOut: "no answer from PostgreSQL")
                    guard PQconsumeInput(handle) == 1 else { throw failure() }
                }
                guard let result = PQgetResult(handle) else { break }
                defer { PQclear(result) }
                switch PQresultStatus(result) {
                case PGRES_TUPLES_OK:
                    let columns = PQnfields(result)
                    for row in 0..<PQntuples(result) {
                        rows.append(Row(columns: (0..<columns).map { column in
                            PQgetisnull(result, row, column) == 1 ? nil : String(cString: PQgetvalue(result, row, column))
                        }))
                    }
                case PGRES_FATAL_ERROR, PGRES_BAD_RESPONSE, PGRES_NONFATAL_ERROR:
                    refusal = refusal ?? error(of: result)
                default:
                    break
                }
            }
            if let refusal { throw refusal }
            return rows
        } catch let error as StoreFailure {
            close()
            throw error
        }
    }

    /// Waits until the socket is ready for `events` (poll's), returning those it is ready for; once `deadline` has
    /// passed, throws `timedOut` + " within" the timeout.
    @discardableResult
    private func wait(for events: Int32, until deadline: Deadline?, timedOut: String) throws -> Int16 {
        guard let handle, PQsocket(handle) >= 0 else { throw failure() }
        var descriptor = pollfd(fd: PQsocket(handle), events: Int16(events), revents: 0)
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let left = ContinuousClock.now.duration(to: deadline.instant)
                guard left > .zero else {
                    throw StoreFailure.unavailable("\(timedOut) within \(deadline.timeout)")
                }
                timeout = Int32(clamping: left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1)
            }
            let ready = poll(&descriptor, 1, timeout)
            if ready > 0 { return descriptor.revents }
            guard ready == 0 || errno == EINTR else {
                throw StoreFailure.unavailable("poll on the connection to PostgreSQL failed: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// The connection's failure, from libpq's last error message.
    private func failure() -> StoreFailure {
        let message = handle.flatMap { PQerrorMessage($0) }.map { String(cString: $0) } ?? "out of memory"
        return StoreFailure.unavailable(Self.oneLine(message.isEmpty ? "the connection to PostgreSQL failed" : message))
    }

    /// The error of a failed result: the connection's failure, or the server refusing the statement.
    private func error(of result: OpaquePointer) -> any Error {
        let sqlState = vpd_pq_sqlstate(result).map { String(cString: $0) }
        // The primary message only: the detail may quote the row's values.
        let message = vpd_pq_message(result).map { String(cString: $0) } ?? Self.oneLine(String(cString: PQresultErrorMessage(result)))
        if PQstatus(handle) == CONNECTION_BAD || sqlState.map({ $0.hasPrefix("08") || $0.hasPrefix("57P") }) == true {
            return StoreFailure.unavailable(message)
        }
        return PostgresError(sqlState: sqlState, message: message)
    }

    /// libpq's messages span lines (`ERROR:  …\nDETAIL:  …`, `…failed: …\n\tIs the server running…`).
    private static func oneLine(_ message: String) -> String {
        message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }.joined(separator: " ")
    }
}

/// When a wait for PostgreSQL ends, and the timeout it came from (to say so).
struct Deadline: Sendable {
    let instant: ContinuousClock.Instant
    let timeout: Duration

    /// `timeout` from now.
    init(_ timeout: Duration) {
        self.timeout = timeout
        instant = .now + timeout
    }
}

/// PostgreSQL refusing a statement: its SQLSTATE (`23505`, a duplicate key) and its message.
struct PostgresError: Error, CustomStringConvertible {
    let sqlState: String?
    let message: String
    var description: String { message }
}
