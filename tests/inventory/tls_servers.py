"""TLS servers with chosen settings, started by the tests, each with the findings an
inventory of it must report.

- ``hybrid``: the OpenSSL that pyca/cryptography bundles (pyOpenSSL), TLS 1.3 only,
  groups X25519MLKEM768 and X25519, an RSA-2048 certificate, AES-256-GCM;
- ``classic``: Python's ssl (system OpenSSL), TLS 1.2 only, P-256 only, an ECDSA
  P-256 certificate, ECDHE-ECDSA-AES128-GCM-SHA256;
- :func:`stalling_server`: accepts connections and never answers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from corridor.inventory.algorithms import default_size
from tests.inventory.corpus import Expected


@dataclass
class Server:
    """A running test server and what its inventory must contain."""

    name: str
    port: int
    expected: list[Expected] = field(default_factory=list)

    @property
    def target(self) -> str:
        """``host:port`` to scan."""
        return f"127.0.0.1:{self.port}"


def _write_cert(directory: Path, name: str, key: object) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=90))
            .sign(key, hashes.SHA256()))  # type: ignore[arg-type]
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return cert_path, key_path


def _serve(listener: socket.socket, handshake: object, stop: threading.Event) -> None:
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            sock, _ = listener.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        sock.settimeout(5.0)
        with contextlib.suppress(Exception):
            handshake(sock)  # type: ignore[operator]
        with contextlib.suppress(OSError):
            sock.close()


def _hybrid_handshake(cert: Path, key: Path) -> object:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.use_certificate_chain_file(str(cert))
    context.use_privatekey_file(str(key))
    assert _lib.SSL_CTX_set1_curves_list(context._context, b"X25519MLKEM768:X25519") == 1
    context.set_tls13_ciphersuites(b"TLS_AES_256_GCM_SHA384")

    def handshake(sock: socket.socket) -> None:
        sock.settimeout(None)
        connection = SSL.Connection(context, sock)
        connection.set_accept_state()
        connection.do_handshake()
        with contextlib.suppress(SSL.Error):
            connection.shutdown()
    return handshake


def _classic_handshake(cert: Path, key: Path) -> object:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    context.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    context.set_ecdh_curve("prime256v1")

    def handshake(sock: socket.socket) -> None:
        with context.wrap_socket(sock, server_side=True):
            pass
    return handshake


@contextlib.contextmanager
def _listening(handshake: object) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    thread = threading.Thread(target=_serve, args=(listener, handshake, stop), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2.0)
        listener.close()


@contextlib.contextmanager
def running_servers(directory: Path) -> Iterator[list[Server]]:
    """The hybrid and the classic server, with their expected findings."""
    hybrid_cert = _write_cert(directory, "hybrid", rsa.generate_private_key(65537, 2048))
    classic_cert = _write_cert(directory, "classic", ec.generate_private_key(ec.SECP256R1()))
    with _listening(_hybrid_handshake(*hybrid_cert)) as hybrid_port, \
            _listening(_classic_handshake(*classic_cert)) as classic_port:
        hybrid = Server("hybrid", hybrid_port)
        location = hybrid.target
        hybrid.expected = [
            Expected("tls", location, "chain[0]", "RSA", 2048),
            Expected("tls", location, "cipher", "AES", 256),
            Expected("tls", location, "groups", "X25519MLKEM768",
                     default_size("X25519MLKEM768")),
            Expected("tls", location, "groups", "X25519", 256)]
        classic = Server("classic", classic_port)
        location = classic.target
        classic.expected = [
            Expected("tls", location, "chain[0]", "ECDSA", 256),
            Expected("tls", location, "cipher", "AES", 128),
            Expected("tls", location, "versions", "TLSv1.2", None),
            Expected("tls", location, "groups", "ECDH", 256)]
        yield [hybrid, classic]


@contextlib.contextmanager
def stalling_server() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return
    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(2.0)
        for sock in held:
            sock.close()
        listener.close()
