import Testing
@testable import CDPSource

private let guid = "0b8c6a4e-5f7d-4a0e-9d39-3c1f2a7b9e10"

private func progress(_ guid: String, _ state: DownloadProgress.State, bytes: Double = 1234) -> DownloadProgress {
    DownloadProgress(guid: guid, receivedBytes: bytes, state: state)
}

@Suite("Download tracker")
struct DownloadTrackerTests {
    @Test func aCompletedDownloadIsReportedOnceWithItsFileNamedByGuid() {
        var tracker = DownloadTracker(directory: "/var/lib/viewportd/downloads/s1")
        tracker.willBegin(DownloadWillBegin(guid: guid, suggestedFilename: "report.pdf"))
        #expect(tracker.progress(progress(guid, .inProgress, bytes: 10)) == nil)
        #expect(tracker.progress(progress(guid, .completed)) == CDPDownload(
            guid: guid, suggestedFilename: "report.pdf", path: "/var/lib/viewportd/downloads/s1/\(guid)", size: 1234))
        #expect(tracker.progress(progress(guid, .completed)) == nil)
    }

    @Test func canceledAndUnannouncedDownloadsAreNotReported() {
        var tracker = DownloadTracker(directory: "/d")
        tracker.willBegin(DownloadWillBegin(guid: guid, suggestedFilename: "a.zip"))
        #expect(tracker.progress(progress(guid, .canceled)) == nil)
        #expect(tracker.progress(progress(guid, .completed)) == nil)
        #expect(tracker.progress(progress("never-announced", .completed)) == nil)
    }

    @Test(arguments: [
        ("../../etc/passwd", ".._.._etc_passwd"), (#"..\..\boot.ini"#, #".._.._boot.ini"#), ("a\u{0}b\nc", "a_b_c"),
        ("\u{202E}fdp.exe", "_fdp.exe"), ("", "download"), ("..", "download"), (" . ", "download"), ("/", "_"),
        ("résumé.txt", "résumé.txt"),
    ])
    func aSuggestedFilenameCannotNameAnotherPlace(suggested: String, kept: String) {
        #expect(DownloadTracker.safeFilename(suggested) == kept)
    }

    @Test func aLongSuggestedFilenameIsCutOnACharacterBoundary() {
        let name = DownloadTracker.safeFilename(String(repeating: "é", count: 10_000))
        #expect(name.utf8.count <= DownloadTracker.maxFilenameBytes)
        #expect(name.utf8.count > DownloadTracker.maxFilenameBytes - 2)
        #expect(name.allSatisfy { $0 == "é" })
    }

    @Test(arguments: ["../../x", "a/b", "", String(repeating: "a", count: 65), "x y"])
    func aGuidThatIsNoPlainNameIsNotFollowed(hostile: String) {
        var tracker = DownloadTracker(directory: "/d")
        tracker.willBegin(DownloadWillBegin(guid: hostile, suggestedFilename: "x"))
        #expect(tracker.progress(progress(hostile, .completed)) == nil)
    }

    @Test func hostileSizesAreNotTrusted() {
        var tracker = DownloadTracker(directory: "/d")
        for (index, bytes) in [-5, 1e300, .nan, .infinity].enumerated() {
            tracker.willBegin(DownloadWillBegin(guid: "g\(index)", suggestedFilename: "x"))
            #expect(tracker.progress(progress("g\(index)", .completed, bytes: bytes))?.size == 0)
        }
    }

    @Test func downloadsInProgressAreFollowedUpToTheBound() {
        var tracker = DownloadTracker(directory: "/d")
        let count = DownloadTracker.maxPending + 100
        for index in 0..<count { tracker.willBegin(DownloadWillBegin(guid: "g\(index)", suggestedFilename: "x")) }
        let reported = (0..<count).compactMap { tracker.progress(progress("g\($0)", .completed)) }
        #expect(reported.count == DownloadTracker.maxPending)
    }
}
