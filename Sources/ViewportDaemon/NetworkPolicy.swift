import Foundation

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a bare address is a /32 or /128.
struct CIDR: Sendable, Equatable, CustomStringConvertible {
    let address: [UInt8]
    let prefix: Int

    init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = Self.parse(String(parts[0])) else { return nil }
        let bits = address.count * 8
        if parts.count == 2 {
            guard let prefix = Int(parts[1]), (0...bits).contains(prefix) else { return nil }
            self.prefix = prefix
        } else {
            prefix = bits
        }
        self.address = address
    }

    var description: String { "\(Self.format(address))/\(prefix)" }

    /// True when `ip` (4 or 16 bytes) lies in this network.
    func contains(_ ip: [UInt8]) -> Bool {
        guard ip.count == address.count else { return false }
        var remaining = prefix
        for index in 0..<ip.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if ip[index] & mask != address[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    /// The 4 or 16 bytes of an IPv4 or IPv6 literal (brackets allowed around IPv6).
    static func parse(_ text: String) -> [UInt8]? {
        var host = text
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    static func format(_ ip: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = ip.count == 4 ? AF_INET : AF_INET6
        _ = ip.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) }
        return String(cString: buffer)
    }
}

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
    static let unroutable = ["0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "::/128", "::ffff:0:0/96", "::/96",
                             "ff00::/8", "64:ff9b::/96"].compactMap(CIDR.init)

    init(config: Config) {
        browserAllow = config.networkBrowserAllow.compactMap(CIDR.init)
        webhookAllow = config.networkWebhookAllow.compactMap(CIDR.init)
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

    /// Resolves `host` and checks every address it has; returns the first, as a literal to connect to.
    func resolve(_ host: String, for purpose: Purpose) throws(Refusal) -> String {
        let addresses = try Self.addresses(of: host)
        for address in addresses { try check(address, for: purpose) }
        return CIDR.format(addresses[0])
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
