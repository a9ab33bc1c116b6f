import CFFmpeg
import Foundation

/// Turns fragmented recordings into regular, seekable MP4 files by stream copy.
public enum MP4Cut {
    /// A chapter mark at a wall-clock time.
    public struct Chapter: Sendable, Equatable {
        public var time: UInt64
        public var title: String
        public init(time: UInt64, title: String) {
            self.time = time
            self.title = title
        }
    }

    /// What a cut produced.
    public struct Summary: Sendable, Equatable {
        public var frames: Int
        public var durationMicros: UInt64
        public var width: Int
        public var height: Int
        public init(frames: Int, durationMicros: UInt64, width: Int, height: Int) {
            self.frames = frames
            self.durationMicros = durationMicros
            self.width = width
            self.height = height
        }
    }

    /// Copies the part of `fragmented` from the keyframe at or before `from` (or its first frame, if `from` is
    /// earlier) up to `to` (wall-clock µs; nil: the file's last activity) into a faststart MP4 at `output`, with
    /// `chapters`; the last frame lasts until `to`. A file cut short by a crash is read up to its last complete
    /// fragment. When no frame was captured before `to`, the cut is the first frame after it, lasting `to - from`.
    public static func cut(fragmented: String, output: String, from: UInt64, to: UInt64?, chapters: [Chapter])
        throws -> Summary
    {
        if let to, to <= from { throw RecorderError("cut \(fragmented): ends (\(to)) before it starts (\(from))") }
        let readable = try readableLength(of: fragmented)
        guard readable > 0 else { throw RecorderError("\(fragmented) holds no frame: nothing was recorded") }
        _ = quietLibav
        // A box torn at the end (a crash or a full disk mid-write) can make the demuxer refuse the whole file while it
        // reads its header: it sees only the complete boxes (libavformat's subfile protocol).
        let size = (try? FileManager.default.attributesOfItem(atPath: fragmented)[.size] as? Int64) ?? readable
        let torn = readable < size && !fragmented.contains(",")
        let input = try FormatContext(input: torn ? "subfile,,start,0,end,\(readable),,:\(fragmented)" : fragmented)
        guard let value = av_dict_get(input.pointer.pointee.metadata, originMetadataKey, nil, 0)?.pointee.value,
              let origin = UInt64(String(cString: value))
        else { throw RecorderError("\(fragmented) has no \(originMetadataKey): not a viewportd recording") }
        let index = try check(av_find_best_stream(input.pointer, AVMEDIA_TYPE_VIDEO, -1, -1, nil, 0),
                              "av_find_best_stream \(fragmented)")
        let stream = input.pointer.pointee.streams[Int(index)]!
        let timeBase = stream.pointee.time_base
        // Times further than this from the file's 0 (in its time base) are damage, and clamped or refused: far
        // enough from Int64's ends that the cut's sums and differences of them cannot overflow.
        let tickLimit: Int64 = 1 << 60
        func ticks(_ wallClock: UInt64) -> Int64 {
            max(-tickLimit, min(tickLimit, av_rescale_q(Int64(bitPattern: wallClock &- origin), microseconds, timeBase)))
        }
        let first = ticks(from), last = to.map(ticks)
        // Without `to`, the end is the writer's last sign of life.
        let end = try last ?? ticks(lastActivity(of: fragmented))

        var cut: CutWriter?
        // From the latest keyframe at or before `from` until the cut starts.
        var lead: [Packet] = []
        func start(at pts: Int64) throws(RecorderError) -> CutWriter {
            let writer = try CutWriter(output: output, input: stream, start: pts, end: end, chapters: chapters.map {
                (ticks($0.time), $0.title)
            })
            for earlier in lead { try writer.add(earlier) }
            lead.removeAll()
            return writer
        }
        let packet = try Packet()
        var previousPTS = -tickLimit
        while av_read_frame(input.pointer, packet.pointer) >= 0 {
            defer { av_packet_unref(packet.pointer) }
            let p = packet.pointer.pointee
            guard p.stream_index == index else { continue }
            // A torn tail (the writer was killed mid-fragment) ends what is readable, whatever the demuxer makes of it.
            guard p.pos >= 0, p.pos + Int64(p.size) <= readable else { break }
            let pts = p.pts != vpd_nopts_value() ? p.pts : p.dts
            // So does a time going back (the recorder writes no B-frames) or out of bounds: a damaged file.
            guard pts >= previousPTS, pts <= tickLimit else { break }
            previousPTS = pts
            if cut == nil {
                let key = p.flags & AV_PKT_FLAG_KEY != 0
                if key && pts <= first { lead.removeAll() }
                if lead.isEmpty && !key { continue }  // undecodable without an earlier keyframe
                if pts <= first {
                    lead.append(try Packet(referencing: packet))
                    continue
                }
                cut = try start(at: lead.first?.pointer.pointee.pts ?? pts)
            }
            if let last, pts >= last, cut!.frames > 0 { break }
            try cut!.add(packet)
        }
        if cut == nil {
            guard let pts = lead.first?.pointer.pointee.pts else { throw RecorderError("\(fragmented) holds no frame") }
            cut = try start(at: pts)
        }
        let lastPTS = cut!.lastPTS
        let until = if let last {
            // No frame before `to`, only the first after it: it lasts as long as the run.
            lastPTS < last ? last : lastPTS + (last - first)
        } else {
            // The file's modification time is coarse (a clock tick): a frame written just before it may carry a
            // later capture time.
            max(end, lastPTS + 1)
        }
        return try cut!.finish(until: until)
    }

