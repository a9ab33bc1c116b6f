public import Foundation
import Digests

/// Where the bucket is. `endpoint` like "http://127.0.0.1:8333" or "https://s3.eu-west-1.amazonaws.com".
public struct S3Location: Sendable, Equatable {
    public var endpoint: String
    public var region: String
    public var bucket: String
    /// `{endpoint}/{bucket}/{key}` when true, else `{scheme}://{bucket}.{host}/{key}`.
    public var pathStyle: Bool

    public init(endpoint: String, region: String, bucket: String, pathStyle: Bool) {
        self.endpoint = endpoint
        self.region = region
        self.bucket = bucket
        self.pathStyle = pathStyle
    }
}

public struct S3Credentials: Sendable, Equatable {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }
}

public struct S3Object: Sendable, Equatable {
    public var key: String
    public var size: UInt64
    /// nil in listings.
    public var contentType: String?
    /// The x-amz-meta-* headers without the prefix, names lower-cased; empty in listings.
    public var metadata: [String: String]

    public init(key: String, size: UInt64, contentType: String? = nil, metadata: [String: String] = [:]) {
        self.key = key
        self.size = size
        self.contentType = contentType
        self.metadata = metadata
    }
}

/// A failed S3 call. Its message never holds credentials.
public struct S3Error: Error, Sendable, CustomStringConvertible {
    /// nil: no HTTP answer (connect refused, timeout, DNS) or a local failure (file unreadable).
    public var status: Int?
    /// The error body's <Code>, e.g. "SignatureDoesNotMatch", "NoSuchKey".
    public var code: String?
    public var message: String
    /// True for no answer, 5xx, 429, RequestTimeout, SlowDown and InternalError: trying again later may succeed.
    public var isRetryable: Bool

    init(status: Int?, code: String?, message: String, isRetryable: Bool? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.isRetryable = isRetryable ?? {
            guard let status else { return true }
            return status >= 500 || status == 429 || ["RequestTimeout", "SlowDown", "InternalError"].contains(code ?? "")
        }()
    }

    /// A failure on this side (a file that cannot be read or written): not retryable.
    static func local(_ message: String) -> S3Error { S3Error(status: nil, code: nil, message: message, isRetryable: false) }

    public var description: String {
        "S3 error \(status.map(String.init) ?? "(no answer)")\(code.map { " \($0)" } ?? ""): \(message)"
    }
}

/// An S3 bucket over libcurl, signed with SigV4. Blocking calls: run them off the cooperative pool. Thread-safe: every
/// call uses its own curl handle.
public final class S3Client: Sendable {
    let location: S3Location
    let signer: SigV4
    let timeoutSeconds: Int
    /// "http" or "https", the host (with ":port" when the endpoint names one) requests go to and are signed for, and
    /// the path prefix of object paths ("/bucket" path-style, "" virtual-host).
    let scheme: String
    let host: String
    let bucketPath: String

    public init(location: S3Location, credentials: S3Credentials, timeoutSeconds: Int) {
        self.location = location
        self.timeoutSeconds = timeoutSeconds
        signer = SigV4(
            accessKeyID: credentials.accessKeyID, secretAccessKey: credentials.secretAccessKey,
            sessionToken: credentials.sessionToken, region: location.region)
        let components = URLComponents(string: location.endpoint)
        scheme = components?.scheme?.lowercased() ?? "https"
        let endpointHost = (components?.host ?? location.endpoint) + (components?.port.map { ":\($0)" } ?? "")
        host = location.pathStyle ? endpointHost : "\(location.bucket).\(endpointHost)"
        bucketPath = location.pathStyle ? "/\(location.bucket)" : ""
    }

    /// PUT of bytes in memory, signed with x-amz-content-sha256 = the body's SHA-256 so the server verifies it.
    public func putObject(key: String, body: Data, contentType: String, metadata: [String: String] = [:]) throws(S3Error) {
        _ = try send(
            "PUT", path: objectPath(key), headers: objectHeaders(contentType: contentType, metadata: metadata), body: body)
    }

