// swift-tools-version:6.1
import PackageDescription

let settings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "viewportd",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "viewportd", targets: ["viewportd"]),
        .executable(name: "viewportd-bench", targets: ["viewportd-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.6.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.0.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.0.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
    ],
    targets: [
        // C shims: one per C library, each imported by exactly one Swift module.
        .systemLibrary(
            name: "CWebSockets", path: "Sources/CWebSockets", pkgConfig: "libwebsockets",
            providers: [.apt(["libwebsockets-dev"])]),
        .systemLibrary(
            name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CFFmpeg", path: "Sources/CFFmpeg",
            providers: [.apt(["libavcodec-dev", "libavformat-dev", "libswscale-dev", "libavutil-dev"])]),
        .systemLibrary(
            name: "CTurboJPEG", path: "Sources/CTurboJPEG", pkgConfig: "libturbojpeg",
            providers: [.apt(["libturbojpeg0-dev"])]),
        .systemLibrary(
            name: "CVNC", path: "Sources/CVNC", pkgConfig: "libvncserver", providers: [.apt(["libvncserver-dev"])]),
        // A C target rather than a system library: it keeps libvncclient's last error in thread-local storage.
        .target(name: "CVNCClient", path: "Sources/CVNCClient", linkerSettings: [.linkedLibrary("vncclient")]),
        .systemLibrary(
            name: "CCurl", path: "Sources/CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        .systemLibrary(
            name: "CSystemd", path: "Sources/CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(name: "CPostgres", path: "Sources/CPostgres", pkgConfig: "libpq", providers: [.apt(["libpq-dev"])]),

        // Frames, the frame hub, its metrics and the session model. Imports nothing local.
        .target(
            name: "ViewportCore", dependencies: [.product(name: "CoreMetrics", package: "swift-metrics")],
            swiftSettings: settings),
        // The only importer of CWebSockets: the service thread, HTTP and WebSocket server and clients.
        .target(name: "WebSocketIO", dependencies: ["CWebSockets"], swiftSettings: settings),
        // Chrome DevTools Protocol screencast source.
        .target(
            name: "CDPSource",
            dependencies: ["ViewportCore", "WebSocketIO", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings),
        // WebSocket viewers fed from the frame hub, and the watch page.
        .target(
            name: "ViewerGateway",
            dependencies: ["ViewportCore", "WebSocketIO", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings),
        // JPEG decoding (to YUV planes or pixels) and encoding. The only importer of CTurboJPEG.
        .target(name: "JPEGCodec", dependencies: ["CTurboJPEG"], swiftSettings: settings + [.unsafeFlags(["-O"])]),
        // H.264 recording of a session's frames into crash-safe fragmented MP4, and cutting runs out of it.
        // The only importer of CFFmpeg.
        .target(
            name: "Recorder",
            dependencies: ["ViewportCore", "JPEGCodec", "CFFmpeg", .product(name: "Logging", package: "swift-log")],
            // Optimised in debug builds too: the tests record live 60 fps sessions and an unoptimised encoder loop
            // falls behind.
            swiftSettings: settings + [.unsafeFlags(["-O"])]),
        // Frames and input of a VNC server through libvncclient. The only importer of CVNCClient.
        .target(
            name: "RFBSource",
            dependencies: ["ViewportCore", "JPEGCodec", "CVNCClient", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings + [.unsafeFlags(["-O"])]),
        // A libvncserver screen per session for stock VNC clients and noVNC. The only importer of CVNC.
        .target(
            name: "VNCBridge",
            dependencies: ["ViewportCore", "JPEGCodec", "WebSocketIO", "CVNC", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings + [.unsafeFlags(["-O"])]),
        // SHA-256, HMAC, constant-time comparison and random bytes. The only importer of CCrypto.
        .target(name: "Digests", dependencies: ["CCrypto"], swiftSettings: settings),
        // An S3 client: SigV4 signing and blocking transfers over libcurl. The only importer of CCurl.
        .target(name: "ObjectStore", dependencies: ["Digests", "CCurl"], swiftSettings: settings),
        // The store interface and its SQLite implementation. The only importer of GRDB.
        .target(
            name: "Store",
            dependencies: ["ViewportCore", .product(name: "GRDB", package: "GRDB.swift")],
            swiftSettings: settings),
        // The store in a PostgreSQL database nodes share (cluster.database_url), over libpq. The only importer of
        // CPostgres.
        .target(
            name: "PostgresStore",
            dependencies: ["Store", "ViewportCore", "CPostgres", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings),
        // Config, auth, REST, session lifecycle, metrics, systemd: the only module that wires sources and sinks.
        .target(
            name: "ViewportDaemon",
            dependencies: [
                "ViewportCore", "WebSocketIO", "CDPSource", "ViewerGateway", "Store", "PostgresStore", "Digests", "ObjectStore", "Recorder", "CSystemd",
                "VNCBridge", "RFBSource",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Yams", package: "Yams"),
            ],
            // The OpenAPI document served at /v1/openapi.yaml: a link to docs/openapi.yaml, compiled in.
            resources: [.embedInCode("Resources/openapi.yaml")],
            swiftSettings: settings),
        // Hosts in network namespaces on a bridge, links cut or shaped: for the tests and the bench. Needs root.
        .target(name: "NetworkNamespaces", dependencies: ["ViewportCore"], swiftSettings: settings),
        .executableTarget(
            name: "viewportd",
            dependencies: ["ViewportDaemon", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: settings),
        .executableTarget(
            name: "viewportd-bench",
            dependencies: [
                "ViewportDaemon", "WebSocketIO", "ViewportCore", "Recorder", "RFBSource", "ObjectStore", "Digests",
                "NetworkNamespaces",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: settings),

        .testTarget(name: "ViewportCoreTests", dependencies: ["ViewportCore"], swiftSettings: settings),
        .testTarget(
            name: "RecorderTests", dependencies: ["Recorder", "ViewportCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings),
        .testTarget(name: "ObjectStoreTests", dependencies: ["ObjectStore", "Digests"], swiftSettings: settings),
        .testTarget(name: "WebSocketIOTests", dependencies: ["WebSocketIO"], swiftSettings: settings),
        .testTarget(
            name: "CDPSourceTests",
            dependencies: ["CDPSource", "ViewportCore", "WebSocketIO", .product(name: "Logging", package: "swift-log")],
            swiftSettings: settings),
        .testTarget(
            name: "ViewportDaemonTests",
            dependencies: [
                "ViewportDaemon", "ViewportCore", "WebSocketIO", "Store", "PostgresStore", "VNCBridge", "JPEGCodec", "RFBSource",
                "CDPSource", "Recorder", "ViewerGateway", "Digests", "ObjectStore", "NetworkNamespaces",
                .product(name: "Yams", package: "Yams"), .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Fixtures"],
            swiftSettings: settings),
    ]
)

// libFuzzer targets (Fuzz/, run by scripts/fuzz.sh): declared only when VIEWPORTD_FUZZ is set, and built with
// -sanitize=fuzzer,address into .build-fuzz; they call libFuzzer's driver, which the normal build does not link.
if Context.environment["VIEWPORTD_FUZZ"] != nil {
    func fuzzTarget(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
        .executableTarget(name: "fuzz-\(name)", dependencies: dependencies + ["CFuzzDriver"],
                          path: "Fuzz/Targets/\(name)", swiftSettings: settings)
    }
    package.targets += [
        .target(name: "CFuzzDriver", path: "Fuzz/CFuzzDriver"),
        fuzzTarget("ws-framing", ["WebSocketIO"]),
        fuzzTarget("http-range", ["WebSocketIO"]),
        fuzzTarget("cdp-frame", ["CDPSource"]),
        fuzzTarget("viewer-input", ["ViewerGateway"]),
        // Config.swift is a symlink to Sources/ViewportDaemon/Config.swift: the loader needs only Yams, not the
        // whole daemon.
        fuzzTarget("config", [.product(name: "Yams", package: "Yams")]),
        fuzzTarget("mp4cut", ["Recorder"]),
        fuzzTarget("rfb-handshake", ["VNCBridge"]),
    ]
}
