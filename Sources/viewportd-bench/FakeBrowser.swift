import Foundation
import Synchronization
import WebSocketIO

/// Just enough of a Chrome DevTools endpoint for the fan-out benchmark: one tab with one page whose screencast
/// sends a `frameBytes` JPEG at `fps`, stamped with the send time, so frames take viewportd's real CDP path.
final class FakeBrowser: HTTPServerDelegate, @unchecked Sendable {
    private let loop: EventLoop
    let address: String
    private let frameBase64: String
    private let sent = Atomic(0)
    /// Connections with a screencast running; service thread only.
    private var screencasts: [ObjectIdentifier: (socket: WebSocket, connection: Connection)] = [:]

    var framesSent: Int { sent.load(ordering: .relaxed) }

    init(fps: Int, frameBytes: Int) throws {
        loop = try EventLoop(.init(host: "127.0.0.1", port: 0))
        address = "http://127.0.0.1:\(loop.port ?? 0)"
        frameBase64 = Self.jpeg(bytes: frameBytes).base64EncodedString()
        loop.start(server: self)
        let interval = 1.0 / Double(fps)
        let thread = Thread { [self] in
            var next = Date().timeIntervalSince1970
            while true {
                next += interval
                let wait = next - Date().timeIntervalSince1970
                if wait > 0 { usleep(useconds_t(wait * 1_000_000)) }
                loop.execute { self.tick() }
            }
        }
        thread.start()
    }

    func respond(to request: HTTPRequest) async -> HTTPResponse {
        let body = ["webSocketDebuggerUrl": "ws://127.0.0.1:\(loop.port ?? 0)/devtools/browser/bench", "Browser": "FakeBrowser/1.0"]
        return HTTPResponse(status: 200, contentType: "application/json", body: try! JSONSerialization.data(withJSONObject: body))
    }

    func upgrade(_ request: HTTPRequest) -> WebSocketUpgrade { .accept(Connection(browser: self), maxMessageBytes: 1 << 20) }

    private func tick() {
        guard !screencasts.isEmpty else { return }
        let timestamp = String(format: "%.6f", Date().timeIntervalSince1970)
        let message = #"{"method":"Page.screencastFrame","params":{"data":""# + frameBase64
            + #"","metadata":{"timestamp":"# + timestamp + #"},"sessionId":1},"sessionId":"page-session"}"#
        let payload = Payload(copying: Array(message.utf8))
        for (socket, connection) in screencasts.values {
            connection.outbox.append(.text(payload))
            socket.requestWrite()
        }
        sent.add(1, ordering: .relaxed)
    }

