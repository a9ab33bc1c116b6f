public import Foundation
import Yams

/// The daemon's configuration: compiled defaults, overridden by the YAML file, overridden by the environment.
///
/// Keys (type, default): meaning
/// - `listen` (host:port, `127.0.0.1:8200`): HTTP and WebSocket address; port 0 picks a free one.
/// - `state_dir` (path, `/var/lib/viewportd`): SQLite database and generated secrets.
/// - `public_url` (URL, `http://<listen>`): base of the URLs handed out (watch pages); no trailing slash.
/// - `log_level` (trace|debug|info|notice|warning|error|critical, `info`).
/// - `api_keys` (list of `{key, organization_id}`, empty): who may use the API; keys at least 16 characters.
/// - `viewer_token_secret` (string, generated into `state_dir/viewer-token.key`): HMAC key of viewer tokens.
/// - `screencast.quality` (1-100, 75), `screencast.max_width` (16-4096, 1280), `screencast.max_height`
///   (16-4096, 720): the CDP screencast's JPEG quality and size limit.
/// - `viewer.queue_frames` (1-64, 2): frames queued per viewer before the oldest is dropped.
/// - `viewer.token_ttl_seconds` (10-86400, 300): default lifetime of viewer tokens.
/// - `viewer.max_pending_kb` (16-65536, 1024): bytes of replies (pongs, errors, statuses) a viewer may leave
///   unread; past it the viewer is closed with 1008.
/// - `cdp.retry_seconds` (0-3600, 30): how long a lost browser connection is retried before the session fails.
/// - `cdp.max_message_mb` (1-256, 16): largest message a browser may send; a bigger one closes the connection.
/// - `cdp.timeout_seconds` (1-120, 10): connecting, the WebSocket handshake and `/json/version` must finish in this.
/// - `recording.enabled` (bool, true): record runs to H.264 MP4.
/// - `recording.preset` (x264 preset, `veryfast`), `recording.crf` (0-51, 28), `recording.threads` (1-16, 1): encoder.
/// - `recording.queue_frames` (16-3600, 300): frames queued for the encoder before the oldest is dropped (counted).
/// - `recording.queue_mb` (1-4096, 128): the same queue's bound in megabytes (frames with pixels are large).
/// - `screenshot_format` (jpeg|png, `jpeg`): step screenshots as the exact JPEG viewers got, or lossless PNG.
/// - `artifacts.url_ttl_seconds` (60-604800, 3600): lifetime of the signed artifact URLs handed out.
/// - `webhooks.secrets` (list of `{organization_id, secret}`, empty): HMAC key of each organization's webhooks.
/// - `webhooks.max_attempts` (1-20, 5), `webhooks.timeout_seconds` (1-120, 10): delivery retries and timeout.
/// - `retention.max_age_days` (1-3650, 30): closed sessions' artifacts older than this are deleted.
/// - `retention.max_disk_gb` (0.001-100000, 50): above this, the oldest closed sessions' artifacts are deleted.
/// - `retention.sweep_interval_seconds` (10-86400, 300): how often retention runs.
/// - `vnc.enabled` (bool, true): a VNC screen per session for vncviewer and noVNC.
/// - `vnc.listen` (IPv4 address, `127.0.0.1`), `vnc.port_range` (`first-last`, `5900-5999`): where the screens listen.
/// - `vnc.password_ttl_seconds` (10-86400, 300): default lifetime of minted VNC passwords.
/// - `vnc.source_max_fps` (1-60, 30): frames a second taken from a session's VNC server (`vnc_address`).
/// - `vnc.source_max_width`, `vnc.source_max_height` (16-16384, 4096): a VNC server's larger screen is refused.
/// - `vnc.source_timeout_seconds` (1-120, 10): connecting to a VNC server, its handshake and each read.
/// - `vnc.handshake_timeout_seconds` (1-120, 20): a VNC client must finish its handshake (a person may type the
///   password) in this.
/// - `limits.sessions_per_organization` (1-100000, 100), `limits.recordings_per_organization` (1-100000, 20),
///   `limits.viewers_per_session` (1-100000, 200), `limits.vnc_screens_per_organization` (0-100000, 50),
///   `limits.retry_webhook_per_minute` (1-600, 6), `limits.unauthenticated_per_address` (1-10000, 32):
///   per-tenant limits, answered with 429.
/// - `network.browser_allow` (list of CIDRs, loopback and private ranges): hosts `browser_address` and
///   `vnc_address` may name. Link-local (169.254.0.0/16, fe80::/10) only when listed.
/// - `network.webhook_allow` (list of CIDRs, empty): loopback, private and link-local addresses webhooks may
///   reach (public addresses always may).
///
/// Every key can be set from the environment as `VIEWPORTD_` + the key path in upper case with dots and
/// dashes as underscores (`VIEWPORTD_SCREENCAST_MAX_WIDTH`); lists in YAML flow style
/// (`VIEWPORTD_API_KEYS='[{key: ..., organization_id: ...}]'`). `VIEWPORTD_API_KEY` with
/// `VIEWPORTD_ORGANIZATION_ID` adds one API key.
public struct Config: Sendable, Equatable {
    public struct APIKey: Sendable, Equatable {
        public var key: String
        public var organizationID: String
        public init(key: String, organizationID: String) {
            self.key = key
            self.organizationID = organizationID
        }
    }

