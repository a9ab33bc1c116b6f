public import Logging
public import ViewportCore
public import WebSocketIO
public import Foundation
import Synchronization

/// How a viewer wants frames.
public enum ViewerFormat: String, Sendable {
    /// Binary messages: the 24-byte `VPF1` header, then the JPEG (docs/protocol.md).
    case binary
    /// Text messages shaped like the platform's existing viewer expects, with the JPEG in base64.
    case json
    /// Binary messages: the 28-byte `VPH1` header, then an H.264 access unit from the session's one encode
    /// (`?codec=h264`, docs/protocol.md).
    case h264
}

/// What a WebSocket connection to a session's stream serves.
public enum ViewerKind: Sendable {
    /// A person's viewer: connected here, to a session open here or relayed from its owner (docs/architecture.md).
    case viewer
    /// Another node's one stream of a session open here, which it fans out to its own viewers.
    case upstream
    /// Another node's line for the control messages of one of its viewers: no frames, the answers go back.
    case controlLine
}

/// The line that takes one relayed viewer's control messages to the node that owns its session, which decides on
/// them as on its own viewers' (one controller at a time, across nodes). Its answers (refusals, evaluation results)
/// come back through the callback it was opened with.
public protocol ControlLine: AnyObject {
    /// Sends a control message (`take-control`, `cede-control`, input, `evaluate`) as the viewer sent it;
    /// `evaluation` is an `evaluate`'s id, which the line answers itself when the owner cannot.
    func send(_ message: Data, evaluation: JSONValue?)
    /// The viewer left: the owner gives control back to the agent if this viewer held it.
    func close()
}

/// Opens a relayed viewer's ``ControlLine``; its argument hands the viewer the owner's answers (`error`,
/// `evaluate_result`) and the line's own refusals.
public typealias ControlLineOpener = (_ answer: @escaping (ViewerEvent) -> Void) -> any ControlLine

/// Feeds WebSocket viewers from their sessions' frame hubs.
///
/// Each viewer reads its own bounded hub queue when its socket can take data, so a slow viewer skips to newer
/// frames and never holds up the source or other viewers. Frame bytes are written from the hub's shared buffer;
/// the JSON form of a frame is built once and shared by every JSON viewer.
///
/// `@unchecked Sendable`: viewer bookkeeping is confined to the event loop's service thread.
public final class ViewerGateway: @unchecked Sendable {
    /// Largest message a viewer may send; bigger ones close the socket with 1009.
    public static let maxInboundMessageBytes = 64 * 1024
    /// A viewer with control permission may paste up to 1 MiB; its messages may be this large.
    public static let maxControlMessageBytes = 2 * 1024 * 1024
    /// Evaluations one viewer may have running; it is answered an error beyond. Three results at the largest
    /// cap stay within the default budget of unread replies.
    public static let maxEvaluationsInFlight = 3
    /// Steps of a session's open run kept to tell viewers who join (the newest).
    public static let maxReplayedSteps = 200

    fileprivate let loop: EventLoop
    private let logger: Logger
    private let viewers = Mutex<[ObjectIdentifier: Viewer]>([:])
    private var jsonCache: [String: (sequence: UInt64, payload: Payload)] = [:]
    private var closingAll = false
    /// The viewer in control of each session (absent: the agent is).
    private var controllers: [String: ObjectIdentifier] = [:]
    /// Relayed sessions whose owner says a viewer is in control.
    private var relayedControlled: Set<String> = []
    /// The open run of each session that has one, with its newest steps, for viewers who join.
    private var openRuns: [String: (run: RunEvent, steps: [StepEvent])] = [:]
    /// How long an `evaluate` may run, in seconds.
    fileprivate let evaluateTimeout: Double
    /// Largest JSON of an `evaluate`'s value.
    fileprivate let maxEvaluateResultBytes: Int
    /// Bytes of replies (pongs, errors, statuses) one viewer may leave unread before it is closed with 1008.
    fileprivate let maxPendingBytes: Int
    private let metrics: StreamMetrics

