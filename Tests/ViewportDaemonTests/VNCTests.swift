import Foundation
import JPEGCodec
import Logging
import Testing
import RFBSource
import VNCBridge
@testable import ViewportDaemon
import ViewportCore

/// Runs PyPI's `vncdo` against `127.0.0.1::port`; returns its exit status and output.
func vncdo(port: Int, password: String, _ commands: [String], timeout: Int = 10) throws -> (status: Int32, output: String) {
    let vncdo = URL(fileURLWithPath: Client.python).deletingLastPathComponent().appendingPathComponent("vncdo").path
    return try runProcess(vncdo, ["-s", "127.0.0.1::\(port)", "-p", password, "-t", "\(timeout)"] + commands)
}

/// The RGB pixels of a PNG (through ffmpeg) and its width.
func rgbPixels(ofPNG path: String) throws -> (pixels: [UInt8], width: Int) {
    let width = try #require(try ffprobe(path)["streams"][0]["width"].int)
    let pixels = try runTool("ffmpeg", ["-v", "error", "-i", path, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
    return (Array(pixels), width)
}

/// A path for a capture nobody reads (vncdo saves by extension, so not /dev/null).
func scratchPNG() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("vnc-\(UUID().uuidString).png").path
}

/// Established TCP connections whose local end is 127.0.0.1:`port` (from /proc/net/tcp, whichever process holds
/// them): the connections a server on that port accepted.
func acceptedConnections(onLoopbackPort port: Int) throws -> Int {
    let table = try String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)
    let local = "0100007F:" + String(format: "%04X", port)
    return table.split(separator: "\n").dropFirst().filter { line in
        let fields = line.split(separator: " ")
        return fields.count > 3 && fields[1] == local && fields[3] == "01"
    }.count
}

@Suite("VNC bridge with a real Chromium and vncdotool", .serialized)
struct VNCTests {
    private func mint(_ daemon: TestDaemon, _ id: String, control: Bool, ttl: Int = 60) async throws
        -> (port: Int, password: String)
    {
        let (status, body) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/vnc",
                                                      json: ["control": control, "ttl_seconds": ttl])
        try #require(status == 201, "\(body)")
        #expect(body["control"].bool == control && body["vnc_url"].string == "vnc://127.0.0.1:\(body["port"].int ?? 0)")
        return (try #require(body["port"].int), try #require(body["password"].string))
    }

    private func evaluate(_ browser: Chromium, _ expression: String) async throws -> JSON {
        try await Client.cdp(browser, "Runtime.evaluate", ["expression": expression, "returnByValue": true],
                             page: "vnc.html")["result"]["value"]
    }

    @Test func vncdotoolSeesThePageAndDrivesItWithAControlPassword() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, browser, id in
            let (_, session) = try await daemon.request("GET", "/v1/browser_sessions/\(id)")
            #expect(session["vnc_streaming_supported"].bool == true)
            let (port, password) = try await mint(daemon, id, control: true)

            let png = FileManager.default.temporaryDirectory.appendingPathComponent("vnc-\(UUID().uuidString).png").path
            let capture = try vncdo(port: port, password: password, ["capture", png])
            try #require(capture.status == 0, "vncdo capture: \(capture.output)")
            let (pixels, width) = try rgbPixels(ofPNG: png)
            func pixel(_ x: Int, _ y: Int) -> [Int] { (0..<3).map { Int(pixels[(y * width + x) * 3 + $0]) } }
            func near(_ a: [Int], _ b: [Int]) -> Bool { zip(a, b).allSatisfy { abs($0 - $1) <= 24 } }
            #expect(near(pixel(160, 100), [255, 0, 0]), "red block: \(pixel(160, 100))")
            #expect(near(pixel(480, 100), [0, 255, 0]), "green block: \(pixel(480, 100))")
            #expect(near(pixel(800, 100), [0, 0, 255]), "blue block: \(pixel(800, 100))")
            #expect(near(pixel(1100, 300), [255, 255, 255]), "white page: \(pixel(1100, 300))")

