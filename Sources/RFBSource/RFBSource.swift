import CVNCClient
import Foundation
import JPEGCodec
public import Logging
public import ViewportCore
import Synchronization

/// Frames of a VNC server (a headed browser on Xvnc or x11vnc), through libvncclient.
///
/// The client runs on a thread of its own: it waits for server messages and applies them to its framebuffer.
/// The framebuffer is complete once the updated areas have covered the whole screen (Xvnc's first update carries
/// no pixels); after that, each finished update becomes a frame, at most `maxFPS` a second (a frame held back is
/// published when its turn comes, so the last picture always goes out). A frame is encoded to JPEG once, and only
/// while the hub has consumers. Input goes back to the server as pointer and key events. A lost connection is
/// retried with backoff for `retryWindow` seconds; a wrong password fails the session at once.
public final class RFBSource: FrameSource, Sendable {
    public struct Options: Sendable {
        public var maxFPS = 30
        /// JPEG quality of the frames, 1-100.
        public var quality = 75
        /// Seconds a lost connection is retried before the source fails.
        public var retryWindow: Double = 30
        /// Largest screen accepted; a server announcing a larger one is refused before anything is allocated.
        public var maxWidth = 4096
        public var maxHeight = 4096
        /// Seconds for connecting, for the whole handshake, and for any one read.
        public var timeout = 10
        /// Maps the server's host to the address to connect to, or throws when it may not be reached (the daemon's
        /// network policy). Called on the source's thread before each connection.
        public var resolveHost: @Sendable (String) throws -> String = { $0 }
        public init() {}
    }

    private let worker: Worker

    /// `address` is `host:port`.
    public init(address: String, password: String?, hub: FrameHub, options: Options, logger: Logger,
                onStateChange: @escaping @Sendable (SourceState) -> Void)
    {
        worker = Worker(address: address, password: password, hub: hub, options: options, logger: logger,
                        onStateChange: onStateChange)
    }

    /// Checks that `address` is `host:port` with a port from 1 to 65535.
    public static func validate(address: String) throws(RFBError) {
        guard let (host, port) = split(address), !host.isEmpty, (1...65535).contains(port) else {
            throw RFBError("vnc_address must be host:port, e.g. 127.0.0.1:5901")
        }
    }

    static func split(_ address: String) -> (String, Int)? {
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else { return nil }
        return (String(address[..<colon]), port)
    }

    public func start() {
        let worker = worker
        worker.loop.start(interrupt: { worker.interrupt() }) { worker.run() }
    }

    /// Stops the source; its thread ends promptly, even in the middle of a read (its socket is shut down).
    public func stop() { worker.loop.stop() }

    public func deliver(_ input: RemoteInput) { worker.inbox.withLock { $0.append(input) } }
}

/// An RFB source failure.
public struct RFBError: Error, CustomStringConvertible {
    public let description: String
    /// Retrying cannot help (the address is not allowed, the screen is too large).
    let permanent: Bool
    init(_ description: String, permanent: Bool = false) {
        self.description = description
        self.permanent = permanent
    }
}

/// The client thread's state. `@unchecked Sendable`: everything but `loop`, `inbox` and `interruptible` (all
/// synchronised) is used only on the client thread.
private final class Worker: @unchecked Sendable {
    let address: String
    let password: String?
    let hub: FrameHub
    let options: RFBSource.Options
    let logger: Logger
    let onStateChange: @Sendable (SourceState) -> Void
    let loop = LoopThread(name: "rfb-source")
    let inbox = Mutex<[RemoteInput]>([])
    /// A second descriptor of the connection's socket, so another thread can shut the socket down (which ends any
    /// read or wait on it) without racing libvncclient closing its own descriptor. -1 while not connected.
    private let interruptible = Mutex<Int32>(-1)
    /// Set when the server announced a screen larger than the options allow (the failure is not retried).
    fileprivate var oversized: (width: Int, height: Int)?

    private var client: UnsafeMutablePointer<rfbClient>?
    private var covered: [Bool] = []  // 64×64 cells of the screen an update has touched
    private var complete = false
    private var dirty = false
    private var lastPublish = DispatchTime(uptimeNanoseconds: 0)
    private var encoder: JPEGEncoder?
    private var buttons: Int32 = 0
    private var pointer = (x: Int32(0), y: Int32(0))
    private var state = SourceState.connecting
    /// Set when the server asked for the password during the current connection attempt.
    fileprivate var passwordAsked = false
    /// The framebuffer size the coverage was counted for.
    private var size = (width: 0, height: 0)

