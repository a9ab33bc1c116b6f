import CFFmpeg
import Dispatch

/// The metadata key (in the moov, so it survives a crash) holding a recording's origin: the wall-clock time, in µs
/// since the Unix epoch, of its time 0.
let originMetadataKey = "com.viewportd.origin_us"

/// Writes a fragmented MP4 whose fragments are cut by the caller, so that a killed writer leaves a file that plays
/// up to its last complete fragment.
final class FragmentWriter {
    private let format: FormatContext
    private var stream: UnsafeMutablePointer<AVStream>?
    private var streamTimeBase = mediaTimeBase
    /// When the first packet not yet in a complete fragment was written.
    private(set) var pendingSince: DispatchTime?
    /// Bytes in the file: the fragments cut so far.
    private(set) var bytesWritten: UInt64 = 0
    /// Whether the latest packet written is a keyframe.
    private(set) var lastPacketIsKey = false

    /// Creates (truncates) the file at once, so a path that cannot be written fails before any frame comes.
    init(path: String) throws(RecorderError) {
        _ = quietLibav
        format = try FormatContext(mp4Output: path)
        try format.openFile(path)
    }

    var isStarted: Bool { stream != nil }

    /// Adds the encoder's stream and writes the header: an empty moov holding `origin`, the wall-clock time of the
    /// file's time 0, which must be the first packet's time (the muxer would move the first packet to 0 anyway).
    func start(encoder: CodecContext, origin: UInt64) throws(RecorderError) {
        let s = try allocated(avformat_new_stream(format.pointer, nil), "avformat_new_stream")
        try check(avcodec_parameters_from_context(s.pointee.codecpar, encoder.pointer),
                  "avcodec_parameters_from_context")
        s.pointee.time_base = encoder.pointer.pointee.time_base
        av_dict_set(&format.pointer.pointee.metadata, originMetadataKey, "\(origin)", 0)
        var options: OpaquePointer?
        defer { av_dict_free(&options) }
        // empty_moov: a moov without samples, written now; frag_custom: fragments end only when cutFragment() says
        // so; use_metadata_tags: keeps our own metadata key.
        av_dict_set(&options, "movflags", "empty_moov+default_base_moof+frag_custom+use_metadata_tags", 0)
        try check(avformat_write_header(format.pointer, &options), "avformat_write_header")
        stream = s
        streamTimeBase = s.pointee.time_base
        try flush()
    }

    /// Queues an encoded packet (90 kHz timestamps) into the current fragment.
    func write(_ packet: UnsafeMutablePointer<AVPacket>) throws(RecorderError) {
        av_packet_rescale_ts(packet, mediaTimeBase, streamTimeBase)
        packet.pointee.stream_index = 0
        try check(av_write_frame(format.pointer, packet), "av_write_frame")
        lastPacketIsKey = packet.pointee.flags & AV_PKT_FLAG_KEY != 0
        if pendingSince == nil { pendingSince = .now() }
    }

    /// Writes the pending packets to the file as a complete fragment and hands it to the kernel.
    func cutFragment() throws(RecorderError) {
        guard pendingSince != nil else { return }
        try check(av_write_frame(format.pointer, nil), "av_write_frame (cut fragment)")
        try flush()
        pendingSince = nil
        // The muxer wrote the fragment's last sample with a guessed duration (the next frame's time is unknown) and
        // would move the next fragment's start to where that guess ends; marked discontinuous, the next fragment
        // starts (tfdt) at its first frame's own time instead.
        try check(av_opt_set(format.pointer.pointee.priv_data, "movflags", "+frag_discont", 0), "movflags frag_discont")
    }

    private func flush() throws(RecorderError) {
        let pb = format.pointer.pointee.pb!
        avio_flush(pb)
        try check(pb.pointee.error, "writing the recording")
        bytesWritten = UInt64(max(0, avio_tell(pb)))
    }

    /// Closes the file after a failure, as it is: no trailer (the muxer may seek back and rewrite the header, which a
    /// failing disk would leave half-written), so every complete fragment stays readable.
    func abandon() {
        guard format.pointer.pointee.pb != nil else { return }
        avio_closep(&format.pointer.pointee.pb)
    }

    /// Writes the last fragment and the trailer, and closes the file.
    func finish() throws(RecorderError) {
        guard format.pointer.pointee.pb != nil else { return }
        if isStarted {
            try check(av_write_trailer(format.pointer), "av_write_trailer")
            try flush()
        }
        try check(avio_closep(&format.pointer.pointee.pb), "avio_closep")
    }
}
