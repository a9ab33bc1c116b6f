import Testing
@testable import CDPSource

private let a = CDPSession.attached("page-A")
private let b = CDPSession.attached("page-B")
private let c = CDPSession.attached("page-C")

/// A controller with viewers, showing page A.
private func showingA() -> ScreencastController {
    var controller = ScreencastController()
    _ = controller.demandChanged(true)
    _ = controller.follow(a)
    return controller
}

@Suite("Screencast controller")
struct ScreencastControllerTests {
    @Test func nothingRunsWhileNobodyWatches() {
        var controller = ScreencastController()
        #expect(controller.follow(a).isEmpty)
        #expect(controller.demandChanged(true).isEmpty)
        #expect(controller.follow(a) == [.start(a), .captureFirstFrame(a)])
        #expect(controller.follow(a).isEmpty, "following the shown page again does nothing")
        #expect(controller.demandChanged(false) == [.stop(a)])
        #expect(controller.shown == nil)
    }

    @Test func framesOfTheShownPageAreAcknowledgedAndShown() {
        var controller = showingA()
        #expect(controller.frameArrived(from: a) == [.ack(a), .publish(a)])
        #expect(controller.frameArrived(from: b) == [.stop(b)], "a screencast nobody wants is stopped, not shown")
    }

    @Test func aSwitchKeepsTheOldPageUntilTheNewOnesFirstFrame() {
        var controller = showingA()
        #expect(controller.follow(b) == [.start(b), .finishSwitchLater(b)])
        #expect(controller.shown == a)
        #expect(controller.frameArrived(from: a) == [.ack(a), .publish(a)])
        #expect(controller.frameArrived(from: b) == [.ack(b), .stop(a), .publish(b)])
        #expect(controller.shown == b)
        #expect(controller.switchTimedOut(to: b).isEmpty, "the switch is already done")
    }

    @Test func aSwitchToAStaticPageCompletesAfterTheTimeout() {
        var controller = showingA()
        _ = controller.follow(b)
        #expect(controller.switchTimedOut(to: b) == [.stop(a)])
        #expect(controller.shown == b)
        #expect(controller.switchingTo == nil)
    }

    @Test func aSwitchOvertakenByAnotherLeavesNoScreencastBehind() {
        var controller = showingA()
        _ = controller.follow(b)
        #expect(controller.follow(c) == [.stop(b), .start(c), .finishSwitchLater(c)])
        #expect(controller.frameArrived(from: b) == [.stop(b)], "B's late first frame is not shown")
        #expect(controller.switchTimedOut(to: b).isEmpty)
        #expect(controller.shown == a)
        #expect(controller.frameArrived(from: c) == [.ack(c), .stop(a), .publish(c)])
        #expect(controller.shown == c)
    }

    @Test func goingBackBeforeTheSwitchCompletesShowsNoFrameOfTheOtherPage() {
        var controller = showingA()
        _ = controller.follow(b)
        #expect(controller.follow(a) == [.stop(b)])
        #expect(controller.frameArrived(from: b) == [.stop(b)])
        #expect(controller.switchTimedOut(to: b).isEmpty)
        #expect(controller.shown == a)
        #expect(controller.frameArrived(from: a) == [.ack(a), .publish(a)])
    }

    @Test func theShownPageGoingAwayShowsTheActiveOneAtOnce() {
        var controller = showingA()
        #expect(controller.pageGone(b, active: a).isEmpty, "another page's going changes nothing")
        #expect(controller.pageGone(a, active: b) == [.start(b), .captureFirstFrame(b)])
        #expect(controller.shown == b)
        var lonely = showingA()
        #expect(lonely.pageGone(a, active: nil).isEmpty)
        #expect(lonely.shown == nil)
    }

    @Test func aPageGoingAwayWhileSwitchedToIsNotShown() {
        var controller = showingA()
        _ = controller.follow(b)
        _ = controller.pageGone(b, active: nil)
        #expect(controller.switchingTo == nil)
        #expect(controller.switchTimedOut(to: b).isEmpty)
        #expect(controller.shown == a)
    }

    @Test func theLastViewerLeavingMidSwitchStopsBothScreencasts() {
        var controller = showingA()
        _ = controller.follow(b)
        #expect(controller.demandChanged(false) == [.stop(a), .stop(b)])
        #expect(controller.frameArrived(from: b) == [.stop(b)])
    }
}
