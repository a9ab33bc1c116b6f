import CFFmpeg
import JPEGCodec
public import Foundation

/// Still-image conversions for step screenshots.
public enum ImageConversion {
    /// Decodes a JPEG and re-encodes it as lossless PNG (RGB, 8 bits per channel).
    public static func png(fromJPEG jpeg: Data) throws -> Data {
        _ = quietLibav
        let decoder: JPEGDecoder
        do { decoder = try JPEGDecoder() } catch { throw RecorderError("\(error)") }
        let frame = try VideoFrame()
        let f = frame.pointer
        try jpeg.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) in
            let header: JPEGHeader
            do { header = try decoder.header(bytes) } catch { throw RecorderError("\(error)") }
            f.pointee.width = header.width
            f.pointee.height = header.height
            f.pointee.format = AV_PIX_FMT_RGB24.rawValue
            try check(av_frame_get_buffer(f, 0), "av_frame_get_buffer")
            do {
                try decoder.decodePixels(bytes, header, into: f.pointee.data.0!, pitch: f.pointee.linesize.0,
                                         format: .rgb)
            } catch { throw RecorderError("\(error)") }
        }
        guard let codec = avcodec_find_encoder(AV_CODEC_ID_PNG) else {
            throw RecorderError("avcodec_find_encoder: no PNG encoder in libavcodec")
        }
        let context = try CodecContext(codec)
        let c = context.pointer
        c.pointee.width = f.pointee.width
        c.pointee.height = f.pointee.height
        c.pointee.pix_fmt = AV_PIX_FMT_RGB24
        c.pointee.time_base = AVRational(num: 1, den: 1)
        try check(avcodec_open2(c, codec, nil), "avcodec_open2 png")
        try check(avcodec_send_frame(c, f), "avcodec_send_frame png")
        try check(avcodec_send_frame(c, nil), "avcodec_send_frame png (drain)")
        let packet = try Packet()
        try check(avcodec_receive_packet(c, packet.pointer), "avcodec_receive_packet png")
        return Data(bytes: packet.pointer.pointee.data, count: Int(packet.pointer.pointee.size))
    }
}
