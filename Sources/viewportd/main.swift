import ArgumentParser
import Foundation
import Logging
import ViewportDaemon

@main
struct Viewportd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viewportd",
        abstract: "Live view of browser sessions: CDP screencast fanned out to WebSocket viewers.",
        version: viewportdVersion,
        subcommands: [Serve.self, Demo.self, CheckConfig.self, RecoverRun.self])
}

struct Options: ParsableArguments {
    @Option(name: .long, help: "YAML config file (default: compiled defaults; VIEWPORTD_* variables override).")
    var config: String?

    init() {}
    init(config: String) { self.config = config }

    func load() throws -> Config {
        do { return try Config.load(path: config) } catch {
            FileHandle.standardError.write(Data("viewportd: \(error)\n".utf8))
            throw ExitCode(2)
        }
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the daemon; SIGHUP reloads API keys and webhook secrets.")
    @OptionGroup var options: Options

    func run() async throws {
        let config = try options.load()
        let logger = makeDaemonLogger(config)
        let path = options.config
        do {
            try await buildDaemon(config, logger: logger, reloadConfig: { try Config.load(path: path) }).run()
        } catch let error as DaemonError {
            logger.critical("\(error)")
            throw ExitCode(1)
        }
    }
}

struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon with a demo session: a bundled animated page in headless Chromium.")
    @OptionGroup var options: Options

    func run() async throws {
        var config = try options.load()
        // Without a chosen state directory the demo starts from an empty temporary one: sessions of an earlier
        // demo point at a browser that is gone.
        if options.config == nil, ProcessInfo.processInfo.environment["VIEWPORTD_STATE_DIR"] == nil {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-demo")
            try? FileManager.default.removeItem(at: directory)
            config.stateDir = directory.path
        }
        try await ViewportDaemon.Demo.run(config: config, logger: makeDaemonLogger(config))
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a config file (with VIEWPORTD_* overrides) and print the effective config, secrets masked.")
    @Argument(help: "The YAML config file.") var file: String

    func run() throws {
        let config = try Options(config: file).load()
        print(config.yaml(), terminator: "")
    }
}

struct RecoverRun: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recover-run",
        abstract: "Rebuild a run whose host is gone from the object store (artifacts.store: s3): its MP4 from the "
            + "recording's parts in the bucket, published as terminated with its webhook queued; prints the run.")
    @OptionGroup var options: Options
    @Argument(help: "The run's id.") var runID: String
    @Option(help: "The run's organization, when runs of several organizations have this id.") var organization: String?

    func run() async throws {
        let config = try options.load()
        do {
            print(try await recoverRun(runID, organizationID: organization, config: config,
                                       logger: makeDaemonLogger(config)))
        } catch {
            FileHandle.standardError.write(Data("viewportd: recover-run \(runID): \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}