    init(address: String, password: String?, hub: FrameHub, options: RFBSource.Options, logger: Logger,
         onStateChange: @escaping @Sendable (SourceState) -> Void)
    {
        (self.address, self.password, self.hub, self.options, self.logger, self.onStateChange) =
            (address, password, hub, options, logger, onStateChange)
    }

    func run() {
        vpd_rfbclient_quiet()
        var lostSince: Date?
        var attempt = 0
        while !loop.isStopping {
            switch connect() {
            case .success:
                lostSince = nil
                attempt = 0
                report(.connected)
                serve()
                disconnect()
                guard !loop.isStopping else { return }
                lostSince = Date()
                hub.setStatus(.reconnecting)
                report(.reconnecting(reason: "connection to the VNC server lost"))
            case .failure(let error) where error.permanent || error.description.contains("authentication"):
                report(.failed(reason: error.description))
                return
            case .failure(let error):
                let since = lostSince ?? Date()
                lostSince = since
                guard Date().timeIntervalSince(since) < options.retryWindow else {
                    report(.failed(reason: "VNC server unreachable for \(Int(options.retryWindow)) s: \(error)"))
                    return
                }
                if state != .connecting { report(.reconnecting(reason: error.description)) }
            }
            attempt += 1
            let delay = min(5, 0.25 * pow(2, Double(min(attempt, 5))))
            let deadline = DispatchTime.now() + delay
            while DispatchTime.now() < deadline, !loop.isStopping { loop.wait(until: deadline) }
        }
    }

    private func report(_ new: SourceState) {
        guard new != state, !loop.isStopping else { return }
        state = new
        if new == .connected { hub.setStatus(.live) }
        onStateChange(new)
    }

    // MARK: - Connection