    public init(loop: EventLoop, logger: Logger, maxPendingBytes: Int = 1 << 20, metrics: StreamMetrics = .none,
                evaluateTimeout: Double = 5, maxEvaluateResultBytes: Int = 256 << 10)
    {
        self.loop = loop
        self.logger = logger
        self.maxPendingBytes = maxPendingBytes
        self.metrics = metrics
        self.evaluateTimeout = evaluateTimeout
        self.maxEvaluateResultBytes = maxEvaluateResultBytes
    }

    /// Accepts an authenticated viewer of `hub`; call from the upgrade callback. With `control` permission and an
    /// `input` target, the viewer may take control of the browser. A viewer of a session another node owns has a
    /// `controlLine` instead: its control messages go to the owner, and ``setRelayedController(_:of:)`` says who
    /// controls. `maxViewers` counts the session's viewers of kind ``ViewerKind/viewer`` (the others are nodes').
    /// An ``ViewerFormat/h264`` viewer reads `packets` (`queueFrames` pictures), the session's H.264.
    public func accept(sessionID: String, hub: FrameHub, format: ViewerFormat, queueFrames: Int, control: Bool = false,
                       input: (any InputTarget)? = nil, maxViewers: Int = .max, kind: ViewerKind = .viewer,
                       controlLine: ControlLineOpener? = nil, packets: EncodedHub? = nil) -> WebSocketUpgrade
    {
        guard !closingAll else {
            return .reject(.json(503, ["detail": "viewportd is shutting down"]))
        }
        guard kind != .viewer || viewers.withLock({ $0.values.count { $0.sessionID == sessionID && $0.kind == .viewer } }) < maxViewers else {
            metrics.peerLimited(.viewersPerSession)
            return .reject(.json(429, ["detail": "browser session \(sessionID) has \(maxViewers) viewers, the most it may have (config limits.viewers_per_session)"]))
        }
        let viewer = Viewer(gateway: self, sessionID: sessionID, hub: hub, format: format, queueFrames: queueFrames,
                            mayControl: control, input: input, kind: kind, openControlLine: controlLine,
                            packets: format == .h264 ? packets : nil)
        return .accept(viewer, maxMessageBytes: control ? Self.maxControlMessageBytes : Self.maxInboundMessageBytes)
    }

    fileprivate func overBudget(_ viewer: Viewer) {
        metrics.peerLimited(.viewerNotReading)
        logger.warning("viewer closed: it does not read its messages", metadata: [
            "browser_session_id": "\(viewer.sessionID)", "limit_bytes": "\(maxPendingBytes)",
        ])
    }

    /// Who controls `sessionID`'s browser.
    fileprivate func controller(of sessionID: String) -> ViewerEvent.Controller {
        controllers[sessionID] == nil && !relayedControlled.contains(sessionID) ? .agent : .viewer
    }

    fileprivate func isController(_ viewer: Viewer) -> Bool { controllers[viewer.sessionID] == ObjectIdentifier(viewer) }

    /// Gives control to `viewer` (nil: back to the agent) and tells every viewer of the session.
    fileprivate func setController(_ viewer: Viewer?, of sessionID: String) {
        controllers[sessionID] = viewer.map(ObjectIdentifier.init)
        controlChanged(sessionID)
        logger.info("control changed", metadata: ["browser_session_id": "\(sessionID)", "controller": "\(controller(of: sessionID).rawValue)"])
    }

    /// Who controls a session relayed from its owner, as the owner says; every viewer of it here is told of a
    /// change. Call on the service thread.
    public func setRelayedController(_ controller: ViewerEvent.Controller, of sessionID: String) {
        guard (controller == .viewer) != relayedControlled.contains(sessionID) else { return }
        if controller == .viewer { relayedControlled.insert(sessionID) } else { relayedControlled.remove(sessionID) }
        controlChanged(sessionID)
    }

