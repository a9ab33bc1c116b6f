import Foundation
import Recorder
import Testing

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
