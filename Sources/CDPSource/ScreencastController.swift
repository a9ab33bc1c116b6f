/// Which page's screencast runs: none while nobody watches, else the active page's.
///
/// A pure state machine: each call takes what happened and returns what to do. A switch to another page starts
/// the new screencast before stopping the old one, so viewers see no gap: the old one is stopped at the new page's
/// first frame, or after ``switchTimeout`` (a static page sends no frame until it changes). A switch the active
/// page has since moved away from (A→B→C, or back A→B→A) is abandoned.
struct ScreencastController {
    enum Action: Equatable {
        /// `Page.startScreencast`.
        case start(CDPSession)
        /// `Page.stopScreencast`.
        case stop(CDPSession)
        /// Take a screenshot of a page just shown: a static page sends no screencast frame until it changes.
        case captureFirstFrame(CDPSession)
        /// Call ``switchTimedOut(to:)`` after ``ScreencastController/switchTimeout`` seconds.
        case finishSwitchLater(CDPSession)
        /// `Page.screencastFrameAck` for the frame at hand: Chrome sends the next frame only after it.
        case ack(CDPSession)
        /// Show the frame at hand.
        case publish(CDPSession)
    }

    /// Seconds a switch waits for the new page's first frame before showing it anyway.
    static let switchTimeout = 1.0

    /// Whether anyone watches.
    private(set) var demand = false
    /// The page being shown (where input goes).
    private(set) var shown: CDPSession?
    /// The page being switched to, whose screencast runs until its first frame.
    private(set) var switchingTo: CDPSession?

    /// With no demand left, both screencasts stop. With demand, the caller finds the active page and calls
    /// ``follow(_:)``.
    mutating func demandChanged(_ wanted: Bool) -> [Action] {
        demand = wanted
        guard !wanted else { return [] }
        let running = [shown, switchingTo].compactMap { $0 }
        shown = nil
        switchingTo = nil
        return running.map(Action.stop)
    }

    /// Shows `active`, the page that should be shown now.
    mutating func follow(_ active: CDPSession?) -> [Action] {
        guard demand, let active, active != switchingTo else { return [] }
        var actions: [Action] = []
        if let abandoned = switchingTo {
            actions.append(.stop(abandoned))
            switchingTo = nil
        }
        if shown == nil {
            shown = active
            actions += [.start(active), .captureFirstFrame(active)]
        } else if active != shown {
            switchingTo = active
            actions += [.start(active), .finishSwitchLater(active)]
        }
        return actions
    }

    /// A screencast frame from `session`.
    mutating func frameArrived(from session: CDPSession) -> [Action] {
        // A screencast nobody wants any more (a late frame of a stopped one): make sure it stops.
        guard session == shown || session == switchingTo else { return [.stop(session)] }
        return [.ack(session)] + (session == switchingTo ? finishSwitch(to: session) : []) + [.publish(session)]
    }

    mutating func switchTimedOut(to session: CDPSession) -> [Action] { finishSwitch(to: session) }

    /// `session` detached or its tab closed; `active` is the page to show now.
    mutating func pageGone(_ session: CDPSession, active: CDPSession?) -> [Action] {
        if switchingTo == session { switchingTo = nil }
        guard shown == session else { return [] }
        shown = nil
        return follow(active)
    }

    private mutating func finishSwitch(to session: CDPSession) -> [Action] {
        guard switchingTo == session else { return [] }
        let old = shown
        shown = session
        switchingTo = nil
        return old.map { [.stop($0)] } ?? []
    }
}
