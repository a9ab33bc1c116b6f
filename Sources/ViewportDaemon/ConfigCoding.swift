import Foundation
import Yams

// The config's types are Codable; these coders turn them into and out of YAML nodes, naming each key after its
// property in snake case (`sourceMaxFPS` is `source_max_fps`), and every refused value fails naming its key.

/// A configuration problem, naming the key.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var key: String
    public var message: String
    init(key: String, _ message: String) {
        self.key = key
        self.message = message
    }

    /// The value `decoder` is at breaks `rule`; the refused value is quoted unless it is a secret.
    init(refusing decoder: any Decoder, _ rule: String, showingValue: Bool = true) {
        var message = rule
        if showingValue, let node = (decoder as? NodeDecoder)?.node, node.tagName != .null, let text = node.scalar?.string {
            message += " (got \"\(text)\")"
        }
        self.init(key: Self.key(decoder.codingPath), message)
    }

    /// `a.b[0].c` for a coding path.
    static func key(_ path: [any CodingKey]) -> String {
        path.reduce("") { key, part in
            if let index = part.intValue { return "\(key)[\(index)]" }
            return key.isEmpty ? part.stringValue : "\(key).\(part.stringValue)"
        }
    }

    public var description: String { "config key \(key): \(message)" }
}

/// A config value written in the file as a simpler `Raw` value (a port range as `"5900-5999"`) and checked by a rule.
public protocol ConfigValue: Codable, Sendable, Equatable {
    associatedtype Raw: Codable
    /// What a valid value is, for the error naming the key: "must be ...".
    static var rule: String { get }
    /// Whether a refused value may be quoted in the error (not a secret's).
    static var showsValue: Bool { get }
    /// The value `raw` stands for, nil when it breaks the rule.
    init?(raw: Raw)
    var raw: Raw { get }
}

extension ConfigValue {
    public static var showsValue: Bool { true }

    public init(from decoder: any Decoder) throws {
        let refusal = ConfigError(refusing: decoder, Self.rule, showingValue: Self.showsValue)
        // Not `try?`: it would flatten an optional `Raw`'s nil into a refusal.
        let raw: Raw
        do { raw = try decoder.singleValueContainer().decode(Raw.self) } catch { throw refusal }
        guard let value = Self(raw: raw) else { throw refusal }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(raw)
    }
}

/// A config value that is one of a few names.
public protocol ConfigChoice: ConfigValue, RawRepresentable<String>, CaseIterable where Raw == String {}

extension ConfigChoice {
    public static var rule: String {
        let names = allCases.map(\.rawValue)
        return "must be \(names.count > 2 ? "one of " : "")\(names.dropLast().joined(separator: ", ")) or \(names.last ?? "")"
    }
    public init?(raw: String) { self.init(rawValue: raw) }
    public var raw: String { rawValue }
    // Stated again here: without them an enum would get the compiler's Codable (a case as a mapping).
    public init(from decoder: any Decoder) throws {
        guard let raw = try? decoder.singleValueContainer().decode(String.self), let value = Self(rawValue: raw) else {
            throw ConfigError(refusing: decoder, Self.rule)
        }
        self = value
    }
    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// A property name in snake case: `sourceMaxFPS` → `source_max_fps`, `urlTTLSeconds` → `url_ttl_seconds`.
func snakeCased(_ name: String) -> String {
    let characters = Array(name)
    var result = ""
    for (index, character) in characters.enumerated() {
        if character.isUppercase, index > 0 {
            let previous = characters[index - 1]
            let nextIsLower = index + 1 < characters.count && characters[index + 1].isLowercase
            if previous.isLowercase || previous.isNumber || (previous.isUppercase && nextIsLower) { result += "_" }
        }
        result += character.lowercased()
    }
    return result
}

/// A key of a coding path as the file names it: a snake-cased name or a list index.
struct ConfigKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(_ key: any CodingKey) {
        stringValue = key.intValue.map { "\($0)" } ?? snakeCased(key.stringValue)
        intValue = key.intValue
    }
    init(name: String) { stringValue = name }
    init(index: Int) {
        stringValue = "\(index)"
        intValue = index
    }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { self.init(index: intValue) }
}

