import Foundation
import ViewportCore

/// One evaluation of an expression in a page: `Runtime.evaluate` awaiting the promise it returns (the browser's own
/// `timeout` stops a script that never yields), then, for an object, its JSON made in the page by `JSON.stringify`
/// with the length checked there, so that a value over the cap never crosses the connection; then its objects
/// released. Ends once, with a value, a failure, or ``timedOut()``.
///
/// `@unchecked Sendable`: used only on the service thread (its timeout hops back onto it).
final class Evaluation: @unchecked Sendable {
    typealias Outcome = Result<String, ScriptFailure>

    /// Called on the object with the cap: its JSON, or the JSON's length when over the cap.
    static let stringify = """
        function (cap) { const json = JSON.stringify(this); \
        return json === undefined ? "null" : json.length > cap ? json.length : json; }
        """

    private let client: CDPClient
    private let page: CDPSession
    private let group = "viewportd-evaluate-\(UUID().uuidString)"
    private var finish: ((Outcome) -> Void)?
    /// The command whose reply is awaited.
    private var pending: Int?
    private let started = ContinuousClock.now
    private let timeout: Double

    init(client: CDPClient, page: CDPSession, timeout: Double, finish: @escaping (Outcome) -> Void) {
        self.client = client
        self.page = page
        self.timeout = timeout
        self.finish = finish
    }

    func start(_ expression: String, maxResultBytes: Int) {
        pending = client.send(Evaluate(expression: expression, objectGroup: group, timeout: timeout * 1000), to: page) {
            [self] reply, _ in
            pending = nil
            guard let reply else {
                // The browser answers an error when its timeout stopped the script.
                let late = ContinuousClock.now - started >= .seconds(timeout * 0.9)
                return end(.failure(late ? .timedOut : .failed("the page could not run it (it may be navigating)")))
            }
            if let exception = reply.exceptionDetails { return end(.failure(.threw(Self.text(of: exception)))) }
            let value = reply.result
            guard let objectId = value.objectId else { return end(Self.json(of: value, maxResultBytes: maxResultBytes)) }
            pending = client.send(CallFunctionOn(functionDeclaration: Self.stringify, objectId: objectId,
                                                 arguments: [.init(value: maxResultBytes)]), to: page) { [self] reply, _ in
                pending = nil
                guard let reply else { return end(.failure(.failed("the page could not serialize the value"))) }
                if let exception = reply.exceptionDetails {
                    return end(.failure(.failed("the value has no JSON form: \(Self.text(of: exception))")))
                }
                switch reply.result.value {
                case .string(let json): end(json.utf8.count > maxResultBytes ? .failure(.tooLarge(bytes: json.utf8.count)) : .success(json))
                case .number(let length): end(.failure(.tooLarge(bytes: Int(length))))
                default: end(.failure(.failed("the page could not serialize the value")))
                }
            }
            if pending == nil { end(.failure(.failed("the browser connection closed"))) }
        }
        if pending == nil { end(.failure(.failed("the browser connection closed"))) }
    }

    /// Gives up waiting: a reply that comes later is dropped.
    func timedOut() {
        if let pending { client.forget(pending) }
        end(.failure(.timedOut))
    }

    private func end(_ outcome: Outcome) {
        guard let finish else { return }
        self.finish = nil
        client.send(ReleaseObjectGroup(objectGroup: group), to: page)
        finish(outcome)
    }

    /// What `JSON.stringify` makes of a primitive: NaN and the infinities are null, a BigInt has no JSON form.
    static func json(of value: RemoteObject, maxResultBytes: Int) -> Outcome {
        let json: String
        switch (value.value, value.unserializableValue) {
        case (.string(let text), _):
            json = String(decoding: (try? JSONEncoder().encode(text)) ?? Data("null".utf8), as: UTF8.self)
        case (.number(let number), _):
            json = number == number.rounded() && abs(number) < 1e15 ? String(Int64(number)) : "\(number)"
        case (.bool(let flag), _):
            json = flag ? "true" : "false"
        case (_, let special?) where value.type == "bigint":
            return .failure(.failed("the value has no JSON form: a BigInt (\(special))"))
        case (_, "-0"):
            json = "0"
        default:
            json = "null"  // null, undefined, a symbol, NaN, ±Infinity
        }
        return json.utf8.count > maxResultBytes ? .failure(.tooLarge(bytes: json.utf8.count)) : .success(json)
    }

    /// An exception's text: an error's description (message and stack), a thrown primitive's value, else CDP's text.
    static func text(of exception: ExceptionDetails) -> String {
        let text: String
        switch exception.exception?.value {
        case .string(let thrown): text = thrown
        case .number(let thrown): text = "\(thrown)"
        case .bool(let thrown): text = "\(thrown)"
        case .null, nil: text = exception.exception?.description ?? exception.text
        }
        return String(text.prefix(2000))
    }
}
