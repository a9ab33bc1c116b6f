import Digests
import Foundation
import Testing
@testable import ViewportDaemon
import Yams

@Suite("Configuration")
struct ConfigTests {
    static let shipped = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../config/viewportd.yaml").standardized.path

    @Test func theShippedFileIsExactlyTheCompiledDefaults() throws {
        #expect(try Config.load(path: Self.shipped, environment: [:]) == Config())
        #expect(try Config.load(yaml: nil) == Config())
    }

    @Test func theShippedFileSetsExactlyTheKeysTheDecoderReads() throws {
        let shipped = try #require(try Yams.compose(yaml: String(contentsOfFile: Self.shipped, encoding: .utf8)))
        func leaves(_ node: Node, _ prefix: String = "") -> [String] {
            guard let mapping = node.mapping else { return [prefix] }
            return mapping.flatMap { key, value in leaves(value, (prefix.isEmpty ? "" : prefix + ".") + (key.string ?? "")) }
        }
        #expect(leaves(shipped) == Config.keys, "the shipped file lists every key once, in the config's order")
        #expect(Config.reloadableKeys.isSubset(of: Config.keys))
    }

    @Test func theDocumentationNamesOnlyKeysThatExist() throws {
        let sections = Set(Config.keys.compactMap { $0.split(separator: ".").dropLast().first.map(String.init) })
        let root = URL(fileURLWithPath: Self.shipped).deletingLastPathComponent().deletingLastPathComponent()
        var named: Set<String> = []
        for file in ["README.md", "docs/protocol.md", "Sources/ViewportDaemon/Config.swift", "Sources/viewportd/main.swift"] {
            let text = try String(contentsOf: root.appendingPathComponent(file), encoding: .utf8)
            let keys = text.matches(of: /`([a-z_]+)\.([a-z_]+)`/).map { "\($0.1).\($0.2)" }
            named.formUnion(keys.filter { sections.contains(String($0.split(separator: ".")[0])) })
        }
        #expect(named.count > 10, "the documentation names keys: \(named.sorted())")
        #expect(named.subtracting(Config.keys).isEmpty, "unknown keys named: \(named.subtracting(Config.keys).sorted())")
    }

    @Test func fileValuesAreRead() throws {
        let config = try Config.load(yaml: """
            listen: 0.0.0.0:9000
            state_dir: /tmp/vp
            public_url: https://viewer.example.com/
            log_level: debug
            api_keys:
              - {key: abcdefghijklmnop, organization_id: org_1}
            screencast: {quality: 60, max_width: 800, max_height: 600}
            viewer: {queue_frames: 4, token_ttl_seconds: 60}
            cdp: {retry_seconds: 5}
            """)
        #expect(config.listen == ListenAddress(host: "0.0.0.0", port: 9000))
        #expect(config.stateDir == "/tmp/vp" && config.publicURL == "https://viewer.example.com")
        #expect(config.logLevel == .debug)
        #expect(config.apiKeys == [.init(key: "abcdefghijklmnop", organizationID: "org_1")])
        #expect(config.screencast.quality == 60 && config.screencast.maxWidth == 800 && config.screencast.maxHeight == 600)
        #expect(config.viewer.queueFrames == 4 && config.viewer.tokenTTLSeconds == 60 && config.cdp.retrySeconds == 5)
    }

    @Test func theEnvironmentOverridesTheFile() throws {
        let config = try Config.load(yaml: "listen: 127.0.0.1:1\nscreencast: {quality: 10}", environment: [
            "VIEWPORTD_LISTEN": "127.0.0.1:8300", "VIEWPORTD_STATE_DIR": "/srv/vp",
            "VIEWPORTD_SCREENCAST_QUALITY": "90", "VIEWPORTD_CDP_RETRY_SECONDS": "7",
            "VIEWPORTD_API_KEY": "env-key-0123456789", "VIEWPORTD_ORGANIZATION_ID": "org_env",
        ])
        #expect(config.listen.port == 8300 && config.stateDir == "/srv/vp")
        #expect(config.screencast.quality == 90 && config.cdp.retrySeconds == 7)
        #expect(config.apiKeys == [.init(key: "env-key-0123456789", organizationID: "org_env")])
    }

