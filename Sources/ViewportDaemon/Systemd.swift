import CSystemd
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import WebSocketIO

/// The service manager's notify protocol through libsystemd's `sd_notify`; every call does nothing when the daemon
/// was not started with `NOTIFY_SOCKET` (not under a `Type=notify` unit).
enum ServiceManager {
    /// Sends `state` (newline-separated assignments such as `READY=1`). False when nobody listens.
    @discardableResult
    static func notify(_ state: String) -> Bool { sd_notify(0, state) > 0 }

    /// The interval `WatchdogSec=` asks for, or nil when the watchdog is off.
    static var watchdogInterval: Duration? {
        var microseconds: UInt64 = 0
        guard sd_watchdog_enabled(0, &microseconds) > 0, microseconds > 0 else { return nil }
        return .microseconds(Int64(microseconds))
    }

    /// `MONOTONIC_USEC=` of now, which systemd wants with `RELOADING=1`.
    static var monotonicNow: String {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return "MONOTONIC_USEC=\(UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000)"
    }
}

/// Tells systemd the daemon is ready (the listener is bound before any service runs), pets the watchdog while the
/// service thread turns, and says STOPPING=1 the moment a graceful shutdown begins. Put last in the group, so it
/// hears of the shutdown first.
struct SystemdService: Service {
    let loop: EventLoop
    let logger: Logger

    func run() async throws {
        ServiceManager.notify("READY=1\nSTATUS=serving")
        if let interval = ServiceManager.watchdogInterval {
            logger.debug("watchdog on", metadata: ["interval": "\(interval)"])
            await petWatchdog(every: interval / 3)
        } else {
            try? await gracefulShutdown()
        }
        ServiceManager.notify("STOPPING=1\nSTATUS=finalizing recordings and stopping")
    }

    /// Each tick queues a probe on the service thread and pets the watchdog only if the previous probe ran: a
    /// stuck loop stops the pets, and systemd restarts the daemon after `WatchdogSec=`.
    private func petWatchdog(every period: Duration) async {
        var probe = Probe()
        loop.enqueue { [probe] in probe.ran.store(true, ordering: .releasing) }
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: period) }
            guard !Task.isShuttingDownGracefully else { return }
            if probe.ran.load(ordering: .acquiring) {
                ServiceManager.notify("WATCHDOG=1")
                probe = Probe()
                loop.enqueue { [probe] in probe.ran.store(true, ordering: .releasing) }
            } else {
                logger.warning("the service thread has not turned for a watchdog period; not petting the watchdog")
            }
        }
    }

    private final class Probe: Sendable { let ran = Atomic(false) }
}
