import Foundation
import Logging
import Store
import Synchronization
import Testing
@testable import ViewportDaemon
import WebSocketIO

/// The signing secret of org_a in webhook tests; the receiver checks signatures with it.
let webhookTestSecret = "whsec-test-0123456789abcdef"

private let payload = WebhookPayload(
    runID: "run_1", browserSessionID: "pbs_1", status: "completed", failureReason: nil,
    recordingURL: "http://127.0.0.1:8200/v1/artifacts/rec.mp4?signature=abc",
    screenshotUrls: ["http://127.0.0.1:8200/v1/artifacts/1.jpg", "http://127.0.0.1:8200/v1/artifacts/2.jpg"],
    stepCount: 2, createdAt: Date(timeIntervalSince1970: 1_735_689_600), finishedAt: Date(timeIntervalSince1970: 1_735_689_660))

@Suite("Run-completion webhooks against a real HTTP receiver")
struct WebhookTests {
    @Test func aFailedDeliveryIsRetriedWithTheSameSignedBodyAndThenDelivered() async throws {
        let receiver = try Receiver(statuses: [500, 200])
        defer { receiver.stop() }
        let logs = LogCapture()
        try await withSender(backoff: 0.3, logger: logs.logger) { webhooks, store in
            try await webhooks.enqueue(runID: "run_1", organizationID: "org_a", url: receiver.url, payload: payload)
            try await eventually("delivered") { try await store.latestWebhookDelivery(runID: "run_1")?.status == .delivered }
            let delivery = try #require(try await store.latestWebhookDelivery(runID: "run_1"))
            #expect(delivery.attempts == 2)
            #expect(delivery.lastStatusCode == 200)
            #expect(delivery.lastError == nil)
            #expect(delivery.deliveredAt != nil)
        }
        let requests = try await receiver.requests()
        try #require(requests.count == 2)
        #expect(requests.map(\.body) == [requests[0].body, requests[0].body], "every attempt sends the same bytes")
        #expect(requests[1].at - requests[0].at >= 0.3, "the retry waits for the backoff")
        for request in requests {
            #expect(request.method == "POST")
            #expect(request.path == "/hooks/run")
            #expect(request.headers["content-type"] == "application/json")
            #expect(request.signatureValid, "x-viewportd-signature is sha256=<hex HMAC of timestamp.body>")
            let timestamp = try #require(request.headers["x-viewportd-timestamp"].flatMap { Double($0) })
            #expect(abs(timestamp - request.at) < 5, "the timestamp is the attempt's unix time")
        }
        let text = String(decoding: requests[0].body, as: UTF8.self)
        #expect(text.hasPrefix(#"{"browser_session_id":"pbs_1","created_at""#), "keys are sorted: \(text)")
        #expect(!text.contains(#"\/"#), "URLs are not escaped: \(text)")
        let body = try JSONDecoder().decode(JSON.self, from: requests[0].body)
        #expect(body["run_id"].string == "run_1")
        #expect(body["browser_session_id"].string == "pbs_1")
        #expect(body["status"].string == "completed")
        #expect(body["failure_reason"].isNull)
        #expect(body["recording_url"].string == payload.recordingURL)
        #expect(body["screenshot_urls"].array.compactMap(\.string) == payload.screenshotUrls)
        #expect(body["step_count"].int == 2)
        #expect(body["created_at"].string == "2025-01-01T00:00:00.000Z")
        #expect(body["finished_at"].string == "2025-01-01T00:01:00.000Z")
        let lines = logs.lines
        #expect(lines.count == 2, "one log line per attempt: \(lines)")
        #expect(lines.allSatisfy { $0.contains("run_1") && !$0.contains(webhookTestSecret) && !$0.contains("sha256=") }, "\(lines)")
    }

    @Test func aDeliveryLeftPendingIsSentByTheNextProcessOnTheSameDatabase() async throws {
        let receiver = try Receiver(statuses: [500, 200])
        defer { receiver.stop() }
        let database = temporaryDatabase()
        try await withSender(database: database, backoff: 1) { webhooks, store in
            try await webhooks.enqueue(runID: "run_1", organizationID: "org_a", url: receiver.url, payload: payload)
            try await eventually("the first attempt") { try await store.latestWebhookDelivery(runID: "run_1")?.attempts == 1 }
        }
        #expect(try await receiver.requests().count == 1)
        try await withSender(database: database, backoff: 1) { _, store in
            try await eventually("delivered after the restart") {
                try await store.latestWebhookDelivery(runID: "run_1")?.status == .delivered
            }
            #expect(try await store.latestWebhookDelivery(runID: "run_1")?.attempts == 2)
        }
        let requests = try await receiver.requests()
        #expect(requests.count == 2)
        #expect(requests.last?.body == requests.first?.body)
        #expect(requests.last?.signatureValid == true)
    }

