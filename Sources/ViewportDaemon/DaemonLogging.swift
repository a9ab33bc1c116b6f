import Foundation
public import Logging
import Synchronization

/// One line per event on standard error: `<time> <level> <label>: <metadata> <message>`.
///
/// When standard error is the journal (`JOURNAL_STREAM` names it), lines carry no time (the journal stamps each
/// line) and start with the syslog priority (`<3>` for errors, ...) so the journal files them at the right level.
struct DaemonLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    let label: String
    let journal: Bool

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { $1 } }
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        let prefix = journal
            ? "<\(Self.priority(event.level))>\(event.level) \(label):"
            : "\(Date().formatted(.iso8601)) \(event.level) \(label):"
        let line = [prefix, fields, event.message.description].filter { !$0.isEmpty }.joined(separator: " ") + "\n"
        Self.output.withLock { _ in
            line.utf8CString.withUnsafeBufferPointer { _ = write(2, $0.baseAddress, $0.count - 1) }
        }
    }

    /// Serialises writes, so concurrent lines never interleave.
    private static let output = Mutex(())

    private static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// True when standard error is the journal stream systemd set up (`JOURNAL_STREAM` is `device:inode` of it).
    static var stderrIsJournal: Bool {
        guard let stream = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        let parts = stream.split(separator: ":").compactMap { UInt64($0) }
        var info = stat()
        guard parts.count == 2, fstat(2, &info) == 0 else { return false }
        return UInt64(info.st_dev) == parts[0] && UInt64(info.st_ino) == parts[1]
    }
}

private let bootstrapped = Atomic(false)

/// The daemon's logger at `config.log_level`, logging through ``DaemonLogHandler`` (set up once per process).
public func makeDaemonLogger(_ config: Config) -> Logger {
    if bootstrapped.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged {
        let journal = DaemonLogHandler.stderrIsJournal
        LoggingSystem.bootstrap { DaemonLogHandler(label: $0, journal: journal) }
    }
    var logger = Logger(label: "viewportd")
    logger.logLevel = Logger.Level(rawValue: config.logLevel.rawValue) ?? .info
    return logger
}
