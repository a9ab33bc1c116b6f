import Digests
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import ObjectStore
import Testing

@Suite("S3 client against a real S3 server", .serialized)
struct ObjectStoreTests {
    @Test func objectsRoundTripWithTheirContentTypeAndMetadata() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client()
        let body = Data("{\"frames\": 42}".utf8)
        try s3.putObject(
            key: "org-a/runs/r1/summary.json", body: body, contentType: "application/json",
            metadata: ["Session-ID": "s-1", "checksum": "abc"])
        try s3.putObject(key: "org-a/runs/r1/a b+c.txt", body: Data("x".utf8), contentType: "text/plain")
        try s3.putObject(key: "org-b/other.txt", body: Data("y".utf8), contentType: "text/plain")

        let head = try #require(try s3.headObject(key: "org-a/runs/r1/summary.json"))
        #expect(head.size == UInt64(body.count))
        #expect(head.contentType == "application/json")
        #expect(head.metadata == ["session-id": "s-1", "checksum": "abc"])
        #expect(try s3.getObject(key: "org-a/runs/r1/summary.json") == body)
        #expect(try s3.getObject(key: "org-a/runs/r1/a b+c.txt") == Data("x".utf8))

        let listed = try s3.listObjects(prefix: "org-a/")
        #expect(listed.map(\.key) == ["org-a/runs/r1/a b+c.txt", "org-a/runs/r1/summary.json"])
        #expect(listed.map(\.size) == [1, UInt64(body.count)])

