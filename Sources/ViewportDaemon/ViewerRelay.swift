import Foundation
import Logging
import Recorder
import Synchronization
import ViewerGateway
import ViewportCore
import WebSocketIO

/// What this node serves from other nodes' streams, read by `/metrics` and the lease heartbeat.
final class RelayCounts: Sendable {
    /// Viewers here of sessions another node owns.
    let relayedViewers = Atomic(0)
    /// Open upstream streams this node holds, one per session watched here that another node owns.
    let upstreamStreams = Atomic(0)
}

/// Viewers of sessions that another cluster node owns (docs/architecture.md, "Viewers relayed").
///
/// Per session this node holds one upstream stream from the owner, whatever the number and format of its viewers
/// here, and publishes what it brings into a local ``FrameHub``: the gateway serves the viewers from it like any
/// other, each with its own queue. The stream closes ``lingerSeconds`` after its last viewer left. A viewer's
/// control messages go to the owner on a control line of its own (``ControlLine``), opened at its first one: the
/// owner keeps the control state and says who controls on the stream. A noVNC connection is piped to the owner's,
/// one for one (RFB is a conversation of its own).
///
/// Upgrades are decided from memory, and which node owns a session is in the store: a relayed viewer is accepted
/// first, and what would have refused its handshake here closes it with 4000 + the HTTP status (4404, 4503...).
///
/// `@unchecked Sendable`: its state is confined to the event loop's service thread.
final class ViewerRelay: @unchecked Sendable {
    /// How long an upstream stream outlives its last viewer (a page reload finds it still open).
    static let lingerSeconds = 2.0
    /// Largest message from an owner: a frame.
    static let maxMessageBytes = 16 << 20

    let counts: RelayCounts
    let loop: EventLoop
    let gateway: ViewerGateway
    let config: Config
    let logger: Logger
    private let cluster: Cluster
    private let auth: Auth
    private let credential: NodeCredential
    private let metrics: StreamMetrics
    private var streams: [String: UpstreamStream] = [:]
    private var stopped = false

    init(cluster: Cluster, gateway: ViewerGateway, auth: Auth, config: Config, loop: EventLoop, counts: RelayCounts,
         metrics: StreamMetrics, logger: Logger)
    {
        self.cluster = cluster
        self.counts = counts
        self.gateway = gateway
        self.auth = auth
        self.config = config
        self.loop = loop
        self.metrics = metrics
        self.logger = logger
        credential = NodeCredential(secret: config.cluster.secret ?? "")
    }

    /// Accepts an authenticated viewer (or noVNC, `rfb`) of a session not open here; `organizationID` is the one
    /// of its API key (nil with a viewer token). Call from the upgrade callback.
    func accept(sessionID: String, rfb: Bool, format: ViewerFormat, control: Bool, organizationID: String?)
        -> WebSocketUpgrade
    {
        guard !stopped else { return .reject(.json(503, ["detail": "viewportd is shutting down"])) }
        if rfb {
            return .accept(VNCPipe(relay: self, sessionID: sessionID, control: control, organizationID: organizationID),
                           maxMessageBytes: 1 << 20)
        }
        return .accept(RelayedViewer(relay: self, sessionID: sessionID, format: format, control: control,
                                     organizationID: organizationID),
                       maxMessageBytes: control ? ViewerGateway.maxControlMessageBytes : ViewerGateway.maxInboundMessageBytes)
    }

    /// Closes every upstream stream and accepts no more viewers: the daemon stops (its viewers were told).
    func stop() {
        loop.execute { [self] in
            stopped = true
            for stream in Array(streams.values) { end(stream) }
        }
    }

    fileprivate func join(_ viewer: RelayedViewer) {
        let stream = streams[viewer.sessionID] ?? {
            let stream = UpstreamStream(relay: self, sessionID: viewer.sessionID, hub: FrameHub(metrics: metrics))
            streams[viewer.sessionID] = stream
            stream.resolve()
            return stream
        }()
        stream.viewers[ObjectIdentifier(viewer)] = viewer
        viewer.stream = stream
        if stream.organizationID != nil { viewer.attach() }
    }