    public var listenHost = "127.0.0.1"
    public var listenPort = 8200
    public var stateDir = "/var/lib/viewportd"
    public var publicURL: String?
    public var logLevel = "info"
    public var apiKeys: [APIKey] = []
    public var viewerTokenSecret: String?
    public var screencastQuality = 75
    public var screencastMaxWidth = 1280
    public var screencastMaxHeight = 720
    public var viewerQueueFrames = 2
    public var viewerTokenTTLSeconds = 300
    public var cdpRetrySeconds = 30
    public var cdpMaxMessageMB = 16
    public var cdpTimeoutSeconds = 10
    public var viewerMaxPendingKB = 1024
    public var recordingQueueMB = 128
    public var vncSourceMaxWidth = 4096
    public var vncSourceMaxHeight = 4096
    public var vncSourceTimeoutSeconds = 10
    public var vncHandshakeTimeoutSeconds = 20
    public var limitSessionsPerOrganization = 100
    public var limitRecordingsPerOrganization = 20
    public var limitViewersPerSession = 200
    public var limitVNCScreensPerOrganization = 50
    public var limitRetryWebhookPerMinute = 6
    public var limitUnauthenticatedPerAddress = 32
    /// CIDRs `browser_address` and `vnc_address` may reach.
    public var networkBrowserAllow = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    /// Non-public CIDRs webhooks may reach.
    public var networkWebhookAllow: [String] = []
    public var recordingEnabled = true
    public var recordingPreset = "veryfast"
    public var recordingCRF = 28
    public var recordingThreads = 1
    public var recordingQueueFrames = 300
    public var screenshotFormat = ScreenshotFormat.jpeg
    public var artifactURLTTLSeconds = 3600
    /// Webhook signing secret by organization id.
    public var webhookSecrets: [String: String] = [:]
    public var webhookMaxAttempts = 5
    public var webhookTimeoutSeconds = 10
    public var retentionMaxAgeDays = 30
    public var retentionMaxDiskGB = 50.0
    public var retentionSweepIntervalSeconds = 300
    public var vncEnabled = true
    public var vncListen = "127.0.0.1"
    public var vncPorts: ClosedRange<Int> = 5900...5999
    public var vncPasswordTTLSeconds = 300
    public var vncSourceMaxFPS = 30

    /// How step screenshots are stored.
    public enum ScreenshotFormat: String, Sendable, CaseIterable { case jpeg, png }