    @Test(arguments: [
        ("listen: localhost", "listen"),
        ("listen: 127.0.0.1:70000", "listen"),
        ("listen: '[::1]:8200'", "listen"),
        ("state_dir: ''", "state_dir"),
        ("public_url: ftp://x", "public_url"),
        ("log_level: loud", "log_level"),
        ("api_keys: nope", "api_keys"),
        ("api_keys: [{key: short, organization_id: a}]", "api_keys[0].key"),
        ("api_keys: [{key: abcdefghijklmnop, organization_id: 'bad id'}]", "api_keys[0].organization_id"),
        ("api_keys: [{key: abcdefghijklmnop, organization_id: a, extra: 1}]", "api_keys[0].extra"),
        ("api_keys: [{key: abcdefghijklmnop}]", "api_keys[0].organization_id"),
        ("api_keys: [{key: abcdefghijklmnop, organization_id: a}, {key: abcdefghijklmnop, organization_id: b}]",
         "api_keys[1].key"),
        ("viewer_token_secret: tooshort", "viewer_token_secret"),
        ("screencast: {quality: 0}", "screencast.quality"),
        ("screencast: {quality: high}", "screencast.quality"),
        ("screencast: {max_width: 10000}", "screencast.max_width"),
        ("screencast: {max_height: 8}", "screencast.max_height"),
        ("screencast: {qualty: 50}", "screencast.qualty"),
        ("screencast: 5", "screencast"),
        ("viewer: {queue_frames: 0}", "viewer.queue_frames"),
        ("viewer: {token_ttl_seconds: 5}", "viewer.token_ttl_seconds"),
        ("cdp: {retry_seconds: -1}", "cdp.retry_seconds"),
        ("recording: {enabled: maybe}", "recording.enabled"),
        ("recording: {preset: turbo}", "recording.preset"),
        ("recording: {crf: 52}", "recording.crf"),
        ("recording: {threads: 0}", "recording.threads"),
        ("recording: {queue_frames: 8}", "recording.queue_frames"),
        ("screenshot_format: gif", "screenshot_format"),
        ("artifacts: {url_ttl_seconds: 30}", "artifacts.url_ttl_seconds"),
        ("webhooks: {secrets: [{organization_id: a, secret: short}]}", "webhooks.secrets[0].secret"),
        ("webhooks: {secrets: [{secret: abcdefghijklmnop}]}", "webhooks.secrets[0].organization_id"),
        ("webhooks: {secrets: [{organization_id: a, secret: abcdefghijklmnop}, {organization_id: a, secret: abcdefghijklmnopq}]}",
         "webhooks.secrets[1].organization_id"),
        ("webhooks: {max_attempts: 0}", "webhooks.max_attempts"),
        ("webhooks: {timeout_seconds: 121}", "webhooks.timeout_seconds"),
        ("retention: {max_age_days: 0}", "retention.max_age_days"),
        ("retention: {max_disk_gb: 0}", "retention.max_disk_gb"),
        ("retention: {max_disk_gb: lots}", "retention.max_disk_gb"),
        ("retention: {sweep_interval_seconds: 1}", "retention.sweep_interval_seconds"),
        ("retention: {max_days: 3}", "retention.max_days"),
        ("vnc: {enabled: 2}", "vnc.enabled"),
        ("vnc: {listen: localhost}", "vnc.listen"),
        ("vnc: {port_range: 5999-5900}", "vnc.port_range"),
        ("vnc: {port_range: 5900}", "vnc.port_range"),
        ("vnc: {password_ttl_seconds: 5}", "vnc.password_ttl_seconds"),
        ("vnc: {source_max_fps: 0}", "vnc.source_max_fps"),
        ("cdp: {max_message_mb: 0}", "cdp.max_message_mb"),
        ("vnc: {source_max_width: 70000}", "vnc.source_max_width"),
        ("vnc: {sourceMaxFPS: 10}", "vnc.sourceMaxFPS"),
        ("limits: {viewers_per_session: 0}", "limits.viewers_per_session"),
        ("limits: {unknown: 1}", "limits.unknown"),
        ("network: {browser_allow: [10.0.0.0/33]}", "network.browser_allow[0]"),
        ("network: {webhook_allow: [not-an-address]}", "network.webhook_allow[0]"),
        ("listn: 127.0.0.1:8200", "listn"),
        ("s3: {prefix: /leading}", "s3.prefix"),
        ("s3: {bucket: Not_A_Bucket}", "s3.bucket"),
        ("s3: {addressing: dns}", "s3.addressing"),
        ("s3: {segment_seconds: 1}", "s3.segment_seconds"),
        ("artifacts: {store: s3}", "s3.endpoint"),
        ("artifacts: {store: s3}\ns3: {endpoint: 'http://127.0.0.1:9000'}", "s3.bucket"),
        ("artifacts: {store: s3}\ns3: {endpoint: 'http://127.0.0.1:9000', bucket: b-1}", "s3.access_key_id"),
        ("- a list", "(file)"),
        ("listen: [unclosed", "(file)"),
    ])
    func anInvalidValueFailsNamingItsKey(yaml: String, key: String) {
        #expect(throws: ConfigError.self) { try Config.load(yaml: yaml) }
        do {
            _ = try Config.load(yaml: yaml)
        } catch {
            #expect(error.key == key, "\(yaml) -> \(error)")
            #expect(error.description.hasPrefix("config key \(key): "))
        }
    }

