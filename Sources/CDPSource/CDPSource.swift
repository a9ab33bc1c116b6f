public import Logging
public import ViewportCore
public import WebSocketIO
import Foundation

/// Captures a browser's active tab over the Chrome DevTools Protocol and publishes its frames to a hub.
///
/// Attaches through the browser endpoint (`http://host:port`, resolved via `/json/version`, or a
/// `ws://.../devtools/browser/...` URL) and follows the active tab: Chrome's tab targets say which tab is
/// active (`embedderData.tabActive`, polled, since changes are not pushed), and auto-attaching to each tab gives
/// its page session. A `ws://.../devtools/page/...` URL streams that one page.
///
/// The screencast runs only while the hub has consumers. Each frame is acknowledged as soon as its bytes are
/// taken. A lost connection is retried with backoff for ``Options/retryWindow`` seconds, then the source fails.
///
/// `@unchecked Sendable`: all state is confined to the event loop's service thread; public methods hop onto it.
public final class CDPSource: FrameSource, @unchecked Sendable {
    /// Screencast and reconnection settings.
    public struct Options: Sendable {
        /// JPEG quality, 0-100.
        public var quality = 75
        public var maxWidth = 1280
        public var maxHeight = 720
        /// Seconds to keep retrying a lost connection before failing.
        public var retryWindow: Double = 30
        /// Seconds between polls of which tab is active, while frames are wanted.
        public var activeTabPollInterval: Double = 0.25
        /// Largest message the browser may send; a bigger one closes the connection.
        public var maxMessageBytes = 16 << 20
        /// Seconds for connecting, the handshake and `/json/version`.
        public var timeout: Double = 10
        /// Maps the host of the browser's address to the address to connect to, or throws when the host may not
        /// be reached (the daemon's network policy). Called off the service thread before each connection.
        public var resolveHost: @Sendable (String) async throws -> String = { $0 }

        public init() {}
    }

    /// What the source is doing, as reported to its owner.
    public typealias State = SourceState

    private struct Tab {
        var active: Bool
        var activatedAt: Int
        var order: Int
        var session: String?
        var pageSession: String?
        var attaching = false
    }

    private let address: String
    private let hub: FrameHub
    private let loop: EventLoop
    private let options: Options
    private let logger: Logger
    private let onStateChange: @Sendable (State) -> Void

    private var socket: WebSocket?
    private var connection: Connection?
    private var state = State.connecting
    private var stopped = false
    private var demand = false
    private var lostSince: Date?
    private var attempt = 0
    /// CSS pixels per frame pixel, from the last frame's metadata.
    private var cssPerFramePixel = 1.0

    /// Creates the source; nothing happens until ``start()``.
    public init(address: String, hub: FrameHub, loop: EventLoop, options: Options, logger: Logger,
                onStateChange: @escaping @Sendable (State) -> Void)
    {
        self.address = address
        self.hub = hub
        self.loop = loop
        self.options = options
        self.logger = logger
        self.onStateChange = onStateChange
    }

    /// Checks that `address` is an `http://host:port` or `ws://.../devtools/...` URL.
    public static func validate(address: String) throws {
        let endpoint = try Endpoint(address)
        if address.lowercased().hasPrefix("ws"), !endpoint.path.hasPrefix("/devtools/") {
            throw NetworkError("a ws:// browser_address must be a DevTools URL (ws://host:port/devtools/...)")
        }
    }

    /// Connects and starts following the browser.
    public func start() {
        hub.onDemandChange { [weak self] _ in
            guard let self else { return }
            // Read the demand again on the service thread: a value carried across threads can be stale.
            loop.execute { self.demandChanged(self.hub.consumerCount > 0) }
        }
        loop.execute { self.connect() }
    }

    /// Closes the connection (Chrome ends the screencasts of a detached client). No state change is reported
    /// afterwards.
    public func stop() {
        loop.execute {
            self.stopped = true
            self.socket?.close(code: 1000, reason: "viewportd session ended")
        }
    }

    // MARK: - Connection lifecycle

    private func report(_ new: State) {
        guard !stopped, new != state else { return }
        state = new
        onStateChange(new)
    }

    private func connect() {
        guard !stopped else { return }
        attempt += 1
        // Off the service thread: resolving a host name blocks.
        Task.detached { [self] in
            do {
                let (url, address) = try await resolveBrowserEndpoint()
                loop.execute { self.open(url, connectingTo: address) }
            } catch {
                loop.execute { self.connectionLost("\(error)") }
            }
        }
    }

