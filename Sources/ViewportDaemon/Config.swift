public import Foundation
import Yams

/// The daemon's configuration: compiled defaults, overridden by the YAML file, overridden by the environment.
///
/// Each key is a property here or in a section, named in the file in snake case (`vnc.source_max_fps` is
/// `config.vnc.sourceMaxFPS`); its default is the property's initial value and its rule the property's type or
/// wrapper (`@Within<1, 60>`: an integer from 1 to 60). `config/viewportd.yaml` explains every key at its default
/// (a test checks the two agree).
///
/// Every key can be set from the environment as `VIEWPORTD_` + the key path in upper case with dots and
/// dashes as underscores (`VIEWPORTD_SCREENCAST_MAX_WIDTH`); lists in YAML flow style
/// (`VIEWPORTD_API_KEYS='[{key: ..., organization_id: ...}]'`). `VIEWPORTD_API_KEY` with
/// `VIEWPORTD_ORGANIZATION_ID` adds one API key.
public struct Config: Codable, Sendable, Equatable {
    /// HTTP and WebSocket address; port 0 picks a free one.
    public var listen = ListenAddress(host: "127.0.0.1", port: 8200)
    /// SQLite database and generated secrets.
    @NonEmpty public var stateDir = "/var/lib/viewportd"
    /// Base of the URLs handed out (watch pages), without trailing slash; nil: `http://<listen>`.
    @PublicURL public var publicURL: String? = nil
    public var logLevel = LogLevel.info
    /// Who may use the API.
    @DistinctItems public var apiKeys: [APIKey] = []
    /// HMAC key of viewer tokens; nil: generated into `state_dir/viewer-token.key`.
    @Secret<String?, 32> public var viewerTokenSecret: String? = nil
    public var screencast = ScreencastConfig()
    public var viewer = ViewerConfig()
    public var cdp = CDPConfig()
    public var recording = RecordingConfig()
    /// Step screenshots as the exact JPEG viewers got, or lossless PNG.
    public var screenshotFormat = ScreenshotFormat.jpeg
    public var artifacts = ArtifactsConfig()
    public var s3 = S3Config()
    public var webhooks = WebhooksConfig()
    public var retention = RetentionConfig()
    public var vnc = VNCConfig()
    public var limits = LimitsConfig()
    public var network = NetworkConfig()
    public var cluster = ClusterConfig()

    /// The compiled defaults.
    public init() {}

    /// An API key (at least 16 characters) and the organization it acts for.
    public struct APIKey: Codable, Sendable, Equatable {
        @Secret<String, 16> public var key: String
        @OrganizationID public var organizationID: String
        public init(key: String, organizationID: String) {
            self.key = key
            self.organizationID = organizationID
        }
    }

    /// How step screenshots are stored.
    public enum ScreenshotFormat: String, ConfigChoice { case jpeg, png }

    /// Base URL for links handed out.
    public var effectivePublicURL: String { publicURL ?? "http://\(listen.host):\(listen.port)" }
}

/// An IPv4 address and port, `127.0.0.1:8200` in the file.
public struct ListenAddress: ConfigValue {
    public var host: String
    public var port: Int
    public static let rule = "must be IPv4-address:port, e.g. 127.0.0.1:8200"

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public init?(raw: String) {
        let parts = raw.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let port = Int(parts[1]), (0...65535).contains(port), IPv4.accepts(String(parts[0]))
        else { return nil }
        self.init(host: String(parts[0]), port: port)
    }
    public var raw: String { "\(host):\(port)" }
}

/// swift-log's levels.
public enum LogLevel: String, ConfigChoice { case trace, debug, info, notice, warning, error, critical }

/// The CDP screencast of each session.
public struct ScreencastConfig: Codable, Sendable, Equatable {
    /// JPEG quality.
    @Within<1, 100> public var quality = 75
    /// Frames are scaled down to fit this box.
    @Within<16, 4096> public var maxWidth = 1280
    @Within<16, 4096> public var maxHeight = 720
}