        try s3.deleteObject(key: "org-a/runs/r1/summary.json")
        #expect(try s3.headObject(key: "org-a/runs/r1/summary.json") == nil)
        try s3.deleteObject(key: "org-a/runs/r1/summary.json")
        let missing = try #require(throws: S3Error.self) { try s3.getObject(key: "org-a/runs/r1/summary.json") }
        #expect(missing.status == 404)
        #expect(missing.code == "NoSuchKey")
        #expect(!missing.isRetryable)
    }

    @Test func aListingFollowsEveryPage() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client()
        let keys = (0..<1005).map { String(format: "many/%04d", $0) }
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for key in keys.enumerated().filter({ $0.offset % 8 == worker }).map(\.element) {
                try? s3.putObject(key: key, body: Data(), contentType: "application/octet-stream")
            }
        }
        #expect(try s3.listObjects(prefix: "many/").map(\.key) == keys)
    }

    @Test func aWrongSecretIsRefusedAsABadSignatureAndNotRetried() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let wrongSecret = "not-the-secret-0123456789"
        let error = try #require(throws: S3Error.self) {
            try server.client(secretKey: wrongSecret).putObject(key: "k", body: Data("x".utf8), contentType: "text/plain")
        }
        #expect(error.status == 403)
        #expect(error.code == "SignatureDoesNotMatch")
        #expect(!error.isRetryable)
        #expect(!error.description.contains(wrongSecret))
        #expect(try server.client().headObject(key: "k") == nil)
    }

    @Test func aMultipartUploadArrivesByteIdentical() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client()
        let source = try Self.patternFile(bytes: 40_000_003)
        defer { try? FileManager.default.removeItem(atPath: source) }
        try s3.uploadFile(
            key: "big.mp4", path: source, contentType: "video/mp4", metadata: ["duration": "12.5"], partSize: 5 << 20)

        let head = try #require(try s3.headObject(key: "big.mp4"))
        #expect(head.size == 40_000_003)
        #expect(head.contentType == "video/mp4")
        #expect(head.metadata == ["duration": "12.5"])
        let copy = source + ".download"
        defer { try? FileManager.default.removeItem(atPath: copy) }
        try s3.downloadObject(key: "big.mp4", to: copy)
        #expect(try Digest.sha256(file: copy) == Digest.sha256(file: source))
    }

    @Test func aRefusedMultipartUploadThrowsAndLeavesNoObject() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client()
        let source = try Self.patternFile(bytes: 3 << 20)
        defer { try? FileManager.default.removeItem(atPath: source) }
        // S3 refuses parts under 5 MiB (but the last) when the upload is completed.
        let error = try #require(throws: S3Error.self) {
            try s3.uploadFile(key: "small-parts", path: source, contentType: "video/mp4", partSize: 1 << 20)
        }
        #expect(error.code == "EntityTooSmall")
        #expect(try s3.headObject(key: "small-parts") == nil)
    }

    @Test func aByteRangeUploadStoresExactlyThatRange() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client()
        let source = try Self.patternFile(bytes: 12 << 20)
        defer { try? FileManager.default.removeItem(atPath: source) }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: source))

        try s3.uploadFile(key: "small", path: source, range: 1000..<5000, contentType: "application/octet-stream")
        #expect(try s3.getObject(key: "small") == bytes[1000..<5000])
        // Across three parts, the first and last not on a part boundary of the file.
        let range: Range<UInt64> = 1_234_567..<(11 << 20) + 89
        try s3.uploadFile(key: "parts", path: source, range: range, contentType: "application/octet-stream", partSize: 5 << 20)
        #expect(try s3.getObject(key: "parts") == bytes[Int(range.lowerBound)..<Int(range.upperBound)])

        let past = try #require(throws: S3Error.self) {
            try s3.uploadFile(key: "past", path: source, range: (12 << 20) - 10..<(12 << 20) + 10, contentType: "text/plain")
        }
        #expect(past.status == nil && !past.isRetryable)
    }

    @Test func aPresignedURLGivesTheObjectUntilItExpiresAndOnlyUntampered() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client()
        let body = Data("presigned bytes".utf8)
        try s3.putObject(key: "shots/one.png", body: body, contentType: "image/png")

        let url = s3.presignedGetURL(key: "shots/one.png", expiresIn: 300)
        let (fetched, ok) = try await Self.get(url)
        #expect(ok == 200)
        #expect(fetched == body)

        let signature = try #require(url.range(of: "X-Amz-Signature=")).upperBound
        let flipped: Character = url[signature] == "0" ? "1" : "0"
        let tampered = url.replacingCharacters(in: signature...signature, with: String(flipped))
        #expect(try await Self.get(tampered).status == 403)

        let expired = s3.presignedGetURL(key: "shots/one.png", expiresIn: 1, now: Date().addingTimeInterval(-60))
        #expect(try await Self.get(expired).status == 403)
    }

    @Test func aStoppedServerGivesARetryableErrorWithinTheTimeoutAndItsDataSurvivesARestart() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client(timeoutSeconds: 3)
        try s3.putObject(key: "kept", body: Data("kept".utf8), contentType: "text/plain")

        server.stopAndKeepData()
        let started = Date()
        let error = try #require(throws: S3Error.self) { try s3.getObject(key: "kept") }
        #expect(Date().timeIntervalSince(started) < 4)
        #expect(error.status == nil)
        #expect(error.isRetryable)

        try await server.restart()
        // A server just restarted may answer 500 for a moment (retryable, as the uploader treats it).
        try await eventually("the object is served again") { (try? s3.getObject(key: "kept")) == Data("kept".utf8) }
    }

    @Test func aHungServerGivesARetryableErrorWithinTheTimeoutNotAHang() async throws {
        let server = try await S3Server.start()
        defer { server.stop() }
        let s3 = server.client(timeoutSeconds: 2)
        try s3.putObject(key: "k", body: Data("v".utf8), contentType: "text/plain")

        server.freeze()
        let started = Date()
        let error = try #require(throws: S3Error.self) { try s3.getObject(key: "k") }
        #expect(Date().timeIntervalSince(started) < 4)
        #expect(error.status == nil)
        #expect(error.isRetryable)
        server.thaw()
        #expect(try s3.getObject(key: "k") == Data("v".utf8))
    }

    /// A file of `bytes` bytes that differ from part to part (a counter's bytes), so misplaced parts show.
    static func patternFile(bytes: Int) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("s3-src-\(UUID().uuidString)").path
        var data = Data(count: bytes)
        data.withUnsafeMutableBytes { buffer in
            let words = buffer.bindMemory(to: UInt32.self)
            for i in words.indices { words[i] = UInt32(truncatingIfNeeded: i &* 2_654_435_761) }
        }
        try data.write(to: URL(fileURLWithPath: path))
        return path
    }

    static func get(_ url: String) async throws -> (body: Data, status: Int) {
        let (body, response) = try await URLSession.shared.data(from: try #require(URL(string: url)))
        return (body, try #require(response as? HTTPURLResponse).statusCode)
    }
}
