public import Foundation
public import GRDB

/// One webhook delivery of a run: the exact body to send, and where it stands.
public struct WebhookDelivery: Sendable, Equatable, Codable, FetchableRecord, MutablePersistableRecord {
    public enum Status: String, Sendable, Codable, DatabaseValueConvertible { case pending, delivered, failed }
    public static let databaseTableName = "webhook_delivery"

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
    /// The cluster node that sends it; nil on a single host.
    public var nodeID: String?

    /// A pending delivery, due at once.
    public init(runID: String, organizationID: String, url: String, body: Data, createdAt: Date = Date()) {
        self.runID = runID
        self.organizationID = organizationID
        self.url = url
        self.body = body
        self.createdAt = createdAt
        nextAttemptAt = createdAt
    }

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

extension SQLiteStore {
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

    public func insertWebhookDelivery(_ delivery: WebhookDelivery) async throws -> WebhookDelivery {
        try await database.write { db in
            try delivery.inserted(db)
        }
    }

    public func updateWebhookDelivery(_ delivery: WebhookDelivery) async throws {
        try await database.write { try delivery.update($0) }
    }

    public func dueWebhookDeliveries(now: Date, excluding excluded: Set<Int64>,
                                     excludingOrganizations organizations: Set<String>, limit: Int)
        async throws -> [WebhookDelivery]
    {
        try await database.read { db in
            try Self.pending(excluding: excluded).filter(Column("nextAttemptAt") <= now)
                .filter(!organizations.contains(Column("organizationID"))).limit(limit)
                .fetchAll(db)
        }
    }

    public func nextWebhookAttemptDate(excluding excluded: Set<Int64>,
                                       excludingOrganizations organizations: Set<String>) async throws -> Date? {
        try await database.read {
            try Self.pending(excluding: excluded).filter(!organizations.contains(Column("organizationID")))
                .fetchOne($0)?.nextAttemptAt
        }
    }

    public func latestWebhookDelivery(runID: String) async throws -> WebhookDelivery? {
        try await database.read { db in
            try WebhookDelivery.filter(Column("runID") == runID).order(Column("id").desc).fetchOne(db)
        }
    }

    private static func pending(excluding excluded: Set<Int64>) -> QueryInterfaceRequest<WebhookDelivery> {
        WebhookDelivery.filter(Column("status") == WebhookDelivery.Status.pending)
            .filter(!excluded.contains(Column("id")))
            .order(Column("nextAttemptAt"), Column("id"))
    }
}
