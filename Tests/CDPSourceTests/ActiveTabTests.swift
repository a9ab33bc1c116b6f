import Foundation
import Logging
import Synchronization
import Testing
import ViewportCore
import WebSocketIO
@testable import CDPSource

/// A scripted browser with three tabs (one page each) on its own event loop. A running screencast sends a frame
/// every 50 ms, starting `firstFrameDelay` after `Page.startScreencast` (a real browser's first-frame latency).
private final class ScriptedBrowser: HTTPServerDelegate, @unchecked Sendable {
    let loop: EventLoop
    let firstFrameDelay: Double
    // Service thread only.
    private var active = "tab-1"
    private var screencasts: [String: Date] = [:]
    private var connection: (WebSocket, Connection)?
    private var ticking = true

    static let jpeg = Data([0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x30, 0x00, 0x40, 0x03, 0x01, 0x22, 0x00,
                            0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xFF, 0xD9]).base64EncodedString()

    init(firstFrameDelay: Double = 0.6) throws {
        self.firstFrameDelay = firstFrameDelay
        loop = try EventLoop(.init(host: "127.0.0.1", port: 0))
        loop.start(server: self)
        Thread { [weak self] in
            while let self, self.ticking {
                usleep(50_000)
                self.loop.execute { self.tick() }
            }
        }.start()
    }

    var address: String { "http://127.0.0.1:\(loop.port ?? 0)" }

    func stop() {
        loop.execute { self.ticking = false }
        loop.shutdown()
    }

    func activate(_ tab: String) { onLoop { self.active = tab } }
    var runningScreencasts: [String] { onLoop { self.screencasts.keys.sorted() } }

    private func onLoop<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
        let result = Mutex<T?>(nil)
        let done = DispatchSemaphore(value: 0)
        loop.execute {
            let value = body()
            result.withLock { $0 = value }
            done.signal()
        }
        done.wait()
        return result.withLock { $0! }
    }

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        .json(200, ["webSocketDebuggerUrl": "ws://127.0.0.1:\(loop.port ?? 0)/devtools/browser/scripted"])
    }

    func upgrade(_ request: HTTPRequest) -> WebSocketUpgrade { .accept(Connection(browser: self), maxMessageBytes: 1 << 20) }

    private func tick() {
        guard let (socket, connection) = connection else { return }
        for (page, started) in screencasts where Date().timeIntervalSince(started) >= firstFrameDelay {
            connection.send(socket, ["method": "Page.screencastFrame", "sessionId": page, "params": [
                "data": Self.jpeg, "sessionId": 1, "metadata": ["timestamp": Date().timeIntervalSince1970]]])
        }
    }

    private var tabs: [[String: Any]] {
        (1...3).map { ["targetId": "tab-\($0)", "type": "tab", "url": "", "embedderData": ["tabActive": active == "tab-\($0)"]] }
    }

    final class Connection: WebSocketDelegate {
        unowned let browser: ScriptedBrowser
        private var outbox: [OutboundMessage] = []
        init(browser: ScriptedBrowser) { self.browser = browser }

        func webSocketDidOpen(_ socket: WebSocket) { browser.connection = (socket, self) }

        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            guard let object = try? JSONSerialization.jsonObject(with: message.data) as? [String: Any],
                  let id = object["id"] as? Int, let method = object["method"] as? String else { return }
            let session = object["sessionId"] as? String ?? ""
            let params = object["params"] as? [String: Any] ?? [:]
            var result: [String: Any] = [:]
            var events: [[String: Any]] = []
            switch method {
            case "Target.setDiscoverTargets":
                events = browser.tabs.map { ["method": "Target.targetCreated", "params": ["targetInfo": $0]] }
            case "Target.getTargets":
                result = ["targetInfos": browser.tabs]
            case "Target.attachToTarget":
                result = ["sessionId": "tab-session-" + (params["targetId"] as? String ?? "")]
            case "Target.setAutoAttach":
                let n = session.suffix(1)
                events = [["method": "Target.attachedToTarget", "sessionId": session, "params": [
                    "sessionId": "page-\(n)", "targetInfo": ["targetId": "p\(n)", "type": "page", "url": "https://tab\(n).test/"]]]]
            case "Page.startScreencast":
                browser.screencasts[session] = Date()
            case "Page.stopScreencast":
                browser.screencasts[session] = nil
            default:
                break
            }
            send(socket, ["id": id, "result": result])
            for event in events { send(socket, event) }
        }

        func send(_ socket: WebSocket, _ object: [String: Any]) {
            outbox.append(.text(Payload(copying: try! JSONSerialization.data(withJSONObject: object, options: .withoutEscapingSlashes))))
            socket.requestWrite()
        }

        func nextMessage(for socket: WebSocket) -> OutboundMessage? { outbox.isEmpty ? nil : outbox.removeFirst() }
        func hasMessages(for socket: WebSocket) -> Bool { !outbox.isEmpty }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {}
    }
}