    /// The compiled defaults.
    public init() {}

    /// Base URL for links handed out.
    public var effectivePublicURL: String { publicURL ?? "http://\(listenHost):\(listenPort)" }

    static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// Every leaf key, as written in the file.
    static let keys = [
        "listen", "state_dir", "public_url", "log_level", "api_keys", "viewer_token_secret",
        "screencast.quality", "screencast.max_width", "screencast.max_height",
        "viewer.queue_frames", "viewer.token_ttl_seconds", "viewer.max_pending_kb",
        "cdp.retry_seconds", "cdp.max_message_mb", "cdp.timeout_seconds",
        "recording.enabled", "recording.preset", "recording.crf", "recording.threads", "recording.queue_frames",
        "recording.queue_mb",
        "screenshot_format", "artifacts.url_ttl_seconds",
        "webhooks.secrets", "webhooks.max_attempts", "webhooks.timeout_seconds",
        "retention.max_age_days", "retention.max_disk_gb", "retention.sweep_interval_seconds",
        "vnc.enabled", "vnc.listen", "vnc.port_range", "vnc.password_ttl_seconds", "vnc.source_max_fps",
        "vnc.source_max_width", "vnc.source_max_height", "vnc.source_timeout_seconds", "vnc.handshake_timeout_seconds",
        "limits.sessions_per_organization", "limits.recordings_per_organization", "limits.viewers_per_session",
        "limits.vnc_screens_per_organization", "limits.retry_webhook_per_minute", "limits.unauthenticated_per_address",
        "network.browser_allow", "network.webhook_allow",
    ]

    /// Keys whose value is a list (given in the environment in YAML flow style).
    static let listKeys: Set = ["api_keys", "webhooks.secrets", "network.browser_allow", "network.webhook_allow"]

    /// Keys whose values are secrets: masked when the config is printed.
    static let secretKeys: Set = ["api_keys", "viewer_token_secret", "webhooks.secrets"]

    /// The environment variable of `key`: `VIEWPORTD_` + the path in upper case, dots and dashes as underscores.
    static func environmentName(_ key: String) -> String {
        "VIEWPORTD_" + key.uppercased().replacingOccurrences(of: ".", with: "_").replacingOccurrences(of: "-", with: "_")
    }