    fileprivate func leave(_ viewer: RelayedViewer) {
        guard let stream = viewer.stream else { return }
        stream.viewers[ObjectIdentifier(viewer)] = nil
        guard stream.viewers.isEmpty else { return }
        loop.schedule(after: Self.lingerSeconds) { [weak self] in
            guard stream.viewers.isEmpty, let self else { return }
            end(stream)
        }
    }

    /// Closes `stream` and forgets it: the next viewer of its session opens another.
    fileprivate func end(_ stream: UpstreamStream) {
        guard streams[stream.sessionID] === stream else { return }
        streams[stream.sessionID] = nil
        stream.end()
        gateway.setRelayedController(.agent, of: stream.sessionID)
        gateway.forgetRuns(of: stream.sessionID)
    }

    /// Reads where session `id` is served and hands the answer to `then` on the service thread.
    fileprivate func resolve(_ id: String, then: @escaping @Sendable (Resolution) -> Void) {
        Task { [cluster, loop] in
            let resolution: Resolution
            do {
                if let record = try await cluster.store.session(id: id) {
                    if !record.status.isActive {
                        resolution = .ended(organizationID: record.organizationID, status: record.streamEnd)
                    } else if case .owner(_, let url) = try await cluster.placement(of: record) {
                        resolution = .owner(url: url, organizationID: record.organizationID)
                    } else {
                        resolution = .refused(status: 503, detail: "browser session \(id) is owned by this node but not open here")
                    }
                } else {
                    resolution = .refused(status: 404, detail: "browser session \(id) not found")
                }
            } catch let error as OwnerUnavailable {
                resolution = .refused(status: 503, detail: error.detail)
            } catch {
                resolution = .refused(status: 503, detail: "cannot read the cluster's store: \(error)")
            }
            loop.execute { then(resolution) }
        }
    }

    /// Connects `delegate` to `path` on the node at `ownerURL` with a token minted here (`control` as given), the
    /// node credential and `relay` (the kind of connection the owner counts it as). False for an unusable URL; the
    /// delegate then hears nothing.
    fileprivate func connect(to ownerURL: String, _ path: String, sessionID: String, control: Bool, relay: String?,
                             delegate: any WebSocketDelegate) -> Bool
    {
        let token = auth.viewerToken(sessionID: sessionID, expiresAt: Date().addingTimeInterval(300), control: control)
        let base = ownerURL.hasSuffix("/") ? String(ownerURL.dropLast()) : ownerURL
        let url = base + path + "?token=\(token)" + (relay.map { "&relay=\($0)" } ?? "")
        guard let signedPath = URLComponents(string: url)?.path else { return false }
        do {
            _ = try loop.connectWebSocket(to: url, headers: credential.headers(nodeID: cluster.nodeID, method: "GET", path: signedPath),
                                          delegate: delegate, maxMessageBytes: Self.maxMessageBytes)
            return true
        } catch {
            logger.error("cannot connect to a session's owner", metadata: ["url": "\(base)", "error": "\(error)"])
            return false
        }
    }
}

/// Where a session a relayed viewer asked for is served.
private enum Resolution: Sendable {
    /// Open on the node at `url`.
    case owner(url: String, organizationID: String)
    /// It ended: its viewers get the final status.
    case ended(organizationID: String, status: StreamStatus)
    /// What a handshake would have been refused with.
    case refused(status: Int, detail: String)
}

extension SessionRecord {
    /// The final status of an ended session's stream.
    var streamEnd: StreamStatus { status == .failed ? .failed(reason: failureReason ?? "failed") : .closed }
}

/// Closes a relayed client as its handshake would have been refused: 4000 + `status`, the detail as the reason.
private func refuse(_ socket: WebSocket?, status: Int, detail: String) {
    socket?.close(code: UInt16(clamping: 4000 + status), reason: detail)
}

