import Foundation
import ViewportCore

/// H.264 as x264 writes it with a global header (Annex B: NAL units after start codes) turned into what MP4 and
/// WebCodecs take (AVC format: each NAL unit after its 4-byte big-endian length, the SPS and PPS in an `avcC`).
enum AVCFormat {
    /// The NAL units of an Annex B stream (start codes 00 00 01 or 00 00 00 01 removed).
    static func nalUnits(_ bytes: UnsafeRawBufferPointer) -> [UnsafeRawBufferPointer] {
        var units: [UnsafeRawBufferPointer] = []
        var start: Int?
        var i = 0
        let n = bytes.count
        while i + 2 < n {
            if bytes[i] == 0, bytes[i + 1] == 0, bytes[i + 2] == 1 {
                if let start, case let unit = trimmed(bytes, start, i), !unit.isEmpty { units.append(unit) }
                i += 3
                start = i
            } else {
                i += 1
            }
        }
        if let start, start < n { units.append(UnsafeRawBufferPointer(rebasing: bytes[start..<n])) }
        return units
    }

    /// The unit from `start` to `end`, less the zero byte of a 4-byte start code that follows it.
    private static func trimmed(_ bytes: UnsafeRawBufferPointer, _ start: Int, _ end: Int) -> UnsafeRawBufferPointer {
        var end = end
        while end > start, bytes[end - 1] == 0 { end -= 1 }
        return UnsafeRawBufferPointer(rebasing: bytes[start..<end])
    }

    /// The configuration of a stream whose global header (x264's extradata) is `extradata`, or nil without an SPS
    /// and a PPS.
    static func config(extradata: UnsafeRawBufferPointer, width: Int, height: Int) -> VideoConfig? {
        let units = nalUnits(extradata)
        guard let sps = units.first(where: { $0.first.map { $0 & 0x1F } == 7 }), sps.count >= 4,
              let pps = units.first(where: { $0.first.map { $0 & 0x1F } == 8 }) else { return nil }
        let (profile, constraints, level) = (sps[1], sps[2], sps[3])
        var avcC = Data([1, profile, constraints, level, 0xFF, 0xE1])  // 4-byte lengths; one SPS
        avcC.append(contentsOf: [UInt8(sps.count >> 8), UInt8(sps.count & 0xFF)])
        avcC.append(contentsOf: sps)
        avcC.append(contentsOf: [1, UInt8(pps.count >> 8), UInt8(pps.count & 0xFF)])
        avcC.append(contentsOf: pps)
        if [100, 110, 122, 144].contains(profile) {
            // The High profiles' extension: 4:2:0 (chroma_format_idc 1), 8-bit luma and chroma, no SPS extension;
            // the encoder is only given 8-bit YUV 4:2:0.
            avcC.append(contentsOf: [0xFD, 0xF8, 0xF8, 0])
        }
        let codec = "avc1." + [profile, constraints, level].map { String(format: "%02x", $0) }.joined()
        return VideoConfig(codec: codec, avcC: avcC, codedWidth: width, codedHeight: height)
    }

    /// The access unit in `packet` (Annex B) in AVC format, in a new buffer with room for the wire header in front.
    static func accessUnit(_ packet: UnsafeRawBufferPointer) -> FrameBytes {
        let units = nalUnits(packet)
        let bytes = FrameBytes(count: units.reduce(0) { $0 + 4 + $1.count })
        var p = bytes.payload
        for unit in units {
            p.storeBytes(of: UInt32(unit.count).bigEndian, as: UInt32.self)
            (p + 4).copyMemory(from: unit.baseAddress!, byteCount: unit.count)
            p += 4 + unit.count
        }
        return bytes
    }
}
