import Foundation
import ViewportCore

/// Why a viewer's input message was refused (sent back as `{"type":"error","message":...}`).
struct InputRefusal: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

/// Turns a viewer's input message into browser input, validating it: coordinates clamped to the frame, click
/// counts 0-3, key and code at most 32 characters, modifiers masked to 4 bits, URLs http(s) of at most 2083
/// characters, pastes at most 1 MiB. Anything else is refused and nothing reaches the browser.
enum ViewerInput {
    static let maxPasteBytes = 1 << 20

    static func parse(_ message: [String: Any], frameWidth: Int, frameHeight: Int) throws(InputRefusal) -> RemoteInput {
        let type = message["type"] as? String ?? ""
        switch type {
        case "mouse":
            let event = try string(message, "event")
            guard let kind = MouseInput.Kind(rawValue: event) else {
                throw InputRefusal("mouse event must be mousePressed, mouseReleased or mouseMoved")
            }
            let buttonName = try optionalString(message, "button") ?? (kind == .moved ? "none" : "left")
            guard let button = MouseInput.Button(rawValue: buttonName) else {
                throw InputRefusal("button must be none, left, middle or right")
            }
            let clicks = try int(message, "click_count") ?? (kind == .moved ? 0 : 1)
            guard (0...3).contains(clicks) else { throw InputRefusal("click_count must be 0 to 3") }
            let (x, y) = try point(message, frameWidth, frameHeight)
            return .mouse(MouseInput(kind: kind, x: x, y: y, button: button, clickCount: clicks,
                                     modifiers: try modifiers(message)))
        case "wheel":
            let (x, y) = try point(message, frameWidth, frameHeight)
            let dx = try number(message, "delta_x") ?? 0, dy = try number(message, "delta_y") ?? 0
            return .wheel(x: x, y: y, deltaX: max(-10_000, min(10_000, dx)), deltaY: max(-10_000, min(10_000, dy)))
        case "key":
            let event = try string(message, "event")
            guard let kind = KeyInput.Kind(rawValue: event) else { throw InputRefusal("key event must be keyDown, keyUp or char") }
            let key = try string(message, "key")
            let code = try optionalString(message, "code")
            let text = try optionalString(message, "text")
            // Unicode scalars, not characters: one character may carry any number of combining marks.
            guard key.unicodeScalars.count <= 32, (code?.unicodeScalars.count ?? 0) <= 32,
                  (text?.unicodeScalars.count ?? 0) <= 32
            else {
                throw InputRefusal("key, code and text must be at most 32 characters")
            }
            let modifiers = try modifiers(message)
            var input = KeyInput.us(key, kind: kind, modifiers: modifiers, code: code)
                ?? KeyInput(kind: kind, key: key, code: code ?? "", modifiers: modifiers)
            if let text { input.text = kind == .up ? "" : text }
            if kind == .char, input.text.isEmpty { input.text = key }
            return .key(input)
        case "navigate":
            let url = try string(message, "url")
            guard url.utf8.count <= 2083, let components = URLComponents(string: url),
                  ["http", "https"].contains(components.scheme?.lowercased() ?? ""), components.host?.isEmpty == false
            else { throw InputRefusal("url must be an http:// or https:// URL of at most 2083 characters") }
            return .navigate(url: url)
        case "paste":
            let text = try string(message, "text")
            guard text.utf8.count <= maxPasteBytes else { throw InputRefusal("paste text must be at most 1 MiB") }
            return .paste(text: text)
        default:
            throw InputRefusal("unknown message type \"\(type.prefix(64))\"")
        }
    }

    /// The types `parse` handles.
    static let types: Set = ["mouse", "wheel", "key", "navigate", "paste"]

    private static func point(_ m: [String: Any], _ width: Int, _ height: Int) throws(InputRefusal) -> (Double, Double) {
        guard let x = try number(m, "x"), let y = try number(m, "y") else { throw InputRefusal("x and y are required") }
        return (max(0, min(x, Double(max(0, width - 1)))), max(0, min(y, Double(max(0, height - 1)))))
    }

    private static func modifiers(_ m: [String: Any]) throws(InputRefusal) -> Int { (try int(m, "modifiers") ?? 0) & 0xF }

    private static func string(_ m: [String: Any], _ key: String) throws(InputRefusal) -> String {
        guard let value = try optionalString(m, key) else { throw InputRefusal("\(key) is required") }
        return value
    }

    private static func optionalString(_ m: [String: Any], _ key: String) throws(InputRefusal) -> String? {
        guard let raw = m[key], !(raw is NSNull) else { return nil }
        guard let text = raw as? String else { throw InputRefusal("\(key) must be a string") }
        return text
    }

    private static func number(_ m: [String: Any], _ key: String) throws(InputRefusal) -> Double? {
        guard let raw = m[key], !(raw is NSNull) else { return nil }
        guard let number = raw as? NSNumber, String(cString: number.objCType) != "c", number.doubleValue.isFinite else {
            throw InputRefusal("\(key) must be a number")
        }
        return number.doubleValue
    }

    private static func int(_ m: [String: Any], _ key: String) throws(InputRefusal) -> Int? {
        guard let value = try number(m, key) else { return nil }
        guard value == value.rounded(), abs(value) < 1e9 else { throw InputRefusal("\(key) must be an integer") }
        return Int(value)
    }
}
