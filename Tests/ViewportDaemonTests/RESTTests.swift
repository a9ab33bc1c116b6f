import Foundation
import Testing
@testable import ViewportDaemon

@Suite("REST API")
struct RESTTests {
    /// Nothing listens there: a session on it stays "created", then fails.
    static let unreachable = "http://127.0.0.1:9"

    @Test func creatingASessionNeedsAValidAPIKey() async throws {
        try await withDaemon { daemon in
            let (missing, missingBody) = try await daemon.request("POST", "/v1/browser_sessions", key: nil,
                                                                  json: ["browser_address": Self.unreachable])
            #expect(missing == 401)
            #expect(missingBody["detail"].string?.contains("x-api-key") == true, "\(missingBody)")
            let (wrong, wrongBody) = try await daemon.request("POST", "/v1/browser_sessions", key: "wrong-key-0123456789", json: [:])
            #expect(wrong == 401)
            #expect(wrongBody["detail"].string == "invalid API key", "\(wrongBody)")
        }
    }

    @Test func anInvalidSessionRequestIsRefusedNamingWhatIsWrong() async throws {
        try await withDaemon { daemon in
            let address = Self.unreachable
            // (case, JSON body, raw body, status, a word the detail names)
            let invalid: [(String, [String: Any]?, Data?, Int, String)] = [
                ("not JSON", nil, Data("{".utf8), 400, "JSON"),
                ("not an object", nil, Data("[1]".utf8), 400, "object"),
                ("no address", [:], nil, 422, "browser_address"),
                ("unsupported scheme", ["browser_address": "ftp://127.0.0.1:9"], nil, 422, "browser_address"),
                ("ws URL that is not DevTools", ["browser_address": "ws://127.0.0.1:9/other"], nil, 422, "browser_address"),
                ("timeout too short", ["browser_address": address, "timeout": 4], nil, 422, "timeout"),
                ("timeout too long", ["browser_address": address, "timeout": 1441], nil, 422, "timeout"),
                ("timeout as text", ["browser_address": address, "timeout": "60"], nil, 422, "timeout"),
                ("timeout as bool", ["browser_address": address, "timeout": true], nil, 422, "timeout"),
                ("malformed id", ["browser_address": address, "browser_session_id": "abc"], nil, 422, "browser_session_id"),
            ]
            for (name, json, raw, expected, word) in invalid {
                let (status, body) = try await daemon.request("POST", "/v1/browser_sessions", json: json, rawBody: raw)
                #expect(status == expected, "\(name)")
                #expect(body["detail"].string?.contains(word) == true, "\(name) names \(word): \(body)")
            }
        }
    }

    @Test func aCreatedSessionDescribesItself() async throws {
        try await withDaemon { daemon in
            let (status, session) = try await daemon.request(
                "POST", "/v1/browser_sessions",
                json: ["browser_address": Self.unreachable, "timeout": 30, "browser_session_id": "pbs_rest_1"])
            #expect(status == 201)
            #expect(session["browser_session_id"].string == "pbs_rest_1")
            #expect(session["organization_id"].string == "org_a")
            #expect(["created", "running"].contains(session["status"].string ?? ""))
            #expect(session["timeout"].int == 30)
            #expect(session["browser_address"].string == Self.unreachable)
            #expect(session["app_url"].string == daemon.base + "/watch/pbs_rest_1")
            #expect(session["vnc_streaming_supported"].bool == true, "vnc.enabled is on by default")
            #expect(session["recordings"].array.isEmpty && session["completed_at"].isNull)
            let created = try #require(session["created_at"].string)
            #expect(created.hasSuffix("Z") && (try? Date(created, strategy: .iso8601.year().month().day().time(includingFractionalSeconds: true))) != nil)
        }
    }

