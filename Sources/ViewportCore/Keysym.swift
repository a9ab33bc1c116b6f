/// X keysyms (what RFB key events carry) and DOM key names, both ways: the VNC bridge turns its clients'
/// keysyms into browser keys, the RFB source turns browser keys into keysyms for its server.
public enum Keysym {
    /// The DOM key of `keysym`: a name ("Enter", "ArrowLeft", "Shift", "F5") or the character it types
    /// (printable ASCII, the keypad's digits and operators, Latin-1 and Unicode keysyms). Nil if none.
    public static func domKey(_ keysym: UInt32) -> String? {
        if let name = names[keysym] ?? keypad[keysym] { return name }
        let scalar: Unicode.Scalar? = switch keysym {
        case 0x20...0x7e, 0xa0...0xff: Unicode.Scalar(keysym)
        case _ where keysym & 0xff00_0000 == 0x0100_0000: Unicode.Scalar(keysym & 0x00ff_ffff)
        default: nil
        }
        return scalar.map { String(Character($0)) }
    }

    /// The DOM code of `keysym` where it is not the default one for its key (right-hand modifiers, keypad Enter).
    public static func domCode(_ keysym: UInt32) -> String? { codes[keysym] }

    /// The keysym for a DOM key: named keys (left-hand for modifiers), "\n", "\r" and "\t" as Enter and Tab,
    /// characters as themselves (ASCII and Latin-1) or as Unicode keysyms.
    public static func keysym(_ key: String) -> UInt32? {
        if let named = keysyms[key] { return named }
        guard key.unicodeScalars.count == 1, let value = key.unicodeScalars.first?.value, value >= 0x20,
              value != 0x7f else { return nil }
        return value <= 0xff ? value : 0x0100_0000 + value
    }

    /// The CDP modifier bit (``KeyInput/alt`` ...) a keysym holds down, if it is a modifier key.
    public static func modifier(_ keysym: UInt32) -> Int? {
        switch keysym {
        case 0xffe1, 0xffe2: KeyInput.shift
        case 0xffe3, 0xffe4: KeyInput.control
        case 0xffe9, 0xffea: KeyInput.alt
        case 0xffe7, 0xffe8, 0xffeb, 0xffec: KeyInput.meta
        default: nil
        }
    }

    /// DOM key names of the non-printable keysyms the browser knows.
    private static let names: [UInt32: String] = {
        var table: [UInt32: String] = [
            0xff0d: "Enter", 0xff8d: "Enter", 0xff08: "Backspace", 0xff09: "Tab", 0xfe20: "Tab", 0xff1b: "Escape",
            0xffff: "Delete", 0xff63: "Insert", 0xff50: "Home", 0xff57: "End", 0xff55: "PageUp", 0xff56: "PageDown",
            0xff51: "ArrowLeft", 0xff52: "ArrowUp", 0xff53: "ArrowRight", 0xff54: "ArrowDown",
            0xffe1: "Shift", 0xffe2: "Shift", 0xffe3: "Control", 0xffe4: "Control", 0xffe9: "Alt", 0xffea: "Alt",
            0xffe7: "Meta", 0xffe8: "Meta", 0xffeb: "Meta", 0xffec: "Meta",
        ]
        for n in 1...12 { table[0xffbd + UInt32(n)] = "F\(n)" }
        return table
    }()

    /// The keysym of each name: the first (left-hand, main keyboard) of those that have it.
    private static let keysyms: [String: UInt32] = {
        var table = Dictionary(names.map { ($0.value, $0.key) }) { min($0, $1) }
        table["Tab"] = 0xff09
        table["Enter"] = 0xff0d
        (table["\r"], table["\n"], table["\t"]) = (0xff0d, 0xff0d, 0xff09)
        return table
    }()

    /// The keypad's digits and operators, typed as their characters.
    private static let keypad: [UInt32: String] = {
        var table: [UInt32: String] = [0xffaa: "*", 0xffab: "+", 0xffad: "-", 0xffae: ".", 0xffaf: "/"]
        for n in 0...9 { table[0xffb0 + UInt32(n)] = "\(n)" }
        return table
    }()

    private static let codes: [UInt32: String] = [
        0xff8d: "NumpadEnter", 0xffe2: "ShiftRight", 0xffe4: "ControlRight", 0xffea: "AltRight", 0xffe8: "MetaRight",
        0xffec: "MetaRight",
    ]
}
