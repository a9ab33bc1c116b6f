import CTurboJPEG

/// A JPEG failure, with libturbojpeg's text.
public struct JPEGError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// What a JPEG's header says.
public struct JPEGHeader: Sendable {
    public var width: Int32
    public var height: Int32
    var subsampling: Int32
    var colorspace: Int32

    /// YCbCr with 4:2:0 chroma: the planes a 4:2:0 video encoder takes as they are.
    public var isYCbCr420: Bool {
        subsampling == Int32(TJSAMP_420.rawValue) && colorspace == Int32(TJCS_YCbCr.rawValue)
    }
}

/// Packed pixel layouts for decoding and encoding.
public enum PixelFormat: Sendable {
    /// 8-bit R, G, B.
    case rgb
    /// R, G, B and an unused byte: what an RFB framebuffer at depth 24 holds on little-endian machines.
    case rgbx
    /// B, G, R and an unused byte.
    case bgrx

    public var bytesPerPixel: Int { self == .rgb ? 3 : 4 }

    var turbo: Int32 {
        switch self {
        case .rgb: Int32(TJPF_RGB.rawValue)
        case .rgbx: Int32(TJPF_RGBX.rawValue)
        case .bgrx: Int32(TJPF_BGRX.rawValue)
        }
    }
}

/// A libturbojpeg decompressor. Not thread-safe: one per thread.
public final class JPEGDecoder {
    private let handle: tjhandle

    public init() throws(JPEGError) {
        guard let handle = tjInitDecompress() else { throw JPEGError("tjInitDecompress failed (out of memory?)") }
        self.handle = handle
    }

    deinit { tjDestroy(handle) }

    public func header(_ jpeg: UnsafeRawBufferPointer) throws(JPEGError) -> JPEGHeader {
        var h = JPEGHeader(width: 0, height: 0, subsampling: 0, colorspace: 0)
        guard tjDecompressHeader3(handle, jpeg.baseAddress, UInt(jpeg.count), &h.width, &h.height, &h.subsampling,
                                  &h.colorspace) == 0, (1...16384).contains(h.width), (1...16384).contains(h.height)
        else { throw JPEGError("tjDecompressHeader3: \(String(cString: tjGetErrorStr2(handle)))") }
        return h
    }

    /// Decodes the Y, Cb and Cr planes as they are coded (no upsampling, no colour conversion). The fast integer
    /// IDCT saves 5 % of the decode; after H.264 at CRF 28 its error does not show (SSIM -0.0001).
    public func decodePlanes(_ jpeg: UnsafeRawBufferPointer, _ header: JPEGHeader,
                             into planes: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>,
                             strides: UnsafeMutablePointer<Int32>) throws(JPEGError) {
        try check(tjDecompressToYUVPlanes(handle, jpeg.baseAddress, UInt(jpeg.count), planes, header.width, strides,
                                          header.height, TJFLAG_FASTDCT), "tjDecompressToYUVPlanes")
    }

    /// Decodes to packed pixels of `format`, rows `pitch` bytes apart.
    public func decodePixels(_ jpeg: UnsafeRawBufferPointer, _ header: JPEGHeader,
                             into pixels: UnsafeMutablePointer<UInt8>, pitch: Int32, format: PixelFormat)
        throws(JPEGError)
    {
        try check(tjDecompress2(handle, jpeg.baseAddress, UInt(jpeg.count), pixels, header.width, pitch, header.height,
                                format.turbo, 0), "tjDecompress2")
    }

    /// A failed call throws with libturbojpeg's text; a warning (a truncated or slightly corrupt JPEG) still
    /// decoded the picture and passes.
    private func check(_ result: Int32, _ call: String) throws(JPEGError) {
        guard result < 0, tjGetErrorCode(handle) != Int32(TJERR_WARNING.rawValue) else { return }
        throw JPEGError("\(call): \(String(cString: tjGetErrorStr2(handle)))")
    }
}

/// A libturbojpeg compressor (4:2:0, like Chrome's screencast). Not thread-safe: one per thread.
public final class JPEGEncoder {
    private let handle: tjhandle

    public init() throws(JPEGError) {
        guard let handle = tjInitCompress() else { throw JPEGError("tjInitCompress failed (out of memory?)") }
        self.handle = handle
    }

    deinit { tjDestroy(handle) }

    /// Compresses `width`×`height` pixels of `format`, rows `pitch` bytes apart, at `quality` (1-100).
    public func encode(_ pixels: UnsafePointer<UInt8>, width: Int, height: Int, pitch: Int, format: PixelFormat,
                       quality: Int) throws(JPEGError) -> [UInt8]
    {
        var buffer: UnsafeMutablePointer<UInt8>?
        var size: UInt = 0
        defer { tjFree(buffer) }
        guard tjCompress2(handle, pixels, Int32(width), Int32(pitch), Int32(height), format.turbo, &buffer, &size,
                          Int32(TJSAMP_420.rawValue), Int32(quality), TJFLAG_FASTDCT) == 0, let buffer
        else { throw JPEGError("tjCompress2: \(String(cString: tjGetErrorStr2(handle)))") }
        return Array(UnsafeBufferPointer(start: buffer, count: Int(size)))
    }
}
