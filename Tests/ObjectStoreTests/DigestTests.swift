import Digests
import Foundation
import Testing

@Suite("SHA-256 of streams and files")
struct StreamDigestTests {
    @Test func hashingInPiecesOrFromAFileGivesTheOneShotDigest() throws {
        // Over 1 MiB, so the file is read in several chunks.
        let bytes = Data((0..<(3 << 20) + 77).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ $0 >> 9) })
        var hasher = SHA256Hasher()
        hasher.update(bytes.prefix(1000))
        hasher.update(bytes.dropFirst(1000))
        #expect(hasher.finalize() == Digest.sha256(bytes))

        let path = FileManager.default.temporaryDirectory.appendingPathComponent("digest-\(UUID().uuidString)").path
        try bytes.write(to: URL(fileURLWithPath: path))
        defer { try? FileManager.default.removeItem(atPath: path) }
        #expect(try Digest.sha256(file: path) == Digest.sha256(bytes))
        #expect(try Digest.sha256(file: path, range: 5..<(2 << 20) + 3) == Digest.sha256(bytes[5..<(2 << 20) + 3]))
        #expect(try Digest.sha256(file: path, range: 9..<9) == Digest.sha256(Data()))
        #expect(throws: (any Error).self) { try Digest.sha256(file: path, range: 0..<UInt64(bytes.count + 1)) }
        #expect(throws: (any Error).self) { try Digest.sha256(file: path + ".missing") }
    }

    @Test func anEmptyHasherGivesTheDigestOfNothing() {
        #expect(SHA256Hasher().finalize().hex == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    }
}
