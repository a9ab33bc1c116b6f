import GRDB

extension Store {
    static func registerWebhookMigrations(_ migrator: inout DatabaseMigrator) {}
}
