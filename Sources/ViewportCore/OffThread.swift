import Dispatch

/// Runs blocking work (file writes and fsync, hashing, image conversion, MP4 cutting, deletes, S3 transfers,
/// PostgreSQL queries) on a Dispatch thread and resumes the caller with its outcome: no thread of the cooperative
/// pool waits for the disk or the network.
public func offThread<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
    let result: Result<T, E> = await withCheckedContinuation { continuation in
        DispatchQueue.global(qos: .utility).async { continuation.resume(returning: Result { () throws(E) -> T in try work() }) }
    }
    return try result.get()
}