    static let x264Presets = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                              "veryslow"]

    /// Loads `yaml` (nil: defaults only) and applies `environment` overrides.
    public static func load(yaml: String?, environment: [String: String] = [:]) throws(ConfigError) -> Config {
        var tree: [String: Any] = [:]
        if let yaml, !yaml.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            let parsed: Any?
            do { parsed = try Yams.load(yaml: yaml) } catch { throw ConfigError(key: "(file)", "not valid YAML: \(error)") }
            guard let mapping = parsed as? [String: Any] else {
                throw ConfigError(key: "(file)", "the top level must be a mapping of keys")
            }
            tree = mapping
        }
        try applyEnvironment(environment, to: &tree)
        return try Config(tree: tree)
    }

    /// Loads the file at `path` (nil: defaults only) with the process environment.
    public static func load(path: String?, environment: [String: String] = ProcessInfo.processInfo.environment)
        throws(ConfigError) -> Config
    {
        guard let path else { return try load(yaml: nil, environment: environment) }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ConfigError(key: "(file)", "cannot read \(path)")
        }
        return try load(yaml: text, environment: environment)
    }

    private static func applyEnvironment(_ environment: [String: String], to tree: inout [String: Any])
        throws(ConfigError)
    {
        for key in keys {
            let name = environmentName(key)
            guard let value = environment[name] else { continue }
            if listKeys.contains(key) {
                // A list is given in YAML flow style: [{key: ..., organization_id: ...}].
                let parsed: Any?
                do { parsed = try Yams.load(yaml: value) } catch { throw ConfigError(key: name, "not valid YAML: \(error)") }
                tree.set(path: key.split(separator: ".").map(String.init), parsed ?? NSNull())
            } else {
                tree.set(path: key.split(separator: ".").map(String.init), value)
            }
        }
        if let key = environment["VIEWPORTD_API_KEY"] {
            guard let organization = environment["VIEWPORTD_ORGANIZATION_ID"] else {
                throw ConfigError(key: "VIEWPORTD_ORGANIZATION_ID", "must be set with VIEWPORTD_API_KEY")
            }
            var list = tree["api_keys"] as? [Any] ?? []
            list.append(["key": key, "organization_id": organization])
            tree["api_keys"] = list
        }
    }

    private init(tree: [String: Any]) throws(ConfigError) {
        var root = ConfigReader(tree, path: "")
        if let listen = try root.string("listen") {
            let parts = listen.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port),
                  Self.isIPv4(String(parts[0]))
            else { throw ConfigError(key: "listen", "must be IPv4-address:port, e.g. 127.0.0.1:8200 (got \"\(listen)\")") }
            listenHost = String(parts[0])
            listenPort = port
        }
        if let dir = try root.string("state_dir") {
            guard !dir.isEmpty else { throw ConfigError(key: "state_dir", "must not be empty") }
            stateDir = dir
        }
        if let url = try root.string("public_url") {
            let trimmed = url.hasSuffix("/") ? String(url.dropLast()) : url
            guard let components = URLComponents(string: trimmed), ["http", "https"].contains(components.scheme ?? ""),
                  components.host?.isEmpty == false
            else { throw ConfigError(key: "public_url", "must be an http:// or https:// URL (got \"\(url)\")") }
            publicURL = trimmed
        }
        if let level = try root.string("log_level") {
            guard Self.logLevels.contains(level) else {
                throw ConfigError(key: "log_level", "must be one of \(Self.logLevels.joined(separator: ", ")) (got \"\(level)\")")
            }
            logLevel = level
        }
        for (index, item) in try root.list("api_keys").enumerated() {
            let path = "api_keys[\(index)]"
            guard let entry = item as? [String: Any] else { throw ConfigError(key: path, "must be a mapping {key, organization_id}") }
            var reader = ConfigReader(entry, path: path)
            guard let key = try reader.string("key"), key.count >= 16 else {
                throw ConfigError(key: "\(path).key", "must be a string of at least 16 characters")
            }
            guard let organization = try reader.string("organization_id"),
                  organization.range(of: #"^[A-Za-z0-9_.-]{1,64}$"#, options: .regularExpression) != nil
            else { throw ConfigError(key: "\(path).organization_id", "must be 1-64 characters of A-Z a-z 0-9 _ . -") }
            try reader.finish()
            guard !apiKeys.contains(where: { $0.key == key }) else { throw ConfigError(key: "\(path).key", "is listed twice") }
            apiKeys.append(APIKey(key: key, organizationID: organization))
        }
        if let secret = try root.string("viewer_token_secret") {
            guard secret.count >= 32 else { throw ConfigError(key: "viewer_token_secret", "must be at least 32 characters") }
            viewerTokenSecret = secret
        }
        if var screencast = try root.section("screencast") {
            screencastQuality = try screencast.int("quality", in: 1...100) ?? screencastQuality
            screencastMaxWidth = try screencast.int("max_width", in: 16...4096) ?? screencastMaxWidth
            screencastMaxHeight = try screencast.int("max_height", in: 16...4096) ?? screencastMaxHeight
            try screencast.finish()
        }
        if var viewer = try root.section("viewer") {
            viewerQueueFrames = try viewer.int("queue_frames", in: 1...64) ?? viewerQueueFrames
            viewerTokenTTLSeconds = try viewer.int("token_ttl_seconds", in: 10...86400) ?? viewerTokenTTLSeconds
            viewerMaxPendingKB = try viewer.int("max_pending_kb", in: 16...65536) ?? viewerMaxPendingKB
            try viewer.finish()
        }
        if var cdp = try root.section("cdp") {
            cdpRetrySeconds = try cdp.int("retry_seconds", in: 0...3600) ?? cdpRetrySeconds
            cdpMaxMessageMB = try cdp.int("max_message_mb", in: 1...256) ?? cdpMaxMessageMB
            cdpTimeoutSeconds = try cdp.int("timeout_seconds", in: 1...120) ?? cdpTimeoutSeconds
            try cdp.finish()
        }
        if var recording = try root.section("recording") {
            recordingEnabled = try recording.bool("enabled") ?? recordingEnabled
            if let preset = try recording.string("preset") {
                guard Self.x264Presets.contains(preset) else {
                    throw ConfigError(key: "recording.preset", "must be one of \(Self.x264Presets.joined(separator: ", ")) (got \"\(preset)\")")
                }
                recordingPreset = preset
            }
            recordingCRF = try recording.int("crf", in: 0...51) ?? recordingCRF
            recordingThreads = try recording.int("threads", in: 1...16) ?? recordingThreads
            recordingQueueFrames = try recording.int("queue_frames", in: 16...3600) ?? recordingQueueFrames
            recordingQueueMB = try recording.int("queue_mb", in: 1...4096) ?? recordingQueueMB
            try recording.finish()
        }
        if let format = try root.string("screenshot_format") {
            guard let parsed = ScreenshotFormat(rawValue: format) else {
                throw ConfigError(key: "screenshot_format", "must be jpeg or png (got \"\(format)\")")
            }
            screenshotFormat = parsed
        }
        if var artifacts = try root.section("artifacts") {
            artifactURLTTLSeconds = try artifacts.int("url_ttl_seconds", in: 60...604_800) ?? artifactURLTTLSeconds
            try artifacts.finish()
        }
        if var webhooks = try root.section("webhooks") {
            for (index, item) in try webhooks.list("secrets").enumerated() {
                let path = "webhooks.secrets[\(index)]"
                guard let entry = item as? [String: Any] else {
                    throw ConfigError(key: path, "must be a mapping {organization_id, secret}")
                }
                var reader = ConfigReader(entry, path: path)
                guard let organization = try reader.string("organization_id"), !organization.isEmpty else {
                    throw ConfigError(key: "\(path).organization_id", "is required")
                }
                guard let secret = try reader.string("secret"), secret.count >= 16 else {
                    throw ConfigError(key: "\(path).secret", "must be a string of at least 16 characters")
                }
                try reader.finish()
                guard webhookSecrets[organization] == nil else {
                    throw ConfigError(key: "\(path).organization_id", "is listed twice")
                }
                webhookSecrets[organization] = secret
            }
            webhookMaxAttempts = try webhooks.int("max_attempts", in: 1...20) ?? webhookMaxAttempts
            webhookTimeoutSeconds = try webhooks.int("timeout_seconds", in: 1...120) ?? webhookTimeoutSeconds
            try webhooks.finish()
        }
        if var retention = try root.section("retention") {
            retentionMaxAgeDays = try retention.int("max_age_days", in: 1...3650) ?? retentionMaxAgeDays
            retentionMaxDiskGB = try retention.double("max_disk_gb", in: 0.001...100_000) ?? retentionMaxDiskGB
            retentionSweepIntervalSeconds = try retention.int("sweep_interval_seconds", in: 10...86400)
                ?? retentionSweepIntervalSeconds
            try retention.finish()
        }
        if var vnc = try root.section("vnc") {
            vncEnabled = try vnc.bool("enabled") ?? vncEnabled
            if let listen = try vnc.string("listen") {
                guard Self.isIPv4(listen) else { throw ConfigError(key: "vnc.listen", "must be an IPv4 address (got \"\(listen)\")") }
                vncListen = listen
            }
            if let range = try vnc.string("port_range") {
                let parts = range.split(separator: "-").map { Int($0.trimmingCharacters(in: .whitespaces)) }
                guard parts.count == 2, let first = parts[0], let last = parts[1], 1 <= first, first <= last, last <= 65535
                else { throw ConfigError(key: "vnc.port_range", "must be first-last, e.g. 5900-5999 (got \"\(range)\")") }
                vncPorts = first...last
            }
            vncPasswordTTLSeconds = try vnc.int("password_ttl_seconds", in: 10...86400) ?? vncPasswordTTLSeconds
            vncSourceMaxFPS = try vnc.int("source_max_fps", in: 1...60) ?? vncSourceMaxFPS
            vncSourceMaxWidth = try vnc.int("source_max_width", in: 16...16384) ?? vncSourceMaxWidth
            vncSourceMaxHeight = try vnc.int("source_max_height", in: 16...16384) ?? vncSourceMaxHeight
            vncSourceTimeoutSeconds = try vnc.int("source_timeout_seconds", in: 1...120) ?? vncSourceTimeoutSeconds
            vncHandshakeTimeoutSeconds = try vnc.int("handshake_timeout_seconds", in: 1...120) ?? vncHandshakeTimeoutSeconds
            try vnc.finish()
        }
        if var limits = try root.section("limits") {
            limitSessionsPerOrganization = try limits.int("sessions_per_organization", in: 1...100_000)
                ?? limitSessionsPerOrganization
            limitRecordingsPerOrganization = try limits.int("recordings_per_organization", in: 1...100_000)
                ?? limitRecordingsPerOrganization
            limitViewersPerSession = try limits.int("viewers_per_session", in: 1...100_000) ?? limitViewersPerSession
            limitVNCScreensPerOrganization = try limits.int("vnc_screens_per_organization", in: 0...100_000)
                ?? limitVNCScreensPerOrganization
            limitRetryWebhookPerMinute = try limits.int("retry_webhook_per_minute", in: 1...600)
                ?? limitRetryWebhookPerMinute
            limitUnauthenticatedPerAddress = try limits.int("unauthenticated_per_address", in: 1...10000)
                ?? limitUnauthenticatedPerAddress
            try limits.finish()
        }
        if var network = try root.section("network") {
            for key in ["browser_allow", "webhook_allow"] {
                guard network.has(key) else { continue }
                var cidrs: [String] = []
                for (index, item) in try network.list(key).enumerated() {
                    guard let text = item as? String, CIDR(text) != nil else {
                        throw ConfigError(key: "network.\(key)[\(index)]", "must be an IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8 (got \"\(item)\")")
                    }
                    cidrs.append(text)
                }
                if key == "browser_allow" { networkBrowserAllow = cidrs } else { networkWebhookAllow = cidrs }
            }
            try network.finish()
        }
        try root.finish()
    }

    private static func isIPv4(_ host: String) -> Bool {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { UInt8($0) != nil }
    }
}