    /// The wall-clock time (µs) of the last write to a fragmented recording: its end when the writer died.
    public static func lastActivity(of fragmented: String) throws -> UInt64 {
        var info = stat()
        guard stat(fragmented, &info) == 0 else {
            throw RecorderError("stat \(fragmented): \(String(cString: strerror(errno)))")
        }
        return UInt64(info.st_mtim.tv_sec) * 1_000_000 + UInt64(info.st_mtim.tv_nsec) / 1000
    }

    /// The length of the file's complete top-level boxes: a box running past the end is a torn write.
    static func readableLength(of path: String) throws -> Int64 {
        try topLevelBoxes(of: path).last?.range.upperBound ?? 0
    }

    /// A top-level box of an MP4 file: its four-character type and its bytes in the file.
    public struct Box: Sendable, Equatable {
        public var type: String
        public var range: Range<Int64>
    }

    /// The complete top-level boxes of the file from `offset` (a box boundary) on; a box running past the end (a
    /// write in progress, or torn) and whatever follows it are left out. Reads only the boxes' headers.
    public static func topLevelBoxes(of path: String, from offset: Int64 = 0) throws -> [Box] {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        let size = Int64(try handle.seekToEnd())
        var offset = offset
        var boxes: [Box] = []
        while offset + 8 <= size {
            try handle.seek(toOffset: UInt64(offset))
            let header = [UInt8](try handle.read(upToCount: 16) ?? Data())
            guard header.count >= 8 else { break }
            func bigEndian(_ range: Range<Int>) -> Int64 { header[range].reduce(0) { $0 << 8 | Int64($1) } }
            var length = bigEndian(0..<4)
            if length == 1 {
                guard header.count == 16 else { break }
                length = bigEndian(8..<16)
            } else if length == 0 {
                length = size - offset  // "to the end of the file"
            }
            guard length >= 8, length <= size - offset else { break }  // the length is the file's word: no overflow
            let type = String(decoding: header[4..<8].map { (0x20...0x7e).contains($0) ? $0 : 0x3f }, as: UTF8.self)
            boxes.append(Box(type: type, range: offset..<(offset + length)))
            offset += length
        }
        return boxes
    }
}

extension Packet {
    /// A new reference to `other`'s data.
    convenience init(referencing other: Packet) throws(RecorderError) {
        try self.init()
        try check(av_packet_ref(pointer, other.pointer), "av_packet_ref")
    }
}

/// The output side of a cut: a faststart MP4 with chapters, its timestamps shifted to start at 0, each packet
/// written once the next one tells its duration.
private final class CutWriter {
    private let format: FormatContext
    private let stream: UnsafeMutablePointer<AVStream>
    private let timeBase: AVRational
    private let start: Int64
    private let held: Packet
    private var holding = false
    private(set) var frames = 0
    /// The last frame's time, in the input's time base (before the shift).
    var lastPTS: Int64 { start + held.pointer.pointee.pts }

