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
/// With ``Options/downloadPath`` set, the browser saves downloads there and each completed one is reported to
/// ``Options/onDownload``.
///
/// Inside: ``CDPClient`` speaks the protocol, ``TabTracker`` decides which page is active, ``ScreencastController``
/// which screencast runs, ``DownloadTracker`` which downloads completed; `Connection` wires them to one socket.
///
/// `@unchecked Sendable`: all state is confined to the event loop's service thread; public methods hop onto it.
public final class CDPSource: FrameSource, ScriptTarget, @unchecked Sendable {
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
        /// Where the browser saves downloads (a directory on the browser's host), each file named by its guid; nil
        /// leaves the browser's own download behaviour and reports no download.
        public var downloadPath: String?
        /// Called on the service thread for each download that completed into ``downloadPath``.
        public var onDownload: @Sendable (CDPDownload) -> Void = { _ in }

        public init() {}
    }

    /// What the source is doing, as reported to its owner.
    public typealias State = SourceState

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
              let version = try? JSONDecoder().decode(BrowserVersion.self, from: body),
              let reported = try? Endpoint(version.webSocketDebuggerUrl)
        else { throw NetworkError("\(base)/json/version gave no webSocketDebuggerUrl") }
        return ("ws://\(given.hostHeader)\(reported.path)", resolved)
    }

    private func open(_ url: String, connectingTo address: String) {
        guard !stopped else { return }
        do {
            let connection = Connection(source: self, pageEndpoint: url.contains("/devtools/page/"))
            self.connection = connection
            let socket = try loop.connectWebSocket(to: url, connectingTo: address, delegate: connection.client,
                                                   maxMessageBytes: options.maxMessageBytes,
                                                   handshakeTimeout: options.timeout)
            connection.client.socket = socket
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
            hub.inputSent()
            switch input {
            case .mouse(let m):
                let buttons = m.kind == .released ? 0 : ["left": 1, "right": 2, "middle": 4][m.button.rawValue] ?? 0
                connection.sendToShownPage(DispatchMouseEvent(
                    type: m.kind.rawValue, x: m.x * scale, y: m.y * scale, button: m.button.rawValue, buttons: buttons,
                    clickCount: m.clickCount, modifiers: m.modifiers))
            case .wheel(let x, let y, let dx, let dy):
                connection.sendToShownPage(DispatchMouseEvent(type: "mouseWheel", x: x * scale, y: y * scale,
                                                              deltaX: dx, deltaY: dy))
            case .key(let k):
                let text = !k.text.isEmpty && k.kind != .up ? k.text : nil
                connection.sendToShownPage(DispatchKeyEvent(
                    type: k.kind.rawValue, key: k.key, code: k.code, modifiers: k.modifiers,
                    windowsVirtualKeyCode: k.virtualKeyCode, nativeVirtualKeyCode: k.virtualKeyCode, text: text,
                    unmodifiedText: text))
            case .navigate(let url):
                connection.sendToShownPage(Navigate(url: url))
            case .paste(let text):
                connection.sendToShownPage(InsertText(text: text))
            }
        }
    }

    // MARK: - Evaluation

    /// Runs `expression` in the page being shown (``Evaluation``), on the service thread.
    public func evaluate(_ expression: String, timeout: Double, maxResultBytes: Int) async -> Result<String, ScriptFailure> {
        let deadline = ContinuousClock.now + .seconds(timeout)
        return await withCheckedContinuation { continuation in
            loop.execute { self.evaluate(expression, until: deadline, maxResultBytes: maxResultBytes) { continuation.resume(returning: $0) } }
        }
    }

    /// Starts the evaluation once the browser is attached and a page known: a viewer that evaluates as it connects
    /// may come before the screencast found the page, or during a reconnect.
    private func evaluate(_ expression: String, until deadline: ContinuousClock.Instant, maxResultBytes: Int,
                          finish: @escaping @Sendable (Result<String, ScriptFailure>) -> Void)
    {
        guard !stopped else { return finish(.failure(.failed("the session's browser is gone"))) }
        let remaining = Double((deadline - .now) / .milliseconds(1)) / 1000
        guard let connection, let page = connection.scriptPage else {
            guard remaining > 0.05 else { return finish(.failure(.timedOut)) }
            return loop.schedule(after: 0.05) { [self] in
                evaluate(expression, until: deadline, maxResultBytes: maxResultBytes, finish: finish)
            }
        }
        let evaluation = Evaluation(client: connection.client, page: page, timeout: remaining, finish: finish)
        loop.schedule(after: remaining) { evaluation.timedOut() }
        evaluation.start(expression, maxResultBytes: maxResultBytes)
    }

    // MARK: - One DevTools connection

    /// One WebSocket connection to the browser, replaced on reconnect: wires its client's events to the tab
    /// tracker, the screencast controller and the downloads, and carries out what they decide.
    ///
    /// Holds its source strongly until the socket closes (the source forgets it then), so a stopped source lives
    /// until its connection has said goodbye.
    ///
    /// `@unchecked Sendable`: used only on the service thread (timers hop back onto it before touching it).
    private final class Connection: CDPClientDelegate, @unchecked Sendable {
        let source: CDPSource
        let pageEndpoint: Bool
        private(set) lazy var client = CDPClient(delegate: self, metrics: source.hub.metrics, logger: source.logger)
        private var tabs: TabTracker
        private var screencast = ScreencastController()
        private var downloads: DownloadTracker?
        private var polling = false
        private var published = 0

        init(source: CDPSource, pageEndpoint: Bool) {
            self.source = source
            self.pageEndpoint = pageEndpoint
            tabs = TabTracker(pageEndpoint: pageEndpoint)
            downloads = source.options.downloadPath.map(DownloadTracker.init(directory:))
        }

        // MARK: CDPClientDelegate

        func clientDidOpen(_ client: CDPClient) {
            guard !source.stopped else {
                client.socket?.close(code: 1000, reason: "viewportd session ended")
                return
            }
            if let downloads { client.send(SetDownloadBehavior(downloadPath: downloads.directory)) }
            if !pageEndpoint { client.send(SetDiscoverTargets()) }
            source.connected()
        }

        func client(_ client: CDPClient, received event: CDPEvent, session: CDPSession, frame: FrameBytes?) {
            switch event {
            case .screencastFrame(let params):
                for action in screencast.frameArrived(from: session) {
                    switch action {
                    case .ack(let session):
                        if let number = params.sessionId { client.send(ScreencastFrameAck(sessionId: number), to: session) }
                    case .publish(let session):
                        guard let frame else { continue }
                        let time = params.timestamp.flatMap(wallClockMicros(fromSeconds:))
                        if source.publish(frame, captureTime: time, url: tabs.url(of: session),
                                          deviceWidth: params.deviceWidth) { published += 1 }
                    default:
                        run(action)
                    }
                }
            case .targetInfo(let info):
                track(.targetInfo(info))
            case .attachedToTarget(let attached):
                track(.pageAttached(parent: session, session: attached.sessionId, page: attached.targetInfo))
            case .detachedFromTarget(let detached):
                track(.detached(session: detached))
            case .targetDestroyed(let target):
                track(.destroyed(target: target))
                poll()
            case .screencastVisibilityChanged:
                poll()
            case .downloadWillBegin(let download):
                downloads?.willBegin(download)
            case .downloadProgress(let progress):
                if let done = downloads?.progress(progress) { source.options.onDownload(done) }
            case .other:
                break
            }
        }

        func clientDidClose(_ client: CDPClient, code: UInt16?, reason: String) {
            source.connectionLost(reason.isEmpty ? "connection closed (code \(code.map(String.init) ?? "none"))" : reason)
        }

        // MARK: Carrying out decisions

        /// Feeds the tab tracker, then shows the active page.
        private func track(_ event: TabTracker.Event) {
            for action in tabs.handle(event) {
                switch action {
                case .attach(let tab):
                    client.send(AttachToTarget(targetId: tab)) { [weak self] result, _ in
                        self?.track(.attachReplied(tab: tab, session: result?.sessionId))
                    }
                case .autoAttach(let session):
                    client.send(SetAutoAttach(), to: .attached(session))
                case .pageGone(let page):
                    run(screencast.pageGone(page, active: tabs.activePage))
                }
            }
            run(screencast.follow(tabs.activePage))
        }

        private func run(_ actions: [ScreencastController.Action]) {
            for action in actions { run(action) }
        }

        private func run(_ action: ScreencastController.Action) {
            let options = source.options
            switch action {
            case .start(let page):
                client.send(StartScreencast(quality: options.quality, maxWidth: options.maxWidth,
                                            maxHeight: options.maxHeight), to: page)
            case .stop(let page):
                client.send(StopScreencast(), to: page)
            case .captureFirstFrame(let page):
                let before = published
                client.send(CaptureScreenshot(quality: options.quality), to: page) { [weak self] _, image in
                    guard let self, published == before, screencast.shown == page, let image else { return }
                    if source.publish(image, captureTime: nil, url: tabs.url(of: page)) { published += 1 }
                }
            case .finishSwitchLater(let page):
                source.loop.schedule(after: ScreencastController.switchTimeout) { [weak self] in
                    guard let self else { return }
                    run(screencast.switchTimedOut(to: page))
                }
            case .ack, .publish:
                break  // only for the frame at hand
            }
        }

        /// Where scripts run: the page being shown, else the active one.
        var scriptPage: CDPSession? { screencast.shown ?? tabs.activePage }

        /// Sends a command to the page being shown.
        func sendToShownPage<Command: CDPCommand>(_ command: Command) {
            guard let page = screencast.shown ?? (pageEndpoint ? .root : nil) else { return }
            client.send(command, to: page)
        }

        func demandChanged(_ wanted: Bool) {
            run(screencast.demandChanged(wanted))
            if wanted { poll() }
        }

        // MARK: Following the active tab

        /// Polls which tab is active while frames are wanted (Chrome does not push tab activation).
        private func poll() {
            guard screencast.demand, !client.closed else { return }
            if pageEndpoint {
                client.send(GetTargetInfo()) { [weak self] result, _ in
                    if let url = result?.targetInfo.url { self?.track(.endpointURL(url)) }
                }
                run(screencast.follow(tabs.activePage))
            } else {
                client.send(GetTargets()) { [weak self] result, _ in
                    guard let self else { return }
                    track(.polled(result?.targetInfos ?? []))
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
    }
}
