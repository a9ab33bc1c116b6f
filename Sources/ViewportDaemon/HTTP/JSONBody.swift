import Foundation
import WebSocketIO

/// A rule a request field must follow; `rule` completes "`key` must be ...".
protocol FieldRule {
    associatedtype Value: Decodable & Sendable
    static var rule: String { get }
    static func accepts(_ value: Value) -> Bool
}

/// A string field that must match `pattern` (whole string).
protocol PatternRule: FieldRule where Value == String {
    static var pattern: String { get }
}

extension PatternRule {
    static func accepts(_ value: String) -> Bool { value.range(of: pattern, options: .regularExpression) != nil }
}

/// An integer field within `range`, in `unit`.
protocol RangeRule: FieldRule where Value == Int {
    static var range: ClosedRange<Int> { get }
    static var unit: String { get }
}

extension RangeRule {
    static var rule: String { "an integer from \(range.lowerBound) to \(range.upperBound) \(unit)" }
    static func accepts(_ value: Int) -> Bool { range.contains(value) }
}

/// A request field that decodes only when it has the right JSON type and follows `Rule`; otherwise decoding
/// fails with a ``FieldError`` naming the field. `null` and absence are nil when the field is optional.
struct Checked<Rule: FieldRule>: Decodable, Sendable {
    let value: Rule.Value

    init(from decoder: any Decoder) throws {
        let key = decoder.codingPath.map(\.stringValue).joined(separator: ".")
        guard let value = try? decoder.singleValueContainer().decode(Rule.Value.self), Rule.accepts(value) else {
            throw FieldError(detail: "\(key) must be \(Rule.rule)")
        }
        self.value = value
    }
}

/// A field of a request body broke its rule (422).
struct FieldError: Error, Equatable {
    var detail: String
}

/// Encodes nil as `null` (synthesized `Encodable` leaves nil optionals out; the API's objects always carry
/// every field).
@propertyWrapper struct Nullable<Value: Encodable & Sendable>: Encodable, Sendable {
    var wrappedValue: Value?
    init(wrappedValue: Value?) { self.wrappedValue = wrappedValue }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if let wrappedValue { try container.encode(wrappedValue) } else { try container.encodeNil() }
    }
}

/// The API's JSON: snake_case keys from camelCase properties, ISO-8601 UTC times with milliseconds.
enum APIJSON {
    static func encoder(sortedKeys: Bool = false) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = sortedKeys ? [.sortedKeys, .withoutEscapingSlashes] : [.withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(iso(date))
        }
        return encoder
    }

    static func iso(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
    }

    /// Decodes a request body: an empty body is `{}`; not JSON or not an object is 400, a field against its
    /// rule 422. Request types name their keys in `CodingKeys` (snake_case on the wire).
    static func decode<Body: Decodable>(_ type: Body.Type, from data: Data) throws(RequestError) -> Body {
        let decoder = JSONDecoder()
        do {
            return try decoder.decode(Body.self, from: data.isEmpty ? Data("{}".utf8) : data)
        } catch let error as FieldError {
            throw .invalid(error.detail)
        } catch DecodingError.keyNotFound(let key, _) {
            throw .invalid("\(key.stringValue) is required")
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
            throw .malformed("request body must be a JSON object")
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            throw .invalid("\(context.codingPath.map(\.stringValue).joined(separator: ".")) has the wrong type")
        } catch {
            throw .malformed("request body is not valid JSON")
        }
    }
}

/// A request body the API cannot take: 400 when it is not a JSON object, 422 when a field breaks its rule.
enum RequestError: Error, Equatable {
    case malformed(String)
    case invalid(String)
}

extension HTTPResponse {
    /// A JSON answer of an `Encodable` value, in the API's JSON.
    static func json(_ status: Int, encoding value: some Encodable) -> HTTPResponse {
        let body = (try? APIJSON.encoder().encode(value)) ?? Data(#"{"detail":"cannot encode the answer"}"#.utf8)
        return HTTPResponse(status: status, contentType: "application/json", headers: [], body: body)
    }
}
