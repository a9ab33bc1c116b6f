#!/usr/bin/env python3
"""A hostile noVNC client: completes the RFB handshake through viewportd's relay, asks for raw full-screen
updates in a tight loop (or, "paced", 64 requests every 5 ms) and never reads them. Prints one JSON document: how long the flood ran until the
connection was closed, how many requests went out, and the close code it saw (if any)."""
import asyncio, json, struct, sys, time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


async def recv_exactly(ws, buffer, count):
    while len(buffer) < count:
        buffer += await ws.recv()
    return buffer[:count], buffer[count:]


async def main(url, seconds, paced):
    result = {"handshake": False, "requests": 0, "closed_after": None, "close_code": None, "close_reason": None}
    # max_queue=1: the library stops reading the socket once one message waits.
    async with connect(url, max_size=None, max_queue=1, write_limit=65536, compression=None, open_timeout=10) as ws:
        buffer = b""
        version, buffer = await recv_exactly(ws, buffer, 12)
        await ws.send(version)
        types, buffer = await recv_exactly(ws, buffer, 2)
        assert types == b"\x01\x01", types
        await ws.send(b"\x01")
        outcome, buffer = await recv_exactly(ws, buffer, 4)
        assert outcome == b"\x00\x00\x00\x00", outcome
        await ws.send(b"\x01")  # ClientInit, shared
        init, buffer = await recv_exactly(ws, buffer, 24)
        width, height = struct.unpack(">HH", init[:4])
        result["handshake"] = True
        result["size"] = [width, height]
        await ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: raw only
        request = struct.pack(">BBHHHH", 3, 0, 0, 0, width, height) * 64
        start = time.monotonic()
        try:
            while time.monotonic() - start < seconds:
                await ws.send(request)
                result["requests"] += 64
                if paced:
                    await asyncio.sleep(0.005)  # slow enough for the screen to read every request
        except ConnectionClosed:
            pass
        result["closed_after"] = time.monotonic() - start
        result["close_code"] = ws.close_code
        result["close_reason"] = ws.close_reason
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), len(sys.argv) > 3 and sys.argv[3] == "paced"))
