public import Foundation
public import ViewportCore

// The viewer WebSocket protocol's text messages (docs/protocol.md, a public contract: field names and values here
// are the wire format). Binary frames are not here: they are the hubs' prebuilt `VPF1` and `VPH1` messages.

/// A text message a viewer sends.
public enum ViewerRequest: Decodable, Sendable, Equatable {
    /// `{"type":"ping","t":X}`: answered with a pong echoing `t` (null when absent).
    case ping(t: JSONValue)
    case takeControl
    case cedeControl
    /// `mouse`, `wheel`, `key`, `navigate` or `paste`: the input, or why it is refused. Decoding never fails on a
    /// bad input message, so the viewer checks its permission before it reports what is wrong with the message.
    case input(Result<ViewerInput, InputRefusal>)
    /// `{"type":"evaluate","id":ID,"expression":"…"}`: the id as sent (null when absent), the expression (nil when
    /// it is not a string).
    case evaluate(id: JSONValue, expression: String?)
    /// Any other `type`.
    case unknown(type: String)

    /// True for the messages that need control permission and go to the session's owner: `take-control`,
    /// `cede-control`, input and `evaluate`.
    public var isControl: Bool {
        switch self {
        case .takeControl, .cedeControl, .input, .evaluate: true
        case .ping, .unknown: false
        }
    }

    /// Answer to a message that is not a JSON object with a string `type`.
    public static let malformed = "expected a JSON text message with a \"type\""

    /// The message in `data`; throws (any error: answer `malformed`) if it is not a JSON object with a string `type`.
    public static func decode(_ data: Data) throws -> ViewerRequest { try JSONDecoder().decode(Self.self, from: data) }

    /// What the viewer does with a text message short of sending it anywhere: decode it, encode a ping's pong,
    /// clamp an input to frames of two sizes. The fuzz target and the corpus test run this.
    public static func fuzz(_ data: Data) {
        switch try? decode(data) {
        case .ping(let t): _ = ViewerEvent.pong(t: t, serverTimeMicros: 0).viewerJSON()
        case .input(.success(let input)):
            _ = input.clamped(width: 1280, height: 720)
            _ = input.clamped(width: 0, height: 0)
        default: break
        }
    }

    private enum CodingKeys: String, CodingKey { case type, t, id, expression }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let type = try container.decode(String.self, forKey: .type)
        switch type {
        case "ping": self = .ping(t: try container.decodeIfPresent(JSONValue.self, forKey: .t) ?? .null)
        case "take-control": self = .takeControl
        case "cede-control": self = .cedeControl
        case "evaluate":
            self = .evaluate(id: try container.decodeIfPresent(JSONValue.self, forKey: .id) ?? .null,
                             expression: try? container.decodeIfPresent(String.self, forKey: .expression))
        case _ where ViewerInput.types.contains(type):
            do { self = .input(.success(try ViewerInput(from: decoder))) } catch {
                self = .input(.failure(error as? InputRefusal ?? InputRefusal("invalid \(type) message")))
            }
        default: self = .unknown(type: type)
        }
    }
}

/// A text message the daemon sends a viewer.
public enum ViewerEvent: Encodable, Sendable, Equatable {
    /// The first message: the session, the size of its latest frame (0 without one), whether this viewer may
    /// take control, and what its frames are.
    case hello(sessionID: String, width: Int, height: Int, controlPermitted: Bool, format: HelloFormat = .jpeg)
    /// How the H.264 pictures that follow decode (sent before the first one whose configuration or source size
    /// differs from what this viewer was last told).
    case config(VideoConfig, width: Int, height: Int)
    /// Who drives the browser; sent after `hello` and to every viewer of the session on each change.
    case control(Controller)
    case status(ViewerStatus)
    /// The answer to a ping: its `t` as sent and the daemon's clock in microseconds since the Unix epoch.
    case pong(t: JSONValue, serverTimeMicros: UInt64)
    /// Why a message was refused; the connection stays open.
    case error(String)
    /// The page URL of the binary frames that follow.
    case page(url: String)
    /// A run of the session started or ended.
    case run(RunEvent)
    /// A step of the session's run was marked.
    case step(StepEvent)
    /// The answer to an `evaluate`: the value as JSON, or why there is none.
    case evaluateResult(id: JSONValue, Result<JSONValue, EvaluationRefusal>)

    public enum Controller: String, Encodable, Sendable { case agent, viewer }

