public import Foundation
import Synchronization

/// A blocking loop (a C library's, usually) on a thread of its own: started once, woken, asked to stop, joined.
///
/// The body runs on the thread until it returns. Between turns it checks ``isStopping``; when it has nothing to do
/// it parks in ``wait(until:)``. ``wake()`` ends such a wait early and calls the `interrupt` given to
/// ``start(interrupt:_:)``, which is how a wait inside the C library ends (shutting its socket down, for example).
/// ``stop()`` asks the body to return and wakes it; ``join()`` waits until it has returned: after `join`, nothing
/// the body calls runs any more.
public final class LoopThread: Sendable {
    private let name: String
    private let stopping = Atomic(false)
    private let wakeUps = DispatchSemaphore(value: 0)
    private let ended = DispatchSemaphore(value: 0)
    private let interrupt = Mutex<@Sendable () -> Void>({})
    /// The thread's pthread id once it runs (0 before), so that `join` on the thread itself does not deadlock.
    private let thread = Atomic<UInt>(0)

    /// A loop whose thread will be called `name`.
    public init(name: String) { self.name = name }

    /// Runs `body` on a new thread. `interrupt`, called by every ``wake()`` (from any thread), ends a blocking call
    /// of the body's that ``wait(until:)`` cannot. Call once.
    public func start(interrupt: @escaping @Sendable () -> Void = {}, _ body: @escaping @Sendable () -> Void) {
        self.interrupt.withLock { $0 = interrupt }
        let thread = Thread { [self] in
            self.thread.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .releasing)
            body()
            ended.signal()
        }
        thread.name = name
        thread.start()
    }

    /// True once ``stop()`` was called: the body should return.
    public var isStopping: Bool { stopping.load(ordering: .acquiring) }

    /// Ends the body's current (or next) ``wait(until:)`` and calls its `interrupt`.
    public func wake() {
        wakeUps.signal()
        interrupt.withLock { $0 }()
    }

    /// Asks the body to return and wakes it. Idempotent; does not wait (see ``join()``).
    public func stop() {
        guard stopping.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else {
            return
        }
        wake()
    }

    /// Waits until the body has returned (at once when it has or when called on the loop's own thread, where
    /// waiting could never end). A loop never started must not be joined.
    public func join() {
        guard thread.load(ordering: .acquiring) != UInt(bitPattern: Int(bitPattern: pthread_self())) else { return }
        ended.wait()
        ended.signal()  // for the next joiner
    }

    /// For the body: parks until ``wake()`` or `deadline`, whichever comes first (at once when stopping). A wake
    /// that came while the body was busy ends the next wait at once.
    public func wait(until deadline: DispatchTime) {
        guard !isStopping else { return }
        _ = wakeUps.wait(timeout: deadline)
    }
}
