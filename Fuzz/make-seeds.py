#!/usr/bin/env python3
"""Writes the seed corpus under Fuzz/corpus/<target>/ (run from the repository root; it overwrites the seeds).

The MP4 seed is made with ffmpeg (a 32x24, 0.8 s fragmented H.264 file carrying viewportd's origin metadata):
  ffmpeg -f lavfi -i testsrc=size=32x24:rate=5 -t 0.8 -c:v libx264 -preset ultrafast -g 2 \
    -bsf:v filter_units=remove_types=6 -metadata com.viewportd.origin_us=1700000000000000 \
    -movflags frag_keyframe+empty_moov+default_base_moof+use_metadata_tags seed.mp4
and passed as the first argument; without it the existing Fuzz/corpus/mp4cut/valid.mp4 is kept.
"""
import base64, json, os, struct, subprocess, sys

root = "Fuzz/corpus"


def write(target, name, data):
    os.makedirs(f"{root}/{target}", exist_ok=True)
    with open(f"{root}/{target}/{name}", "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


# ws-framing: byte 0 = read size - 1, then server frames (unmasked, as a server sends) and some masked ones.
def frame(opcode, payload, final=True, mask=None, length_bits=None):
    head = bytes([(0x80 if final else 0) | opcode])
    n = len(payload)
    bits = length_bits or (7 if n < 126 else 16 if n < 65536 else 64)
    m = 0x80 if mask else 0
    if bits == 7:
        head += bytes([m | n])
    elif bits == 16:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if mask:
        head += mask
        payload = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + payload


ws = {
    "text-7bit": frame(1, b"hello"),
    "binary-16bit": frame(2, bytes(range(256)) * 2),
    "text-64bit-short": frame(1, b"long length field, short payload", length_bits=64),
    "masked-text": frame(1, b"masked hello", mask=b"\x11\x22\x33\x44"),
    "masked-16bit": frame(2, b"x" * 200, mask=b"\xa0\x0b\xc0\x0d"),
    "fragmented-ping-between": frame(1, b"part1-", final=False) + frame(9, b"ping!") + frame(0, b"part2"),
    "ping-pong": frame(9, b"") + frame(10, b"pong payload"),
    "close-with-code": frame(8, b"\x03\xe8bye"),
    "close-empty": frame(8, b""),
    "control-too-long": frame(9, b"p" * 126),
    "control-fragmented": frame(9, b"p", final=False),
    "too-big-16bit": bytes([0x82, 126, 0xFF, 0xFF]),
    "top-bit-64": bytes([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 1]),
    "continuation-first": frame(0, b"orphan"),
    "empty-text": frame(1, b""),
    "many-small": b"".join(frame(1, bytes([65 + i])) for i in range(20)),
}
for i, (name, data) in enumerate(ws.items()):
    chunk = [0, 1, 6, 255][i % 4]  # reads of 1, 2, 7 and 256 bytes
    write("ws-framing", name, bytes([chunk]) + data)

# cdp-frame: CDP messages with and without a base64 `data`, and raw base64.
jpeg = open("/tmp/seedgen/x.jpg", "rb").read() if os.path.exists("/tmp/seedgen/x.jpg") else bytes(range(64))
b64 = base64.b64encode(jpeg).decode()
metadata = {"offsetTop": 0, "pageScaleFactor": 1, "deviceWidth": 1280, "deviceHeight": 720,
            "scrollOffsetX": 0, "scrollOffsetY": 0, "timestamp": 1700000000.123456}
cdp = {
    "screencast-frame": json.dumps({"method": "Page.screencastFrame",
                                    "params": {"data": b64, "metadata": metadata, "sessionId": 1},
                                    "sessionId": "8E1B0C7A5D3F4E2A9B6C1D0E2F3A4B5C"}, separators=(",", ":")),
    "capture-screenshot-reply": json.dumps({"id": 7, "result": {"data": b64}}, separators=(",", ":")),
    "no-data": '{"method":"Page.frameNavigated","params":{"frame":{"id":"A","url":"https://example.com/"}}}',
    "data-not-base64": '{"id":1,"result":{"data":"not base64!"}}',
    "data-escaped-quote": '{"id":1,"result":{"data":"AAAA\\"BBBB"}}',
    "data-unterminated": '{"id":1,"result":{"data":"AAAA',
    "data-twice": '{"id":1,"result":{"data":"QUJD","other":{"data":"REVG"}}}',
    "data-padding-1": '{"id":1,"result":{"data":"QUI="}}',
    "data-padding-2": '{"id":1,"result":{"data":"QQ=="}}',
    "data-empty": '{"id":1,"result":{"data":""}}',
    "data-key-only": '"data":"',
    "base64-raw": b64,
    "base64-bad-padding": "QQ=A",
    "base64-trailing-bits": "QR==",
    "not-json": "\x00\xff{",
}
for name, data in cdp.items():
    write("cdp-frame", name, data)

# viewer-input: a message of each type, and wrong ones.
viewer = {
    "mouse-pressed": {"type": "mouse", "event": "mousePressed", "x": 10, "y": 20, "button": "left", "click_count": 1, "modifiers": 8},
    "mouse-moved": {"type": "mouse", "event": "mouseMoved", "x": 99999, "y": -5},
    "mouse-bad-button": {"type": "mouse", "event": "mouseReleased", "x": 1, "y": 1, "button": "fourth"},
    "mouse-clicks-float": {"type": "mouse", "event": "mousePressed", "x": 1, "y": 1, "click_count": 1.5},
    "wheel": {"type": "wheel", "x": 5.5, "y": 6, "delta_x": 0, "delta_y": 1e300},
    "wheel-bool": {"type": "wheel", "x": True, "y": 1},
    "key-down": {"type": "key", "event": "keyDown", "key": "Enter", "code": "Enter", "modifiers": 2},
    "key-char": {"type": "key", "event": "char", "key": "é", "text": "é"},
    "key-up-text": {"type": "key", "event": "keyUp", "key": "a", "text": "a"},
    "key-long": {"type": "key", "event": "keyDown", "key": "e" + "\u0301" * 40},
    "navigate": {"type": "navigate", "url": "https://example.com/path?q=1#frag"},
    "navigate-bad-scheme": {"type": "navigate", "url": "javascript:alert(1)"},
    "paste": {"type": "paste", "text": "pasted text\nwith lines"},
    "paste-null": {"type": "paste", "text": None},
    "ping": {"type": "ping", "t": 12345.678},
    "ping-nested": {"type": "ping", "t": {"a": [1, "b", None, True]}},
    "take-control": {"type": "take-control"},
    "cede-control": {"type": "cede-control"},
    "unknown": {"type": "x" * 100},
}
for name, message in viewer.items():
    write("viewer-input", name, json.dumps(message, ensure_ascii=False))
write("viewer-input", "huge-number", '{"type":"mouse","event":"mouseMoved","x":1e400,"y":-1e400,"modifiers":9223372036854775808}')
write("viewer-input", "not-an-object", '[{"type":"mouse"}]')

# http-range: `<file size>\n<Range header>`.
ranges = {
    "from-start": "1000\nbytes=0-", "suffix-zero": "1000\nbytes=-0", "reversed": "1000\nbytes=5-2",
    "open-end": "1000\nbytes=999-", "past-end": "1000\nbytes=1000-", "multiple": "1000\nbytes=0-1,5-6",
    "huge-start": "1000\nbytes=99999999999999999999-", "huge-end": "1000\nbytes=0-9223372036854775807",
    "huge-suffix": "1000\nbytes=-9223372036854775807", "empty-file": "0\nbytes=0-0", "empty-file-suffix": "0\nbytes=-5",
    "closed": "1000\nbytes=10-19", "spaces": "1000\n  bytes = 1 - 2 ", "upper": "1000\nBYTES=1-2",
    "other-unit": "1000\nitems=0-1", "max-size": "9223372036854775807\nbytes=-1", "no-size": "bytes=0-0",
}
for name, data in ranges.items():
    write("http-range", name, data)

# config: the shipped example, and edge cases.
write("config", "shipped", open("config/viewportd.yaml").read())
configs = {
    "full": """listen: 0.0.0.0:0
state_dir: /tmp/state
public_url: https://viewport.example.com
log_level: debug
api_keys:
  - {key: 0123456789abcdef0123, organization_id: org-1}
viewer_token_secret: s3cret-s3cret-s3cret
screencast: {quality: 50, max_width: 640, max_height: 480}
viewer: {queue_frames: 4, token_ttl_seconds: 60}
cdp: {retry_seconds: 0}
recording: {enabled: true, preset: ultrafast, crf: 30, threads: 2, queue_frames: 16}
screenshot_format: png
artifacts: {url_ttl_seconds: 60}
webhooks:
  secrets: [{organization_id: org-1, secret: whsec-0123456789}]
  max_attempts: 3
  timeout_seconds: 5
retention: {max_age_days: 1, max_disk_gb: 0.5, sweep_interval_seconds: 10}
vnc: {enabled: true, listen: 127.0.0.1, port_range: 5900-5910, password_ttl_seconds: 10, source_max_fps: 60}
""",
    "empty": "",
    "null-document": "~\n",
    "not-a-map": "- a\n- b\n",
    "unknown-key": "listne: 1.2.3.4:5\n",
    "wrong-types": "screencast: {quality: high}\nvnc: {port_range: 5999-5900}\nretention: {max_disk_gb: .nan}\n",
    "anchors": "a: &x {quality: 10}\nscreencast: *x\n",
    "huge-int": "screencast: {quality: 99999999999999999999999}\n",
    "listen-ipv6": "listen: '[::1]:8200'\n",
    "tags": "log_level: !!binary aW5mbw==\n",
}
for name, data in configs.items():
    write("config", name, data)

# mp4cut: a valid fragmented recording and torn copies of it.
mp4 = open(sys.argv[1], "rb").read() if len(sys.argv) > 1 else open(f"{root}/mp4cut/valid.mp4", "rb").read()
write("mp4cut", "valid.mp4", mp4)
for cut in (40, 1000, len(mp4) // 2, len(mp4) - 30):
    write("mp4cut", f"torn-{cut}.mp4", mp4[:cut])
garbled = bytearray(mp4)
for i in range(1100, len(garbled), 97):
    garbled[i] ^= 0x5A
write("mp4cut", "garbled-media.mp4", bytes(garbled))