/// WebSocket viewers.
public struct ViewerConfig: Codable, Sendable, Equatable {
    /// Frames queued per viewer before the oldest is dropped.
    @Within<1, 64> public var queueFrames = 2
    /// Default lifetime of viewer tokens.
    @Within<10, 86400> public var tokenTTLSeconds = 300
    /// Kilobytes of replies (pongs, errors, statuses) a viewer may leave unread; past it the viewer is closed with 1008.
    @Within<16, 65536> public var maxPendingKB = 1024
    /// Seconds an `evaluate` from a viewer may run before it is answered with a timeout.
    @WithinThousandths<100, 60_000> public var evaluateTimeoutSeconds = 5.0
    /// Largest JSON of an `evaluate`'s value, in kilobytes. At most 500: the browser's answer carries it escaped, in
    /// a message of at most 1 MiB.
    @Within<1, 500> public var evaluateMaxResultKB = 256
    /// H.264 pictures queued per `?codec=h264` viewer; one that falls further behind skips to the next key frame.
    @Within<8, 600> public var h264QueueFrames = 60
    /// Run a session's H.264 encoder for `?codec=h264` viewers while it is not recording (false: they get JPEG).
    public var h264WithoutRecording = true
}

/// Browser connections.
public struct CDPConfig: Codable, Sendable, Equatable {
    /// How long a lost browser connection is retried before the session fails.
    @Within<0, 3600> public var retrySeconds = 30
    /// Largest message a browser may send; a bigger one closes the connection.
    @Within<1, 256> public var maxMessageMB = 16
    /// Connecting, the WebSocket handshake and `/json/version` must finish in this.
    @Within<1, 120> public var timeoutSeconds = 10
}

/// Recordings of runs (H.264 MP4).
public struct RecordingConfig: Codable, Sendable, Equatable {
    /// Record runs.
    public var enabled = true
    /// The encoder's preset, constant rate factor and threads.
    public var preset = X264Preset.veryfast
    @Within<0, 51> public var crf = 28
    @Within<1, 16> public var threads = 1
    /// Frames queued for the encoder before the oldest is dropped (counted).
    @Within<16, 3600> public var queueFrames = 300
    /// The same queue's bound in megabytes (frames with pixels are large).
    @Within<1, 4096> public var queueMB = 128
}

/// x264's presets, fastest first.
public enum X264Preset: String, ConfigChoice {
    case ultrafast, superfast, veryfast, faster, fast, medium, slow, slower, veryslow
}

/// Recordings and screenshots.
public struct ArtifactsConfig: Codable, Sendable, Equatable {
    /// Lifetime of the signed artifact URLs handed out (and of presigned object URLs).
    @Within<60, 604_800> public var urlTTLSeconds = 3600
    /// Where published artifacts are kept: this host's disk, or an S3-compatible bucket (section `s3`).
    public var store = ArtifactStore.local
}

/// Where published artifacts are kept.
public enum ArtifactStore: String, ConfigChoice { case local, s3 }

/// The S3-compatible bucket of `artifacts.store: s3`.
public struct S3Config: Codable, Sendable, Equatable {
    /// The service's base URL, e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:8333`.
    @PublicURL public var endpoint: String? = nil
    @NonEmpty public var region = "us-east-1"
    @BucketName public var bucket: String? = nil
    /// Key prefix of every object (no leading or trailing slash; empty: none).
    @KeyPrefix public var prefix = "viewportd"
    /// `path` (`endpoint/bucket/key`) or `virtual_host` (`bucket.endpoint-host/key`).
    public var addressing = S3Addressing.path
    /// nil: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN` from the environment.
    @NonEmptyOrNull public var accessKeyID: String? = nil
    @Secret<String?, 1> public var secretAccessKey: String? = nil
    @Secret<String?, 1> public var sessionToken: String? = nil
    /// Connecting, and any stall of a transfer, must end within this.
    @Within<1, 600> public var timeoutSeconds = 30
    /// A recording in progress goes to the bucket in objects of at most this many seconds: a lost host loses
    /// at most this much.
    @Within<2, 300> public var segmentSeconds = 10
    /// A failed upload is tried again after 1, 2, 4... seconds, waiting at most this long.
    @Within<1, 3600> public var retryMaxSeconds = 60
    /// A graceful stop waits this long for uploads due (what the runs it completes publish); the rest resumes at
    /// the next start.
    @Within<0, 600> public var drainSeconds = 30
    /// Files larger than this go up in parts of this size (memory per upload is one part).
    @Within<5, 512> public var partSizeMB = 16
    /// When the bucket is served through a CDN: URLs handed out are this + `/` + key rather than presigned.
    @PublicURL public var publicBaseURL: String? = nil
}