            let click = try vncdo(port: port, password: password, ["move", "200", "440", "click", "1"])
            #expect(click.status == 0, "\(click.output)")
            try await eventually("the click reaches the page") { try await evaluate(browser, "window.clicks").int == 1 }

            let typed = try vncdo(port: port, password: password, ["move", "850", "420", "click", "1", "pause", "0.3",
                                                                   "type", "Hi there!", "key", "bsp"])
            #expect(typed.status == 0, "\(typed.output)")
            try await eventually("the text arrives in the field") {
                try await evaluate(browser, "document.getElementById('field').value").string == "Hi there"
            }
        }
    }

    @Test func aViewOnlyPasswordWatchesButItsInputIsIgnoredAndWrongOrExpiredPasswordsAreRefused() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, browser, id in
            let (_, shortLived) = try await mint(daemon, id, control: true, ttl: 5)
            let minted = Date()
            let (port, password) = try await mint(daemon, id, control: false)
            let click = try vncdo(port: port, password: password, ["move", "200", "440", "click", "1", "pause", "1"])
            #expect(click.status == 0, "a view-only client connects: \(click.output)")
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await evaluate(browser, "window.clicks").int == 0, "its click changed nothing")

            let wrong = try vncdo(port: port, password: "wrongpw1", ["capture", scratchPNG()], timeout: 5)
            #expect(wrong.status != 0, "a wrong password is refused: \(wrong.output)")
            // After three failures from one address, even the right password waits out a backoff that doubles with
            // each further failure: five failures block it for 4 s, room for a slow vncdo start on busy cores.
            for wrongPassword in ["wrongpw2", "wrongpw3", "wrongpw4", "wrongpw5"] {
                _ = try vncdo(port: port, password: wrongPassword, ["capture", scratchPNG()], timeout: 5)
            }
            let lastFailure = Date()
            let blocked = try vncdo(port: port, password: password, ["capture", scratchPNG()], timeout: 3)
            #expect(blocked.status != 0, "the address is slowed down: \(blocked.output)")
            try await Task.sleep(for: .seconds(max(0, 4.3 - Date().timeIntervalSince(lastFailure))))
            #expect(try vncdo(port: port, password: password, ["capture", scratchPNG()]).status == 0, "and let in after the backoff")
            try await Task.sleep(for: .seconds(max(0, 5.5 - Date().timeIntervalSince(minted))))
            #expect(try vncdo(port: port, password: shortLived, ["capture", scratchPNG()], timeout: 5).status != 0,
                    "an expired password is refused")
        }
    }

    @Test func closingTheSessionDisconnectsItsClientsAndFreesItsPort() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, _, id in
            let (port, _) = try await mint(daemon, id, control: false)
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/close").0 == 200)
            #expect(!listening(onLoopbackPort: port), "nothing listens on \(port) any more")
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/vnc", json: [:]).0 == 409)
        }
    }
}

