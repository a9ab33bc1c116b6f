import CVNC
public import Foundation
import JPEGCodec
public import Logging
public import ViewportCore
import Synchronization

/// A VNC failure.
public struct VNCError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// A session's screen for stock VNC clients: one libvncserver screen on a port of its own, fed from the session's
/// frame hub, with per-request passwords (view-only or with control) and input forwarded to the browser.
///
/// The screen runs on a thread of its own with libvncserver in its single-threaded mode (`rfbProcessEvents`):
/// accepting, authenticating, reading client messages, sending updates and refreshing the framebuffer all happen
/// there, so the framebuffer is never read while it is written. It subscribes to the hub only while an
/// authenticated client is connected; each frame is decoded once and only the 32×32 tiles that changed are marked,
/// so clients get small updates.
///
/// Every byte a client sends is hostile until it authenticated. The bridge accepts connections itself (poll, not
/// select) and hands libvncserver only descriptors below FD_SETSIZE; it caps the clients that have not finished the
/// handshake per address and per screen, and disconnects any that has not finished it within `handshakeTimeout`.
///
/// noVNC viewers come through ``WebSocketRelay``, which hands the screen its connection directly
/// (`attach(_:control:)`): no TCP connection, no password, since viewportd authenticated the viewer already.
public final class VNCBridge: Sendable {
    public struct Options: Sendable {
        /// Address to listen on (IPv4).
        public var host = "127.0.0.1"
        /// Ports to try, in order.
        public var ports: ClosedRange<Int> = 5900...5999
        /// Seconds a client may take from connecting to the end of the RFB handshake (version, security type,
        /// password, ClientInit) before it is disconnected.
        public var handshakeTimeout: Double = 20
        /// Clients of one remote address that have not finished the handshake, at most; more are refused.
        public var maxUnauthenticatedPerAddress = 8
        /// Clients of the screen that have not finished the handshake, at most; more are refused.
        public var maxUnauthenticated = 64
        public init() {}
    }

    /// Process-wide counts of clients the screens turned away, for metrics.
    public enum Counters {
        /// Disconnected for not finishing the handshake within `handshakeTimeout`.
        public static var handshakeTimeouts: Int { handshakeTimeoutCount.load(ordering: .relaxed) }
        /// Refused because their address or the screen had too many clients still in the handshake.
        public static var refusedUnauthenticated: Int { refusedUnauthenticatedCount.load(ordering: .relaxed) }
        /// Refused because their descriptor was at or past select()'s FD_SETSIZE.
        public static var refusedDescriptors: Int { refusedDescriptorCount.load(ordering: .relaxed) }
        static let handshakeTimeoutCount = Atomic(0)
        static let refusedUnauthenticatedCount = Atomic(0)
        static let refusedDescriptorCount = Atomic(0)
    }

    /// The port the screen listens on.
    public let port: Int
    /// Who may connect.
    public let passwords: VNCPasswords
    private let worker: Worker

    /// Opens the screen on the first free port of `options.ports`. `input` receives pointer and key events of
    /// clients with control.
    public init(hub: FrameHub, options: Options, throttle: VNCAuthThrottle, input: (any InputTarget)?, name: String,
                logger: Logger) throws(VNCError)
    {
        _ = quietVNC
        let passwords = VNCPasswords()
        let worker = Worker(hub: hub, passwords: passwords, throttle: throttle, input: input, options: options,
                            logger: logger)
        port = try worker.open(options: options, name: name)
        self.passwords = passwords
        self.worker = worker
        worker.loop.start { worker.run() }
    }

    deinit { worker.loop.stop() }

    /// Where the screen's peers are counted.
    var metrics: StreamMetrics { worker.hub.metrics }

    /// Disconnects every client, closes the port and waits for the screen's thread to end. Idempotent.
    public func close() {
        worker.loop.stop()
        worker.loop.join()
    }

    /// Authenticated clients connected now.
    public var clientCount: Int { worker.clients.load(ordering: .relaxed) }

