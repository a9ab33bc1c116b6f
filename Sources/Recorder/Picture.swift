import CFFmpeg
import JPEGCodec

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
        header.isYCbCr420 && header.width & ~1 == width && header.height & ~1 == height
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
                do { try decoder.decodePlanes(jpeg, header, into: planes, strides: strides) } catch {
                    throw RecorderError("\(error)")
                }
            }
            return
        }
        let pitch = Int(header.width) * 4, size = pitch * Int(header.height)
        if pixels.count < size {
            pixels.deallocate()
            pixels = .allocate(byteCount: size, alignment: 64)
        }
        do {
            try decoder.decodePixels(jpeg, header, into: pixels.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                     pitch: Int32(pitch), format: .bgrx)
        } catch { throw RecorderError("\(error)") }
        let context = try scaler.context(from: AV_PIX_FMT_BGR0, header.width, header.height, to: width, height)
        var source: [UnsafePointer<UInt8>?] = [UnsafePointer(pixels.baseAddress!.assumingMemoryBound(to: UInt8.self)),
                                               nil, nil, nil]
        var sourceStrides: [Int32] = [Int32(pitch), 0, 0, 0]
        try withPlanes(f) { planes, strides throws(RecorderError) in
            try check(sws_scale(context, &source, &sourceStrides, 0, header.height, planes, strides), "sws_scale")
        }
    }

    /// Converts `width`×`height` RGBX pixels (rows `width × 4` bytes) into the picture, scaling if their size
    /// differs.
    func load(rgbx pixels: UnsafeMutableRawPointer, width sourceWidth: Int32, height sourceHeight: Int32)
        throws(RecorderError)
    {
        if av_frame_is_writable(frame.pointer) == 0 {
            av_frame_unref(frame.pointer)
            try allocate()
        }
        let context = try scaler.context(from: AV_PIX_FMT_RGB0, sourceWidth, sourceHeight, to: width, height)
        var source: [UnsafePointer<UInt8>?] = [UnsafePointer(pixels.assumingMemoryBound(to: UInt8.self)), nil, nil, nil]
        var sourceStrides: [Int32] = [sourceWidth * 4, 0, 0, 0]
        try withPlanes(frame.pointer) { planes, strides throws(RecorderError) in
            try check(sws_scale(context, &source, &sourceStrides, 0, sourceHeight, planes, strides), "sws_scale")
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
