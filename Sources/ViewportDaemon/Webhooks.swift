import Digests
import Foundation
import Logging
import ServiceLifecycle
import Store
import Synchronization
import WebSocketIO

/// A webhook that could not be queued.
struct WebhookError: Error, CustomStringConvertible, Equatable {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Run-completion webhooks: each delivery is stored in SQLite before it is sent, so pending ones survive a
/// restart; ``run()`` sends the due ones, retrying with exponential backoff until `webhooks.max_attempts`.
///
/// Every attempt POSTs the same stored body with `x-viewportd-timestamp` (the attempt's unix seconds) and
/// `x-viewportd-signature: sha256=<hex HMAC-SHA256 of "timestamp.body">` keyed with the organization's secret.
/// What a run's `webhook_url` receives when the run completes (docs/openapi.yaml, `WebhookPayload`).
struct WebhookPayload: Encodable {
    let runID: String
    let browserSessionID: String
    let status: String
    @Nullable var failureReason: String?
    @Nullable var recordingURL: String?
    let screenshotUrls: [String]
    let stepCount: Int
    let createdAt: Date
    @Nullable var finishedAt: Date?
}

final class Webhooks: Sendable {
    private let store: any Store
    private let loop: EventLoop
    private let logger: Logger
    private let maxAttempts: Int
    private let timeout: Double
    private let backoffBase: Double
    private let maxConcurrent: Int
    private let secrets: Mutex<[String: String]>
    private let metrics: DaemonMetrics?
    /// Deliveries being sent (id → organization), so the loop neither picks them twice nor waits on them as due,
    /// and no organization takes more than ``maxPerOrganization`` of the slots.
    private let inFlight = Mutex<[Int64: String]>([:])
    /// Where webhooks may go (SSRF).
    private let policy: NetworkPolicy
    /// `retry_webhook` calls per organization in the last minute.
    private let retries = Mutex<[String: [Date]]>([:])
    private let retriesPerMinute: Int
    private let wakeup = Wakeup()

    /// `backoffBase` seconds before the second attempt, doubling for each one after.
    init(store: any Store, loop: EventLoop, config: Config, metrics: DaemonMetrics? = nil, logger: Logger,
         backoffBase: Double = 1, maxConcurrent: Int = 4) {
        self.store = store
        self.metrics = metrics
        self.loop = loop
        self.logger = logger
        maxAttempts = config.webhooks.maxAttempts
        timeout = Double(config.webhooks.timeoutSeconds)
        self.backoffBase = backoffBase
        self.maxConcurrent = maxConcurrent
        secrets = Mutex(config.webhooks.secrets)
        policy = NetworkPolicy(config: config)
        retriesPerMinute = config.limits.retryWebhookPerMinute
    }

    /// A slow or dead receiver of one organization holds at most this many of the concurrent deliveries, so the
    /// other organizations' webhooks still go out.
    private var maxPerOrganization: Int { max(1, maxConcurrent / 2) }

    /// Counts a `retry_webhook` call of `organizationID`; false when it made `limits.retry_webhook_per_minute` in
    /// the last minute already.
    func allowRetry(organizationID: String, now: Date = Date()) -> Bool {
        retries.withLock { retries in
            var recent = retries[organizationID, default: []].filter { now.timeIntervalSince($0) < 60 }
            defer { retries[organizationID] = recent }
            guard recent.count < retriesPerMinute else { return false }
            recent.append(now)
            return true
        }
    }

    /// Throws unless `url`'s host resolves only to addresses webhooks may reach (network.webhook_allow).
    func checkReachable(url: String) async throws(WebhookError) {
        let endpoint: Endpoint
        do { endpoint = try Endpoint(url) } catch { throw WebhookError("\(error)") }
        do { _ = try await policy.resolved(endpoint.host, for: .webhook) } catch { throw WebhookError("\(error)") }
    }

    /// Queues a delivery of `payload` to `url`. The body is serialised here, once, with sorted keys: every
    /// attempt sends and signs exactly these bytes.
    func enqueue(runID: String, organizationID: String, url: String, payload: WebhookPayload) async throws(WebhookError) {
        try await insert(WebhookDelivery(runID: runID, organizationID: organizationID, url: url,
                                         body: try Self.body(payload)))
    }

