import Foundation
import Testing
@testable import ViewportDaemon

/// A disk that fails under a recording loses nothing already written: the session's directory is a 256 kB
/// tmpfs, so the recording's writes fail with ENOSPC within seconds.
@Suite("A failing disk", .serialized)
struct DiskFailureTests {
    @Test func aRecorderThatRunsOutOfDiskStopsThePublishedRunSaysWhyAndTheNextRunRecordsAgain() async throws {
        try await withLiveSession(page: "anim.html") { daemon, _, id in
            let directory = daemon.stateDir + "/artifacts/org_a/\(id)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            _ = try runProcess("/usr/bin/mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", directory])
            defer { _ = try? runProcess("/usr/bin/umount", ["-l", directory]) }

            let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_disk1"])
            try #require(status == 201, "\(run)")
            try await eventually("the disk is full", timeout: 60) {
                var stats = statvfs()
                return statvfs(directory, &stats) == 0 && stats.f_bavail == 0
            }
            // The next fragment's write fails (fragments are cut every second).
            try await Task.sleep(for: .seconds(3))
            // Room again (an operator freed space): the run's recording is cut from what was written.
            _ = try runProcess("/usr/bin/mount", ["-o", "remount,size=64m", directory])
            let (doneStatus, done) = try await daemon.request("POST", "/v1/runs/wr_disk1/complete", json: ["status": "completed"])
            try #require(doneStatus == 200, "\(done)")
            #expect(done["recording_error"].string?.isEmpty == false, "the run says why its recording ends early: \(done)")
            let recordingURL = try #require(done["recording_url"].string, "the fragments written were published: \(done)")
            let (videoStatus, video) = try await httpRaw("GET", recordingURL)
            try #require(videoStatus == 200)
            let file = try temporaryFile("disk1.mp4", video)
            let duration = try #require(try ffprobe(file)["format"]["duration"].string.flatMap(Double.init))
            #expect(duration > 1, "the recording holds what was written before the disk filled (\(duration) s)")
            #expect(try decodeErrors(file).isEmpty)

            // The next run of the session gets a recorder of its own.
            let (status2, run2) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_disk2"])
            try #require(status2 == 201, "\(run2)")
            try await Task.sleep(for: .seconds(2))
            let (_, done2) = try await daemon.request("POST", "/v1/runs/wr_disk2/complete", json: ["status": "completed"])
            #expect(done2["recording_error"].isNull, "\(done2)")
            #expect((done2["recording_frames"].int ?? 0) > 10, "\(done2)")
            #expect(done2["recording_url"].string != nil)
        }
    }
}
