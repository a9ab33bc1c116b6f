import Foundation
import Testing
@testable import WebSocketIO

/// The committed inputs of a fuzz target (scripts/fuzz.sh): its seeds, Fuzz/corpus/<target>, and the crashes it
/// found, Fuzz/regressions/<target>.
private func fuzzInputs(_ target: String) throws -> [(name: String, bytes: [UInt8])] {
    let fuzz = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Fuzz")
    var inputs: [(String, [UInt8])] = []
    for kind in ["corpus", "regressions"] {
        let directory = fuzz.appendingPathComponent(kind).appendingPathComponent(target)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in names.sorted() {
            inputs.append(("\(kind)/\(target)/\(name)", [UInt8](try Data(contentsOf: directory.appendingPathComponent(name)))))
        }
    }
    return inputs
}

/// Replays the fuzz targets' inputs through the same entry points as Fuzz/Targets/<target>/main.swift, so a crash
/// the fuzzer once found stays covered by `swift test`.
@Suite("Fuzz corpus: WebSocketIO")
struct FuzzCorpusWebSocketIOTests {
    @Test func wsFraming() throws {
        let inputs = try fuzzInputs("ws-framing")
        #expect(inputs.count > 10)
        for (_, bytes) in inputs {
            guard let first = bytes.first else { continue }
            let chunk = Int(first) + 1, maxMessageBytes = 1 << 16
            var framing = ClientFraming(maxMessageBytes: maxMessageBytes)
            var index = 1
            reading: while index < bytes.count {
                let end = min(index + chunk, bytes.count)
                let events: [ClientFraming.Event]
                do { events = try bytes[index..<end].withUnsafeBytes { try framing.consume($0) } } catch { break reading }
                for case .message(let message) in events { #expect(message.data.count <= maxMessageBytes) }
                index = end
            }
        }
    }

    @Test func httpRange() throws {
        let inputs = try fuzzInputs("http-range")
        #expect(inputs.count > 10)
        for (name, bytes) in inputs {
            let text = String(decoding: bytes, as: UTF8.self)
            var size = 1000
            var header = Substring(text)
            if let newline = text.firstIndex(of: "\n") {
                guard let parsed = Int(text[..<newline]), parsed >= 0 else { continue }
                size = parsed
                header = text[text.index(after: newline)...]
            }
            if case .some(.some(let range)) = HTTPRange.parse(String(header), size: size) {
                #expect(!range.isEmpty && range.lowerBound >= 0 && range.upperBound <= size, "\(name)")
            }
        }
    }

    /// Found by the ws-framing fuzz target: a frame header announcing 2^44 bytes made the framing allocate that
    /// much before checking the length against the limit.
    @Test func frameAnnouncingAHugeLengthIsRefusedBeforeAnyAllocation() {
        var framing = ClientFraming(maxMessageBytes: 1 << 20)
        let header: [UInt8] = [0x82, 127, 0, 0, 0x10, 0, 0, 0, 0, 0]
        #expect(throws: ClientFraming.Failure.self) { try header.withUnsafeBytes { try framing.consume($0) } }
    }
}
