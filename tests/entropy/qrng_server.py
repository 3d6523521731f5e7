"""A tiny HTTPS QRNG endpoint for the tests: good, stuck, biased and failing answers.

Paths: ``/raw`` (OS random bytes, ``application/octet-stream``), ``/stuck`` (one byte
value repeated), ``/biased`` (a value far too frequent, no runs), ``/anu`` and
``/anu-hex`` (ANU JSON, ``uint8`` and ``hex16``), ``/qrypt`` (JSON array of base64
strings), ``/short`` (half the bytes asked for), ``/unavailable`` (503), ``/not-json``.
The requested size is the ``length`` query parameter. Requires a client certificate
signed by the test CA (mutual TLS).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def _biased(size: int) -> bytes:
    # every 8th byte is 0, the rest cycle through 1..255: 64 zeros per 512-byte window
    body = bytearray((i % 255) + 1 for i in range(size))
    body[::8] = bytes(len(body[::8]))
    return bytes(body)


class _Handler(BaseHTTPRequestHandler):
    server_version = "TestQrng/1"

    def log_message(self, format: str, *args: object) -> None:
        return

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        size = int(parse_qs(parts.query).get("length", ["32"])[0])
        self.server.requests.append(parts.path)  # type: ignore[attr-defined]
        path = parts.path
        if path == "/raw":
            self._send(os.urandom(size), "application/octet-stream")
        elif path == "/stuck":
            self._send(b"\x42" * size, "application/octet-stream")
        elif path == "/biased":
            self._send(_biased(size), "application/octet-stream")
        elif path == "/short":
            self._send(os.urandom(size // 2), "application/octet-stream")
        elif path == "/anu":
            data = list(os.urandom(size))
            self._json({"type": "uint8", "length": size, "data": data, "success": True})
        elif path == "/anu-hex":
            raw = os.urandom(size + size % 2)
            data = [raw[i:i + 2].hex() for i in range(0, len(raw), 2)]
            self._json({"type": "hex16", "length": len(data), "data": data, "success": True})
        elif path == "/qrypt":
            blocks = [base64.b64encode(os.urandom(1024)).decode() for _ in range(-(-size // 1024))]
            self._json({"random": blocks, "size": len(blocks)})
        elif path == "/not-json":
            self._send(b"<html>maintenance</html>", "application/json")
        elif path == "/unavailable":
            self._send(b"busy", "text/plain", status=503)
        else:
            self._send(b"", "text/plain", status=404)

    def _json(self, document: object) -> None:
        self._send(json.dumps(document).encode(), "application/json")

    def _send(self, body: bytes, content_type: str, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class QrngServer:
    """The endpoint in a thread; ``url(path)`` is its address."""

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.load_verify_locations(ca)
        context.verify_mode = ssl.CERT_REQUIRED
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.requests = []  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def requests(self) -> list[str]:
        return self._httpd.requests  # type: ignore[attr-defined,no-any-return]

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
