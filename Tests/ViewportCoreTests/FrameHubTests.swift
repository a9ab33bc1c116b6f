import Foundation
import Synchronization
import Testing
@testable import ViewportCore

/// A real 48×16 JPEG (ffmpeg, baseline).
let tinyJPEG = Data(base64Encoded: "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgEBAQEBAUFBQUFBQYGBgYGBgYGBgYGBgYHBwcICAgHBwcGBgcHCAgICAkJCQgICAgJCQoKCgwMCwsODg4RERT/xABNAAEBAAAAAAAAAAAAAAAAAAAABgEBAQEAAAAAAAAAAAAAAAAAAAYHEAEAAAAAAAAAAAAAAAAAAAAAEQEAAAAAAAAAAAAAAAAAAAAA/8AAEQgAEAAwAwEiAAIRAAMRAP/aAAwDAQACEQMRAD8AiwEo38AAAB//2Q==")!

private func publish(_ hub: FrameHub, time: UInt64 = 1_000, url: String? = nil) -> Frame? {
    hub.publish(jpeg: FrameBytes(copying: tinyJPEG), width: 48, height: 16, captureTime: time, url: url)
}

@Suite("Frame hub")
struct FrameHubTests {
    @Test func aNewConsumerGetsTheLatestFrameAtOnce() {
        let hub = FrameHub()
        _ = publish(hub, time: 1)
        let latest = publish(hub, time: 2)
        let woken = Atomic(0)
        let subscription = hub.subscribe(kind: .viewer, capacity: 2) { woken.add(1, ordering: .relaxed) }
        #expect(woken.load(ordering: .relaxed) == 1)
        #expect(subscription.next() === latest)
        #expect(subscription.next() == nil)
    }

    @Test func aFullQueueDropsItsOldestFrameAndCountsIt() {
        let hub = FrameHub()
        let subscription = hub.subscribe(kind: .viewer, capacity: 2) {}
        let frames = (1...5).compactMap { publish(hub, time: UInt64($0)) }
        #expect(frames.map(\.sequence) == [1, 2, 3, 4, 5])
        #expect(subscription.stats == .init(delivered: 0, dropped: 3, queued: 2))
        #expect(subscription.next()?.sequence == 4)
        #expect(subscription.next()?.sequence == 5)
        #expect(subscription.stats == .init(delivered: 2, dropped: 3, queued: 0))
    }

    @Test func aRelayKeepsItsOriginsNumbersAndStillOnlyCountsUp() {
        let hub = FrameHub()
        let numbers = [40, 41, 45, 3, 46].compactMap { origin in
            hub.publish(jpeg: FrameBytes(copying: tinyJPEG), width: 48, height: 16, captureTime: 1, url: nil,
                        sequence: UInt64(origin))?.sequence
        }
        // 3: the origin restarted its numbering; the relay's viewers still see numbers go up.
        #expect(numbers == [40, 41, 45, 46, 47])
    }

    @Test func aConsumerThatNeverReadsBlocksNeitherTheSourceNorOtherConsumers() async {
        let hub = FrameHub()
        let stalled = hub.subscribe(kind: .viewer, capacity: 2) {}
        let received = Mutex<[UInt64]>([])
        let reader = hub.subscribe(kind: .recorder, capacity: 1000) {}
        let started = ContinuousClock.now
        for i in 1...10_000 { _ = publish(hub, time: UInt64(i)) }
        while let frame = reader.next() { received.withLock { $0.append(frame.sequence) } }
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(stalled.stats.queued == 2 && stalled.stats.dropped == 9_998)
        #expect(received.withLock { $0.count } == 1000)
        #expect(reader.stats.dropped == 9_000)
    }

    @Test func frameBytesAreSharedNotCopied() throws {
        let hub = FrameHub()
        let a = hub.subscribe(kind: .viewer, capacity: 2) {}
        let b = hub.subscribe(kind: .vncBridge, capacity: 2) {}
        _ = publish(hub)
        let fromA = try #require(a.next()), fromB = try #require(b.next())
        #expect(fromA.jpeg === fromB.jpeg)
    }

    @Test func captureTimesNeverGoBackwards() {
        let hub = FrameHub()
        let times = [100, 90, 120, 119, 130].compactMap { publish(hub, time: UInt64($0))?.captureTime }
        #expect(times == [100, 100, 120, 120, 130])
    }

    @Test func demandFollowsTheFirstAndLastConsumer() {
        let hub = FrameHub()
        let changes = Mutex<[Bool]>([])
        hub.onDemandChange { wanted in changes.withLock { $0.append(wanted) } }
        let first = hub.subscribe(kind: .viewer, capacity: 2) {}
        let second = hub.subscribe(kind: .viewer, capacity: 2) {}
        first.cancel()
        second.cancel()
        second.cancel()
        #expect(changes.withLock { $0 } == [false, true, false])
    }

    @Test func statusChangesReachConsumersAndAFinalStatusEndsTheStream() {
        let hub = FrameHub()
        let woken = Atomic(0)
        let subscription = hub.subscribe(kind: .viewer, capacity: 2) { woken.add(1, ordering: .relaxed) }
        #expect(subscription.statusChange() == nil)
        hub.setStatus(.reconnecting)
        #expect(woken.load(ordering: .relaxed) == 1)
        #expect(subscription.statusChange() == .reconnecting)
        #expect(subscription.statusChange() == nil)
        hub.setStatus(.failed(reason: "gone"))
        hub.setStatus(.live)
        #expect(hub.status == .failed(reason: "gone"))
        #expect(subscription.statusChange() == .failed(reason: "gone"))
        #expect(publish(hub) == nil, "no frames after the end")
    }

    @Test func theWireHeaderPrecedesTheJPEG() {
        let hub = FrameHub()
        let frame = publish(hub, time: 0x0102_0304_0506_0708)!
        let wire = UnsafeRawBufferPointer(start: frame.wireMessage, count: frame.wireMessageCount)
        #expect(Array(wire[0..<4]) == Array("VPF1".utf8))
        #expect(Array(wire[4..<12]) == [0, 0, 0, 0, 0, 0, 0, 1])
        #expect(Array(wire[12..<20]) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(Array(wire[20..<24]) == [0, 48, 0, 16])
        #expect(Data(wire[24...]) == tinyJPEG)
        #expect(Frame.wireMessageHeadroom >= 16, "room for lws to write the WebSocket frame header")
    }
}

@Suite("JPEG")
struct JPEGTests {
    @Test func readsTheSizeFromTheStartOfFrameMarker() {
        let size = tinyJPEG.withUnsafeBytes { JPEG.dimensions($0) }
        #expect(size?.width == 48 && size?.height == 16)
    }

    @Test func rejectsWhatIsNotAJPEG() {
        for bytes in [Data(), Data("not a jpeg".utf8), tinyJPEG.prefix(20), Data([0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 0, 0, 0, 0, 0])] {
            #expect(bytes.withUnsafeBytes { JPEG.dimensions($0) } == nil)
        }
    }
}
