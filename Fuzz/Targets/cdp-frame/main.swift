// libFuzzer target: a browser's CDP message through the frame fast path (FrameMessage.parse, which cuts out and
// decodes the base64 `data` and decodes the rest as a typed message), and the input as base64 text (Base64.decode), checked against Foundation's decoder.
// The input's lines are also a browser's messages driving a connection's tab and download trackers.
import CFuzzDriver
import Foundation
@testable import CDPSource

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    if let parsed = FrameMessage.parse(Data(input)) {
        _ = parsed.frame?.data
    }
    FrameMessage.fuzzConnection(Data(input))
    if let decoded = Base64.decode(input) {
        if let reference = Data(base64Encoded: Data(input)) {
            precondition(reference == decoded.data, "Base64.decode differs from Foundation")
        }
    }
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
