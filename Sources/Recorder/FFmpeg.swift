import CFFmpeg

/// Returns `code` when it is not an error, or throws one naming `call` with ffmpeg's text for the code.
@discardableResult
func check(_ code: Int32, _ call: @autoclosure () -> String) throws(RecorderError) -> Int32 {
    guard code < 0 else { return code }
    var text = [CChar](repeating: 0, count: Int(AV_ERROR_MAX_STRING_SIZE))
    av_strerror(code, &text, text.count)
    let message = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    throw RecorderError("\(call()): \(message) (\(code))")
}

/// Returns a non-nil result of an allocating C call, or throws naming `call`.
func allocated<T>(_ value: T?, _ call: String) throws(RecorderError) -> T {
    guard let value else { throw RecorderError("\(call) failed (out of memory?)") }
    return value
}

/// Keeps libav* quiet but for errors: they would otherwise print to the daemon's stderr (x264's summary at
/// every close, for one); failures reach callers as thrown ``RecorderError``s. Also bounds each of libav's
/// allocations at 256 MiB (its default is 2 GiB; a 4096x4096 RGBX picture is 64 MiB): the MP4 demuxer reserves
/// room for as many samples as a fragment's `trun` box announces, so a damaged recording of 1 kB could make
/// MP4Cut reserve gigabytes (found by the mp4cut fuzz target).
let quietLibav: Void = {
    av_log_set_level(AV_LOG_ERROR)
    av_max_alloc(256 << 20)
}()

/// The time base of recordings: 90 kHz, as in MPEG; a frame may last 13 h before a 32-bit sample duration overflows.
let mediaTimeBase = AVRational(num: 1, den: 90_000)
let microseconds = AVRational(num: 1, den: 1_000_000)

final class CodecContext {
    let pointer: UnsafeMutablePointer<AVCodecContext>
    init(_ codec: UnsafePointer<AVCodec>) throws(RecorderError) {
        pointer = try allocated(avcodec_alloc_context3(codec), "avcodec_alloc_context3")
    }
    deinit {
        var p: UnsafeMutablePointer<AVCodecContext>? = pointer
        avcodec_free_context(&p)
    }
}

final class FormatContext {
    let pointer: UnsafeMutablePointer<AVFormatContext>
    private let isInput: Bool

    /// An MP4 muxer for `path` (the file is opened by ``openFile(_:)``).
    init(mp4Output path: String) throws(RecorderError) {
        var p: UnsafeMutablePointer<AVFormatContext>?
        try check(avformat_alloc_output_context2(&p, nil, "mp4", path), "avformat_alloc_output_context2 \(path)")
        pointer = try allocated(p, "avformat_alloc_output_context2")
        isInput = false
    }

    /// The demuxer of the file at `path`, its header read.
    init(input path: String) throws(RecorderError) {
        var p: UnsafeMutablePointer<AVFormatContext>?
        try check(avformat_open_input(&p, path, nil, nil), "avformat_open_input \(path)")
        pointer = try allocated(p, "avformat_open_input")
        isInput = true
    }

    func openFile(_ path: String) throws(RecorderError) {
        try check(avio_open(&pointer.pointee.pb, path, AVIO_FLAG_WRITE), "avio_open \(path)")
    }

    deinit {
        if isInput {
            var p: UnsafeMutablePointer<AVFormatContext>? = pointer
            avformat_close_input(&p)
        } else {
            avio_closep(&pointer.pointee.pb)
            avformat_free_context(pointer)
        }
    }
}

final class VideoFrame {
    let pointer: UnsafeMutablePointer<AVFrame>
    init() throws(RecorderError) { pointer = try allocated(av_frame_alloc(), "av_frame_alloc") }
    deinit {
        var p: UnsafeMutablePointer<AVFrame>? = pointer
        av_frame_free(&p)
    }
}

final class Packet {
    let pointer: UnsafeMutablePointer<AVPacket>
    init() throws(RecorderError) { pointer = try allocated(av_packet_alloc(), "av_packet_alloc") }
    deinit {
        var p: UnsafeMutablePointer<AVPacket>? = pointer
        av_packet_free(&p)
    }
}

/// A swscale context, recreated only when the sizes change.
final class Scaler {
    private(set) var pointer: OpaquePointer?
    private var key: [Int32] = []

    /// The context that converts `source` pixels to full-range BT.601 YUV 4:2:0 of `width`×`height`.
    func context(from source: AVPixelFormat, _ sourceWidth: Int32, _ sourceHeight: Int32, to width: Int32,
                 _ height: Int32) throws(RecorderError) -> OpaquePointer {
        let wanted = [Int32(source.rawValue), sourceWidth, sourceHeight, width, height]
        if let pointer, key == wanted { return pointer }
        sws_freeContext(pointer)
        pointer = nil
        let context = try allocated(
            sws_getContext(sourceWidth, sourceHeight, source, width, height, AV_PIX_FMT_YUV420P, SWS_BILINEAR, nil,
                           nil, nil), "sws_getContext")
        pointer = context
        key = wanted
        let bt601 = sws_getCoefficients(SWS_CS_ITU601)
        // Returns -1 (not an AVERROR) when a conversion cannot take colour details; RGB to YUV always can.
        guard sws_setColorspaceDetails(context, bt601, 1, bt601, 1, 0, 1 << 16, 1 << 16) >= 0 else {
            throw RecorderError("sws_setColorspaceDetails failed")
        }
        return context
    }

    deinit { sws_freeContext(pointer) }
}