/// A configuration problem, naming the key.
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var key: String
    public var message: String
    init(key: String, _ message: String) {
        self.key = key
        self.message = message
    }
    public var description: String { "config key \(key): \(message)" }
}

/// Reads one mapping of the YAML tree, remembering which keys were used so unknown ones are reported.
private struct ConfigReader {
    let values: [String: Any]
    let path: String
    var used: Set<String> = []

    init(_ values: [String: Any], path: String) {
        self.values = values
        self.path = path
    }

    private func name(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    mutating func string(_ key: String) throws(ConfigError) -> String? {
        used.insert(key)
        guard let value = values[key], !(value is NSNull) else { return nil }
        switch value {
        case let text as String: return text
        case let number as Int: return String(number)
        default: throw ConfigError(key: name(key), "must be a string")
        }
    }

    mutating func int(_ key: String, in range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        used.insert(key)
        guard let value = values[key], !(value is NSNull) else { return nil }
        guard let number = (value as? Int) ?? (value as? String).flatMap({ Int($0) }), range.contains(number) else {
            throw ConfigError(key: name(key), "must be an integer from \(range.lowerBound) to \(range.upperBound) (got \"\(value)\")")
        }
        return number
    }

    mutating func double(_ key: String, in range: ClosedRange<Double>) throws(ConfigError) -> Double? {
        used.insert(key)
        guard let value = values[key], !(value is NSNull) else { return nil }
        let number = (value as? Double) ?? (value as? Int).map(Double.init) ?? (value as? String).flatMap(Double.init)
        guard let number, range.contains(number) else {
            throw ConfigError(key: name(key), "must be a number from \(range.lowerBound) to \(range.upperBound) (got \"\(value)\")")
        }
        return number
    }

    mutating func bool(_ key: String) throws(ConfigError) -> Bool? {
        used.insert(key)
        guard let value = values[key], !(value is NSNull) else { return nil }
        switch value {
        case let flag as Bool: return flag
        case let text as String where ["true", "false"].contains(text.lowercased()): return text.lowercased() == "true"
        default: throw ConfigError(key: name(key), "must be true or false (got \"\(value)\")")
        }
    }

    /// True when the mapping sets `key` (to anything but null).
    func has(_ key: String) -> Bool { values[key].map { !($0 is NSNull) } ?? false }

    mutating func list(_ key: String) throws(ConfigError) -> [Any] {
        used.insert(key)
        guard let value = values[key], !(value is NSNull) else { return [] }
        guard let list = value as? [Any] else { throw ConfigError(key: name(key), "must be a list") }
        return list
    }

    mutating func section(_ key: String) throws(ConfigError) -> ConfigReader? {
        used.insert(key)
        guard let value = values[key], !(value is NSNull) else { return nil }
        guard let mapping = value as? [String: Any] else { throw ConfigError(key: name(key), "must be a mapping") }
        return ConfigReader(mapping, path: name(key))
    }

    func finish() throws(ConfigError) {
        if let unknown = values.keys.sorted().first(where: { !used.contains($0) }) {
            throw ConfigError(key: name(unknown), "is not a known key")
        }
    }
}

extension Dictionary where Key == String, Value == Any {
    fileprivate mutating func set(path: [String], _ value: Any) {
        guard let first = path.first else { return }
        if path.count == 1 {
            self[first] = value
        } else {
            var child = self[first] as? [String: Any] ?? [:]
            child.set(path: Array(path.dropFirst()), value)
            self[first] = child
        }
    }
}

extension Config {
    /// The effective configuration as YAML, every key in the shipped file's order. Secrets are masked as `"***"`
    /// unless `revealingSecrets`; loading the output with the secrets revealed gives this config back.
    public func yaml(revealingSecrets: Bool = false) -> String {
        let values = values(revealingSecrets: revealingSecrets)
        var root: [(Node, Node)] = []
        for key in Self.keys {
            let path = key.split(separator: ".").map(String.init)
            let value = Self.node(values[key] ?? NSNull())
            if path.count == 1 {
                root.append((Node(key), value))
            } else if let index = root.firstIndex(where: { $0.0.string == path[0] }), case .mapping(var section) = root[index].1 {
                section[Node(path[1])] = value
                root[index].1 = .mapping(section)
            } else {
                root.append((Node(path[0]), Node([(Node(path[1]), value)])))
            }
        }
        return (try? Yams.serialize(node: Node(root))) ?? ""
    }

