import CFFmpeg

/// libx264 through libavcodec, set up so that every picture sent comes out as a packet at once.
///
/// Holding nothing back lets a run end at any moment without draining (and reopening) the encoder, and it is the
/// cheap choice too. On 1046 captured frames of the scroll fixture (1280×577, 99 KB JPEGs) the recorder, against
/// ffmpeg's CLI with `-preset veryfast -crf 28` VFR, wrote 0.77× the bytes at 0.0016 less luma SSIM, for 0.38-0.52×
/// its CPU in paired runs.
final class H264Encoder {
    let context: CodecContext
    private let packet: Packet

    /// x264 options beyond the preset, each because:
    /// - `force-cfr=1`: with VFR input x264 holds each frame until the next one arrives (to know its duration for
    ///   rate control); timestamps still pass through untouched;
    /// - `bframes=0:rc-lookahead=0:sync-lookahead=0:sliced-threads=1`: no frame is delayed either (no macroblock
    ///   tree without lookahead: on scrolling text, about 30 % more bytes at the same CRF and SSIM);
    /// - `scenecut=0:weightp=0`: then x264 needs no low-resolution analysis of each frame at all; screen content has
    ///   no fades, and a tab switch costs a large P frame instead of an I frame;
    /// - `8x8dct=0`: on text the 4×4 transform alone gave fewer bytes at a higher SSIM;
    /// - `me=dia`: about 5 % less encoding CPU for 3.6 % more bytes and the same SSIM;
    /// - keyframes every 600 frames (10 s at 60 fps) rather than 250: runs get forced IDRs, and a periodic I frame of
    ///   a text page costs as much as 40 P frames.
    static let x264Params =
        "force-cfr=1:bframes=0:rc-lookahead=0:sync-lookahead=0:sliced-threads=1:scenecut=0:weightp=0:8x8dct=0:me=dia"
    static let keyframeInterval: Int32 = 600
    /// x264 takes frames as if at this rate for its rate control (force-cfr); close to what Chrome sends.
    static let nominalFrameRate = AVRational(num: 60, den: 1)

    init(width: Int32, height: Int32, settings: EncoderSettings) throws(RecorderError) {
        _ = quietLibav
        guard let codec = avcodec_find_encoder_by_name("libx264") else {
            throw RecorderError("avcodec_find_encoder_by_name: libx264 is not available")
        }
        context = try CodecContext(codec)
        packet = try Packet()
        let c = context.pointer
        c.pointee.width = width
        c.pointee.height = height
        c.pointee.pix_fmt = AV_PIX_FMT_YUV420P
        // JPEG's YCbCr, untouched: full range, BT.601 matrix, sRGB's primaries and transfer.
        c.pointee.color_range = AVCOL_RANGE_JPEG
        c.pointee.colorspace = AVCOL_SPC_BT470BG
        c.pointee.color_primaries = AVCOL_PRI_BT709
        c.pointee.color_trc = AVCOL_TRC_IEC61966_2_1
        c.pointee.time_base = mediaTimeBase
        c.pointee.framerate = Self.nominalFrameRate
        c.pointee.gop_size = Self.keyframeInterval
        c.pointee.max_b_frames = 0
        c.pointee.thread_count = Int32(max(1, settings.threads))
        c.pointee.flags |= AV_CODEC_FLAG_GLOBAL_HEADER
        let options: [(String, String)] = [
            ("preset", settings.preset), ("crf", "\(settings.crf)"), ("forced-idr", "1"),
            ("x264-params", Self.x264Params),
        ]
        for (name, value) in options {
            try check(av_opt_set(c.pointee.priv_data, name, value, 0), "libx264 option \(name)=\(value)")
        }
        try check(avcodec_open2(c, codec, nil), "avcodec_open2 libx264 \(width)x\(height)")
    }

    /// Encodes `picture` at `pts` (90 kHz), as an IDR frame when `keyframe`, and hands the packet to `write`.
    func encode(_ picture: VideoFrame, pts: Int64, keyframe: Bool,
                write: (UnsafeMutablePointer<AVPacket>) throws(RecorderError) -> Void) throws(RecorderError) {
        picture.pointer.pointee.pts = pts
        picture.pointer.pointee.pict_type = keyframe ? AV_PICTURE_TYPE_I : AV_PICTURE_TYPE_NONE
        try check(avcodec_send_frame(context.pointer, picture.pointer), "avcodec_send_frame")
        try receive(write)
    }

    private func receive(_ write: (UnsafeMutablePointer<AVPacket>) throws(RecorderError) -> Void)
        throws(RecorderError)
    {
        while true {
            let result = avcodec_receive_packet(context.pointer, packet.pointer)
            if result == vpd_averror_eagain() || result == vpd_averror_eof() { return }
            try check(result, "avcodec_receive_packet")
            defer { av_packet_unref(packet.pointer) }
            try write(packet.pointer)
        }
    }
}