    /// The WebSocket URL to open and the address to connect to: the host as the network policy resolved and
    /// checked it, so the connection goes where the check said. For an `http://` address, `/json/version` names
    /// the browser's WebSocket path (host and port stay the caller's).
    private func resolveBrowserEndpoint() async throws -> (url: String, address: String) {
        let base = address.hasSuffix("/") ? String(address.dropLast()) : address
        let given = try Endpoint(base)
        let resolved = try await options.resolveHost(given.host)
        guard base.lowercased().hasPrefix("http") else { return (base, resolved) }
        let (status, body) = try await loop.httpRequest("GET", base + "/json/version", connectingTo: resolved,
                                                        timeout: options.timeout)
        guard status == 200, body.count <= 1 << 20,
              let object = try? JSONSerialization.jsonObject(with: body) as? [String: Any],
              let url = object["webSocketDebuggerUrl"] as? String, let reported = try? Endpoint(url)
        else { throw NetworkError("\(base)/json/version gave no webSocketDebuggerUrl") }
        return ("ws://\(given.hostHeader)\(reported.path)", resolved)
    }

    private func open(_ url: String, connectingTo address: String) {
        guard !stopped else { return }
        do {
            let connection = Connection(source: self, pageEndpoint: url.contains("/devtools/page/"))
            self.connection = connection
            let socket = try loop.connectWebSocket(to: url, connectingTo: address, delegate: connection,
                                                   maxMessageBytes: options.maxMessageBytes,
                                                   handshakeTimeout: options.timeout)
            connection.socket = socket
            self.socket = socket
        } catch {
            connectionLost("\(error)")
        }
    }

    fileprivate func connected() {
        lostSince = nil
        attempt = 0
        logger.info("attached to browser", metadata: ["browser_address": "\(address)"])
        report(.connected)
        if demand { connection?.demandChanged(true) }
    }

    fileprivate func connectionLost(_ reason: String) {
        socket = nil
        connection = nil
        guard !stopped else { return }
        let now = Date()
        let since = lostSince ?? now
        lostSince = since
        let elapsed = now.timeIntervalSince(since)
        if elapsed >= options.retryWindow {
            logger.warning("browser unreachable, giving up", metadata: ["reason": "\(reason)"])
            report(.failed(reason: "browser unreachable for \(Int(options.retryWindow)) s: \(reason)"))
            stopped = true
            return
        }
        report(.reconnecting(reason: reason))
        let delay = min(min(0.25 * pow(2, Double(max(0, attempt - 1))), 5), options.retryWindow - elapsed)
        logger.info("browser connection lost, retrying", metadata: ["reason": "\(reason)", "in_seconds": "\(delay)"])
        loop.schedule(after: delay) { [weak self] in self?.connect() }
    }

    private func demandChanged(_ wanted: Bool) {
        guard wanted != demand else { return }
        demand = wanted
        connection?.demandChanged(wanted)
    }

    /// Publishes a frame unless it is no JPEG or larger than the screencast's size (a browser's own frames never
    /// are; a hostile endpoint's would make every consumer allocate for them).
    fileprivate func publish(_ bytes: FrameBytes, captureTime: UInt64?, url: String?, deviceWidth: Double? = nil)
        -> Bool
    {
        guard let size = JPEG.dimensions(bytes.bytes), size.width > 0, size.height > 0 else {
            hub.metrics.frameRefused(.malformed)
            return false
        }
        guard size.width <= options.maxWidth, size.height <= options.maxHeight else {
            hub.metrics.frameRefused(.tooLarge)
            logger.debug("frame refused: larger than the screencast size",
                         metadata: ["size": "\(size.width)x\(size.height)"])
            return false
        }
        // CSS pixels per frame pixel, from a device width the page could have: a scale outside 1/16...16 is a lie.
        if let deviceWidth, deviceWidth.isFinite {
            let scale = deviceWidth / Double(size.width)
            if scale >= 1.0 / 16, scale <= 16 { cssPerFramePixel = scale }
        }
        hub.publish(jpeg: bytes, width: size.width, height: size.height, captureTime: captureTime ?? wallClockMicros(),
                    url: url)
        return true
    }

    // MARK: - Input

