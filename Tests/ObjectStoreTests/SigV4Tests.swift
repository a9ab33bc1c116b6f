import Digests
import Foundation
import ObjectStore
import Testing

/// The signer against AWS's published vectors: the SigV4 test suite (generic service, paths normalized) and the S3
/// documentation's examples (paths signed as sent).
@Suite("SigV4 signing")
struct SigV4Tests {
    /// 2015-08-30T12:36:00Z, the test suite's date.
    static let suiteDate = Date(timeIntervalSince1970: 1_440_938_160)
    /// 2013-05-24T00:00:00Z, the S3 examples' date.
    static let s3Date = Date(timeIntervalSince1970: 1_369_353_600)
    static let suite = SigV4(
        accessKeyID: "AKIDEXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", region: "us-east-1",
        service: "service", normalizesPath: true)
    static let s3Example = SigV4(
        accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        region: "us-east-1")

    /// A test-suite request from its request line ("GET /?a=b"), with the suite's Host and X-Amz-Date headers.
    static func suiteRequest(_ line: String, headers: [SigV4.Header] = [], body: String = "") -> SigV4.Request {
        let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
        let target = parts[1].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let query: [SigV4.QueryItem] = target.count < 2 ? [] : target[1].split(separator: "&").map { item in
            let pair = item.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            return SigV4.QueryItem(pair[0], pair.count > 1 ? pair[1] : "")
        }
        return SigV4.Request(
            method: parts[0], path: target[0], query: query,
            headers: [SigV4.Header("Host", "example.amazonaws.com"), SigV4.Header("X-Amz-Date", "20150830T123600Z")] + headers,
            payloadHash: Digest.sha256(Data(body.utf8)).hex)
    }

    static let cases: [(name: String, line: String, headers: [SigV4.Header], body: String, signature: String)] = [
        ("get-vanilla", "GET /", [], "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-vanilla-query-order-key-case", "GET /?Param2=value2&Param1=value1", [], "",
         "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"),
        ("get-vanilla-query-order-value", "GET /?Param1=value2&Param1=value1", [], "",
         "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694"),
        ("get-vanilla-query-unreserved",
         "GET /?-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz=-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
         [], "", "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"),
        ("get-vanilla-utf8-query", "GET /?ሴ=bar", [], "", "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"),
        ("get-utf8", "GET /ሴ", [], "", "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"),
        ("get-space", "GET /example space/", [], "", "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"),
        ("get-slash", "GET //", [], "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-slashes", "GET //example//", [], "", "9a624bd73a37c9a373b5312afbebe7a714a789de108f0bdfe846570885f57e84"),
        ("get-slash-dot-slash", "GET /./", [], "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-relative-relative", "GET /example1/example2/../..", [], "",
         "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),
        ("get-header-value-trim", "GET /",
         [SigV4.Header("My-Header1", " value1"), SigV4.Header("My-Header2", " \"a   b   c\"")], "",
         "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"),
        ("get-header-key-duplicate", "GET /",
         [SigV4.Header("My-Header1", "value2"), SigV4.Header("My-Header1", "value2"), SigV4.Header("My-Header1", "value1")],
         "", "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"),
        // The suite's request also has Content-Length, but its Authorization signs only content-type;host;x-amz-date.
        ("post-x-www-form-urlencoded", "POST /", [SigV4.Header("Content-Type", "application/x-www-form-urlencoded")],
         "Param1=value1", "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"),
        ("post-sts-header-before", "POST /",
         [SigV4.Header("X-Amz-Security-Token", "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA==")],
         "", "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead"),
    ]

    @Test(arguments: cases.indices)
    func aTestSuiteRequestIsSignedAsAWSSignsIt(index: Int) {
        let test = Self.cases[index]
        let request = Self.suiteRequest(test.line, headers: test.headers, body: test.body)
        let signedNames = Set((request.headers.map { $0.name.lowercased() })).sorted().joined(separator: ";")
        #expect(
            Self.suite.authorization(request, date: Self.suiteDate)
                == "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
                + "SignedHeaders=\(signedNames), Signature=\(test.signature)",
            "\(test.name)")
    }

