import Store

/// What went wrong in a service, in the service's terms. The routes map each kind to one HTTP status
/// (``Router/status(of:)``); `detail` is what the client reads.
protocol DomainError: Error, Sendable {
    var kind: FailureKind { get }
    var detail: String { get }
}

enum FailureKind: Sendable {
    /// A field or an address breaks its rule.
    case invalid
    /// No such thing for this organization.
    case notFound
    /// The thing exists, but its state does not allow this.
    case conflict
    /// A per-organization limit (the detail names its config key).
    case limited
    /// The daemon cannot do it now (its store or disk fails).
    case unavailable
}

/// A store's refusal that reaches a route as it is: the database unavailable is 503, a duplicate 409.
extension StoreFailure: DomainError {
    var kind: FailureKind {
        switch self {
        case .duplicateSession, .duplicateRun: .conflict
        case .fenced, .unavailable: .unavailable
        }
    }

    var detail: String { description }
}
