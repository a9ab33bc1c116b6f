public import Foundation

extension Process {
    /// Blocks until the process has exited, checking every 5 ms. It does what `waitUntilExit()` does without
    /// running the calling thread's run loop, which swift-corelibs-foundation does and which has been seen to hang
    /// off the main thread after many processes (cai-layer/cai#49), as a test run that never finished did here.
    public func waitUntilExited() {
        while isRunning { usleep(5_000) }
        // Returns at once now; it also drops the run-loop source that retains the process, without which every
        // process (and the pipes it holds) would leak.
        waitUntilExit()
    }
}
