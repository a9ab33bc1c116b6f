import Foundation

/// Where the daemon may connect on behalf of a tenant (SSRF): the hosts of `browser_address` and `vnc_address`
/// must resolve only to allowed networks (default: loopback and private ranges; link-local such as the cloud
/// metadata address 169.254.169.254 only when listed), and webhooks may reach public addresses, and loopback,
/// private or link-local ones only when the operator lists them.
///
/// A host name is resolved once and the connection goes to the checked address, so a name that resolves
/// elsewhere the second time (DNS rebinding) cannot slip through.
struct NetworkPolicy: Sendable {
    /// A refusal, naming the rule (shown to the tenant; it says nothing about the network beyond the rule).
    struct Refusal: Error, CustomStringConvertible, Equatable {
        let description: String
    }

    /// What a connection is for: the rules differ.
    enum Purpose: Sendable { case browser, webhook }

    let browserAllow: [CIDR]
    let webhookAllow: [CIDR]

    static let loopback = ["127.0.0.0/8", "::1/128"].compactMap(CIDR.init)
    static let privateRanges = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"]
        .compactMap(CIDR.init)
    static let linkLocal = ["169.254.0.0/16", "fe80::/10"].compactMap(CIDR.init)
    /// Never a destination: "this network", multicast, broadcast, reserved, and IPv4-mapped/compatible IPv6 forms
    /// that would hide an IPv4 address from the checks.
    static let unroutable = ["0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "192.0.0.0/24", "198.18.0.0/15",
                             "::/128", "::ffff:0:0/96", "::/96", "ff00::/8", "64:ff9b::/96", "64:ff9b:1::/48",
                             "2002::/16", "2001::/32", "fec0::/10", "100::/64"].compactMap(CIDR.init)

    init(config: Config) {
        browserAllow = config.network.browserAllow.compactMap(CIDR.init)
        webhookAllow = config.network.webhookAllow.compactMap(CIDR.init)
    }

    init(browserAllow: [CIDR], webhookAllow: [CIDR]) {
        self.browserAllow = browserAllow
        self.webhookAllow = webhookAllow
    }

    /// Throws unless `ip` may be reached for `purpose`.
    func check(_ ip: [UInt8], for purpose: Purpose) throws(Refusal) {
        let text = CIDR.format(ip)
        switch purpose {
        case .browser:
            guard browserAllow.contains(where: { $0.contains(ip) }) else {
                throw Refusal(description: "address \(text) is not in network.browser_allow")
            }
        case .webhook:
            if webhookAllow.contains(where: { $0.contains(ip) }) { return }
            if Self.unroutable.contains(where: { $0.contains(ip) }) {
                throw Refusal(description: "address \(text) is not a routable unicast address")
            }
            for (ranges, name) in [(Self.loopback, "loopback"), (Self.linkLocal, "link-local"),
                                   (Self.privateRanges, "private")] where ranges.contains(where: { $0.contains(ip) }) {
                throw Refusal(description: "address \(text) is \(name); webhooks reach it only if network.webhook_allow lists it")
            }
        }
    }

    /// Resolves `host` and checks every address it has; returns one to connect to, as a literal: IPv4 first (the
    /// event loop connects over IPv4; `localhost` often resolves to ::1 first).
    func resolve(_ host: String, for purpose: Purpose) throws(Refusal) -> String {
        let addresses = try Self.addresses(of: host)
        for address in addresses { try check(address, for: purpose) }
        return CIDR.format(addresses.first { $0.count == 4 } ?? addresses[0])
    }

    /// ``resolve(_:for:)`` on one of Dispatch's threads, not the cooperative pool: a tenant's slow DNS server must
    /// not stall every task of the daemon.
    func resolved(_ host: String, for purpose: Purpose) async throws(Refusal) -> String {
        let result: Result<String, Refusal> = await withCheckedContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(returning: Result { () throws(Refusal) -> String in try resolve(host, for: purpose) })
            }
        }
        return try result.get()
    }

    /// The addresses `host` resolves to (a literal resolves to itself).
    static func addresses(of host: String) throws(Refusal) -> [[UInt8]] {
        if let literal = CIDR.parse(host) { return [literal] }
        guard !host.isEmpty, host.utf8.count <= 253 else { throw Refusal(description: "host name is not valid") }
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &list) == 0, let first = list else {
            throw Refusal(description: "host \(host) does not resolve")
        }
        defer { freeaddrinfo(list) }
        var result: [[UInt8]] = []
        for entry in sequence(first: first, next: { $0.pointee.ai_next }) {
            guard let raw = entry.pointee.ai_addr else { continue }
            switch Int32(raw.pointee.sa_family) {
            case AF_INET:
                raw.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { sin in
                    var addr = sin.pointee.sin_addr
                    result.append(withUnsafeBytes(of: &addr) { Array($0) })
                }
            case AF_INET6:
                raw.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { sin in
                    var addr = sin.pointee.sin6_addr
                    result.append(withUnsafeBytes(of: &addr) { Array($0) })
                }
            default: continue
            }
        }
        var unique: [[UInt8]] = []
        for address in result where !unique.contains(address) { unique.append(address) }
        guard !unique.isEmpty else { throw Refusal(description: "host \(host) has no address") }
        return unique
    }
}