var nullNode: Node { Node("null", Tag(.null)) }

extension Node {
    /// The name of this node's resolved tag (Yams keeps `Tag.name` internal).
    var tagName: Tag.Name { Tag.Name(rawValue: tag.description) }
}

// MARK: - Encoding

extension CodingUserInfoKey {
    /// Set to true to encode secrets as they are rather than as "***".
    static let revealingSecrets = CodingUserInfoKey(rawValue: "revealingSecrets")!  // a valid literal key
}

/// Encodes a config type into a YAML node: mappings in declaration order, strings double-quoted, lists in flow style.
final class NodeEncoder: Encoder {
    let codingPath: [any CodingKey]
    let userInfo: [CodingUserInfoKey: Any]
    private var pairs: [(String, NodeEncoder)]?
    private var items: [NodeEncoder]?
    private var scalar: Node?

    private init(path: [any CodingKey], userInfo: [CodingUserInfoKey: Any]) {
        codingPath = path
        self.userInfo = userInfo
    }

    static func node(_ value: some Encodable, revealingSecrets: Bool) -> Node {
        let encoder = NodeEncoder(path: [], userInfo: [.revealingSecrets: revealingSecrets])
        // The config's types encode without failing (no encoder call of theirs throws).
        try? encoder.encode(value)
        return encoder.node
    }

    var node: Node {
        if let pairs { return Node(pairs.map { (Node($0.0), $0.1.node) }) }
        if let items { return Node(items.map(\.node), Tag(.seq), .flow) }
        return scalar ?? nullNode
    }

    fileprivate func child(_ key: any CodingKey) -> NodeEncoder {
        NodeEncoder(path: codingPath + [ConfigKey(key)], userInfo: userInfo)
    }

    fileprivate func encode(_ value: some Encodable) throws {
        switch value {
        case let text as String: scalar = Node(text, Tag(.str), .doubleQuoted)
        case let flag as Bool: scalar = Node(flag ? "true" : "false", Tag(.bool))
        case let number as Int: scalar = Node(String(number), Tag(.int))
        case let number as Double: scalar = Node(String(number), Tag(.float))
        default: try value.encode(to: self)
        }
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        pairs = pairs ?? []
        return KeyedEncodingContainer(Keyed(encoder: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        items = items ?? []
        return Unkeyed(encoder: self)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { Single(encoder: self) }

    private struct Keyed<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let encoder: NodeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }

        private func add(_ key: any CodingKey) -> NodeEncoder {
            let child = encoder.child(key)
            encoder.pairs?.append((snakeCased(key.stringValue), child))
            return child
        }
        mutating func encodeNil(forKey key: Key) {
            _ = add(key)
        }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws { try add(key).encode(value) }
        mutating func nestedContainer<Nested: CodingKey>(keyedBy type: Nested.Type, forKey key: Key)
            -> KeyedEncodingContainer<Nested>
        {
            add(key).container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            add(key).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder { add(ConfigKey(name: "super")) }
        mutating func superEncoder(forKey key: Key) -> any Encoder { add(key) }
    }

    private struct Unkeyed: UnkeyedEncodingContainer {
        let encoder: NodeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }
        var count: Int { encoder.items?.count ?? 0 }

        private func add() -> NodeEncoder {
            let child = encoder.child(ConfigKey(index: count))
            encoder.items?.append(child)
            return child
        }
        mutating func encodeNil() {
            _ = add()
        }
        mutating func encode<T: Encodable>(_ value: T) throws { try add().encode(value) }
        mutating func nestedContainer<Nested: CodingKey>(keyedBy type: Nested.Type) -> KeyedEncodingContainer<Nested> {
            add().container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer { add().unkeyedContainer() }
        mutating func superEncoder() -> any Encoder { add() }
    }

    private struct Single: SingleValueEncodingContainer {
        let encoder: NodeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }
        mutating func encodeNil() { encoder.scalar = nullNode }
        mutating func encode<T: Encodable>(_ value: T) throws { try encoder.encode(value) }
    }
}

// MARK: - Decoding

/// Decodes a config type from a YAML node (the file merged over the defaults). Keys not read by the type are
/// refused; a key left out reads as null.
struct NodeDecoder: Decoder, SingleValueDecodingContainer {
    let node: Node
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }
    /// The keys read from this mapping (nil: not read as a mapping).
    private let read = KeysRead()