    /// Shuts the connection's socket down from any thread.
    func interrupt() {
        interruptible.withLock { fd in if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) } }
    }

    private func forgetSocket() {
        interruptible.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }

    private func connect() -> Result<Void, RFBError> {
        guard let (host, port) = RFBSource.split(address) else { return .failure(RFBError("bad address \(address)")) }
        let fd: Int32
        do {
            fd = try Self.open(try options.resolveHost(host), port: port, timeout: options.timeout)
        } catch let error as RFBError {
            return .failure(error)
        } catch {
            return .failure(RFBError("\(error)", permanent: true))  // the network policy said no
        }
        let copy = dup(fd)
        interruptible.withLock { $0 = copy }
        // The whole handshake gets one deadline, so a server that answers a byte at a time cannot hold the thread.
        let deadline = DispatchWorkItem { [weak self] in self?.interrupt() }
        DispatchQueue.global().asyncAfter(deadline: .now() + .seconds(options.timeout), execute: deadline)
        defer { deadline.cancel() }
        guard let client = rfbGetClient(8, 3, 4) else {
            close(fd)
            forgetSocket()
            return .failure(RFBError("cannot allocate a VNC client"))
        }
        // Connected here: libvncclient takes the socket as if it had accepted it (listenSpecified).
        client.pointee.sock = fd
        client.pointee.listenSpecified = vpd_rfbclient_true()
        client.pointee.readTimeout = UInt32(options.timeout)
        client.pointee.connectTimeout = UInt32(options.timeout)
        client.pointee.canHandleNewFBSize = 1
        oversized = nil
        client.pointee.MallocFrameBuffer = { client in
            guard let client else { return vpd_rfbclient_false() }
            return Worker.of(client).allocateFramebuffer(client) ? vpd_rfbclient_true() : vpd_rfbclient_false()
        }
        // Lossless from the server (Tight without JPEG): the frames' pixels are the screen's, and the only lossy
        // step is the viewers' JPEG. The server is usually on the same host, so bandwidth is not the concern.
        client.pointee.appData.enableJPEG = 0
        rfbClientSetClientData(client, vpd_rfbclient_tag(), Unmanaged.passUnretained(self).toOpaque())
        client.pointee.GetPassword = { client in
            guard let client else { return nil }
            let worker = Worker.of(client)
            worker.passwordAsked = true
            // libvncclient frees what this returns.
            return strdup(worker.password ?? "")
        }
        client.pointee.GotFrameBufferUpdate = { client, x, y, w, h in
            guard let client else { return }
            Worker.of(client).updated(x: Int(x), y: Int(y), width: Int(w), height: Int(h))
        }
        client.pointee.FinishedFrameBufferUpdate = { client in
            guard let client else { return }
            Worker.of(client).finished()
        }
        _ = vpd_rfbclient_take_error()
        passwordAsked = false
        // On failure rfbInitClient frees the client itself (and closes its socket).
        guard rfbInitClient(client, nil, nil) != 0 else {
            forgetSocket()
            if let size = oversized {
                return .failure(RFBError("the VNC server's screen is \(size.width)x\(size.height), larger than vnc.source_max_width x vnc.source_max_height (\(options.maxWidth)x\(options.maxHeight))", permanent: true))
            }
            let reason = String(cString: vpd_rfbclient_take_error()).trimmingCharacters(in: .whitespacesAndNewlines)
            // The server asked for the password and then refused: TigerVNC says "Authentication failure",
            // libvncserver-based servers (x11vnc) "password check failed!".
            if passwordAsked || reason.lowercased().contains("auth") {
                return .failure(RFBError("VNC authentication failed (wrong vnc_password?): \(reason)"))
            }
            return .failure(RFBError(reason.isEmpty ? "cannot connect to \(address)" : reason))
        }
        self.client = client
        covered = []
        complete = false
        size = (0, 0)
        logger.info("attached to VNC server", metadata: ["vnc_address": "\(address)",
                                                          "size": "\(client.pointee.width)x\(client.pointee.height)"])
        return .success(())
    }

    private func disconnect() {
        guard let client else { return }
        let framebuffer = client.pointee.frameBuffer
        rfbClientCleanup(client)
        free(framebuffer)
        forgetSocket()
        self.client = nil
    }

    /// libvncclient's framebuffer allocation, with the size checked first: the size is the server's word.
    fileprivate func allocateFramebuffer(_ client: UnsafeMutablePointer<rfbClient>) -> Bool {
        free(client.pointee.frameBuffer)
        client.pointee.frameBuffer = nil
        let (w, h) = (Int(client.pointee.width), Int(client.pointee.height))
        guard w > 0, h > 0, w <= options.maxWidth, h <= options.maxHeight else {
            oversized = (w, h)
            hub.metrics.peerLimited(.vncServerScreenTooLarge)
            logger.warning("VNC server screen refused: too large", metadata: ["size": "\(w)x\(h)"])
            return false
        }
        let bytes = w * h * Int(client.pointee.format.bitsPerPixel) / 8
        guard let memory = calloc(1, max(bytes, 1)) else { return false }
        client.pointee.frameBuffer = memory.assumingMemoryBound(to: UInt8.self)
        return true
    }

    /// A connected, non-blocking TCP socket to `host` (an address literal) and `port`, within `timeout` seconds.
    /// libvncclient waits on it with select(): a descriptor past FD_SETSIZE would overflow its fd_set.
    private static func open(_ host: String, port: Int, timeout: Int) throws(RFBError) -> Int32 {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &list) == 0, let info = list else {
            throw RFBError("cannot resolve \(host)")
        }
        defer { freeaddrinfo(list) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RFBError("cannot create a socket: \(String(cString: strerror(errno)))") }
        guard fd < FD_SETSIZE else {
            close(fd)
            throw RFBError("too many open descriptors for a VNC connection")
        }
        if Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
            guard errno == EINPROGRESS else {
                close(fd)
                throw RFBError("cannot connect to the VNC server")
            }
            guard finishConnect(fd, within: Int32(timeout * 1000)) else {
                close(fd)
                throw RFBError("cannot connect to the VNC server within \(timeout) s")
            }
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        return fd
    }

    static func of(_ client: UnsafeMutablePointer<rfbClient>) -> Worker {
        Unmanaged<Worker>.fromOpaque(rfbClientGetClientData(client, vpd_rfbclient_tag())).takeUnretainedValue()
    }

    /// Handles server messages until the connection breaks or the source stops.
    private func serve() {
        guard let client else { return }
        let interval = UInt64(1_000_000_000 / max(1, options.maxFPS))
        while !loop.isStopping {
            let waiting = WaitForMessage(client, 20_000)
            if waiting < 0 { return }
            if waiting > 0, HandleRFBServerMessage(client) == 0 { return }
            sendInput(client)
            if dirty, complete, DispatchTime.now().uptimeNanoseconds >= lastPublish.uptimeNanoseconds + interval {
                publish(client)
            }
        }
    }

    // MARK: - Frames

    private func updated(x: Int, y: Int, width: Int, height: Int) {
        dirty = true
        guard let client else { return }
        let (w, h) = (Int(client.pointee.width), Int(client.pointee.height))
        // The rectangle is the server's word: only the part on the screen counts.
        guard x >= 0, y >= 0, x < w, y < h, width > 0, height > 0 else { return }
        if (w, h) != size {
            // A resize gave the client a fresh, uninitialised buffer: count coverage again before publishing it.
            size = (w, h)
            complete = false
            covered = []
        }
        guard !complete else { return }
        let columns = (w + 63) / 64, rows = (h + 63) / 64
        if covered.count != columns * rows { covered = Array(repeating: false, count: columns * rows) }
        guard width > 0, height > 0 else { return }
        for row in (y / 64)...min(rows - 1, (y + height - 1) / 64) {
            for column in (x / 64)...min(columns - 1, (x + width - 1) / 64) { covered[row * columns + column] = true }
        }
        complete = covered.allSatisfy { $0 }
    }

    private func finished() {
        guard let client, complete, dirty else { return }
        let interval = UInt64(1_000_000_000 / max(1, options.maxFPS))
        if DispatchTime.now().uptimeNanoseconds >= lastPublish.uptimeNanoseconds + interval { publish(client) }
    }

    /// Encodes the framebuffer once and publishes it, if anybody watches.
    private func publish(_ client: UnsafeMutablePointer<rfbClient>) {
        lastPublish = .now()
        guard hub.consumerCount > 0, let pixels = client.pointee.frameBuffer else { return }
        dirty = false
        let (w, h) = (Int(client.pointee.width), Int(client.pointee.height))
        do {
            if encoder == nil { encoder = try JPEGEncoder() }
            let jpeg = try encoder!.encode(pixels, width: w, height: h, pitch: w * 4, format: .rgbx, quality: options.quality)
            // The pixels too, for the VNC bridge and the recorder: they then show exactly what the server sent.
            let copy = FrameBytes(count: w * h * 4)
            copy.payload.copyMemory(from: pixels, byteCount: w * h * 4)
            hub.publish(jpeg: FrameBytes(copying: jpeg), width: w, height: h, captureTime: wallClockMicros(), url: nil,
                        pixels: copy)
        } catch {
            logger.warning("cannot encode a VNC frame", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Input

    private func sendInput(_ client: UnsafeMutablePointer<rfbClient>) {
        let pending = inbox.withLock { inbox in
            defer { inbox.removeAll() }
            return inbox
        }
        if !pending.isEmpty { hub.inputSent() }
        for input in pending {
            switch input {
            case .mouse(let mouse):
                pointer = (Int32(mouse.x.rounded()), Int32(mouse.y.rounded()))
                let bit: Int32 = ["left": 1, "middle": 2, "right": 4][mouse.button.rawValue] ?? 0
                switch mouse.kind {
                case .pressed: buttons |= bit
                case .released: buttons &= ~bit
                case .moved: break
                }
                SendPointerEvent(client, pointer.x, pointer.y, buttons)
            case .wheel(let x, let y, let dx, let dy):
                pointer = (Int32(x.rounded()), Int32(y.rounded()))
                let bit: Int32 = dy < 0 ? 8 : dy > 0 ? 16 : dx < 0 ? 32 : 64
                SendPointerEvent(client, pointer.x, pointer.y, buttons | bit)
                SendPointerEvent(client, pointer.x, pointer.y, buttons)
            case .key(let key):
                guard let keysym = Keysym.keysym(key.key) else { continue }
                if key.kind != .up { SendKeyEvent(client, keysym, vpd_rfbclient_true()) }
                if key.kind != .down { SendKeyEvent(client, keysym, vpd_rfbclient_false()) }
            case .paste(let text):
                // Typed, one key per character (line breaks as Enter, CR LF as one). RFB has no paste; long texts
                // are cut at 4096 characters (logged).
                let scalars = text.replacingOccurrences(of: "\r\n", with: "\n").unicodeScalars
                if scalars.count > 4096 { logger.notice("paste over RFB cut at 4096 characters", metadata: ["length": "\(scalars.count)"]) }
                for scalar in scalars.prefix(4096) {
                    guard let keysym = Keysym.keysym(String(scalar)) else { continue }
                    SendKeyEvent(client, keysym, vpd_rfbclient_true())
                    SendKeyEvent(client, keysym, vpd_rfbclient_false())
                }
            case .navigate:
                logger.notice("navigate needs a browser_address (CDP); a VNC-only session cannot load URLs")
            }
        }
    }
}