    /// Tells every viewer of `sessionID` that a run started or ended, and keeps the started one (with its steps) for
    /// viewers who join until it ends. Call from any thread.
    public func runChanged(_ run: RunEvent, sessionID: String) {
        loop.execute { [self] in
            if run.isRunning {
                openRuns[sessionID] = (run, [])
            } else if openRuns[sessionID]?.run.runID == run.runID {
                openRuns[sessionID] = nil
            }
            broadcast(.run(run), to: sessionID)
        }
    }

    /// Tells every viewer of `sessionID` that a step was marked, and keeps it with its open run. Call from any thread.
    public func stepMarked(_ step: StepEvent, sessionID: String) {
        loop.execute { [self] in
            if openRuns[sessionID]?.run.runID == step.runID {
                openRuns[sessionID]?.steps.append(step)
                if let count = openRuns[sessionID]?.steps.count, count > Self.maxReplayedSteps {
                    openRuns[sessionID]?.steps.removeFirst(count - Self.maxReplayedSteps)
                }
            }
            broadcast(.step(step), to: sessionID)
        }
    }

    /// Forgets the open run of a session this node no longer relays. Call on the service thread.
    public func forgetRuns(of sessionID: String) { openRuns[sessionID] = nil }

    /// The open run of `sessionID` and its steps, as a viewer who joins is told them.
    fileprivate func openRunEvents(of sessionID: String) -> [ViewerEvent] {
        guard let open = openRuns[sessionID] else { return [] }
        return [.run(open.run)] + open.steps.map(ViewerEvent.step)
    }

    /// Sends `event`, encoded once, to every viewer of `sessionID` and every node's stream of it.
    private func broadcast(_ event: ViewerEvent, to sessionID: String) {
        let message = OutboundMessage.text(Payload(copying: event.viewerJSON()))
        for viewer in viewers.withLock({ Array($0.values) }) where viewer.sessionID == sessionID && viewer.kind != .controlLine {
            viewer.enqueue(message)
        }
    }

    private func controlChanged(_ sessionID: String) {
        let controller = controller(of: sessionID)
        for other in viewers.withLock({ Array($0.values) }) where other.sessionID == sessionID { other.send(.control(controller)) }
    }

    /// Number of connected viewers (of kind ``ViewerKind/viewer``).
    public var viewerCount: Int { count(.viewer) }

    /// Number of connections of `kind`.
    public func count(_ kind: ViewerKind) -> Int { viewers.withLock { $0.values.count { $0.kind == kind } } }

    /// Queue statistics of every viewer of `sessionID`.
    public func viewerStats(sessionID: String) -> [FrameSubscription.Stats] {
        viewers.withLock { $0.values.filter { $0.sessionID == sessionID }.compactMap { $0.stats } }
    }

    /// Tells every viewer `{"type":"status","status":"shutting_down"}`, closes it with 1001 (going away) and waits
    /// up to `timeout` seconds for them to go.
    public func closeAll(timeout: Double = 2) async {
        let deadline = Date().addingTimeInterval(timeout)
        loop.execute {
            self.closingAll = true
            for viewer in self.viewers.withLock({ Array($0.values) }) { viewer.goAway() }
        }
        while viewers.withLock({ !$0.isEmpty }), Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
    }

    fileprivate func opened(_ viewer: Viewer) {
        viewers.withLock { $0[ObjectIdentifier(viewer)] = viewer }
        logger.debug("viewer joined", metadata: ["browser_session_id": "\(viewer.sessionID)", "format": "\(viewer.format.rawValue)",
                                                 "kind": "\(viewer.kind)"])
    }

    fileprivate func closed(_ viewer: Viewer, code: UInt16?, stats: FrameSubscription.Stats?) {
        var metadata: Logger.Metadata = ["browser_session_id": "\(viewer.sessionID)", "close_code": "\(code.map(String.init) ?? "none")"]
        if let stats {
            metadata["frames_sent"] = "\(stats.delivered)"
            metadata["frames_skipped"] = "\(stats.dropped)"
        }
        // A viewer that skipped frames was slower than the source: worth a line at info.
        logger.log(level: (stats?.dropped ?? 0) > 0 ? .info : .debug, "viewer left", metadata: metadata)
        let sessionWatched = viewers.withLock { viewers in
            viewers[ObjectIdentifier(viewer)] = nil
            return viewers.values.contains { $0.sessionID == viewer.sessionID }
        }
        if isController(viewer) { setController(nil, of: viewer.sessionID) }
        if !sessionWatched { jsonCache[viewer.sessionID] = nil }
    }