/// The one stream of a session from its owner, published into the hub this node's viewers of it read.
///
/// `@unchecked Sendable`, as are the other connections here: confined to the service thread.
private final class UpstreamStream: WebSocketDelegate, @unchecked Sendable {
    let relay: ViewerRelay
    let sessionID: String
    let hub: FrameHub
    /// The H.264 of the stream's frames for this node's `?codec=h264` viewers, made when the first comes.
    private(set) lazy var encoder = SessionEncoder(
        hub: hub, packets: EncodedHub(metrics: hub.metrics), settings: relay.config.encoderSettings,
        viewersAlone: relay.config.viewer.h264WithoutRecording, logger: relay.logger.with(sessionID: sessionID))
    var viewers: [ObjectIdentifier: RelayedViewer] = [:]
    /// Known once the store was read: viewers wait until then.
    private(set) var organizationID: String?
    /// The owner's API, for the viewers' control lines.
    private(set) var ownerURL: String?
    private var socket: WebSocket?
    private var pageURL: String?
    private var failures = 0
    private var ended = false

    init(relay: ViewerRelay, sessionID: String, hub: FrameHub) {
        self.relay = relay
        self.sessionID = sessionID
        self.hub = hub
    }

    func resolve() {
        relay.resolve(sessionID) { [self] resolution in
            guard !ended else { return }
            switch resolution {
            case .refused(let status, let detail):
                relay.end(self)
                for viewer in viewers.values { refuse(viewer.socket, status: status, detail: detail) }
                return
            case .ended(let organizationID, let status):
                self.organizationID = organizationID
                hub.setStatus(status)
            case .owner(let url, let organizationID):
                (ownerURL, self.organizationID) = (url, organizationID)
                if !relay.connect(to: url, "/stream/browser/\(sessionID)", sessionID: sessionID, control: false,
                                  relay: "stream", delegate: self) { reconnect() }
            }
            for viewer in viewers.values { viewer.attach() }
        }
    }

    func end() {
        ended = true
        socket?.close(code: 1000, reason: "no viewer left")
    }

    /// Tells the viewers, then reads the owner again after a backoff (at most 5 s).
    private func reconnect() {
        hub.setStatus(.reconnecting)
        failures += 1
        relay.loop.schedule(after: min(5, 0.25 * Double(1 << min(failures - 1, 5)))) { [self] in
            if !ended { resolve() }
        }
    }

    func webSocketDidOpen(_ socket: WebSocket) {
        guard !ended else { return socket.close(code: 1000, reason: "no viewer left") }
        self.socket = socket
        relay.counts.upstreamStreams.add(1, ordering: .relaxed)
    }

    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        if message.isBinary { publish(message.data) } else { handle(message.data) }
    }

    func nextMessage(for socket: WebSocket) -> OutboundMessage? { nil }
    func hasMessages(for socket: WebSocket) -> Bool { false }

    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        if self.socket === socket {
            self.socket = nil
            relay.counts.upstreamStreams.subtract(1, ordering: .relaxed)
        }
        guard !ended, !hub.status.isFinal else { return }
        if failures == 0 {
            relay.logger.warning("stream from a session's owner lost; reconnecting", metadata: [
                "browser_session_id": "\(sessionID)", "close_code": "\(code.map(String.init) ?? "none")", "reason": "\(reason)",
            ])
        }
        reconnect()
    }

    /// A `VPF1` frame: published with the owner's sequence number and capture time.
    private func publish(_ data: Data) {
        data.withUnsafeBytes { raw in
            guard raw.count > Frame.wireHeaderSize, let base = raw.baseAddress,
                  UInt32(bigEndian: raw.loadUnaligned(as: UInt32.self)) == 0x5650_4631
            else { return }
            let jpeg = FrameBytes(count: raw.count - Frame.wireHeaderSize)
            jpeg.payload.copyMemory(from: base + Frame.wireHeaderSize, byteCount: jpeg.count)
            hub.publish(jpeg: jpeg, width: Int(UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: 20, as: UInt16.self))),
                        height: Int(UInt16(bigEndian: raw.loadUnaligned(fromByteOffset: 22, as: UInt16.self))),
                        captureTime: UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 12, as: UInt64.self)),
                        url: pageURL, sequence: UInt64(bigEndian: raw.loadUnaligned(fromByteOffset: 4, as: UInt64.self)))
        }
    }

    private struct Event: Decodable {
        var type: String
        var status: String?
        var reason: String?
        var controller: String?
        var url: String?
    }

    /// The owner's text messages: its status, controller, runs and steps go to the viewers here, a page URL to the
    /// next frames.
    private func handle(_ data: Data) {
        guard let event = try? JSONDecoder().decode(Event.self, from: data) else { return }
        let gateway = relay.gateway
        switch (event.type, event.status) {
        case ("hello", _):
            failures = 0
            hub.setStatus(.live)
            // The owner tells its open run again after hello.
            gateway.forgetRuns(of: sessionID)
        case ("run", _): if let run = try? JSONDecoder().decode(RunEvent.self, from: data) { gateway.runChanged(run, sessionID: sessionID) }
        case ("step", _): if let step = try? JSONDecoder().decode(StepEvent.self, from: data) { gateway.stepMarked(step, sessionID: sessionID) }
        case ("control", _): gateway.setRelayedController(event.controller == "viewer" ? .viewer : .agent, of: sessionID)
        case ("page", _): pageURL = event.url
        case ("status", "running"): hub.setStatus(.live)
        // The owner restarts: this node reconnects once it is back.
        case ("status", "reconnecting"), ("status", "shutting_down"): hub.setStatus(.reconnecting)
        case ("status", "closed"): hub.setStatus(.closed)
        case ("status", "failed"): hub.setStatus(.failed(reason: event.reason ?? "failed"))
        default: break
        }
    }
}