    private final class KeysRead {
        var names: Set<String>?
    }

    init(node: Node, codingPath: [any CodingKey]) {
        self.node = node
        self.codingPath = codingPath
    }

    static func decode<T: Decodable>(_ type: T.Type, from node: Node, path: [any CodingKey] = []) throws -> T {
        let decoder = NodeDecoder(node: node, codingPath: path)
        let value = try T(from: decoder)
        if let read = decoder.read.names, case .mapping(let mapping) = node,
           let unknown = mapping.keys.map({ $0.string ?? "\($0)" }).sorted().first(where: { !read.contains($0) })
        {
            throw ConfigError(key: ConfigError.key(path + [ConfigKey(name: unknown)]), "is not a known key")
        }
        return value
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .mapping(let mapping) = node else { throw ConfigError(refusing: self, "must be a mapping") }
        read.names = read.names ?? []
        return KeyedDecodingContainer(Keyed(decoder: self, mapping: mapping))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .sequence(let sequence) = node else { throw ConfigError(refusing: self, "must be a list") }
        return Unkeyed(decoder: self, nodes: Array(sequence))
    }

    func singleValueContainer() -> any SingleValueDecodingContainer { self }

    func decodeNil() -> Bool { node.tagName == .null }

    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let value: Any? = switch type {
        case is String.Type: string
        case is Int.Type: int
        case is Double.Type: double
        case is Bool.Type: bool
        default: try T(from: self)
        }
        guard let value = value as? T else {
            let rules: [ObjectIdentifier: String] = [ObjectIdentifier(String.self): "must be a string",
                                                     ObjectIdentifier(Int.self): "must be an integer",
                                                     ObjectIdentifier(Double.self): "must be a number",
                                                     ObjectIdentifier(Bool.self): "must be true or false"]
            throw ConfigError(refusing: self, rules[ObjectIdentifier(type)] ?? "must be a \(type)")
        }
        return value
    }

    // Scalars the file gives as such or as strings (as the environment gives every value).
    private var text: (String, Tag.Name)? { node.scalar.map { ($0.string, node.tagName) } }
    private var string: String? {
        guard let (text, tag) = text, tag == .str || tag == .int else { return nil }
        return text
    }
    private var int: Int? {
        guard let (text, tag) = text else { return nil }
        return tag == .int ? node.int : tag == .str ? Int(text) : nil
    }
    private var double: Double? {
        guard let (text, tag) = text else { return nil }
        return tag == .float || tag == .int ? node.float ?? Double(text) : tag == .str ? Double(text) : nil
    }
    private var bool: Bool? {
        guard let (text, tag) = text else { return nil }
        return tag == .bool ? node.bool : tag == .str ? ["true": true, "false": false][text.lowercased()] : nil
    }

    private struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let decoder: NodeDecoder
        let mapping: Node.Mapping
        var codingPath: [any CodingKey] { decoder.codingPath }
        // The config's types read the keys they know by name.
        var allKeys: [Key] { [] }

        private func value(_ key: Key) -> Node? {
            let name = snakeCased(key.stringValue)
            decoder.read.names?.insert(name)
            return mapping.first { $0.key.string == name }?.value
        }
        func contains(_ key: Key) -> Bool { value(key) != nil }
        func decodeNil(forKey key: Key) -> Bool { (value(key) ?? nullNode).tagName == .null }
        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
            try NodeDecoder.decode(type, from: value(key) ?? nullNode, path: codingPath + [ConfigKey(key)])
        }
        func nestedContainer<Nested: CodingKey>(keyedBy type: Nested.Type, forKey key: Key) throws
            -> KeyedDecodingContainer<Nested>
        {
            try superDecoder(forKey: key).container(keyedBy: type)
        }
        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            try superDecoder(forKey: key).unkeyedContainer()
        }
        func superDecoder() -> any Decoder { decoder }
        func superDecoder(forKey key: Key) -> any Decoder {
            NodeDecoder(node: value(key) ?? nullNode, codingPath: codingPath + [ConfigKey(key)])
        }
    }

    private struct Unkeyed: UnkeyedDecodingContainer {
        let decoder: NodeDecoder
        let nodes: [Node]
        var currentIndex = 0
        var codingPath: [any CodingKey] { decoder.codingPath }
        var count: Int? { nodes.count }
        var isAtEnd: Bool { currentIndex >= nodes.count }

        private mutating func next() throws -> NodeDecoder {
            guard !isAtEnd else { throw ConfigError(refusing: decoder, "has too few items") }
            defer { currentIndex += 1 }
            return NodeDecoder(node: nodes[currentIndex], codingPath: codingPath + [ConfigKey(index: currentIndex)])
        }
        mutating func decodeNil() throws -> Bool {
            guard !isAtEnd, nodes[currentIndex].tagName == .null else { return false }
            currentIndex += 1
            return true
        }
        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
            let item = try next()
            return try NodeDecoder.decode(type, from: item.node, path: item.codingPath)
        }
        mutating func nestedContainer<Nested: CodingKey>(keyedBy type: Nested.Type) throws -> KeyedDecodingContainer<Nested> {
            try next().container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
        mutating func superDecoder() throws -> any Decoder { try next() }
    }
}