    /// The platform-compatible JSON message of `frame`, built once per frame.
    fileprivate func jsonMessage(_ frame: Frame, sessionID: String) -> Payload {
        if let cached = jsonCache[sessionID], cached.sequence == frame.sequence { return cached.payload }
        let payload = Payload(copying: JSONFrame(frame, sessionID: sessionID).viewerJSON())
        jsonCache[sessionID] = (frame.sequence, payload)
        return payload
    }
}

/// One connected viewer. Lives on the service thread; the gateway holds it until its socket closes.
private final class Viewer: WebSocketDelegate, @unchecked Sendable {
    let gateway: ViewerGateway
    let sessionID: String
    let hub: FrameHub
    let format: ViewerFormat
    let queueFrames: Int
    let mayControl: Bool
    let input: (any InputTarget)?
    let kind: ViewerKind
    private let openControlLine: ControlLineOpener?
    private var controlLine: (any ControlLine)?
    /// The hub's frames, or for an H.264 viewer only its status.
    private var subscription: FrameSubscription? {
        didSet { updateStats() }
    }
    /// An H.264 viewer's pictures.
    private let packets: EncodedHub?
    private var encoded: EncodedSubscription? {
        didSet { updateStats() }
    }
    /// Read from other threads for statistics.
    private let statsSource = Mutex<(@Sendable () -> FrameSubscription.Stats)?>(nil)
    var stats: FrameSubscription.Stats? { statsSource.withLock { $0 }?() }
    private weak var socket: WebSocket?
    private var control: [OutboundMessage] = []
    private var controlBytes = 0
    private var overBudget = false
    /// A frame held back while the `page` message announcing its new URL goes first.
    private var heldFrame: Frame?
    private var heldPicture: EncodedFrame?
    private var announcedURL: String?
    /// The configuration and source size an H.264 viewer was last told (`hello` or `config`).
    private var toldConfig: ViewerEvent?
    private var closeAfterControl: (code: UInt16, reason: String)?
    /// Evaluations running for this viewer.
    private var evaluations = 0
    /// Bytes of an H.264 viewer's pictures the kernel may hold unsent: about a key frame of a text page.
    private static let unsentBytes = 64 << 10

    init(gateway: ViewerGateway, sessionID: String, hub: FrameHub, format: ViewerFormat, queueFrames: Int,
         mayControl: Bool, input: (any InputTarget)?, kind: ViewerKind, openControlLine: ControlLineOpener?,
         packets: EncodedHub?)
    {
        self.packets = packets
        self.gateway = gateway
        self.sessionID = sessionID
        self.hub = hub
        self.format = format
        self.queueFrames = queueFrames
        self.mayControl = mayControl
        self.input = input
        self.kind = kind
        self.openControlLine = openControlLine
    }

    /// Says the daemon is going away, then closes with 1001 once that message is out.
    func goAway() {
        send(.status(.shuttingDown))
        closeAfterControl = (1001, "viewportd is shutting down")
    }

    func webSocketDidOpen(_ socket: WebSocket) {
        self.socket = socket
        gateway.opened(self)
        let latest = hub.latest
        let (width, height) = (latest?.width ?? 0, latest?.height ?? 0)
        let config = packets?.config
        send(.hello(sessionID: sessionID, width: width, height: height, controlPermitted: mayControl,
                    format: format == .h264 ? .h264(config) : .jpeg))
        toldConfig = config.map { .config($0, width: width, height: height) }
        send(.control(gateway.controller(of: sessionID)))
        guard kind != .controlLine else { return }
        for event in gateway.openRunEvents(of: sessionID) { send(event) }
        if let packets {
            // A picture waiting in the kernel cannot be skipped: keep the backlog in the queue.
            socket.limitUnsentBytes(Self.unsentBytes)
            subscription = hub.subscribeToStatus(kind: .viewer) { [weak socket] in socket?.requestWrite() }
            encoded = packets.subscribe(capacity: queueFrames) { [weak socket] in socket?.requestWrite() }
        } else {
            subscription = hub.subscribe(kind: .viewer, capacity: queueFrames) { [weak socket] in socket?.requestWrite() }
        }
    }