/// The real CDP source attached to a scripted browser, with a consumer recording the URL of each frame.
private final class Harness: @unchecked Sendable {
    let browser: ScriptedBrowser
    let loop: EventLoop
    let hub = FrameHub()
    let source: CDPSource
    private let urls = Mutex<[String]>([])
    private let subscription = Mutex<FrameSubscription?>(nil)

    init() throws {
        browser = try ScriptedBrowser()
        loop = try EventLoop(.init(port: nil))
        loop.start(server: nil)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        source = CDPSource(address: browser.address, hub: hub, loop: loop, options: .init(), logger: logger) { _ in }
        source.start()
    }

    func watch() {
        let subscription = hub.subscribe(kind: .viewer, capacity: 1000) { [weak self] in self?.drain() }
        self.subscription.withLock { $0 = subscription }
        drain()
    }

    private func drain() {
        subscription.withLock { subscription in
            while let frame = subscription?.next() { urls.withLock { $0.append(frame.url ?? "") } }
        }
    }

    func leave() { subscription.withLock { $0?.cancel() } }

    /// Frame URLs published since the last call.
    func takeURLs() -> [String] {
        urls.withLock { urls in
            defer { urls.removeAll() }
            return urls
        }
    }

    func stop() {
        source.stop()
        Thread.sleep(forTimeInterval: 0.2)
        loop.shutdown()
        browser.stop()
    }
}

/// Polls `condition` for up to `timeout` seconds (the machine may be busy with other suites).
private func waitUntil(timeout: Double = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: 0.05)
    }
    return false
}

@Suite("Following the active tab", .serialized)
struct ActiveTabTests {
    @Test func nothingIsCapturedWhileNobodyWatches() throws {
        let harness = try Harness()
        defer { harness.stop() }
        Thread.sleep(forTimeInterval: 1)
        #expect(harness.browser.runningScreencasts.isEmpty)
        harness.watch()
        #expect(waitUntil { harness.browser.runningScreencasts == ["page-1"] })
        var urls: [String] = []
        #expect(waitUntil { urls += harness.takeURLs(); return urls.contains("https://tab1.test/") })
        harness.leave()
        #expect(waitUntil { harness.browser.runningScreencasts.isEmpty }, "the screencast stops with the last consumer")
    }

    @Test func aSwitchOvertakenByAnotherLeavesNoScreencastBehind() throws {
        let harness = try Harness()
        defer { harness.stop() }
        harness.watch()
        Thread.sleep(forTimeInterval: 1.5)
        harness.browser.activate("tab-2")
        Thread.sleep(forTimeInterval: 0.35)  // before tab 2's first frame
        harness.browser.activate("tab-3")
        #expect(waitUntil { harness.takeURLs().last == "https://tab3.test/" })
        Thread.sleep(forTimeInterval: 1)  // long enough for tab 2's screencast to have started, had it been left on
        #expect(harness.browser.runningScreencasts == ["page-3"])
        harness.leave()
        #expect(waitUntil { harness.browser.runningScreencasts.isEmpty })
    }

    @Test func goingBackBeforeTheSwitchCompletesShowsNoFrameOfTheOtherTab() throws {
        let harness = try Harness()
        defer { harness.stop() }
        harness.watch()
        Thread.sleep(forTimeInterval: 1.5)
        harness.browser.activate("tab-2")
        Thread.sleep(forTimeInterval: 0.35)
        harness.browser.activate("tab-1")
        Thread.sleep(forTimeInterval: 0.3)  // one poll: tab 1 is known to be active again
        _ = harness.takeURLs()
        Thread.sleep(forTimeInterval: 1.5)  // tab 2's first frame would arrive in this window
        let after = harness.takeURLs()
        #expect(!after.isEmpty && after.allSatisfy { $0 == "https://tab1.test/" }, "\(Set(after))")
        #expect(harness.browser.runningScreencasts == ["page-1"])
    }
}
