private import CCurl
import Foundation

/// An HTTP answer: status, headers (names lower-cased, in order) and the body unless it went to a sink.
struct Response {
    var status: Int
    var headers: [(String, String)]
    var body: Data

    func header(_ name: String) -> String? { headers.last { $0.0 == name }?.1 }
}

/// curl_global_init once, before the first handle (it is thread-safe in libcurl 7.84 and later, but once is enough).
private let curlReady: Bool = curl_global_init(Int(CURL_GLOBAL_ALL)) == CURLE_OK

/// One blocking request on a fresh curl easy handle.
final class CurlTransfer {
    private var status = 0
    private var headers: [(String, String)] = []
    private var body = Data()
    private var upload: Data
    private var uploaded = 0
    private let sink: Int32?
    private var sinkFailure: String?

    private init(upload: Data, sink: Int32?) {
        self.upload = upload
        self.sink = sink
    }

    /// Error bodies (and answers meant for a sink that are not 2xx) are kept up to this size.
    private static let errorBodyLimit = 64 << 10

    /// Performs `method` on `url` with exactly `headers` (curl adds none that matter: its Accept and User-Agent are
    /// not signed; Expect is suppressed). The timeout bounds connecting and any stall, not the whole transfer.
    static func perform(
        method: String, url: String, headers: [SigV4.Header], body: Data?, sink: Int32?, timeoutSeconds: Int
    ) throws(S3Error) -> Response {
        guard curlReady, let curl = curl_easy_init() else { throw .local("libcurl cannot be initialised") }
        defer { curl_easy_cleanup(curl) }
        let transfer = CurlTransfer(upload: body ?? Data(), sink: sink)
        let user = Unmanaged.passUnretained(transfer).toOpaque()

        var list: UnsafeMutablePointer<curl_slist>? = nil
        for header in headers + [SigV4.Header("expect", "")] {
            // "Name:" with nothing after removes a header curl would add; "Name;" would send it empty.
            list = curl_slist_append(list, header.value.isEmpty ? "\(header.name):" : "\(header.name): \(header.value)")
        }
        defer { curl_slist_free_all(list) }

        let timeout = max(timeoutSeconds, 1)
        var ok = vpd_curl_setopt_string(curl, CURLOPT_URL, url) == CURLE_OK
        ok = ok && vpd_curl_setopt_headers(curl, list) == CURLE_OK
        ok = ok && vpd_curl_setopt_long(curl, CURLOPT_NOSIGNAL, 1) == CURLE_OK
        ok = ok && vpd_curl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT, timeout) == CURLE_OK
        ok = ok && vpd_curl_setopt_long(curl, CURLOPT_LOW_SPEED_LIMIT, 1) == CURLE_OK
        ok = ok && vpd_curl_setopt_long(curl, CURLOPT_LOW_SPEED_TIME, timeout) == CURLE_OK
        ok = ok && vpd_curl_setopt_callback(curl, CURLOPT_HEADERFUNCTION, headerCallback) == CURLE_OK
        ok = ok && vpd_curl_setopt_pointer(curl, CURLOPT_HEADERDATA, user) == CURLE_OK
        ok = ok && vpd_curl_setopt_callback(curl, CURLOPT_WRITEFUNCTION, writeCallback) == CURLE_OK
        ok = ok && vpd_curl_setopt_pointer(curl, CURLOPT_WRITEDATA, user) == CURLE_OK
        switch method {
        case "GET": break
        case "HEAD": ok = ok && vpd_curl_setopt_long(curl, CURLOPT_NOBODY, 1) == CURLE_OK
        default:
            if body != nil {
                ok = ok && vpd_curl_setopt_long(curl, CURLOPT_UPLOAD, 1) == CURLE_OK
                ok = ok && vpd_curl_setopt_offset(curl, CURLOPT_INFILESIZE_LARGE, curl_off_t(transfer.upload.count)) == CURLE_OK
                ok = ok && vpd_curl_setopt_callback(curl, CURLOPT_READFUNCTION, readCallback) == CURLE_OK
                ok = ok && vpd_curl_setopt_pointer(curl, CURLOPT_READDATA, user) == CURLE_OK
            }
            ok = ok && vpd_curl_setopt_string(curl, CURLOPT_CUSTOMREQUEST, method) == CURLE_OK
        }
        guard ok else { throw .local("libcurl refused an option for \(method)") }

        let result = withExtendedLifetime(transfer) { curl_easy_perform(curl) }
        if let failure = transfer.sinkFailure { throw .local(failure) }
        guard result == CURLE_OK else {
            let reason = String(cString: curl_easy_strerror(result))
            throw S3Error(status: nil, code: nil, message: "\(method) \(URLComponents(string: url)?.path ?? ""): \(reason)")
        }
        var code = 0
        _ = vpd_curl_response_code(curl, &code)
        return Response(status: code, headers: transfer.headers, body: transfer.body)
    }

    fileprivate func headerLine(_ bytes: UnsafeRawBufferPointer) {
        let line = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        if line.hasPrefix("HTTP/") {
            // A new answer (after a 100 Continue, say): forget the headers of the last.
            status = line.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
            headers = []
        } else if let colon = line.firstIndex(of: ":") {
            headers.append((
                line[..<colon].lowercased(),
                line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            ))
        }
    }

    /// Takes `bytes` of the body; returns false to abort the transfer.
    fileprivate func received(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if let sink, (200..<300).contains(status) {
            var done = 0
            while done < bytes.count {
                let n = write(sink, bytes.baseAddress! + done, bytes.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    sinkFailure = "cannot write the download: \(String(cString: strerror(errno)))"
                    return false
                }
                done += n
            }
            return true
        }
        let limit = sink != nil || !(200..<300).contains(status) ? Self.errorBodyLimit : Int.max
        body.append(contentsOf: bytes.prefix(max(0, limit - body.count)))
        return true
    }

    /// Fills `buffer` with the next bytes of the upload; returns how many (0 at the end).
    fileprivate func send(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let count = min(buffer.count, upload.count - uploaded)
        upload.withUnsafeBytes { source in
            buffer.baseAddress?.copyMemory(from: source.baseAddress! + uploaded, byteCount: count)
        }
        uploaded += count
        return count
    }
}

private func headerCallback(buffer: UnsafeMutablePointer<CChar>?, size: Int, count: Int, user: UnsafeMutableRawPointer?) -> Int {
    guard let user else { return 0 }
    Unmanaged<CurlTransfer>.fromOpaque(user).takeUnretainedValue().headerLine(UnsafeRawBufferPointer(start: buffer, count: size * count))
    return size * count
}

private func writeCallback(buffer: UnsafeMutablePointer<CChar>?, size: Int, count: Int, user: UnsafeMutableRawPointer?) -> Int {
    guard let user else { return 0 }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(user).takeUnretainedValue()
    return transfer.received(UnsafeRawBufferPointer(start: buffer, count: size * count)) ? size * count : 0
}

private func readCallback(buffer: UnsafeMutablePointer<CChar>?, size: Int, count: Int, user: UnsafeMutableRawPointer?) -> Int {
    guard let user else { return vpd_curl_read_abort() }
    let transfer = Unmanaged<CurlTransfer>.fromOpaque(user).takeUnretainedValue()
    return transfer.send(into: UnsafeMutableRawBufferPointer(start: buffer, count: size * count))
}
