internal import CWebSockets
import Foundation
import Synchronization

/// One libwebsockets context served by one thread: the HTTP and WebSocket server and the WebSocket and HTTP
/// clients all live here.
///
/// Everything that touches lws runs on the service thread. Other threads hand work over with ``execute(_:)``,
/// which queues it and wakes the thread with `lws_cancel_service`.
///
/// `@unchecked Sendable`: mutable state is either confined to the service thread (connections, `server`
/// after ``start(server:)``) or guarded by a `Mutex`/`Atomic`.
public final class EventLoop: @unchecked Sendable {
    /// Bytes a payload needs in front of it for lws to write the WebSocket frame header (`LWS_PRE`).
    public static let requiredHeadroom = Int(vpd_lws_pre())

    /// How the loop listens.
    public struct Configuration: Sendable {
        /// IP address to listen on; `0.0.0.0` for every interface.
        public var host: String
        /// Port to listen on, 0 for one picked by the kernel, nil for no listener (clients only).
        public var port: Int?
        /// Names of non-standard request headers to capture (lower-case), e.g. `x-api-key`.
        public var customHeaders: [String]
        /// Larger request bodies are answered with 413.
        public var maxRequestBodyBytes: Int
        /// Connections from one address that have not had a request answered yet; more are closed at once.
        public var maxPendingPerAddress: Int
        /// Called (on the service thread) for each connection closed for that reason.
        public var onRefusedConnection: @Sendable (_ address: String) -> Void = { _ in }

        public init(host: String = "127.0.0.1", port: Int? = 0, customHeaders: [String] = [],
                    maxRequestBodyBytes: Int = 1 << 20, maxPendingPerAddress: Int = .max) {
            self.host = host
            self.port = port
            self.customHeaders = customHeaders
            self.maxRequestBodyBytes = maxRequestBodyBytes
            self.maxPendingPerAddress = maxPendingPerAddress
        }
    }

    let configuration: Configuration
    private var context: OpaquePointer?
    /// What lws holds as context user data: a weak way back to the loop, so callbacks fired while the loop is
    /// being deinitialised never retain it again.
    private let callbackTarget = CallbackTarget()
    private let protocols: UnsafeMutablePointer<lws_protocols>
    private let protocolName: UnsafeMutablePointer<CChar>
    private let binaryProtocolName: UnsafeMutablePointer<CChar>
    /// Work for the service thread, and whether the context can still be woken. `lws_cancel_service` is called only
    /// under this lock, so it never races with `lws_context_destroy`.
    private let pending = Mutex<(work: [@Sendable () -> Void], closed: Bool)>(([], false))
    private let serviceThreadID = Atomic<UInt>(0)
    private let finished = DispatchSemaphore(value: 0)
    private var started = false
    /// Set before the service thread starts; read only on it.
    private(set) var server: (any HTTPServerDelegate)?
    /// The port the server listens on (the kernel's pick when configured with 0), or nil without a listener.
    public private(set) var port: Int?
    /// Accepted connections without an answered request yet, by peer address (service thread only).
    private var pendingByAddress: [String: Int] = [:]


    /// Creates the context and, when a port is configured, binds the listener.
    public init(_ configuration: Configuration) throws {
        self.configuration = configuration
        vpd_lws_quiet_logs()
        protocolName = strdup("viewportd")
        binaryProtocolName = strdup("binary")
        // Two names for one handler: "viewportd" (the default, when a client asks for none) and "binary", the
        // subprotocol noVNC asks for; lws answers with the one requested.
        protocols = .allocate(capacity: 3)
        protocols.initialize(repeating: lws_protocols(), count: 3)
        for (index, name) in [protocolName, binaryProtocolName].enumerated() {
            protocols[index].name = UnsafePointer(name)
            protocols[index].callback = { wsi, reason, user, input, length in
                EventLoop.dispatch(wsi, reason, user, input, length)
            }
            protocols[index].rx_buffer_size = 64 * 1024
            // lws sends at most this much per send(); a whole frame in one call spares a poll round per viewer.
            protocols[index].tx_packet_size = 1 << 20
        }

        var info = lws_context_creation_info()
        info.protocols = UnsafePointer(protocols)
        info.port = Int32(configuration.port ?? -1)  // CONTEXT_PORT_NO_LISTEN is -1
        info.max_http_header_data = 8192
        info.pt_serv_buf_size = 256 * 1024  // bytes read per recv(): a 100 kB screencast frame in one call
        info.timeout_secs = 20
        info.connect_timeout_secs = 5
        info.ka_time = 60
        info.ka_probes = 3
        info.ka_interval = 10
        info.options = UInt64(LWS_SERVER_OPTION_DISABLE_IPV6)
            | UInt64(LWS_SERVER_OPTION_VALIDATE_UTF8)
        let host = configuration.host == "0.0.0.0" ? nil : strdup(configuration.host)
        defer { free(host) }
        info.iface = UnsafePointer(host)
        info.user = Unmanaged.passUnretained(callbackTarget).toOpaque()
        guard let context = lws_create_context(&info) else {
            // deinit still runs for a fully initialised object that throws: it frees the protocols.
            throw NetworkError(
                "cannot listen on \(configuration.host):\(configuration.port.map(String.init) ?? "-") (address in use or not local)")
        }
        self.context = context
        callbackTarget.loop = self
        if configuration.port != nil, let vhost = lws_get_vhost_by_name(context, "default") {
            port = Int(lws_get_vhost_listen_port(vhost))
        }
    }

