import Foundation
import Logging
import PostgresStore
import Store
import Testing
import ViewportCore
@testable import ViewportDaemon

@Suite("A daemon on PostgreSQL (cluster.database_url)", .serialized)
struct PostgresDaemonTests {
    @Test func aSessionAndItsRunAreServedEndToEndAndKeptInPostgreSQL() async throws {
        try await PostgresServer.with { server in
            let url = try server.createDatabase()
            var (sessionID, stateDir) = ("", "")
            try await withLiveSession({
                $0.cluster.databaseURL = url
                $0.cluster.secret = String(repeating: "s", count: 32)
            }) { daemon, _, id in
                (sessionID, stateDir) = (id, daemon.stateDir)
                let (status, run) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs",
                                                             json: ["run_id": "wr_pg1", "title": "on postgres"])
                try #require(status == 201, "\(run)")
                for label in ["open page", "submit"] {
                    try await Task.sleep(for: .milliseconds(700))
                    let (stepStatus, step) = try await daemon.request("POST", "/v1/runs/wr_pg1/steps", json: ["label": label])
                    try #require(stepStatus == 201, "\(step)")
                }
                let (doneStatus, done) = try await daemon.request("POST", "/v1/runs/wr_pg1/complete",
                                                                  json: ["status": "completed"])
                try #require(doneStatus == 200, "\(done)")
                let (_, got) = try await daemon.request("GET", "/v1/runs/wr_pg1")
                #expect(got["status"].string == "completed" && got["step_count"].int == 2)
                let (videoStatus, video) = try await httpRaw("GET", try #require(got["recording_url"].string))
                try #require(videoStatus == 200)
                #expect(try ffprobe(try temporaryFile("run.mp4", video))["streams"][0]["codec_name"].string == "h264")
                let (listStatus, list) = try await daemon.request("GET", "/v1/browser_sessions")
                #expect(listStatus == 200 && list.array.map { $0["browser_session_id"].string } == [id])
                let (closeStatus, _) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/close")
                #expect(closeStatus == 200)
            }
            #expect(!FileManager.default.fileExists(atPath: stateDir + "/viewportd.sqlite"), "no SQLite beside it")

            // What another node on the same database reads.
            let store = try PostgresStore(url: url, logger: Logger(label: "test"))
            try await store.run {
                let session = try #require(try await store.session(id: sessionID))
                #expect(session.status == .closed && session.organizationID == "org_a" && session.startedAt != nil)
                let run = try #require(try await store.run(id: "wr_pg1"))
                #expect(run.sessionID == sessionID && run.status == "completed" && run.stepCount == 2)
                #expect(run.title == "on postgres" && run.finishedAt != nil && run.framesRecorded > 0)
                #expect(try await store.steps(runID: "wr_pg1").map(\.label) == ["open page", "submit"])
                let artifacts = try await store.artifacts(runID: "wr_pg1")
                #expect(artifacts.map(\.kind).sorted { $0.rawValue < $1.rawValue }
                    == [.recording, .screenshot, .screenshot, .screenshot], "a screenshot per step, a final one, the video")
                #expect(artifacts.allSatisfy { $0.sessionID == sessionID && $0.fileSize > 0 })
            }
        }
    }
}