@Suite("noVNC through /stream/vnc/browser/{id}", .serialized)
struct NoVNCTests {
    @Test func debiansNoVNCRendersTheSessionThroughTheRelayWithoutALoopbackConnectionAndNeedsCredentials() async throws {
        let novnc = "/usr/share/novnc/vnc_lite.html"
        try #require(FileManager.default.fileExists(atPath: novnc), "install Debian's novnc package")
        try await withLiveSession(page: "vnc.html") { daemon, _, id in
            let anonymous = try #require(try await Client.watch(daemon.streamURL(id).replacingOccurrences(
                of: "/stream/browser/", with: "/stream/vnc/browser/"), seconds: 1).first)
            #expect(anonymous.handshakeStatus == 401, "no credentials, no RFB")

            let (_, minted) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens", json: [:])
            let token = try #require(minted["token"].string)
            // noVNC is ES modules, which Chromium will not load from file://: serve it.
            let httpPort = try freeLoopbackPort()
            let server = Process()
            server.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            server.arguments = ["-m", "http.server", "\(httpPort)", "--bind", "127.0.0.1", "--directory", "/usr/share/novnc"]
            server.standardOutput = FileHandle.nullDevice
            server.standardError = FileHandle.nullDevice
            try server.run()
            defer { server.terminate() }
            let path = "stream/vnc/browser/\(id)?token=\(token)".addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
            let page = "http://127.0.0.1:\(httpPort)/vnc_lite.html?host=127.0.0.1&port=\(daemon.daemon.port)&path=\(path)"
            try await eventually("the noVNC page is served") { (try? await httpRaw("GET", page))?.0 == 200 }
            // A browser of its own: opened in the watched one, the noVNC tab would become what the session shows.
            let viewer = try await Chromium.launch(url: page)
            defer { viewer.terminate() }
            let probe = """
                (() => { const c = document.querySelector('#screen canvas'); if (!c || c.width < 900) return null;
                  const px = (x, y) => Array.from(c.getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3));
                  return JSON.stringify([px(160, 100), px(480, 100), px(800, 100), document.getElementById('status').textContent]); })()
                """
            var seen = ""
            try await eventually("noVNC draws the session's blocks", timeout: 20) {
                seen = try await Client.cdp(viewer, "Runtime.evaluate", ["expression": probe, "returnByValue": true],
                                            page: "vnc_lite.html")["result"]["value"].string ?? ""
                return seen.hasPrefix("[[2") && seen.contains("],[0,2") && seen.contains(",[0,0,2")
            }
            let pixels = try JSONDecoder().decode(JSON.self, from: Data(seen.utf8))
            func near(_ pixel: JSON, _ expected: [Int]) -> Bool {
                zip(pixel.array.compactMap(\.int), expected).allSatisfy { abs($0 - $1) <= 24 }
            }
            #expect(near(pixels[0], [255, 0, 0]) && near(pixels[1], [0, 255, 0]) && near(pixels[2], [0, 0, 255]), "\(seen)")
            let bridge = try #require(daemon.daemon.sessions.vncBridge(id: id))
            #expect(bridge.clientCount == 1, "noVNC is the screen's client")
            #expect(try acceptedConnections(onLoopbackPort: bridge.port) == 0,
                    "without a TCP connection to the screen's port: the relay handed its own to the screen")
        }
    }
}

