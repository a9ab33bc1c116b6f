public import Foundation
import ViewportCore

/// Hosts on one test network, each a network namespace of its own, for running viewportd nodes (or viewers) as
/// separate machines, in the tests and in `viewportd-bench link`.
/// A bridge in the root namespace has `rootAddress` (10.77.N.1/24, N unique among the harnesses alive on this
/// machine); each host is a namespace whose `eth0` (10.77.N.(10+i)/24, `lo` up, default route via the bridge) is one
/// end of a veth pair, the other end a port of the bridge. Servers the hosts share (PostgreSQL, S3) listen on
/// `rootAddress`. Needs root and iproute2.
///
/// Neighbours (ARP) are static, so that after `cutLink` connections to and from the host time out, as with a host
/// lost behind a switch, rather than fail after 3 s with "no route to host".
///
///     try await ClusterNet.with(hosts: ["a", "b"]) { net in
///         let a = try await ChildDaemon.start(stateDir: dir, on: try net.host("a"))   // a.base: http://10.77.N.10:PORT
///         let browser = try await Chromium.launch(url: page, launcher: try net.host("a").exec)
///     }
public final class ClusterNet: Sendable {
    public static let ip = "/sbin/ip"
    public static let tc = "/sbin/tc"

    /// One host of the network.
    public struct Host: Sendable {
        public let name: String
        /// Its network namespace (`ip netns` name).
        public let namespace: String
        public let address: String
        /// The end of its veth pair on the bridge, in the root namespace.
        public let link: String
        fileprivate let mac: String

        /// The command prefix that runs a command inside the host: `ip netns exec <namespace>`.
        public var exec: [String] { [ClusterNet.ip, "netns", "exec", namespace] }
    }

    public let hosts: [Host]
    /// The bridge's address: where the hosts reach the root namespace.
    public let rootAddress: String
    public let bridge: String
    private let subnet: Int
    private let lock: Int32

    /// Builds the network, runs `body`, and tears it all down however `body` ends: every process in the
    /// namespaces is SIGKILLed, the namespaces, veths and bridge are deleted. Leftovers of an earlier run that was
    /// killed are deleted first. `hosts` are short lower-case names (letters and digits, at most 8).
    public static func with<T>(hosts: [String], _ body: (ClusterNet) async throws -> T) async throws -> T {
        let net = try ClusterNet(hosts: hosts)
        let result: T
        do { result = try await body(net) } catch {
            net.tearDown()
            throw error
        }
        net.tearDown()
        return result
    }

    private init(hosts names: [String]) throws {
        guard geteuid() == 0 else { throw ClusterNetError("network namespaces need root") }
        guard Set(names).count == names.count && names.count <= 200 else {
            throw ClusterNetError("distinct host names: \(names)")
        }
        for name in names where name.range(of: "^[a-z0-9]{1,8}$", options: .regularExpression) == nil {
            throw ClusterNetError("host name \(name)")
        }
        let (subnet, lock) = try Self.claimSubnet()
        (self.subnet, self.lock) = (subnet, lock)
        // The token keeps names apart from anything a killed run of the same subnet left behind.
        let prefix = "vc\(subnet)-\(String(format: "%04x", UInt16.random(in: 0...UInt16.max)))-"
        bridge = prefix + "br"
        rootAddress = "10.77.\(subnet).1"
        hosts = names.enumerated().map { index, name in
            Host(name: name, namespace: prefix + name, address: "10.77.\(subnet).\(10 + index)", link: prefix + "\(index)",
                 mac: Self.mac(subnet: subnet, host: 10 + index))
        }
        Self.removeLeftovers(ownSubnet: subnet)
        do { try build() } catch {
            tearDown()
            throw error
        }
    }

    /// The host named `name`.
    public func host(_ name: String) throws -> Host {
        guard let host = hosts.first(where: { $0.name == name }) else {
            throw ClusterNetError("no host \(name) in \(hosts.map(\.name))")
        }
        return host
    }

    /// The address of the host named `name`.
    public func address(of name: String) throws -> String { try host(name).address }