extension S3Config {
    /// Checks what `artifacts.store: s3` needs, taking the credentials the file leaves out from the usual AWS
    /// environment variables.
    mutating func complete(for store: ArtifactStore, environment: [String: String]) throws(ConfigError) {
        guard store == .s3 else { return }
        guard endpoint != nil else { throw ConfigError(key: "s3.endpoint", "must be set when artifacts.store is s3") }
        guard bucket != nil else { throw ConfigError(key: "s3.bucket", "must be set when artifacts.store is s3") }
        if accessKeyID == nil, secretAccessKey == nil {
            accessKeyID = environment["AWS_ACCESS_KEY_ID"]
            secretAccessKey = environment["AWS_SECRET_ACCESS_KEY"]
            sessionToken = sessionToken ?? environment["AWS_SESSION_TOKEN"]
        }
        guard accessKeyID?.isEmpty == false, secretAccessKey?.isEmpty == false else {
            throw ConfigError(key: "s3.access_key_id",
                              "must be set with s3.secret_access_key (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment) when artifacts.store is s3")
        }
    }
}

/// How the bucket is named in URLs.
public enum S3Addressing: String, ConfigChoice { case path, virtualHost = "virtual_host" }

/// Run-completion webhooks.
public struct WebhooksConfig: Codable, Sendable, Equatable {
    /// HMAC key (at least 16 characters) of each organization's webhooks, by organization id; in the file a list of
    /// `{organization_id, secret}`.
    @SecretsByOrganization public var secrets: [String: String] = [:]
    /// Delivery attempts and the time to wait for each answer.
    @Within<1, 20> public var maxAttempts = 5
    @Within<1, 120> public var timeoutSeconds = 10
}

/// Deletion of closed sessions' artifacts.
public struct RetentionConfig: Codable, Sendable, Equatable {
    /// Artifacts older than this are deleted.
    @Within<1, 3650> public var maxAgeDays = 30
    /// Above this, the oldest closed sessions' artifacts are deleted (0.001-100000).
    @WithinThousandths<1, 100_000_000> public var maxDiskGB = 50.0
    /// How often retention runs.
    @Within<10, 86400> public var sweepIntervalSeconds = 300
}

/// A VNC screen per session for vncviewer and noVNC, and sessions whose frames come from a VNC server.
public struct VNCConfig: Codable, Sendable, Equatable {
    /// Give sessions a VNC screen.
    public var enabled = true
    /// Where the screens listen.
    @IPv4 public var listen = "127.0.0.1"
    @PortRange public var portRange = 5900...5999
    /// Default lifetime of minted VNC passwords.
    @Within<10, 86400> public var passwordTTLSeconds = 300
    /// Frames a second taken from a session's VNC server (`vnc_address`).
    @Within<1, 60> public var sourceMaxFPS = 30
    /// A VNC server's larger screen is refused.
    @Within<16, 16384> public var sourceMaxWidth = 4096
    @Within<16, 16384> public var sourceMaxHeight = 4096
    /// Connecting to a VNC server, its handshake and each read.
    @Within<1, 120> public var sourceTimeoutSeconds = 10
    /// A VNC client must finish its handshake (a person may type the password) in this.
    @Within<1, 120> public var handshakeTimeoutSeconds = 20
}

/// Per-tenant limits, answered with 429.
public struct LimitsConfig: Codable, Sendable, Equatable {
    @Within<1, 100_000> public var sessionsPerOrganization = 100
    @Within<1, 100_000> public var recordingsPerOrganization = 20
    @Within<1, 100_000> public var viewersPerSession = 200
    @Within<0, 100_000> public var vncScreensPerOrganization = 50
    @Within<1, 600> public var retryWebhookPerMinute = 6
    /// Connections pending authentication per address, on the HTTP port and each VNC screen.
    @Within<1, 10000> public var unauthenticatedPerAddress = 32
}

