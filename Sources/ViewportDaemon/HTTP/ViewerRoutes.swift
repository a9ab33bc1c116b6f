import Foundation
import Logging
import VNCBridge
import ViewerGateway
import ViewportCore
import WebSocketIO

/// Viewers: the watch page, the viewer WebSocket (`/stream/browser/{id}`) and noVNC's RFB over WebSocket
/// (`/stream/vnc/browser/{id}`). Upgrades are decided on the service thread, from memory only. In a cluster, those
/// of sessions open on another node go to the relay.
struct ViewerRoutes {
    let sessions: Sessions
    let gateway: ViewerGateway
    let relay: ViewerRelay?
    let forwarding: Forwarding?
    let auth: Auth
    let config: Config
    let loop: EventLoop
    let logger: Logger

    var routes: [Route] {
        [Route("GET", "watch/*", .open) { watchPage(sessionID: $0.ids[0], token: $0.http.query["token"]) }]
    }

    private func watchPage(sessionID: String, token: String?) -> HTTPResponse {
        guard let token, !token.isEmpty else {
            return .message(401, "This watch link has no token. Ask the API for one: POST /v1/browser_sessions/\(sessionID)/viewer_tokens.")
        }
        do {
            _ = try auth.verifyViewerToken(token, sessionID: sessionID)
        } catch {
            return .message(401, error == .expired ? "This watch link has expired." : "This watch link is not valid.")
        }
        return .html(200, WatchPage.html(sessionID: sessionID))
    }

    /// Accepts a viewer or noVNC for a session, with the organization's key (which may drive its browsers) or a
    /// viewer token (which may only if minted with control).
    func upgrade(_ request: HTTPRequest, path: [String]) throws(HTTPFailure) -> WebSocketUpgrade {
        let rfb = path.count == 4 && path[1] == "vnc" && path[2] == "browser"
        guard path.first == "stream", rfb || (path.count == 3 && path[1] == "browser") else {
            throw HTTPFailure(status: 404, detail: "not found: \(request.path)")
        }
        let id = path[path.count - 1]
        let format = try Self.format(request.query["format"], codec: request.query["codec"])
        // Another node's connection carries its credential; `relay` says what the owner serves it.
        let node = forwarding?.sender(of: request)
        let kind: ViewerKind
        switch request.query["relay"] {
        case nil: kind = .viewer
        case "stream": kind = .upstream
        case "control": kind = .controlLine
        default: throw HTTPFailure(status: 400, detail: "relay must be stream or control")
        }
        guard kind == .viewer || node != nil else {
            throw HTTPFailure(status: 401, detail: "relay connections need a valid node credential")
        }
        var organization: String?
        let control: Bool
        if let key = request.headers["x-api-key"], !key.isEmpty {
            guard let owner = auth.organization(apiKey: key) else { throw HTTPFailure(status: 401, detail: "invalid API key") }
            organization = owner
            control = true
        } else if let token = request.query["token"], !token.isEmpty {
            do { control = try auth.verifyViewerToken(token, sessionID: id).control } catch {
                throw HTTPFailure(status: 401, detail: error == .expired ? "viewer token expired" : "invalid viewer token")
            }
        } else {
            throw HTTPFailure(status: 401, detail: "missing credentials: an x-api-key header or a ?token= viewer token")
        }
        switch sessions.hubForViewer(id: id) {
        case .found(let owner, _, _) where rfb && (organization == nil || organization == owner):
            guard let bridge = sessions.vncBridge(id: id) else {
                throw HTTPFailure(status: 409, detail: "browser session \(id) has no VNC screen")
            }
            return .accept(WebSocketRelay(bridge: bridge, control: control, loop: loop, logger: logger.with(sessionID: id)),
                           maxMessageBytes: 1 << 20)
        case .found(let owner, let hub, let packets) where organization == nil || organization == owner:
            let format = format == .h264 && packets?.servesViewers != true ? .binary : format
            return gateway.accept(sessionID: id, hub: hub, format: format, queueFrames: config.queueFrames(format),
                                  control: control, input: sessions.inputTarget(id: id),
                                  maxViewers: config.limits.viewersPerSession, kind: kind, packets: packets)
        case .notFound:
            // A node's connection is never relayed on: two nodes that disagreed about an owner would loop.
            guard let relay, node == nil else { throw HTTPFailure(status: 404, detail: "browser session \(id) not found") }
            return relay.accept(sessionID: id, rfb: rfb, format: format, control: control, organizationID: organization)
        case .found:
            throw HTTPFailure(status: 404, detail: "browser session \(id) not found")
        }
    }

    /// The frames a viewer asked for: `format` binary (the default) or json, `codec` jpeg (the default) or h264
    /// (binary only).
    private static func format(_ format: String?, codec: String?) throws(HTTPFailure) -> ViewerFormat {
        guard format == nil || format == "binary" || format == "json" else {
            throw HTTPFailure(status: 400, detail: "format must be binary or json")
        }
        switch codec {
        case nil, "jpeg": return format == "json" ? .json : .binary
        case "h264":
            guard format != "json" else { throw HTTPFailure(status: 400, detail: "codec=h264 frames are binary: leave format=json out") }
            return .h264
        default: throw HTTPFailure(status: 400, detail: "codec must be jpeg or h264")
        }
    }
}

extension Config {
    /// The queue of a viewer that gets `format`.
    func queueFrames(_ format: ViewerFormat) -> Int { format == .h264 ? viewer.h264QueueFrames : viewer.queueFrames }
}
