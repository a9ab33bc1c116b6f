// libFuzzer target: the RFB handshake the noVNC relay speaks (RelayHandshake), fed chunks from either side as
// RelayHandshake.fuzz describes; its invariants trap when broken.
import CFuzzDriver
import Foundation
import VNCBridge

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    RelayHandshake.fuzz(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