    /// Uploads a file (or the byte `range` of it) from disk with memory bounded by `partSize`: one PUT when it fits in
    /// one part, else a multipart upload (each part signed with its own SHA-256; the upload aborted on failure).
    /// `metadata` goes on the object (x-amz-meta-…). S3 refuses parts under 5 MiB but the last.
    public func uploadFile(
        key: String, path: String, range: Range<UInt64>? = nil, contentType: String, metadata: [String: String] = [:],
        partSize: Int = 16 << 20
    ) throws(S3Error) {
        let file = try SourceFile(path: path)
        let range = if let range { range } else { 0..<(try file.size()) }
        guard range.count <= UInt64(max(partSize, 1)) else {
            return try multipartUpload(
                key: key, file: file, range: range, contentType: contentType, metadata: metadata, partSize: partSize)
        }
        try putObject(key: key, body: file.read(range), contentType: contentType, metadata: metadata)
    }

    /// nil when the object does not exist.
    public func headObject(key: String) throws(S3Error) -> S3Object? {
        let response: Response
        do throws(S3Error) {
            response = try send("HEAD", path: objectPath(key))
        } catch where error.status == 404 {
            return nil
        }
        var metadata: [String: String] = [:]
        for (name, value) in response.headers where name.hasPrefix("x-amz-meta-") {
            metadata[String(name.dropFirst("x-amz-meta-".count))] = value
        }
        return S3Object(
            key: key, size: response.header("content-length").flatMap { UInt64($0) } ?? 0,
            contentType: response.header("content-type"), metadata: metadata)
    }

    public func getObject(key: String) throws(S3Error) -> Data {
        try send("GET", path: objectPath(key)).body
    }

