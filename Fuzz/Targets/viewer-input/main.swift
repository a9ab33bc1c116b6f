// libFuzzer target: a viewer's WebSocket text message as Viewer.webSocket(_:didReceive:) handles it: decoded as a
// ViewerRequest, a ping's pong (echoing its `t`) encoded, and an input's coordinates clamped to a frame.
import CFuzzDriver
import Foundation
@testable import ViewerGateway

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    ViewerRequest.fuzz(Data(UnsafeRawBufferPointer(start: data, count: size)))
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