    private func updateStats() {
        let source: (@Sendable () -> FrameSubscription.Stats)? =
            if let encoded { { encoded.stats } } else if let subscription { { subscription.stats } } else { nil }
        statsSource.withLock { $0 = source }
    }

    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        guard !overBudget else { return }
        guard !message.isBinary, let request = try? ViewerRequest.decode(message.data) else {
            return refuse(ViewerRequest.malformed)
        }
        if request.isControl, let openControlLine {
            guard mayControl else { return refuse("this viewer has no control permission") }
            let line = controlLine ?? openControlLine { [weak self] in self?.send($0) }
            controlLine = line
            var evaluation: JSONValue?
            if case .evaluate(let id, _) = request { evaluation = id }
            return line.send(message.data, evaluation: evaluation)
        }
        switch request {
        case .ping(let t):
            send(.pong(t: t, serverTimeMicros: wallClockMicros()))
        case .takeControl:
            guard mayControl else { return refuse("this viewer has no control permission") }
            guard input != nil else { return refuse("this session takes no input") }
            guard !gateway.isController(self) else { return }
            guard gateway.controller(of: sessionID) == .agent else { return refuse("another viewer is in control") }
            gateway.setController(self, of: sessionID)
        case .cedeControl:
            guard gateway.isController(self) else { return refuse("this viewer is not in control") }
            gateway.setController(nil, of: sessionID)
        case .input(let parsed):
            guard mayControl else { return refuse("this viewer has no control permission") }
            guard gateway.isController(self), let input else { return refuse("take control first") }
            let frame = hub.latest
            switch parsed {
            case .success(let message):
                input.deliver(message.clamped(width: frame?.width ?? 16384, height: frame?.height ?? 16384))
            case .failure(let refusal):
                refuse(refusal.message)
            }
        case .evaluate(let id, let expression):
            guard mayControl else { return refuse("this viewer has no control permission") }
            evaluate(expression, id: id)
        case .unknown(let type):
            refuse("unknown message type \"\(type.prefix(64))\"")
        }
    }

    /// Runs an `evaluate` off the service thread; its answer is encoded there too.
    private func evaluate(_ expression: String?, id: JSONValue) {
        func answer(_ error: String) { send(.evaluateResult(id: id, .failure(EvaluationRefusal(error)))) }
        guard let expression else { return answer("expression must be a string") }
        guard let script = input as? any ScriptTarget else { return answer("evaluate needs a CDP session") }
        guard evaluations < ViewerGateway.maxEvaluationsInFlight else {
            return answer("\(ViewerGateway.maxEvaluationsInFlight) evaluations are running, the most one viewer may have; wait for an answer")
        }
        evaluations += 1
        let (timeout, maxBytes, loop) = (gateway.evaluateTimeout, gateway.maxEvaluateResultBytes, gateway.loop)
        let answered: @Sendable (OutboundMessage) -> Void = { [weak self] message in
            guard let self else { return }
            evaluations -= 1
            enqueue(message)
        }
        Task {
            let result: Result<JSONValue, EvaluationRefusal>
            switch await script.evaluate(expression, timeout: timeout, maxResultBytes: maxBytes) {
            case .success(let json):
                do { result = .success(try JSONDecoder().decode(JSONValue.self, from: Data(json.utf8))) } catch {
                    result = .failure(EvaluationRefusal("the value's JSON cannot be read: \(error)"))
                }
            case .failure(.threw(let text)): result = .failure(EvaluationRefusal(text))
            case .failure(.timedOut):
                result = .failure(EvaluationRefusal("timed out after \(String(format: "%g", timeout)) s (config viewer.evaluate_timeout_seconds)"))
            case .failure(.tooLarge(let bytes)):
                result = .failure(EvaluationRefusal("the value's JSON is \(bytes) bytes, over the cap of \(maxBytes) (config viewer.evaluate_max_result_kb)"))
            case .failure(.failed(let reason)): result = .failure(EvaluationRefusal(reason))
            }
            let message = OutboundMessage.text(Payload(copying: ViewerEvent.evaluateResult(id: id, result).viewerJSON()))
            loop.execute { answered(message) }
        }
    }

    private func refuse(_ message: String) { send(.error(message)) }

    func nextMessage(for socket: WebSocket) -> OutboundMessage? {
        if let status = subscription?.statusChange() { announce(status) }
        if !control.isEmpty {
            let message = control.removeFirst()
            controlBytes -= message.count
            return message
        }
        if let closing = closeAfterControl {
            socket.close(code: closing.code, reason: closing.reason)
            return nil
        }
        if format == .h264 { return nextPicture() }
        guard let frame = heldFrame ?? subscription?.next() else { return nil }
        heldFrame = nil
        if format == .binary, let url = frame.url, url != announcedURL {
            announcedURL = url
            heldFrame = frame
            return .text(Payload(copying: ViewerEvent.page(url: url).viewerJSON()))
        }
        switch format {
        case .binary:
            return .binary(Payload(owner: frame.jpeg, start: frame.wireMessage, count: frame.wireMessageCount,
                                   headroom: Frame.wireMessageHeadroom))
        case .json:
            return .text(gateway.jsonMessage(frame, sessionID: sessionID))
        case .h264:
            return nil
        }
    }

    /// An H.264 viewer's next message: a picture, or the `page` or `config` message that must precede it.
    private func nextPicture() -> OutboundMessage? {
        guard let picture = heldPicture ?? encoded?.next() else { return nil }
        heldPicture = nil
        if let url = picture.url, url != announcedURL {
            announcedURL = url
            heldPicture = picture
            return .text(Payload(copying: ViewerEvent.page(url: url).viewerJSON()))
        }
        let config = ViewerEvent.config(picture.config, width: picture.width, height: picture.height)
        if config != toldConfig {
            toldConfig = config
            heldPicture = picture
            return .text(Payload(copying: config.viewerJSON()))
        }
        return .binary(Payload(owner: picture.accessUnit, start: picture.wireMessage, count: picture.wireMessageCount,
                               headroom: EncodedFrame.wireMessageHeadroom))
    }

    func hasMessages(for socket: WebSocket) -> Bool {
        if !control.isEmpty || closeAfterControl != nil { return true }
        if format == .h264 { return heldPicture != nil || encoded?.hasFrames == true }
        return heldFrame != nil || subscription?.hasFrames == true
    }

    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        let stats = self.stats
        subscription?.cancel()
        subscription = nil
        encoded?.cancel()
        encoded = nil
        controlLine?.close()
        gateway.closed(self, code: code, stats: stats)
    }

    private func announce(_ status: StreamStatus) {
        send(.status(ViewerStatus(status)))
        switch status {
        case .live, .reconnecting: break
        case .closed: closeAfterControl = (1000, "session closed")
        case .failed: closeAfterControl = (1000, "session failed")
        }
    }

    fileprivate func send(_ event: ViewerEvent) {
        guard !overBudget else { return }
        enqueue(.text(Payload(copying: event.viewerJSON())))
    }

    /// Queues a text message ahead of frames.
    fileprivate func enqueue(_ message: OutboundMessage) {
        guard !overBudget else { return }
        // A viewer that sends and never reads would grow the daemon by every reply: past its budget it goes.
        guard controlBytes + message.count <= gateway.maxPendingBytes else {
            overBudget = true
            control.removeAll()
            controlBytes = 0
            gateway.overBudget(self)
            socket?.close(code: 1008, reason: "viewer does not read its messages")
            return
        }
        controlBytes += message.count
        control.append(message)
        socket?.requestWrite()
    }
}
