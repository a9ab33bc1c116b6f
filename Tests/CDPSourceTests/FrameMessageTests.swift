import Foundation
import Testing
@testable import CDPSource

@Suite("CDP frame messages")
struct FrameMessageTests {
    @Test(arguments: [1, 2, 3, 4, 5, 100, 65_537])
    func base64DecodesLikeFoundation(count: Int) throws {
        var generator = SystemRandomNumberGenerator()
        let bytes = Data((0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let text = Array(bytes.base64EncodedString().utf8)
        let decoded = try #require(text.withUnsafeBytes { Base64.decode($0) })
        #expect(decoded.data == bytes)
    }

    @Test(arguments: ["", "abc", "ab=c", "a*cd", #"ab\/"#])
    func invalidBase64IsRefused(text: String) {
        #expect(Array(text.utf8).withUnsafeBytes { Base64.decode($0) } == nil)
    }

    @Test func aScreencastFrameIsSplitIntoItsFieldsAndItsImage() throws {
        let image = Data((0..<5000).map { UInt8($0 % 251) })
        let message = #"{"method":"Page.screencastFrame","params":{"data":""# + image.base64EncodedString()
            + #"","metadata":{"timestamp":1795433746.5,"deviceWidth":1280},"sessionId":7},"sessionId":"S1"}"#
        let parsed = try #require(FrameMessage.parse(Data(message.utf8)))
        guard case .event(.screencastFrame(let frame), let session) = parsed.message else {
            Issue.record("not a screencast frame: \(parsed.message)")
            return
        }
        #expect(session == .attached("S1"))
        #expect(frame.sessionId == 7)
        #expect(frame.timestamp == 1795433746.5)
        #expect(frame.deviceWidth == 1280)
        #expect(parsed.frame?.data == image)
    }

    @Test func aFrameWhoseMetadataIsNoNumberIsStillAFrame() throws {
        let message = #"{"method":"Page.screencastFrame","params":{"data":"AAAA","metadata":{"timestamp":"soon","deviceWidth":null},"sessionId":3}}"#
        let parsed = try #require(FrameMessage.parse(Data(message.utf8)))
        guard case .event(.screencastFrame(let frame), .root) = parsed.message else {
            Issue.record("not a screencast frame of the connection's own page: \(parsed.message)")
            return
        }
        #expect(frame.sessionId == 3)
        #expect(frame.timestamp == nil)
        #expect(frame.deviceWidth == nil)
    }

    @Test func aScreenshotReplyCarriesItsImageToo() throws {
        let message = #"{"id":12,"result":{"data":""# + Data("jpeg".utf8).base64EncodedString() + #""}}"#
        let parsed = try #require(FrameMessage.parse(Data(message.utf8)))
        guard case .reply(id: 12) = parsed.message else {
            Issue.record("not reply 12: \(parsed.message)")
            return
        }
        #expect(parsed.frame?.data == Data("jpeg".utf8))
    }

    @Test func aReplysResultDecodesFromTheMessage() throws {
        let message = #"{"id":3,"result":{"targetInfos":[{"targetId":"T","type":"tab","url":"","embedderData":{"tabActive":true}}]}}"#
        let parsed = try #require(FrameMessage.parse(Data(message.utf8)))
        let reply = try JSONDecoder().decode(CDPReply<GetTargets.Result>.self, from: parsed.json)
        #expect(reply.result?.targetInfos == [TargetInfo(targetId: "T", type: "tab", url: "", embedderData: .init(tabActive: true))])
        let error = #"{"id":4,"error":{"code":-32000,"message":"No target with given id found"}}"#
        #expect(try JSONDecoder().decode(CDPReply<AttachToTarget.Result>.self, from: Data(error.utf8)).result == nil)
    }

    @Test func messagesWithoutDataAreParsedWhole() throws {
        let message = #"{"method":"Target.targetInfoChanged","params":{"targetInfo":{"targetId":"p","type":"page","url":"https://x/?q=\"data\":\"y\""}}}"#
        let parsed = try #require(FrameMessage.parse(Data(message.utf8)))
        #expect(parsed.frame == nil)
        guard case .event(.targetInfo(let info), .root) = parsed.message else {
            Issue.record("not a target's info: \(parsed.message)")
            return
        }
        #expect(info.url == #"https://x/?q="data":"y""#)
        #expect(FrameMessage.parse(Data("not json".utf8)) == nil)
        #expect(FrameMessage.parse(Data(#"{"method":"Target.targetDestroyed","params":{"targetId":7}}"#.utf8)) == nil,
                "an event of the wrong shape is dropped")
    }
}
