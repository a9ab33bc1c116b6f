#!/usr/bin/env python3
"""Real clients for viewportd's tests: WebSocket viewers (websockets), a viewer that never reads (raw socket),
and a tiny Chrome DevTools driver. Every command prints one JSON document on stdout."""
import argparse, asyncio, base64, json, os, socket, struct, sys, time, urllib.request

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus


def headers_of(args):
    return dict(h.split(":", 1) for h in (args.header or []))


def parameter_sets(avcc):
    """The SPS and PPS of an avcC record, as Annex B (each after a start code)."""
    assert avcc[0] == 1 and avcc[4] == 0xFF, "avcC: version 1, 4-byte NAL lengths"
    units, offset = [], 5
    for mask in (0x1F, 0xFF):  # the SPS count (low 5 bits), then the PPS count
        count = avcc[offset] & mask
        offset += 1
        for _ in range(count):
            length = struct.unpack(">H", avcc[offset:offset + 2])[0]
            units.append(avcc[offset + 2:offset + 2 + length])
            offset += 2 + length
    return b"".join(b"\0\0\0\1" + unit for unit in units)


class H264:
    """Checks a VPH1 viewer's messages and writes its access units as an Annex B file ffmpeg can decode."""

    def __init__(self, path):
        self.file = open(path, "wb") if path else None
        self.config = None  # the avcC's parameter sets, as Annex B
        self.result = {"keys": [], "config_index": [], "errors": [], "configs": [], "bytes": 0, "file": path}

    def configure(self, data):
        if data.get("description"):
            self.config = parameter_sets(base64.b64decode(data["description"]))
            self.result["configs"].append({k: data.get(k) for k in
                                           ("codec", "coded_width", "coded_height", "width", "height")})

    def frame(self, message):
        magic, seq, captured, w, h, flags = struct.unpack(">4sQQHHB", message[:25])
        errors = self.result["errors"]
        if magic != b"VPH1" or message[25:28] != b"\0\0\0":
            errors.append(f"bad header {message[:28].hex()}")
        if self.config is None:
            errors.append(f"frame {seq} before any configuration")
        key = bool(flags & 1)
        self.result["keys"].append(key)
        self.result["config_index"].append(len(self.result["configs"]) - 1)
        self.result["bytes"] += len(message)
        annexb, offset = bytearray(self.config or b"") if key else bytearray(), 28
        while offset < len(message):
            length = struct.unpack(">I", message[offset:offset + 4])[0]
            if length == 0 or offset + 4 + length > len(message):
                errors.append(f"frame {seq}: NAL length {length} past the message")
                break
            annexb += b"\0\0\0\1" + message[offset + 4:offset + 4 + length]
            offset += 4 + length
        if self.file:
            self.file.write(annexb)
        return seq, captured, w, h

    def close(self):
        if self.file:
            self.file.close()


