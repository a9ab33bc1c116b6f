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
        let (object, frame) = try #require(FrameMessage.parse(Data(message.utf8)))
        #expect(object["method"] as? String == "Page.screencastFrame")
        #expect(object["sessionId"] as? String == "S1")
        let params = try #require(object["params"] as? [String: Any])
        #expect(params["sessionId"] as? Int == 7)
        #expect((params["metadata"] as? [String: Any])?["timestamp"] as? Double == 1795433746.5)
        #expect(frame?.data == image)
    }

    @Test func aScreenshotReplyCarriesItsImageToo() throws {
        let message = #"{"id":12,"result":{"data":""# + Data("jpeg".utf8).base64EncodedString() + #""}}"#
        let (object, frame) = try #require(FrameMessage.parse(Data(message.utf8)))
        #expect(object["id"] as? Int == 12)
        #expect(frame?.data == Data("jpeg".utf8))
    }

    @Test func messagesWithoutDataAreParsedWhole() throws {
        let message = #"{"method":"Target.targetInfoChanged","params":{"targetInfo":{"url":"https://x/?q=\"data\":\"y\""}}}"#
        let (object, frame) = try #require(FrameMessage.parse(Data(message.utf8)))
        #expect(frame == nil)
        let info = (object["params"] as? [String: Any])?["targetInfo"] as? [String: Any]
        #expect(info?["url"] as? String == #"https://x/?q="data":"y""#)
        #expect(FrameMessage.parse(Data("not json".utf8)) == nil)
    }
}
