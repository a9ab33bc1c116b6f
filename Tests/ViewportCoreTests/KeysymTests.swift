import Testing
import ViewportCore

@Suite("X keysyms and DOM keys")
struct KeysymTests {
    @Test func keysymsNameTheirDOMKeysAndBack() {
        for (keysym, key) in [(UInt32(0xff0d), "Enter"), (0xff51, "ArrowLeft"), (0xffe1, "Shift"), (0xffc2, "F5"),
                              (0x61, "a"), (0x41, "A"), (0x21, "!"), (0xe9, "é"), (0x0100_20ac, "€")] {
            #expect(Keysym.domKey(keysym) == key)
            #expect(Keysym.keysym(key) == keysym)
        }
        // Several keysyms name one key; going back gives the main keyboard's left-hand one.
        #expect(Keysym.domKey(0xff8d) == "Enter" && Keysym.domCode(0xff8d) == "NumpadEnter")
        #expect(Keysym.domKey(0xffe2) == "Shift" && Keysym.domCode(0xffe2) == "ShiftRight")
        #expect(Keysym.domKey(0xfe20) == "Tab" && Keysym.keysym("Tab") == 0xff09)
        #expect(Keysym.domKey(0xffb5) == "5" && Keysym.keysym("5") == 0x35)
        #expect(Keysym.keysym("\n") == 0xff0d && Keysym.keysym("\t") == 0xff09)
        #expect(Keysym.keysym("\u{7}") == nil && Keysym.domKey(0xfd01) == nil)
        #expect(Keysym.modifier(0xffe4) == KeyInput.control && Keysym.modifier(0x61) == nil)
    }
}
