// libFuzzer target: a WebSocket server's bytes through the client framing (ClientFraming.consume).
// Input: byte 0 picks how the rest is split into reads (1-256 bytes each), like a socket would deliver it.
import CFuzzDriver
import Foundation
@testable import WebSocketIO

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard let first = input.first else { return 0 }
    let chunk = Int(first) + 1
    let maxMessageBytes = 1 << 16
    var framing = ClientFraming(maxMessageBytes: maxMessageBytes)
    var index = 1
    while index < size {
        let end = min(index + chunk, size)
        let events: [ClientFraming.Event]
        do { events = try framing.consume(UnsafeRawBufferPointer(rebasing: input[index..<end])) } catch { return 0 }
        for event in events {
            switch event {
            case .message(let message): precondition(message.data.count <= maxMessageBytes, "message over the limit")
            case .control(_, let payload): precondition(payload.count <= 125, "control payload over 125 bytes")
            }
        }
        index = end
    }
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