/// A viewer here of a session another node owns: waits for its stream's owner to be known, then is a gateway
/// viewer of the stream's hub, to which everything is handed.
private final class RelayedViewer: WebSocketDelegate, @unchecked Sendable {
    let relay: ViewerRelay
    let sessionID: String
    let format: ViewerFormat
    let control: Bool
    let organizationID: String?
    var stream: UpstreamStream?
    private(set) weak var socket: WebSocket?
    private var viewer: (any WebSocketDelegate)?
    /// What the viewer sent before it was attached (a `take-control` right after connecting).
    private var early: [InboundMessage] = []

    init(relay: ViewerRelay, sessionID: String, format: ViewerFormat, control: Bool, organizationID: String?) {
        self.relay = relay
        self.sessionID = sessionID
        self.format = format
        self.control = control
        self.organizationID = organizationID
    }

    /// Becomes a gateway viewer of the stream's hub (once its owner is known).
    func attach() {
        guard viewer == nil, let socket, let stream, let owner = stream.organizationID else { return }
        guard organizationID == nil || organizationID == owner else {
            return refuse(socket, status: 404, detail: "browser session \(sessionID) not found")
        }
        // H.264 is encoded here, from the stream's frames: the owner's one stream per session stays JPEG.
        let packets = format == .h264 ? stream.encoder.packets : nil
        let format = format == .h264 && packets?.servesViewers != true ? .binary : format
        let upgrade = relay.gateway.accept(
            sessionID: sessionID, hub: stream.hub, format: format, queueFrames: relay.config.queueFrames(format),
            control: control, maxViewers: relay.config.limits.viewersPerSession,
            controlLine: { answer in OwnerControlLine(stream: stream, answer: answer) }, packets: packets)
        switch upgrade {
        case .accept(let viewer, _):
            self.viewer = viewer
            relay.counts.relayedViewers.add(1, ordering: .relaxed)
            viewer.webSocketDidOpen(socket)
            for message in early { viewer.webSocket(socket, didReceive: message) }
            early = []
        case .reject(let response):
            let detail = (try? JSONDecoder().decode([String: String].self, from: response.body))?["detail"]
            refuse(socket, status: response.status, detail: detail ?? "refused")
        }
    }

    func webSocketDidOpen(_ socket: WebSocket) {
        self.socket = socket
        relay.join(self)
    }

    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        if let viewer { return viewer.webSocket(socket, didReceive: message) }
        guard early.count < 64 else { return socket.close(code: 1008, reason: "too many messages before the stream started") }
        early.append(message)
    }

    func nextMessage(for socket: WebSocket) -> OutboundMessage? { viewer?.nextMessage(for: socket) }
    func hasMessages(for socket: WebSocket) -> Bool { viewer?.hasMessages(for: socket) ?? false }

    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        if let viewer {
            relay.counts.relayedViewers.subtract(1, ordering: .relaxed)
            viewer.webSocketDidClose(socket, code: code, reason: reason)
        }
        viewer = nil
        relay.leave(self)
    }
}

