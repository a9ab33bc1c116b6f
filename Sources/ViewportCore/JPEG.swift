/// Reads the pixel size from a JPEG's start-of-frame marker without decoding it.
public enum JPEG {
    /// Width and height, or nil when `bytes` is not a JPEG with a start-of-frame marker.
    public static func dimensions(_ bytes: UnsafeRawBufferPointer) -> (width: Int, height: Int)? {
        guard bytes.count > 4, bytes[0] == 0xFF, bytes[1] == 0xD8 else { return nil }
        var i = 2
        while i + 9 < bytes.count {
            guard bytes[i] == 0xFF else { return nil }
            let marker = bytes[i + 1]
            if marker == 0xFF { i += 1; continue }  // fill byte
            let length = Int(bytes[i + 2]) << 8 | Int(bytes[i + 3])
            // SOF0...SOF15 carry the size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
            if (0xC0...0xCF).contains(marker), marker != 0xC4, marker != 0xC8, marker != 0xCC {
                let height = Int(bytes[i + 5]) << 8 | Int(bytes[i + 6])
                let width = Int(bytes[i + 7]) << 8 | Int(bytes[i + 8])
                return width > 0 && height > 0 ? (width, height) : nil
            }
            if marker == 0xDA || length < 2 { return nil }  // scan data before any SOF: malformed
            i += 2 + length
        }
        return nil
    }
}