    /// Clients connected now that have not authenticated yet (including those accepted and waiting their turn).
    public var unauthenticatedCount: Int { worker.unauthenticated.load(ordering: .relaxed) }

    /// True while the screen is subscribed to the session's frames (only with an authenticated client).
    public var isSubscribed: Bool { worker.subscribed.load(ordering: .relaxed) }

    /// Hands the screen a connection whose viewer viewportd authenticated (the noVNC relay's end of a socket pair):
    /// the screen sends it its RFB version and then reads its ClientInit, with no security handshake in between;
    /// its input reaches the browser when `control`. False when the screen is closed or `fd` is past select()'s
    /// limit; the caller keeps `fd` then, else the screen owns it.
    func attach(_ fd: Int32, control: Bool) -> Bool {
        guard fd < Worker.selectLimit else {
            worker.refusedDescriptor(Worker.relayAddress)
            return false
        }
        return worker.handed.withLock { handed in
            guard handed != nil else { return false }
            handed?.append((fd, control))
            return true
        }
    }
}

private let quietVNC: Void = {
    vpd_rfb_quiet()
    vpd_rfb_set_max_client_wait(3000)
}()

/// Random passwords for one screen. A VNC password is 8 characters (the DES key of the challenge response).
public final class VNCPasswords: Sendable {
    private struct Entry {
        var password: [CChar]
        var expiresAt: Date
        var control: Bool
    }

    private let entries = Mutex<[Entry]>([])
    private static let alphabet = Array("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")

    /// A new password valid until `expiresAt`; with `control`, its client's input reaches the browser.
    public func mint(control: Bool, expiresAt: Date) -> String {
        var generator = SystemRandomNumberGenerator()
        let password = String((0..<8).map { _ in Self.alphabet.randomElement(using: &generator)! })
        entries.withLock { entries in
            entries.removeAll { $0.expiresAt <= Date() }
            entries.append(Entry(password: Array(password.utf8CString), expiresAt: expiresAt, control: control))
        }
        return password
    }

    /// Whether the valid password that answers `challenge` with `response` grants control; nil when none does.
    func check(challenge: [UInt8], response: [UInt8], now: Date = Date()) -> Bool? {
        let valid = entries.withLock { entries in
            entries.removeAll { $0.expiresAt <= now }
            return entries
        }
        for entry in valid {
            var expected = challenge
            var password = entry.password
            vpd_rfb_encrypt(&expected, &password)
            // DES refused (libgcrypt in FIPS mode leaves the bytes as they were): never accept an echo.
            guard expected != challenge else { return nil }
            if expected == response { return entry.control }
        }
        return nil
    }
}

/// Slows down guessing: after 3 failed passwords in a row from one address, every password from it fails for
/// 1 s, then 2, 4, ... up to 60 s after each further failure. A success clears the address.
public final class VNCAuthThrottle: Sendable {
    private struct Record {
        var failures = 0
        var blockedUntil = Date.distantPast
    }

    private let records = Mutex<[String: Record]>([:])
    public init() {}

    /// False while `address` is blocked.
    public func allows(_ address: String, now: Date = Date()) -> Bool {
        records.withLock { ($0[address]?.blockedUntil ?? .distantPast) <= now }
    }

    func record(_ address: String, success: Bool, now: Date = Date()) {
        records.withLock { records in
            guard !success else {
                records[address] = nil
                return
            }
            var record = records[address] ?? Record()
            record.failures += 1
            if record.failures >= 3 {
                record.blockedUntil = now.addingTimeInterval(min(60, pow(2, Double(record.failures - 3))))
            }
            records[address] = record
            if records.count > 10_000 { records = records.filter { $0.value.blockedUntil > now } }
        }
    }
}

