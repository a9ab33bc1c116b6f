public import Foundation

/// Lifecycle of a browser session.
public enum SessionStatus: String, Sendable, Codable, CaseIterable {
    /// Registered; attaching to the browser.
    case created
    /// Attached; frames flow while somebody watches.
    case running
    /// Closed by a request or by its timeout.
    case closed
    /// The browser stayed unreachable past the retry window.
    case failed

    /// True while the session can still produce frames.
    public var isActive: Bool { self == .created || self == .running }
}

/// A browser session as stored.
public struct SessionRecord: Sendable, Equatable, Codable {
    public var id: String
    public var organizationID: String
    public var status: SessionStatus
    public var createdAt: Date
    public var modifiedAt: Date
    /// First attach to the browser; the timeout counts from here.
    public var startedAt: Date?
    public var completedAt: Date?
    /// Minutes, 5-1440.
    public var timeoutMinutes: Int
    public var browserAddress: String
    public var failureReason: String?
    /// Last renewal; the timeout then counts from here.
    public var renewedAt: Date?
    /// A VNC server showing the browser (`host:port`), and its password.
    public var vncAddress: String?
    public var vncPassword: String?
    /// As given at creation (`msedge`, `chrome`); viewportd does not start the browser.
    public var browserType: String?
    /// As given at creation (`ad-blocker`, `captcha-solver`).
    public var extensions: [String]?
    /// Where the browser saves downloads (a DevTools session's folder under the artifacts).
    public var downloadPath: String?
    /// When retention deleted the session's files.
    public var deletedAt: Date?
    /// The cluster node that owns the session (attached it, or took it over when its node was lost); nil on a
    /// single host.
    public var nodeID: String?

    public init(id: String, organizationID: String, status: SessionStatus, createdAt: Date, modifiedAt: Date,
                startedAt: Date? = nil, completedAt: Date? = nil, timeoutMinutes: Int, browserAddress: String,
                failureReason: String? = nil)
    {
        self.id = id
        self.organizationID = organizationID
        self.status = status
        self.createdAt = createdAt
        self.modifiedAt = modifiedAt
        self.startedAt = startedAt
        self.completedAt = completedAt
        self.timeoutMinutes = timeoutMinutes
        self.browserAddress = browserAddress
        self.failureReason = failureReason
    }

    /// When the session closes by timeout: its timeout after its last renewal, else after it started (or was
    /// created, if never attached).
    public var expiresAt: Date {
        (renewedAt ?? startedAt ?? createdAt).addingTimeInterval(Double(timeoutMinutes) * 60)
    }
}
