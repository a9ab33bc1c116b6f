/// A statement and its parameters. What is interpolated is sent apart from the text, as parameter `$1`, `$2`, …
/// (in PostgreSQL's text format, with its type), never spliced into it; `\(unescaped: sql)` splices SQL in.
///
///     let rows = try await execute("SELECT id FROM run WHERE \"sessionID\" = \(sessionID) LIMIT \(limit)")
struct SQL: ExpressibleByStringInterpolation, Sendable {
    var text: String
    var parameters: [Parameter]

    /// A parameter's type (a `pg_type` OID) and its text; nil is NULL.
    struct Parameter: Sendable {
        let type: UInt32
        let text: String?
    }

    init(stringLiteral text: String) {
        self.text = text
        parameters = []
    }

    init(stringInterpolation: StringInterpolation) {
        text = stringInterpolation.text
        parameters = stringInterpolation.parameters
    }

    /// `text` as it is, with `parameters` as its `$1`, `$2`, ….
    init(unsafeSQL text: String, _ parameters: any SQLParameter...) {
        self.text = text
        self.parameters = parameters.map(\.sqlParameter)
    }

    struct StringInterpolation: StringInterpolationProtocol {
        var text = ""
        var parameters: [Parameter] = []

        init(literalCapacity: Int, interpolationCount: Int) {
            text.reserveCapacity(literalCapacity + 3 * interpolationCount)
        }

        mutating func appendLiteral(_ literal: String) { text += literal }

        mutating func appendInterpolation(_ value: some SQLParameter) {
            parameters.append(value.sqlParameter)
            text += "$\(parameters.count)"
        }

        /// nil is NULL.
        mutating func appendInterpolation<Value: SQLValue>(_ value: Value?) {
            parameters.append(SQL.Parameter(type: Value.sqlType, text: value?.sqlText))
            text += "$\(parameters.count)"
        }

        mutating func appendInterpolation(unescaped sql: String) { text += sql }
    }
}

/// What can be a parameter of ``SQL``.
protocol SQLParameter: Sendable {
    var sqlParameter: SQL.Parameter { get }
}

/// A value both ways: a parameter, and a column of a ``Row``, in PostgreSQL's text format.
protocol SQLValue: SQLParameter {
    /// Its `pg_type` OID, and that of an array of it.
    static var sqlType: UInt32 { get }
    static var sqlArrayType: UInt32 { get }
    var sqlText: String { get }
    init?(sqlText: String)
}

extension SQLValue {
    var sqlParameter: SQL.Parameter { SQL.Parameter(type: Self.sqlType, text: sqlText) }
}

extension String: SQLValue {
    static var sqlType: UInt32 { 25 }  // text
    static var sqlArrayType: UInt32 { 1009 }
    var sqlText: String { self }
    init?(sqlText: String) { self = sqlText }
}

extension Int64: SQLValue {
    static var sqlType: UInt32 { 20 }  // int8
    static var sqlArrayType: UInt32 { 1016 }
    var sqlText: String { String(self) }
    init?(sqlText: String) { self.init(sqlText, radix: 10) }
}

extension Int: SQLValue {
    static var sqlType: UInt32 { Int64.sqlType }
    static var sqlArrayType: UInt32 { Int64.sqlArrayType }
    var sqlText: String { String(self) }
    init?(sqlText: String) { self.init(sqlText, radix: 10) }
}

extension Bool: SQLValue {
    static var sqlType: UInt32 { 16 }  // bool
    static var sqlArrayType: UInt32 { 1000 }
    var sqlText: String { self ? "t" : "f" }
    init?(sqlText: String) {
        switch sqlText {
        case "t": self = true
        case "f": self = false
        default: return nil
        }
    }
}

extension Array: SQLParameter where Element: SQLValue {
    /// An array literal, `{"a","b \"c\""}`: every element quoted, with its quotes and backslashes escaped.
    var sqlParameter: SQL.Parameter {
        let elements = map { element in
            "\"" + element.sqlText.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                + "\""
        }
        return SQL.Parameter(type: Element.sqlArrayType, text: "{" + elements.joined(separator: ",") + "}")
    }
}

/// A row of a result: its columns' text, nil for NULL.
struct Row: Sendable {
    let columns: [String?]

    /// Column `column` as a `type`; a NULL or a text that is not one throws.
    func decode<Value: SQLValue>(_ type: Value.Type, column: Int = 0) throws -> Value {
        guard let value = try decode(Value?.self, column: column) else {
            throw PostgresStoreError("column \(column) is NULL, not a \(Value.self)")
        }
        return value
    }

    /// Column `column` as a `type`, nil for NULL.
    func decode<Value: SQLValue>(_ type: Value?.Type, column: Int = 0) throws -> Value? {
        guard columns.indices.contains(column) else { throw PostgresStoreError("no column \(column) in the row") }
        guard let text = columns[column] else { return nil }
        guard let value = Value(sqlText: text) else { throw PostgresStoreError("column \(column) is not a \(Value.self): \(text)") }
        return value
    }
}