    @Test func theCanonicalRequestAndStringToSignMatchTheSuiteExactly() {
        let trim = Self.suiteRequest(
            "GET /", headers: [SigV4.Header("My-Header1", " value1"), SigV4.Header("My-Header2", " \"a   b   c\"")])
        let canonical = Self.suite.canonicalRequest(trim)
        #expect(canonical == """
            GET
            /

            host:example.amazonaws.com
            my-header1:value1
            my-header2:"a b c"
            x-amz-date:20150830T123600Z

            host;my-header1;my-header2;x-amz-date
            e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
            """)
        #expect(Self.suite.canonicalRequest(Self.suiteRequest("GET /example space/")).split(separator: "\n")[1] == "/example%20space/")
        #expect(Self.suite.canonicalRequest(Self.suiteRequest("GET /?ሴ=bar")).split(separator: "\n")[2] == "%E1%88%B4=bar")
        #expect(
            Self.suite.stringToSign(
                canonicalRequest: Self.suite.canonicalRequest(Self.suiteRequest("GET /example space/")), date: Self.suiteDate)
                == """
                AWS4-HMAC-SHA256
                20150830T123600Z
                20150830/us-east-1/service/aws4_request
                63ee75631ed7234ae61b5f736dfc7754cdccfedbff4b5128a915706ee9390d86
                """)
    }

    @Test func s3SignsThePathAsSentWithoutNormalizingIt() {
        let request = SigV4.Request(
            method: "GET", path: "/bucket//a/./b/../c d+e", headers: [SigV4.Header("host", "h")], payloadHash: "x")
        #expect(Self.s3Example.canonicalRequest(request).split(separator: "\n")[1] == "/bucket//a/./b/../c%20d%2Be")
    }

    /// The S3 documentation's "GET Object" example: the first 10 bytes of examplebucket/test.txt.
    @Test func theS3GetObjectWithRangeExampleGivesItsSignature() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        let request = SigV4.Request(
            method: "GET", path: "/test.txt",
            headers: [
                SigV4.Header("Host", "examplebucket.s3.amazonaws.com"), SigV4.Header("Range", "bytes=0-9"),
                SigV4.Header("x-amz-content-sha256", empty), SigV4.Header("x-amz-date", "20130524T000000Z"),
            ],
            payloadHash: empty)
        let stringToSign = Self.s3Example.stringToSign(
            canonicalRequest: Self.s3Example.canonicalRequest(request), date: Self.s3Date)
        #expect(stringToSign.hasSuffix("\n7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972"))
        #expect(
            Self.s3Example.authorization(request, date: Self.s3Date)
                == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
                + "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
                + "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    /// The S3 documentation's presigned URL example, through the client's URL building (virtual-host style).
    @Test func theS3PresignedURLExampleGivesItsURL() {
        let client = S3Client(
            location: S3Location(endpoint: "https://s3.amazonaws.com", region: "us-east-1", bucket: "examplebucket", pathStyle: false),
            credentials: S3Credentials(accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            timeoutSeconds: 5)
        #expect(
            client.presignedGetURL(key: "test.txt", expiresIn: 86400, now: Self.s3Date)
                == "https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                + "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
                + "&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
                + "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
    }

    @Test func aPresignedURLCarriesTheSessionTokenAndCapsItsLifetimeAtAWeek() {
        let client = S3Client(
            location: S3Location(endpoint: "http://127.0.0.1:8333", region: "eu-west-1", bucket: "b", pathStyle: true),
            credentials: S3Credentials(accessKeyID: "AK", secretAccessKey: "secret", sessionToken: "tok/en+="),
            timeoutSeconds: 5)
        let url = client.presignedGetURL(key: "org/a b.png", expiresIn: 10_000_000, now: Self.s3Date)
        #expect(url.hasPrefix("http://127.0.0.1:8333/b/org/a%20b.png?"))
        #expect(url.contains("&X-Amz-Expires=604800&"))
        #expect(url.contains("&X-Amz-Security-Token=tok%2Fen%2B%3D&"))
        #expect(!url.contains("secret"))
    }

    @Test func encodingKeepsOnlyUnreservedCharactersAndSlashesInPaths() {
        #expect(SigV4.uriEncode("a-b_c.d~e f/g+h=i&j%é") == "a-b_c.d~e%20f%2Fg%2Bh%3Di%26j%25%C3%A9")
        #expect(SigV4.uriEncode("/a b/c", keepingSlash: true) == "/a%20b/c")
    }
}
