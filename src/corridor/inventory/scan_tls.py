"""TLS endpoints (``host:port``) inventoried by real handshakes.

Two stacks do the talking, because neither alone sees everything:

- the OpenSSL that pyca/cryptography bundles (through pyOpenSSL, the same library the
  KMEs serve hybrid TLS with): the certificate chain (parsed with pyca/cryptography),
  the negotiated cipher and each key-exchange group the server accepts, one handshake
  per group offered alone, including the hybrid post-quantum groups
  (X25519MLKEM768, SecP256r1MLKEM768, SecP384r1MLKEM1024) that the system OpenSSL lacks;
- Python's :mod:`ssl` (system OpenSSL): which protocol versions the server accepts,
  one handshake per version pinned (TLS 1.0 to 1.3, at security level 0 so that old
  versions can be asked for at all).

Nothing is verified: an inventory reads whatever a server presents. Every handshake
has the time limit ``timeout_s``; an endpoint that does not answer the first one in
time is skipped with the reason, so a stalled server costs one timeout, not one per probe.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import ssl
import time
import warnings
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL

from corridor.inventory import algorithms
from corridor.inventory.findings import Finding, ScanResult, Skipped
from corridor.inventory.scan_keys import certificate_findings

PROBE_GROUPS = ("X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024", "X25519",
                "X448", "P-256", "P-384", "P-521", "ffdhe2048", "ffdhe3072")
HYBRID_GROUPS = frozenset({"X25519MLKEM768", "SecP256r1MLKEM768", "SecP384r1MLKEM1024"})
_VERSIONS = (("TLSv1.0", ssl.TLSVersion.TLSv1), ("TLSv1.1", ssl.TLSVersion.TLSv1_1),
             ("TLSv1.2", ssl.TLSVersion.TLSv1_2), ("TLSv1.3", ssl.TLSVersion.TLSv1_3))
DEFAULT_TIMEOUT_S = 5.0


class HandshakeTimeout(Exception):
    """The server did not finish the handshake within the time limit."""


def _set_groups(context: Any, groups: str) -> bool:
    from OpenSSL._util import lib

    ok = bool(lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii")) == 1)
    if not ok:
        lib.ERR_clear_error()
    return ok


def _pyopenssl_handshake(host: str, port: int, timeout_s: float,
                         configure: Callable[[Any], None] | None = None) -> Any:
    """A finished pyOpenSSL client connection (closed by the caller), or an exception:
    :class:`HandshakeTimeout`, OSError, or ``SSL.Error`` when the server refuses."""
    deadline = time.monotonic() + timeout_s
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE, lambda *_: True)
    if configure is not None:
        configure(context)
    sock = socket.create_connection((host, port), timeout=timeout_s)
    sock.setblocking(False)
    connection = SSL.Connection(context, sock)
    if not _is_address(host):
        connection.set_tlsext_host_name(host.encode("idna"))
    connection.set_connect_state()
    try:
        while True:
            try:
                connection.do_handshake()
                return connection
            except SSL.WantReadError:
                wait: tuple[list[socket.socket], list[socket.socket]] = ([sock], [])
            except SSL.WantWriteError:
                wait = ([], [sock])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(select.select(*wait, [], remaining)[:2]):
                raise HandshakeTimeout(f"no TLS handshake within {timeout_s:g} s")
    except BaseException:
        sock.close()
        raise


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _close(connection: Any) -> None:
    with contextlib.suppress(OSError):  # a socket the peer dropped
        connection.close()  # pyOpenSSL passes close() to the socket


def _accepts_group(host: str, port: int, group_name: str, timeout_s: float,
                   max_version: int) -> str | None:
    """The negotiated group name when the server completes a handshake offered only
    ``group_name``, else None."""
    def configure(context: Any) -> None:
        context.set_max_proto_version(max_version)
        if not _set_groups(context, group_name):
            raise ValueError(group_name)
    try:
        connection = _pyopenssl_handshake(host, port, timeout_s, configure)
    except (SSL.Error, OSError, HandshakeTimeout, ValueError):
        return None
    try:
        name = connection.get_group_name()
        return str(name) if name else group_name
    finally:
        _close(connection)


def _accepts_version(host: str, port: int, version: ssl.TLSVersion, timeout_s: float) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        context.set_ciphers("ALL:@SECLEVEL=0")
        with warnings.catch_warnings():  # asking for TLS 1.0/1.1 is the point of the probe
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = version
            context.maximum_version = version
    except (ssl.SSLError, ValueError):
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, \
                context.wrap_socket(sock, server_hostname=host):
            return True
    except (ssl.SSLError, OSError):
        return False


def _cipher_finding(location: str, cipher: str) -> Finding | None:
    upper = cipher.upper()
    if "CHACHA20" in upper:
        return Finding("tls", location, "ChaCha20-Poly1305", "tls-handshake",
                       field="cipher", key_size_bits=256, usage="encryption",
                       detail=f"negotiated {cipher}")
    for size in (128, 256):
        if f"AES{size}" in upper.replace("_", "") or f"AES-{size}" in upper:
            return Finding("tls", location, "AES", "tls-handshake", field="cipher",
                           key_size_bits=size, usage="encryption",
                           detail=f"negotiated {cipher}")
    return None


def scan_endpoint(host: str, port: int, *, timeout_s: float = DEFAULT_TIMEOUT_S
                  ) -> ScanResult:
    """Findings for one TLS endpoint, or one skip with the reason."""
    location = f"{host}:{port}"
    result = ScanResult(endpoints_scanned=1)
    try:
        first = _pyopenssl_handshake(host, port, timeout_s)
    except HandshakeTimeout as exc:
        result.skipped.append(Skipped(location, str(exc)))
        return result
    except SSL.Error as exc:
        result.skipped.append(Skipped(location, f"TLS handshake refused ({exc})"))
        return result
    except OSError as exc:
        result.skipped.append(Skipped(location, f"cannot connect: {exc.strerror or exc}"))
        return result
    try:
        chain = first.get_peer_cert_chain(as_cryptography=True) or []
        default_group = first.get_group_name()
        version = first.get_protocol_version_name()
        cipher = first.get_cipher_name()
    finally:
        _close(first)
    for index, cert in enumerate(chain):
        result.findings += certificate_findings(cert, location, field=f"chain[{index}]",
                                                method="tls-handshake", category="tls")
    if cipher:
        found = _cipher_finding(location, cipher)
        if found:
            result.findings.append(found)
    accepted = [name for name, pinned in _VERSIONS
                if _accepts_version(host, port, pinned, timeout_s)]
    for name in accepted:
        if name != "TLSv1.3":
            result.findings.append(Finding("tls", location, name, "tls-handshake",
                                           field="versions", usage="protocol",
                                           detail=f"server accepts {name} (no post-quantum "
                                           "key exchange exists for it)"))
    max_version = SSL.TLS1_3_VERSION if version == "TLSv1.3" else SSL.TLS1_2_VERSION
    for group_name in PROBE_GROUPS:
        negotiated = _accepts_group(host, port, group_name, timeout_s, max_version)
        named = algorithms.group(group_name)
        if negotiated is None or named is None:
            continue
        is_default = default_group is not None and \
            algorithms.group(str(default_group)) == named
        hybrid = " (hybrid post-quantum)" if group_name in HYBRID_GROUPS else ""
        result.findings.append(Finding(
            "tls", location, named.algorithm, "tls-handshake", field="groups",
            key_size_bits=named.key_size_bits, curve=named.curve, usage="key-exchange",
            detail=f"accepts group {group_name}{hybrid}"
            + ("; negotiated by default" if is_default else "")))
    return result


def parse_endpoint(target: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``[v6]:port``, else None."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)
