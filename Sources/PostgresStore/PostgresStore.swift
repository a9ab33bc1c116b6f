import Foundation
public import Logging
public import Store
import Synchronization
import ViewportCore

/// The daemon's state in a PostgreSQL database several viewportd nodes share (`cluster.database_url`): the tables,
/// columns and migrations of ``SQLiteStore``, with quoted camelCase identifiers.
///
/// Records go in and out as JSON in one place (``RowCoding``): a record's synthesized coding keys are its columns,
/// `json_populate_record` writes it and `row_to_json` reads it back. Timestamps are `timestamptz(3)`, kept to the
/// millisecond as in SQLite.
///
/// Usable only inside ``run(_:)`` (once per store): it applies the migrations first, and closes the store's
/// connections at its end. Queries go through libpq (``Connection``), at most ``maxConnections`` at once.
///
/// A cluster node's store has the node's id: what concerns one host is then what this node owns, and once the node
/// is registered (``register(advertiseURL:leaseSeconds:)``) every transaction is fenced by its epoch, so that a node
/// whose lease another node took writes nothing more (``StoreFailure/fenced(nodeID:)``).
public final class PostgresStore: Store {
    public let objectPrefix: String?
    /// This cluster node; nil: the store of a tool (`recover-run`) or a test, which sees every node's rows.
    public let nodeID: String?
    /// The epoch this node registered with; transactions check it is still the node's.
    let epoch = Mutex<Int64?>(nil)
    let pool: ConnectionPool
    let logger: Logger
    /// Every table's columns in order, read once the schema is migrated.
    private let tableColumns = Mutex<[String: [String]]>([:])

    /// A store on the database at `url` (`postgres://user:password@host:port/database`, `?sslmode=disable`,
    /// `prefer` (the default) or `require`, as libpq takes them). Nothing connects until ``run(_:)``.
    public init(url: String, objectPrefix: String? = nil, nodeID: String? = nil, logger: Logger) throws {
        self.objectPrefix = objectPrefix
        self.nodeID = nodeID
        self.logger = logger
        pool = ConnectionPool(parameters: try Self.connectionParameters(url: url), limit: Self.maxConnections)
    }

    /// How many connections the store opens at most; more queries at once wait for one of them.
    static let maxConnections = 8

