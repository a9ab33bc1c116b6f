/// Which tab of a browser is active and which page session shows it, from the browser's target events.
///
/// A pure state machine: ``handle(_:)`` takes an event and returns the commands to send; ``activePage`` is the page
/// session to show. Chrome's tab targets say whether they are active (`embedderData.tabActive`); attaching to a tab
/// and auto-attaching to its page gives the page session. The tab that became active last wins when several are
/// (one per window). A page endpoint (`ws://.../devtools/page/...`) is its own page.
struct TabTracker {
    enum Event: Equatable {
        /// `Target.targetCreated` or `Target.targetInfoChanged`.
        case targetInfo(TargetInfo)
        /// The reply to a `Target.getTargets` poll.
        case polled([TargetInfo])
        /// The reply to ``Action/attach(tab:)``: the tab's session, or nil when attaching failed.
        case attachReplied(tab: String, session: String?)
        /// `Target.attachedToTarget` on a tab's session: its page.
        case pageAttached(parent: CDPSession, session: String, page: TargetInfo)
        /// `Target.detachedFromTarget`.
        case detached(session: String)
        /// `Target.targetDestroyed`.
        case destroyed(target: String)
        /// The URL of a page endpoint's page (`Target.getTargetInfo`).
        case endpointURL(String)
    }

    enum Action: Equatable {
        /// `Target.attachToTarget`; answer with ``Event/attachReplied(tab:session:)``.
        case attach(tab: String)
        /// `Target.setAutoAttach` on a tab's new session, which attaches its page.
        case autoAttach(session: String)
        /// A session went away (a page's, or a tab's and so its page's): stop showing it.
        case pageGone(CDPSession)
    }

    /// Tabs and pages followed at most: an endpoint announcing targets without end stays bounded.
    static let maxTargets = 1000
    /// Characters of a URL kept.
    static let maxURLLength = 8192

    private struct Tab {
        var active = false
        /// When it last became active, in activations.
        var activatedAt = 0
        /// When it was first seen: breaks ties between tabs never activated.
        var order: Int
        var attachment = Attachment.none
        var pageSession: String?
    }

    private enum Attachment: Equatable {
        case none
        case attaching
        case attached(session: String)
    }

    private let pageEndpoint: Bool
    private var tabs: [String: Tab] = [:]
    private var pageTargets: [String: String] = [:]  // page session -> page target id
    private var urls: [String: String] = [:]  // page target id -> url
    private var endpointURL: String?
    private var seen = 0
    private var activations = 0

    init(pageEndpoint: Bool) { self.pageEndpoint = pageEndpoint }

    /// The page session of the tab that became active last, among the active ones with a page; the connection's
    /// own target for a page endpoint.
    var activePage: CDPSession? {
        if pageEndpoint { return .root }
        return tabs.values.filter { $0.active && $0.pageSession != nil }
            .max { ($0.activatedAt, $0.order) < ($1.activatedAt, $1.order) }?.pageSession.map(CDPSession.attached)
    }

    /// The URL the page of `session` shows, as the browser last said.
    func url(of session: CDPSession) -> String? {
        switch session {
        case .root: endpointURL
        case .attached(let id): pageTargets[id].flatMap { urls[$0] }
        }
    }

    mutating func handle(_ event: Event) -> [Action] {
        switch event {
        case .targetInfo(let info):
            return targetInfo(info)
        case .polled(let infos):
            return infos.flatMap { targetInfo($0) }
        case .attachReplied(let tabID, let session):
            // A tab destroyed meanwhile, or one already attached (a stale reply), stays as it is.
            guard tabs[tabID]?.attachment == .attaching else { return [] }
            guard let session else {
                tabs[tabID]?.attachment = .none  // tried again on the next poll
                return []
            }
            tabs[tabID]?.attachment = .attached(session: session)
            return [.autoAttach(session: session)]
        case .pageAttached(let parent, let session, let page):
            guard page.type == "page", case .attached(let parentID) = parent,
                  let tabID = tabs.first(where: { $0.value.attachment == .attached(session: parentID) })?.key,
                  pageTargets[session] != nil || pageTargets.count < Self.maxTargets
            else { return [] }
            pageTargets[session] = page.targetId
            if let url = page.url { remember(url, of: page.targetId) }
            tabs[tabID]?.pageSession = session
            return []
        case .detached(let session):
            return detach(session)
        case .destroyed(let targetID):
            urls[targetID] = nil
            guard let tab = tabs[targetID] else { return [] }
            var actions: [Action] = []
            if case .attached(let session) = tab.attachment { actions += detach(session) }
            if let page = tabs[targetID]?.pageSession { actions += detach(page) }
            tabs[targetID] = nil
            return actions
        case .endpointURL(let url):
            endpointURL = String(url.prefix(Self.maxURLLength))
            return []
        }
    }

    private mutating func targetInfo(_ info: TargetInfo) -> [Action] {
        if info.type == "page" {
            if let url = info.url { remember(url, of: info.targetId) }
            return []
        }
        guard info.type == "tab", let embedder = info.embedderData else { return [] }
        if tabs[info.targetId] == nil {
            guard tabs.count < Self.maxTargets else { return [] }
            seen += 1
            tabs[info.targetId] = Tab(order: seen)
        }
        let active = embedder.tabActive ?? false
        if active, tabs[info.targetId]?.active == false {
            activations += 1
            tabs[info.targetId]?.activatedAt = activations
        }
        tabs[info.targetId]?.active = active
        guard tabs[info.targetId]?.attachment == Attachment.none else { return [] }
        tabs[info.targetId]?.attachment = .attaching
        return [.attach(tab: info.targetId)]
    }

    private mutating func remember(_ url: String, of targetID: String) {
        guard urls[targetID] != nil || urls.count < Self.maxTargets else { return }
        urls[targetID] = String(url.prefix(Self.maxURLLength))
    }

    /// A session went away: a page's, or a tab's (its page goes with it).
    private mutating func detach(_ session: String) -> [Action] {
        pageTargets[session] = nil
        var gone: [Action] = [.pageGone(.attached(session))]
        for (id, tab) in tabs {
            if tab.attachment == .attached(session: session) {
                tabs[id]?.attachment = .none
                if let page = tab.pageSession {
                    tabs[id]?.pageSession = nil
                    pageTargets[page] = nil
                    gone.append(.pageGone(.attached(page)))
                }
            } else if tab.pageSession == session {
                tabs[id]?.pageSession = nil
            }
        }
        return gone
    }
}