    @Test func givingUpAfterMaxAttemptsMarksTheDeliveryFailed() async throws {
        let receiver = try Receiver(statuses: [500])
        defer { receiver.stop() }
        try await withSender(backoff: 0.05, { $0.webhooks.maxAttempts = 3 }) { webhooks, store in
            try await webhooks.enqueue(runID: "run_1", organizationID: "org_a", url: receiver.url, payload: payload)
            try await eventually("failed") { try await store.latestWebhookDelivery(runID: "run_1")?.status == .failed }
            try await Task.sleep(for: .milliseconds(500))
            let delivery = try #require(try await store.latestWebhookDelivery(runID: "run_1"))
            #expect(delivery.attempts == 3)
            #expect(delivery.lastStatusCode == 500)
            #expect(delivery.lastError == "HTTP 500")
            #expect(delivery.deliveredAt == nil)
        }
        #expect(try await receiver.requests().count == 3, "no attempt after the last one")
    }

    @Test func anUnreachableReceiverCountsAsAFailedAttempt() async throws {
        try await withSender(backoff: 0.05, { $0.webhooks.maxAttempts = 2 }) { webhooks, store in
            try await webhooks.enqueue(runID: "run_1", organizationID: "org_a", url: "http://127.0.0.1:1/hook", payload: payload)
            try await eventually("failed") { try await store.latestWebhookDelivery(runID: "run_1")?.status == .failed }
            let delivery = try #require(try await store.latestWebhookDelivery(runID: "run_1"))
            #expect(delivery.attempts == 2)
            #expect(delivery.lastStatusCode == nil)
            #expect(delivery.lastError?.isEmpty == false)
        }
    }

    @Test func resendSendsTheLatestBodyAgainAsANewDelivery() async throws {
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        try await withSender { webhooks, store in
            #expect(try await webhooks.resend(runID: "run_1") == false, "a run without a delivery has nothing to resend")
            try await webhooks.enqueue(runID: "run_1", organizationID: "org_a", url: receiver.url, payload: payload)
            try await eventually("delivered") { try await store.latestWebhookDelivery(runID: "run_1")?.status == .delivered }
            let first = try #require(try await store.latestWebhookDelivery(runID: "run_1"))
            #expect(try await webhooks.resend(runID: "run_1"))
            try await eventually("resent") { try await receiver.requests().count == 2 }
            try await eventually("delivered again") {
                let latest = try await store.latestWebhookDelivery(runID: "run_1")
                return latest?.id != first.id && latest?.status == .delivered
            }
            #expect(try await store.latestWebhookDelivery(runID: "run_1")?.attempts == 1)
        }
        let requests = try await receiver.requests()
        #expect(requests.count == 2)
        #expect(requests[1].body == requests[0].body)
        #expect(requests[1].signatureValid)
    }

    @Test func aDeliveryForAnOrganizationWithoutASecretFailsUnsentUntilOneIsConfigured() async throws {
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        try await withSender { webhooks, store in
            try await webhooks.enqueue(runID: "run_b", organizationID: "org_b", url: receiver.url, payload: payload)
            try await eventually("failed") { try await store.latestWebhookDelivery(runID: "run_b")?.status == .failed }
            let delivery = try #require(try await store.latestWebhookDelivery(runID: "run_b"))
            #expect(delivery.lastError == "no webhook secret configured for organization org_b")
            #expect(delivery.attempts == 0)
            #expect(try await receiver.requests().isEmpty)

            webhooks.setSecrets(["org_b": webhookTestSecret])
            #expect(try await webhooks.resend(runID: "run_b"))
            try await eventually("delivered") { try await store.latestWebhookDelivery(runID: "run_b")?.status == .delivered }
        }
        let requests = try await receiver.requests()
        #expect(requests.count == 1)
        #expect(requests.first?.signatureValid == true)
    }
}

private func temporaryDatabase() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-webhooks-\(UUID().uuidString).sqlite").path
}

extension WebhookTests {
    @Test func aWebhookToALoopbackAddressIsNotSentUnlessTheOperatorListsIt() async throws {
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        try await withSender({ $0.network.webhookAllow = [] }) { webhooks, store in
            await #expect(throws: WebhookError.self) { try await webhooks.checkReachable(url: receiver.url) }
            try await webhooks.enqueue(runID: "run_ssrf", organizationID: "org_a", url: receiver.url, payload: payload)
            try await eventually("the attempt is refused") {
                try await store.latestWebhookDelivery(runID: "run_ssrf")?.lastError?.contains("network.webhook_allow") == true
            }
        }
        #expect(try await receiver.requests().isEmpty, "nothing reached the loopback receiver")
    }