/// The screen and everything that touches it. `@unchecked Sendable`: after `open` the screen, the framebuffer
/// and the client states are used only on the bridge's thread (libvncserver calls the hooks from
/// `rfbProcessEvents` there); other threads only use `loop` and `handed` and read the counts.
private final class Worker: @unchecked Sendable {
    let hub: FrameHub
    let passwords: VNCPasswords
    let throttle: VNCAuthThrottle
    let input: (any InputTarget)?
    let options: VNCBridge.Options
    let logger: Logger
    /// Authenticated clients.
    let clients = Atomic(0)
    /// Clients not authenticated yet: in libvncserver's handshake, or accepted and queued.
    let unauthenticated = Atomic(0)
    let subscribed = Atomic(false)
    /// The screen's thread.
    let loop = LoopThread(name: "vnc-bridge")
    /// Connections of the relay handed over by `VNCBridge.attach`, for the screen's thread; nil once it closed.
    let handed = Mutex<[(fd: Int32, control: Bool)]?>([])
    private var listener: Int32 = -1
    /// A connection waiting to be handed to libvncserver. `control` is set for one of the relay, whose viewer is
    /// authenticated already.
    private struct Pending {
        let fd: Int32
        let address: String
        let since: Date
        var control: Bool?
    }
    /// Connections waiting to be handed to libvncserver, one per turn of the loop (each costs up to 100 ms there:
    /// libvncserver peeks for a WebSocket handshake before it greets a client).
    private var queue: [Pending] = []
    /// Unauthenticated clients (queued or in libvncserver) per address.
    private var pendingByAddress: [String: Int] = [:]
    /// The connection being handed to libvncserver, for `clientArrived`.
    private var admitting: Pending?
    private var nextSweep = Date.distantPast
    private let refusalLog = RateLimit(every: 1)
    private var screen: rfbScreenInfoPtr?
    private var framebuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var scratch = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var width = 0, height = 0
    private var subscription: FrameSubscription?
    private var decoder: JPEGDecoder?
    /// True once a frame is in the framebuffer.
    private var hasPicture = false
    /// Clients waiting for the first frame, until a deadline.
    private var held: [(client: rfbClientPtr, until: Date)] = []

    static let tile = 32
    /// True once a client of any screen has been sent its security types (see `run`).
    static let securityListSettled = Atomic(false)
    static let firstHandshake = Mutex(())
    /// FD_SETSIZE of glibc.
    static let selectLimit: Int32 = 1024
    /// The address of the relay's clients, in the logs and the counts.
    static let relayAddress = "noVNC relay"

    init(hub: FrameHub, passwords: VNCPasswords, throttle: VNCAuthThrottle, input: (any InputTarget)?,
         options: VNCBridge.Options, logger: Logger)
    {
        self.hub = hub
        self.passwords = passwords
        self.throttle = throttle
        self.input = input
        self.options = options
        self.logger = logger
    }

    deinit {
        framebuffer.deallocate()
        scratch.deallocate()
    }