    /// The platform's session object field for field: what the caller gave is kept, what it did not is null.
    @Test func aSessionKeepsItsBrowserTypeAndExtensionsAndShowsEveryPlatformField() async throws {
        try await withDaemon { daemon in
            let (status, session) = try await daemon.request(
                "POST", "/v1/browser_sessions",
                json: ["browser_address": Self.unreachable, "browser_type": "msedge", "extensions": ["captcha-solver", "ad-blocker"]])
            #expect(status == 201, "\(session)")
            #expect(session["browser_type"].string == "msedge")
            #expect(session["extensions"].array.compactMap(\.string) == ["captcha-solver", "ad-blocker"])
            let id = try #require(session["browser_session_id"].string)
            let (_, read) = try await daemon.request("GET", "/v1/browser_sessions/\(id)")
            #expect(read["browser_type"].string == "msedge", "stored, not only echoed")
            for field in ["runnable_type", "runnable_id", "deleted_at", "started_at", "completed_at"] {
                #expect(read[field].isNull, "\(field) is present and null: \(read)")
            }
            #expect(read["downloaded_files"].array.isEmpty)

            let (plain, plainBody) = try await daemon.request("POST", "/v1/browser_sessions", json: ["browser_address": Self.unreachable])
            #expect(plain == 201 && plainBody["browser_type"].isNull && plainBody["extensions"].isNull, "\(plainBody)")
            for (json, detail) in [
                (["browser_type": "firefox"], "browser_type must be msedge or chrome"),
                (["extensions": ["ad-blocker", "ad-blocker"]], "extensions must be a list of distinct ad-blocker, captcha-solver"),
                (["extensions": "ad-blocker"], "extensions must be a list of distinct ad-blocker, captcha-solver"),
            ] as [([String: Any], String)] {
                let (refused, body) = try await daemon.request(
                    "POST", "/v1/browser_sessions", json: json.merging(["browser_address": Self.unreachable]) { a, _ in a })
                #expect(refused == 422 && body["detail"].string == detail, "\(json): \(body)")
            }
        }
    }

    @Test func aSessionIsVisibleOnlyToItsOrganization() async throws {
        try await withDaemon { daemon in
            #expect(try await daemon.request("POST", "/v1/browser_sessions",
                                             json: ["browser_address": Self.unreachable, "browser_session_id": "pbs_rest_1"]).0 == 201)
            let (duplicate, duplicateBody) = try await daemon.request(
                "POST", "/v1/browser_sessions", json: ["browser_address": Self.unreachable, "browser_session_id": "pbs_rest_1"])
            #expect(duplicate == 409)
            #expect(duplicateBody["detail"].string == "browser session pbs_rest_1 already exists")
            let (hidden, hiddenBody) = try await daemon.request("GET", "/v1/browser_sessions/pbs_rest_1", key: keyB)
            #expect(hidden == 404)
            #expect(hiddenBody["detail"].string == "browser session pbs_rest_1 not found", "never says it exists")
            #expect(try await daemon.request("GET", "/v1/browser_sessions", key: keyB).1.array.isEmpty)
            #expect(try await daemon.request("GET", "/api/v1/browser_sessions").1.array.count == 1)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/pbs_rest_1/close", key: keyB).0 == 404)
        }
    }

    @Test func unknownRoutesMethodsAndArgumentsAreRefused() async throws {
        try await withDaemon { daemon in
            #expect(try await daemon.request("POST", "/v1/browser_sessions",
                                             json: ["browser_address": Self.unreachable, "browser_session_id": "pbs_rest_1"]).0 == 201)
            let (method, methodBody) = try await daemon.request("DELETE", "/v1/browser_sessions/pbs_rest_1")
            #expect(method == 405)
            #expect(methodBody["detail"].string?.contains("DELETE") == true, "\(methodBody)")
            let (route, routeBody) = try await daemon.request("GET", "/v1/nothing")
            #expect(route == 404)
            #expect(routeBody["detail"].string == "not found: /v1/nothing")
            let (ttl, ttlBody) = try await daemon.request("POST", "/v1/browser_sessions/pbs_rest_1/viewer_tokens",
                                                          json: ["ttl_seconds": 5])
            #expect(ttl == 422)
            #expect(ttlBody["detail"].string?.contains("ttl_seconds") == true, "\(ttlBody)")
        }
    }

    @Test func aSessionWhoseBrowserNeverAnswersFailsAfterTheRetryWindow() async throws {
        try await withDaemon({ $0.cdp.retrySeconds = 1 }) { daemon in
            let (status, _) = try await daemon.request(
                "POST", "/v1/browser_sessions", json: ["browser_address": Self.unreachable, "browser_session_id": "pbs_rest_1"])
            try #require(status == 201)
            try await eventually("the unreachable session fails") {
                try await daemon.request("GET", "/v1/browser_sessions/pbs_rest_1").1["status"].string == "failed"
            }
            #expect(try await daemon.request("GET", "/v1/browser_sessions/pbs_rest_1").1["failure_reason"].string?.isEmpty == false)
            #expect(try await daemon.request("GET", "/healthz", key: nil).0 == 200)
        }
    }
}