/// One relayed viewer's control line to its session's owner: a connection there with a control token, on which
/// the owner's gateway takes it as the viewer (one controller at a time; control returns to the agent when it
/// closes). The owner's answers (`error`, `evaluate_result`) come back; who controls comes on the stream.
private final class OwnerControlLine: ControlLine, WebSocketDelegate {
    /// Control messages waiting for the owner, at most (a paste may be 1 MiB).
    static let maxQueuedBytes = 4 << 20
    let stream: UpstreamStream
    let answer: (ViewerEvent) -> Void
    private var socket: WebSocket?
    private var connecting = false
    private var queue: [Data] = []
    private var queuedBytes = 0
    private var closed = false
    /// Evaluations sent and not yet answered: if the line drops, each is answered with an error here.
    private var evaluations: [JSONValue] = []

    init(stream: UpstreamStream, answer: @escaping (ViewerEvent) -> Void) {
        self.stream = stream
        self.answer = answer
    }

    func send(_ message: Data, evaluation: JSONValue?) {
        guard queuedBytes + message.count <= Self.maxQueuedBytes else {
            let refusal = "too many control messages are waiting for the session's owner"
            return answer(evaluation.map { .evaluateResult(id: $0, .failure(EvaluationRefusal(refusal))) } ?? .error(refusal))
        }
        if let evaluation { evaluations.append(evaluation) }
        queue.append(message)
        queuedBytes += message.count
        if let socket { return socket.requestWrite() }
        guard !connecting else { return }
        connecting = true
        guard let url = stream.ownerURL,
              stream.relay.connect(to: url, "/stream/browser/\(stream.sessionID)", sessionID: stream.sessionID,
                                   control: true, relay: "control", delegate: self)
        else { return lost() }
    }

    func close() {
        closed = true
        socket?.close(code: 1000, reason: "viewer left")
    }

    /// The owner cannot be reached: what waited is refused, evaluations get an error, and the next message tries
    /// again.
    private func lost() {
        connecting = false
        socket = nil
        let waited = !queue.isEmpty, unanswered = evaluations
        queue = []
        queuedBytes = 0
        evaluations = []
        guard !closed else { return }
        let refusal = "the session's owner cannot be reached for control"
        for id in unanswered { answer(.evaluateResult(id: id, .failure(EvaluationRefusal(refusal)))) }
        if waited { answer(.error(refusal)) }
    }

    func webSocketDidOpen(_ socket: WebSocket) {
        connecting = false
        guard !closed else { return socket.close(code: 1000, reason: "viewer left") }
        self.socket = socket
        socket.requestWrite()
    }

    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        struct Answer: Decodable {
            var type: String
            var message: String?
            var id: JSONValue?
            var value: JSONValue?
            var error: String?
        }
        guard let owner = try? JSONDecoder().decode(Answer.self, from: message.data) else { return }
        switch owner.type {
        case "error": answer(.error(owner.message ?? "refused by the session's owner"))
        case "evaluate_result":
            if let index = evaluations.firstIndex(of: owner.id ?? .null) { evaluations.remove(at: index) }
            answer(.evaluateResult(id: owner.id ?? .null, owner.error.map { .failure(EvaluationRefusal($0)) } ?? .success(owner.value ?? .null)))
        default: break
        }
    }

    func nextMessage(for socket: WebSocket) -> OutboundMessage? {
        guard !queue.isEmpty else { return nil }
        let message = queue.removeFirst()
        queuedBytes -= message.count
        return .text(Payload(copying: message))
    }

    func hasMessages(for socket: WebSocket) -> Bool { !queue.isEmpty }

    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) { lost() }
}

/// noVNC's RFB for a session another node owns, piped message for message to the owner's noVNC endpoint (which
/// does the handshake and the screen). Bounded like the local relay: 8 MiB for a client that does not read, 1 MiB
/// for one that sends faster than the owner takes.
private final class VNCPipe: WebSocketDelegate, @unchecked Sendable {
    static let toClientBytes = 8 << 20
    static let toOwnerBytes = 1 << 20