// MARK: - Rules

/// A property wrapper whose value is written in the file as it is, checked as it is decoded.
public protocol CheckedValue: ConfigValue where Raw == Value {
    associatedtype Value
    var wrappedValue: Value { get }
    init(wrappedValue: Value)
    /// Whether `value` keeps the rule.
    static func accepts(_ value: Raw) -> Bool
}

extension CheckedValue {
    public init?(raw: Raw) {
        guard Self.accepts(raw) else { return nil }
        self.init(wrappedValue: raw)
    }
    public var raw: Raw { wrappedValue }
}

/// An integer from `low` to `high`.
@propertyWrapper public struct Within<let low: Int, let high: Int>: CheckedValue {
    public var wrappedValue: Int
    public init(wrappedValue: Int) { self.wrappedValue = wrappedValue }
    public static var rule: String { "must be an integer from \(low) to \(high)" }
    public static func accepts(_ value: Int) -> Bool { (low...high).contains(value) }
}

/// A number from `low` to `high` thousandths.
@propertyWrapper public struct WithinThousandths<let low: Int, let high: Int>: CheckedValue {
    public var wrappedValue: Double
    public init(wrappedValue: Double) { self.wrappedValue = wrappedValue }
    public static var rule: String { "must be a number from \(Double(low) / 1000) to \(Double(high) / 1000)" }
    public static func accepts(_ value: Double) -> Bool { (Double(low) / 1000...Double(high) / 1000).contains(value) }
}

/// A non-empty string.
@propertyWrapper public struct NonEmpty: CheckedValue {
    public var wrappedValue: String
    public init(wrappedValue: String) { self.wrappedValue = wrappedValue }
    public static let rule = "must be a non-empty string"
    public static func accepts(_ value: String) -> Bool { !value.isEmpty }
}

