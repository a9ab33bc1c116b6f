"""A webhook receiver for the tests.

Listens on --host (127.0.0.1 unless given) at port 0: the kernel picks one, printed as the first line of output. It
records every POST and answers it with the --statuses in turn (the last one repeats). It checks x-viewportd-signature
against --secret itself, so the check does not share code with the daemon. GET /requests returns the records as JSON.
Exits when stdin closes, so it never outlives the tests.
"""
import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--statuses", default="500,200", help="comma-separated status codes, in turn; the last repeats")
parser.add_argument("--secret", default="")
parser.add_argument("--host", default="127.0.0.1", help="the address to listen on")
args = parser.parse_args()
statuses = [int(s) for s in args.statuses.split(",")]
received = []
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        timestamp = self.headers.get("x-viewportd-timestamp", "")
        expected = "sha256=" + hmac.new(args.secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        with lock:
            status = statuses[min(len(received), len(statuses) - 1)]
            received.append({
                "method": self.command,
                "path": self.path,
                "headers": {name.lower(): value for name, value in self.headers.items()},
                "body": base64.b64encode(body).decode(),
                "signature_valid": hmac.compare_digest(expected, self.headers.get("x-viewportd-signature", "")),
                "at": time.time(),
            })
        self.answer(status, b"{}")

    def do_GET(self):
        with lock:
            data = json.dumps(received).encode()
        self.answer(200, data)

    def answer(self, status, data):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *arguments):
        pass


def exit_with_stdin():
    sys.stdin.buffer.read()
    os._exit(0)


server = ThreadingHTTPServer((args.host, 0), Handler)
threading.Thread(target=exit_with_stdin, daemon=True).start()
print(server.server_address[1], flush=True)
server.serve_forever()
