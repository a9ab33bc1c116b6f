import Foundation
import Testing
@testable import ViewerGateway
import ViewportCore
import ViewportDaemon

/// The viewer protocol's text messages (docs/protocol.md) as the daemon reads and writes them.
@Suite("Viewer protocol messages")
struct ViewerProtocolTests {
    private func decode(_ json: String) throws -> ViewerRequest { try ViewerRequest.decode(Data(json.utf8)) }

    private func input(_ json: String) throws -> Result<ViewerInput, InputRefusal> {
        guard case .input(let parsed) = try decode(json) else { throw DaemonError("\(json) is not an input message") }
        return parsed
    }

    private func object(_ event: some Encodable) throws -> JSON { try JSONDecoder().decode(JSON.self, from: event.viewerJSON()) }

    @Test func aMessageThatIsNotAJSONObjectWithAStringTypeIsMalformed() {
        for text in ["not json", "[1]", "{}", #"{"type":5}"#, #"{"type":null}"#, "\"ping\""] {
            #expect(throws: (any Error).self, "\(text)") { try decode(text) }
        }
        #expect(ViewerRequest.malformed == "expected a JSON text message with a \"type\"")
    }

    @Test func controlPingAndUnknownTypesAreRecognized() throws {
        #expect(try decode(#"{"type":"take-control"}"#) == .takeControl)
        #expect(try decode(#"{"type":"cede-control"}"#) == .cedeControl)
        #expect(try decode(#"{"type":"dance","x":1}"#) == .unknown(type: "dance"))
    }