@Suite("Control of the browser by WebSocket viewers", .serialized)
struct ControlTests {
    @Test func aPermittedViewerTakesControlDrivesThePageWithValidatedInputAndCedesIt() async throws {
        try await withLiveSession(page: "vnc.html") { daemon, browser, id in
            func token(control: Bool) async throws -> String {
                let (_, body) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/viewer_tokens",
                                                         json: ["control": control])
                #expect(body["control"].bool == control)
                return try #require(body["token"].string)
            }
            let driver = daemon.streamURL(id, query: "token=\(try await token(control: true))")
            let watcher = daemon.streamURL(id, query: "token=\(try await token(control: false))")
            func json(_ object: [String: Any]) -> String {
                String(decoding: try! JSONSerialization.data(withJSONObject: object), as: UTF8.self)
            }
            let click: [[String: Any]] = [
                ["type": "mouse", "event": "mousePressed", "x": 200, "y": 440, "button": "left", "click_count": 1],
                ["type": "mouse", "event": "mouseReleased", "x": 200, "y": 440, "button": "left", "click_count": 1],
            ]
            let focusField: [[String: Any]] = [
                ["type": "mouse", "event": "mousePressed", "x": 850, "y": 420, "button": "left", "click_count": 1],
                ["type": "mouse", "event": "mouseReleased", "x": 850, "y": 420, "button": "left", "click_count": 1],
            ]
            let typing: [[String: Any]] = ["o", "k"].flatMap { key in
                [["type": "key", "event": "keyDown", "key": key], ["type": "key", "event": "keyUp", "key": key]]
            }
            let invalid: [[String: Any]] = [
                ["type": "mouse", "event": "mousePressed", "x": 200, "y": 440, "click_count": 5],
                ["type": "mouse", "event": "mouseDragged", "x": 200, "y": 440],
                ["type": "key", "event": "keyDown", "key": String(repeating: "k", count: 33)],
                ["type": "navigate", "url": "javascript:alert(1)"],
                ["type": "navigate", "url": "http://example.com/" + String(repeating: "a", count: 2100)],
                ["type": "wheel", "x": "left", "y": 0],
            ]
            let afterCede: [String: Any] = ["type": "paste", "text": "late"]
            let script = [json(["type": "mouse", "event": "mouseMoved", "x": 1, "y": 1]), json(["type": "take-control"])]
                + (click + invalid + focusField + typing).map(json)
                + [json(["type": "paste", "text": "!"]), json(["type": "cede-control"]), json(afterCede)]

            async let watched = Client.watch(watcher, seconds: 4, send: [json(["type": "take-control"])])
            try await Task.sleep(for: .milliseconds(800))
            let drove = try #require(try await Client.watch(driver, seconds: 2, send: script).first)
            let saw = try #require(try await watched.first)

            func texts(_ viewer: ViewerResult, _ type: String) -> [JSON] { viewer.texts.filter { $0["type"].string == type } }
            #expect(drove.hello?["control_permitted"].bool == true && saw.hello?["control_permitted"].bool == false)
            #expect(texts(drove, "control").map { $0["controller"].string } == ["agent", "viewer", "agent"])
            #expect(texts(saw, "control").map { $0["controller"].string } == ["agent", "viewer", "agent"],
                    "every viewer hears who is in control")
            #expect(texts(saw, "error").map { $0["message"].string } == ["this viewer has no control permission"])
            let errors = texts(drove, "error").compactMap { $0["message"].string }
            #expect(errors.first == "take control first", "input before take-control is refused: \(errors)")
            #expect(errors.count == 1 + invalid.count + 1, "each invalid message and the late paste: \(errors)")
            #expect(errors.last == "take control first")

            func evaluate(_ expression: String) async throws -> JSON {
                try await Client.cdp(browser, "Runtime.evaluate", ["expression": expression, "returnByValue": true],
                                     page: "vnc.html")["result"]["value"]
            }
            try await eventually("the text reaches the field") {
                try await evaluate("document.getElementById('field').value").string == "ok!"
            }
            #expect(try await evaluate("window.clicks").int == 1, "only the valid click reached the page")
        }
    }
}

/// A headed Chromium on a TigerVNC Xvnc display, with VNC authentication and DevTools for checking the page.
final class XvncBrowser {
    let port: Int
    let password = "xvnc-pw1"
    let browser: Chromium
    private let xvnc: Process
    private let directory: URL

    var address: String { "127.0.0.1:\(port)" }

    init(page: String) async throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("xvnc-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let passwordFile = directory.appendingPathComponent("passwd").path
        let hashed = Process()
        hashed.executableURL = URL(fileURLWithPath: "/bin/sh")
        hashed.arguments = ["-c", "echo '\(password)' | vncpasswd -f > '\(passwordFile)'"]
        try hashed.run()
        hashed.waitUntilExited()
        try #require(hashed.terminationStatus == 0, "vncpasswd -f (tigervnc-tools)")

        let port = try freeLoopbackPort()
        self.port = port
        let display = ":\(50 + port % 400)"
        let xvnc = Process()
        self.xvnc = xvnc
        xvnc.executableURL = URL(fileURLWithPath: "/usr/bin/Xvnc")
        xvnc.arguments = [display, "-geometry", "1280x720", "-depth", "24", "-rfbport", "\(port)", "-localhost",
                          "-SecurityTypes", "VncAuth", "-PasswordFile", passwordFile, "-AlwaysShared"]
        xvnc.standardOutput = FileHandle.nullDevice
        xvnc.standardError = FileHandle.nullDevice
        try xvnc.run()
        try await eventually("Xvnc listens") { listening(onLoopbackPort: port) }
        setenv("DISPLAY", display, 1)
        defer { unsetenv("DISPLAY") }
        browser = try await Chromium.launch(url: Fixtures.url(page), headless: false)
    }

