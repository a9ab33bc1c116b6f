import Foundation
import Synchronization
import Testing
import ViewportCore

@Suite("A blocking loop on its own thread")
struct LoopThreadTests {
    @Test func stopEndsACallOnlyTheInterruptCanEnd_joinReturnsPromptly_andNoCallbackRunsAfterJoin() async throws {
        var ends: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        let (fd, peer) = (ends[0], ends[1])
        let callbacks = Atomic(0)
        let loop = LoopThread(name: "test-loop")
        loop.start(interrupt: { _ = shutdown(fd, Int32(SHUT_RDWR)) }) {
            var byte: UInt8 = 0
            // A blocking read, like a C library's: only the interrupt (a shutdown) ends it without a byte.
            while !loop.isStopping, recv(fd, &byte, 1, 0) == 1 { callbacks.add(1, ordering: .relaxed) }
        }
        var byte: UInt8 = 1
        _ = send(peer, &byte, 1, 0)
        try await eventually { callbacks.load(ordering: .relaxed) == 1 }

        let start = ContinuousClock.now
        loop.stop()
        loop.join()
        #expect(ContinuousClock.now - start < .seconds(1), "stop + join took \(ContinuousClock.now - start)")
        _ = send(peer, &byte, 1, Int32(MSG_NOSIGNAL))
        try await Task.sleep(for: .milliseconds(200))
        #expect(callbacks.load(ordering: .relaxed) == 1, "nothing ran after join")
        loop.join()  // a second join returns too
    }

    @Test func waitEndsAtAWakeOrItsDeadline_andAtOnceWhenStopping() async throws {
        let loop = LoopThread(name: "test-wait")
        let turns = Atomic(0)
        let waitedNanoseconds = Atomic<UInt64>(0)
        let longWait = DispatchTime.now() + 60
        loop.start {
            loop.wait(until: longWait)  // only a wake ends this one
            turns.add(1, ordering: .relaxed)
            let start = DispatchTime.now()
            loop.wait(until: start + 0.2)  // nobody wakes this one
            waitedNanoseconds.store(DispatchTime.now().uptimeNanoseconds - start.uptimeNanoseconds, ordering: .relaxed)
            turns.add(1, ordering: .relaxed)
            while !loop.isStopping { loop.wait(until: longWait) }
            loop.wait(until: longWait)  // stopping: returns at once
        }
        try await Task.sleep(for: .milliseconds(100))
        #expect(turns.load(ordering: .relaxed) == 0)
        loop.wake()
        try await eventually { turns.load(ordering: .relaxed) == 2 }
        #expect(waitedNanoseconds.load(ordering: .relaxed) >= 190_000_000, "the deadline ended the second wait")
        let start = ContinuousClock.now
        loop.stop()
        loop.join()
        #expect(ContinuousClock.now - start < .seconds(1))
    }

    @Test func joinOnTheLoopsOwnThreadReturnsInsteadOfWaitingForItself() async throws {
        let loop = LoopThread(name: "test-self-join")
        let joined = Atomic(false)
        loop.start {
            loop.stop()
            loop.join()
            joined.store(true, ordering: .relaxed)
        }
        try await eventually { joined.load(ordering: .relaxed) }
        loop.join()
    }
}

/// Polls `condition` every 10 ms for up to `seconds`; fails the test when it never holds.
private func eventually(within seconds: Double = 5, _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("condition not met within \(seconds) s")
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}
