public import Foundation
import Synchronization

/// Waits up to `milliseconds` for a non-blocking `connect` on `fd` (which returned `EINPROGRESS`) to finish; true
/// when it connected.
public func finishConnect(_ fd: Int32, within milliseconds: Int32) -> Bool {
    var poller = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
    var error: Int32 = 0
    var length = socklen_t(MemoryLayout<Int32>.size)
    return poll(&poller, 1, milliseconds) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0
        && error == 0
}

/// Lets something happen at most once per `interval` seconds, from any thread: a log line about a flood must not
/// flood the log too.
public final class RateLimit: Sendable {
    private let interval: Double
    private let last = Mutex(Date.distantPast)

    public init(every interval: Double) { self.interval = interval }

    /// True (and counted) when the last allowed time is `interval` or more ago.
    public func allows(now: Date = Date()) -> Bool {
        last.withLock { last in
            guard now.timeIntervalSince(last) >= interval else { return false }
            last = now
            return true
        }
    }
}
