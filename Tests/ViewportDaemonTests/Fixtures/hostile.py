#!/usr/bin/env python3
"""Hostile peers for viewportd's tests: a DevTools page endpoint and VNC servers that misbehave on purpose, and a
viewer that floods pings without reading. Each server prints its port on stdout, then serves until killed."""
import argparse, asyncio, base64, hashlib, json, socket, struct, sys, time

# A 32x16 red JPEG, and the same bytes claiming 16384x16384 in their start-of-frame header (a decompression bomb).
TINY = base64.b64decode("/9j/4AAQSkZJRgABAgAAAQABAAD//gAQTGF2YzU5LjM3LjEwMAD/2wBDAAgKCgsKCw0NDQ0NDRAPEBAQEBAQEBAQEBASEhIVFRUSEhIQEBISFBQVFRcXFxUVFRUXFxkZGR4eHBwjIyQrKzP/xABNAAEBAAAAAAAAAAAAAAAAAAAABgEBAQEAAAAAAAAAAAAAAAAAAAYHEAEAAAAAAAAAAAAAAAAAAAAAEQEAAAAAAAAAAAAAAAAAAAAA/8AAEQgAEAAgAwEiAAIRAAMRAP/aAAwDAQACEQMRAD8AiwEo38AB/9k=")
SOF = TINY.find(b"\xff\xc0")
BOMB = TINY[:SOF + 5] + struct.pack(">HH", 16384, 16384) + TINY[SOF + 9:]
DEBUG = bool(__import__("os").environ.get("HOSTILE_DEBUG"))
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(payload, opcode=1):
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def read_ws_message(reader):
    """One client (masked) frame's payload, or None at end of stream."""
    try:
        b0, b1 = await reader.readexactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", await reader.readexactly(8))[0]
        mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytearray(await reader.readexactly(n))
        for i in range(n):
            data[i] ^= mask[i & 3]
        return b0 & 0x0F, bytes(data)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def frame_event(jpeg, timestamp, session=1):
    # Compact, as Chrome writes it (viewportd cuts "data":"..." out of the raw bytes).
    return json.dumps({"method": "Page.screencastFrame", "params": {
        "data": base64.b64encode(jpeg).decode(), "sessionId": session,
        "metadata": {"timestamp": timestamp, "deviceWidth": 32, "deviceHeight": 16, "offsetTop": 0,
                     "pageScaleFactor": 1, "scrollOffsetX": 0, "scrollOffsetY": 0}}}, separators=(",", ":")).encode()


async def devtools(mode):
    async def handle(reader, writer):
        try:
            await serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the daemon closed a peer it found hostile: that is the point

    async def serve(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:")][0]
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        if mode == "handshake-only":
            await asyncio.sleep(3600)
        frame_no = 0
        while True:
            message = await read_ws_message(reader)
            if message is None:
                break
            opcode, payload = message
            if opcode == 8:
                break
            if opcode != 1:
                continue
            command = json.loads(payload)
            if DEBUG: print("got", command["method"], file=sys.stderr, flush=True)
            reply = {"id": command["id"], "result": {}}
            if command["method"] == "Target.getTargetInfo":
                reply["result"] = {"targetInfo": {"targetId": "x", "type": "page", "url": "http://hostile/"}}
            writer.write(ws_frame(json.dumps(reply).encode()))
            if command["method"] == "Page.startScreencast":
                if mode == "poison":
                    for t in [1e300, -1e300, 1.8e19, 1e-300, "soon", None]:
                        writer.write(ws_frame(frame_event(TINY, t)))
                elif mode == "huge-header":
                    writer.write(bytes.fromhex("827F0000100000000000"))
                    await writer.drain()
                    await asyncio.sleep(3600)
                elif mode == "huge-message":
                    writer.write(ws_frame(b'{"method":"x","params":{"p":"' + b"A" * (20 << 20) + b'"}}'))
                elif mode == "bomb":
                    for _ in range(50):
                        writer.write(ws_frame(frame_event(BOMB, time.time())))
                elif mode == "targets":
                    for i in range(20000):
                        writer.write(ws_frame(json.dumps({"method": "Target.targetCreated", "params": {"targetInfo": {
                            "targetId": "t%d" % i, "type": "page", "url": "http://x/" + "u" * 200}}}).encode()))
                        if i % 1000 == 0:
                            await writer.drain()
                    writer.write(ws_frame(frame_event(TINY, time.time())))
            if command["method"] == "Page.screencastFrameAck" and mode in ("poison", "bomb", "targets"):
                # After the hostile part, honest frames: the session must still show them.
                frame_no += 1
                await asyncio.sleep(0.05)
                writer.write(ws_frame(frame_event(TINY, time.time(), session=frame_no + 100)))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def vnc(mode):
    async def handle(reader, writer):
        writer.write(b"RFB 003.008\n")
        await writer.drain()
        if mode == "tarpit":
            await asyncio.sleep(3600)
            return
        await reader.readexactly(12)
        writer.write(b"\x01\x01")  # one security type: None
        await writer.drain()
        await reader.readexactly(1)
        writer.write(b"\0\0\0\0")  # security result OK
        await reader.readexactly(1)  # ClientInit
        pixel = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
        name = b"hostile"
        writer.write(struct.pack(">HH", 65535, 65535) + pixel + struct.pack(">I", len(name)) + name)
        await writer.drain()
        await asyncio.sleep(3600)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


def ping_flood(url, key, count, size):
    """Handshake, then send count pings of size characters without ever reading; prints how far it got."""
    host, port, path = url.split("/", 3)[2].split(":")[0], int(url.split("/", 3)[2].split(":")[1]), "/" + url.split("/", 3)[3]
    s = socket.create_connection((host, port))
    s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nx-api-key: %s\r\n\r\n"
               % (path, host, port, key)).encode())
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(5)
    sent = 0
    message = json.dumps({"type": "ping", "t": "x" * size}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i & 3] for i, b in enumerate(message))
    n = len(message)
    head = struct.pack(">BBH", 0x81, 0x80 | 126, n) if n < 65536 else struct.pack(">BBQ", 0x81, 0x80 | 127, n)
    try:
        for _ in range(count):
            s.sendall(head + mask + masked)
            sent += 1
    except (OSError, socket.timeout) as error:
        print(json.dumps({"sent": sent, "error": str(error)}))
        return
    print(json.dumps({"sent": sent, "error": None}))


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("devtools"); d.add_argument("mode")
    v = sub.add_parser("vnc"); v.add_argument("mode")
    p = sub.add_parser("ping-flood"); p.add_argument("url"); p.add_argument("key")
    p.add_argument("--count", type=int, default=4000); p.add_argument("--size", type=int, default=60000)
    args = parser.parse_args()
    if args.command == "devtools":
        asyncio.run(devtools(args.mode))
    elif args.command == "vnc":
        asyncio.run(vnc(args.mode))
    else:
        ping_flood(args.url, args.key, args.count, args.size)


if __name__ == "__main__":
    main()
