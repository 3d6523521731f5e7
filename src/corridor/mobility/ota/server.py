"""The OTA server: both repositories over HTTPS, and the director's manifest endpoint.

This module owns :class:`OtaServer` (what ``corridor ota serve`` runs) and the server's
TLS files (:func:`ensure_tls`: a CA and a server certificate for ``localhost`` and
``127.0.0.1`` under ``<dir>/tls/``, made with :mod:`corridor.kms.pki`; vehicles pin the
CA). Routes::

    GET  /image/metadata/<file>             the image repository's metadata
    GET  /image/targets/<path>              its (encrypted) images
    GET  /director/<vehicle>/metadata/<file> that vehicle's director repository
    POST /director/<vehicle>/manifest       the vehicle's signed manifest (at most 64 KiB)

Nothing else of the OTA directory is served (keys, campaigns, reports); a path that
leaves its repository is 404. The server counts requests and bytes served (the campaign
benchmark). The handler class can be replaced (the attack tests serve a misbehaving
mirror with a subclass).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from corridor.kms.pki import Identity, create_ca, issue_certificate

MAX_MANIFEST_BYTES = 65_536
TLS_DIR = "tls"
ManifestHandler = Callable[[str, bytes], tuple[int, str]]
"""``(vehicle ID, body) -> (HTTP status, one-line answer)``."""


def ensure_tls(ota_dir: Path) -> tuple[Path, Path, Path]:
    """``(CA file, server certificate, server key)``, created on first use."""
    tls = ota_dir / TLS_DIR
    ca_file, cert_file, key_file = tls / "ca.pem", tls / "server.pem", tls / "server.key"
    if not key_file.exists():
        tls.mkdir(parents=True, exist_ok=True)
        ca = create_ca("Corridor OTA CA")
        cert, key = issue_certificate(ca, Identity("kme", "ota-server"),
                                      hosts=("localhost", "127.0.0.1"))
        ca_file.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.touch(mode=0o600)
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return ca_file, cert_file, key_file


class OtaRequestHandler(BaseHTTPRequestHandler):
    """Serves the routes of the module docstring from ``server.ota_dir``."""

    server: OtaHttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the server counts; a fleet's requests are not worth a line each."""

    def resolve(self) -> Path | None:
        """The file a GET names, or None (404)."""
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        root = self.server.ota_dir.resolve()
        if len(parts) >= 3 and parts[0] == "image" and parts[1] in ("metadata", "targets"):
            base = root / "image" / parts[1]
            rest = parts[2:]
        elif len(parts) >= 4 and parts[0] == "director" and parts[2] == "metadata":
            base = root / "director" / parts[1] / "metadata"
            rest = parts[3:]
        else:
            return None
        path = base.joinpath(*rest).resolve()
        if not path.is_file() or not path.is_relative_to(base.resolve()):
            return None
        return path

    def do_GET(self) -> None:
        path = self.resolve()
        if path is None:
            self.send_answer(HTTPStatus.NOT_FOUND, "not found")
            return
        self.send_file(path)

    def send_file(self, path: Path) -> None:
        data = path.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.count(len(data))

    def send_answer(self, status: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        parts = self.path.strip("/").split("/")
        length = int(self.headers.get("Content-Length") or 0)
        if len(parts) != 3 or parts[0] != "director" or parts[2] != "manifest":
            self.send_answer(HTTPStatus.NOT_FOUND, "not found")
            return
        if length > MAX_MANIFEST_BYTES:
            self.close_connection = True
            self.send_answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"a manifest is at most {MAX_MANIFEST_BYTES} bytes")
            return
        body = self.rfile.read(length)
        handler = self.server.on_manifest
        status, text = (HTTPStatus.NOT_FOUND, "no director here") if handler is None \
            else handler(parts[1], body)
        self.send_answer(status, text)


class OtaHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[OtaRequestHandler],
                 ota_dir: Path, on_manifest: ManifestHandler | None) -> None:
        super().__init__(address, handler)
        self.ota_dir = ota_dir
        self.on_manifest = on_manifest
        self.requests = 0
        self.bytes_served = 0
        self._lock = threading.Lock()

    def count(self, size_bytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_served += size_bytes


class OtaServer:
    """Both repositories of ``ota_dir`` over HTTPS on ``host:port`` (0: any free port).

    Args:
        on_manifest: the director's manifest check (:meth:`.director.Director.receive`).
        handler: the request handler class (default :class:`OtaRequestHandler`).
    """

    def __init__(self, ota_dir: Path, *, host: str = "127.0.0.1", port: int = 0,
                 on_manifest: ManifestHandler | None = None,
                 handler: type[OtaRequestHandler] = OtaRequestHandler) -> None:
        self.ota_dir = ota_dir
        self.ca_file, cert_file, key_file = ensure_tls(ota_dir)
        self.httpd = OtaHttpServer((host, port), handler, ota_dir, on_manifest)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert_file, key_file)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None
        self.started_at: str | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"https://{host!s}:{port}"

    def __repr__(self) -> str:
        return f"OtaServer({self.url!r})"

    def start(self) -> OtaServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="ota-server",
                                        daemon=True)
        self._thread.start()
        self.started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        return self

    def status(self) -> dict[str, Any]:
        return {"url": self.url, "requests": self.httpd.requests,
                "bytes_served": self.httpd.bytes_served}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OtaServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["MAX_MANIFEST_BYTES", "ManifestHandler", "OtaRequestHandler", "OtaServer",
           "ensure_tls"]