    deinit {
        if let context { lws_context_destroy(context) }
        protocols.deallocate()
        free(protocolName)
        free(binaryProtocolName)
    }

    /// Starts the service thread; `server` answers HTTP requests and WebSocket upgrades.
    public func start(server: (any HTTPServerDelegate)?) {
        precondition(!started, "EventLoop.start called twice")
        started = true
        self.server = server
        let thread = Thread { [self] in
            serviceThreadID.store(UInt(pthread_self()), ordering: .releasing)
            while !isShutDown {
                if lws_service(context, 0) < 0 { break }
            }
            finished.signal()
        }
        thread.name = "lws-service"
        thread.start()
    }

    /// Stops the service thread and destroys the context, closing every connection. Idempotent. Work queued
    /// before the call runs first; work queued later is refused (``enqueue(_:)`` returns false).
    public func shutdown() {
        guard let context else { return }
        pending.withLock { state in
            state.closed = true
            lws_cancel_service(context)
        }
        if started { finished.wait() }
        // Callbacks fired while destroying run on this thread, which owns the loop until the context is gone.
        serviceThreadID.store(UInt(pthread_self()), ordering: .releasing)
        runPending()
        lws_context_destroy(context)
        self.context = nil
        serviceThreadID.store(0, ordering: .releasing)
    }

    /// True once ``shutdown()`` has begun.
    private var isShutDown: Bool { pending.withLock { $0.closed } }

    /// True on the service thread.
    public var inLoop: Bool { serviceThreadID.load(ordering: .acquiring) == UInt(pthread_self()) }

    /// Runs `work` on the service thread: at once when called there, else queued. False when the loop is shut
    /// down and `work` will never run.
    @discardableResult
    public func execute(_ work: @escaping @Sendable () -> Void) -> Bool {
        if inLoop { work(); return true }
        return enqueue(work)
    }

    /// Queues `work` for the service thread, even when called on it (it then runs after the current callback).
    /// False when the loop is shut down and `work` will never run.
    @discardableResult
    public func enqueue(_ work: @escaping @Sendable () -> Void) -> Bool {
        pending.withLock { state in
            guard !state.closed, let context else { return false }
            state.work.append(work)
            lws_cancel_service(context)
            return true
        }
    }

    /// Runs `work` on the service thread after `delay` seconds.
    public func schedule(after delay: Double, _ work: @escaping @Sendable () -> Void) {
        DispatchQueue.global().asyncAfter(deadline: .now() + delay) { [weak self] in self?.enqueue(work) }
    }

    private func runPending() {
        let work = pending.withLock { state -> [@Sendable () -> Void] in
            defer { state.work.removeAll(keepingCapacity: true) }
            return state.work
        }
        for item in work { item() }
    }

    // MARK: - Callback dispatch

    private static func dispatch(_ wsi: OpaquePointer?, _ reason: lws_callback_reasons,
                                 _ user: UnsafeMutableRawPointer?, _ input: UnsafeMutableRawPointer?,
                                 _ length: Int) -> Int32
    {
        if reason == LWS_CALLBACK_WSI_DESTROY, let wsi, let raw = lws_get_opaque_user_data(wsi) {
            lws_set_opaque_user_data(wsi, nil)
            Unmanaged<Connection>.fromOpaque(raw).takeRetainedValue().destroyed()
            return 0
        }
        guard let wsi, let ctx = lws_get_context(wsi), let raw = lws_context_user(ctx),
              let loop = Unmanaged<CallbackTarget>.fromOpaque(raw).takeUnretainedValue().loop
        else { return lws_callback_http_dummy(wsi, reason, user, input, length) }
        return loop.handle(wsi, reason, user, input, length)
    }