    /// What a viewer's frames are: JPEG, or H.264 with its configuration once the encoder has one.
    public enum HelloFormat: Sendable, Equatable {
        case jpeg
        case h264(VideoConfig?)
    }

    private enum CodingKeys: String, CodingKey {
        case type, browserSessionID = "browser_session_id", `protocol`, format, width, height
        case controlPermitted = "control_permitted", controller, status, reason, t, serverTimeMicros = "server_time_us"
        case message, url, id, value, error, codec, description, codedWidth = "coded_width", codedHeight = "coded_height"
    }

    private func encode(_ config: VideoConfig, into container: inout KeyedEncodingContainer<CodingKeys>) throws {
        try container.encode(config.codec, forKey: .codec)
        try container.encode(config.avcC.base64EncodedString(), forKey: .description)
        try container.encode(config.codedWidth, forKey: .codedWidth)
        try container.encode(config.codedHeight, forKey: .codedHeight)
    }

    public func encode(to encoder: any Encoder) throws {
        // Runs and steps are messages of their own.
        if case .run(let run) = self { return try run.encode(to: encoder) }
        if case .step(let step) = self { return try step.encode(to: encoder) }
        var container = encoder.container(keyedBy: CodingKeys.self)
        switch self {
        case .hello(let sessionID, let width, let height, let controlPermitted, let format):
            try container.encode("hello", forKey: .type)
            try container.encode(sessionID, forKey: .browserSessionID)
            try container.encode(1, forKey: .protocol)
            switch format {
            case .jpeg: try container.encode("jpeg", forKey: .format)
            case .h264(let config):
                try container.encode("h264", forKey: .format)
                if let config { try encode(config, into: &container) }
            }
            try container.encode(width, forKey: .width)
            try container.encode(height, forKey: .height)
            try container.encode(controlPermitted, forKey: .controlPermitted)
        case .config(let config, let width, let height):
            try container.encode("config", forKey: .type)
            try encode(config, into: &container)
            try container.encode(width, forKey: .width)
            try container.encode(height, forKey: .height)
        case .control(let controller):
            try container.encode("control", forKey: .type)
            try container.encode(controller, forKey: .controller)
        case .status(let status):
            try container.encode("status", forKey: .type)
            try container.encode(status.name, forKey: .status)
            if case .failed(let reason) = status { try container.encode(reason, forKey: .reason) }
        case .pong(let t, let serverTimeMicros):
            try container.encode("pong", forKey: .type)
            try container.encode(t, forKey: .t)
            try container.encode(serverTimeMicros, forKey: .serverTimeMicros)
        case .error(let message):
            try container.encode("error", forKey: .type)
            try container.encode(message, forKey: .message)
        case .page(let url):
            try container.encode("page", forKey: .type)
            try container.encode(url, forKey: .url)
        case .run, .step:
            break
        case .evaluateResult(let id, let result):
            try container.encode("evaluate_result", forKey: .type)
            try container.encode(id, forKey: .id)
            switch result {
            case .success(let value): try container.encode(value, forKey: .value)
            case .failure(let refusal): try container.encode(refusal.message, forKey: .error)
            }
        }
    }
}

/// A `run` message: a run of the session started (`running`) or ended (its final status), as the REST API tells
/// it. Times are ISO 8601 as the REST API writes them.
public struct RunEvent: Codable, Sendable, Equatable {
    public var runID: String
    /// `running`, or the final status (`completed`, `failed`, `terminated`...).
    public var status: String
    public var startedAt: String
    /// Absent while running.
    public var finishedAt: String?
    /// The run's replay page, once it ended: a URL that works without a key.
    public var replayURL: String?

    public init(runID: String, status: String, startedAt: String, finishedAt: String? = nil, replayURL: String? = nil) {
        (self.runID, self.status, self.startedAt, self.finishedAt, self.replayURL) = (runID, status, startedAt, finishedAt, replayURL)
    }

    /// Whether the run is open (it started; no final status yet).
    public var isRunning: Bool { status == "running" }

    private enum CodingKeys: String, CodingKey {
        case type, runID = "run_id", status, startedAt = "started_at", finishedAt = "finished_at", replayURL = "replay_url"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        runID = try container.decode(String.self, forKey: .runID)
        status = try container.decode(String.self, forKey: .status)
        startedAt = try container.decode(String.self, forKey: .startedAt)
        finishedAt = try container.decodeIfPresent(String.self, forKey: .finishedAt)
        replayURL = try container.decodeIfPresent(String.self, forKey: .replayURL)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("run", forKey: .type)
        try container.encode(runID, forKey: .runID)
        try container.encode(status, forKey: .status)
        try container.encode(startedAt, forKey: .startedAt)
        try container.encodeIfPresent(finishedAt, forKey: .finishedAt)
        try container.encodeIfPresent(replayURL, forKey: .replayURL)
    }
}

