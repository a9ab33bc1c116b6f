public import Foundation
import GRDB

/// One webhook delivery of a run: the exact body to send, and where it stands.
public struct WebhookDelivery: Sendable, Equatable {
    public enum Status: String, Sendable { case pending, delivered, failed }

    /// Assigned by ``Store/insertWebhookDelivery(_:)``.
    public var id: Int64?
    public var runID: String
    public var organizationID: String
    public var url: String
    /// The JSON bytes sent (and signed) on every attempt.
    public var body: Data
    public var attempts = 0
    public var status = Status.pending
    public var nextAttemptAt: Date
    public var lastError: String?
    public var lastStatusCode: Int?
    public var createdAt: Date
    public var deliveredAt: Date?

    /// A pending delivery, due at once.
    public init(runID: String, organizationID: String, url: String, body: Data, createdAt: Date = Date()) {
        self.runID = runID
        self.organizationID = organizationID
        self.url = url
        self.body = body
        self.createdAt = createdAt
        nextAttemptAt = createdAt
    }
}

extension Store {
    static func registerWebhookMigrations(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v3-webhooks") { db in
            try db.create(table: "webhook_delivery") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("runID", .text).notNull().indexed()
                t.column("organizationID", .text).notNull()
                t.column("url", .text).notNull()
                t.column("body", .blob).notNull()
                t.column("attempts", .integer).notNull()
                t.column("status", .text).notNull()
                t.column("nextAttemptAt", .datetime).notNull()
                t.column("lastError", .text)
                t.column("lastStatusCode", .integer)
                t.column("createdAt", .datetime).notNull()
                t.column("deliveredAt", .datetime)
            }
            try db.create(index: "webhook_delivery_due", on: "webhook_delivery", columns: ["status", "nextAttemptAt"])
        }
    }

    /// Adds a delivery and returns it with its id.
    public func insertWebhookDelivery(_ delivery: WebhookDelivery) throws -> WebhookDelivery {
        try database.write { db in
            var row = WebhookRow(delivery)
            try row.insert(db)
            return row.delivery
        }
    }

    /// Saves a delivery after an attempt.
    public func updateWebhookDelivery(_ delivery: WebhookDelivery) throws {
        try database.write { try WebhookRow(delivery).update($0) }
    }

    /// Pending deliveries due at `now`, longest due first, leaving out `excluded` ids (those in flight).
    public func dueWebhookDeliveries(now: Date = Date(), excluding excluded: Set<Int64> = [],
                                     excludingOrganizations organizations: Set<String> = [], limit: Int)
        throws -> [WebhookDelivery]
    {
        try database.read { db in
            try Self.pending(excluding: excluded).filter(Column("nextAttemptAt") <= now)
                .filter(!organizations.contains(Column("organizationID"))).limit(limit)
                .fetchAll(db).map(\.delivery)
        }
    }

    /// When the earliest pending delivery not in `excluded` nor of `organizations` is due, or nil when none is
    /// pending.
    public func nextWebhookAttemptDate(excluding excluded: Set<Int64> = [],
                                       excludingOrganizations organizations: Set<String> = []) throws -> Date? {
        try database.read {
            try Self.pending(excluding: excluded).filter(!organizations.contains(Column("organizationID")))
                .fetchOne($0)?.nextAttemptAt
        }
    }

    /// The newest delivery of a run, if it ever had one.
    public func latestWebhookDelivery(runID: String) throws -> WebhookDelivery? {
        try database.read { db in
            try WebhookRow.filter(Column("runID") == runID).order(Column("id").desc).fetchOne(db)?.delivery
        }
    }

    private static func pending(excluding excluded: Set<Int64>) -> QueryInterfaceRequest<WebhookRow> {
        WebhookRow.filter(Column("status") == WebhookDelivery.Status.pending.rawValue)
            .filter(!excluded.contains(Column("id")))
            .order(Column("nextAttemptAt"), Column("id"))
    }
}

private struct WebhookRow: Codable, FetchableRecord, MutablePersistableRecord {
    static let databaseTableName = "webhook_delivery"
    var id: Int64?
    var runID: String
    var organizationID: String
    var url: String
    var body: Data
    var attempts: Int
    var status: String
    var nextAttemptAt: Date
    var lastError: String?
    var lastStatusCode: Int?
    var createdAt: Date
    var deliveredAt: Date?

    init(_ d: WebhookDelivery) {
        id = d.id
        runID = d.runID
        organizationID = d.organizationID
        url = d.url
        body = d.body
        attempts = d.attempts
        status = d.status.rawValue
        nextAttemptAt = d.nextAttemptAt
        lastError = d.lastError
        lastStatusCode = d.lastStatusCode
        createdAt = d.createdAt
        deliveredAt = d.deliveredAt
    }

    mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }

    var delivery: WebhookDelivery {
        var d = WebhookDelivery(runID: runID, organizationID: organizationID, url: url, body: body, createdAt: createdAt)
        d.id = id
        d.attempts = attempts
        d.status = WebhookDelivery.Status(rawValue: status) ?? .failed
        d.nextAttemptAt = nextAttemptAt
        d.lastError = lastError
        d.lastStatusCode = lastStatusCode
        d.deliveredAt = deliveredAt
        return d
    }
}
