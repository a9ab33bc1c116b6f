private import CCrypto
public import Foundation

/// SHA-256 and HMAC-SHA256 from OpenSSL's libcrypto (already linked by libwebsockets), so no second crypto
/// library has to be built.
public enum Digest {
    public static func sha256(_ data: Data) -> Data {
        var digest = [UInt8](repeating: 0, count: 32)
        let ok = data.withUnsafeBytes { vpd_sha256($0.baseAddress, $0.count, &digest) }
        precondition(ok == 1, "EVP_Digest(SHA-256) failed")
        return Data(digest)
    }

    /// The SHA-256 of a file, or of the byte `range` of it, read in 1 MiB chunks so memory does not grow with the
    /// file. Throws when the file cannot be read or is shorter than `range`.
    public static func sha256(file path: String, range: Range<UInt64>? = nil) throws -> Data {
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? handle.close() }
        var hasher = SHA256Hasher()
        var remaining: UInt64? = nil
        if let range {
            try handle.seek(toOffset: range.lowerBound)
            remaining = range.upperBound - range.lowerBound
        }
        while remaining != 0 {
            let want = Int(min(remaining ?? UInt64.max, 1 << 20))
            guard let chunk = try handle.read(upToCount: want), !chunk.isEmpty else {
                if remaining == nil { break }
                throw CocoaError(.fileReadTooLarge, userInfo: [NSFilePathErrorKey: path])
            }
            chunk.withUnsafeBytes { hasher.update($0) }
            remaining = remaining.map { $0 - UInt64(chunk.count) }
        }
        return hasher.finalize()
    }

    public static func hmacSHA256(key: Data, _ data: Data) -> Data {
        var mac = [UInt8](repeating: 0, count: 32)
        let ok = key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                vpd_hmac_sha256(k.baseAddress, Int32(k.count), d.baseAddress?.assumingMemoryBound(to: UInt8.self), d.count, &mac)
            }
        }
        precondition(ok == 1, "HMAC(SHA-256) failed")
        return Data(mac)
    }

    /// Equality in time that does not depend on where the inputs differ.
    public static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in vpd_constant_time_compare(x.baseAddress, y.baseAddress, a.count) == 0 } }
    }

    /// Random bytes from the system's CSPRNG (getrandom).
    public static func randomBytes(_ count: Int) -> Data {
        var generator = SystemRandomNumberGenerator()
        return Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }
}

/// An incremental SHA-256: feed bytes with `update`, then take the digest once with `finalize`.
public struct SHA256Hasher: ~Copyable {
    private let context: OpaquePointer

    public init() {
        guard let context = vpd_sha256_begin() else { preconditionFailure("EVP_DigestInit(SHA-256) failed") }
        self.context = context
    }

    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(vpd_sha256_update(context, bytes.baseAddress, bytes.count) == 1, "EVP_DigestUpdate failed")
    }

    public mutating func update(_ data: Data) {
        data.withUnsafeBytes { update($0) }
    }

    /// The 32-byte digest of everything fed so far; the hasher is used up.
    public consuming func finalize() -> Data {
        var digest = [UInt8](repeating: 0, count: 32)
        precondition(vpd_sha256_end(context, &digest) == 1, "EVP_DigestFinal failed")
        return Data(digest)
    }

    deinit { vpd_sha256_free(context) }
}

extension Data {
    /// Lower-case hexadecimal.
    public var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(count * 2)
        for byte in self { out += [digits[Int(byte >> 4)], digits[Int(byte & 0x0f)]] }
        return String(decoding: out, as: UTF8.self)
    }
}
