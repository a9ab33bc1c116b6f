import Foundation
import ViewportCore

/// Fast handling of the CDP messages that carry a frame (`Page.screencastFrame`, `Page.captureScreenshot`
/// replies): their `data` is a base64 JPEG of up to hundreds of kB, which a JSON decoder would turn into a string
/// and then decode again. Here the value is cut out of the raw bytes and decoded once, straight into the frame's
/// buffer; only the small rest of the message goes to the JSON decoder (``CDPInbound``).
enum FrameMessage {
    /// Largest JSON decoded besides a frame's `data`: the service thread must not spend long on one message, and
    /// nothing viewportd asks a browser for answers with more.
    static let maxJSONBytes = 1 << 20

    /// A browser's message: decoded, its JSON (for a reply's waiter to decode the result), and its image.
    struct Parsed {
        var message: CDPInbound
        /// The message with `data` emptied when it was cut out.
        var json: Data
        /// The decoded `data`, if the message had one.
        var frame: FrameBytes?
    }

    /// Nil for a message that is no CDP message viewportd reads, or whose JSON besides `data` is over
    /// ``maxJSONBytes``. The image is decoded only once the rest decoded.
    static func parse(_ message: Data) -> Parsed? {
        guard let (start, end) = dataValueRange(message) else {
            guard message.count <= maxJSONBytes, let decoded = try? CDPInbound.decode(message) else { return nil }
            return Parsed(message: decoded, json: message)
        }
        guard message.count - (end - start) <= maxJSONBytes else { return nil }
        var rest = Data(capacity: message.count - (end - start))
        rest.append(message[message.startIndex..<message.startIndex + start])
        rest.append(message[message.startIndex + end..<message.endIndex])
        guard let decoded = try? CDPInbound.decode(rest) else { return nil }
        let frame = message.withUnsafeBytes { Base64.decode(UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
        return Parsed(message: decoded, json: rest, frame: frame)
    }

    /// Offsets of the characters between the quotes of the first `"data":"..."` value.
    private static func dataValueRange(_ message: Data) -> (Int, Int)? {
        let key = Array(#""data":""#.utf8)
        return message.withUnsafeBytes { bytes -> (Int, Int)? in
            guard bytes.count > key.count, let base = bytes.baseAddress else { return nil }
            var index = 0
            while let found = memchr(base + index, Int32(key[0]), bytes.count - index - key.count) {
                let at = base.distance(to: UnsafeRawPointer(found))
                if memcmp(found, key, key.count) == 0 {
                    let start = at + key.count
                    // Base64 has no quote; an escaped quote would not be a base64 value anyway.
                    guard let close = memchr(base + start, Int32(UInt8(ascii: "\"")), bytes.count - start) else { return nil }
                    return (start, base.distance(to: UnsafeRawPointer(close)))
                }
                index = at + 1
                if index + key.count >= bytes.count { return nil }
            }
            return nil
        }
    }
}

/// Standard base64 decoding into a new frame buffer.
enum Base64 {
    private static let table: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, character) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
            table[Int(character)] = UInt8(index)
        }
        return table
    }()

    /// The decoded bytes, or nil when `text` is not padded base64 (escapes included).
    static func decode(_ text: UnsafeRawBufferPointer) -> FrameBytes? {
        let count = text.count
        guard count % 4 == 0, count > 0 else { return nil }
        let padding = (text[count - 1] == UInt8(ascii: "=") ? 1 : 0) + (text[count - 2] == UInt8(ascii: "=") ? 1 : 0)
        let output = FrameBytes(count: count / 4 * 3 - padding)
        let out = output.payload.assumingMemoryBound(to: UInt8.self)
        let ok = table.withUnsafeBufferPointer { table -> Bool in
            var o = 0
            var i = 0
            while i < count {
                let a = table[Int(text[i])], b = table[Int(text[i + 1])]
                let last = i + 4 == count
                let c = last && padding == 2 ? 0 : table[Int(text[i + 2])]
                let d = last && padding >= 1 ? 0 : table[Int(text[i + 3])]
                if (a | b | c | d) & 0xC0 != 0 { return false }
                let triple = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                out[o] = UInt8(truncatingIfNeeded: triple >> 16)
                if o + 1 < output.count { out[o + 1] = UInt8(truncatingIfNeeded: triple >> 8) }
                if o + 2 < output.count { out[o + 2] = UInt8(truncatingIfNeeded: triple) }
                o += 3
                i += 4
            }
            return true
        }
        return ok ? output : nil
    }
}

extension FrameMessage {
    /// What a browser's messages do to a connection's pure parts, for the fuzzer and its corpus replay: each line
    /// of `input` is one message, parsed as the connection parses it; its events drive a tab tracker and a
    /// download tracker as the connection drives them. Traps when a bound or a file name rule is broken.
    static func fuzzConnection(_ input: Data) {
        var tabs = TabTracker(pageEndpoint: false)
        var downloads = DownloadTracker(directory: "/downloads")
        for line in input.split(separator: UInt8(ascii: "\n")) {
            guard let parsed = parse(Data(line)) else { continue }
            _ = parsed.frame?.data
            guard case .event(let event, let session) = parsed.message else { continue }
            switch event {
            case .targetInfo(let info): _ = tabs.handle(.targetInfo(info))
            case .attachedToTarget(let attached):
                _ = tabs.handle(.pageAttached(parent: session, session: attached.sessionId, page: attached.targetInfo))
                _ = tabs.handle(.attachReplied(tab: attached.targetInfo.targetId, session: attached.sessionId))
            case .detachedFromTarget(let detached): _ = tabs.handle(.detached(session: detached))
            case .targetDestroyed(let target): _ = tabs.handle(.destroyed(target: target))
            case .downloadWillBegin(let download): downloads.willBegin(download)
            case .downloadProgress(let progress):
                guard let done = downloads.progress(progress) else { continue }
                let name = done.suggestedFilename
                precondition(!name.contains("/") && !name.contains("\\") && ![".", "..", ""].contains(name)
                             && name.utf8.count <= DownloadTracker.maxFilenameBytes, "unsafe file name \(name)")
                precondition(done.path == "/downloads/" + done.guid && !done.guid.contains("/"), "path \(done.path)")
            case .screencastFrame, .screencastVisibilityChanged, .other: break
            }
            _ = tabs.activePage.flatMap(tabs.url(of:))
        }
    }
}
