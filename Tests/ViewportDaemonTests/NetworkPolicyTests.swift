import Foundation
import Testing
@testable import ViewportDaemon

@Suite("Network policy (where a tenant may make the daemon connect)")
struct NetworkPolicyTests {
    private let policy = NetworkPolicy(config: Config())

    private func allowed(_ host: String, _ purpose: NetworkPolicy.Purpose) -> Bool {
        (try? policy.resolve(host, for: purpose)) != nil
    }

    @Test func browsersMayBeOnLoopbackAndPrivateRangesButNotLinkLocalOrPublic() {
        for host in ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "::1", "fd00::5", "localhost"] {
            #expect(allowed(host, .browser), "\(host)")
        }
        for host in ["169.254.169.254", "fe80::1", "8.8.8.8", "0.0.0.0", "::ffff:169.254.169.254"] {
            #expect(!allowed(host, .browser), "\(host)")
        }
    }

    @Test func webhooksReachPublicAddressesOnlyUnlessTheOperatorListsMore() {
        #expect(allowed("8.8.8.8", .webhook))
        for host in ["127.0.0.1", "10.0.0.1", "192.168.0.1", "169.254.169.254", "::1", "::ffff:127.0.0.1", "0.0.0.0",
                     "224.0.0.1", "100.64.0.1"] {
            #expect(!allowed(host, .webhook), "\(host)")
        }
        var config = Config()
        config.network.webhookAllow = ["10.9.0.0/16"]
        let listed = NetworkPolicy(config: config)
        #expect((try? listed.resolve("10.9.1.1", for: .webhook)) != nil)
        #expect((try? listed.resolve("10.8.1.1", for: .webhook)) == nil)
    }

    @Test func aNameIsAnsweredWithAnIPv4AddressWhenItHasOne() throws {
        // The event loop connects over IPv4; localhost resolves to ::1 as well.
        #expect(try policy.resolve("localhost", for: .browser) == "127.0.0.1")
    }

    @Test func aRefusalNamesTheRule() {
        #expect(throws: NetworkPolicy.Refusal(description: "address 169.254.169.254 is link-local; webhooks reach it only if network.webhook_allow lists it")) {
            _ = try policy.resolve("169.254.169.254", for: .webhook)
        }
        #expect(throws: NetworkPolicy.Refusal(description: "address 169.254.169.254 is not in network.browser_allow")) {
            _ = try policy.resolve("169.254.169.254", for: .browser)
        }
    }

    @Test func cidrsMatchByPrefix() throws {
        let net = try #require(CIDR("172.16.0.0/12"))
        #expect(net.contains(try #require(CIDR.parse("172.31.255.255"))))
        #expect(!net.contains(try #require(CIDR.parse("172.32.0.0"))))
        #expect(CIDR("10.0.0.0/33") == nil && CIDR("nonsense") == nil && CIDR("::/129") == nil)
        #expect(try #require(CIDR("fd00::/8")).contains(try #require(CIDR.parse("fdff::1"))))
    }
}
