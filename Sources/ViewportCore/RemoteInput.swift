/// Input for the browser from a person watching (a VNC client with control, a WebSocket viewer in control).
/// Sinks produce it, the session's source delivers it; coordinates are in the pixels of the frames the hub
/// carries, and the source maps them onto the page.
public enum RemoteInput: Sendable, Equatable {
    case mouse(MouseInput)
    /// A wheel turn at (x, y): positive `deltaY` scrolls down, in CSS pixels.
    case wheel(x: Double, y: Double, deltaX: Double, deltaY: Double)
    case key(KeyInput)
    /// Load `url` (http or https) in the active tab.
    case navigate(url: String)
    /// Insert `text` as if typed (a paste).
    case paste(text: String)
}

/// A mouse button press, release or move.
public struct MouseInput: Sendable, Equatable {
    public enum Kind: String, Sendable { case pressed = "mousePressed", released = "mouseReleased", moved = "mouseMoved" }
    public enum Button: String, Sendable { case none, left, middle, right }

    public var kind: Kind
    public var x: Double
    public var y: Double
    public var button: Button
    /// 0-3.
    public var clickCount: Int
    /// Alt 1, Ctrl 2, Meta 4, Shift 8 (CDP's bits).
    public var modifiers: Int

    public init(kind: Kind, x: Double, y: Double, button: Button = .none, clickCount: Int = 0, modifiers: Int = 0) {
        (self.kind, self.x, self.y, self.button, self.clickCount, self.modifiers) = (kind, x, y, button, clickCount, modifiers)
    }
}

/// A key going down or up, or a character.
public struct KeyInput: Sendable, Equatable {
    public enum Kind: String, Sendable { case down = "keyDown", up = "keyUp", char = "char" }

    public var kind: Kind
    /// DOM `key` ("a", "Enter", "ArrowLeft", "Shift").
    public var key: String
    /// DOM `code` ("KeyA", "Enter", "ArrowLeft", "ShiftLeft").
    public var code: String
    /// Text the key types, if any ("a", "\r").
    public var text: String
    /// Windows virtual key code (65 for A, 13 for Enter), 0 if unknown.
    public var virtualKeyCode: Int
    /// Alt 1, Ctrl 2, Meta 4, Shift 8.
    public var modifiers: Int

    public init(kind: Kind, key: String, code: String, text: String = "", virtualKeyCode: Int = 0, modifiers: Int = 0) {
        (self.kind, self.key, self.code, self.text, self.virtualKeyCode, self.modifiers) =
            (kind, key, code, text, virtualKeyCode, modifiers)
    }
}

extension KeyInput {
    /// CDP modifier bits.
    public static let alt = 1, control = 2, meta = 4, shift = 8

    /// The event for the DOM key `key` on a US keyboard ("a", "A", "!", "Enter", "ArrowLeft", "Shift", "F5"), with
    /// its DOM code (`code` overrides it, e.g. "ShiftRight") and Windows virtual key code. A printable key types its
    /// text on keyDown unless Ctrl, Alt or Meta is held; Enter types "\r". Nil for a key this table does not know.
    public static func us(_ key: String, kind: Kind, modifiers: Int, code: String? = nil) -> KeyInput? {
        let shortcut = modifiers & (control | alt | meta) != 0
        if let (defaultCode, vk) = named[key] {
            let text = key == "Enter" && kind != .up ? "\r" : ""
            return KeyInput(kind: kind, key: key, code: code ?? defaultCode, text: text, virtualKeyCode: vk,
                            modifiers: modifiers)
        }
        guard key.unicodeScalars.count == 1, let ascii = key.unicodeScalars.first?.value else { return nil }
        let layout: (code: String, vk: Int)?
        switch ascii {
        case 0x61...0x7a: layout = ("Key" + key.uppercased(), Int(ascii) - 32)
        case 0x41...0x5a: layout = ("Key" + key, Int(ascii))
        case 0x30...0x39: layout = ("Digit" + key, Int(ascii))
        default: layout = punctuation[key]
        }
        guard let layout else { return nil }
        return KeyInput(kind: kind, key: key, code: code ?? layout.code, text: shortcut || kind == .up ? "" : key,
                        virtualKeyCode: layout.vk, modifiers: modifiers)
    }