    func stop() {
        browser.terminate()
        // SIGKILL: a child of the test runner inherits its blocked SIGTERM.
        kill(xvnc.processIdentifier, SIGKILL)
        xvnc.waitUntilExited()
        try? FileManager.default.removeItem(at: directory)
    }
}

@Suite("RFB source: a headed Chromium on Xvnc", .serialized)
struct RFBSourceTests {
    @Test func viewersAndTheVNCBridgeGetTheHeadedPageAndInputReachesIt() async throws {
        let xvnc = try await XvncBrowser(page: "vnc.html")
        defer { xvnc.stop() }
        try await withDaemon { daemon in
            let (status, created) = try await daemon.request("POST", "/v1/browser_sessions",
                                                             json: ["vnc_address": xvnc.address, "vnc_password": xvnc.password])
            try #require(status == 201, "\(created)")
            let id = try #require(created["browser_session_id"].string)
            #expect(created["vnc_address"].string == xvnc.address && created["browser_address"].isNull)
            try await eventually("attached over RFB") {
                try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "running"
            }
            let viewer = try #require(try await Client.watch(daemon.streamURL(id), key: keyA, seconds: 3,
                                                             send: [#"{"type":"evaluate","id":1,"expression":"1"}"#]).first)
            #expect(viewer.frames >= 1 && viewer.sizes.first == [1280, 720], "frames: \(viewer.frames) \(viewer.sizes.prefix(1))")
            #expect(viewer.texts("evaluate_result").first?["error"].string == "evaluate needs a CDP session")

            // The bridge re-serves the RFB session, so a stock VNC client sees the page and drives it.
            let (_, minted) = try await daemon.request("POST", "/v1/browser_sessions/\(id)/vnc", json: ["control": true])
            let port = try #require(minted["port"].int), password = try #require(minted["password"].string)
            let png = scratchPNG()
            let capture = try vncdo(port: port, password: password, ["capture", png])
            try #require(capture.status == 0, "\(capture.output)")
            let (pixels, width) = try rgbPixels(ofPNG: png)
            func pixel(_ x: Int, _ y: Int) -> [Int] { (0..<3).map { Int(pixels[(y * width + x) * 3 + $0]) } }
            #expect(zip(pixel(160, 100), [255, 0, 0]).allSatisfy { abs($0 - $1) <= 24 }, "red block: \(pixel(160, 100))")
            // Recorded from the frames' own pixels (an RFB source carries them).
            #expect(try await daemon.request("POST", "/v1/browser_sessions/\(id)/runs", json: ["run_id": "wr_rfb"]).0 == 201)
            try await Task.sleep(for: .seconds(1.5))
            let (_, run) = try await daemon.request("POST", "/v1/runs/wr_rfb/complete", json: ["status": "completed"])
            let (videoStatus, video) = try await httpRaw("GET", try #require(run["recording_url"].string))
            try #require(videoStatus == 200)
            let file = try temporaryFile("rfb.mp4", video)
            #expect(try decodeErrors(file).isEmpty)
            #expect(try ffprobe(file)["streams"][0]["width"].int == 1280)

            let click = try vncdo(port: port, password: password, ["move", "200", "440", "click", "1"])
            #expect(click.status == 0, "\(click.output)")
            try await eventually("the click reaches the headed page") {
                try await Client.cdp(xvnc.browser, "Runtime.evaluate", ["expression": "window.clicks", "returnByValue": true],
                                     page: "vnc.html")["result"]["value"].int == 1
            }
        }
    }

    @Test func aWrongVNCPasswordFailsTheSessionWithAClearReason() async throws {
        let xvnc = try await XvncBrowser(page: "vnc.html")
        defer { xvnc.stop() }
        try await withDaemon { daemon in
            let (_, created) = try await daemon.request("POST", "/v1/browser_sessions",
                                                        json: ["vnc_address": xvnc.address, "vnc_password": "not-it"])
            let id = try #require(created["browser_session_id"].string)
            try await eventually("the session fails") {
                try await daemon.request("GET", "/v1/browser_sessions/\(id)").1["status"].string == "failed"
            }
            let (_, failed) = try await daemon.request("GET", "/v1/browser_sessions/\(id)")
            #expect(failed["failure_reason"].string?.contains("authentication") == true, "\(failed["failure_reason"])")
            #expect(try await daemon.request("POST", "/v1/browser_sessions", json: ["vnc_address": "nohost"]).0 == 422)
            #expect(try await daemon.request("POST", "/v1/browser_sessions", json: [:]).0 == 422)
        }
    }
}

@Suite("VNC bridge framebuffer")
struct VNCBridgeFramebufferTests {
    /// A `width`×`height` JPEG of one colour, with the rightmost `edge` columns in another.
    private func jpeg(width: Int, height: Int, fill: [UInt8], edge: Int = 0, edgeFill: [UInt8] = [0, 0, 0]) throws -> FrameBytes {
        var pixels = [UInt8](repeating: 0, count: width * height * 3)
        for y in 0..<height {
            for x in 0..<width { pixels.replaceSubrange((y * width + x) * 3..<(y * width + x) * 3 + 3, with: x >= width - edge ? edgeFill : fill) }
        }
        return FrameBytes(copying: try JPEGEncoder().encode(pixels, width: width, height: height, pitch: width * 3, format: .rgb, quality: 95))
    }

    @Test func changesUpToTheRightEdgeOfAFrameWhoseWidthIsNoMultipleOfTheTileReachClients() async throws {
        let (width, height) = (1000, 200)  // 1000 = 31 tiles of 32 and 8 pixels
        let hub = FrameHub()
        hub.publish(jpeg: try jpeg(width: width, height: height, fill: [255, 255, 255]), width: width, height: height,
                    captureTime: wallClockMicros(), url: nil)
        var options = VNCBridge.Options()
        options.ports = 5950...5999
        let bridge = try VNCBridge(hub: hub, options: options, throttle: VNCAuthThrottle(), input: nil, name: "test",
                                   logger: Logger(label: "test"))
        defer { bridge.close() }
        let password = bridge.passwords.mint(control: false, expiresAt: Date().addingTimeInterval(60))
        // The client connects first, so after its first full update it only gets the regions marked as changed.
        let seen = FrameHub()
        let frames = seen.subscribe(kind: .viewer, capacity: 64) {}
        let client = RFBSource(address: "127.0.0.1:\(bridge.port)", password: password, hub: seen, options: .init(),
                               logger: Logger(label: "test")) { _ in }
        client.start()
        defer { client.stop() }
        try await eventually("the client has its first picture") { seen.latest != nil }
        hub.publish(jpeg: try jpeg(width: width, height: height, fill: [255, 255, 255], edge: 40, edgeFill: [0, 0, 255]),
                    width: width, height: height, captureTime: wallClockMicros(), url: nil)

        let decoder = try JPEGDecoder()
        var edge: [Int] = []
        try await eventually("the change at the right edge reaches the client", timeout: 5) {
            while let frame = frames.next() {
                var rgb = [UInt8](repeating: 0, count: frame.width * frame.height * 3)
                let bytes = frame.jpeg.bytes
                try decoder.decodePixels(bytes, try decoder.header(bytes), into: &rgb, pitch: Int32(frame.width * 3), format: .rgb)
                edge = (0..<3).map { Int(rgb[(100 * frame.width + frame.width - 4) * 3 + $0]) }
            }
            return zip(edge, [0, 0, 255]).allSatisfy { abs($0 - $1) <= 24 }
        }
    }
}