/// A `step` message: a step of a run was marked (its index counts from 1 in the run).
public struct StepEvent: Codable, Sendable, Equatable {
    public var runID: String
    /// 1 for the run's first step.
    public var index: Int
    public var label: String
    /// When it was marked, ISO 8601.
    public var at: String

    public init(runID: String, index: Int, label: String, at: String) {
        (self.runID, self.index, self.label, self.at) = (runID, index, label, at)
    }

    private enum CodingKeys: String, CodingKey { case type, runID = "run_id", index, label, at }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        runID = try container.decode(String.self, forKey: .runID)
        index = try container.decode(Int.self, forKey: .index)
        label = try container.decode(String.self, forKey: .label)
        at = try container.decode(String.self, forKey: .at)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode("step", forKey: .type)
        try container.encode(runID, forKey: .runID)
        try container.encode(index, forKey: .index)
        try container.encode(label, forKey: .label)
        try container.encode(at, forKey: .at)
    }
}

/// Why an `evaluate` gave no value (its `error`).
public struct EvaluationRefusal: Error, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// A session's state as a `status` message tells it.
public enum ViewerStatus: Sendable, Equatable {
    case running, reconnecting, closed
    case failed(reason: String)
    case shuttingDown

    /// The status as it is sent: docs/protocol.md, "Status".
    public init(_ status: StreamStatus) {
        switch status {
        case .live: self = .running
        case .reconnecting: self = .reconnecting
        case .closed: self = .closed
        case .failed(let reason): self = .failed(reason: reason)
        }
    }

    var name: String {
        switch self {
        case .running: "running"
        case .reconnecting: "reconnecting"
        case .closed: "closed"
        case .failed: "failed"
        case .shuttingDown: "shutting_down"
        }
    }
}

/// A frame as a JSON viewer (`?format=json`) gets it: the platform's existing viewer's shape.
public struct JSONFrame: Encodable, Sendable {
    public var sessionID: String
    /// The JPEG, base64.
    public var screenshot: String
    public var width: Int
    public var height: Int
    public var sequence: UInt64
    public var capturedAtMicros: UInt64
    /// The page's URL, sent as null when unknown.
    public var url: String?

    public init(_ frame: Frame, sessionID: String) {
        self.sessionID = sessionID
        screenshot = frame.jpeg.data.base64EncodedString()
        (width, height, sequence, capturedAtMicros, url) = (frame.width, frame.height, frame.sequence, frame.captureTime, frame.url)
    }

    private enum CodingKeys: String, CodingKey {
        case sessionID = "browser_session_id", status, format, screenshot, width = "viewport_width"
        case height = "viewport_height", sequence, capturedAtMicros = "captured_at_us", url
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(sessionID, forKey: .sessionID)
        try container.encode("running", forKey: .status)
        try container.encode("jpeg", forKey: .format)
        try container.encode(screenshot, forKey: .screenshot)
        try container.encode(width, forKey: .width)
        try container.encode(height, forKey: .height)
        try container.encode(sequence, forKey: .sequence)
        try container.encode(capturedAtMicros, forKey: .capturedAtMicros)
        try container.encode(url, forKey: .url)
    }
}

/// Any JSON value, kept as sent (a ping's `t` is echoed whatever it is).
public enum JSONValue: Codable, Sendable, Equatable {
    case null, bool(Bool), int(Int64), double(Double), string(String), array([JSONValue]), object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Int64.self) { self = .int(value) }
        else if let value = try? container.decode(Double.self) { self = .double(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .null: try container.encodeNil()
        case .bool(let value): try container.encode(value)
        case .int(let value): try container.encode(value)
        case .double(let value): try container.encode(value)
        case .string(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        }
    }
}

extension Encodable {
    /// This message as the JSON text the viewer gets (slashes unescaped, as URLs read).
    func viewerJSON() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .withoutEscapingSlashes
        // Every value here encodes (finite numbers, strings, nested JSON that was decoded), so this cannot fail.
        return (try? encoder.encode(self)) ?? Data()
    }
}