    /// Sends `input` to the active tab: mouse and wheel through `Input.dispatchMouseEvent` (frame pixels mapped to
    /// CSS pixels), keys through `Input.dispatchKeyEvent`, paste through `Input.insertText`, navigation through
    /// `Page.navigate`. Dropped while the browser is not attached.
    public func deliver(_ input: RemoteInput) {
        loop.execute { [self] in
            guard !stopped, let connection else { return }
            let scale = cssPerFramePixel
            let (method, params): (String, [String: Any])
            switch input {
            case .mouse(let m):
                let buttons = m.kind == .released ? 0 : ["left": 1, "right": 2, "middle": 4][m.button.rawValue] ?? 0
                (method, params) = ("Input.dispatchMouseEvent", [
                    "type": m.kind.rawValue, "x": m.x * scale, "y": m.y * scale, "button": m.button.rawValue,
                    "buttons": buttons, "clickCount": m.clickCount, "modifiers": m.modifiers,
                ])
            case .wheel(let x, let y, let dx, let dy):
                (method, params) = ("Input.dispatchMouseEvent", [
                    "type": "mouseWheel", "x": x * scale, "y": y * scale, "deltaX": dx, "deltaY": dy,
                ])
            case .key(let k):
                var p: [String: Any] = ["type": k.kind.rawValue, "key": k.key, "code": k.code, "modifiers": k.modifiers,
                                        "windowsVirtualKeyCode": k.virtualKeyCode,
                                        "nativeVirtualKeyCode": k.virtualKeyCode]
                if !k.text.isEmpty, k.kind != .up { p["text"] = k.text; p["unmodifiedText"] = k.text }
                (method, params) = ("Input.dispatchKeyEvent", p)
            case .navigate(let url):
                (method, params) = ("Page.navigate", ["url": url])
            case .paste(let text):
                (method, params) = ("Input.insertText", ["text": text])
            }
            hub.inputSent()
            connection.sendToActiveTab(method, params)
        }
    }

    // MARK: - One DevTools connection

    /// The protocol state of one WebSocket connection to the browser; replaced on reconnect.
    ///
    /// Holds its source strongly until the socket closes (the source forgets it then), so a stopped source lives
    /// until its connection has said goodbye.
    ///
    /// `@unchecked Sendable`: used only on the service thread (timers hop back onto it before touching it).
    private final class Connection: WebSocketDelegate, @unchecked Sendable {
        let source: CDPSource
        let pageEndpoint: Bool
        weak var socket: WebSocket?
        /// Set when the socket closed: timers of a replaced connection then do nothing.
        private var closed = false
        private var outbox: [OutboundMessage] = []
        private var outboxBytes = 0
        private var nextID = 1
        /// Reply handlers: the result, and the decoded `data` when the reply carried an image.
        private var replies: [Int: ([String: Any]?, FrameBytes?) -> Void] = [:]
        private var tabs: [String: Tab] = [:]
        private var tabOfSession: [String: String] = [:]
        private var pageTarget: [String: String] = [:]  // page session -> page target id
        private var urls: [String: String] = [:]  // page target id -> url
        private var order = 0
        private var activations = 0
        private var streaming: String?
        private var switchingTo: String?
        private var demand = false
        private var polling = false
        private var published = 0

        /// Bytes of commands waiting for the browser to read them.
        static let maxOutboxBytes = 1 << 20
        /// Tabs and page URLs followed at most: an endpoint announcing targets without end stays bounded.
        static let maxTargets = 1000

        init(source: CDPSource, pageEndpoint: Bool) {
            self.source = source
            self.pageEndpoint = pageEndpoint
        }

        // MARK: WebSocketDelegate

        func webSocketDidOpen(_ socket: WebSocket) {
            guard !source.stopped else {
                socket.close(code: 1000, reason: "viewportd session ended")
                return
            }
            if pageEndpoint {
                pageTarget[""] = ""
            } else {
                send("Target.setDiscoverTargets", ["discover": true, "filter": [["type": "tab"], ["type": "page"]]])
            }
            source.connected()
        }

        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            guard let (object, frame) = FrameMessage.parse(message.data) else { return }
            if let id = object["id"] as? Int {
                replies.removeValue(forKey: id)?(object["result"] as? [String: Any], frame)
                return
            }
            guard let method = object["method"] as? String else { return }
            handleEvent(method, object["params"] as? [String: Any] ?? [:], frame: frame,
                        session: object["sessionId"] as? String ?? "")
        }

        func nextMessage(for socket: WebSocket) -> OutboundMessage? {
            guard !outbox.isEmpty else { return nil }
            let message = outbox.removeFirst()
            outboxBytes -= message.count
            return message
        }