    static func body(_ payload: WebhookPayload) throws(WebhookError) -> Data {
        guard let body = try? APIJSON.encoder(sortedKeys: true).encode(payload) else {
            throw WebhookError("webhook payload of run \(payload.runID) cannot be encoded")
        }
        return body
    }

    /// Queues the delivery of a run whose webhook was held until its artifacts were in the bucket, if none of its
    /// uploads is pending any more and nobody queued it yet; returns whether this call did.
    /// `payload` is built from the run and its artifacts as the store holds them at that moment.
    func release(runID: String, organizationID: String, url: String, ignoringPending: Bool,
                 payload: @escaping @Sendable (RunRecord, [ArtifactRecord]) -> WebhookPayload) async throws(WebhookError)
        -> Bool
    {
        let released: Bool
        do {
            released = try await store.releaseHeldWebhook(runID: runID, ignoringPending: ignoringPending) { run, artifacts in
                WebhookDelivery(runID: runID, organizationID: organizationID, url: url,
                                body: try Self.body(payload(run, artifacts)))
            }
        } catch {
            throw WebhookError("cannot store the webhook delivery of run \(runID): \(error)")
        }
        if released { wakeup.signal() }
        return released
    }

    /// Queues the run's latest body again to its URL; false if the run never had a delivery.
    func resend(runID: String) async throws(WebhookError) -> Bool {
        let latest: WebhookDelivery?
        do { latest = try await store.latestWebhookDelivery(runID: runID) } catch {
            throw WebhookError("cannot read the webhook deliveries of run \(runID): \(error)")
        }
        guard let latest else { return false }
        try await insert(WebhookDelivery(runID: runID, organizationID: latest.organizationID, url: latest.url, body: latest.body))
        return true
    }

    /// Throws unless `url` is one the sender can deliver to: `http://host[:port]/path` (no TLS client yet).
    static func validate(url: String) throws(WebhookError) {
        guard url.lowercased().hasPrefix("http://") else { throw WebhookError("only http:// URLs are supported") }
        do { _ = try Endpoint(url) } catch { throw WebhookError("\(error)") }
    }

    /// True when `organizationID` has a signing secret (runs of other organizations cannot have a webhook).
    func hasSecret(organizationID: String) -> Bool { secrets.withLock { $0[organizationID] != nil } }

    /// Replaces the signing secrets by organization id (on reload).
    func setSecrets(_ secrets: [String: String]) { self.secrets.withLock { $0 = secrets } }

    private func insert(_ delivery: WebhookDelivery) async throws(WebhookError) {
        do { _ = try await store.insertWebhookDelivery(delivery) } catch {
            throw WebhookError("cannot store the webhook delivery of run \(delivery.runID): \(error)")
        }
        wakeup.signal()
    }

    /// Looks for due deliveries now: some were queued or handed to this node by another way than ``enqueue``
    /// (a run rebuilt from the bucket, a lost cluster node's deliveries).
    func wake() { wakeup.signal() }

