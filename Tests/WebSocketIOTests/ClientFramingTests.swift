import Foundation
import Testing
@testable import WebSocketIO

/// An unmasked server frame.
private func serverFrame(_ opcode: UInt8, _ payload: [UInt8], final: Bool = true) -> [UInt8] {
    var frame: [UInt8] = [(final ? 0x80 : 0) | opcode]
    switch payload.count {
    case ..<126: frame.append(UInt8(payload.count))
    case ..<65536: frame += [126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
    default: frame.append(127); frame += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> ($0 * 8)) & 0xFF) }
    }
    return frame + payload
}

private func feed(_ framing: inout ClientFraming, _ bytes: [UInt8], chunk: Int) throws -> [ClientFraming.Event] {
    var events: [ClientFraming.Event] = []
    var index = 0
    while index < bytes.count {
        let end = min(index + chunk, bytes.count)
        events += try bytes[index..<end].withUnsafeBytes { try framing.consume($0) }
        index = end
    }
    return events
}

private func messages(_ events: [ClientFraming.Event]) -> [String] {
    events.compactMap { if case .message(let m) = $0 { (m.isBinary ? "b:" : "t:") + String(decoding: m.data, as: UTF8.self) } else { nil } }
}

@Suite("WebSocket client framing")
struct ClientFramingTests {
    @Test(arguments: [1, 2, 3, 7, 1000, 200_000])
    func messagesSurviveAnyChunkingOfTheStream(chunk: Int) throws {
        let big = [UInt8](repeating: UInt8(ascii: "x"), count: 70_000)
        let stream = serverFrame(1, Array("hello".utf8))
            + serverFrame(2, Array("part1-".utf8), final: false)
            + serverFrame(0x9, Array("ping!".utf8))  // a control frame between fragments
            + serverFrame(0, Array("part2".utf8))
            + serverFrame(1, Array(repeating: UInt8(ascii: "y"), count: 300))
            + serverFrame(1, big)
        var framing = ClientFraming(maxMessageBytes: 1 << 20)
        let events = try feed(&framing, stream, chunk: chunk)
        #expect(messages(events) == ["t:hello", "b:part1-part2", "t:" + String(repeating: "y", count: 300),
                                     "t:" + String(repeating: "x", count: 70_000)])
        let controls = events.compactMap { if case .control(let op, let p) = $0 { "\(op):\(String(decoding: p, as: UTF8.self))" } else { nil } }
        #expect(controls == ["9:ping!"])
    }

    @Test func aMessageOverTheLimitIsRefused() {
        var framing = ClientFraming(maxMessageBytes: 100)
        #expect(throws: ClientFraming.Failure.self) { _ = try feed(&framing, serverFrame(1, Array(repeating: 0, count: 101)), chunk: 50) }
    }

    @Test func anOversizedControlFrameIsAProtocolError() {
        var framing = ClientFraming(maxMessageBytes: 1000)
        #expect(throws: ClientFraming.Failure.self) { _ = try feed(&framing, serverFrame(0x9, Array(repeating: 0, count: 126)), chunk: 500) }
    }

    @Test(arguments: [0, 5, 125, 126, 65535, 65536, 100_000])
    func outgoingFramesAreMaskedWithTheRightLength(count: Int) {
        let payload = (0..<count).map { UInt8($0 & 0xFF) }
        let frame = ClientFraming.frame(opcode: 1, payload: payload)
        #expect(frame[0] == 0x81)
        #expect(frame[1] & 0x80 != 0, "client frames are masked")
        let (length, offset): (Int, Int) = switch frame[1] & 0x7F {
        case 126: (Int(frame[2]) << 8 | Int(frame[3]), 4)
        case 127: (frame[2..<10].reduce(0) { $0 << 8 | Int($1) }, 10)
        default: (Int(frame[1] & 0x7F), 2)
        }
        #expect(length == count)
        let mask = Array(frame[offset..<offset + 4])
        let unmasked = frame[(offset + 4)...].enumerated().map { $1 ^ mask[$0 & 3] }
        #expect(unmasked == payload)
    }
}

@Suite("WebSocket client framing: hostile lengths")
struct HostileFrameTests {
    @Test func aLengthWithTheTopBitSetIsAProtocolError() {
        var framing = ClientFraming(maxMessageBytes: 1 << 20)
        let frame: [UInt8] = [0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 5] + Array("hello".utf8)
        #expect(throws: ClientFraming.Failure.self) { _ = try feed(&framing, frame, chunk: 100) }
    }

    @Test func aHugeContinuationLengthIsRefusedWithoutOverflow() {
        var framing = ClientFraming(maxMessageBytes: 1 << 20)
        let first = serverFrame(1, Array("x".utf8), final: false)
        let continuation: [UInt8] = [0x80, 127, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        #expect(throws: ClientFraming.Failure.self) { _ = try feed(&framing, first + continuation, chunk: 100) }
    }

    /// Found by the ws-framing fuzz target: a frame header announcing 2^44 bytes made the framing allocate that
    /// much before checking the length against the limit.
    @Test func frameAnnouncingAHugeLengthIsRefusedBeforeAnyAllocation() {
        var framing = ClientFraming(maxMessageBytes: 1 << 20)
        let header: [UInt8] = [0x82, 127, 0, 0, 0x10, 0, 0, 0, 0, 0]
        #expect(throws: ClientFraming.Failure.self) { try header.withUnsafeBytes { try framing.consume($0) } }
    }
}