/// Where viewportd connects on a tenant's behalf.
public struct NetworkConfig: Codable, Sendable, Equatable {
    /// Networks `browser_address` and `vnc_address` may name; link-local ones (169.254.0.0/16, fe80::/10) only when
    /// listed.
    @CIDRs public var browserAllow = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]
    /// Loopback, private and link-local networks webhooks may reach (public addresses always may).
    @CIDRs public var webhookAllow: [String] = []
}

/// Several viewportd nodes sharing their state.
public struct ClusterConfig: Codable, Sendable, Equatable {
    /// The PostgreSQL database (`postgres://user:password@host:port/database`) that holds sessions, runs, steps,
    /// artifacts, webhook deliveries, uploads, segments and the nodes instead of the embedded SQLite; nil: SQLite,
    /// one host, and the other keys of this section are unused.
    @PostgresURL public var databaseURL: String? = nil
    /// This node's name, unique in the cluster and the same across restarts; nil: the host name.
    @NodeName public var nodeID: String? = nil
    /// How the other nodes reach this one's API; nil: `public_url`.
    @PublicURL public var advertiseURL: String? = nil
    /// Shared by every node: authenticates the requests and streams nodes send each other, and signs viewer tokens
    /// and artifact URLs so that every node accepts them (unless `viewer_token_secret` is set). Required with
    /// `database_url`.
    @Secret<String?, 32> public var secret: String? = nil
    /// A node that has not renewed its lease for this long is lost: another node fails its sessions and terminates
    /// their runs.
    @Within<3, 600> public var leaseSeconds = 15
}

extension ClusterConfig {
    /// Checks what cluster mode needs and fills in this node's name.
    mutating func complete(hostName: String) throws(ConfigError) {
        guard databaseURL != nil else { return }
        guard secret != nil else {
            throw ConfigError(key: "cluster.secret", "must be set (the same on every node) when cluster.database_url is")
        }
        if nodeID == nil {
            guard NodeName.accepts(hostName) else {
                throw ConfigError(key: "cluster.node_id", "must be set: the host name \(hostName) \(NodeName.rule)")
            }
            nodeID = hostName
        }
    }
}

/// A webhook secret in the file.
struct WebhookSecret: Distinct {
    @NonEmpty var organizationID: String
    @Secret<String, 16> var secret: String
    var identity: String { organizationID }
    static var identityKey: any CodingKey { CodingKeys.organizationID }
}

extension Config.APIKey: Distinct {
    public var identity: String { key }
    public static var identityKey: any CodingKey { CodingKeys.key }
}

/// Webhook secrets by organization id, in the file a list of `{organization_id, secret}`.
@propertyWrapper public struct SecretsByOrganization: Codable, Sendable, Equatable {
    public var wrappedValue: [String: String]

    public init(wrappedValue: [String: String]) { self.wrappedValue = wrappedValue }
    public init(from decoder: any Decoder) throws {
        let list = try DistinctItems<WebhookSecret>(from: decoder).wrappedValue
        wrappedValue = Dictionary(uniqueKeysWithValues: list.map { ($0.organizationID, $0.secret) })
    }
    public func encode(to encoder: any Encoder) throws {
        let list = wrappedValue.sorted { $0.key < $1.key }.map { WebhookSecret(organizationID: $0.key, secret: $0.value) }
        try list.encode(to: encoder)
    }
}

extension Config {
    /// The defaults as a YAML tree, secrets revealed.
    private static var defaults: Node { NodeEncoder.node(Config(), revealingSecrets: true) }

    /// Every leaf key, as written in the file, in its order.
    static let keys = leaves(of: defaults).map(\.key)

    /// Keys a reload (SIGHUP) applies; the others need a restart.
    static let reloadableKeys: Set = ["api_keys", "webhooks.secrets"]

    /// The leaves of a tree of mappings, by key path.
    private static func leaves(of node: Node, under prefix: String = "") -> [(key: String, value: Node)] {
        guard let mapping = node.mapping else { return [(prefix, node)] }
        return mapping.flatMap { key, value in
            leaves(of: value, under: (prefix.isEmpty ? "" : prefix + ".") + (key.string ?? "\(key)"))
        }
    }

