private import CFFmpeg
private import CTurboJPEG
public import Foundation

/// Still-image conversions for step screenshots.
public enum ImageConversion {
    /// Decodes a JPEG and re-encodes it as lossless PNG (RGB, 8 bits per channel).
    public static func png(fromJPEG jpeg: Data) throws -> Data {
        guard let decoder = tjInitDecompress() else { throw RecorderError("tjInitDecompress failed") }
        defer { tjDestroy(decoder) }
        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        var rgb = [UInt8]()
        try jpeg.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            let bytes = raw.bindMemory(to: UInt8.self).baseAddress
            guard tjDecompressHeader3(decoder, bytes, UInt(raw.count), &width, &height, &subsampling, &colorspace) == 0,
                  width > 0, height > 0
            else { throw RecorderError("not a JPEG: \(String(cString: tjGetErrorStr2(decoder)))") }
            rgb = [UInt8](repeating: 0, count: Int(width) * Int(height) * 3)
            guard tjDecompress2(decoder, bytes, UInt(raw.count), &rgb, width, 0, height, Int32(TJPF_RGB.rawValue), 0) == 0
            else { throw RecorderError("JPEG decode failed: \(String(cString: tjGetErrorStr2(decoder)))") }
        }

        guard let codec = avcodec_find_encoder(AV_CODEC_ID_PNG), let context = avcodec_alloc_context3(codec) else {
            throw RecorderError("no PNG encoder in libavcodec")
        }
        var owned: UnsafeMutablePointer<AVCodecContext>? = context
        defer { avcodec_free_context(&owned) }
        context.pointee.width = width
        context.pointee.height = height
        context.pointee.pix_fmt = AV_PIX_FMT_RGB24
        context.pointee.time_base = AVRational(num: 1, den: 1)
        var frameOwner = av_frame_alloc(), packetOwner = av_packet_alloc()
        defer {
            av_frame_free(&frameOwner)
            av_packet_free(&packetOwner)
        }
        guard avcodec_open2(context, codec, nil) >= 0, let frame = frameOwner, let packet = packetOwner else {
            throw RecorderError("cannot open the PNG encoder")
        }
        frame.pointee.width = width
        frame.pointee.height = height
        frame.pointee.format = AV_PIX_FMT_RGB24.rawValue
        return try rgb.withUnsafeMutableBufferPointer { pixels in
            frame.pointee.data.0 = pixels.baseAddress
            frame.pointee.linesize.0 = width * 3
            guard avcodec_send_frame(context, frame) >= 0, avcodec_send_frame(context, nil) >= 0,
                  avcodec_receive_packet(context, packet) >= 0
            else { throw RecorderError("PNG encode failed") }
            return Data(bytes: packet.pointee.data, count: Int(packet.pointee.size))
        }
    }
}
