#!/usr/bin/env python3
"""HTTP/1.1 echo server for cluster-relay's tests (started by tests/support/echo.rs).

    echo.py --bind IP --port P [--tls-cert F --tls-key F] [--port-file F] [--verbose]

Threaded and keep-alive capable; the Python standard library only, so it runs
inside any netns pod. Bodies are streamed both ways, never held whole, so
gigabyte transfers cost no memory:

  any method, any path not below  200, JSON {"method", "path" (with query),
                                  "headers": {lowercased name: [values]},
                                  "body_bytes", "body_sha256", "peer"}; the
                                  body may be Content-Length or chunked
  GET /bytes?n=N                  N bytes, byte i = i % 251, with Content-Length
  GET /chunked?n=N                the same bytes, Transfer-Encoding: chunked
  GET /slow?chunks=K&interval_ms=M  K small chunks, one every M ms (chunked)
  GET /ws (Upgrade: websocket)    RFC 6455 echo: text/binary frames come back
                                  unmasked, pings get pongs, a close is echoed
  GET /healthz                    200 "ok"

With --port 0 the kernel picks the port; --port-file receives it once the
socket listens (written whole, by rename), which is how callers wait for it.
"""

import argparse
import base64
import hashlib
import json
import os
import socketserver
import ssl
import struct
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

READ_CHUNK = 1 << 20
WRITE_CHUNK = 64 * 1024
MODULUS = 251
# Any run of the pattern is a slice of this, whatever its starting offset.
PATTERN = memoryview(bytes(i % MODULUS for i in range(WRITE_CHUNK + MODULUS)))
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def pattern_chunks(n):
    """The first n bytes of the pattern in chunks; n is checked right away."""
    if n < 0:
        raise ValueError("n must not be negative")

    def chunks():
        offset = 0
        while offset < n:
            size = min(WRITE_CHUNK, n - offset)
            start = offset % MODULUS
            yield PATTERN[start : start + size]
            offset += size

    return chunks()