async def one_viewer(args, index):
    result = {"index": index, "handshake_status": 101, "hello": None, "texts": [], "frames": 0, "sequences": [],
              "sizes": [], "pages": [], "json_frames": [], "close_code": None, "close_reason": None,
              "closed_after": None, "frames_per_page": [], "receive_times": []}
    h264 = H264(f"{args.h264_out}.{index}.h264" if args.h264_out else None)
    start = time.monotonic()
    options = {}
    if args.pause_for:
        # A reader that pauses must back up to the server: a small socket buffer, and few messages buffered here.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        host, port = args.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        sock.connect((host, int(port)))
        options = {"sock": sock, "max_queue": 2}
    paused = False
    try:
        async with connect(args.url, additional_headers=headers_of(args), max_size=None, open_timeout=10,
                           **options) as ws:
            for message in args.send or []:
                await ws.send(message)
            if args.send_bytes:
                await ws.send("x" * args.send_bytes)
            deadline = start + args.seconds
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (args.frames and result["frames"] >= args.frames):
                    break
                if args.pause_for and not paused and time.monotonic() - start >= args.pause_after:
                    paused = True
                    result["paused_after_frames"] = result["frames"]
                    await asyncio.sleep(args.pause_for)
                    continue
                try:
                    message = await asyncio.wait_for(ws.recv(), remaining)
                except asyncio.TimeoutError:
                    break
                if isinstance(message, bytes) and message[:4] == b"VPH1":
                    seq, captured, w, h = h264.frame(message)
                    result["frames"] += 1
                    result["sequences"].append(seq)
                    result["sizes"].append([w, h])
                    result["receive_times"].append(round(time.monotonic() - start, 3))
                    result["latency_us"] = time.time() * 1e6 - captured
                    continue
                if isinstance(message, bytes):
                    magic, seq, captured, w, h = struct.unpack(">4sQQHH", message[:24])
                    assert magic == b"VPF1", magic
                    assert message[24:26] == b"\xff\xd8", "payload is not a JPEG"
                    result["frames"] += 1
                    result["sequences"].append(seq)
                    result["sizes"].append([w, h])
                    result["latency_us"] = time.time() * 1e6 - captured
                    if result["frames_per_page"]:
                        result["frames_per_page"][-1] += 1
                    continue
                data = json.loads(message)
                if "screenshot" in data:
                    jpeg = base64.b64decode(data["screenshot"])
                    data["screenshot"] = {"bytes": len(jpeg), "is_jpeg": jpeg[:2] == b"\xff\xd8"}
                    result["json_frames"].append(data)
                    result["frames"] += 1
                    continue
                if data.get("type") == "hello" and result["hello"] is None:
                    result["hello"] = data
                    h264.configure(data)
                elif data.get("type") == "config":
                    h264.configure(data)
                elif data.get("type") == "page":
                    result["pages"].append(data["url"])
                    result["frames_per_page"].append(0)
                result["texts"].append(data)
    except InvalidStatus as error:
        result["handshake_status"] = error.response.status_code
        result["body"] = error.response.body.decode(errors="replace")
        return result
    except ConnectionClosed as error:
        pass
    h264.close()
    if result["hello"] and result["hello"].get("format") == "h264":
        result["h264"] = h264.result
    if "ws" in locals():
        result["close_code"] = ws.close_code
        result["close_reason"] = ws.close_reason
        result["closed_after"] = time.monotonic() - start
    return result


async def watch(args):
    results = await asyncio.gather(*(one_viewer(args, i) for i in range(args.viewers)))
    print(json.dumps(results))


def stall(args):
    """Completes the handshake, then never reads: the server's writes back up in the socket."""
    host, port_path = args.url.split("//", 1)[1].split(":", 1)
    port, path = port_path.split("/", 1)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers_of(args).items())
    sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode())
    status = sock.recv(12).decode()
    print(json.dumps({"status_line": status}), flush=True)
    time.sleep(args.seconds)
    sock.close()


async def cdp(args):
    """Sends one command to the browser endpoint (or to the page whose URL contains --page)."""
    version = json.load(urllib.request.urlopen(args.address + "/json/version", timeout=10))
    url = version["webSocketDebuggerUrl"]
    if args.page:
        pages = json.load(urllib.request.urlopen(args.address + "/json/list", timeout=10))
        url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page" and args.page in p["url"])
    async with connect(url, max_size=None) as ws:
        if args.on_new_document:
            # A script for every document of the page from now on, then the page loaded again with it.
            for id, (method, params) in enumerate([("Page.enable", {}),
                                                   ("Page.addScriptToEvaluateOnNewDocument", {"source": args.on_new_document}),
                                                   ("Page.reload", {})], start=100):
                await ws.send(json.dumps({"id": id, "method": method, "params": params}))
            async def loaded():
                while json.loads(await ws.recv()).get("method") != "Page.loadEventFired":
                    pass
            try:
                await asyncio.wait_for(loaded(), 10)
            except asyncio.TimeoutError:
                pass  # the caller checks what it needs of the page
        await ws.send(json.dumps({"id": 1, "method": args.method, "params": json.loads(args.params)}))

        async def reply():
            while True:
                answer = json.loads(await ws.recv())
                if answer.get("id") == 1:
                    return answer
        print(json.dumps(await asyncio.wait_for(reply(), 30)))