    /// `start`, `end` and the chapters' times are in `input`'s time base; each chapter lasts until the next one,
    /// the last until `end`.
    init(output: String, input: UnsafeMutablePointer<AVStream>, start: Int64, end: Int64,
         chapters: [(time: Int64, title: String)]) throws(RecorderError) {
        format = try FormatContext(mp4Output: output)
        held = try Packet()
        timeBase = input.pointee.time_base
        self.start = start
        let f = format.pointer
        stream = try allocated(avformat_new_stream(f, nil), "avformat_new_stream")
        try check(avcodec_parameters_copy(stream.pointee.codecpar, input.pointee.codecpar), "avcodec_parameters_copy")
        stream.pointee.codecpar.pointee.codec_tag = 0
        stream.pointee.time_base = timeBase

        // Before the header: the muxer makes its chapter track from them there.
        let duration = max(end - start, 1)
        let marks = chapters.sorted { $0.time < $1.time }.map { (min(max($0.time - start, 0), duration), $0.title) }
        if !marks.isEmpty {
            let list = try allocated(av_calloc(marks.count, MemoryLayout<UnsafeMutablePointer<AVChapter>>.size),
                                     "av_calloc").assumingMemoryBound(to: UnsafeMutablePointer<AVChapter>?.self)
            f.pointee.chapters = list
            for (i, mark) in marks.enumerated() {
                // Owned by the format context from here: avformat_free_context frees each chapter and the list.
                let chapter = try allocated(av_mallocz(MemoryLayout<AVChapter>.size), "av_mallocz")
                    .assumingMemoryBound(to: AVChapter.self)
                list[i] = chapter
                f.pointee.nb_chapters = UInt32(i + 1)
                chapter.pointee.id = Int64(i + 1)
                chapter.pointee.time_base = timeBase
                chapter.pointee.start = mark.0
                chapter.pointee.end = i + 1 < marks.count ? marks[i + 1].0 : duration
                av_dict_set(&chapter.pointee.metadata, "title", mark.1, 0)
            }
        }
        try format.openFile(output)
        var options: OpaquePointer?
        defer { av_dict_free(&options) }
        av_dict_set(&options, "movflags", "+faststart", 0)
        try check(avformat_write_header(f, &options), "avformat_write_header \(output)")
    }

    private var lastDTS = Int64.min

    func add(_ packet: Packet) throws(RecorderError) {
        let pts = packet.pointer.pointee.pts - start
        if holding { try writeHeld(duration: pts - held.pointer.pointee.pts) }
        try check(av_packet_ref(held.pointer, packet.pointer), "av_packet_ref")
        held.pointer.pointee.pts = pts
        // The recorder's streams have no B-frames, so decode order is presentation order; the demuxer's dts of a
        // fragmented file can land on the previous fragment's guessed end, so it is not used.
        held.pointer.pointee.dts = pts
        holding = true
        frames += 1
    }

    /// Writes the last frame, lasting until `end` (input time base), and the moov, which faststart moves before the
    /// media.
    func finish(until end: Int64) throws(RecorderError) -> MP4Cut.Summary {
        let heldPTS = held.pointer.pointee.pts
        let duration = max(end - start - heldPTS, 1)
        let total = heldPTS + duration
        try writeHeld(duration: duration)
        try check(av_write_trailer(format.pointer), "av_write_trailer")
        let codec = stream.pointee.codecpar.pointee
        return MP4Cut.Summary(frames: frames, durationMicros: UInt64(clamping: av_rescale_q(total, timeBase, microseconds)),
                              width: Int(codec.width), height: Int(codec.height))
    }

    private func writeHeld(duration: Int64) throws(RecorderError) {
        let p = held.pointer
        p.pointee.duration = duration
        p.pointee.stream_index = 0
        p.pointee.pos = -1
        av_packet_rescale_ts(p, timeBase, stream.pointee.time_base)
        defer { av_packet_unref(p) }
        // Strictly increasing, even if the output time base is coarser than the input's.
        if p.pointee.dts <= lastDTS {
            p.pointee.dts = lastDTS + 1
            p.pointee.pts = max(p.pointee.pts, p.pointee.dts)
        }
        lastDTS = p.pointee.dts
        try check(av_write_frame(format.pointer, p), "av_write_frame")
    }
}