/// An organization id.
@propertyWrapper public struct OrganizationID: CheckedValue {
    public var wrappedValue: String
    public init(wrappedValue: String) { self.wrappedValue = wrappedValue }
    public static let rule = "must be 1-64 characters of A-Z a-z 0-9 _ . -"
    public static func accepts(_ value: String) -> Bool {
        value.range(of: #"^[A-Za-z0-9_.-]{1,64}$"#, options: .regularExpression) != nil
    }
}

/// An object-key prefix: path segments of A-Z a-z 0-9 _ . - joined by `/`, no leading or trailing slash.
@propertyWrapper public struct KeyPrefix: CheckedValue {
    public var wrappedValue: String
    public init(wrappedValue: String) { self.wrappedValue = wrappedValue }
    public static let rule = "must be empty or segments of A-Z a-z 0-9 _ . - joined by /, at most 256 characters"
    public static func accepts(_ value: String) -> Bool {
        value.isEmpty || value.range(of: #"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"#, options: .regularExpression) != nil
            && value.count <= 256 && !value.split(separator: "/").contains { $0 == "." || $0 == ".." }
    }
}

/// A non-empty string, or nil when left out.
@propertyWrapper public struct NonEmptyOrNull: CheckedValue {
    public var wrappedValue: String?
    public init(wrappedValue: String?) { self.wrappedValue = wrappedValue }
    public static let rule = "must be a non-empty string or null"
    public static func accepts(_ value: String?) -> Bool { value?.isEmpty != true }
}

/// A cluster node's name, or nil when left out.
@propertyWrapper public struct NodeName: CheckedValue {
    public var wrappedValue: String?
    public init(wrappedValue: String?) { self.wrappedValue = wrappedValue }
    public static let rule = "must be 1-64 characters of A-Z a-z 0-9 _ . -"
    public static func accepts(_ value: String?) -> Bool {
        value.map { $0.range(of: #"^[A-Za-z0-9_.-]{1,64}$"#, options: .regularExpression) != nil } ?? true
    }
}

/// An S3 bucket name, or nil when left out.
@propertyWrapper public struct BucketName: CheckedValue {
    public var wrappedValue: String?
    public init(wrappedValue: String?) { self.wrappedValue = wrappedValue }
    public static let rule = "must be a bucket name: 3-63 characters of a-z 0-9 . -, starting and ending with a letter or digit"
    public static func accepts(_ value: String?) -> Bool {
        value.map { $0.range(of: #"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"#, options: .regularExpression) != nil } ?? true
    }
}

/// An IPv4 address in dotted-quad form.
@propertyWrapper public struct IPv4: CheckedValue {
    public var wrappedValue: String
    public init(wrappedValue: String) { self.wrappedValue = wrappedValue }
    public static let rule = "must be an IPv4 address"
    public static func accepts(_ value: String) -> Bool {
        let parts = value.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// A secret of at least `minLength` characters (`Text` is `String`, or `String?` when it may be left out), written
/// as "***" unless secrets are revealed.
@propertyWrapper public struct Secret<Text: Codable & Sendable & Equatable, let minLength: Int>: CheckedValue {
    public var wrappedValue: Text
    public init(wrappedValue: Text) { self.wrappedValue = wrappedValue }
    public static var rule: String { "must be a string of at least \(minLength) characters" }
    public static var showsValue: Bool { false }
    public static func accepts(_ value: Text) -> Bool { ((value as? String)?.count ?? minLength) >= minLength }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        if encoder.userInfo[.revealingSecrets] as? Bool == true || wrappedValue as? String == nil {
            try container.encode(wrappedValue)
        } else {
            try container.encode("***")
        }
    }
}

/// An http:// or https:// URL, kept without trailing slashes; nil when left out.
@propertyWrapper public struct PublicURL: ConfigValue {
    public var wrappedValue: String?
    public static let rule = "must be an http:// or https:// URL"

    public init(wrappedValue: String?) { self.wrappedValue = wrappedValue }
    public init?(raw: String?) {
        guard var url = raw else {
            wrappedValue = nil
            return
        }
        while url.hasSuffix("/") { url.removeLast() }
        guard let components = URLComponents(string: url), ["http", "https"].contains(components.scheme ?? ""),
              components.host?.isEmpty == false
        else { return nil }
        wrappedValue = url
    }
    public var raw: String? { wrappedValue }
}

/// A postgres:// or postgresql:// URL with a host; nil when left out. Printed with its password masked.
@propertyWrapper public struct PostgresURL: CheckedValue {
    public var wrappedValue: String?
    public init(wrappedValue: String?) { self.wrappedValue = wrappedValue }
    public static let rule = "must be a postgres:// or postgresql:// URL with a host, e.g. postgres://user:password@db:5432/viewportd"
    public static var showsValue: Bool { false }
    public static func accepts(_ value: String?) -> Bool {
        guard let value else { return true }
        guard let components = URLComponents(string: value) else { return false }
        return ["postgres", "postgresql"].contains(components.scheme ?? "") && components.host?.isEmpty == false
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        guard encoder.userInfo[.revealingSecrets] as? Bool != true, let url = wrappedValue,
              var components = URLComponents(string: url), components.password != nil
        else { return try container.encode(wrappedValue) }
        components.password = "***"
        try container.encode(components.string ?? "***")
    }
}

/// A range of ports, `first-last` in the file.
@propertyWrapper public struct PortRange: ConfigValue {
    public var wrappedValue: ClosedRange<Int>
    public static let rule = "must be first-last, e.g. 5900-5999"

    public init(wrappedValue: ClosedRange<Int>) { self.wrappedValue = wrappedValue }
    public init?(raw: String) {
        let parts = raw.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard parts.count == 2, let first = parts[0], let last = parts[1], 1 <= first, first <= last, last <= 65535
        else { return nil }
        wrappedValue = first...last
    }
    public var raw: String { "\(wrappedValue.lowerBound)-\(wrappedValue.upperBound)" }
}

/// A list of IPv4 or IPv6 CIDRs; a wrong one is named by its index.
@propertyWrapper public struct CIDRs: Codable, Sendable, Equatable {
    public var wrappedValue: [String]

    private struct Item: CheckedValue {
        var wrappedValue: String
        static let rule = "must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8"
        static func accepts(_ value: String) -> Bool { CIDR(value) != nil }
    }

    public init(wrappedValue: [String]) { self.wrappedValue = wrappedValue }
    public init(from decoder: any Decoder) throws { wrappedValue = try [Item](from: decoder).map(\.wrappedValue) }
    public func encode(to encoder: any Encoder) throws { try wrappedValue.encode(to: encoder) }
}

/// A list item that no other item of its list may share `identity` with.
public protocol Distinct: Codable, Sendable, Equatable {
    var identity: String { get }
    /// The key of `identity`, named when an item repeats it.
    static var identityKey: any CodingKey { get }
}

/// A list of `Distinct` items.
@propertyWrapper public struct DistinctItems<Item: Distinct>: Codable, Sendable, Equatable {
    public var wrappedValue: [Item]

    public init(wrappedValue: [Item]) { self.wrappedValue = wrappedValue }
    public init(from decoder: any Decoder) throws {
        wrappedValue = try [Item](from: decoder)
        for (index, item) in wrappedValue.enumerated()
        where wrappedValue[..<index].contains(where: { $0.identity == item.identity }) {
            let path = decoder.codingPath + [ConfigKey(index: index), ConfigKey(Item.identityKey)]
            throw ConfigError(key: ConfigError.key(path), "is listed twice")
        }
    }
    public func encode(to encoder: any Encoder) throws { try wrappedValue.encode(to: encoder) }
}