    /// Keys a reload (SIGHUP) applies; the others need a restart.
    static let reloadableKeys: Set = ["api_keys", "webhooks.secrets"]

    /// The keys whose values differ in `other`.
    func changedKeys(to other: Config) -> [String] {
        let mine = values(revealingSecrets: true), theirs = other.values(revealingSecrets: true)
        return Self.keys.filter { Self.node(mine[$0] ?? NSNull()) != Self.node(theirs[$0] ?? NSNull()) }
    }

    /// Every key's value as YAML would hold it.
    private func values(revealingSecrets: Bool) -> [String: Any] {
        func secret(_ value: String) -> String { revealingSecrets ? value : "***" }
        return [
            "listen": "\(listenHost):\(listenPort)", "state_dir": stateDir, "public_url": publicURL ?? NSNull(),
            "log_level": logLevel,
            "api_keys": apiKeys.map { ["key": secret($0.key), "organization_id": $0.organizationID] },
            "viewer_token_secret": viewerTokenSecret.map(secret) ?? NSNull(),
            "screencast.quality": screencastQuality, "screencast.max_width": screencastMaxWidth,
            "screencast.max_height": screencastMaxHeight, "viewer.queue_frames": viewerQueueFrames,
            "viewer.token_ttl_seconds": viewerTokenTTLSeconds, "viewer.max_pending_kb": viewerMaxPendingKB,
            "cdp.retry_seconds": cdpRetrySeconds, "cdp.max_message_mb": cdpMaxMessageMB,
            "cdp.timeout_seconds": cdpTimeoutSeconds, "recording.queue_mb": recordingQueueMB,
            "recording.enabled": recordingEnabled, "recording.preset": recordingPreset, "recording.crf": recordingCRF,
            "recording.threads": recordingThreads, "recording.queue_frames": recordingQueueFrames,
            "screenshot_format": screenshotFormat.rawValue, "artifacts.url_ttl_seconds": artifactURLTTLSeconds,
            "webhooks.secrets": webhookSecrets.sorted { $0.key < $1.key }
                .map { ["organization_id": $0.key, "secret": secret($0.value)] },
            "webhooks.max_attempts": webhookMaxAttempts, "webhooks.timeout_seconds": webhookTimeoutSeconds,
            "retention.max_age_days": retentionMaxAgeDays, "retention.max_disk_gb": retentionMaxDiskGB,
            "retention.sweep_interval_seconds": retentionSweepIntervalSeconds,
            "vnc.enabled": vncEnabled, "vnc.listen": vncListen,
            "vnc.port_range": "\(vncPorts.lowerBound)-\(vncPorts.upperBound)",
            "vnc.password_ttl_seconds": vncPasswordTTLSeconds, "vnc.source_max_fps": vncSourceMaxFPS,
            "vnc.source_max_width": vncSourceMaxWidth, "vnc.source_max_height": vncSourceMaxHeight,
            "vnc.source_timeout_seconds": vncSourceTimeoutSeconds,
            "vnc.handshake_timeout_seconds": vncHandshakeTimeoutSeconds,
            "limits.sessions_per_organization": limitSessionsPerOrganization,
            "limits.recordings_per_organization": limitRecordingsPerOrganization,
            "limits.viewers_per_session": limitViewersPerSession,
            "limits.vnc_screens_per_organization": limitVNCScreensPerOrganization,
            "limits.retry_webhook_per_minute": limitRetryWebhookPerMinute,
            "limits.unauthenticated_per_address": limitUnauthenticatedPerAddress,
            "network.browser_allow": networkBrowserAllow, "network.webhook_allow": networkWebhookAllow,
        ]
    }

    private static func node(_ value: Any) -> Node {
        switch value {
        case let text as String: Node(text, Tag(.str), .doubleQuoted)
        case let flag as Bool: Node(flag ? "true" : "false", Tag(.bool))
        case let number as Int: Node(String(number), Tag(.int))
        case let number as Double: Node(String(number), Tag(.float))
        case let list as [String]: Node(list.map { Node($0, Tag(.str), .doubleQuoted) }, Tag(.seq), .flow)
        case let list as [[String: String]]:
            Node(list.map { item in Node(item.keys.sorted().map { (Node($0), node(item[$0]!)) }) }, Tag(.seq), .flow)
        default: Node("null", Tag(.null))
        }
    }
}