        func hasMessages(for socket: WebSocket) -> Bool { !outbox.isEmpty }

        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
            if code == 1009, !closed {
                source.hub.metrics.peerLimited(.browserMessageTooBig)
                source.logger.warning("browser sent a message over cdp.max_message_mb; reconnecting")
            }
            closed = true
            replies.removeAll()
            source.connectionLost(reason.isEmpty ? "connection closed (code \(code.map(String.init) ?? "none"))" : reason)
        }

        // MARK: Commands

        private func send(_ method: String, _ params: [String: Any] = [:], session: String = "",
                          reply: (([String: Any]?, FrameBytes?) -> Void)? = nil)
        {
            guard !closed, let socket else { return }
            let id = nextID
            nextID += 1
            var message: [String: Any] = ["id": id, "method": method, "params": params]
            if !session.isEmpty { message["sessionId"] = session }
            if let reply { replies[id] = reply }
            guard let data = try? JSONSerialization.data(withJSONObject: message) else { return }
            // A browser that sends frames and never reads our acknowledgements must not grow the daemon.
            guard outboxBytes + data.count <= Self.maxOutboxBytes else {
                closed = true
                source.hub.metrics.peerLimited(.browserNotReading)
                socket.close(code: 1008, reason: "browser does not read its messages")
                return
            }
            outboxBytes += data.count
            outbox.append(.text(Payload(copying: data)))
            socket.requestWrite()
        }

        /// Sends a command to the tab being shown (the page endpoint's own session when connected to one).
        func sendToActiveTab(_ method: String, _ params: [String: Any]) {
            guard let session = streaming ?? (pageEndpoint ? "" : nil) else { return }
            send(method, params, session: session)
        }

        func stopScreencasts() {
            for session in [streaming, switchingTo].compactMap({ $0 }) { send("Page.stopScreencast", session: session) }
            streaming = nil
            switchingTo = nil
        }

        func demandChanged(_ wanted: Bool) {
            demand = wanted
            if wanted {
                poll()
            } else {
                stopScreencasts()
            }
        }

        // MARK: Events

        private func handleEvent(_ method: String, _ params: [String: Any], frame: FrameBytes?, session: String) {
            switch method {
            case "Page.screencastFrame":
                guard session == streaming || session == switchingTo else {
                    // A screencast nobody wants any more (a late frame of a stopped one): make sure it stops.
                    send("Page.stopScreencast", session: session)
                    return
                }
                // Acknowledge at once: Chrome sends the next frame only after the ack.
                if let frameSession = params["sessionId"] { send("Page.screencastFrameAck", ["sessionId": frameSession], session: session) }
                if let frame { frameArrived(frame, params, session: session) }
            case "Target.targetCreated", "Target.targetInfoChanged":
                guard let info = params["targetInfo"] as? [String: Any] else { return }
                targetInfo(info)
            case "Target.attachedToTarget":
                guard let info = params["targetInfo"] as? [String: Any], info["type"] as? String == "page",
                      let pageSession = params["sessionId"] as? String, let targetID = info["targetId"] as? String,
                      let tabID = tabOfSession[session], pageTarget.count < Self.maxTargets
                else { return }
                pageTarget[pageSession] = targetID
                if let url = info["url"] as? String { urls[targetID] = String(url.prefix(8192)) }
                tabs[tabID]?.pageSession = pageSession
                followActiveTab()
            case "Target.detachedFromTarget":
                guard let detached = params["sessionId"] as? String else { return }
                detach(detached)
            case "Target.targetDestroyed":
                guard let targetID = params["targetId"] as? String else { return }
                urls[targetID] = nil
                if let tab = tabs.removeValue(forKey: targetID) {
                    if let session = tab.session { tabOfSession[session] = nil }
                    if let page = tab.pageSession { detach(page) }
                }
                poll()
            case "Page.screencastVisibilityChanged":
                poll()
            default:
                break
            }
        }

        private func targetInfo(_ info: [String: Any]) {
            guard let targetID = info["targetId"] as? String, let type = info["type"] as? String else { return }
            if type == "page" {
                if let url = info["url"] as? String, urls[targetID] != nil || urls.count < Self.maxTargets {
                    urls[targetID] = String(url.prefix(8192))
                }
                return
            }
            guard type == "tab", let embedder = info["embedderData"] as? [String: Any] else { return }
            let active = embedder["tabActive"] as? Bool ?? false
            if tabs[targetID] == nil {
                guard tabs.count < Self.maxTargets else { return }
                order += 1
                tabs[targetID] = Tab(active: false, activatedAt: 0, order: order)
            }
            if let tab = tabs[targetID], tab.session == nil, !tab.attaching { attach(tab: targetID) }
            setActive(targetID, active)
        }

        /// Attaches to a tab and auto-attaches to its page; a failed attempt is retried on the next poll.
        private func attach(tab targetID: String) {
            tabs[targetID]?.attaching = true
            send("Target.attachToTarget", ["targetId": targetID, "flatten": true]) { [weak self] result, _ in
                guard let self, tabs[targetID] != nil else { return }
                tabs[targetID]?.attaching = false
                guard let session = result?["sessionId"] as? String else { return }
                tabs[targetID]?.session = session
                tabOfSession[session] = targetID
                send("Target.setAutoAttach", ["autoAttach": true, "waitForDebuggerOnStart": false, "flatten": true],
                     session: session)
            }
        }

        private func setActive(_ tabID: String, _ active: Bool) {
            guard let tab = tabs[tabID], tab.active != active else { return }
            if active {
                activations += 1
                tabs[tabID]?.activatedAt = activations
            }
            tabs[tabID]?.active = active
        }

        private func detach(_ session: String) {
            pageTarget[session] = nil
            if let tabID = tabOfSession.removeValue(forKey: session) { tabs[tabID]?.session = nil }
            for (id, tab) in tabs where tab.pageSession == session { tabs[id]?.pageSession = nil }
            if switchingTo == session { switchingTo = nil }
            if streaming == session {
                streaming = nil
                followActiveTab()
            }
        }

        // MARK: Following the active tab

        /// Polls which tab is active while frames are wanted (Chrome does not push tab activation).
        private func poll() {
            guard demand, !closed else { return }
            if pageEndpoint {
                refreshPageURL()
                followActiveTab()
            } else {
                send("Target.getTargets", ["filter": [["type": "tab"]]]) { [weak self] result, _ in
                    guard let self else { return }
                    for info in result?["targetInfos"] as? [[String: Any]] ?? [] { targetInfo(info) }
                    followActiveTab()
                }
            }
            guard !polling else { return }
            polling = true
            source.loop.schedule(after: source.options.activeTabPollInterval) { [weak self] in
                guard let self else { return }
                polling = false
                poll()
            }
        }

        /// The page session of the tab that became active last, among the active ones.
        private var activePageSession: String? {
            if pageEndpoint { return "" }
            return tabs.values.filter { $0.active && $0.pageSession != nil }
                .max { ($0.activatedAt, $0.order) < ($1.activatedAt, $1.order) }?.pageSession
        }

        /// Starts the screencast on the active tab before stopping the old one, so viewers see no gap.
        private func followActiveTab() {
            guard demand, let target = activePageSession, target != switchingTo else { return }
            // A switch that the active tab has since moved away from (A→B→C, or back A→B→A) is abandoned.
            if let abandoned = switchingTo {
                send("Page.stopScreencast", session: abandoned)
                switchingTo = nil
            }
            if streaming == nil {
                streaming = target
                startScreencast(target)
                captureFirstFrame(target)
            } else if target != streaming {
                switchingTo = target
                startScreencast(target)
                source.loop.schedule(after: 1) { [weak self] in self?.finishSwitch(to: target) }
            }
        }

        private func finishSwitch(to session: String) {
            guard switchingTo == session else { return }
            if let old = streaming { send("Page.stopScreencast", session: old) }
            streaming = session
            switchingTo = nil
        }

        private func startScreencast(_ session: String) {
            let options = source.options
            send("Page.startScreencast", ["format": "jpeg", "quality": options.quality, "maxWidth": options.maxWidth,
                                          "maxHeight": options.maxHeight, "everyNthFrame": 1], session: session)
        }

        /// A static page sends no screencast frame until it changes: take a screenshot so viewers see it at once.
        private func captureFirstFrame(_ session: String) {
            let before = published
            send("Page.captureScreenshot", ["format": "jpeg", "quality": source.options.quality], session: session) {
                [weak self] _, image in
                guard let self, published == before, streaming == session, let image else { return }
                if source.publish(image, captureTime: nil, url: url(of: session)) { published += 1 }
            }
        }

        private func frameArrived(_ frame: FrameBytes, _ params: [String: Any], session: String) {
            if session == switchingTo { finishSwitch(to: session) }
            guard session == streaming else { return }
            let metadata = params["metadata"] as? [String: Any]
            let time = (metadata?["timestamp"] as? Double).flatMap(wallClockMicros(fromSeconds:))
            if source.publish(frame, captureTime: time, url: url(of: session),
                              deviceWidth: metadata?["deviceWidth"] as? Double) { published += 1 }
        }

        private func url(of session: String) -> String? { pageTarget[session].flatMap { urls[$0] } }

        private func refreshPageURL() {
            send("Target.getTargetInfo") { [weak self] result, _ in
                guard let self, let info = result?["targetInfo"] as? [String: Any],
                      let url = info["url"] as? String else { return }
                urls[""] = url
            }
        }
    }
}
