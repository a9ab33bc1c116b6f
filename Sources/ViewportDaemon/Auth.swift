import Digests
import Foundation
import Synchronization

/// API keys and viewer tokens.
///
/// API keys are held as SHA-256 digests, so a lookup compares digests rather than secrets. Viewer tokens are
/// `v1.<session>.<expires>.<flags>.<signature>` with an HMAC-SHA256 signature over everything before it: bound to
/// one session, expiring, and useless once tampered with.
final class Auth: Sendable {
    /// What a valid viewer token grants.
    struct ViewerGrant: Equatable {
        var sessionID: String
        var expiresAt: Date
        var control: Bool
    }

    enum TokenProblem: Error, Equatable { case malformed, badSignature, expired, otherSession }

    private let organizations: Mutex<[Data: String]>
    private let tokenKey: Data

    init(apiKeys: [Config.APIKey], tokenSecret: Data) {
        organizations = Mutex(Self.index(apiKeys))
        tokenKey = tokenSecret
    }

    private static func index(_ keys: [Config.APIKey]) -> [Data: String] {
        Dictionary(keys.map { (Digest.sha256(Data($0.key.utf8)), $0.organizationID) }, uniquingKeysWith: { a, _ in a })
    }

    /// Replaces the API keys (on reload).
    func setAPIKeys(_ keys: [Config.APIKey]) { organizations.withLock { $0 = Self.index(keys) } }

    /// The organization of an API key, or nil for an unknown key.
    func organization(apiKey: String) -> String? {
        let digest = Digest.sha256(Data(apiKey.utf8))
        return organizations.withLock { $0[digest] }
    }

    /// A signed token for watching `sessionID` until `expiresAt`.
    func viewerToken(sessionID: String, expiresAt: Date, control: Bool = false) -> String {
        let body = "v1.\(sessionID).\(Int(expiresAt.timeIntervalSince1970)).\(control ? "c" : "v")"
        return body + "." + signature(body)
    }

    /// Checks a viewer token for `sessionID`.
    func verifyViewerToken(_ token: String, sessionID: String, now: Date = Date()) throws(TokenProblem) -> ViewerGrant {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 5, parts[0] == "v1", let expires = Int(parts[2]), ["c", "v"].contains(parts[3]) else {
            throw .malformed
        }
        let body = parts[0..<4].joined(separator: ".")
        guard let presented = Data(base64URL: parts[4]),
              Digest.constantTimeEqual(presented, Digest.hmacSHA256(key: tokenKey, Data(body.utf8)))
        else { throw .badSignature }
        let expiresAt = Date(timeIntervalSince1970: Double(expires))
        guard expiresAt > now else { throw .expired }
        guard parts[1] == sessionID else { throw .otherSession }
        return ViewerGrant(sessionID: parts[1], expiresAt: expiresAt, control: parts[3] == "c")
    }

    /// The `expires` and `signature` query values that let anyone holding the URL fetch one artifact until
    /// `expiresAt`.
    func artifactSignature(artifactID: String, expiresAt: Date) -> (expires: Int, signature: String) {
        let expires = Int(expiresAt.timeIntervalSince1970)
        return (expires, signature("artifact.\(artifactID).\(expires)"))
    }

    /// Checks an artifact URL's `expires` and `signature`.
    func verifyArtifactSignature(artifactID: String, expires: String, signature presented: String, now: Date = Date())
        throws(TokenProblem)
    {
        guard let seconds = Int(expires), let mac = Data(base64URL: presented) else { throw .malformed }
        let expected = Digest.hmacSHA256(key: tokenKey, Data("artifact.\(artifactID).\(seconds)".utf8))
        guard Digest.constantTimeEqual(mac, expected) else { throw .badSignature }
        guard Double(seconds) > now.timeIntervalSince1970 else { throw .expired }
    }

    private func signature(_ body: String) -> String {
        Digest.hmacSHA256(key: tokenKey, Data(body.utf8)).base64URLEncoded()
    }

    /// The token secret from the config, else one derived from the cluster's secret (so that every node accepts
    /// the tokens and artifact URLs any node signs), else the one in the state directory, generated on first start.
    static func tokenSecret(config: Config) throws -> Data {
        if let secret = config.viewerTokenSecret { return Data(secret.utf8) }
        if config.cluster.databaseURL != nil, let secret = config.cluster.secret {
            return Digest.hmacSHA256(key: Data(secret.utf8), Data("viewportd viewer tokens".utf8))
        }
        let path = URL(fileURLWithPath: config.stateDir).appendingPathComponent("viewer-token.key").path
        if let existing = FileManager.default.contents(atPath: path), existing.count >= 32 { return existing }
        let secret = Digest.randomBytes(32)
        guard FileManager.default.createFile(atPath: path, contents: secret, attributes: [.posixPermissions: 0o600]) else {
            throw DaemonError("cannot write \(path)")
        }
        return secret
    }
}

extension Data {
    /// Base64url without padding.
    func base64URLEncoded() -> String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    init?(base64URL text: String) {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.count % 4) % 4)
        self.init(base64Encoded: base64)
    }
}

/// A start-up or runtime failure of the daemon.
public struct DaemonError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
