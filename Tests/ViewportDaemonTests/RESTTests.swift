import Foundation
import Testing
@testable import ViewportDaemon

@Suite("REST API")
struct RESTTests {
    @Test func sessionsAreCreatedValidatedAndScopedToTheirOrganization() async throws {
        let daemon = try await TestDaemon.start { $0.cdp.retrySeconds = 1 }
        defer { Task { await daemon.stop() } }
        let address = "http://127.0.0.1:9"  // nothing listens: the session stays "created", then fails

        #expect(try await daemon.request("POST", "/v1/browser_sessions", key: nil, json: ["browser_address": address]).0 == 401)
        #expect(try await daemon.request("POST", "/v1/browser_sessions", key: "wrong-key-0123456789", json: [:]).0 == 401)
        let invalid: [(String, [String: Any]?, Data?, Int)] = [
            ("not JSON", nil, Data("{".utf8), 400),
            ("not an object", nil, Data("[1]".utf8), 400),
            ("no address", [:], nil, 422),
            ("unsupported scheme", ["browser_address": "ftp://127.0.0.1:9"], nil, 422),
            ("ws URL that is not DevTools", ["browser_address": "ws://127.0.0.1:9/other"], nil, 422),
            ("timeout too short", ["browser_address": address, "timeout": 4], nil, 422),
            ("timeout too long", ["browser_address": address, "timeout": 1441], nil, 422),
            ("timeout as text", ["browser_address": address, "timeout": "60"], nil, 422),
            ("timeout as bool", ["browser_address": address, "timeout": true], nil, 422),
            ("malformed id", ["browser_address": address, "browser_session_id": "abc"], nil, 422),
        ]
        for (name, json, raw, expected) in invalid {
            let (status, body) = try await daemon.request("POST", "/v1/browser_sessions", json: json, rawBody: raw)
            #expect(status == expected, "\(name)")
            #expect(body["detail"].string?.isEmpty == false, "\(name) explains itself")
        }

        let (status, session) = try await daemon.request(
            "POST", "/v1/browser_sessions", json: ["browser_address": address, "timeout": 30, "browser_session_id": "pbs_rest_1"])
        #expect(status == 201)
        #expect(session["browser_session_id"].string == "pbs_rest_1")
        #expect(session["organization_id"].string == "org_a")
        #expect(["created", "running"].contains(session["status"].string ?? ""))
        #expect(session["timeout"].int == 30)
        #expect(session["browser_address"].string == address)
        #expect(session["app_url"].string == daemon.base + "/watch/pbs_rest_1")
        #expect(session["vnc_streaming_supported"].bool == true, "vnc.enabled is on by default")
        #expect(session["recordings"].array.isEmpty && session["completed_at"].isNull)
        let created = try #require(session["created_at"].string)
        #expect(created.hasSuffix("Z") && (try? Date(created, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true))) != nil)

        #expect(try await daemon.request("POST", "/v1/browser_sessions",
                                         json: ["browser_address": address, "browser_session_id": "pbs_rest_1"]).0 == 409)
        #expect(try await daemon.request("GET", "/v1/browser_sessions/pbs_rest_1", key: keyB).0 == 404)
        #expect(try await daemon.request("GET", "/v1/browser_sessions", key: keyB).1.array.isEmpty)
        #expect(try await daemon.request("GET", "/api/v1/browser_sessions").1.array.count == 1)
        #expect(try await daemon.request("POST", "/v1/browser_sessions/pbs_rest_1/close", key: keyB).0 == 404)
        #expect(try await daemon.request("DELETE", "/v1/browser_sessions/pbs_rest_1").0 == 405)
        #expect(try await daemon.request("GET", "/v1/nothing").0 == 404)
        #expect(try await daemon.request("POST", "/v1/browser_sessions/pbs_rest_1/viewer_tokens",
                                         json: ["ttl_seconds": 5]).0 == 422)

        // The browser never answers: after the retry window the session fails and says why.
        try await eventually("the unreachable session fails") {
            try await daemon.request("GET", "/v1/browser_sessions/pbs_rest_1").1["status"].string == "failed"
        }
        #expect(try await daemon.request("GET", "/healthz", key: nil).0 == 200)
    }
}
