import Foundation

// The part of the Chrome DevTools Protocol that viewportd speaks, as Codable types: commands are their own
// `params`, replies and events decode into the structs below. Field names are CDP's.

/// Which target a message is for: the connection's own (the browser, or the page of a page endpoint), reached
/// without a `sessionId`, or a session attached through it.
enum CDPSession: Hashable, Sendable {
    case root
    case attached(String)

    /// The message's `sessionId`, absent for the connection's own target.
    init(_ sessionID: String?) { self = sessionID.map(CDPSession.attached) ?? .root }

    var id: String? {
        if case .attached(let id) = self { return id }
        return nil
    }
}

/// A command: its fields are the command's `params`.
protocol CDPCommand: Encodable {
    /// What the reply's `result` decodes to.
    associatedtype Result: Decodable = CDPNoResult
    static var method: String { get }
}

/// A reply whose `result` viewportd does not read.
struct CDPNoResult: Decodable {}

/// A command as written to the socket.
struct CDPOutbound<Command: CDPCommand>: Encodable {
    var id: Int
    var method = Command.method
    var sessionId: String?
    var params: Command
}

/// A reply as read from the socket: `result` is nil when the browser answered with an error.
struct CDPReply<Result: Decodable>: Decodable {
    var result: Result?
}

/// One message from the browser: a reply (its `result` is decoded by the command's waiter) or an event.
enum CDPInbound: Decodable {
    case reply(id: Int)
    case event(CDPEvent, session: CDPSession)

    private enum Key: String, CodingKey { case id, method, params, sessionId }

    init(from decoder: any Decoder) throws {
        let message = try decoder.container(keyedBy: Key.self)
        if let id = try message.decodeIfPresent(Int.self, forKey: .id) {
            self = .reply(id: id)
            return
        }
        let session = CDPSession(try message.decodeIfPresent(String.self, forKey: .sessionId))
        let method = try message.decode(String.self, forKey: .method)
        func params<T: Decodable>(_: T.Type) throws -> T { try message.decode(T.self, forKey: .params) }
        let event: CDPEvent
        switch method {
        case "Page.screencastFrame": event = .screencastFrame(try params(ScreencastFrame.self))
        case "Page.screencastVisibilityChanged": event = .screencastVisibilityChanged
        case "Target.targetCreated", "Target.targetInfoChanged": event = .targetInfo(try params(TargetInfoParams.self).targetInfo)
        case "Target.attachedToTarget": event = .attachedToTarget(try params(AttachedToTarget.self))
        case "Target.detachedFromTarget": event = .detachedFromTarget(try params(SessionParams.self).sessionId)
        case "Target.targetDestroyed": event = .targetDestroyed(try params(TargetParams.self).targetId)
        case "Browser.downloadWillBegin": event = .downloadWillBegin(try params(DownloadWillBegin.self))
        case "Browser.downloadProgress": event = .downloadProgress(try params(DownloadProgress.self))
        default: event = .other
        }
        self = .event(event, session: session)
    }

    /// Decodes a message whose frame `data` (if any) was cut out by ``FrameMessage/split(_:)``.
    static func decode(_ json: Data) throws -> CDPInbound { try decoder.decode(CDPInbound.self, from: json) }

    /// One decoder for every message (making one per message costs as much as decoding a small event).
    static let decoder = JSONDecoder()

    private struct TargetInfoParams: Decodable { var targetInfo: TargetInfo }
    private struct SessionParams: Decodable { var sessionId: String }
    private struct TargetParams: Decodable { var targetId: String }
}

/// The events viewportd acts on.
enum CDPEvent {
    case screencastFrame(ScreencastFrame)
    case screencastVisibilityChanged
    /// `Target.targetCreated` or `Target.targetInfoChanged`.
    case targetInfo(TargetInfo)
    case attachedToTarget(AttachedToTarget)
    case detachedFromTarget(String)
    case targetDestroyed(String)
    case downloadWillBegin(DownloadWillBegin)
    case downloadProgress(DownloadProgress)
    case other
}

// MARK: - Events and results

/// The browser's `/json/version`.
struct BrowserVersion: Decodable { var webSocketDebuggerUrl: String }

struct TargetInfo: Decodable, Equatable {
    var targetId: String
    var type: String
    var url: String?
    var embedderData: EmbedderData?

    struct EmbedderData: Decodable, Equatable {
        /// Whether the tab is its window's active one (tab targets only).
        var tabActive: Bool?
    }
}

struct AttachedToTarget: Decodable {
    var sessionId: String
    var targetInfo: TargetInfo
}

/// `Page.screencastFrame` without its `data`, which ``FrameMessage`` cuts out and decodes on its own.
struct ScreencastFrame: Decodable {
    /// What the acknowledgement names (CDP's frame number).
    var sessionId: Int?
    var timestamp: Double?
    var deviceWidth: Double?

    private enum Key: String, CodingKey { case sessionId, metadata }
    private enum MetadataKey: String, CodingKey { case timestamp, deviceWidth }

