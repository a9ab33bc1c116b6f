public import Foundation

/// The bytes of one captured frame, allocated once and shared by every consumer.
///
/// The allocation has ``headroom`` bytes in front of the payload so transports can prepend their own
/// headers without copying: the viewer wire header (``Frame/wireHeaderSize`` bytes) sits right before
/// the payload and the WebSocket layer writes its frame header in the bytes before that.
///
/// `@unchecked Sendable`: the payload is written only by the creator before the frame is published and is
/// read-only afterwards. The headroom is scratch space owned by the single WebSocket service thread.
public final class FrameBytes: @unchecked Sendable {
    /// Bytes reserved in front of the payload.
    public static let headroom = 64

    /// Start of the allocation (headroom included).
    public let allocation: UnsafeMutableRawPointer
    /// Payload length in bytes.
    public let count: Int

    /// Allocates `count` payload bytes (uninitialised) behind the headroom.
    public init(count: Int) {
        self.count = count
        allocation = .allocate(byteCount: Self.headroom + count, alignment: 16)
    }

    /// Copies `bytes` into a new allocation.
    public convenience init(copying bytes: some Collection<UInt8>) {
        self.init(count: bytes.count)
        UnsafeMutableRawBufferPointer(start: payload, count: count).copyBytes(from: bytes)
    }

    deinit { allocation.deallocate() }

    /// First payload byte.
    public var payload: UnsafeMutableRawPointer { allocation + Self.headroom }

    /// The payload as a read-only buffer.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: payload, count: count) }

    /// A copy of the payload.
    public var data: Data { Data(bytes) }
}

/// One captured frame: its JPEG bytes and what viewers and recorders need to know about it.
public final class Frame: Sendable {
    /// Size of the binary header that precedes the JPEG in a viewer's binary message (see docs/protocol.md).
    public static let wireHeaderSize = 24

    /// +1 per frame the source captured; gaps seen by a consumer are frames it skipped.
    public let sequence: UInt64
    /// Capture time, microseconds since the Unix epoch; never lower than the previous frame's.
    public let captureTime: UInt64
    public let width: Int
    public let height: Int
    /// URL of the page shown, when the source knows it.
    public let url: String?
    /// The JPEG, with the wire header already written in front of it.
    public let jpeg: FrameBytes
    /// The picture uncompressed, when the source had it so (an RFB source): `height` rows of `width` RGBX pixels
    /// (4 bytes each, R first). Consumers that need pixels (the VNC bridge, the recorder) take these exactly,
    /// instead of decoding the JPEG, which viewers get.
    public let pixels: FrameBytes?

    init(sequence: UInt64, captureTime: UInt64, width: Int, height: Int, url: String?, jpeg: FrameBytes,
         pixels: FrameBytes? = nil) {
        self.sequence = sequence
        self.captureTime = captureTime
        self.width = width
        self.height = height
        self.url = url
        self.jpeg = jpeg
        self.pixels = pixels.flatMap { $0.count == width * height * 4 ? $0 : nil }
        Self.writeWireHeader(into: jpeg.payload - Self.wireHeaderSize, sequence: sequence, captureTime: captureTime,
                             width: width, height: height)
    }

    /// Start of the viewer binary message: the wire header followed by the JPEG.
    public var wireMessage: UnsafeMutableRawPointer { jpeg.payload - Self.wireHeaderSize }
    /// Length of ``wireMessage``.
    public var wireMessageCount: Int { Self.wireHeaderSize + jpeg.count }

    /// Bytes the frame holds (JPEG and pixels), for queues bounded in bytes.
    public var byteCount: Int { jpeg.count + (pixels?.count ?? 0) }
    /// Free bytes in front of ``wireMessage``.
    public static var wireMessageHeadroom: Int { FrameBytes.headroom - wireHeaderSize }

    /// `VPF1`, sequence (u64), capture time in µs (u64), width (u16), height (u16); all big-endian.
    static func writeWireHeader(into p: UnsafeMutableRawPointer, sequence: UInt64, captureTime: UInt64,
                                width: Int, height: Int) {
        p.storeBytes(of: UInt32(0x5650_4631).bigEndian, as: UInt32.self)  // "VPF1"
        p.storeBytes(of: sequence.bigEndian, toByteOffset: 4, as: UInt64.self)
        p.storeBytes(of: captureTime.bigEndian, toByteOffset: 12, as: UInt64.self)
        p.storeBytes(of: UInt16(clamping: width).bigEndian, toByteOffset: 20, as: UInt16.self)
        p.storeBytes(of: UInt16(clamping: height).bigEndian, toByteOffset: 22, as: UInt16.self)
    }
}

/// Wall-clock time in microseconds since the Unix epoch.
public func wallClockMicros() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
}

/// Wall-clock microseconds of a peer's time in seconds since 1970, or nil when it is not a finite time between
/// 1970 and 2200 (a peer's number is never trusted to convert).
public func wallClockMicros(fromSeconds seconds: Double) -> UInt64? {
    guard seconds.isFinite, seconds >= 0, seconds < 7_258_118_400 else { return nil }
    return UInt64(seconds * 1_000_000)
}
