private import CCrypto
import Foundation

/// SHA-256 and HMAC-SHA256 from OpenSSL's libcrypto (already linked by libwebsockets), so no second crypto
/// library has to be built.
enum Digest {
    static func sha256(_ data: Data) -> Data {
        var digest = [UInt8](repeating: 0, count: 32)
        let ok = data.withUnsafeBytes { vpd_sha256($0.baseAddress, $0.count, &digest) }
        precondition(ok == 1, "EVP_Digest(SHA-256) failed")
        return Data(digest)
    }

    static func hmacSHA256(key: Data, _ data: Data) -> Data {
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
    static func constantTimeEqual(_ a: Data, _ b: Data) -> Bool {
        guard a.count == b.count else { return false }
        return a.withUnsafeBytes { x in b.withUnsafeBytes { y in vpd_constant_time_compare(x.baseAddress, y.baseAddress, a.count) == 0 } }
    }

    /// Random bytes from the system's CSPRNG (getrandom).
    static func randomBytes(_ count: Int) -> Data {
        var generator = SystemRandomNumberGenerator()
        return Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
    }
}

extension Data {
    /// Lower-case hexadecimal.
    var hex: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(count * 2)
        for byte in self { out += [digits[Int(byte >> 4)], digits[Int(byte & 0x0f)]] }
        return String(decoding: out, as: UTF8.self)
    }
}