    /// Creates the screen at the hub's latest frame size (1280×720 before any) and binds the first free port.
    ///
    /// The listening socket is the bridge's own: libvncserver listens on nothing (port 0) and only ever sees the
    /// client descriptors `acceptClients` hands it, all below FD_SETSIZE. So a listening descriptor past 1024 is
    /// harmless (it is polled, never FD_SET) and the screen opens even when the process has many descriptors open.
    func open(options: VNCBridge.Options, name: String) throws(VNCError) -> Int {
        let latest = hub.latest
        (width, height) = (latest?.width ?? 1280, latest?.height ?? 720)
        let host = inet_addr(options.host)
        guard host != INADDR_NONE else { throw VNCError("vnc.listen \(options.host) is not an IPv4 address") }
        guard let port = options.ports.first(where: { port in
            listener = vpd_listen_tcp4(host, Int32(port))
            return listener >= 0
        }) else {
            throw VNCError("no free port in vnc.port_range \(options.ports.lowerBound)-\(options.ports.upperBound) on \(options.host)")
        }
        guard let screen = rfbGetScreen(nil, nil, Int32(width), Int32(height), 8, 3, 4) else {
            Foundation.close(listener)
            throw VNCError("rfbGetScreen failed (out of memory?)")
        }
        framebuffer = .allocate(byteCount: width * height * 4, alignment: 64)
        framebuffer.initializeMemory(as: UInt8.self, repeating: 0)
        let s = screen
        s.pointee.frameBuffer = framebuffer.baseAddress!.assumingMemoryBound(to: CChar.self)
        s.pointee.port = 0  // no listening socket of libvncserver's own
        s.pointee.ipv6port = 0
        s.pointee.autoPort = vpd_rfb_false()
        s.pointee.httpPort = 0
        s.pointee.cursor = nil
        s.pointee.alwaysShared = vpd_rfb_true()
        s.pointee.desktopName = UnsafePointer(strdup(name))
        s.pointee.screenData = Unmanaged.passUnretained(self).toOpaque()
        // Any non-nil value turns VNC authentication on; passwordCheck decides.
        s.pointee.authPasswdData = UnsafeMutableRawPointer(s)
        s.pointee.passwordCheck = { cl, response, length in
            guard let cl, let response else { return vpd_rfb_false() }
            return Worker.of(cl).checkPassword(cl, UnsafeRawBufferPointer(start: response, count: Int(length)))
        }
        s.pointee.newClientHook = { cl in
            guard let cl else { return RFB_CLIENT_REFUSE }
            return Worker.of(cl).clientArrived(cl)
        }
        s.pointee.ptrAddEvent = { mask, x, y, cl in
            guard let cl else { return }
            Worker.of(cl).pointer(mask: Int(mask), x: Int(x), y: Int(y), cl)
        }
        s.pointee.kbdAddEvent = { down, keysym, cl in
            guard let cl else { return }
            Worker.of(cl).key(down: down != 0, keysym: UInt32(keysym), cl)
        }
        vpd_rfb_init_server(s)
        self.screen = s
        return port
    }

    static func of(_ cl: rfbClientPtr) -> Worker {
        Unmanaged<Worker>.fromOpaque(cl.pointee.screen.pointee.screenData).takeUnretainedValue()
    }

    func run() {
        while !loop.isStopping, let screen {
            acceptClients()
            takeHanded()
            admitOne(screen)
            if Self.securityListSettled.load(ordering: .acquiring) {
                rfbProcessEvents(screen, 10_000)
            } else {
                // libvncserver edits one process-wide list of security handlers while it sends a client its
                // security types; two screens doing it at once for the first time can corrupt the list. Until a
                // first client anywhere got that far (it reached the password check), screens take turns.
                Self.firstHandshake.withLock { _ in _ = rfbProcessEvents(screen, 1_000) }
            }
            refresh()
            releaseHeldClients()
            sweepHandshakes(screen)
        }
        subscription?.cancel()
        subscription = nil
        subscribed.store(false, ordering: .relaxed)
        let handedLast = handed.withLock { handed in
            defer { handed = nil }
            return handed ?? []
        }
        for entry in handedLast { Foundation.close(entry.fd) }
        for entry in queue { Foundation.close(entry.fd) }
        queue = []
        if listener >= 0 { Foundation.close(listener) }
        listener = -1
        if let screen {
            rfbShutdownServer(screen, vpd_rfb_true())
            free(UnsafeMutableRawPointer(mutating: screen.pointee.desktopName))
            rfbScreenCleanup(screen)
        }
        screen = nil
    }

    // MARK: - Clients