    /// The environment variable of `key`: `VIEWPORTD_` + the path in upper case, dots and dashes as underscores.
    static func environmentName(_ key: String) -> String {
        "VIEWPORTD_" + key.uppercased().replacingOccurrences(of: ".", with: "_").replacingOccurrences(of: "-", with: "_")
    }

    /// Loads `yaml` (nil: defaults only) and applies `environment` overrides.
    public static func load(yaml: String?, environment: [String: String] = [:]) throws(ConfigError) -> Config {
        var tree = Node([(Node, Node)]())
        if let yaml, !yaml.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            let parsed: Node?
            do { parsed = try Yams.compose(yaml: yaml) } catch { throw ConfigError(key: "(file)", "not valid YAML: \(error)") }
            guard let parsed, parsed.mapping != nil else {
                throw ConfigError(key: "(file)", "the top level must be a mapping of keys")
            }
            tree = parsed
        }
        try applyEnvironment(environment, to: &tree)
        var config: Config
        do {
            config = try NodeDecoder.decode(Config.self, from: defaults.merging(tree))
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError(key: "(file)", "\(error)")
        }
        try config.s3.complete(for: config.artifacts.store, environment: environment)
        try config.cluster.complete(hostName: ProcessInfo.processInfo.hostName)
        return config
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

    private static func applyEnvironment(_ environment: [String: String], to tree: inout Node) throws(ConfigError) {
        for (key, value) in leaves(of: defaults) {
            let name = environmentName(key)
            guard let text = environment[name] else { continue }
            var node = Node(text, Tag(.str))
            if case .sequence = value {
                // A list is given in YAML flow style: [{key: ..., organization_id: ...}].
                do { node = try Yams.compose(yaml: text) ?? nullNode } catch {
                    throw ConfigError(key: name, "not valid YAML: \(error)")
                }
            }
            tree = tree.setting(key.split(separator: ".").map(String.init)[...], to: node)
        }
        if let key = environment["VIEWPORTD_API_KEY"] {
            guard let organization = environment["VIEWPORTD_ORGANIZATION_ID"] else {
                throw ConfigError(key: "VIEWPORTD_ORGANIZATION_ID", "must be set with VIEWPORTD_API_KEY")
            }
            let item = Node([(Node("key"), Node(key, Tag(.str))), (Node("organization_id"), Node(organization, Tag(.str)))])
            tree = tree.setting(["api_keys"], to: Node((tree.mapping?["api_keys"]?.sequence.map(Array.init) ?? []) + [item]))
        }
    }

    /// The effective configuration as YAML, every key in the shipped file's order. Secrets are masked as `"***"`
    /// unless `revealingSecrets`; loading the output with the secrets revealed gives this config back.
    public func yaml(revealingSecrets: Bool = false) -> String {
        (try? Yams.serialize(node: NodeEncoder.node(self, revealingSecrets: revealingSecrets))) ?? ""
    }

    /// The keys whose values differ in `other`.
    func changedKeys(to other: Config) -> [String] {
        let mine = Self.leaves(of: NodeEncoder.node(self, revealingSecrets: true))
        let theirs = Self.leaves(of: NodeEncoder.node(other, revealingSecrets: true))
        return zip(mine, theirs).filter { $0.value != $1.value }.map(\.0.key)
    }
}

extension Node {
    /// `over` laid over this tree: mappings merged key by key, anything else replaced; a null keeps what was there.
    fileprivate func merging(_ over: Node) -> Node {
        guard case .mapping(var base) = self, case .mapping(let mapping) = over else {
            return over.tagName == .null ? self : over
        }
        for (key, value) in mapping { base[key] = base[key].map { $0.merging(value) } ?? value }
        return .mapping(base)
    }

    /// This tree with `value` at `path`, making mappings on the way.
    fileprivate func setting(_ path: ArraySlice<String>, to value: Node) -> Node {
        guard let first = path.first else { return value }
        var mapping = self.mapping ?? Node.Mapping([])
        mapping[first] = (mapping[first] ?? Node([(Node, Node)]())).setting(path.dropFirst(), to: value)
        return .mapping(mapping)
    }
}
