// libFuzzer target: MP4Cut on a torn or garbage fragmented recording (libavformat reads it). Input: the file's bytes.
import CFuzzDriver
import Foundation
import Recorder

enum Files {
    static let directory = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-fuzz-mp4cut-\(getpid())")
    static let input = directory.appendingPathComponent("in.mp4").path
    static let output = directory.appendingPathComponent("out.mp4").path
}

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let (directory, input, output) = (Files.directory, Files.input, Files.output)
    try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    guard FileManager.default.createFile(atPath: input, contents: Data(UnsafeRawBufferPointer(start: data, count: size))) else {
        fatalError("cannot write \(input)")
    }
    let chapters = [MP4Cut.Chapter(time: 0, title: "start"), MP4Cut.Chapter(time: 1_700_000_000_500_000, title: "mid")]
    _ = try? MP4Cut.cut(fragmented: input, output: output, from: 0, to: nil, chapters: chapters)
    _ = try? MP4Cut.cut(fragmented: input, output: output, from: 1_700_000_000_200_000, to: 1_700_000_000_700_000,
                        chapters: chapters)
    unlink(output)
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
