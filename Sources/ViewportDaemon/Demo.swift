import Digests
import Foundation
public import Logging

/// `viewportd demo`: the daemon on embedded defaults with one session showing a bundled animated page.
public enum Demo {
    /// Starts Chromium on the demo page, registers it as a session, prints a watch URL and an API key, and runs
    /// until SIGTERM/SIGINT.
    public static func run(config: Config, logger: Logger) async throws {
        var config = config
        if config.apiKeys.isEmpty {
            let key = "vpd_demo_" + Digest.randomBytes(16).base64URLEncoded()
            config.apiKeys = [Config.APIKey(key: key, organizationID: "org_demo")]
        }
        let apiKey = config.apiKeys[0]
        try FileManager.default.createDirectory(atPath: config.stateDir, withIntermediateDirectories: true)
        let page = URL(fileURLWithPath: config.stateDir).appendingPathComponent("demo.html")
        try Data(demoPage.utf8).write(to: page)

        let daemon = try buildDaemon(config, logger: logger)
        let browser = try await Chromium.launch(url: page.absoluteString)
        defer { browser.terminate() }
        async let running: Void = daemon.run()
        let id = try await daemon.createSession(organizationID: apiKey.organizationID, browserAddress: browser.address,
                                                timeoutMinutes: 1440)
        let base = daemon.config.effectivePublicURL
        var vnc = "(vnc.enabled is off)"
        if let bridge = daemon.sessions.vncBridge(id: id) {
            let password = bridge.passwords.mint(control: true, expiresAt: Date().addingTimeInterval(86_400))
            vnc = "vncviewer \(config.vnc.listen)::\(bridge.port)   password \(password) (drives the browser)"
        }
        // Unbuffered: print() holds the banner back when stdout is a file or a pipe.
        FileHandle.standardOutput.write(Data("""

        viewportd demo is running (Chromium pid \(browser.pid), DevTools \(browser.address))

          Watch live:  \(daemon.watchURL(sessionID: id, validFor: 86_400))
          API key:     \(apiKey.key)   (organization \(apiKey.organizationID))
          Session:     curl -H 'x-api-key: \(apiKey.key)' \(base)/v1/browser_sessions/\(id)
          Stream:      ws://\(config.listen.host):\(daemon.port)/stream/browser/\(id)  (header x-api-key)
          VNC:         \(vnc)

        Press Ctrl-C to stop.

        """.utf8))
        try await running
    }

    static let demoPage = #"""
<!doctype html>
<html><head><meta charset="utf-8"><title>viewportd demo</title>
<style>
  body { margin: 0; height: 100vh; overflow: hidden; font: 28px DejaVu Sans, sans-serif; color: #223;
         background: linear-gradient(135deg, #f4f7fb, #dfe7f3); }
  h1 { margin: 40px 60px 0; font-size: 44px; } #clock { margin: 10px 60px; font-variant-numeric: tabular-nums; }
  #box { position: absolute; width: 160px; height: 160px; border-radius: 24px; background: #e33;
         box-shadow: 0 10px 30px #0003; }
  #spinner { position: absolute; right: 80px; top: 60px; width: 120px; height: 120px; border-radius: 50%;
             border: 14px solid #2a5fd6; border-top-color: transparent; }
</style></head>
<body>
<h1>viewportd live view</h1>
<div id="clock"></div>
<div id="box"></div><div id="spinner"></div>
<script>
let frame = 0;
function tick(t) {
  frame++;
  const box = document.getElementById("box");
  box.style.left = (60 + (Math.sin(t / 900) + 1) * (innerWidth - 280) / 2) + "px";
  box.style.top = (220 + (Math.cos(t / 700) + 1) * (innerHeight - 420) / 2) + "px";
  box.style.background = "hsl(" + (t / 20 % 360) + ", 75%, 55%)";
  document.getElementById("spinner").style.transform = "rotate(" + (t / 3) + "deg)";
  document.getElementById("clock").textContent = new Date().toISOString().replace("T", " ").slice(0, 23) +
    "  ·  frame " + frame;
  requestAnimationFrame(tick);
}
requestAnimationFrame(tick);
</script>
</body></html>
"""#
}
