/// Encoder settings of a recording.
///
/// The preset and CRF are x264's, but the encoder is set up never to hold a frame back (no B-frames, no lookahead,
/// sliced threads), so ``SegmentRecorder/sync(until:)`` needs no encoder drain; see `H264Encoder` for what that
/// costs and saves.
public struct EncoderSettings: Sendable, Equatable {
    /// x264 preset (ultrafast ... placebo).
    public var preset = "veryfast"
    /// x264 constant rate factor, 0-51.
    public var crf = 28
    /// Encoder threads (x264 sliced threads: more threads never delay a frame).
    public var threads = 1
    /// Frames the recorder may queue before the oldest is dropped (and counted).
    public var queueFrames = 300
    /// Bytes of frames queued for the encoder at most (frames with pixels are megabytes each).
    public var queueBytes = 128 << 20
    public init() {}
}

/// A recorder's counters.
public struct RecorderStats: Sendable, Equatable {
    /// Pictures encoded, keyframe re-encodes included.
    public var framesEncoded: UInt64 = 0
    /// Frames lost: dropped by the hub queue because the encoder fell behind, or not decodable as JPEG.
    public var framesDropped: UInt64 = 0
    /// Bytes written to the file in complete fragments.
    public var bytesWritten: UInt64 = 0
    /// Size of the video (the first frame's size rounded down to even); 0 until a frame arrives.
    public var width = 0
    public var height = 0
    public init() {}
}

/// A recording failure; the description names the call that failed and, for C calls, the library's error text.
public struct RecorderError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