    /// A decodable JPEG of about `bytes` bytes: a real 64×48 image with comment segments to pad it.
    static func jpeg(bytes: Int) -> Data {
        let image = Data(base64Encoded: "/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgKCgsKCw0NDQ0NDRAPEBAQEBAQEBAQEBASEhIVFRUSEhIQEBISFBQVFRcXFxUVFRUXFxkZGR4eHBwjIyQrKzP/xAC8AAACAgMBAQAAAAAAAAAAAAAABwYIBAUDAgEBAAIDAQEBAAAAAAAAAAAAAAAGBwQIBQIBEAACAQIEAgUGBhMBAAAAAAABAgMAEQUEEjEhBlEHQVITYrFDIhQjFRaBkuPTwuGjs8S0w4QyJEQ1gmFFcWN18EIRAAEDAgMDBQYSCwEAAAAAAAEAAgMEERIhBRMGMUFRcTIUIsHDFYMk45KEo6TUxNPCYYEXUkRiYwdD4dEW0kWxZILw5JOR/8AAEQgAMABAAwESAAISAAMSAP/aAAwDAQACEQMRAD8Ar/W4wbC5caxLK5CI6WnkCluB0IAWkkszIG0Rhm06gWtYcaEIQmthOEnOESygiEH+xkI7B5Peb5Bx2YEUUcEaxxqFVRYAf9v0k8SaoabppqjtJLiIHoMhHIPi5z8g+J2jjZExrGNDWtFgB/n/AKeVNe+2+0egxuoqJzZNQe3M5ObSNcMnvBuDKRnHGcrd28YbB2YKysqdQqZaqqldNNK7E97uJPDgLAACwa0ANa0AAABLxmLksxuTua80y09PDSQshhYI44xZrRwA/mSTmScyczmrC2rS0tPQ08dPTxtiiibhYxvAD5cySc3OJJcSSTdWks6Ka0LP6FcWisAITUhLIgEWPGvtN7Hujc17HFjmkOa5pIc0g3BBGYIPAheFAUcj4ntkjc5j2ODmuaS1zXA3DmkZgg5gjMLwsHCcZM5EGZI8Qn1HsAHv/wCTawDd3sO2+8FVipDKSCCCCDYgjYg9NS3puq7Y7GcjGT3D8gHfZNrAHm5+HHinAlpBBIINwRkQRyhSvvtuCNNjdqOkxuNMxt6imxOkdAGjOZheXPdFyyAkujPddS+HR8kcc0b45GNkY9pY9jwHNe1wsWuabggjIg5EK2NQ/lHHPh/BcvmXN509xmeHpowLtwRF94pWSyDSuvTfhTUhQIhIzqsjjfmCZmRWMeRmdCQCUYywpqUn9E6WZbjjpYjY106qv39mf9fL+MZehCEJp0U1oWf0Ja0U0oW60JZ0U1oWf0K4tFYAQmpCWdFNiFn9CWtFNKFupCm/VJJIY8XjLsUVso6pc6VZxOGYLsCwRQxHEhRfavHVH/WfzL8JprQoAQo1yrhEmHYplcQjzCsYWa8bQmzK6NG41CUWOljpaxAaxII4VE8rzVn8pbRFlTbvLIfNKKXJ9a2P5GLylvgFWJdHp5us+UdBb+4U3VO73Z7+c4vJW8IVUn1+rn6zIB0Nf35CrJey+7D69+y326heR5pklYQ5pIY1PBXUMAp8vU7cD09nbw2q/t13WHxf7I9AXLo9E02Sa1RLUsDuDmvjAB+1eI5Hn5OVRDVbm9mv57i8hbwxUzb1aBXMojUaUBUSR3dLTyAukkZzwYCy725nZkEvHVOIAO4y4T4Zt41/4LfZ1wkxPMOfWSMEdlmHnanaLf8A2hA8XWv/AFN/c66cG5GkYWvjqKx7XAOa4SQua4EXBBEFiCOBC4NT+InZzbxbi9VW9zldR+4mjVrWyCprHNeA5ro5YC1zXC4c07AggjMEcVoV5N1ftv3D6atcvN2IL6LK/Ml+uprpN8u1W8ywX+/v4ELo0+6On01sEtUbfSfF3oQoYdvHh+reu+hq4d3qQ/mT+mZ72nDneY/Y7/q2u3+XT+TNZma5fymbvrecX7rIPPGaheD8N9t/E8PqW/ukLjRfiFq8PVgoD0xz+2AutTb09ot5ph8tfwQV+Ddmip+rJUnpdH3oglJ8ZfeFPZdu3xfo6zfi7k9ZfxMxc+UlvvdSL823c4vGnsT/AGVxvnD1i1thQf8AOf2wlql3c7TbznD5K/hAqdPvDV0/VjgPS1/ekC0UUXiC97fJepRheDyOhfMa4l2VbWkP8zqBsOgWud9t2CXc/Zgntt7fcW8MunS6pqNU1zqmKCIHJrQyRr+k4pDYcwtc8enV9NqHaBfZ4f7r/BCh3eLfik0WRlNoroa6QWdNO921pmgjKOMwuZtH8C5wdhZ1c3E4evLONR8r4ccmuWbMl5nneQzCMFmCrZUELaQFRd2Ylrm9jYMFuR8Lb02d+fD9RS1Vs7LfPHb5P1r5UPNTfHYX+j+m6dW7qYvrnrPoqoDeiuH5dN6WT31f/9k=")!
        var padded = Data(image.prefix(2))
        var remaining = max(0, bytes - image.count)
        while remaining > 0 {
            let chunk = min(remaining, 65_000)
            padded += Data([0xFF, 0xFE, UInt8((chunk + 2) >> 8), UInt8((chunk + 2) & 0xFF)]) + Data(repeating: 0x20, count: chunk)
            remaining -= chunk + 4
        }
        return padded + image.dropFirst(2)
    }

    final class Connection: WebSocketDelegate {
        unowned let browser: FakeBrowser
        var outbox: [OutboundMessage] = []
        init(browser: FakeBrowser) { self.browser = browser }

        func webSocketDidOpen(_ socket: WebSocket) {}

        func webSocket(_ socket: WebSocket, didReceive message: InboundMessage) {
            let object = json(message.data)
            guard let id = object["id"] as? Int, let method = object["method"] as? String else { return }
            let tab: [String: Any] = ["targetId": "tab-1", "type": "tab", "url": "about:blank", "attached": true,
                                      "embedderData": ["tabActive": true]]
            var result: [String: Any] = [:]
            var events: [[String: Any]] = []
            switch method {
            case "Target.setDiscoverTargets":
                events.append(["method": "Target.targetCreated", "params": ["targetInfo": tab]])
            case "Target.getTargets":
                result = ["targetInfos": [tab]]
            case "Target.attachToTarget":
                result = ["sessionId": "tab-session"]
            case "Target.setAutoAttach":
                events.append(["method": "Target.attachedToTarget", "sessionId": "tab-session", "params": [
                    "sessionId": "page-session", "waitingForDebugger": false,
                    "targetInfo": ["targetId": "page-1", "type": "page", "url": "https://bench.invalid/", "attached": true],
                ]])
            case "Page.startScreencast":
                browser.screencasts[ObjectIdentifier(self)] = (socket, self)
            case "Page.stopScreencast":
                browser.screencasts[ObjectIdentifier(self)] = nil
            case "Page.captureScreenshot":
                result = ["data": browser.frameBase64]
            default:
                break
            }
            send(socket, ["id": id, "result": result])
            for event in events { send(socket, event) }
        }

        private func send(_ socket: WebSocket, _ object: [String: Any]) {
            outbox.append(.text(Payload(copying: try! JSONSerialization.data(withJSONObject: object))))
            socket.requestWrite()
        }

        func nextMessage(for socket: WebSocket) -> OutboundMessage? { outbox.isEmpty ? nil : outbox.removeFirst() }
        func hasMessages(for socket: WebSocket) -> Bool { !outbox.isEmpty }
        func webSocketDidClose(_ socket: WebSocket, code: UInt16?, reason: String) {
            browser.screencasts[ObjectIdentifier(self)] = nil
        }
    }
}
