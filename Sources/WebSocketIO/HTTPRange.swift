public import Foundation

/// The `Range` request header (RFC 9110 §14.2), the part of it viewportd serves: one byte range.
public enum HTTPRange {
    /// `bytes=a-b`, `bytes=a-` or `bytes=-n` of a body of `size` bytes. nil: ignore the header (not a single byte
    /// range we understand); `.some(nil)`: unsatisfiable (416).
    public static func parse(_ header: String, size: Int) -> Range<Int>?? {
        let value = header.trimmingCharacters(in: .whitespaces)
        guard value.lowercased().hasPrefix("bytes="), !value.contains(",") else { return nil }
        let spec = value.dropFirst(6).split(separator: "-", maxSplits: 1, omittingEmptySubsequences: false)
        guard spec.count == 2 else { return nil }
        let first = spec[0].trimmingCharacters(in: .whitespaces)
        let last = spec[1].trimmingCharacters(in: .whitespaces)
        if first.isEmpty {
            guard let suffix = Int(last), suffix >= 0 else { return nil }
            guard suffix > 0, size > 0 else { return .some(nil) }
            return .some(max(0, size - suffix)..<size)
        }
        guard let start = Int(first), start >= 0 else { return nil }
        let end: Int
        if last.isEmpty { end = size - 1 } else {
            guard let parsed = Int(last), parsed >= start else { return nil }
            end = min(parsed, size - 1)
        }
        guard start < size else { return .some(nil) }
        return .some(start..<(end + 1))
    }
}
