// PLACEHOLDER with the agreed API so the daemon compiles; the recorder helper replaces this file.
public import Foundation
public import Logging
public import ViewportCore

/// Encoder settings of a recording.
public struct EncoderSettings: Sendable, Equatable {
    /// x264 preset (ultrafast ... placebo).
    public var preset = "veryfast"
    /// x264 constant rate factor, 0-51.
    public var crf = 28
    /// Encoder threads.
    public var threads = 1
    /// Frames the recorder may queue before the oldest is dropped (and counted).
    public var queueFrames = 300
    public init() {}
}

/// A recorder's counters.
public struct RecorderStats: Sendable, Equatable {
    public var framesEncoded: UInt64 = 0
    public var framesDropped: UInt64 = 0
    public var bytesWritten: UInt64 = 0
    public var width = 0
    public var height = 0
    public init() {}
}

public struct RecorderError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Encodes one session's frames into one crash-safe fragmented MP4 (one encode, whatever the runs).
public final class SegmentRecorder: Sendable {
    /// Subscribes to `hub` as a `.recorder` consumer and starts encoding into `path` on a thread of its own.
    /// `origin` (wall-clock µs) is time 0 of the file and is stored in the file's metadata.
    public init(hub: FrameHub, path: String, origin: UInt64, settings: EncoderSettings, logger: Logger) throws {
        throw RecorderError("not implemented")
    }
    /// Forces a keyframe at `time` (wall-clock µs) showing the latest frame, so a run can be cut from here.
    public func keyframe(at time: UInt64) {}
    /// Returns once every frame captured before `time` is encoded and written to the file as a complete fragment.
    public func sync(until time: UInt64) async throws {}
    /// Stops encoding, writes the last fragment and closes the file.
    @discardableResult public func finish() async -> RecorderStats { RecorderStats() }
    public var stats: RecorderStats { RecorderStats() }
}

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

    /// Copies the part of `fragmented` from the keyframe at or before `from` up to `to` (wall-clock µs; nil: the
    /// file's last activity) into a faststart MP4 at `output`, with `chapters`; the last frame lasts until `to`.
    public static func cut(fragmented: String, output: String, from: UInt64, to: UInt64?, chapters: [Chapter])
        throws -> Summary
    {
        throw RecorderError("not implemented")
    }

    /// The wall-clock time (µs) of the last write to a fragmented recording: its end when the writer died.
    public static func lastActivity(of fragmented: String) throws -> UInt64 { throw RecorderError("not implemented") }
}