    private static let named: [String: (code: String, vk: Int)] = {
        var table: [String: (code: String, vk: Int)] = [
            "Enter": ("Enter", 13), "Backspace": ("Backspace", 8), "Tab": ("Tab", 9), "Escape": ("Escape", 27),
            "Delete": ("Delete", 46), "Insert": ("Insert", 45), "Home": ("Home", 36), "End": ("End", 35),
            "PageUp": ("PageUp", 33), "PageDown": ("PageDown", 34), "ArrowLeft": ("ArrowLeft", 37),
            "ArrowUp": ("ArrowUp", 38), "ArrowRight": ("ArrowRight", 39), "ArrowDown": ("ArrowDown", 40),
            "Shift": ("ShiftLeft", 16), "Control": ("ControlLeft", 17), "Alt": ("AltLeft", 18), "Meta": ("MetaLeft", 91),
        ]
        for n in 1...12 { table["F\(n)"] = ("F\(n)", 111 + n) }
        return table
    }()

    private static let punctuation: [String: (code: String, vk: Int)] = {
        var table: [String: (code: String, vk: Int)] = [" ": ("Space", 32)]
        for (plain, shifted, code, vk) in [
            ("-", "_", "Minus", 189), ("=", "+", "Equal", 187), ("[", "{", "BracketLeft", 219),
            ("]", "}", "BracketRight", 221), ("\\", "|", "Backslash", 220), (";", ":", "Semicolon", 186),
            ("'", "\"", "Quote", 222), (",", "<", "Comma", 188), (".", ">", "Period", 190), ("/", "?", "Slash", 191),
            ("`", "~", "Backquote", 192),
        ] {
            table[plain] = (code, vk)
            table[shifted] = (code, vk)
        }
        for (index, shifted) in [")", "!", "@", "#", "$", "%", "^", "&", "*", "("].enumerated() {
            table[shifted] = ("Digit\(index)", 48 + index)
        }
        return table
    }()
}

/// Where a session's input goes (its source); set by the daemon, which alone knows both sides.
public protocol InputTarget: AnyObject, Sendable {
    /// Delivers `input` to the browser; returns at once.
    func deliver(_ input: RemoteInput)
}

/// A source that runs JavaScript in the session's page (the CDP source; a VNC source does not).
public protocol ScriptTarget: AnyObject, Sendable {
    /// Runs `expression` in the page being shown, awaiting the promise it returns, and gives its value as JSON
    /// text (`JSON.stringify`'s; undefined is `null`) of at most `maxResultBytes`. Gives up after `timeout`
    /// seconds; never blocks the caller's thread.
    func evaluate(_ expression: String, timeout: Double, maxResultBytes: Int) async -> Result<String, ScriptFailure>
}

/// Why an evaluation gave no value.
public enum ScriptFailure: Error, Sendable, Equatable {
    /// The expression threw, or its promise rejected: the exception's text.
    case threw(String)
    case timedOut
    /// The value's JSON is longer than the cap (`bytes` long, or at least that).
    case tooLarge(bytes: Int)
    /// The browser is not attached, has no page shown, or the value has no JSON form: why.
    case failed(String)
}

/// What a source is doing, as reported to its owner.
public enum SourceState: Sendable, Equatable {
    case connecting
    /// Attached; frames flow while somebody watches.
    case connected
    case reconnecting(reason: String)
    case failed(reason: String)
}

/// A session's capture (CDP screencast or RFB client): publishes frames to its hub and delivers input.
public protocol FrameSource: InputTarget {
    /// Connects and starts capturing while the hub has consumers.
    func start()
    /// Disconnects; no state change is reported afterwards.
    func stop()
}