    /// Accepts what is waiting (at most 256 a turn) and decides at once: a descriptor past FD_SETSIZE, or one
    /// more unauthenticated client than its address or the screen may have, is closed; the others are queued.
    private func acceptClients() {
        var host = [CChar](repeating: 0, count: 64)
        for _ in 0..<256 {
            let fd = vpd_accept4(listener, &host)
            guard fd >= 0 else { return }
            let address = String(cString: host)
            guard fd < Self.selectLimit else {
                Foundation.close(fd)
                refusedDescriptor(address)
                continue
            }
            guard pendingByAddress[address, default: 0] < options.maxUnauthenticatedPerAddress,
                  unauthenticated.load(ordering: .relaxed) < options.maxUnauthenticated
            else {
                Foundation.close(fd)
                VNCBridge.Counters.refusedUnauthenticatedCount.add(1, ordering: .relaxed)
                hub.metrics.peerLimited(.vncClientUnauthenticated)
                logRefusal("VNC client refused: too many unauthenticated clients from its address or on the screen", address)
                continue
            }
            enqueue(Pending(fd: fd, address: address, since: Date()))
        }
    }

    /// Queues the relay's connections (they are not capped: their viewers are authenticated).
    private func takeHanded() {
        let taken = handed.withLock { handed in
            defer { if handed != nil { handed = [] } }
            return handed ?? []
        }
        for (fd, control) in taken {
            enqueue(Pending(fd: fd, address: Self.relayAddress, since: Date(), control: control))
        }
    }

    private func enqueue(_ pending: Pending) {
        pendingByAddress[pending.address, default: 0] += 1
        unauthenticated.add(1, ordering: .relaxed)
        queue.append(pending)
    }

    /// Counts (and logs, rate-limited) a client refused for a descriptor past FD_SETSIZE. Any thread.
    func refusedDescriptor(_ address: String) {
        VNCBridge.Counters.refusedDescriptorCount.add(1, ordering: .relaxed)
        hub.metrics.peerLimited(.vncClientDescriptors)
        logRefusal("VNC client refused: descriptor past select()'s limit of \(Self.selectLimit)", address)
    }

    /// At most one warning a second: a flood of refusals must not flood the log.
    private func logRefusal(_ message: Logger.Message, _ address: String) {
        guard refusalLog.allows() else { return }
        logger.warning(message, metadata: ["address": "\(address)"])
    }

    /// Hands the oldest queued connection to libvncserver.
    private func admitOne(_ screen: rfbScreenInfoPtr) {
        guard !queue.isEmpty else { return }
        let entry = queue.removeFirst()
        admitting = entry
        let cl = rfbNewClient(screen, entry.fd)
        if admitting != nil {
            // libvncserver gave up on it before calling newClientHook (it closed the descriptor).
            admitting = nil
            unauthenticatedLeft(entry.address)
        } else if let control = entry.control, let cl, let state = ClientState.of(cl) {
            // The relay answers its viewer's security handshake itself (see `vpd_rfb_client_skip_security`).
            vpd_rfb_client_skip_security(cl)
            cl.pointee.viewOnly = control ? vpd_rfb_false() : vpd_rfb_true()
            clientAuthenticated(cl, state)
            logger.info("noVNC client connected", metadata: ["control": "\(control)"])
        }
    }

    private func unauthenticatedLeft(_ address: String) {
        let left = pendingByAddress[address, default: 1] - 1
        pendingByAddress[address] = left > 0 ? left : nil
        unauthenticated.subtract(1, ordering: .relaxed)
    }

    /// Disconnects clients (and queued connections) that have not finished the handshake in time.
    private func sweepHandshakes(_ screen: rfbScreenInfoPtr) {
        let now = Date()
        guard now >= nextSweep else { return }
        nextSweep = now.addingTimeInterval(0.1)
        let deadline = now.addingTimeInterval(-options.handshakeTimeout)
        var timedOut: [String] = []
        queue.removeAll { entry in
            guard entry.since < deadline else { return false }
            Foundation.close(entry.fd)
            unauthenticatedLeft(entry.address)
            timedOut.append(entry.address)
            return true
        }
        let clients = rfbGetClientIterator(screen)
        while let cl = rfbClientIteratorNext(clients) {
            guard cl.pointee.sock != -1, vpd_rfb_client_is_normal(cl) == 0, let state = ClientState.of(cl),
                  state.since < deadline else { continue }
            timedOut.append(state.address)
            rfbCloseClient(cl)  // libvncserver lets it go (clientGoneHook) in its next rfbProcessEvents
        }
        rfbReleaseClientIterator(clients)
        guard !timedOut.isEmpty else { return }
        VNCBridge.Counters.handshakeTimeoutCount.add(timedOut.count, ordering: .relaxed)
        for _ in timedOut { hub.metrics.peerLimited(.vncClientHandshakeTimeout) }
        logger.notice("VNC clients disconnected: handshake not finished in \(options.handshakeTimeout) s",
                      metadata: ["count": "\(timedOut.count)", "address": "\(timedOut[0])"])
    }

