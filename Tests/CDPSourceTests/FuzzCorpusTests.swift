import Foundation
import Testing
@testable import CDPSource

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

/// Replays the cdp-frame fuzz target's inputs through the same entry points as Fuzz/Targets/cdp-frame/main.swift.
@Suite("Fuzz corpus: CDPSource")
struct FuzzCorpusCDPSourceTests {
    @Test func cdpFrame() throws {
        let inputs = try fuzzInputs("cdp-frame")
        #expect(inputs.count > 10)
        for (name, bytes) in inputs {
            if let (object, frame) = FrameMessage.parse(Data(bytes)) {
                _ = object["method"]
                _ = frame?.data
            }
            if let decoded = bytes.withUnsafeBytes({ Base64.decode($0) }), let reference = Data(base64Encoded: Data(bytes)) {
                #expect(reference == decoded.data, "\(name)")
            }
        }
    }
}