def unmask(data, mask, offset):
    """XORs with the mask key as if `data` started `offset` bytes into the payload."""
    shift = offset % 4
    key = (mask[shift:] + mask[:shift]) * (len(data) // 4 + 1)
    # One big-integer XOR instead of a Python loop over every byte.
    mixed = int.from_bytes(data, "little") ^ int.from_bytes(key[: len(data)], "little")
    return mixed.to_bytes(len(data), "little")


def ws_header(first_byte, length):
    if length < 126:
        return bytes([first_byte, length])
    if length < 1 << 16:
        return bytes([first_byte, 126]) + struct.pack("!H", length)
    return bytes([first_byte, 127]) + struct.pack("!Q", length)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Small chunks (/slow, WebSocket frames) must not wait for delayed ACKs.
    disable_nagle_algorithm = True
    server_version = "echo.py"

    def setup(self):
        context = self.server.tls
        if context is not None:
            # The handshake runs on this connection's thread, not the accept loop.
            self.request = context.wrap_socket(self.request, server_side=True)
        super().setup()

    def __getattr__(self, name):
        # Every method is served, whatever its name.
        if name.startswith("do_"):
            return self.dispatch
        raise AttributeError(name)

    def log_request(self, code="-", size="-"):
        if self.server.verbose:
            super().log_request(code, size)

    def dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        upgrade = self.headers.get("Upgrade", "").lower()
        if url.path == "/ws" and upgrade == "websocket":
            return self.websocket()
        digest, body_bytes = hashlib.sha256(), 0
        for chunk in self.body_chunks():
            digest.update(chunk)
            body_bytes += len(chunk)
        if self.command == "GET" and url.path in ("/bytes", "/chunked", "/slow", "/healthz"):
            try:
                return getattr(self, "get_" + url.path[1:])(query)
            except (KeyError, ValueError) as err:
                return self.reply(400, "text/plain", f"bad query: {err}\n".encode())
        headers = {}
        for name, value in self.headers.items():
            headers.setdefault(name.lower(), []).append(value)
        echo = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body_bytes": body_bytes,
            "body_sha256": digest.hexdigest(),
            "peer": "%s:%d" % self.client_address[:2],
        }
        self.reply(200, "application/json", json.dumps(echo).encode())

    def body_chunks(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            yield from self.chunked_body()
            return
        left = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(left, READ_CHUNK))
            if not data:
                raise ConnectionError("the body ended early")
            left -= len(data)
            yield data

    def chunked_body(self):
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                break
            left = size
            while left:
                data = self.rfile.read(min(left, READ_CHUNK))
                if not data:
                    raise ConnectionError("the body ended early")
                left -= len(data)
                yield data
            if self.rfile.read(2) != b"\r\n":
                raise ValueError("a chunk does not end in CRLF")
        while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
            pass  # trailers

    def reply(self, status, content_type, body):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def start_chunked(self, content_type):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data):
        # One write per chunk: with Nagle off, three would be three packets.
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def get_healthz(self, _query):
        self.reply(200, "text/plain", b"ok")

    def get_bytes(self, query):
        n = int(query["n"][0])
        chunks = pattern_chunks(n)  # checks n before the head goes out
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(chunk)

    def get_chunked(self, query):
        chunks = pattern_chunks(int(query["n"][0]))
        self.start_chunked("application/octet-stream")
        for chunk in chunks:
            self.write_chunk(chunk)
        self.wfile.write(b"0\r\n\r\n")

    def get_slow(self, query):
        chunks = int(query["chunks"][0])
        interval = int(query["interval_ms"][0]) / 1000
        self.start_chunked("text/plain")
        for i in range(chunks):
            if i:
                time.sleep(interval)  # pacing the response is the point here
            self.write_chunk(b"chunk %d\n" % i)
        self.wfile.write(b"0\r\n\r\n")

    def websocket(self):
        key = self.headers.get("Sec-WebSocket-Key", "").strip()
        if not key:
            return self.reply(400, "text/plain", b"missing Sec-WebSocket-Key\n")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest())
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.end_headers()
        self.close_connection = True  # no HTTP after the upgrade
        while self.ws_frame():
            pass

    def ws_frame(self):
        """Echoes one frame; False once the connection is done."""
        head = self.rfile.read(2)
        if len(head) < 2:
            return False
        first, second = head
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self.rfile.read(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self.rfile.read(8))[0]
        if not second & 0x80:
            # RFC 6455 5.1: a server closes on an unmasked client frame.
            self.wfile.write(ws_header(0x88, 2) + struct.pack("!H", 1002))
            return False
        mask = self.rfile.read(4)
        if opcode >= 0x8:  # control frames carry at most 125 bytes
            payload = unmask(self.rfile.read(length), mask, 0)
            if opcode == 0x8:
                self.wfile.write(ws_header(0x88, len(payload)) + payload)
                return False
            if opcode == 0x9:
                self.wfile.write(ws_header(0x8A, len(payload)) + payload)
            return True
        # Data and continuation frames go back as they came (FIN and opcode
        # kept, so fragmented messages stay fragmented), streamed.
        self.wfile.write(ws_header(first & 0x8F, length))
        done = 0
        while done < length:
            data = self.rfile.read(min(length - done, READ_CHUNK))
            if not data:
                return False
            self.wfile.write(unmask(data, mask, done))
            done += len(data)
        return True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    # Benchmarks open many connections at once; the default backlog is 5.
    request_queue_size = 1024

    def server_bind(self):
        # HTTPServer.server_bind resolves the bind address (getfqdn): inside a
        # pod there is no resolver, so skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # Clients that go away mid-request, or probe the port without TLS,
        # are part of the tests, not errors of the server.
        if isinstance(sys.exc_info()[1], (OSError, ValueError, struct.error)):
            return
        super().handle_error(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--port-file")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    server = Server((args.bind, args.port), Handler)
    server.verbose = args.verbose
    server.tls = None
    if args.tls_cert:
        server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.tls.load_cert_chain(args.tls_cert, args.tls_key)
        server.tls.set_alpn_protocols(["http/1.1"])
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{port}\n")
        os.rename(tmp, args.port_file)
    print(f"echo.py listening on {args.bind}:{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