    /// Takes the host off the network (its port on the bridge down): packets to and from it are lost, so
    /// connections time out; its processes keep running.
    public func cutLink(_ name: String) throws { try Self.run([Self.ip, "link", "set", try host(name).link, "down"]) }

    /// Puts the host back on the network; connections that had not timed out go on.
    public func restoreLink(_ name: String) throws { try Self.run([Self.ip, "link", "set", try host(name).link, "up"]) }

    /// Kills every process in the host (SIGKILL), as a power loss would, and returns once they are gone.
    public func killAll(in name: String) throws { Self.killProcesses(inNamespace: try host(name).namespace) }

    /// Limits the host's traffic to `rateMbit` in each direction and, when `delayMs` > 0, delays it by `delayMs` in
    /// each direction (netem: the kernel needs sch_netem). `unshape` lifts it.
    public func shape(_ name: String, rateMbit: Double, delayMs: Double = 0) throws {
        let host = try host(name)
        let burst = max(16_000, Int(rateMbit * 1_000_000 / 8 / 100))
        let qdisc = delayMs > 0
            ? ["netem", "delay", "\(delayMs)ms", "rate", "\(rateMbit)mbit", "limit", "100000"]
            : ["tbf", "rate", "\(rateMbit)mbit", "burst", "\(burst)", "latency", "200ms"]
        try Self.run([Self.tc, "qdisc", "replace", "dev", host.link, "root"] + qdisc)
        try Self.run([Self.tc, "-n", host.namespace, "qdisc", "replace", "dev", "eth0", "root"] + qdisc)
    }

    /// Lifts `shape`.
    public func unshape(_ name: String) throws {
        let host = try host(name)
        try Self.run([Self.tc, "qdisc", "del", "dev", host.link, "root"])
        try Self.run([Self.tc, "-n", host.namespace, "qdisc", "del", "dev", "eth0", "root"])
    }

    /// Runs `executable` inside the host to its end; returns its exit status and its output (standard output and
    /// error together).
    public func run(in name: String, _ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let command = try host(name).exec + [executable] + arguments
        let (status, output) = try Self.execute(command)
        return (status, String(decoding: output, as: UTF8.self))
    }

    private func build() throws {
        let ip = Self.ip
        try Self.run([ip, "link", "add", bridge, "address", Self.mac(subnet: subnet, host: 1), "type", "bridge"])
        try Self.run([ip, "addr", "add", rootAddress + "/24", "dev", bridge])
        try Self.run([ip, "link", "set", bridge, "up"])
        for host in hosts {
            let inside = [ip, "-n", host.namespace]
            try Self.run([ip, "netns", "add", host.namespace])
            try Self.run([ip, "link", "add", host.link, "type", "veth", "peer", "name", "eth0", "address", host.mac,
                          "netns", host.namespace])
            try Self.run([ip, "link", "set", host.link, "master", bridge, "up"])
            try Self.run(inside + ["addr", "add", host.address + "/24", "dev", "eth0"])
            try Self.run(inside + ["link", "set", "eth0", "up"])
            try Self.run(inside + ["link", "set", "lo", "up"])
            try Self.run(inside + ["route", "add", "default", "via", rootAddress])
            let neighbours = [(rootAddress, Self.mac(subnet: subnet, host: 1))]
                + hosts.filter { $0.name != host.name }.map { ($0.address, $0.mac) }
            for (address, mac) in neighbours {
                try Self.run(inside + ["neigh", "replace", address, "lladdr", mac, "nud", "permanent", "dev", "eth0"])
            }
            try Self.run([ip, "neigh", "replace", host.address, "lladdr", host.mac, "nud", "permanent", "dev", bridge])
        }
    }

    private func tearDown() {
        Self.remove(namespaces: hosts.map(\.namespace), links: hosts.map(\.link) + [bridge])
        close(lock)
    }

    /// The locally administered MAC address of host `host` (1: the bridge) in `subnet`.
    private static func mac(subnet: Int, host: Int) -> String { String(format: "02:77:%02x:00:00:%02x", subnet, host) }

