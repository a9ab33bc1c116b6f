import Foundation
import NetworkNamespaces

extension ClusterNet {
    /// What an HTTP GET of a URL met.
    enum Probe: Equatable {
        case status(Int)
        case timedOut
        case refused
        case failed(String)
    }

    /// GETs `url` from inside the host `from` (from the root namespace when nil), giving up after `timeout` seconds.
    func probe(_ url: String, from name: String? = nil, timeout: Double = 4) async throws -> Probe {
        let script = """
            import sys, urllib.request, urllib.error
            try:
                print(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(sys.argv[1], timeout=float(sys.argv[2])).status)
            except urllib.error.HTTPError as e:
                print(e.code)
            except Exception as e:
                r = getattr(e, "reason", e)
                print("timeout" if isinstance(r, TimeoutError) else "refused" if isinstance(r, ConnectionRefusedError) else "error %r" % (r,))
            """
        let command = (try name.map { try host($0).exec } ?? []) + [Client.python, "-c", script, url, "\(timeout)"]
        let output = try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try runProcess(command[0], Array(command.dropFirst())).output })
            }
        }.trimmingCharacters(in: .whitespacesAndNewlines)
        switch output {
        case "timeout": return .timedOut
        case "refused": return .refused
        default: return Int(output).map(Probe.status) ?? .failed(output)
        }
    }
}
