import Testing
@testable import CDPSource

private func tab(_ id: String, active: Bool) -> TargetInfo {
    TargetInfo(targetId: id, type: "tab", url: "", embedderData: .init(tabActive: active))
}

private func page(of tab: String) -> CDPSession { .attached("page-\(tab)") }

extension TabTracker {
    /// Chrome's answer to attaching `tab`: the reply naming its session, then its page attached on that session.
    fileprivate mutating func attached(_ tab: String) -> [Action] {
        handle(.attachReplied(tab: tab, session: "tab-session-\(tab)"))
            + handle(.pageAttached(parent: .attached("tab-session-\(tab)"), session: "page-\(tab)",
                                   page: TargetInfo(targetId: "p\(tab)", type: "page", url: "https://\(tab).test/")))
    }

    /// A browser with tabs A and `other`, both attached, A active.
    fileprivate static func withTwoTabs(_ other: String = "B") -> TabTracker {
        var tracker = TabTracker(pageEndpoint: false)
        _ = tracker.handle(.targetInfo(tab("A", active: true)))
        _ = tracker.handle(.targetInfo(tab(other, active: false)))
        _ = tracker.attached("A")
        _ = tracker.attached(other)
        return tracker
    }
}

@Suite("Tab tracker")
struct TabTrackerTests {
    @Test func aNewTabIsAttachedAndShownOnceItsPageIsAttached() {
        var tracker = TabTracker(pageEndpoint: false)
        #expect(tracker.handle(.targetInfo(tab("A", active: true))) == [.attach(tab: "A")])
        #expect(tracker.activePage == nil, "no page to show before the attach reply")
        #expect(tracker.handle(.attachReplied(tab: "A", session: "tab-session-A")) == [.autoAttach(session: "tab-session-A")])
        #expect(tracker.activePage == nil)
        _ = tracker.handle(.pageAttached(parent: .attached("tab-session-A"), session: "page-A",
                                         page: TargetInfo(targetId: "pA", type: "page", url: "https://A.test/")))
        #expect(tracker.activePage == page(of: "A"))
        #expect(tracker.url(of: page(of: "A")) == "https://A.test/")
        #expect(tracker.handle(.targetInfo(tab("A", active: true))).isEmpty, "an attached tab is attached once")
    }

    @Test func thePageURLFollowsTheBrowsersWord() {
        var tracker = TabTracker.withTwoTabs()
        _ = tracker.handle(.targetInfo(TargetInfo(targetId: "pA", type: "page", url: "https://A.test/next")))
        #expect(tracker.url(of: page(of: "A")) == "https://A.test/next")
        _ = tracker.handle(.targetInfo(TargetInfo(targetId: "pA", type: "page", url: String(repeating: "u", count: 20_000))))
        #expect(tracker.url(of: page(of: "A"))?.count == TabTracker.maxURLLength)
    }

    @Test func theTabActivatedLastIsShown() {
        var tracker = TabTracker.withTwoTabs()
        #expect(tracker.activePage == page(of: "A"))
        _ = tracker.handle(.polled([tab("A", active: false), tab("B", active: true)]))
        #expect(tracker.activePage == page(of: "B"))
        // Two windows, each with its active tab: the one activated last.
        _ = tracker.handle(.targetInfo(tab("A", active: true)))
        #expect(tracker.activePage == page(of: "A"))
    }

    @Test func goingBackAToBToAShowsAAgain() {
        var tracker = TabTracker.withTwoTabs()
        _ = tracker.handle(.polled([tab("A", active: false), tab("B", active: true)]))
        #expect(tracker.activePage == page(of: "B"))
        _ = tracker.handle(.polled([tab("A", active: true), tab("B", active: false)]))
        #expect(tracker.activePage == page(of: "A"))
    }

