import ViewportCore

/// X keysyms (what RFB key events carry) as DOM keys for the browser.
enum Keysyms {
    static let alt = KeyInput.alt, control = KeyInput.control, meta = KeyInput.meta, shift = KeyInput.shift

    /// The modifier bit a keysym holds down, if it is a modifier key.
    static func modifier(_ keysym: UInt32) -> Int? {
        switch keysym {
        case 0xffe1, 0xffe2: shift
        case 0xffe3, 0xffe4: control
        case 0xffe9, 0xffea: alt
        case 0xffe7, 0xffe8, 0xffeb, 0xffec: meta
        default: nil
        }
    }

    /// The key event for `keysym` going down or up with `modifiers` held, or nil for a key the browser has no name
    /// for. Printable characters type their text unless Ctrl, Alt or Meta is held (then they are shortcuts).
    static func key(_ keysym: UInt32, down: Bool, modifiers: Int) -> KeyInput? {
        let kind: KeyInput.Kind = down ? .down : .up
        let name: String
        if let special = names[keysym] {
            name = special
        } else if let digit = keypad[keysym] {
            name = digit
        } else if (0x20...0x7e).contains(keysym), let scalar = Unicode.Scalar(keysym) {
            name = String(Character(scalar))
        } else if let scalar = (0xa0...0xff).contains(keysym) ? Unicode.Scalar(keysym)
                    : keysym & 0xff00_0000 == 0x0100_0000 ? Unicode.Scalar(keysym & 0x00ff_ffff) : nil {
            // Latin-1 and Unicode keysyms: no US key to name, but the text is what matters.
            let text = String(Character(scalar))
            let typesText = modifiers & (control | alt | meta) == 0 && down
            return KeyInput(kind: kind, key: text, code: "", text: typesText ? text : "", modifiers: modifiers)
        } else {
            return nil
        }
        return KeyInput.us(name, kind: kind, modifiers: modifiers, code: codes[keysym])
    }

    /// DOM key names of the non-printable keysyms the browser knows.
    private static let names: [UInt32: String] = {
        var table: [UInt32: String] = [
            0xff0d: "Enter", 0xff8d: "Enter", 0xff08: "Backspace", 0xff09: "Tab", 0xfe20: "Tab", 0xff1b: "Escape", 0xffff: "Delete",
            0xff63: "Insert", 0xff50: "Home", 0xff57: "End", 0xff55: "PageUp", 0xff56: "PageDown",
            0xff51: "ArrowLeft", 0xff52: "ArrowUp", 0xff53: "ArrowRight", 0xff54: "ArrowDown",
            0xffe1: "Shift", 0xffe2: "Shift", 0xffe3: "Control", 0xffe4: "Control", 0xffe9: "Alt", 0xffea: "Alt",
            0xffe7: "Meta", 0xffe8: "Meta", 0xffeb: "Meta", 0xffec: "Meta",
        ]
        for n in 1...12 { table[0xffbd + UInt32(n)] = "F\(n)" }
        return table
    }()

    /// The keypad's digits and operators, typed as their characters.
    private static let keypad: [UInt32: String] = {
        var table: [UInt32: String] = [0xffaa: "*", 0xffab: "+", 0xffad: "-", 0xffae: ".", 0xffaf: "/"]
        for n in 0...9 { table[0xffb0 + UInt32(n)] = "\(n)" }
        return table
    }()

    /// Keysyms whose DOM code is not the default one for their key (the right-hand modifiers, the keypad's Enter).
    private static let codes: [UInt32: String] = [
        0xff8d: "NumpadEnter", 0xffe2: "ShiftRight", 0xffe4: "ControlRight", 0xffea: "AltRight", 0xffe8: "MetaRight",
        0xffec: "MetaRight",
    ]
}
