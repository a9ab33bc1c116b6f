import Foundation
import Testing
@testable import ViewerGateway
@testable import ViewportDaemon
import VNCBridge

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
        for (_, bytes) in inputs {
            guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
                  let type = object["type"] as? String
            else { continue }
            if type == "ping" {
                _ = try? JSONSerialization.data(withJSONObject: ["type": "pong", "t": object["t"] ?? NSNull()])
            }
            _ = try? ViewerInput.parse(object, frameWidth: 1280, frameHeight: 720)
            _ = try? ViewerInput.parse(object, frameWidth: 0, frameHeight: 0)
        }
    }
}