    /// libvncserver took a connection of `admitOne` and sent it the server's version.
    private func clientArrived(_ cl: rfbClientPtr) -> rfbNewClientAction {
        guard let entry = admitting else { return RFB_CLIENT_REFUSE }  // not one of ours: never happens
        admitting = nil
        cl.pointee.clientData = Unmanaged.passRetained(ClientState(address: entry.address, since: entry.since)).toOpaque()
        cl.pointee.clientGoneHook = { cl in
            guard let cl, let data = cl.pointee.clientData else { return }
            cl.pointee.clientData = nil
            let state = Unmanaged<ClientState>.fromOpaque(data).takeRetainedValue()
            Worker.of(cl).clientLeft(state, cl)
        }
        return RFB_CLIENT_ACCEPT
    }

    /// The client authenticated: it counts as a client now and the screen follows the session's frames.
    private func clientAuthenticated(_ cl: rfbClientPtr, _ state: ClientState) {
        state.authenticated = true
        unauthenticatedLeft(state.address)
        if clients.add(1, ordering: .relaxed).newValue == 1 {
            subscription = hub.subscribe(kind: .vncBridge, capacity: 2) {}
            subscribed.store(true, ordering: .relaxed)
        }
        hub.metrics.vncClientsChanged(by: 1)
        // The hub hands a new subscriber its latest frame at once: show it before this client's ServerInit.
        refresh()
        if !hasPicture {
            // Nothing captured yet (the source starts when somebody watches): hold the client before its
            // ServerInit until the first frame, rather than showing it a black screen, for at most a few seconds.
            cl.pointee.onHold = vpd_rfb_true()
            held.append((cl, Date().addingTimeInterval(3)))
        }
    }

    private func releaseHeldClients() {
        guard !held.isEmpty else { return }
        let now = Date()
        held.removeAll { client, until in
            guard hasPicture || until <= now else { return false }
            client.pointee.onHold = vpd_rfb_false()
            return true
        }
    }

    private func clientLeft(_ state: ClientState, _ cl: rfbClientPtr) {
        held.removeAll { $0.client == cl }
        guard state.authenticated else {
            unauthenticatedLeft(state.address)
            return
        }
        hub.metrics.vncClientSent(bytes: Int(rfbStatGetSentBytes(cl)), rawBytes: Int(rfbStatGetSentBytesIfRaw(cl)),
                                  updates: Int(rfbStatGetMessageCountSent(cl, UInt32(rfbFramebufferUpdate))))
        hub.metrics.vncClientsChanged(by: -1)
        if clients.subtract(1, ordering: .relaxed).newValue == 0 {
            subscription?.cancel()
            subscription = nil
            subscribed.store(false, ordering: .relaxed)
        }
        logger.debug("VNC client left", metadata: ["address": "\(state.address)"])
    }

