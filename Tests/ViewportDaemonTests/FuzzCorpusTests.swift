import Foundation
import Testing
@testable import CDPSource
import Recorder
@testable import ViewerGateway
@testable import ViewportDaemon
import VNCBridge
@testable import WebSocketIO

// Every fuzz target's committed inputs replayed through the same entry points as Fuzz/Targets/<target>/main.swift,
// so a crash the fuzzer once found stays covered by `swift test`.

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

/// Replays the config and viewer-input fuzz targets' inputs through the same entry points as
/// Fuzz/Targets/<target>/main.swift.
@Suite("Fuzz corpus: config and viewer input")
struct FuzzCorpusDaemonTests {
    @Test func config() throws {
        let inputs = try fuzzInputs("config")
        #expect(inputs.count > 5)
        for (name, bytes) in inputs {
            let text = String(decoding: bytes, as: UTF8.self)
            if let config = try? Config.load(yaml: text) {
                #expect(try Config.load(yaml: config.yaml(revealingSecrets: true)) == config, "\(name)")
            }
            _ = try? Config.load(yaml: nil, environment: ["VIEWPORTD_API_KEYS": text, "VIEWPORTD_SCREENCAST": text])
        }
    }

    @Test func rfbHandshake() throws {
        let inputs = try fuzzInputs("rfb-handshake")
        #expect(inputs.count >= 6)
        for (_, bytes) in inputs { bytes.withUnsafeBytes { RelayHandshake.fuzz($0) } }
    }

    @Test func viewerInput() throws {
        let inputs = try fuzzInputs("viewer-input")
        #expect(inputs.count > 10)
        for (_, bytes) in inputs { ViewerRequest.fuzz(Data(bytes)) }
    }
}

/// Replays the cdp-frame fuzz target's inputs through the same entry points as Fuzz/Targets/cdp-frame/main.swift.
@Suite("Fuzz corpus: CDPSource")
struct FuzzCorpusCDPSourceTests {
    @Test func cdpFrame() throws {
        let inputs = try fuzzInputs("cdp-frame")
        #expect(inputs.count > 10)
        for (name, bytes) in inputs {
            if let parsed = FrameMessage.parse(Data(bytes)) {
                _ = parsed.frame?.data
            }
            FrameMessage.fuzzConnection(Data(bytes))
            if let decoded = bytes.withUnsafeBytes({ Base64.decode($0) }), let reference = Data(base64Encoded: Data(bytes)) {
                #expect(reference == decoded.data, "\(name)")
            }
        }
    }
}

/// Replays the mp4cut fuzz target's inputs (torn and garbled fragmented recordings) through MP4Cut as
/// Fuzz/Targets/mp4cut/main.swift does.
@Suite("Fuzz corpus: MP4Cut")
struct FuzzCorpusMP4CutTests {
    @Test func mp4cut() throws {
        let inputs = try fuzzInputs("mp4cut")
        #expect(inputs.count > 3)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-corpus-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let input = directory.appendingPathComponent("in.mp4").path, output = directory.appendingPathComponent("out.mp4").path
        let chapters = [MP4Cut.Chapter(time: 0, title: "start"), MP4Cut.Chapter(time: 1_700_000_000_500_000, title: "mid")]
        for (_, bytes) in inputs {
            #expect(FileManager.default.createFile(atPath: input, contents: Data(bytes)))
            _ = try? MP4Cut.cut(fragmented: input, output: output, from: 0, to: nil, chapters: chapters)
            _ = try? MP4Cut.cut(fragmented: input, output: output, from: 1_700_000_000_200_000, to: 1_700_000_000_700_000,
                                chapters: chapters)
            unlink(output)
        }
    }
}

/// Replays the ws-framing and http-range fuzz targets' inputs as Fuzz/Targets/<target>/main.swift does.
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
}