    @Test func aSwitchToATabStillAttachingIsOvertakenByTheNextOne() {
        // A -> B -> C: B activated while its attach reply is pending, then C before that reply arrives.
        var tracker = TabTracker.withTwoTabs("C")
        #expect(tracker.handle(.polled([tab("A", active: false), tab("B", active: true), tab("C", active: false)]))
            == [.attach(tab: "B")])
        #expect(tracker.activePage == nil, "B has no page yet: nothing new to show (the shown page stays)")
        _ = tracker.handle(.polled([tab("A", active: false), tab("B", active: false), tab("C", active: true)]))
        #expect(tracker.activePage == page(of: "C"))
        // B's reply and page arrive late: C stays shown.
        #expect(tracker.attached("B") == [.autoAttach(session: "tab-session-B")])
        #expect(tracker.activePage == page(of: "C"))
    }

    @Test func closingTheActiveTabStopsShowingIt() {
        var tracker = TabTracker.withTwoTabs()
        _ = tracker.handle(.polled([tab("A", active: false), tab("B", active: true)]))
        let actions = tracker.handle(.destroyed(target: "B"))
        #expect(actions.contains(.pageGone(page(of: "B"))))
        #expect(tracker.activePage == nil)
        #expect(tracker.url(of: page(of: "B")) == nil)
        // Chrome activates another tab.
        _ = tracker.handle(.targetInfo(tab("A", active: true)))
        #expect(tracker.activePage == page(of: "A"))
        #expect(tracker.handle(.detached(session: "page-B")) == [.pageGone(page(of: "B"))], "a late detach changes nothing")
        #expect(tracker.activePage == page(of: "A"))
    }

    @Test func aDetachedTabSessionTakesItsPageAndIsAttachedAgainAtTheNextPoll() {
        var tracker = TabTracker.withTwoTabs()
        let actions = tracker.handle(.detached(session: "tab-session-A"))
        #expect(actions == [.pageGone(.attached("tab-session-A")), .pageGone(page(of: "A"))])
        #expect(tracker.activePage == nil)
        #expect(tracker.handle(.attachReplied(tab: "A", session: "tab-session-A")).isEmpty,
                "a reply arriving after the detach is not taken for a new attachment")
        #expect(tracker.handle(.polled([tab("A", active: true)])) == [.attach(tab: "A")])
        _ = tracker.attached("A")
        #expect(tracker.activePage == page(of: "A"))
    }

    @Test func anAttachReplyAfterTheTabClosedIsIgnored() {
        var tracker = TabTracker(pageEndpoint: false)
        _ = tracker.handle(.targetInfo(tab("A", active: true)))
        _ = tracker.handle(.destroyed(target: "A"))
        #expect(tracker.attached("A").isEmpty)
        #expect(tracker.activePage == nil)
    }

    @Test func aFailedAttachIsTriedAgainAtTheNextPoll() {
        var tracker = TabTracker(pageEndpoint: false)
        _ = tracker.handle(.targetInfo(tab("A", active: true)))
        #expect(tracker.handle(.targetInfo(tab("A", active: true))).isEmpty, "one attach at a time")
        #expect(tracker.handle(.attachReplied(tab: "A", session: nil)).isEmpty)
        #expect(tracker.handle(.polled([tab("A", active: true)])) == [.attach(tab: "A")])
    }

    @Test func pagesOfUnknownSessionsAndOtherTargetsAreIgnored() {
        var tracker = TabTracker.withTwoTabs()
        _ = tracker.handle(.pageAttached(parent: .attached("nobody"), session: "page-X",
                                         page: TargetInfo(targetId: "pX", type: "page", url: "https://x/")))
        _ = tracker.handle(.pageAttached(parent: .root, session: "page-Y",
                                         page: TargetInfo(targetId: "pY", type: "page", url: "https://y/")))
        #expect(tracker.url(of: .attached("page-X")) == nil)
        #expect(tracker.url(of: .attached("page-Y")) == nil)
        #expect(tracker.handle(.targetInfo(TargetInfo(targetId: "w", type: "service_worker", url: "https://w/"))).isEmpty)
        #expect(tracker.activePage == page(of: "A"))
    }

    @Test func anEndpointAnnouncingTabsWithoutEndIsFollowedUpToItsBound() {
        var tracker = TabTracker(pageEndpoint: false)
        let attaches = (0..<(TabTracker.maxTargets + 500)).flatMap { tracker.handle(.targetInfo(tab("t\($0)", active: true))) }
        #expect(attaches.count == TabTracker.maxTargets)
    }

    @Test func aPageEndpointIsItsOwnActivePage() {
        var tracker = TabTracker(pageEndpoint: true)
        #expect(tracker.activePage == .root)
        _ = tracker.handle(.endpointURL("https://page.test/"))
        #expect(tracker.url(of: .root) == "https://page.test/")
    }
}
