import Foundation
public import ViewportCore

/// Why a viewer's message was refused (sent back as `{"type":"error","message":...}`).
public struct InputRefusal: Error, Sendable, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
}

/// A viewer's input message (`mouse`, `wheel`, `key`, `navigate`, `paste`), validated as it is decoded: click
/// counts 0-3, key and code at most 32 characters, modifiers masked to 4 bits, deltas within ±10 000, URLs http(s)
/// of at most 2083 characters, pastes at most 1 MiB. Decoding throws an `InputRefusal` saying what is wrong, and
/// nothing reaches the browser. Coordinates are clamped to the frame when it is delivered (`clamped`).
public struct ViewerInput: Decodable, Sendable, Equatable {
    /// The input with the coordinates as sent.
    public var input: RemoteInput

    static let maxPasteBytes = 1 << 20

    /// The `type`s of input messages.
    static let types: Set = ["mouse", "wheel", "key", "navigate", "paste"]

    public init(_ input: RemoteInput) { self.input = input }

    /// The input with its coordinates clamped to a `width` × `height` frame.
    public func clamped(width: Int, height: Int) -> RemoteInput {
        func clamp(_ value: Double, _ size: Int) -> Double { max(0, min(value, Double(max(0, size - 1)))) }
        switch input {
        case .mouse(var mouse):
            (mouse.x, mouse.y) = (clamp(mouse.x, width), clamp(mouse.y, height))
            return .mouse(mouse)
        case .wheel(let x, let y, let deltaX, let deltaY):
            return .wheel(x: clamp(x, width), y: clamp(y, height), deltaX: deltaX, deltaY: deltaY)
        case .key, .navigate, .paste:
            return input
        }
    }

    public init(from decoder: any Decoder) throws {
        let m = Fields(try decoder.container(keyedBy: Fields.Key.self))
        switch try m.optionalString("type") ?? "" {
        case "mouse":
            let event = try m.string("event")
            guard let kind = MouseInput.Kind(rawValue: event) else {
                throw InputRefusal("mouse event must be mousePressed, mouseReleased or mouseMoved")
            }
            let buttonName = try m.optionalString("button") ?? (kind == .moved ? "none" : "left")
            guard let button = MouseInput.Button(rawValue: buttonName) else {
                throw InputRefusal("button must be none, left, middle or right")
            }
            let clicks = try m.int("click_count") ?? (kind == .moved ? 0 : 1)
            guard (0...3).contains(clicks) else { throw InputRefusal("click_count must be 0 to 3") }
            let (x, y) = try m.point()
            input = .mouse(MouseInput(kind: kind, x: x, y: y, button: button, clickCount: clicks, modifiers: try m.modifiers()))
        case "wheel":
            let (x, y) = try m.point()
            let dx = try m.number("delta_x") ?? 0, dy = try m.number("delta_y") ?? 0
            input = .wheel(x: x, y: y, deltaX: max(-10_000, min(10_000, dx)), deltaY: max(-10_000, min(10_000, dy)))
        case "key":
            let event = try m.string("event")
            guard let kind = KeyInput.Kind(rawValue: event) else { throw InputRefusal("key event must be keyDown, keyUp or char") }
            let key = try m.string("key")
            let code = try m.optionalString("code")
            let text = try m.optionalString("text")
            // Unicode scalars, not characters: one character may carry any number of combining marks.
            guard key.unicodeScalars.count <= 32, (code?.unicodeScalars.count ?? 0) <= 32,
                  (text?.unicodeScalars.count ?? 0) <= 32
            else {
                throw InputRefusal("key, code and text must be at most 32 characters")
            }
            let modifiers = try m.modifiers()
            var keyInput = KeyInput.us(key, kind: kind, modifiers: modifiers, code: code)
                ?? KeyInput(kind: kind, key: key, code: code ?? "", modifiers: modifiers)
            if let text { keyInput.text = kind == .up ? "" : text }
            if kind == .char, keyInput.text.isEmpty { keyInput.text = key }
            input = .key(keyInput)
        case "navigate":
            let url = try m.string("url")
            guard url.utf8.count <= 2083, let components = URLComponents(string: url),
                  ["http", "https"].contains(components.scheme?.lowercased() ?? ""), components.host?.isEmpty == false
            else { throw InputRefusal("url must be an http:// or https:// URL of at most 2083 characters") }
            input = .navigate(url: url)
        case "paste":
            let text = try m.string("text")
            guard text.utf8.count <= Self.maxPasteBytes else { throw InputRefusal("paste text must be at most 1 MiB") }
            input = .paste(text: text)
        case let type:
            throw InputRefusal("unknown message type \"\(type.prefix(64))\"")
        }
    }

    /// The message's fields, each read as the protocol types it; a field of the wrong type is refused by name. A
    /// null field counts as absent.
    private struct Fields {
        struct Key: CodingKey {
            let stringValue: String
            init(stringValue: String) { self.stringValue = stringValue }
            var intValue: Int? { nil }
            init?(intValue: Int) { nil }
        }

        let container: KeyedDecodingContainer<Key>
        init(_ container: KeyedDecodingContainer<Key>) { self.container = container }

        func point() throws(InputRefusal) -> (Double, Double) {
            guard let x = try number("x"), let y = try number("y") else { throw InputRefusal("x and y are required") }
            return (x, y)
        }

        func modifiers() throws(InputRefusal) -> Int { (try int("modifiers") ?? 0) & 0xF }

        func string(_ key: String) throws(InputRefusal) -> String {
            guard let value = try optionalString(key) else { throw InputRefusal("\(key) is required") }
            return value
        }

        func optionalString(_ key: String) throws(InputRefusal) -> String? {
            do { return try container.decodeIfPresent(String.self, forKey: Key(stringValue: key)) } catch {
                throw InputRefusal("\(key) must be a string")
            }
        }

        func number(_ key: String) throws(InputRefusal) -> Double? {
            // A JSON number only: the decoder refuses true/false and strings for a Double.
            let value: Double?
            do { value = try container.decodeIfPresent(Double.self, forKey: Key(stringValue: key)) } catch {
                throw InputRefusal("\(key) must be a number")
            }
            guard value?.isFinite != false else { throw InputRefusal("\(key) must be a number") }
            return value
        }

        func int(_ key: String) throws(InputRefusal) -> Int? {
            guard let value = try number(key) else { return nil }
            guard value == value.rounded(), abs(value) < 1e9 else { throw InputRefusal("\(key) must be an integer") }
            return Int(value)
        }
    }
}