async def rfb(args):
    """noVNC's side of RFB over the WebSocket: the handshake (security None), then the colour of one pixel."""
    async with connect(args.url, additional_headers=headers_of(args), subprotocols=["binary"], max_size=None,
                       open_timeout=10) as ws:
        buffer = bytearray()

        async def read(count):
            while len(buffer) < count:
                buffer.extend(await asyncio.wait_for(ws.recv(), 10))
            data = bytes(buffer[:count])
            del buffer[:count]
            return data

        version = await read(12)
        await ws.send(b"RFB 003.008\n")
        types = await read((await read(1))[0])
        await ws.send(b"\x01")
        result = struct.unpack(">I", await read(4))[0]
        await ws.send(b"\x01")  # ClientInit, shared
        width, height = struct.unpack(">HH", await read(4))
        await read(16)
        name = (await read(struct.unpack(">I", await read(4))[0])).decode()
        # 32 bits per pixel, depth 24, little-endian true colour, R at bit 16, G at 8, B at 0; Raw encoding only.
        await ws.send(struct.pack(">B3xBBBBHHHBBB3x", 0, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0))
        await ws.send(struct.pack(">BxHi", 2, 1, 0))
        await ws.send(struct.pack(">BBHHHH", 3, 0, args.x, args.y, 1, 1))
        while True:
            kind = (await read(1))[0]
            if kind != 0:
                continue  # Bell (2) and the like carry no more bytes in this exchange
            await read(1)
            rects = struct.unpack(">H", await read(2))[0]
            for _ in range(rects):
                x, y, w, h, encoding = struct.unpack(">HHHHi", await read(12))
                pixels = await read(w * h * 4) if encoding == 0 else b""
                if encoding == 0 and w * h > 0:
                    value = struct.unpack("<I", pixels[:4])[0]
                    print(json.dumps({"version": version.decode().strip(), "security_types": list(types),
                                      "security_result": result, "width": width, "height": height, "name": name,
                                      "pixel": [(value >> 16) & 255, (value >> 8) & 255, value & 255]}))
                    return


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("watch")
    w.add_argument("url")
    w.add_argument("--header", action="append")
    w.add_argument("--viewers", type=int, default=1)
    w.add_argument("--seconds", type=float, default=3)
    w.add_argument("--frames", type=int, default=0)
    w.add_argument("--send", action="append")
    w.add_argument("--send-bytes", type=int, default=0)
    w.add_argument("--h264-out", help="write each H.264 viewer's access units to PREFIX.INDEX.h264 (Annex B)")
    w.add_argument("--pause-after", type=float, default=0, help="stop reading this many seconds in...")
    w.add_argument("--pause-for", type=float, default=0, help="...for this many seconds")
    s = sub.add_parser("stall")
    s.add_argument("url")
    s.add_argument("--header", action="append")
    s.add_argument("--seconds", type=float, default=10)
    c = sub.add_parser("cdp")
    c.add_argument("address")
    c.add_argument("method")
    c.add_argument("params", nargs="?", default="{}")
    c.add_argument("--page")
    c.add_argument("--on-new-document", help="first reload the page with this script run before its own")
    r = sub.add_parser("rfb")
    r.add_argument("url")
    r.add_argument("--header", action="append")
    r.add_argument("--x", type=int, default=0)
    r.add_argument("--y", type=int, default=0)
    args = parser.parse_args()
    if args.command == "watch":
        asyncio.run(watch(args))
    elif args.command == "stall":
        stall(args)
    elif args.command == "rfb":
        asyncio.run(rfb(args))
    else:
        asyncio.run(cdp(args))


if __name__ == "__main__":
    main()
