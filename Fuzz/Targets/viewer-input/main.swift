// libFuzzer target: a viewer's WebSocket text message as Viewer.webSocket(_:didReceive:) handles it: JSON decoded
// with JSONSerialization, the `ping` reply's echo of `t` encoded again, and input messages through
// ViewerInput.parse.
import CFuzzDriver
import Foundation
@testable import ViewerGateway

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard let object = try? JSONSerialization.jsonObject(with: Data(UnsafeRawBufferPointer(start: data, count: size))) as? [String: Any],
          let type = object["type"] as? String
    else { return 0 }
    if type == "ping" {
        _ = try? JSONSerialization.data(withJSONObject: ["type": "pong", "t": object["t"] ?? NSNull()])
    }
    _ = try? ViewerInput.parse(object, frameWidth: 1280, frameHeight: 720)
    _ = try? ViewerInput.parse(object, frameWidth: 0, frameHeight: 0)
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