    @Test func theBucketsCredentialsComeFromTheAWSEnvironmentWhenTheFileLeavesThemOut() throws {
        let yaml = "artifacts: {store: s3}\ns3: {endpoint: 'http://127.0.0.1:9000', bucket: artifacts}"
        let config = try Config.load(yaml: yaml, environment: [
            "AWS_ACCESS_KEY_ID": "AKIDFROMENV", "AWS_SECRET_ACCESS_KEY": "secret-from-env", "AWS_SESSION_TOKEN": "token",
        ])
        #expect(config.s3.accessKeyID == "AKIDFROMENV" && config.s3.secretAccessKey == "secret-from-env")
        #expect(config.s3.sessionToken == "token")
        let fromFile = try Config.load(yaml: yaml.replacingOccurrences(
            of: "bucket: artifacts}", with: "bucket: artifacts, access_key_id: AKIDFILE, secret_access_key: file-secret}"),
                                       environment: ["AWS_ACCESS_KEY_ID": "AKIDFROMENV", "AWS_SECRET_ACCESS_KEY": "x"])
        #expect(fromFile.s3.accessKeyID == "AKIDFILE" && fromFile.s3.secretAccessKey == "file-secret")
        #expect(try Config.load(yaml: nil, environment: ["AWS_ACCESS_KEY_ID": "AKID"]).s3.accessKeyID == nil,
                "the local store reads no AWS variable")
    }

    /// A config with every key off its default, as YAML: the environment test sets each key from it.
    static let everyKeyChanged: Config = {
        var config = Config()
        (config.listen, config.stateDir) = (ListenAddress(host: "0.0.0.0", port: 9100), "/srv/viewportd")
        (config.publicURL, config.logLevel) = ("https://live.example.com", .debug)
        config.apiKeys = [.init(key: "env-key-0123456789", organizationID: "org_env")]
        config.viewerTokenSecret = String(repeating: "s", count: 40)
        (config.screencast.quality, config.screencast.maxWidth, config.screencast.maxHeight) = (55, 1024, 600)
        (config.viewer.queueFrames, config.viewer.tokenTTLSeconds, config.viewer.maxPendingKB) = (3, 90, 64)
        (config.viewer.evaluateTimeoutSeconds, config.viewer.evaluateMaxResultKB) = (2.5, 64)
        (config.viewer.h264QueueFrames, config.viewer.h264WithoutRecording) = (30, false)
        (config.cdp.retrySeconds, config.cdp.maxMessageMB, config.cdp.timeoutSeconds) = (12, 8, 5)
        (config.recording.enabled, config.recording.preset, config.recording.crf) = (false, .faster, 30)
        (config.recording.threads, config.recording.queueFrames, config.recording.queueMB) = (2, 120, 32)
        (config.screenshotFormat, config.artifacts.urlTTLSeconds, config.artifacts.store) = (.png, 7200, .s3)
        (config.s3.endpoint, config.s3.region, config.s3.bucket) = ("https://s3.example.com", "eu-west-1", "bkt-env")
        (config.s3.prefix, config.s3.addressing, config.s3.accessKeyID) = ("vp/env", .virtualHost, "AKIDENV")
        (config.s3.secretAccessKey, config.s3.sessionToken, config.s3.timeoutSeconds) = ("secret-env", "token-env", 9)
        (config.s3.segmentSeconds, config.s3.retryMaxSeconds, config.s3.partSizeMB) = (5, 30, 8)
        config.s3.drainSeconds = 12
        config.s3.publicBaseURL = "https://cdn.example.com"
        config.webhooks.secrets = ["org_env": "webhook-secret-0123456789"]
        (config.webhooks.maxAttempts, config.webhooks.timeoutSeconds) = (3, 20)
        (config.retention.maxAgeDays, config.retention.maxDiskGB, config.retention.sweepIntervalSeconds) = (7, 2.5, 60)
        (config.vnc.enabled, config.vnc.listen, config.vnc.portRange) = (false, "0.0.0.0", 6000...6010)
        (config.vnc.passwordTTLSeconds, config.vnc.sourceMaxFPS) = (60, 10)
        (config.vnc.sourceMaxWidth, config.vnc.sourceMaxHeight) = (1920, 1080)
        (config.vnc.sourceTimeoutSeconds, config.vnc.handshakeTimeoutSeconds) = (4, 6)
        (config.limits.sessionsPerOrganization, config.limits.recordingsPerOrganization) = (3, 2)
        (config.limits.viewersPerSession, config.limits.vncScreensPerOrganization) = (7, 1)
        (config.limits.retryWebhookPerMinute, config.limits.unauthenticatedPerAddress) = (2, 4)
        config.network.browserAllow = ["10.1.0.0/16"]
        config.network.webhookAllow = ["192.168.7.0/24", "fd00::/8"]
        config.cluster.databaseURL = "postgres://vp:db-password-env@db.example.com:5433/viewportd"
        (config.cluster.nodeID, config.cluster.advertiseURL) = ("node-7.eu", "http://10.0.3.7:8200")
        (config.cluster.secret, config.cluster.leaseSeconds) = ("cluster-secret-env-0123456789abcdef", 9)
        return config
    }()

    @Test func everyKeyCanBeSetFromItsEnvironmentVariable() throws {
        let expected = Self.everyKeyChanged
        #expect(Config().changedKeys(to: expected) == Config.keys, "the fixture changes every key")
        // Each key's value as the masked-free YAML prints it, handed over in the key's variable.
        let printed = try #require(try Yams.load(yaml: expected.yaml(revealingSecrets: true)) as? [String: Any])
        var environment: [String: String] = [:]
        for key in Config.keys {
            let path = key.split(separator: ".").map(String.init)
            let value = path.count == 1 ? printed[key] : (printed[path[0]] as? [String: Any])?[path[1]]
            environment[Config.environmentName(key)] = try #require(Self.flowYAML(value), "\(key)")
        }
        #expect(environment["VIEWPORTD_SCREENCAST_MAX_WIDTH"] == "1024")
        #expect(environment["VIEWPORTD_RETENTION_MAX_DISK_GB"] == "2.5")
        #expect(try Config.load(yaml: nil, environment: environment) == expected)
    }

    private static func flowYAML(_ value: Any?) -> String? {
        switch value {
        case nil: nil
        case let list as [Any]:
            (try? Yams.dump(object: list, sortKeys: true, sequenceStyle: .flow, mappingStyle: .flow))?
                .trimmingCharacters(in: .whitespacesAndNewlines)
        default: "\(value!)"
        }
    }

    @Test func thePrintedConfigMasksSecretsAndLoadsBackWithThemRevealed() throws {
        let config = Self.everyKeyChanged
        let masked = config.yaml()
        for secret in ["env-key-0123456789", try #require(config.viewerTokenSecret), "webhook-secret-0123456789",
                       "secret-env", "token-env", "db-password-env", "cluster-secret-env"] {
            #expect(!masked.contains(secret))
        }
        #expect(masked.contains("organization_id: \"org_env\""))
        #expect(try Config.load(yaml: config.yaml(revealingSecrets: true)) == config)
        #expect(try Config.load(yaml: Config().yaml()) == Config())
    }

    @Test func theDatabaseURLMustBeAPostgreSQLURLAndItsErrorNamesTheKey() throws {
        for url in ["mysql://db/viewportd", "postgres:///viewportd", "db.example.com:5432"] {
            #expect(throws: ConfigError(key: "cluster.database_url", PostgresURL.rule)) {
                try Config.load(yaml: "cluster: {database_url: \"\(url)\"}")
            }
        }
        let config = try Config.load(yaml: nil, environment: ["VIEWPORTD_CLUSTER_DATABASE_URL": "postgresql://db/vp",
                                                              "VIEWPORTD_CLUSTER_SECRET": String(repeating: "s", count: 32)])
        #expect(config.cluster.databaseURL == "postgresql://db/vp")
        #expect(config.cluster.nodeID == ProcessInfo.processInfo.hostName, "the host name when node_id is left out")
    }

    @Test func clusterModeNeedsASharedSecretAndANodeNameItsErrorsNameTheKeys() throws {
        #expect(throws: ConfigError(key: "cluster.secret", "must be set (the same on every node) when cluster.database_url is")) {
            try Config.load(yaml: "cluster: {database_url: \"postgres://db/vp\"}")
        }
        #expect(throws: ConfigError(key: "cluster.secret", "must be a string of at least 32 characters")) {
            try Config.load(yaml: "cluster: {database_url: \"postgres://db/vp\", secret: short}")
        }
        let badName = #expect(throws: ConfigError.self) { try Config.load(yaml: "cluster: {node_id: \"a b\"}") }
        #expect(badName?.key == "cluster.node_id")
        #expect(try Config.load(yaml: "cluster: {secret: null}").cluster.nodeID == nil, "a single host needs neither")
    }

    @Test func anAPIKeyFromTheEnvironmentNeedsItsOrganization() {
        #expect(throws: ConfigError(key: "VIEWPORTD_ORGANIZATION_ID", "must be set with VIEWPORTD_API_KEY")) {
            try Config.load(yaml: nil, environment: ["VIEWPORTD_API_KEY": "env-key-0123456789"])
        }
        #expect(throws: ConfigError.self) { try Config.load(yaml: nil, environment: ["VIEWPORTD_SCREENCAST_QUALITY": "999"]) }
    }
}