    /// libpq's connection parameters for a `postgres://` or `postgresql://` URL: the URL itself (libpq reads it),
    /// user `postgres` unless it names one, and the session in UTF-8 and UTC.
    static func connectionParameters(url: String) throws -> [(keyword: String, value: String)] {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme ?? ""),
              let host = components.host, !host.isEmpty
        else { throw PostgresStoreError("not a postgres:// URL with a host") }
        let mode = components.queryItems?.last { $0.name == "sslmode" }?.value ?? "prefer"
        guard ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"].contains(mode) else {
            throw PostgresStoreError("sslmode \(mode) is not one of disable, allow, prefer, require, verify-ca or verify-full")
        }
        // Later parameters override earlier ones, the URL's included: the user and the TCP timeouts are defaults,
        // the rest is not. A query has no deadline of its own (a migration may wait for a lock): the timeouts drop a
        // connection whose server went silent (a cut link, a frozen host) within about 15 s instead of TCP's
        // minutes, so the query fails as unavailable.
        // Dates come back from row_to_json in the session's time zone: UTC keeps them uniform.
        return [("user", "postgres"), ("keepalives_idle", "5"), ("keepalives_interval", "2"), ("keepalives_count", "3"),
                ("tcp_user_timeout", "15000"), ("dbname", url), ("client_encoding", "UTF8"),
                ("options", "-c TimeZone=UTC")]
    }

    /// Runs `body` with the schema migrated before it starts; the store's connections are closed at its end.
    public func run(_ body: () async throws -> Void) async throws {
        defer { pool.close() }
        try await migrate()
        try await body()
    }

    // MARK: - Queries

    /// Runs `body` in a transaction on one connection: committed if it returns, rolled back if it throws (its
    /// error is rethrown as it is). Once the node is registered, `fenced` transactions first check, holding the
    /// node's row, that its epoch is still the one it registered with (a takeover locks that row to change it).
    @discardableResult
    func transaction<Result: Sendable>(fenced: Bool = true, _ body: (Connection) async throws -> Result)
        async throws -> Result
    {
        let fence = fenced ? epoch.withLock { $0 }.flatMap { epoch in nodeID.map { ($0, epoch) } } : nil
        return try await withConnection { connection in
            try await execute("BEGIN", on: connection)
            do {
                if let (node, epoch) = fence {
                    let current = try await execute("""
                        SELECT 1 FROM node WHERE id = \(node) AND epoch = \(epoch) AND "lostAt" IS NULL FOR SHARE
                        """, on: connection)
                    guard !current.isEmpty else { throw StoreFailure.fenced(nodeID: node) }
                }
                let result = try await body(connection)
                try await execute("COMMIT", on: connection)
                return result
            } catch {
                _ = try? await execute("ROLLBACK", on: connection)
                throw error
            }
        }
    }

    /// Runs `query` on `connection`, or on any connection of the pool.
    @discardableResult
    func execute(_ query: SQL, on connection: Connection? = nil) async throws -> [Row] {
        if let connection { return try await connection.rows(query) }
        return try await withConnection { try await $0.rows(query) }
    }

    /// How long a query waits for a connection (for one to come free, or to open one): while PostgreSQL is down,
    /// an API request must not wait longer.
    static let connectionWait = Duration.seconds(5)

    /// Runs `body` on a connection of the pool. No connection within ``connectionWait``, a connection that cannot
    /// be made, or one the server drops is ``StoreFailure/unavailable(_:)``; `body` never starts once the wait is
    /// over, so a request answered "unavailable" wrote nothing. Other errors are rethrown as they are.
    func withConnection<Result: Sendable>(_ body: (Connection) async throws -> Result) async throws -> Result {
        try await pool.withConnection(wait: Self.connectionWait, body)
    }

    /// The records of a query whose only column is `row_to_json(...)::text`.
    func records<Record: Decodable>(_ type: Record.Type, _ query: SQL, on connection: Connection? = nil)
        async throws -> [Record]
    {
        try await execute(query, on: connection).map { try RowCoding.decode(type, from: try $0.decode(String.self)) }
    }

    func record<Record: Decodable>(_ type: Record.Type, _ query: SQL, on connection: Connection? = nil)
        async throws -> Record?
    {
        try await records(type, query, on: connection).first
    }

    /// Inserts `record` into `table` (columns of its nil properties get their default; with `onConflictDoNothing`,
    /// nothing when its key is taken). Returns the rows of `returning` (SQL after RETURNING), if given.
    @discardableResult
    func insert(_ record: some Encodable, into table: String, onConflictDoNothing: Bool = false,
                returning: String? = nil, on connection: Connection? = nil) async throws -> [Row]
    {
        guard let connection else {
            return try await transaction {
                try await insert(record, into: table, onConflictDoNothing: onConflictDoNothing, returning: returning, on: $0)
            }
        }
        let (json, keys) = try RowCoding.encode(record)
        let columns = keys.map(Self.quoted).joined(separator: ", ")
        return try await execute("""
            INSERT INTO \(unescaped: Self.quoted(table)) (\(unescaped: columns)) SELECT \(unescaped: columns)
            FROM json_populate_record(NULL::\(unescaped: Self.quoted(table)), \(json)::json)
            \(unescaped: onConflictDoNothing ? "ON CONFLICT DO NOTHING" : "")
            \(unescaped: returning.map { "RETURNING \($0)" } ?? "")
            """, on: connection)
    }

    /// Writes every column of `record` but its key `key` into the row of `table` with that key; with `upsert`, the
    /// row is inserted if there is none. Returns whether a row was written.
    @discardableResult
    func update(_ record: some Encodable, in table: String, key: [String], upsert: Bool = false,
                on connection: Connection? = nil) async throws -> Bool
    {
        guard let connection else {
            return try await transaction { try await update(record, in: table, key: key, upsert: upsert, on: $0) }
        }
        let (json, keys) = try RowCoding.encode(record)
        let others = try columns(of: table).filter { !key.contains($0) }.map(Self.quoted).joined(separator: ", ")
        let source = "json_populate_record(NULL::\(Self.quoted(table)), $1::json)"
        let sql: String
        if upsert {
            let inserted = keys.map(Self.quoted).joined(separator: ", ")
            let excluded = try columns(of: table).filter { !key.contains($0) }.map { "EXCLUDED." + Self.quoted($0) }
            sql = """
                INSERT INTO \(Self.quoted(table)) (\(inserted)) SELECT \(inserted) FROM \(source)
                ON CONFLICT (\(key.map(Self.quoted).joined(separator: ", "))) DO UPDATE
                SET (\(others)) = ROW(\(excluded.joined(separator: ", "))) RETURNING 1
                """
        } else {
            let match = key.map { "t.\(Self.quoted($0)) = r.\(Self.quoted($0))" }.joined(separator: " AND ")
            sql = """
                UPDATE \(Self.quoted(table)) AS t SET (\(others)) = (SELECT \(others) FROM \(source))
                FROM \(source) AS r WHERE \(match) RETURNING 1
                """
        }
        return try await !execute(SQL(unsafeSQL: sql, json), on: connection).isEmpty
    }

    private func columns(of table: String) throws -> [String] {
        guard let columns = tableColumns.withLock({ $0[table] }) else {
            throw PostgresStoreError("table \(table) is unknown (the store is used outside run(_:))")
        }
        return columns
    }

    static func quoted(_ identifier: String) -> String { "\"\(identifier.replacingOccurrences(of: "\"", with: "\"\""))\"" }

    /// Whether `error` is PostgreSQL refusing a duplicate key.
    static func isUniqueViolation(_ error: any Error) -> Bool {
        (error as? PostgresError)?.sqlState == "23505"
    }

    /// Runs `work` to its end from a thread outside the cooperative pool (the daemon's session writes, on their
    /// serial dispatch queue), blocking that thread meanwhile.
    func blocking(_ work: @escaping @Sendable () async throws -> Void) throws {
        let failure = Mutex<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            do { try await work() } catch { failure.withLock { $0 = error } }
            done.signal()
        }
        done.wait()
        if let error = failure.withLock({ $0 }) { throw error }
    }

    // MARK: - Schema

    /// Applies the migrations not applied yet, in one transaction under an advisory lock (nodes starting together
    /// migrate one after another; the later ones find nothing to do), then reads the tables' columns.
    func migrate() async throws {
        try await transaction { connection in
            try await execute("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", on: connection)
            try await execute("""
                CREATE TABLE IF NOT EXISTS viewportd_migrations (
                    "identifier" text PRIMARY KEY, "appliedAt" timestamptz NOT NULL DEFAULT now())
                """, on: connection)
            let applied = Set(try await execute("SELECT identifier FROM viewportd_migrations", on: connection)
                .map { try $0.decode(String.self) })
            for (identifier, statements) in Self.migrations where !applied.contains(identifier) {
                for statement in statements { try await execute(SQL(unsafeSQL: statement), on: connection) }
                try await execute("INSERT INTO viewportd_migrations (identifier) VALUES (\(identifier))", on: connection)
                logger.info("database migrated", metadata: ["migration": "\(identifier)"])
            }
        }
        let rows = try await execute("""
            SELECT table_name::text, column_name::text FROM information_schema.columns
            WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position
            """)
        let columns = Dictionary(grouping: try rows.map { (try $0.decode(String.self), try $0.decode(String.self, column: 1)) },
                                 by: \.0)
            .mapValues { $0.map(\.1) }
        tableColumns.withLock { $0 = columns }
    }

    /// The advisory lock migrations take ("vpmigr").
    static let migrationLock: Int64 = 0x7670_6D69_6772
}