    /// Checks the client's challenge response. While its address is blocked for wrong passwords, every minted
    /// password fails too (the guess is wasted).
    private func checkPassword(_ cl: rfbClientPtr, _ response: UnsafeRawBufferPointer) -> rfbBool {
        Self.securityListSettled.store(true, ordering: .releasing)
        guard let state = ClientState.of(cl), !state.authenticated else { return vpd_rfb_false() }
        let address = state.address
        let challenge = withUnsafeBytes(of: cl.pointee.authChallenge) { Array($0) }
        let control = response.count == challenge.count ? passwords.check(challenge: challenge, response: Array(response)) : nil
        guard let control, throttle.allows(address) else {
            if control == nil { throttle.record(address, success: false) }
            logger.notice("VNC client refused: wrong or expired password, or too many wrong ones",
                          metadata: ["address": "\(address)"])
            return vpd_rfb_false()
        }
        throttle.record(address, success: true)
        cl.pointee.viewOnly = control ? vpd_rfb_false() : vpd_rfb_true()
        clientAuthenticated(cl, state)
        logger.info("VNC client connected", metadata: ["address": "\(address)", "control": "\(control)"])
        return vpd_rfb_true()
    }

    // MARK: - Input

    private func pointer(mask: Int, x: Int, y: Int, _ cl: rfbClientPtr) {
        guard cl.pointee.viewOnly == vpd_rfb_false(), let input, let state = ClientState.of(cl) else { return }
        let (px, py) = (Double(max(0, min(x, width - 1))), Double(max(0, min(y, height - 1))))
        let modifiers = state.modifiers
        let buttons: [(bit: Int, button: MouseInput.Button)] = [(1, .left), (2, .middle), (4, .right)]
        if (px, py) != (state.x, state.y) {
            let held = buttons.first { mask & $0.bit != 0 }?.button ?? .none
            input.deliver(.mouse(MouseInput(kind: .moved, x: px, y: py, button: held, modifiers: modifiers)))
        }
        for (bit, button) in buttons where (mask ^ state.mask) & bit != 0 {
            let pressed = mask & bit != 0
            let clicks = pressed ? state.clickCount(at: px, py) : state.clicks
            input.deliver(.mouse(MouseInput(kind: pressed ? .pressed : .released, x: px, y: py, button: button,
                                            clickCount: clicks, modifiers: modifiers)))
        }
        // Wheel: buttons 4 and 5 (up, down) and 6 and 7 (left, right) click once per notch.
        for (bit, dx, dy) in [(8, 0.0, -100.0), (16, 0, 100), (32, -100, 0), (64, 100, 0)]
        where mask & bit != 0 && state.mask & bit == 0 {
            input.deliver(.wheel(x: px, y: py, deltaX: dx, deltaY: dy))
        }
        (state.mask, state.x, state.y) = (mask, px, py)
    }

    private func key(down: Bool, keysym: UInt32, _ cl: rfbClientPtr) {
        guard cl.pointee.viewOnly == vpd_rfb_false(), let input, let state = ClientState.of(cl) else { return }
        if let bit = Keysym.modifier(keysym) {
            state.modifiers = down ? state.modifiers | bit : state.modifiers & ~bit
        }
        guard let event = Keysyms.key(keysym, down: down, modifiers: state.modifiers) else { return }
        input.deliver(.key(event))
    }

    // MARK: - Framebuffer

    /// Takes the newest queued frame, decodes it and marks the tiles that changed.
    private func refresh() {
        guard let subscription, let screen else { return }
        var newest: Frame?
        while let frame = subscription.next() { newest = frame }
        guard let frame = newest else { return }
        do {
            if let pixels = frame.pixels {
                // An RFB source's own pixels: copied as they are, no decoding.
                try show(frame.width, frame.height, on: screen) { $0.copyMemory(from: pixels.payload, byteCount: pixels.count) }
            } else {
                if decoder == nil { decoder = try JPEGDecoder() }
                guard let decoder else { return }
                let jpeg = frame.jpeg.bytes
                let header = try decoder.header(jpeg)
                try show(Int(header.width), Int(header.height), on: screen) { (target) throws(JPEGError) in
                    try decoder.decodePixels(jpeg, header, into: target.assumingMemoryBound(to: UInt8.self),
                                             pitch: header.width * 4, format: .rgbx)
                }
            }
        } catch {
            logger.warning("VNC bridge skipped a frame it cannot decode", metadata: ["error": "\(error)"])
        }
    }