    // Lenient: a frame whose metadata is not numbers is still shown (at the time it arrived) and acknowledged.
    init(from decoder: any Decoder) throws {
        let params = try decoder.container(keyedBy: Key.self)
        sessionId = try? params.decode(Int.self, forKey: .sessionId)
        let metadata = try? params.nestedContainer(keyedBy: MetadataKey.self, forKey: .metadata)
        timestamp = try? metadata?.decode(Double.self, forKey: .timestamp)
        deviceWidth = try? metadata?.decode(Double.self, forKey: .deviceWidth)
    }
}

struct DownloadWillBegin: Decodable {
    var guid: String
    var suggestedFilename: String
}

struct DownloadProgress: Decodable {
    enum State: String, Decodable { case inProgress, completed, canceled }
    var guid: String
    var receivedBytes: Double
    var state: State
}

// MARK: - Commands

struct TargetFilter: Encodable { var type: String }

struct SetDiscoverTargets: CDPCommand {
    static let method = "Target.setDiscoverTargets"
    var discover = true
    var filter = [TargetFilter(type: "tab"), TargetFilter(type: "page")]
}

struct GetTargets: CDPCommand {
    static let method = "Target.getTargets"
    struct Result: Decodable { var targetInfos: [TargetInfo] }
    var filter = [TargetFilter(type: "tab")]
}

struct GetTargetInfo: CDPCommand {
    static let method = "Target.getTargetInfo"
    struct Result: Decodable { var targetInfo: TargetInfo }
}

struct AttachToTarget: CDPCommand {
    static let method = "Target.attachToTarget"
    struct Result: Decodable { var sessionId: String }
    var targetId: String
    var flatten = true
}

struct SetAutoAttach: CDPCommand {
    static let method = "Target.setAutoAttach"
    var autoAttach = true
    var waitForDebuggerOnStart = false
    var flatten = true
}

struct StartScreencast: CDPCommand {
    static let method = "Page.startScreencast"
    var format = "jpeg"
    var quality: Int
    var maxWidth: Int
    var maxHeight: Int
    var everyNthFrame = 1
}

struct StopScreencast: CDPCommand {
    static let method = "Page.stopScreencast"
}

struct ScreencastFrameAck: CDPCommand {
    static let method = "Page.screencastFrameAck"
    var sessionId: Int
}

/// Its reply's `data` (the image) is cut out by ``FrameMessage``.
struct CaptureScreenshot: CDPCommand {
    static let method = "Page.captureScreenshot"
    var format = "jpeg"
    var quality: Int
}

struct DispatchMouseEvent: CDPCommand {
    static let method = "Input.dispatchMouseEvent"
    var type: String
    var x: Double
    var y: Double
    var button: String?
    var buttons: Int?
    var clickCount: Int?
    var modifiers: Int?
    var deltaX: Double?
    var deltaY: Double?
}

struct DispatchKeyEvent: CDPCommand {
    static let method = "Input.dispatchKeyEvent"
    var type: String
    var key: String
    var code: String
    var modifiers: Int
    var windowsVirtualKeyCode: Int
    var nativeVirtualKeyCode: Int
    var text: String?
    var unmodifiedText: String?
}

struct InsertText: CDPCommand {
    static let method = "Input.insertText"
    var text: String
}

struct Navigate: CDPCommand {
    static let method = "Page.navigate"
    var url: String
}

/// Downloads go to `downloadPath`, each file named by its guid, and `Browser.download*` events report them.
struct SetDownloadBehavior: CDPCommand {
    static let method = "Browser.setDownloadBehavior"
    var behavior = "allowAndName"
    var downloadPath: String
    var eventsEnabled = true
}

// MARK: - Evaluation

/// A JavaScript value in the page: a primitive's `value` (or `unserializableValue`: NaN, -0, BigInt...), an
/// object's `objectId`.
struct RemoteObject: Decodable {
    var type: String
    var subtype: String?
    var objectId: String?
    var value: Primitive?
    var unserializableValue: String?
    var description: String?

    /// A primitive `value` as CDP writes it.
    enum Primitive: Decodable {
        case null, bool(Bool), number(Double), string(String)

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() { self = .null }
            else if let value = try? container.decode(Bool.self) { self = .bool(value) }
            else if let value = try? container.decode(Double.self) { self = .number(value) }
            else { self = .string(try container.decode(String.self)) }
        }
    }
}

/// An exception a script threw (or its promise's rejection).
struct ExceptionDetails: Decodable {
    var text: String
    var exception: RemoteObject?
}

struct Evaluate: CDPCommand {
    static let method = "Runtime.evaluate"
    struct Result: Decodable {
        var result: RemoteObject
        var exceptionDetails: ExceptionDetails?
    }
    var expression: String
    var objectGroup: String
    var awaitPromise = true
    var returnByValue = false
    /// Milliseconds after which the browser stops a script that does not yield (it then answers with an error).
    var timeout: Double
}

struct CallFunctionOn: CDPCommand {
    static let method = "Runtime.callFunctionOn"
    typealias Result = Evaluate.Result
    struct Argument: Encodable { var value: Int }
    var functionDeclaration: String
    var objectId: String
    var arguments: [Argument]
    var returnByValue = true
}

struct ReleaseObjectGroup: CDPCommand {
    static let method = "Runtime.releaseObjectGroup"
    var objectGroup: String
}