    /// Streams the object into a file at `path` (created/truncated), memory bounded. The file is removed on failure.
    public func downloadObject(key: String, to path: String) throws(S3Error) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw .local("cannot create \(path): \(String(cString: strerror(errno)))") }
        do throws(S3Error) {
            _ = try send("GET", path: objectPath(key), sink: fd)
            guard fsync(fd) == 0, close(fd) == 0 else {
                throw S3Error.local("cannot write \(path): \(String(cString: strerror(errno)))")
            }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
    }

    /// Succeeds when the object is already gone.
    public func deleteObject(key: String) throws(S3Error) {
        do throws(S3Error) {
            _ = try send("DELETE", path: objectPath(key))
        } catch where error.status == 404 {}
    }

    /// Every object under `prefix` (ListObjectsV2, all pages), sorted by key. Listings carry no content type or metadata.
    public func listObjects(prefix: String) throws(S3Error) -> [S3Object] {
        var objects: [S3Object] = []
        var token: String?
        repeat {
            var query = [SigV4.QueryItem("list-type", "2"), SigV4.QueryItem("prefix", prefix)]
            if let token { query.append(SigV4.QueryItem("continuation-token", token)) }
            let xml = String(decoding: try send("GET", path: bucketPath + "/", query: query).body, as: UTF8.self)
            for contents in XMLScan.elements("Contents", in: xml) {
                guard let key = XMLScan.elements("Key", in: contents).first else { continue }
                objects.append(S3Object(key: key, size: XMLScan.elements("Size", in: contents).first.flatMap { UInt64($0) } ?? 0))
            }
            token = XMLScan.elements("IsTruncated", in: xml).first == "true"
                ? XMLScan.elements("NextContinuationToken", in: xml).first : nil
        } while token != nil
        return objects.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }
    }

    /// A presigned GET URL (SigV4 query signing, X-Amz-Expires = expiresIn seconds, clamped to 1...604800).
    public func presignedGetURL(key: String, expiresIn: Int, now: Date = Date()) -> String {
        let path = objectPath(key)
        let query = signer.presignedQuery(method: "GET", path: path, host: host, expiresIn: expiresIn, date: now)
        return "\(scheme)://\(host)\(SigV4.uriEncode(path, keepingSlash: true))?\(query)"
    }

    // MARK: - Multipart

    private func multipartUpload(
        key: String, file: borrowing SourceFile, range: Range<UInt64>, contentType: String, metadata: [String: String],
        partSize: Int
    ) throws(S3Error) {
        let path = objectPath(key)
        let started = try send(
            "POST", path: path, query: [SigV4.QueryItem("uploads", "")],
            headers: objectHeaders(contentType: contentType, metadata: metadata))
        guard let uploadID = XMLScan.elements("UploadId", in: String(decoding: started.body, as: UTF8.self)).first else {
            throw S3Error(status: started.status, code: nil, message: "no UploadId in the answer to starting an upload of \(key)")
        }
        do throws(S3Error) {
            var completion = "<CompleteMultipartUpload>"
            var start = range.lowerBound
            var number = 1
            while start < range.upperBound {
                let end = min(start + UInt64(partSize), range.upperBound)
                let part = try send(
                    "PUT", path: path,
                    query: [SigV4.QueryItem("partNumber", String(number)), SigV4.QueryItem("uploadId", uploadID)],
                    body: file.read(start..<end))
                guard let etag = part.header("etag") else {
                    throw S3Error(status: part.status, code: nil, message: "no ETag for part \(number) of \(key)")
                }
                completion += "<Part><PartNumber>\(number)</PartNumber><ETag>\(XMLScan.escape(etag))</ETag></Part>"
                start = end
                number += 1
            }
            completion += "</CompleteMultipartUpload>"
            let done = try send(
                "POST", path: path, query: [SigV4.QueryItem("uploadId", uploadID)], body: Data(completion.utf8))
            // S3 may answer 200 and report the failure in the body.
            let answer = String(decoding: done.body, as: UTF8.self)
            if let code = XMLScan.elements("Code", in: answer).first {
                throw S3Error(status: done.status, code: code, message: XMLScan.elements("Message", in: answer).first ?? "")
            }
        } catch {
            _ = try? send("DELETE", path: path, query: [SigV4.QueryItem("uploadId", uploadID)])
            throw error
        }
    }

    // MARK: - Requests

    private func objectPath(_ key: String) -> String { "\(bucketPath)/\(key)" }

    private func objectHeaders(contentType: String, metadata: [String: String]) -> [SigV4.Header] {
        [SigV4.Header("content-type", contentType)]
            + metadata.sorted { $0.key < $1.key }.map { SigV4.Header("x-amz-meta-\($0.key.lowercased())", $0.value) }
    }

    /// Signs and performs one request; a non-2xx answer throws with the error body's code and message. `sink` takes a
    /// 2xx body instead of memory.
    private func send(
        _ method: String, path: String, query: [SigV4.QueryItem] = [], headers: [SigV4.Header] = [], body: Data? = nil,
        sink: Int32? = nil
    ) throws(S3Error) -> Response {
        let now = Date()
        let payloadHash = Digest.sha256(body ?? Data()).hex
        var signed = headers + [
            SigV4.Header("host", host), SigV4.Header("x-amz-date", SigV4.timestamp(now)),
            SigV4.Header("x-amz-content-sha256", payloadHash),
        ]
        if let token = signer.sessionToken { signed.append(SigV4.Header("x-amz-security-token", token)) }
        let request = SigV4.Request(method: method, path: path, query: query, headers: signed, payloadHash: payloadHash)
        signed.append(SigV4.Header("authorization", signer.authorization(request, date: now)))
        let queryString = SigV4.canonicalQuery(query)
        let url = "\(scheme)://\(host)\(SigV4.uriEncode(path, keepingSlash: true))" + (queryString.isEmpty ? "" : "?\(queryString)")
        let response = try CurlTransfer.perform(
            method: method, url: url, headers: signed, body: body, sink: sink, timeoutSeconds: timeoutSeconds)
        guard (200..<300).contains(response.status) else {
            let xml = String(decoding: response.body, as: UTF8.self)
            let message = XMLScan.elements("Message", in: xml).first ?? "HTTP \(response.status)"
            throw S3Error(
                status: response.status, code: XMLScan.elements("Code", in: xml).first,
                message: "\(method) \(path): \(message)")
        }
        return response
    }
}

/// A file uploads read from, by byte range.
private struct SourceFile: ~Copyable {
    let path: String
    let fd: Int32

    init(path: String) throws(S3Error) {
        self.path = path
        fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .local("cannot open \(path): \(String(cString: strerror(errno)))") }
    }

    func size() throws(S3Error) -> UInt64 {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .local("cannot stat \(path): \(String(cString: strerror(errno)))") }
        return UInt64(info.st_size)
    }

    /// Exactly the bytes of `range`; throws when the file is shorter.
    func read(_ range: Range<UInt64>) throws(S3Error) -> Data {
        var data = Data(count: Int(range.count))
        let failure: String? = data.withUnsafeMutableBytes { buffer in
            var done = 0
            while done < buffer.count {
                let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(range.lowerBound) + off_t(done))
                if n < 0 && errno == EINTR { continue }
                if n < 0 { return String(cString: strerror(errno)) }
                if n == 0 { return "the file ends before byte \(range.upperBound)" }
                done += n
            }
            return nil
        }
        if let failure { throw .local("cannot read \(path): \(failure)") }
        return data
    }

    deinit { close(fd) }
}