    /// Sends due deliveries, at most `maxConcurrent` at once, until cancelled; starts with those a previous process
    /// left pending. Attempts in flight when cancelled still finish (within the timeout) and are recorded.
    func run() async {
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                let busy = inFlight.withLock { $0 }
                var perOrganization = Dictionary(busy.values.map { ($0, 1) }, uniquingKeysWith: +)
                var atShare: Set<String> { Set(perOrganization.filter { $0.value >= maxPerOrganization }.keys) }
                var due: [WebhookDelivery] = []
                var picked: [WebhookDelivery] = []
                var next: Date?
                do {
                    // Due deliveries of organizations below their share, until the slots are full: an organization
                    // with thousands due never hides the others'.
                    while busy.count + picked.count < maxConcurrent {
                        let batch = try await store.dueWebhookDeliveries(
                            excluding: Set(busy.keys).union(due.compactMap(\.id)), excludingOrganizations: atShare,
                            limit: maxConcurrent - busy.count - picked.count)
                        guard !batch.isEmpty else { break }
                        due += batch
                        for delivery in batch where busy.count + picked.count < maxConcurrent
                            && perOrganization[delivery.organizationID, default: 0] < maxPerOrganization
                        {
                            perOrganization[delivery.organizationID, default: 0] += 1
                            picked.append(delivery)
                        }
                    }
                    // Due ones left waiting for a slot (theirs or their organization's share) are woken by a
                    // finished attempt, not by the clock.
                    next = try await store.nextWebhookAttemptDate(excluding: Set(busy.keys).union(due.compactMap(\.id)),
                                                            excludingOrganizations: atShare)
                } catch {
                    logger.error("cannot read webhook deliveries", metadata: ["error": "\(error)"])
                    next = Date().addingTimeInterval(5)
                }
                for delivery in picked {
                    guard let id = delivery.id else { continue }
                    inFlight.withLock { $0[id] = delivery.organizationID }
                    group.addTask {
                        await self.attempt(delivery)
                        self.inFlight.withLock { _ = $0.removeValue(forKey: id) }
                        self.wakeup.signal()
                    }
                }
                // A full window waits for a slot (a finished attempt signals); otherwise for the next due time.
                let full = busy.count + picked.count >= maxConcurrent
                await wakeup.wait(seconds: full ? nil : next.map { max(0, $0.timeIntervalSinceNow) })
            }
        }
    }

    /// One attempt: sends, then records the outcome.
    private func attempt(_ delivery: WebhookDelivery) async {
        var delivery = delivery
        let runID = delivery.runID
        guard let secret = secrets.withLock({ $0[delivery.organizationID] }) else {
            delivery.status = .failed
            delivery.lastError = "no webhook secret configured for organization \(delivery.organizationID)"
            logger.warning("webhook not sent", metadata: ["run_id": "\(runID)", "error": "\(delivery.lastError!)"])
            await save(delivery)
            return
        }
        delivery.attempts += 1
        let timestamp = String(Int(Date().timeIntervalSince1970))
        let signature = Self.signature(secret: secret, timestamp: timestamp, body: delivery.body)
        let headers = [("content-type", "application/json"), ("user-agent", "viewportd"),
                       ("x-viewportd-timestamp", timestamp), ("x-viewportd-signature", "sha256=" + signature)]
        var statusCode: Int?
        do {
            // Resolved and checked at every attempt, and sent to the checked address (no DNS rebinding).
            let host = try Endpoint(delivery.url).host
            let address = try await policy.resolved(host, for: .webhook)
            let status = try await loop.httpRequest("POST", delivery.url, connectingTo: address, headers: headers,
                                                    body: delivery.body, timeout: timeout).status
            statusCode = status
            delivery.lastError = (200..<300).contains(status) ? nil : "HTTP \(status)"
        } catch {
            delivery.lastError = "\(error)"
        }
        delivery.lastStatusCode = statusCode
        var metadata: Logger.Metadata = ["run_id": "\(runID)", "attempt": "\(delivery.attempts)/\(maxAttempts)",
                                         "status_code": "\(statusCode.map(String.init) ?? "none")"]
        if let statusCode, (200..<300).contains(statusCode) {
            delivery.status = .delivered
            delivery.deliveredAt = Date()
            metrics?.webhookDelivered()
            logger.info("webhook delivered", metadata: metadata)
        } else {
            metrics?.webhookFailed()
            metadata["error"] = "\(delivery.lastError ?? "")"
            if delivery.attempts >= maxAttempts {
                delivery.status = .failed
                logger.warning("webhook failed, giving up", metadata: metadata)
            } else {
                let delay = backoffBase * Double(1 << (delivery.attempts - 1))
                delivery.nextAttemptAt = Date().addingTimeInterval(delay)
                metadata["retry_in_seconds"] = "\(delay)"
                logger.warning("webhook attempt failed", metadata: metadata)
            }
        }
        await save(delivery)
    }

    private func save(_ delivery: WebhookDelivery) async {
        do { try await store.updateWebhookDelivery(delivery) } catch {
            logger.error("cannot store webhook delivery", metadata: ["run_id": "\(delivery.runID)", "error": "\(error)"])
        }
    }

    /// Lower-case hex HMAC-SHA256 of `timestamp.body`.
    static func signature(secret: String, timestamp: String, body: Data) -> String {
        Digest.hmacSHA256(key: Data(secret.utf8), Data((timestamp + ".").utf8) + body).hex
    }
}

/// Runs the webhook sender until a graceful shutdown.
struct WebhookService: Service {
    let webhooks: Webhooks

    func run() async throws {
        try? await cancelWhenGracefulShutdown { await webhooks.run() }
    }
}