    /// Puts a `w`×`h` picture on the screen: `fill` writes its RGBX pixels. At the screen's size they go to the
    /// scratch buffer and only the tiles that changed are copied and marked; at another size the screen is
    /// resized and the whole picture marked.
    private func show(_ w: Int, _ h: Int, on screen: rfbScreenInfoPtr,
                      _ fill: (UnsafeMutableRawPointer) throws(JPEGError) -> Void) throws(JPEGError) {
        if w != width || h != height {
            resize(screen, w, h)
            try fill(framebuffer.baseAddress!)
            rfbMarkRectAsModified(screen, 0, 0, Int32(w), Int32(h))
        } else {
            if scratch.count != framebuffer.count {
                scratch.deallocate()
                scratch = .allocate(byteCount: framebuffer.count, alignment: 64)
            }
            try fill(scratch.baseAddress!)
            markChangedTiles(screen)
        }
        hasPicture = true
    }

    /// Copies the tiles of `scratch` that differ from the framebuffer and marks them, merging runs of changed
    /// tiles on a row into one rectangle.
    private func markChangedTiles(_ screen: rfbScreenInfoPtr) {
        let pitch = width * 4, tile = Self.tile
        let old = framebuffer.baseAddress!, new = scratch.baseAddress!
        for top in stride(from: 0, to: height, by: tile) {
            let rows = min(tile, height - top)
            var runStart: Int?
            // One step past the last tile, so a run reaching the right edge is marked too.
            for left in stride(from: 0, to: width + tile, by: tile) {
                var changed = false
                if left < width {
                    let bytes = min(tile, width - left) * 4
                    for row in top..<(top + rows) where memcmp(old + row * pitch + left * 4, new + row * pitch + left * 4, bytes) != 0 {
                        changed = true
                        break
                    }
                    if changed {
                        for row in top..<(top + rows) {
                            memcpy(old + row * pitch + left * 4, new + row * pitch + left * 4, bytes)
                        }
                    }
                }
                if changed, runStart == nil { runStart = left }
                if !changed, let start = runStart {
                    rfbMarkRectAsModified(screen, Int32(start), Int32(top), Int32(min(left, width)), Int32(top + rows))
                    runStart = nil
                }
            }
        }
    }

    private func resize(_ screen: rfbScreenInfoPtr, _ w: Int, _ h: Int) {
        let fresh = UnsafeMutableRawBufferPointer.allocate(byteCount: w * h * 4, alignment: 64)
        fresh.initializeMemory(as: UInt8.self, repeating: 0)
        rfbNewFramebuffer(screen, fresh.baseAddress!.assumingMemoryBound(to: CChar.self), Int32(w), Int32(h), 8, 3, 4)
        framebuffer.deallocate()
        framebuffer = fresh
        (width, height) = (w, h)
    }
}

/// Per-client state: the address, the buttons and modifiers held, the last press (for double clicks).
private final class ClientState {
    let address: String
    /// When it connected (the handshake timeout counts from then).
    let since: Date
    var authenticated = false
    var mask = 0
    var x = -1.0, y = -1.0
    var modifiers = 0
    var clicks = 0
    private var lastPress = Date.distantPast
    private var lastPressAt = (x: -100.0, y: -100.0)

    init(address: String, since: Date) {
        self.address = address
        self.since = since
    }

    static func of(_ cl: rfbClientPtr) -> ClientState? {
        cl.pointee.clientData.map { Unmanaged<ClientState>.fromOpaque($0).takeUnretainedValue() }
    }

    /// 1, or one more than the last press's when this one comes within 0.5 s and 4 pixels of it (up to 3).
    func clickCount(at x: Double, _ y: Double) -> Int {
        let now = Date()
        let near = abs(x - lastPressAt.x) <= 4 && abs(y - lastPressAt.y) <= 4
        clicks = now.timeIntervalSince(lastPress) < 0.5 && near ? min(clicks + 1, 3) : 1
        (lastPress, lastPressAt) = (now, (x, y))
        return clicks
    }
}
