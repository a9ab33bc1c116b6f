// libFuzzer target: the config loader (Config.load(yaml:environment:), Yams underneath) on a YAML file, the same
// text as an environment variable's value, and the round trip of what loaded through Config.yaml.
import CFuzzDriver
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    if let config = try? Config.load(yaml: text) {
        let again = try? Config.load(yaml: config.yaml(revealingSecrets: true))
        precondition(again == config, "Config.yaml does not load back to the same config")
    }
    _ = try? Config.load(yaml: nil, environment: ["VIEWPORTD_API_KEYS": text, "VIEWPORTD_SCREENCAST": text])
    return 0
}

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, fuzz))
