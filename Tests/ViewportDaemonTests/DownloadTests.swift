import Digests
import Foundation
import Testing
@testable import ViewportDaemon

@Suite("Downloads of a session's browser", .serialized)
struct SessionDownloadTests {
    /// Chromium downloads a file while viewportd is attached: the session lists it in `downloaded_files` with
    /// its suggested name and checksum, its URL serves the same bytes as an attachment, and it is saved under
    /// the session's `download_path`.
    @Test func aFileTheBrowserDownloadsIsListedAndServedWithTheSession() async throws {
        let browser = try await Chromium.launch(url: Fixtures.url("download.html"))
        try await withDaemon { daemon in
            let id = try await daemon.createSession(browser)
            var session = JSON.null
            try await eventually("the download is listed", timeout: 30) {
                session = try await daemon.request("GET", "/v1/browser_sessions/\(id)").1
                return !session["downloaded_files"].array.isEmpty
            }
            let csv = Data("quarter,revenue\nQ3,42\n".utf8)
            let file = session["downloaded_files"].array[0]
            #expect(file["filename"].string == "q3 report.csv")
            #expect(file["checksum"].string == Digest.sha256(csv).hex)
            let downloadPath = try #require(session["download_path"].string)
            #expect(downloadPath.hasPrefix(daemon.stateDir), "under the session's artifacts: \(downloadPath)")
            let saved = try FileManager.default.contentsOfDirectory(atPath: downloadPath)
            #expect(!saved.isEmpty, "the browser saved into download_path")

            let url = try #require(file["url"].string)
            let (status, body) = try await httpRaw("GET", url)
            #expect(status == 200 && body == csv, "the signed URL serves the downloaded bytes")
            #expect(try await daemon.request("GET", "/v1/browser_sessions/\(id)", key: keyB).0 == 404)
        }
    }
}
