import Foundation

/// A file the browser finished downloading into ``CDPSource/Options/downloadPath``.
public struct CDPDownload: Sendable, Equatable {
    /// The browser's id of the download, and the name of its file.
    public var guid: String
    /// The name the page or server suggested, made safe to use as a file name: no path separators or control
    /// characters, at most ``DownloadTracker/maxFilenameBytes`` bytes, never empty, `.` or `..`.
    public var suggestedFilename: String
    /// Where the file is, on the browser's host: `downloadPath/guid`.
    public var path: String
    /// Bytes received, as the browser reported them.
    public var size: Int64
}

/// The downloads of one connection, from `Browser.downloadWillBegin` and `Browser.downloadProgress`: a pure state
/// machine that returns each download once it completed. Canceled ones are forgotten.
struct DownloadTracker {
    /// Downloads in progress followed at most: an endpoint announcing downloads without end stays bounded.
    static let maxPending = 1000
    /// Longest suggested file name kept, in UTF-8 bytes (a common file system's limit).
    static let maxFilenameBytes = 255

    let directory: String
    private var pending: [String: String] = [:]  // guid -> suggested file name

    init(directory: String) { self.directory = directory }

    mutating func willBegin(_ event: DownloadWillBegin) {
        // The guid names the file: anything but a plain name could point elsewhere.
        guard Self.isPlainGUID(event.guid), pending[event.guid] != nil || pending.count < Self.maxPending else { return }
        pending[event.guid] = Self.safeFilename(event.suggestedFilename)
    }

    /// The download, when this progress completed it.
    mutating func progress(_ event: DownloadProgress) -> CDPDownload? {
        switch event.state {
        case .inProgress:
            return nil
        case .canceled:
            pending[event.guid] = nil
            return nil
        case .completed:
            guard let name = pending.removeValue(forKey: event.guid) else { return nil }
            // A peer's number is never trusted to convert.
            let size = event.receivedBytes >= 0 && event.receivedBytes < 1e18 ? Int64(event.receivedBytes) : 0
            return CDPDownload(guid: event.guid, suggestedFilename: name,
                               path: URL(fileURLWithPath: directory).appendingPathComponent(event.guid).path,
                               size: size)
        }
    }

    /// Chrome's guids are UUIDs.
    static func isPlainGUID(_ guid: String) -> Bool {
        (1...64).contains(guid.utf8.count) && guid.allSatisfy { $0 == "-" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }
    }

    /// `name` with path separators and control characters replaced, cut to ``maxFilenameBytes`` on a character
    /// boundary; `download` when nothing usable is left.
    static func safeFilename(_ name: String) -> String {
        var safe = ""
        for character in name {
            let replaced = character == "/" || character == "\\" || character.unicodeScalars.contains {
                $0.properties.generalCategory == .control || $0.properties.generalCategory == .format
            }
            let next = replaced ? "_" : String(character)
            guard safe.utf8.count + next.utf8.count <= maxFilenameBytes else { break }
            safe += next
        }
        safe = safe.trimmingCharacters(in: .whitespaces)
        return safe.isEmpty || safe == "." || safe == ".." ? "download" : safe
    }
}
