import ArgumentParser
import Digests
import Foundation
import ObjectStore
import ViewportDaemon

struct S3Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "s3",
        abstract: "Artifacts in object storage (a SeaweedFS of its own on loopback): upload throughput and memory"
            + " beside `aws s3 cp`, the extra CPU of shipping a live recording, the delay until a run's recording_url"
            + " works.")

    enum Measure: String, ExpressibleByArgument, CaseIterable {
        case upload, cpu, delay
    }

    @Option(parsing: .upToNextOption, help: "What to measure: upload, cpu (live segments), delay (recording_url).")
    var measures: [Measure] = Measure.allCases
    @Option(help: "Size of the uploaded file of random bytes, in MB (10^6 bytes).") var mb = 500
    @Option(help: "Upload this file instead (on the file system of the temporary directory).") var file: String?
    @Option(help: "s3.part_size_mb of the upload.") var partSizeMb = 16
    @Flag(inversion: .prefixedNo, help: "Upload the same file with `aws s3 cp` too (the anchor).") var anchor = true
    @Option(help: "Seconds of recording per store in the CPU measure.") var seconds = 30.0
    @Option(help: "Completed runs per store in the delay measure.") var runs = 5
    @Option(help: "The page headless Chromium shows for the recording measures.") var page = "../shared/fixtures/scroll.html"
    @Option(help: "SeaweedFS's weed, started on free loopback ports.") var weed = ".venv/bin/weed"
    @Option(help: "Use this S3 server instead of starting weed (credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).")
    var endpoint: String?
    @Option(help: "The bucket (created by the weed started; must exist with --endpoint).") var bucket = "viewportd-bench"
    @Flag(help: "Print the figures as one JSON object rather than text.") var json = false

    func run() async throws {
        signal(SIGPIPE, SIG_IGN)
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("viewportd-bench-s3-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: work) }
        let server: WeedServer?
        if endpoint == nil {
            setenv("AWS_ACCESS_KEY_ID", "viewportd-bench-access", 1)
            setenv("AWS_SECRET_ACCESS_KEY", "viewportd-bench-secret-0123456789", 1)
            server = try await WeedServer.start(weed: weed, bucket: bucket, directory: work.appendingPathComponent("weed").path)
        } else {
            server = nil
        }
        defer { server?.stop() }
        let environment = ProcessInfo.processInfo.environment
        let s3 = S3Target(endpoint: endpoint ?? server?.endpoint ?? "", bucket: bucket,
                          accessKey: environment["AWS_ACCESS_KEY_ID"] ?? "",
                          secretKey: environment["AWS_SECRET_ACCESS_KEY"] ?? "")
        var results: [String: Any] = [:]
        var cpuPerMB: Double?  // the uploader's, from the upload measure
        func say(_ text: String) { if !json { print(text) } }

        if measures.contains(.upload) {
            let source: String
            if let file {
                source = file
            } else {
                source = work.appendingPathComponent("random-\(mb)MB.bin").path
                try writeRandomFile(source, bytes: mb * 1_000_000)
            }
            let bytes = (try FileManager.default.attributesOfItem(atPath: source)[.size] as? NSNumber)?.intValue ?? 0
            let upload = try await measureUpload(source, to: s3, stateDir: work.appendingPathComponent("state").path)
            results["upload"] = upload
            let megabytes = Double(bytes) / 1e6
            say(String(format: "s3 upload: %.0f MB (%@) to %@ (`%@`)", megabytes, file ?? "random bytes",
                       server == nil ? s3.endpoint : "SeaweedFS on loopback", reproduce("upload")))
            let uploadSeconds = upload["seconds"] as? Double ?? 1, uploadCPU = upload["cpu_seconds"] as? Double ?? 0
            cpuPerMB = uploadCPU / megabytes
            say(String(format: "  viewportd (outbox, uploader: SHA-256 of the file, multipart in %d MiB parts, HEAD check)"
                             + "  %6.1f s  %6.1f MB/s  CPU %5.1f s  this process's peak RSS %.0f MiB before, %.0f MiB"
                             + " after (+%.0f MiB)",
                        partSizeMb, uploadSeconds, megabytes / uploadSeconds, uploadCPU,
                        upload["peak_rss_before_mib"] as? Double ?? 0, upload["peak_rss_after_mib"] as? Double ?? 0,
                        (upload["peak_rss_after_mib"] as? Double ?? 0) - (upload["peak_rss_before_mib"] as? Double ?? 0)))
            if anchor {
                let (seconds, cpu, peak) = try awsCopy(source, to: s3, log: work.appendingPathComponent("aws.log"))
                results["aws_s3_cp"] = ["seconds": seconds, "cpu_seconds": cpu, "peak_rss_mib": peak]
                say(String(format: "  anchor: aws s3 cp (awscli defaults: 8 MiB parts, 10 at once)"
                                 + "                        %6.1f s  %6.1f MB/s  CPU %5.1f s  its peak RSS %.0f MiB",
                            seconds, megabytes / seconds, cpu, peak))
            }
        }

        if measures.contains(.cpu) || measures.contains(.delay) {
            let (chromium, path) = try await launchChromium(page: page)
            defer { chromium.terminate() }
            var cpu: [String: [String: Any]] = [:]
            var delays: [String: [Double]] = [:]
            for store in ["local", "s3"] {
                let daemon = try await DaemonProcess.start(config: store == "s3" ? s3.daemonConfig : nil)
                defer { daemon.stop() }
                let session = try await daemon.createSession(browserAddress: chromium.address)
                try await Task.sleep(for: .seconds(2))
                if measures.contains(.cpu) {
                    cpu[store] = try await measureLiveCPU(daemon, session: session, store: store, s3: s3)
                }
                if measures.contains(.delay) {
                    delays[store] = try await measureDelays(daemon, session: session, store: store,
                                                            bucketURL: store == "s3" ? s3.endpoint : nil)
                }
                _ = try await daemon.closeSession(session)
            }
            if measures.contains(.cpu), let local = cpu["local"], let stored = cpu["s3"] {
                results["cpu"] = cpu
                func cpu(_ row: [String: Any]) -> Double { row["cpu_seconds"] as? Double ?? 0 }
                func frames(_ row: [String: Any]) -> Int { row["frames"] as? Int ?? 0 }
                func perFrame(_ row: [String: Any]) -> Double { cpu(row) / Double(max(1, frames(row))) }
                say("s3 cpu: viewportd's CPU (user + system) while one run records \(path.lastPathComponent) in headless"
                    + " Chromium for \(Int(seconds)) s, s3.segment_seconds 10 (`\(reproduce("cpu"))`)")
                for (name, row) in [("artifacts.store: local", local), ("artifacts.store: s3", stored)] {
                    say("  " + name.padding(toLength: 24, withPad: " ", startingAt: 0)
                        + String(format: " %6.2f CPU s  %6.2f CPU s/min  %5d frames recorded  %5.2f ms CPU/frame",
                                 cpu(row), 60 * cpu(row) / seconds, frames(row), 1000 * perFrame(row))
                        + ((row["parts"] as? Int).map { parts in
                            String(format: "  %d objects (init + parts), %.2f MB up", parts,
                                   Double(row["part_bytes"] as? Int ?? 0) / 1e6)
                        } ?? ""))
                }
                // Chromium's frame rate differs between the two windows, and the encoder's CPU follows it: compare
                // per frame, at the mean rate of both.
                let framesPerMinute = 60 * Double(frames(local) + frames(stored)) / (2 * seconds)
                say(String(format: "  s3 - local: %+.2f CPU s per minute of recording (per frame, at the mean %.0f"
                                 + " frames/min; raw %+.2f)", (perFrame(stored) - perFrame(local)) * framesPerMinute,
                            framesPerMinute, 60 * (cpu(stored) - cpu(local)) / seconds))
                if let cpuPerMB {
                    let megabytesPerMinute = 60 * Double(stored["part_bytes"] as? Int ?? 0) / 1e6 / seconds
                    say(String(format: "  the uploader's own share, at the upload measure's %.1f ms CPU per MB: %.2f MB/min"
                                     + " up, %+.3f CPU s per minute of recording (bytes only: each part's PUT, HEAD and outbox writes"
                                     + " come on top)", 1000 * cpuPerMB, megabytesPerMinute,
                                cpuPerMB * megabytesPerMinute))
                }
            }
            if measures.contains(.delay), let local = delays["local"], let stored = delays["s3"] {
                results["delay"] = ["local_seconds": local, "s3_seconds": stored]
                say("s3 delay: from the answer to POST /v1/runs/{id}/complete until GET /v1/runs/{id}'s recording_url"
                    + " answers 200 with all the recording's bytes (for s3: a bucket URL), \(runs) runs of 3 s each"
                    + " (`\(reproduce("delay"))`)")
                for (name, values) in [("artifacts.store: local", local), ("artifacts.store: s3", stored)] {
                    let sorted = values.sorted()
                    say("  " + name.padding(toLength: 24, withPad: " ", startingAt: 0)
                        + String(format: " median %7.1f ms   min %7.1f ms   max %7.1f ms",
                               1000 * sorted[sorted.count / 2], 1000 * (sorted.first ?? 0), 1000 * (sorted.last ?? 0)))
                }
            }
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: results, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    /// The command line that measures `measure` again with this run's options.
    private func reproduce(_ measure: String) -> String {
        var line = ".build/release/viewportd-bench s3 --measures \(measure)"
        switch measure {
        case "upload": line += (file.map { " --file \($0)" } ?? " --mb \(mb)") + " --part-size-mb \(partSizeMb)"
        case "cpu": line += " --seconds \(Int(seconds)) --page \(page)"
        default: line += " --runs \(runs) --page \(page)"
        }
        return line
    }

    /// Uploads `source` through the daemon's uploader; its duration and this process's peak RSS before and after.
    private func measureUpload(_ source: String, to s3: S3Target, stateDir: String) async throws -> [String: Any] {
        var config = Config()
        config.stateDir = stateDir
        config.artifacts.store = .s3
        config.s3.endpoint = s3.endpoint
        config.s3.bucket = s3.bucket
        config.s3.accessKeyID = s3.accessKey
        config.s3.secretAccessKey = s3.secretKey
        config.s3.prefix = "bench-upload"
        config.s3.partSizeMB = partSizeMb
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        // Publishing an artifact hashes it first; that is not the upload.
        let checksum = try Digest.sha256(file: source).hex
        let before = peakRSSMiB()
        let cpu = ownCPUSeconds()
        let start = Date()
        let key = try await uploadAsArtifact(path: source, checksum: checksum, config: config, timeout: 900)
        let seconds = Date().timeIntervalSince(start)
        return ["key": key, "seconds": seconds, "cpu_seconds": ownCPUSeconds() - cpu, "peak_rss_before_mib": before,
                "peak_rss_after_mib": peakRSSMiB(), "part_size_mib": partSizeMb]
    }

    /// `aws s3 cp` of `source` into the bucket: wall seconds, its CPU seconds and peak RSS.
    private func awsCopy(_ source: String, to s3: S3Target, log: URL) throws
        -> (seconds: Double, cpu: Double, peakRSSMiB: Double)
    {
        setenv("AWS_DEFAULT_REGION", "us-east-1", 1)
        let start = Date()
        let measured = try runMeasured("aws s3 cp", ["aws", "--endpoint-url", s3.endpoint, "s3", "cp", "--only-show-errors",
                                                     source, "s3://\(s3.bucket)/bench-anchor/aws-cp.bin"], log: log)
        return (Date().timeIntervalSince(start), measured.cpu, measured.peakRSSMiB)
    }

    /// The daemon's CPU seconds while a run records for ``seconds``, the frames it recorded, and with S3 the live
    /// parts that went up meanwhile.
    private func measureLiveCPU(_ daemon: DaemonProcess, session: String, store: String, s3: S3Target) async throws
        -> [String: Any]
    {
        let runID = "wr_cpu_\(store)"
        let start = daemon.cpuSeconds()
        _ = try await daemon.api("POST", "/v1/browser_sessions/\(session)/runs", ["run_id": runID])
        try await Task.sleep(for: .seconds(seconds))
        var row: [String: Any] = ["cpu_seconds": daemon.cpuSeconds() - start]
        if store == "s3" {
            let parts = try s3.client.listObjects(prefix: "\(S3Target.livePrefix)/org_bench/\(session)/")
            row["parts"] = parts.count
            row["part_bytes"] = Int(parts.reduce(0) { $0 + $1.size })
        }
        let done = try await daemon.api("POST", "/v1/runs/\(runID)/complete", ["status": "completed"])
        row["frames"] = done["recording_frames"] as? Int ?? 0
        return row
    }

    /// Seconds from each run's completion until its recording_url answers 200 with the whole recording (and, with
    /// `bucketURL`, is a URL of the bucket).
    private func measureDelays(_ daemon: DaemonProcess, session: String, store: String, bucketURL: String?) async throws
        -> [Double]
    {
        var delays: [Double] = []
        for index in 0..<runs {
            let runID = "wr_delay_\(store)_\(index)"
            _ = try await daemon.api("POST", "/v1/browser_sessions/\(session)/runs", ["run_id": runID])
            try await Task.sleep(for: .seconds(3))
            _ = try await daemon.api("POST", "/v1/runs/\(runID)/complete", ["status": "completed"])
            let completed = Date()
            let artifacts = try await daemon.apiJSON("GET", "/v1/runs/\(runID)/artifacts") as? [[String: Any]] ?? []
            guard let size = artifacts.first(where: { $0["artifact_type"] as? String == "recording" })?["file_size"] as? Int
            else { throw BenchError("run \(runID) has no recording") }
            while true {
                guard Date().timeIntervalSince(completed) < 120 else {
                    throw BenchError("the recording_url of \(runID) did not work within 120 s")
                }
                if let url = try await daemon.api("GET", "/v1/runs/\(runID)")["recording_url"] as? String,
                   bucketURL.map({ url.hasPrefix($0) }) ?? true,
                   let (status, body) = try? await clientLoop.httpRequest("GET", url, timeout: 30),
                   status == 200, body.count == size
                {
                    break
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            delays.append(Date().timeIntervalSince(completed))
        }
        return delays
    }
}

/// CPU seconds (user + system) this process has used.
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// The bucket the bench stores in.
struct S3Target {
    let endpoint: String
    let bucket: String
    let accessKey: String
    let secretKey: String
    /// The `s3.prefix` of the daemons of the recording measures.
    static let livePrefix = "bench-live"

    var client: S3Client {
        S3Client(location: S3Location(endpoint: endpoint, region: "us-east-1", bucket: bucket, pathStyle: true),
                 credentials: S3Credentials(accessKeyID: accessKey, secretAccessKey: secretKey), timeoutSeconds: 30)
    }

    /// The config file of a daemon that stores artifacts in this bucket.
    var daemonConfig: String {
        """
        artifacts:
          store: s3
        s3:
          endpoint: "\(endpoint)"
          bucket: "\(bucket)"
          prefix: "\(Self.livePrefix)"
          access_key_id: "\(accessKey)"
          secret_access_key: "\(secretKey)"
          segment_seconds: 10
        """
    }
}

/// Writes `bytes` random bytes (from /dev/urandom, 1 MiB at a time) to a new file at `path`.
func writeRandomFile(_ path: String, bytes: Int) throws {
    let random = try FileHandle(forReadingFrom: URL(fileURLWithPath: "/dev/urandom"))
    defer { try? random.close() }
    guard FileManager.default.createFile(atPath: path, contents: nil) else { throw BenchError("cannot create \(path)") }
    let output = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
    defer { try? output.close() }
    var remaining = bytes
    while remaining > 0 {
        let chunk = try random.read(upToCount: min(remaining, 1 << 20)) ?? Data()
        try output.write(contentsOf: chunk)
        remaining -= chunk.count
    }
}

/// SeaweedFS's `weed mini` on loopback for the bench, every port it opens chosen free, with `bucket` created and
/// signatures checked against the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY of the environment. Stopped with
/// SIGKILL; its data is in `directory`.
final class WeedServer {
    let process = Process()
    let endpoint: String

    private init(endpoint: String) { self.endpoint = endpoint }

    static func start(weed: String, bucket: String, directory: String) async throws -> WeedServer {
        guard FileManager.default.isExecutableFile(atPath: weed) else {
            throw ValidationError("no weed at \(weed) (scripts install it into .venv; or give --weed or --endpoint)")
        }
        try FileManager.default.createDirectory(atPath: directory + "/data", withIntermediateDirectories: true)
        // weed derives a port it is not given from another (grpc = http + 10000): name every one.
        let names = ["s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                     "filer.port", "filer.port.grpc", "admin.port", "admin.port.grpc"]
        let ports = try names.map { _ in try freeLoopbackPort() }
        let server = WeedServer(endpoint: "http://127.0.0.1:\(ports[0])")
        server.process.executableURL = URL(fileURLWithPath: weed)
        server.process.arguments = ["mini", "-dir=\(directory)/data", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
            + zip(names, ports).map { "-\($0)=\($1)" }
            + ["-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-admin.ui=false"]
        var environment = ProcessInfo.processInfo.environment
        environment["S3_BUCKET"] = bucket
        server.process.environment = environment
        let log = directory + "/weed.log"
        guard FileManager.default.createFile(atPath: log, contents: nil) else { throw BenchError("cannot create \(log)") }
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        server.process.standardOutput = output
        server.process.standardError = output
        server.process.standardInput = FileHandle.nullDevice
        try server.process.run()
        try? output.close()

        // Ready when a signed listing of the bucket succeeds: the port answers before the bucket exists.
        let client = S3Client(
            location: S3Location(endpoint: server.endpoint, region: "us-east-1", bucket: bucket, pathStyle: true),
            credentials: S3Credentials(accessKeyID: environment["AWS_ACCESS_KEY_ID"] ?? "",
                                       secretAccessKey: environment["AWS_SECRET_ACCESS_KEY"] ?? ""),
            timeoutSeconds: 2)
        let deadline = Date().addingTimeInterval(60)
        while (try? client.listObjects(prefix: "")) == nil {
            guard server.process.isRunning, Date() < deadline else {
                server.stop()
                let tail = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").suffix(2000)
                throw BenchError("weed mini did not get ready; its log ends: \(tail)")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return server
    }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExited()
    }
}
