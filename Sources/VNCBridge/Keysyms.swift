import ViewportCore

/// A VNC client's key events as browser key events.
enum Keysyms {
    /// The key event for `keysym` going down or up with `modifiers` held, or nil for a key the browser has no name
    /// for. Printable characters type their text unless Ctrl, Alt or Meta is held (then they are shortcuts);
    /// characters off the US layout (Latin-1, Unicode keysyms) type their text with no key code.
    static func key(_ keysym: UInt32, down: Bool, modifiers: Int) -> KeyInput? {
        guard let name = Keysym.domKey(keysym) else { return nil }
        let kind: KeyInput.Kind = down ? .down : .up
        if let input = KeyInput.us(name, kind: kind, modifiers: modifiers, code: Keysym.domCode(keysym)) { return input }
        let typesText = modifiers & (KeyInput.control | KeyInput.alt | KeyInput.meta) == 0 && down
        return KeyInput(kind: kind, key: name, code: "", text: typesText ? name : "", modifiers: modifiers)
    }
}
