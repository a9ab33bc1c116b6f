import CFFmpeg
import CTurboJPEG

/// What a JPEG's header says.
struct JPEGHeader {
    var width: Int32
    var height: Int32
    var subsampling: Int32
    var colorspace: Int32
}

/// A libturbojpeg decompressor.
final class JPEGDecoder {
    private let handle: tjhandle

    init() throws(RecorderError) { handle = try allocated(tjInitDecompress(), "tjInitDecompress") }
    deinit { tjDestroy(handle) }

    func header(_ jpeg: UnsafeRawBufferPointer) throws(RecorderError) -> JPEGHeader {
        var h = JPEGHeader(width: 0, height: 0, subsampling: 0, colorspace: 0)
        guard tjDecompressHeader3(handle, jpeg.baseAddress, UInt(jpeg.count), &h.width, &h.height, &h.subsampling,
                                  &h.colorspace) == 0, (1...16384).contains(h.width), (1...16384).contains(h.height)
        else { throw RecorderError("tjDecompressHeader3: \(String(cString: tjGetErrorStr2(handle)))") }
        return h
    }

    /// Decodes the Y, Cb and Cr planes as they are coded (no upsampling, no colour conversion). The fast integer
    /// IDCT saves 5 % of the decode; after H.264 at CRF 28 its error does not show (SSIM -0.0001).
    func decodePlanes(_ jpeg: UnsafeRawBufferPointer, _ header: JPEGHeader,
                      into planes: UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>,
                      strides: UnsafeMutablePointer<Int32>) throws(RecorderError) {
        try check(tjDecompressToYUVPlanes(handle, jpeg.baseAddress, UInt(jpeg.count), planes, header.width, strides,
                                          header.height, TJFLAG_FASTDCT), "tjDecompressToYUVPlanes")
    }

    /// Decodes to packed pixels of `format` (`TJPF_BGRX`, `TJPF_RGB`, ...), rows `pitch` bytes apart.
    func decodePixels(_ jpeg: UnsafeRawBufferPointer, _ header: JPEGHeader, into pixels: UnsafeMutablePointer<UInt8>,
                      pitch: Int32, format: TJPF) throws(RecorderError) {
        try check(tjDecompress2(handle, jpeg.baseAddress, UInt(jpeg.count), pixels, header.width, pitch, header.height,
                                Int32(format.rawValue), 0), "tjDecompress2")
    }

    /// A failed call throws with libturbojpeg's text; a warning (a truncated or slightly corrupt JPEG) still
    /// decoded the picture and passes.
    private func check(_ result: Int32, _ call: String) throws(RecorderError) {
        guard result < 0, tjGetErrorCode(handle) != Int32(TJERR_WARNING.rawValue) else { return }
        throw RecorderError("\(call): \(String(cString: tjGetErrorStr2(handle)))")
    }
}

/// The encoder's input picture (YUV 4:2:0, full-range BT.601, `width`×`height`), refilled from each JPEG in place.
///
/// A 4:2:0 JPEG of the picture's size, or one pixel more (Chrome's 1280×577 becomes 1280×576), is decoded by
/// libturbojpeg straight into the frame's planes: the JPEG's own YCbCr, already full-range BT.601, so no colour
/// conversion and no upsampling. Any other JPEG (another size after a resize, another subsampling) is decoded to
/// BGRX and scaled into the picture by swscale.
final class Picture {
    let width: Int32
    let height: Int32
    let frame: VideoFrame
    private let scaler = Scaler()
    private var pixels = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    init(width: Int32, height: Int32) throws(RecorderError) {
        self.width = width
        self.height = height
        frame = try VideoFrame()
        try allocate()
    }

    deinit { pixels.deallocate() }

    /// True when `header` describes a JPEG that decodes straight into the picture.
    func fits(_ header: JPEGHeader) -> Bool {
        header.subsampling == Int32(TJSAMP_420.rawValue) && header.colorspace == Int32(TJCS_YCbCr.rawValue)
            && header.width & ~1 == width && header.height & ~1 == height
    }

    func load(_ jpeg: UnsafeRawBufferPointer, _ header: JPEGHeader, decoder: JPEGDecoder) throws(RecorderError) {
        // The encoder copies each picture before avcodec_send_frame returns, so this is the rare case of a
        // reference still held; a fresh buffer then keeps the extra row and column the fast path needs.
        if av_frame_is_writable(frame.pointer) == 0 {
            av_frame_unref(frame.pointer)
            try allocate()
        }
        let f = frame.pointer
        if fits(header) {
            try withPlanes(f) { planes, strides throws(RecorderError) in
                try decoder.decodePlanes(jpeg, header, into: planes, strides: strides)
            }
            return
        }
        let pitch = Int(header.width) * 4, size = pitch * Int(header.height)
        if pixels.count < size {
            pixels.deallocate()
            pixels = .allocate(byteCount: size, alignment: 64)
        }
        try decoder.decodePixels(jpeg, header, into: pixels.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                 pitch: Int32(pitch), format: TJPF_BGRX)
        let context = try scaler.context(from: AV_PIX_FMT_BGR0, header.width, header.height, to: width, height)
        var source: [UnsafePointer<UInt8>?] = [UnsafePointer(pixels.baseAddress!.assumingMemoryBound(to: UInt8.self)),
                                               nil, nil, nil]
        var sourceStrides: [Int32] = [Int32(pitch), 0, 0, 0]
        try withPlanes(f) { planes, strides throws(RecorderError) in
            try check(sws_scale(context, &source, &sourceStrides, 0, header.height, planes, strides), "sws_scale")
        }
    }

    /// Buffers with a spare row and column, so a JPEG one pixel larger than the picture decodes in place.
    private func allocate() throws(RecorderError) {
        let f = frame.pointer
        f.pointee.format = AV_PIX_FMT_YUV420P.rawValue
        f.pointee.width = width + 2
        f.pointee.height = height + 2
        try check(av_frame_get_buffer(f, 0), "av_frame_get_buffer")
        f.pointee.width = width
        f.pointee.height = height
        f.pointee.color_range = AVCOL_RANGE_JPEG
        f.pointee.colorspace = AVCOL_SPC_BT470BG
    }

    private func withPlanes(
        _ f: UnsafeMutablePointer<AVFrame>,
        _ body: (UnsafeMutablePointer<UnsafeMutablePointer<UInt8>?>, UnsafeMutablePointer<Int32>) throws(RecorderError)
            -> Void
    ) throws(RecorderError) {
        try withUnsafeMutablePointer(to: &f.pointee.data) { data throws(RecorderError) in
            try withUnsafeMutablePointer(to: &f.pointee.linesize) { lines throws(RecorderError) in
                try body(UnsafeMutableRawPointer(data).assumingMemoryBound(to: UnsafeMutablePointer<UInt8>?.self),
                         UnsafeMutableRawPointer(lines).assumingMemoryBound(to: Int32.self))
            }
        }
    }
}