    @Test func aPingsTIsEchoedAsSentAndNullWhenAbsent() throws {
        for (sent, echoed) in [("42.5", JSON.number(42.5)), ("7", .number(7)), (#""abc""#, .string("abc")),
                               (#"{"a":[1,true,null]}"#, .object(["a": .array([.number(1), .bool(true), .null])]))] {
            guard case .ping(let t) = try decode(#"{"type":"ping","t":\#(sent)}"#) else { Issue.record("\(sent)"); continue }
            let pong = try object(ViewerEvent.pong(t: t, serverTimeMicros: 5))
            #expect(pong == .object(["type": .string("pong"), "t": echoed, "server_time_us": .number(5)]), "\(sent)")
        }
        guard case .ping(let t) = try decode(#"{"type":"ping"}"#) else { Issue.record("no ping"); return }
        #expect(try object(ViewerEvent.pong(t: t, serverTimeMicros: 5))["t"] == .null)
    }

    @Test func invalidInputIsRefusedNamingWhatIsWrong() throws {
        let cases: [(String, String)] = [
            (#"{"type":"mouse"}"#, "event is required"),
            (#"{"type":"mouse","event":"bogus","x":"a"}"#, "mouse event must be mousePressed, mouseReleased or mouseMoved"),
            (#"{"type":"mouse","event":"mousePressed","button":"thumb","x":1,"y":1}"#, "button must be none, left, middle or right"),
            (#"{"type":"mouse","event":"mousePressed","click_count":4,"x":1,"y":1}"#, "click_count must be 0 to 3"),
            (#"{"type":"mouse","event":"mousePressed","click_count":1.5,"x":1,"y":1}"#, "click_count must be an integer"),
            (#"{"type":"mouse","event":"mouseMoved","x":1}"#, "x and y are required"),
            (#"{"type":"mouse","event":"mouseMoved","x":true,"y":1}"#, "x must be a number"),
            (#"{"type":"mouse","event":"mouseMoved","x":"1","y":1}"#, "x must be a number"),
            (#"{"type":"mouse","event":"mouseMoved","x":1,"y":1,"modifiers":1e12}"#, "modifiers must be an integer"),
            (#"{"type":"wheel","x":1,"y":1,"delta_y":"down"}"#, "delta_y must be a number"),
            (#"{"type":"key","event":"keyDown"}"#, "key is required"),
            (#"{"type":"key","event":"press","key":"a"}"#, "key event must be keyDown, keyUp or char"),
            (#"{"type":"key","event":"keyDown","key":5}"#, "key must be a string"),
            (#"{"type":"key","event":"keyDown","key":"\#(String(repeating: "a", count: 33))"}"#, "key, code and text must be at most 32 characters"),
            (#"{"type":"navigate","url":"file:///etc/passwd"}"#, "url must be an http:// or https:// URL of at most 2083 characters"),
            (#"{"type":"navigate","url":"https://example.com/\#(String(repeating: "a", count: 2100))"}"#, "url must be an http:// or https:// URL of at most 2083 characters"),
            (#"{"type":"paste"}"#, "text is required"),
        ]
        for (json, message) in cases {
            #expect(try input(json) == .failure(InputRefusal(message)), "\(json.prefix(80))")
        }
    }

    @Test func coordinatesAreClampedToTheFrameModifiersMaskedAndDeltasBounded() throws {
        let mouse = try input(#"{"type":"mouse","event":"mousePressed","x":99999,"y":-50,"modifiers":18}"#).get()
        #expect(mouse.clamped(width: 1280, height: 720) == .mouse(MouseInput(kind: .pressed, x: 1279, y: 0, button: .left,
                                                                               clickCount: 1, modifiers: 2)))
        let wheel = try input(#"{"type":"wheel","x":-1,"y":5000,"delta_x":-1e9,"delta_y":250}"#).get()
        #expect(wheel.clamped(width: 1280, height: 720) == .wheel(x: 0, y: 719, deltaX: -10_000, deltaY: 250))
        #expect(wheel.clamped(width: 0, height: 0) == .wheel(x: 0, y: 0, deltaX: -10_000, deltaY: 250))
        let navigate = try input(#"{"type":"navigate","url":"https://example.com/a"}"#).get()
        #expect(navigate.clamped(width: 10, height: 10) == .navigate(url: "https://example.com/a"))
        let key = try input(#"{"type":"key","event":"keyDown","key":"a","modifiers":255}"#).get()
        guard case .key(let event) = key.input else { Issue.record("\(key)"); return }
        #expect(event.modifiers == 15 && event.code == "KeyA")
    }

    @Test func daemonMessagesHaveTheDocumentedFields() throws {
        #expect(try object(ViewerEvent.hello(sessionID: "pbs_1", width: 1280, height: 720, controlPermitted: true)) == .object([
            "type": .string("hello"), "browser_session_id": .string("pbs_1"), "protocol": .number(1),
            "format": .string("jpeg"), "width": .number(1280), "height": .number(720), "control_permitted": .bool(true),
        ]))
        #expect(try object(ViewerEvent.control(.viewer)) == .object(["type": .string("control"), "controller": .string("viewer")]))
        #expect(try object(ViewerEvent.status(.failed(reason: "gone"))) == .object([
            "type": .string("status"), "status": .string("failed"), "reason": .string("gone"),
        ]))
        #expect(try object(ViewerEvent.status(.shuttingDown)) == .object(["type": .string("status"), "status": .string("shutting_down")]))
        #expect(try object(ViewerEvent.status(ViewerStatus(.live)))["status"] == .string("running"))
        #expect(try object(ViewerEvent.error("no")) == .object(["type": .string("error"), "message": .string("no")]))
        let page = ViewerEvent.page(url: "https://a.test/x")
        #expect(String(decoding: page.viewerJSON(), as: UTF8.self).contains("https://a.test/x"), "slashes unescaped")
    }

    @Test func runStepAndEvaluateMessagesHaveTheDocumentedFields() throws {
        let running = RunEvent(runID: "wr_1", status: "running", startedAt: "2026-01-02T03:04:05.678Z")
        #expect(try object(ViewerEvent.run(running)) == .object([
            "type": .string("run"), "run_id": .string("wr_1"), "status": .string("running"),
            "started_at": .string("2026-01-02T03:04:05.678Z"),
        ]), "no finished_at nor replay_url while running")
        var ended = running
        (ended.status, ended.finishedAt, ended.replayURL) = ("failed", "2026-01-02T03:05:00.000Z", "https://v.test/replay/wr_1?token=t")
        #expect(try object(ViewerEvent.run(ended))["replay_url"] == .string("https://v.test/replay/wr_1?token=t"))
        #expect(try JSONDecoder().decode(RunEvent.self, from: ViewerEvent.run(ended).viewerJSON()) == ended,
                "a node reads its owner's run messages back")
        let step = StepEvent(runID: "wr_1", index: 2, label: "Log in", at: "2026-01-02T03:04:06.000Z")
        #expect(try object(ViewerEvent.step(step)) == .object([
            "type": .string("step"), "run_id": .string("wr_1"), "index": .number(2), "label": .string("Log in"),
            "at": .string("2026-01-02T03:04:06.000Z"),
        ]))

        #expect(try decode(#"{"type":"evaluate","id":"a","expression":"1+1"}"#) == .evaluate(id: .string("a"), expression: "1+1"))
        #expect(try decode(#"{"type":"evaluate","expression":5}"#) == .evaluate(id: .null, expression: nil))
        #expect(try decode(#"{"type":"evaluate"}"#).isControl, "needs control permission; relayed to the owner")
        #expect(try object(ViewerEvent.evaluateResult(id: .int(7), .success(.array([.int(1), .null])))) == .object([
            "type": .string("evaluate_result"), "id": .number(7), "value": .array([.number(1), .null]),
        ]))
        #expect(try object(ViewerEvent.evaluateResult(id: .int(7), .success(.null))) == .object([
            "type": .string("evaluate_result"), "id": .number(7), "value": .null,
        ]), "a null value is written, not left out")
        #expect(try object(ViewerEvent.evaluateResult(id: .string("x"), .failure(EvaluationRefusal("boom")))) == .object([
            "type": .string("evaluate_result"), "id": .string("x"), "error": .string("boom"),
        ]))
    }

    @Test func h264HelloAndConfigCarryWhatAVideoDecoderNeeds() throws {
        let config = VideoConfig(codec: "avc1.64001f", avcC: Data([1, 0x64, 0, 0x1f]), codedWidth: 1280, codedHeight: 576)
        let hello = try object(ViewerEvent.hello(sessionID: "pbs_1", width: 1280, height: 577, controlPermitted: false,
                                                 format: .h264(config)))
        #expect(hello["format"] == .string("h264") && hello["codec"] == .string("avc1.64001f"))
        #expect(hello["description"] == .string("AWQAHw==") && hello["coded_width"] == .number(1280)
            && hello["coded_height"] == .number(576) && hello["width"] == .number(1280))
        let early = try object(ViewerEvent.hello(sessionID: "pbs_1", width: 0, height: 0, controlPermitted: false,
                                                 format: .h264(nil)))
        #expect(early["format"] == .string("h264") && early["codec"] == .null, "no configuration before the first picture")
        #expect(try object(ViewerEvent.config(config, width: 1280, height: 577)) == .object([
            "type": .string("config"), "codec": .string("avc1.64001f"), "description": .string("AWQAHw=="),
            "coded_width": .number(1280), "coded_height": .number(576), "width": .number(1280), "height": .number(577),
        ]))
    }
}