    @Test func anOrganizationWhoseReceiverHangsLeavesSlotsForTheOthers() async throws {
        // A listening socket that never accepts: every delivery to it waits for the whole timeout.
        let (tarpit, tarpitPort) = try boundLoopbackSocket()
        defer { close(tarpit) }
        listen(tarpit, 64)
        let receiver = try Receiver(statuses: [200])
        defer { receiver.stop() }
        try await withSender({ $0.webhooks.secrets["org_b"] = webhookTestSecret; $0.webhooks.timeoutSeconds = 3 }) { webhooks, store in
            for index in 0..<8 {
                try await webhooks.enqueue(runID: "run_slow_\(index)", organizationID: "org_a",
                                     url: "http://127.0.0.1:\(tarpitPort)/hook", payload: payload)
            }
            let queued = Date()
            try await webhooks.enqueue(runID: "run_fast", organizationID: "org_b", url: receiver.url, payload: payload)
            try await eventually("org_b's webhook is delivered", timeout: 10) {
                try await store.latestWebhookDelivery(runID: "run_fast")?.status == .delivered
            }
            let waited = Date().timeIntervalSince(queued)
            #expect(waited < 2, "org_b waited \(waited) s behind org_a's hanging receiver (timeout 3 s)")
        }
    }
}

/// Runs `body` with a `Webhooks` sender (its loop running unless `start` is false) on its own event loop and the
/// database at `database`, then tears everything down as a stopping daemon would.
private func withSender(database: String = temporaryDatabase(), start: Bool = true, backoff: Double = 0.1,
                        _ configure: (inout Config) -> Void = { _ in }, logger: Logger? = nil,
                        _ body: (Webhooks, any Store) async throws -> Void) async throws
{
    var config = Config()
    config.webhooks.secrets = ["org_a": webhookTestSecret]
    config.network.webhookAllow = ["127.0.0.0/8"]
    config.webhooks.timeoutSeconds = 2
    configure(&config)
    let store = try SQLiteStore(path: database)
    let loop = try EventLoop(.init(port: nil))
    loop.start(server: nil)
    var quiet = Logger(label: "webhook-test")
    quiet.logLevel = .critical
    let webhooks = Webhooks(store: store, loop: loop, config: config, logger: logger ?? quiet, backoffBase: backoff)
    let task = start ? Task { await webhooks.run() } : nil
    let result = await Result { try await body(webhooks, store) }
    task?.cancel()
    await task?.value
    loop.shutdown()
    try result.get()
}

extension Result where Failure == any Error {
    fileprivate init(_ body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// Fixtures/webhook_receiver.py, started on a free port of `host` (127.0.0.1 unless given: a ``ClusterNet``'s
/// `rootAddress` lets its hosts reach it), checking signatures with ``webhookTestSecret``.
final class Receiver {
    /// One POST as the receiver saw it.
    struct Request: Decodable {
        var method: String
        var path: String
        var headers: [String: String]
        var body: Data
        var signatureValid: Bool
        var at: Double

        enum CodingKeys: String, CodingKey {
            case method, path, headers, body, signatureValid = "signature_valid", at
        }
    }

    private let process: Process
    private let input = Pipe()
    let host: String
    let port: Int
    var url: String { "http://\(host):\(port)/hooks/run" }

    init(statuses: [Int], host: String = "127.0.0.1") throws {
        self.host = host
        process = Process()
        process.executableURL = URL(fileURLWithPath: Client.python)
        process.arguments = [Fixtures.directory.appendingPathComponent("webhook_receiver.py").path,
                             "--statuses", statuses.map(String.init).joined(separator: ","), "--secret", webhookTestSecret,
                             "--host", host]
        let output = Pipe()
        process.standardOutput = output
        process.standardInput = input  // the receiver exits when it closes, even if the tests crash
        try process.run()
        var line = Data()
        var byte: UInt8 = 0
        while read(output.fileHandleForReading.fileDescriptor, &byte, 1) == 1, byte != UInt8(ascii: "\n") {
            line.append(byte)
        }
        guard let port = Int(String(decoding: line, as: UTF8.self)) else {
            process.terminate()
            throw DaemonError("webhook_receiver.py did not print its port")
        }
        self.port = port
    }

    func requests() async throws -> [Request] {
        let (status, data) = try await httpRaw("GET", "http://\(host):\(port)/requests")
        try #require(status == 200)
        return try JSONDecoder().decode([Request].self, from: data)
    }

    /// SIGKILL: children of the test process inherit a mask that blocks SIGTERM.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExited()
    }
}

/// A log handler that keeps every line, message and metadata, to check what is (not) logged.
private final class LogCapture: Sendable {
    private let storage = Mutex<[String]>([])
    var lines: [String] { storage.withLock { $0 } }

    var logger: Logger {
        Logger(label: "webhook-test") { _ in Handler(capture: self) }
    }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let all = metadata.merging(event.metadata ?? [:]) { $1 }
            let text = "\(event.level) \(event.message) "
                + all.sorted { $0.key < $1.key }.map { "\($0)=\($1)" }.joined(separator: " ")
            capture.storage.withLock { $0.append(text) }
        }
    }
}