    /// Harnesses hold /run/lock/viewportd-clusternet/N (flock, released when their process dies) while they use
    /// 10.77.N.0/24 and names starting `vcN-`.
    private static let lockDirectory = "/run/lock/viewportd-clusternet"

    /// A free subnet N and the descriptor holding its lock.
    private static func claimSubnet() throws -> (Int, Int32) {
        try FileManager.default.createDirectory(atPath: lockDirectory, withIntermediateDirectories: true)
        let addresses = try run([ip, "-o", "-4", "addr", "show"])
        let start = Int.random(in: 0..<254)
        for offset in 0..<254 {
            let subnet = (start + offset) % 254 + 1
            // Taken by an interface of something else (or by a leftover, removed later by whoever claims it).
            if addresses.contains("inet 10.77.\(subnet).") { continue }
            if let lock = tryLock(subnet) { return (subnet, lock) }
        }
        throw ClusterNetError("no free subnet 10.77.N.0/24")
    }

    private static func tryLock(_ subnet: Int) -> Int32? {
        let fd = open(lockDirectory + "/\(subnet)", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return nil }
        if flock(fd, LOCK_EX | LOCK_NB) == 0 { return fd }
        close(fd)
        return nil
    }

    /// Removes namespaces and links named `vcN-` whose subnet no live harness holds (a killed run's).
    private static func removeLeftovers(ownSubnet: Int) {
        func names(_ arguments: [String], _ key: String) -> [String] {
            let output = (try? execute([ip] + arguments, stderr: false).output) ?? Data()
            let entries = (try? JSONSerialization.jsonObject(with: output)) as? [[String: Any]] ?? []
            return entries.compactMap { $0[key] as? String }
        }
        let namespaces = names(["-j", "netns", "list"], "name")
        let links = names(["-j", "link", "show"], "ifname")
        func subnet(_ name: String) -> Int? {
            guard let match = name.firstMatch(of: /^vc([0-9]{1,3})-[0-9a-f]{4}-/) else { return nil }
            return Int(match.1)
        }
        for stale in Set((namespaces + links).compactMap(subnet)) {
            let lock = stale == ownSubnet ? nil : tryLock(stale)
            guard stale == ownSubnet || lock != nil else { continue }
            remove(namespaces: namespaces.filter { subnet($0) == stale }, links: links.filter { subnet($0) == stale })
            if let lock { close(lock) }
        }
    }

    private static func remove(namespaces: [String], links: [String]) {
        for namespace in namespaces {
            killProcesses(inNamespace: namespace)
            _ = try? execute([ip, "netns", "delete", namespace])
        }
        // Deleting a namespace frees its veth ends only once the kernel gets to it; deleting them here is at once.
        for link in links { _ = try? execute([ip, "link", "delete", link]) }
    }

    /// SIGKILLs every process in `namespace` until none is left (they may be forking), for at most 10 s.
    private static func killProcesses(inNamespace namespace: String) {
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            let output = (try? execute([ip, "netns", "pids", namespace]).output).map { String(decoding: $0, as: UTF8.self) } ?? ""
            let pids = output.split(whereSeparator: \.isNewline).compactMap { pid_t($0) }
            if pids.isEmpty { return }
            for pid in pids { kill(pid, SIGKILL) }
            usleep(20_000)
        }
    }

    /// Runs `command` to its end; throws with its output unless it succeeds.
    @discardableResult
    private static func run(_ command: [String]) throws -> String {
        let (status, output) = try execute(command)
        let text = String(decoding: output, as: UTF8.self)
        guard status == 0 else { throw ClusterNetError("\(command.joined(separator: " ")) exited \(status): \(text)") }
        return text
    }

    /// Runs `command` to its end; returns its exit status and its standard output (and error, unless not `stderr`).
    private static func execute(_ command: [String], stderr: Bool = true) throws -> (status: Int32, output: Data) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = stderr ? pipe : FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExited()
        return (process.terminationStatus, output)
    }
}

public struct ClusterNetError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
