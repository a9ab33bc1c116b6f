import Dispatch
import Synchronization

/// A wake-up call for one waiting task: ``wait(seconds:)`` returns on ``signal()``, after `seconds` or on
/// cancellation. A signal while nobody waits is kept for the next wait, so none is lost between two waits.
final class Wakeup: Sendable {
    private struct State {
        var signalled = false
        var waiter: CheckedContinuation<Void, Never>?
        /// Tells a timer of an earlier wait from the current one.
        var generation: UInt64 = 0
    }

    private let state = Mutex(State())

    func signal() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard let waiter = state.waiter else {
                state.signalled = true
                return nil
            }
            state.waiter = nil
            return waiter
        }
        waiter?.resume()
    }

    /// Waits for a signal, at most `seconds` (nil: no limit).
    func wait(seconds: Double?) async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let generation = state.withLock { state -> UInt64? in
                    if state.signalled || Task.isCancelled {
                        state.signalled = false
                        return nil
                    }
                    state.generation += 1
                    state.waiter = continuation
                    return state.generation
                }
                guard let generation else { return continuation.resume() }
                if let seconds {
                    DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { self.resume(generation) }
                }
            }
        } onCancel: {
            resume(nil)
        }
    }

    /// Resumes the waiter of `generation` (nil: whichever waits).
    private func resume(_ generation: UInt64?) {
        state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard generation == nil || generation == state.generation, let waiter = state.waiter else { return nil }
            state.waiter = nil
            return waiter
        }?.resume()
    }
}