@Suite("Viewer tokens and API keys")
struct AuthTests {
    let auth = Auth(apiKeys: [.init(key: keyA, organizationID: "org_a")], tokenSecret: Data(repeating: 7, count: 32))

    @Test func aTokenGrantsItsSessionUntilItExpires() throws {
        let expires = Date().addingTimeInterval(60)
        let token = auth.viewerToken(sessionID: "pbs_1", expiresAt: expires, control: true)
        let grant = try auth.verifyViewerToken(token, sessionID: "pbs_1")
        #expect(grant.sessionID == "pbs_1" && grant.control)
        #expect(abs(grant.expiresAt.timeIntervalSince(expires)) < 1)
        #expect(throws: Auth.TokenProblem.expired) {
            try auth.verifyViewerToken(token, sessionID: "pbs_1", now: expires.addingTimeInterval(1))
        }
        #expect(throws: Auth.TokenProblem.otherSession) { try auth.verifyViewerToken(token, sessionID: "pbs_2") }
    }

    @Test func aTamperedTokenIsRefused() {
        let token = auth.viewerToken(sessionID: "pbs_1", expiresAt: Date().addingTimeInterval(60))
        var parts = token.split(separator: ".").map(String.init)
        parts[2] = String(Int(parts[2])! + 3600)  // later expiry, same signature
        #expect(throws: Auth.TokenProblem.badSignature) { try auth.verifyViewerToken(parts.joined(separator: "."), sessionID: "pbs_1") }
        let other = Auth(apiKeys: [], tokenSecret: Data(repeating: 8, count: 32))
        #expect(throws: Auth.TokenProblem.badSignature) { try other.verifyViewerToken(token, sessionID: "pbs_1") }
        #expect(throws: Auth.TokenProblem.malformed) { try auth.verifyViewerToken("garbage", sessionID: "pbs_1") }
    }

    @Test func apiKeysMapToTheirOrganization() {
        #expect(auth.organization(apiKey: keyA) == "org_a")
        #expect(auth.organization(apiKey: keyA + "x") == nil)
        #expect(auth.organization(apiKey: "") == nil)
    }
}

@Suite("Digests")
struct DigestTests {
    @Test func matchKnownAnswers() {
        func hex(_ data: Data) -> String { data.map { String(format: "%02x", $0) }.joined() }
        // FIPS 180-2 "abc"; RFC 4231 test case 2.
        #expect(hex(Digest.sha256(Data("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(hex(Digest.hmacSHA256(key: Data("Jefe".utf8), Data("what do ya want for nothing?".utf8)))
                == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        #expect(Digest.constantTimeEqual(Data([1, 2, 3]), Data([1, 2, 3])))
        #expect(!Digest.constantTimeEqual(Data([1, 2, 3]), Data([1, 2, 4])))
        #expect(!Digest.constantTimeEqual(Data([1, 2]), Data([1, 2, 3])))
        #expect(Digest.randomBytes(32) != Digest.randomBytes(32))
    }
}
