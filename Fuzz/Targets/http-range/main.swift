// libFuzzer target: the `Range` header of artifact downloads (HTTPRange.parse). The HTTP head itself is parsed by
// libwebsockets (C), not here. Input: `<size>\n<header value>`; without a newline, the whole input is the header
// of a 1000-byte file.
import CFuzzDriver
import Foundation
import WebSocketIO

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    var fileSize = 1000
    var header = Substring(text)
    if let newline = text.firstIndex(of: "\n") {
        guard let parsed = Int(text[..<newline]), parsed >= 0 else { return 0 }
        fileSize = parsed
        header = text[text.index(after: newline)...]
    }
    if case .some(.some(let range)) = HTTPRange.parse(String(header), size: fileSize) {
        precondition(!range.isEmpty && range.lowerBound >= 0 && range.upperBound <= fileSize, "range outside the file")
    }
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
