import GRDB

extension Store {
    static func registerRunMigrations(_ migrator: inout DatabaseMigrator) {}
}