/// A PostgreSQL store that cannot be used as asked.
public struct PostgresStoreError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Records to and from the JSON PostgreSQL reads (`json_populate_record`) and writes (`row_to_json`): dates as
/// ISO 8601 UTC with milliseconds, bytes as bytea's hex text (`\x00ff`).
enum RowCoding {
    /// `record` as a JSON object, and its keys (the columns it sets).
    static func encode(_ record: some Encodable) throws -> (json: String, keys: [String]) {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(text(date))
        }
        encoder.dataEncodingStrategy = .custom { data, encoder in
            var container = encoder.singleValueContainer()
            try container.encode("\\x" + data.map { String(format: "%02x", $0) }.joined())
        }
        let json = try encoder.encode(record)
        let keys = (try JSONSerialization.jsonObject(with: json) as? [String: Any]).map { Array($0.keys).sorted() } ?? []
        return (String(decoding: json, as: UTF8.self), keys)
    }

    static func decode<Record: Decodable>(_ type: Record.Type, from json: String) throws -> Record {
        try decoder.decode(type, from: Data(json.utf8))
    }

    /// The decoder of every row: it keeps no state between calls, so one is built once rather than per row.
    private static let decoder: JSONDecoder = {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let date = date(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not a timestamp: \(text)")
            }
            return date
        }
        decoder.dataDecodingStrategy = .custom { decoder in
            let container = try decoder.singleValueContainer()
            let text = try container.decode(String.self)
            guard let data = bytes(text) else {
                throw DecodingError.dataCorruptedError(in: container, debugDescription: "not bytea hex: \(text)")
            }
            return data
        }
        return decoder
    }()

    /// `2025-10-09T08:53:20.250Z`: whole milliseconds, as SQLite keeps them (the rest is dropped).
    static func text(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = time_t(milliseconds.floorDivided(by: 1000))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", parts.tm_year + 1900, parts.tm_mon + 1,
                      parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec,
                      Int32(milliseconds - milliseconds.floorDivided(by: 1000) * 1000))
    }

    /// A timestamptz as row_to_json writes it: `2025-10-09T08:53:20.25+00:00` (fraction and offset minutes
    /// optional).
    static func date(_ text: String) -> Date? {
        let characters = Array(text.utf8)
        guard characters.count >= 19 else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            range.upperBound <= characters.count ? Int(String(decoding: characters[range], as: UTF8.self)) : nil
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19)
        else { return nil }
        var index = 19
        var milliseconds = 0
        if index < characters.count, characters[index] == UInt8(ascii: ".") {
            index += 1
            var digits = 0
            while index < characters.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(characters[index]) {
                if digits < 3 { milliseconds = milliseconds * 10 + Int(characters[index] - UInt8(ascii: "0")) }
                digits += 1
                index += 1
            }
            for _ in digits..<max(digits, 3) { milliseconds *= 10 }
        }
        var offset = 0
        if index < characters.count, characters[index] != UInt8(ascii: "Z") {
            let sign = characters[index] == UInt8(ascii: "-") ? -1 : 1
            guard let hours = number(index + 1..<index + 3) else { return nil }
            let minutes = index + 6 <= characters.count ? number(index + 4..<index + 6) ?? 0 : 0
            offset = sign * (hours * 3600 + minutes * 60)
        }
        var parts = tm()
        (parts.tm_year, parts.tm_mon, parts.tm_mday) = (Int32(year - 1900), Int32(month - 1), Int32(day))
        (parts.tm_hour, parts.tm_min, parts.tm_sec) = (Int32(hour), Int32(minute), Int32(second))
        let seconds = Int64(timegm(&parts)) - Int64(offset)
        // From whole milliseconds in one division: the same Date as a literal of that many seconds.
        return Date(timeIntervalSince1970: Double(seconds * 1000 + Int64(milliseconds)) / 1000)
    }

    /// The bytes of bytea's hex text.
    static func bytes(_ text: String) -> Data? {
        guard text.hasPrefix("\\x") else { return nil }
        let hex = Array(text.utf8.dropFirst(2))
        guard hex.count % 2 == 0 else { return nil }
        var data = Data(capacity: hex.count / 2)
        for index in stride(from: 0, to: hex.count, by: 2) {
            guard let byte = UInt8(String(decoding: hex[index..<index + 2], as: UTF8.self), radix: 16) else { return nil }
            data.append(byte)
        }
        return data
    }
}

extension Int64 {
    fileprivate func floorDivided(by divisor: Int64) -> Int64 {
        let quotient = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? quotient - 1 : quotient
    }
}
