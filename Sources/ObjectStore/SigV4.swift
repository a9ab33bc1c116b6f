public import Foundation
import Digests

/// AWS Signature Version 4, pure: canonical request, string to sign, signing key, Authorization header, and presigned
/// query strings. Paths and query items are given decoded and URI-encoded here: unreserved characters (A-Z a-z 0-9
/// - . _ ~) are kept, every other UTF-8 byte becomes %XY; in the path '/' is kept. Query items are sorted by encoded
/// name, then encoded value.
///
/// S3 signs the path exactly as it is sent (each segment encoded once, no "." / ".." or empty-segment removal); the
/// generic services of the AWS test suite normalize it first: `normalizesPath` chooses.
public struct SigV4: Sendable {
    public var accessKeyID: String
    public var secretAccessKey: String
    /// Sent as x-amz-security-token (signed) or, presigned, as X-Amz-Security-Token.
    public var sessionToken: String?
    public var region: String
    public var service: String
    public var normalizesPath: Bool

    public init(
        accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil, region: String, service: String = "s3",
        normalizesPath: Bool = false
    ) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.region = region
        self.service = service
        self.normalizesPath = normalizesPath
    }

    /// A request to sign. `headers` are all headers to sign, including host and x-amz-date (and x-amz-content-sha256
    /// for S3); `payloadHash` is the hex SHA-256 of the body, or "UNSIGNED-PAYLOAD".
    public struct Request: Sendable {
        public var method: String
        /// Decoded, e.g. "/bucket/a b.txt".
        public var path: String
        /// Decoded name/value pairs, in any order.
        public var query: [QueryItem]
        public var headers: [Header]
        public var payloadHash: String

        public init(method: String, path: String, query: [QueryItem] = [], headers: [Header], payloadHash: String) {
            self.method = method
            self.path = path
            self.query = query
            self.headers = headers
            self.payloadHash = payloadHash
        }
    }

    public struct QueryItem: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    public struct Header: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(_ name: String, _ value: String) { self.name = name; self.value = value }
    }

    public static let unsignedPayload = "UNSIGNED-PAYLOAD"
    public static let algorithm = "AWS4-HMAC-SHA256"

    public func canonicalRequest(_ request: Request) -> String {
        [
            request.method, canonicalPath(request.path), Self.canonicalQuery(request.query),
            canonicalHeaders(request.headers).map { "\($0.name):\($0.value)\n" }.joined(),
            signedHeaderNames(request.headers), request.payloadHash,
        ].joined(separator: "\n")
    }

    public func stringToSign(canonicalRequest: String, date: Date) -> String {
        [Self.algorithm, Self.timestamp(date), scope(date), Digest.sha256(Data(canonicalRequest.utf8)).hex]
            .joined(separator: "\n")
    }

    /// HMAC chain of "AWS4" + secret over the day, region, service and "aws4_request".
    public func signingKey(date: Date) -> Data {
        [region, service, "aws4_request"].reduce(
            Digest.hmacSHA256(key: Data("AWS4\(secretAccessKey)".utf8), Data(Self.day(date).utf8))
        ) { key, part in Digest.hmacSHA256(key: key, Data(part.utf8)) }
    }

    public func signature(_ request: Request, date: Date) -> String {
        let toSign = stringToSign(canonicalRequest: canonicalRequest(request), date: date)
        return Digest.hmacSHA256(key: signingKey(date: date), Data(toSign.utf8)).hex
    }

    /// The Authorization header's value for `request`, whose headers must already hold x-amz-date (and the session
    /// token, if any).
    public func authorization(_ request: Request, date: Date) -> String {
        "\(Self.algorithm) Credential=\(accessKeyID)/\(scope(date)), SignedHeaders=\(signedHeaderNames(request.headers)), "
            + "Signature=\(signature(request, date: date))"
    }

    /// The encoded query string of a presigned request (only `host` signed, payload unsigned), ending with
    /// X-Amz-Signature. `expiresIn` is clamped to 1...604800 seconds.
    public func presignedQuery(method: String, path: String, host: String, expiresIn: Int, date: Date) -> String {
        var query = [
            QueryItem("X-Amz-Algorithm", Self.algorithm),
            QueryItem("X-Amz-Credential", "\(accessKeyID)/\(scope(date))"),
            QueryItem("X-Amz-Date", Self.timestamp(date)),
            QueryItem("X-Amz-Expires", String(min(max(expiresIn, 1), 604_800))),
            QueryItem("X-Amz-SignedHeaders", "host"),
        ]
        if let sessionToken { query.append(QueryItem("X-Amz-Security-Token", sessionToken)) }
        let request = Request(
            method: method, path: path, query: query, headers: [Header("host", host)], payloadHash: Self.unsignedPayload)
        // Last, as in AWS's examples; the order of a query does not matter to S3.
        return Self.canonicalQuery(query) + "&X-Amz-Signature=" + signature(request, date: date)
    }

    /// "20150830/us-east-1/service/aws4_request".
    public func scope(_ date: Date) -> String { "\(Self.day(date))/\(region)/\(service)/aws4_request" }

    /// The path URI-encoded (and normalized when `normalizesPath`).
    public func canonicalPath(_ path: String) -> String {
        var path = path.isEmpty ? "/" : path
        if normalizesPath {
            var segments: [Substring] = []
            for segment in path.split(separator: "/", omittingEmptySubsequences: true) {
                switch segment {
                case ".": continue
                case "..": _ = segments.popLast()
                default: segments.append(segment)
                }
            }
            let trailing = path.hasSuffix("/") && !segments.isEmpty
            path = "/" + segments.joined(separator: "/") + (trailing ? "/" : "")
        }
        return Self.uriEncode(path, keepingSlash: true)
    }

    /// Items encoded, sorted by name then value, joined as name=value&...
    public static func canonicalQuery(_ items: [QueryItem]) -> String {
        items.map { (uriEncode($0.name), uriEncode($0.value)) }
            .sorted { ($0.0.utf8.lexicographicallyPrecedes($1.0.utf8)) || ($0.0 == $1.0 && $0.1.utf8.lexicographicallyPrecedes($1.1.utf8)) }
            .map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    }

    /// Unreserved characters kept, all other UTF-8 bytes as upper-case %XY ('/' kept when `keepingSlash`).
    public static func uriEncode(_ string: String, keepingSlash: Bool = false) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out = [UInt8]()
        out.reserveCapacity(string.utf8.count)
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.append(byte)
            case UInt8(ascii: "/") where keepingSlash: out.append(byte)
            default: out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0f)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// "20150830T123600Z" (UTC).
    public static func timestamp(_ date: Date) -> String {
        let c = utc(date)
        return String(format: "%04d%02d%02dT%02d%02d%02dZ", c.year, c.month, c.day, c.hour, c.minute, c.second)
    }

    static func day(_ date: Date) -> String { String(timestamp(date).prefix(8)) }

    private static func utc(_ date: Date) -> (year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int) {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? TimeZone(secondsFromGMT: 0) ?? calendar.timeZone
        let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
        return (c.year ?? 0, c.month ?? 0, c.day ?? 0, c.hour ?? 0, c.minute ?? 0, c.second ?? 0)
    }

    /// Lower-cased names sorted, values trimmed with inner runs of spaces collapsed, repeated names joined by ','.
    private func canonicalHeaders(_ headers: [Header]) -> [Header] {
        var merged: [String: [String]] = [:]
        for header in headers {
            let value = header.value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            merged[header.name.lowercased(), default: []].append(value)
        }
        return merged.keys.sorted().map { Header($0, merged[$0, default: []].joined(separator: ",")) }
    }

    private func signedHeaderNames(_ headers: [Header]) -> String {
        canonicalHeaders(headers).map(\.name).joined(separator: ";")
    }
}
