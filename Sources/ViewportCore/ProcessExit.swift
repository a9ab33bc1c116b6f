public import Foundation

extension Process {
    /// Blocks until the process has exited, or until `seconds` have passed when given; true if it exited.
    /// It checks every 5 ms and, unlike `waitUntilExit()`, runs no run loop: swift-corelibs-foundation's
    /// `waitUntilExit()` runs the calling thread's, which has been seen to hang off the main thread after many
    /// processes (cai-layer/cai#49): the likeliest cause, not a confirmed one, of a CI test run here that never
    /// finished.
    @discardableResult
    public func waitUntilExited(within seconds: Double? = nil) -> Bool {
        let deadline = seconds.map { Date().addingTimeInterval($0) }
        while isRunning {
            if let deadline, Date() >= deadline { return false }
            usleep(5_000)
        }
        // Returns at once now; it also drops the run-loop source that retains the process, without which every
        // process (and the pipes it holds) would leak.
        waitUntilExit()
        return true
    }
}