    /// The owner's side of the pipe.
    private final class OwnerEnd: WebSocketDelegate {
        weak var pipe: VNCPipe?
        init(pipe: VNCPipe) { self.pipe = pipe }
        func webSocketDidOpen(_ socket: WebSocket) {
            guard let pipe else { return socket.close(code: 1000, reason: "client left") }
            pipe.ownerOpened(socket)
        }
        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) { pipe?.ownerSent(message.data) }
        func nextMessage(for socket: WebSocket) -> OutboundMessage? { pipe?.toOwner.take() }
        func hasMessages(for socket: WebSocket) -> Bool { pipe?.toOwner.messages.isEmpty == false }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) { pipe?.ownerClosed(code: code, reason: reason) }
    }

    private struct Outbox {
        var messages: [Data] = []
        var bytes = 0

        mutating func add(_ data: Data) {
            messages.append(data)
            bytes += data.count
        }

        mutating func take() -> OutboundMessage? {
            guard !messages.isEmpty else { return nil }
            let data = messages.removeFirst()
            bytes -= data.count
            return .binary(Payload(copying: data))
        }
    }

    let relay: ViewerRelay
    let sessionID: String
    let control: Bool
    let organizationID: String?
    private weak var client: WebSocket?
    private var owner: WebSocket?
    private var ownerEnd: OwnerEnd?
    private var toClient = Outbox()
    private var toOwner = Outbox()
    private var closed = false

    init(relay: ViewerRelay, sessionID: String, control: Bool, organizationID: String?) {
        self.relay = relay
        self.sessionID = sessionID
        self.control = control
        self.organizationID = organizationID
    }

    func webSocketDidOpen(_ socket: WebSocket) {
        client = socket
        relay.resolve(sessionID) { [self] resolution in
            guard !closed else { return }
            switch resolution {
            case .refused(let status, let detail):
                refuse(client, status: status, detail: detail)
            case .ended:
                refuse(client, status: 409, detail: "browser session \(sessionID) has no VNC screen")
            case .owner(let url, let owner):
                guard organizationID == nil || organizationID == owner else {
                    return refuse(client, status: 404, detail: "browser session \(sessionID) not found")
                }
                let end = OwnerEnd(pipe: self)
                ownerEnd = end
                if !relay.connect(to: url, "/stream/vnc/browser/\(sessionID)", sessionID: sessionID, control: control,
                                  relay: nil, delegate: end) {
                    client?.close(code: 1011, reason: "the session's owner cannot be reached")
                }
            }
        }
    }

    func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
        guard message.isBinary else { return socket.close(code: 1003, reason: "RFB travels in binary messages") }
        guard toOwner.bytes + message.data.count <= Self.toOwnerBytes else {
            return socket.close(code: 1008, reason: "client sends faster than the screen reads")
        }
        toOwner.add(message.data)
        owner?.requestWrite()
    }

    func nextMessage(for socket: WebSocket) -> OutboundMessage? { toClient.take() }
    func hasMessages(for socket: WebSocket) -> Bool { !toClient.messages.isEmpty }

    func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
        closed = true
        toOwner = Outbox()
        owner?.close(code: 1000, reason: "client left")
    }

    fileprivate func ownerOpened(_ socket: WebSocket) {
        guard !closed else { return socket.close(code: 1000, reason: "client left") }
        owner = socket
        socket.requestWrite()
    }

    fileprivate func ownerSent(_ data: Data) {
        guard toClient.bytes + data.count <= Self.toClientBytes else {
            client?.close(code: 1008, reason: "client is not reading")
            return
        }
        toClient.add(data)
        client?.requestWrite()
    }

    fileprivate func ownerClosed(code: UInt16?, reason: String) {
        owner = nil
        // Codes that never travel in a close frame (none given, connection lost) become 1011.
        let code = code.flatMap { [1005, 1006, 1015].contains($0) ? nil : $0 } ?? 1011
        client?.close(code: code, reason: reason.isEmpty ? "the session's owner closed the connection" : reason)
    }
}