    private func handle(_ wsi: OpaquePointer, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
                        _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32
    {
        switch reason {
        case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
            runPending()
            return 0
        default:
            break
        }
        if let raw = lws_get_opaque_user_data(wsi) {
            let connection = Unmanaged<Connection>.fromOpaque(raw).takeUnretainedValue()
            connection.wsi = wsi
            return connection.handle(reason, user, input, length)
        }
        if reason == LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED {
            var name = [CChar](repeating: 0, count: 64)
            let address = lws_get_peer_simple(wsi, &name, name.count).map { String(cString: $0) } ?? "?"
            guard pendingByAddress[address, default: 0] < configuration.maxPendingPerAddress else {
                configuration.onRefusedConnection(address)
                return -1  // lws closes the accepted socket at once
            }
            let connection = ServerConnection(loop: self, wsi: wsi)
            lws_set_opaque_user_data(wsi, Unmanaged.passRetained(connection).toOpaque())
            pendingByAddress[address, default: 0] += 1
            connection.pendingAddress = address
            return 0
        }
        if reason == LWS_CALLBACK_HTTP || reason == LWS_CALLBACK_HTTP_CONFIRM_UPGRADE {
            let connection = ServerConnection(loop: self, wsi: wsi)
            lws_set_opaque_user_data(wsi, Unmanaged.passRetained(connection).toOpaque())
            return connection.handle(reason, user, input, length)
        }
        return lws_callback_http_dummy(wsi, reason, user, input, length)
    }

    /// A connection of `address` had its first request answered, or closed: it is no longer pending.
    func released(pendingFrom address: String) {
        guard let count = pendingByAddress[address] else { return }
        pendingByAddress[address] = count > 1 ? count - 1 : nil
    }

    // MARK: - Clients

    /// Opens a client connection on the service thread; `connection` receives its callbacks.
    func connect(_ connection: Connection, to endpoint: Endpoint, method: String?) {
        let queued = execute { [self] in
            guard let context, !isShutDown else {
                connection.connectFailed("event loop is shut down")
                return
            }
            var info = lws_client_connect_info()
            let address = strdup(endpoint.connectAddress ?? endpoint.host), path = strdup(endpoint.path), host = strdup(endpoint.hostHeader)
            let methodC = method.map { strdup($0) } ?? nil
            defer { free(address); free(path); free(host); free(methodC) }
            info.context = context
            info.address = UnsafePointer(address)
            info.port = Int32(endpoint.port)
            info.path = UnsafePointer(path)
            info.host = UnsafePointer(host)
            info.method = UnsafePointer(methodC)
            // A redirect would take the request to an address nobody checked (the daemon's network policy).
            info.ssl_connection |= Int32(LCCSCF_HTTP_NO_FOLLOW_REDIRECT.rawValue)
            info.local_protocol_name = UnsafePointer(protocolName)
            let retained = Unmanaged.passRetained(connection).toOpaque()
            info.opaque_user_data = retained
            if lws_client_connect_via_info(&info) == nil {
                // Either lws destroyed the wsi it made (and released the connection on WSI_DESTROY) or it never
                // made one; release it in the second case only.
                if !connection.isDestroyed { Unmanaged<Connection>.fromOpaque(retained).release() }
                connection.connectFailed("cannot connect to \(endpoint.hostHeader)")
            }
        }
        if !queued { connection.connectFailed("event loop is shut down") }
    }
}

private final class CallbackTarget: @unchecked Sendable {
    weak var loop: EventLoop?
}

/// lws state of one wsi. Lives as the wsi's opaque user data: retained when attached, released on
/// `LWS_CALLBACK_WSI_DESTROY`.
///
/// `@unchecked Sendable`: used only on the service thread; other threads reach it through `EventLoop.execute`.
class Connection: @unchecked Sendable {
    /// Strong: a request's task may outlive every other reference to the loop. The context holds the connection
    /// only until the wsi is destroyed, at the latest in `shutdown()`.
    let loop: EventLoop
    var wsi: OpaquePointer?
    private(set) var isDestroyed = false

    init(loop: EventLoop, wsi: OpaquePointer?) {
        self.loop = loop
        self.wsi = wsi
    }

    func handle(_ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?, _ input: UnsafeMutableRawPointer?,
                _ length: Int) -> Int32
    {
        lws_callback_http_dummy(wsi, reason, user, input, length)
    }

    /// The wsi is gone; never touch it again.
    func destroyed() {
        isDestroyed = true
        wsi = nil
    }

    /// A client connection could not even start.
    func connectFailed(_ reason: String) {}
}
