"""Mutual TLS for the KME: uvicorn serving HTTPS with required client certificates,
and client-side TLS contexts that check the server's Corridor identity.

Two TLS stacks serve. By default a listener runs TLS on the OpenSSL 4 that cryptography
bundles, with the hybrid post-quantum key exchange X25519MLKEM768
(:mod:`corridor.kms.tls_openssl`, the KME's ``tls_groups``); with ``tls_groups`` None it
runs on Python's :mod:`ssl` (system OpenSSL, classical groups), as described below for
:func:`server_ssl_context`. Both give the application the same TLS extension and obey
the same guard and timeouts.

Server side. :func:`server_ssl_context` verifies a client certificate against our CA
(only the deployment's CA loaded, TLS 1.2 or later). It is ``ssl.CERT_OPTIONAL``: a
client that presents no certificate completes the handshake, so that it gets an HTTP
answer saying a certificate is required (401, :mod:`corridor.kms.api`) instead of a
dropped connection; a client that presents a certificate that does not verify still
fails the handshake. Uvicorn
does not pass the peer certificate to the application, so :class:`TlsH11Protocol` (and
:class:`TlsHttpToolsProtocol` where ``httptools`` is installed) wraps the application
once per connection, right after the handshake, and adds the verified client
certificate to every request's ``scope["extensions"]["tls"]`` in the shape of the ASGI
TLS extension (``client_cert_chain``: a list of PEM strings, the client certificate
first; ``tls_version``: the protocol number, 0x0303 for TLS 1.2, 0x0304 for TLS 1.3).
A presented certificate reaches the application only after its chain verified, so
whatever sits in ``client_cert_chain`` has been checked against the CA; an empty chain
means the client presented none, and the application refuses every such request.

Loading. Certificate, key and CA files are checked before OpenSSL sees them
(:func:`load_pem_files`): a file that is not PEM, a key that does not belong to the
certificate or a CA file holding an end-entity certificate each raise one
:class:`~corridor.errors.ParameterError` that names the option and says what to pass.

Client side. :func:`client_ssl_context` verifies the server against the CA and the host
name and, when given an expected :class:`~corridor.kms.pki.Identity`, checks the
server's certificate identity right after the handshake, before any request is sent
(an SAE talks only to the KME it expects; a KME only to its peer KME).

:func:`serve` runs a server in the foreground; :func:`running_server` runs one in a
background thread on a free port and stops it cleanly (tests, tools, ``corridor up``).

Connection limits (:mod:`corridor.kms.limits`). :class:`GuardedServer` serves on a
:class:`~corridor.kms.limits.GuardedListener`, so every accepted socket passes the
KME's :class:`~corridor.kms.limits.ConnectionGuard` before its TLS handshake, with
the handshake timeout set from the limits (asyncio's ``ssl_handshake_timeout``, or the
pyOpenSSL protocol's own timer). The HTTP protocol closes a
connection whose request headers are not complete ``header_timeout_s`` after its
handshake or its previous response (uvicorn has no such timeout). The servers run on
asyncio's selector loop, not uvloop: the guard relies on asyncio calling ``accept`` on
the socket object it was given.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from uvicorn.protocols.http.h11_impl import H11Protocol

from corridor.errors import ParameterError
from corridor.kms.limits import (
    REASON_HEADER_TIMEOUT,
    ConnectionGuard,
    ConnectionLimits,
    GuardedListener,
    RefusalReporter,
    check_file_budget,
    open_file_limit,
)
from corridor.kms.pki import CertificateIdentityError, Identity, identity_from_der
from corridor.kms.tls_openssl import OpenSSLServerProtocol, openssl_server_context

PathLike = str | os.PathLike[str]
ASGIApp = Any  # an ASGI 3 callable: (scope, receive, send) -> awaitable

DEFAULT_KEEP_ALIVE_S = 30
_TLS_VERSION_NUMBERS = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}

logger = logging.getLogger(__name__)


def _require_file(field: str, path: PathLike) -> str:
    if not Path(path).is_file():
        raise ParameterError(field, str(path), "an existing PEM file")
    return os.fspath(path)


def _read(field: str, path: PathLike) -> bytes:
    try:
        return Path(_require_file(field, path)).read_bytes()
    except OSError as exc:
        raise ParameterError(field, str(path), "a readable PEM file",
                             exc.strerror or type(exc).__name__) from None


def _swap_hint(data: bytes, wanted: str) -> str:
    if wanted == "certificate" and b"PRIVATE KEY-----" in data:
        return "it holds a private key: were --cert and --key swapped?"
    if wanted == "key" and b"CERTIFICATE-----" in data:
        return "it holds a certificate: were --cert and --key swapped?"
    return "it is not PEM (-----BEGIN ...-----) or is damaged"


def load_pem_files(cert: PathLike, key: PathLike, ca: PathLike) -> None:
    """Check the files a TLS context is built from, with one clear error per mistake.

    Raises :class:`ParameterError` for ``--ca``, ``--cert`` or ``--key`` when a file is
    missing, is not PEM, the CA file holds no CA certificate, the key is encrypted, or
    the key is not the certificate's.
    """
    ca_data = _read("--ca", ca)
    try:
        authorities = x509.load_pem_x509_certificates(ca_data)
    except ValueError:
        raise ParameterError("--ca", str(ca), "must be the corridor's CA certificate in PEM "
                             "(pki/ca.pem)", _swap_hint(ca_data, "certificate")) from None

    def is_ca(certificate: x509.Certificate) -> bool:
        try:
            return bool(certificate.extensions.get_extension_for_class(
                x509.BasicConstraints).value.ca)
        except x509.ExtensionNotFound:
            return False

    if not any(is_ca(c) for c in authorities):
        raise ParameterError("--ca", str(ca), "must be the corridor's CA certificate "
                             "(pki/ca.pem)", "it holds an end-entity certificate, not a CA: "
                             "pass the ca.pem of the PKI that issued the certificates")
    cert_data = _read("--cert", cert)
    try:
        certificate = x509.load_pem_x509_certificates(cert_data)[0]
    except ValueError:
        raise ParameterError("--cert", str(cert), "must be a certificate in PEM",
                             _swap_hint(cert_data, "certificate")) from None
    key_data = _read("--key", key)
    try:
        private_key = serialization.load_pem_private_key(key_data, None)
    except TypeError:
        raise ParameterError("--key", str(key), "must be an unencrypted PEM private key",
                             "it is password-protected") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ParameterError("--key", str(key), "must be a private key in PEM",
                             _swap_hint(key_data, "key")) from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private_key.public_key().public_bytes(*spki) != certificate.public_key().public_bytes(
            *spki):
        raise ParameterError("--key", str(key), f"must be the private key of --cert {cert}",
                             "they do not match: pass the key.pem written next to that "
                             "cert.pem")


def _load(context: ssl.SSLContext, cert: PathLike, key: PathLike, ca: PathLike) -> None:
    load_pem_files(cert, key, ca)
    try:
        # Only the deployment's CA: never the system store, which would admit any cert.
        context.load_verify_locations(cafile=os.fspath(ca))
        context.load_cert_chain(os.fspath(cert), os.fspath(key))
    except ssl.SSLError as exc:  # what the checks above did not foresee, still one line
        raise ParameterError("--cert/--key/--ca", f"{cert}, {key}, {ca}",
                             "must be a matching certificate, key and CA in PEM",
                             f"OpenSSL: {exc.reason or exc}") from None


def server_ssl_context(cert: PathLike, key: PathLike, ca: PathLike) -> ssl.SSLContext:
    """Server context: our certificate, client certificates verified against our CA only
    (optional at the handshake; the application refuses requests without one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_OPTIONAL
    _load(context, cert, key, ca)
    return context


class IdentityCheckingSSLSocket(ssl.SSLSocket):
    """An SSL socket that refuses a server whose certificate identity is unexpected.

    The check runs right after the handshake, so no request byte reaches a server that
    is not the expected KME. ``expected_identity`` is set on a per-context subclass.
    """

    expected_identity: Identity | None = None

    def do_handshake(self, block: bool = False) -> None:
        """Handshake, then compare the peer certificate's identity with the expected one."""
        super().do_handshake(block)
        expected = self.expected_identity
        if expected is None:
            return
        try:
            check_peer_identity(self.getpeercert(binary_form=True), expected)
        except ssl.SSLCertVerificationError:
            self.close()
            raise


def check_peer_identity(der: bytes | None, expected: Identity) -> None:
    """Raise :class:`ssl.SSLCertVerificationError` unless the certificate ``der`` (already
    verified against the CA) carries the ``expected`` Corridor identity."""
    try:
        actual = identity_from_der(der) if der else None
    except CertificateIdentityError as exc:
        raise ssl.SSLCertVerificationError(f"peer certificate: {exc}") from None
    if actual != expected:
        raise ssl.SSLCertVerificationError(
            f"peer certificate identity {actual} is not the expected {expected}")


def client_ssl_context(cert: PathLike, key: PathLike, ca: PathLike,
                       expected_identity: Identity | None = None) -> ssl.SSLContext:
    """Client context: our certificate, the server checked against our CA, its host name
    and (if given) ``expected_identity``. TLS 1.2 or later."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED on
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(context, cert, key, ca)
    if expected_identity is not None:
        context.sslsocket_class = type(
            "ExpectingSSLSocket", (IdentityCheckingSSLSocket,),
            {"expected_identity": expected_identity})
    return context


# httpcore writes request headers and body separately; without TCP_NODELAY, Nagle holds
# the body back until the server's delayed ACK (~40 ms per POST).
CLIENT_SOCKET_OPTIONS = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


# ---------------------------------------------------------------------------------------
# The ASGI TLS extension


def tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    """The ASGI TLS extension for a connection, or ``None`` if it is not TLS."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    chain = [ssl.DER_cert_to_PEM_cert(der)] if der else []
    cipher = ssl_object.cipher()
    return {
        "server_cert": None,
        "client_cert_chain": chain,
        "client_cert_name": None,
        # A presented certificate that fails verification aborts the handshake; an empty
        # chain means none was presented (CERT_OPTIONAL), refused by the application.
        "client_cert_error": None,
        "tls_version": _TLS_VERSION_NUMBERS.get(ssl_object.version() or ""),
        "cipher_suite": None,
        "cipher_name": cipher[0] if cipher else None,
    }


def _with_tls_extension(app: ASGIApp, tls: dict[str, Any]) -> ASGIApp:
    async def app_with_tls(scope: dict[str, Any], receive: Any, send: Any) -> None:
        extensions = scope.get("extensions")
        if extensions is None:
            extensions = scope["extensions"] = {}
        extensions["tls"] = tls
        await app(scope, receive, send)
    return app_with_tls


class _TlsScopeMixin:
    """Wraps the protocol's application once per connection with the TLS extension,
    tells the connection guard the handshake is done, and enforces the header timeout.

    Uvicorn creates one protocol object per connection and calls ``self.app`` for every
    request on it, so the wrapper built after the handshake serves that connection only.
    The wrapper runs once a request's headers are complete, which stops the header
    timer. The timer starts at the handshake (a connection that never asks is closed)
    and again at the first byte after a response (between requests uvicorn's
    keep-alive timeout applies, so an idle pooled client is not counted as an attack).
    ``guard`` and ``header_timeout_s`` are set by :class:`GuardedServer` (None: off).
    """

    app: ASGIApp
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    guard: ConnectionGuard | None = None
    header_timeout_s: float | None = None
    _header_timer: asyncio.TimerHandle | None = None
    _between_requests = False

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        raw = transport.get_extra_info("socket")
        tls = tls_extension(transport)
        if self.guard is not None and raw is not None and tls is not None:
            # Only a verified client certificate makes a connection established (no longer
            # evictable): anonymous ones, which only ever get a 401, must not hold the
            # slots that SAEs and the peer KME need.
            if tls.get("client_cert_chain"):
                self.guard.established(raw.fileno())
            else:
                self.guard.anonymous(raw.fileno())
        if tls is not None:
            self.app = _with_tls_extension(self.app, tls)
        self.app = self._stopping_header_timer(self.app)
        self._arm_header_timer()

    def _stopping_header_timer(self, app: ASGIApp) -> ASGIApp:
        async def app_with_headers_done(scope: dict[str, Any], receive: Any, send: Any) -> None:
            self._cancel_header_timer()
            await app(scope, receive, send)
        return app_with_headers_done

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if self.header_timeout_s is not None:
            self._header_timer = self.loop.call_later(self.header_timeout_s,
                                                      self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.guard is not None:
            self.guard.reporter.refused(REASON_HEADER_TIMEOUT, "no complete request headers "
                                        f"within {self.header_timeout_s:g} s")
        self.transport.abort()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._between_requests = True

    def data_received(self, data: bytes) -> None:
        if self._between_requests:
            self._between_requests = False
            self._arm_header_timer()
        super().data_received(data)  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]

    def shutdown(self) -> None:
        """Server shutdown: close idle keep-alive connections at once.

        A TLS close waits for the client's close_notify, up to asyncio's 30 s SSL
        shutdown timeout, and an idle pooled client is not reading; the server would
        hang that long on Ctrl-C. No request is in flight on an idle connection, so
        aborting it loses nothing; a busy one finishes its response first.
        """
        super().shutdown()  # type: ignore[misc]
        cycle = getattr(self, "cycle", None)
        if cycle is None or cycle.response_complete:
            self.transport.abort()


class TlsH11Protocol(_TlsScopeMixin, H11Protocol):  # type: ignore[misc]
    """Uvicorn's h11 protocol with the verified client certificate in the scope."""


def _protocol_class() -> type[asyncio.Protocol]:
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return TlsH11Protocol
    return type("TlsHttpToolsProtocol", (_TlsScopeMixin, HttpToolsProtocol), {})


def uvicorn_config(app: ASGIApp, *, cert: PathLike, key: PathLike, ca: PathLike,
                   host: str = "127.0.0.1", port: int = 8443,
                   keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
                   log_level: str = "warning", access_log: bool = False) -> uvicorn.Config:
    """A uvicorn configuration serving ``app`` over mutual TLS (asyncio's loop)."""
    context = server_ssl_context(cert, key, ca)
    return uvicorn.Config(
        app, host=host, port=port, http=_protocol_class(), ws="none", lifespan="off",
        loop="asyncio", ssl_certfile=os.fspath(cert), ssl_keyfile=os.fspath(key),
        ssl_context_factory=lambda _config, _default: context,
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]  # a float works
        log_level=log_level, access_log=access_log, server_header=False)


class GuardedServer(uvicorn.Server):
    """A uvicorn server behind a :class:`~corridor.kms.limits.ConnectionGuard`.

    Serves only on the sockets it is given (wrapped in a ``GuardedListener``), with
    the TLS handshake and header timeouts of ``limits``; refused connections are
    reported to ``reporter``, whose summary lines are flushed every second.

    With ``openssl_context`` (a pyOpenSSL context, :mod:`corridor.kms.tls_openssl`) TLS
    runs on the OpenSSL that cryptography bundles (hybrid post-quantum groups), not on
    the stdlib context of ``config``; ``on_handshake`` is told the key-exchange group
    of every completed handshake.
    """

    def __init__(self, config: uvicorn.Config, limits: ConnectionLimits,
                 reporter: RefusalReporter, *, openssl_context: Any = None,
                 on_handshake: Callable[[str], None] | None = None) -> None:
        super().__init__(config)
        self.limits = limits
        self.reporter = reporter
        self.guard = ConnectionGuard(limits, reporter)
        self.openssl_context = openssl_context
        self.on_handshake = on_handshake
        self._handshaking: set[OpenSSLServerProtocol] = set()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        if not sockets:
            raise ParameterError("sockets", sockets, "a GuardedServer serves given sockets")
        config = self.config
        guard, header_timeout_s = self.guard, self.limits.header_timeout_s

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state, _loop=_loop)
            protocol.guard = guard  # type: ignore[attr-defined]
            protocol.header_timeout_s = header_timeout_s  # type: ignore[attr-defined]
            return protocol

        loop = asyncio.get_running_loop()
        self.servers = []
        for sock in sockets:
            listener = sock if isinstance(sock, GuardedListener) \
                else GuardedListener.wrap(sock, guard)
            listener.guard = guard
            if self.openssl_context is None:
                self.servers.append(await loop.create_server(
                    create_protocol, sock=listener, ssl=config.ssl, backlog=config.backlog,
                    ssl_handshake_timeout=self.limits.tls_handshake_timeout_s,
                    ssl_shutdown_timeout=self.limits.tls_handshake_timeout_s))
            else:
                self.servers.append(await loop.create_server(
                    self._openssl_protocol_factory(create_protocol), sock=listener,
                    backlog=config.backlog))
        self.started = True

    def _openssl_protocol_factory(self, create_protocol: Callable[[], asyncio.Protocol]
                                  ) -> Callable[[], asyncio.Protocol]:
        context, timeout_s = self.openssl_context, self.limits.tls_handshake_timeout_s
        on_handshake, pending = self.on_handshake, self._handshaking

        def create_tls_protocol() -> asyncio.Protocol:
            return OpenSSLServerProtocol(context, create_protocol,
                                         handshake_timeout_s=timeout_s,
                                         on_handshake=on_handshake, pending=pending)
        return create_tls_protocol

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Connections still in their handshake have no HTTP protocol that uvicorn
        # would close; drop them with the listener.
        for protocol in list(self._handshaking):
            protocol.abort_handshake()
        await super().shutdown(sockets)

    async def on_tick(self, counter: int) -> bool:
        if counter % 10 == 0:
            self.reporter.flush()
        return await super().on_tick(counter)


def guarded_server(app: ASGIApp, sock: socket.socket, cert: PathLike, key: PathLike,
                   ca: PathLike, *, limits: ConnectionLimits | None = None,
                   reporter: RefusalReporter | None = None, kme_id: str = "kme",
                   on_handshake: Callable[[str], None] | None = None,
                   log_level: str = "warning", access_log: bool = False) -> GuardedServer:
    """A :class:`GuardedServer` for ``app`` on the bound ``sock``. Without a cap in
    ``limits`` it is sized from the open-file limit (as for one KME in the process).
    TLS runs with the key-exchange groups ``limits.tls_groups`` on the bundled OpenSSL
    (stdlib ``ssl`` if None); ``on_handshake`` gets each handshake's group."""
    limits = limits or ConnectionLimits()
    if limits.max_connections is None:
        limits = check_file_budget({kme_id: limits}, open_file_limit())[kme_id]
    host, bound_port = sock.getsockname()[:2]
    config = uvicorn_config(app, cert=cert, key=key, ca=ca, host=host, port=bound_port,
                            keep_alive_s=limits.keep_alive_s, log_level=log_level,
                            access_log=access_log)
    openssl_context = None if limits.tls_groups is None else openssl_server_context(
        cert, key, ca, limits.tls_groups)
    return GuardedServer(config, limits, reporter or RefusalReporter(kme_id),
                         openssl_context=openssl_context, on_handshake=on_handshake)


def serve(app: ASGIApp, host: str, port: int, cert: PathLike, key: PathLike, ca: PathLike,
          *, limits: ConnectionLimits | None = None, reporter: RefusalReporter | None = None,
          on_handshake: Callable[[str], None] | None = None,
          log_level: str = "info", access_log: bool = False) -> None:
    """Serve ``app`` over mutual TLS until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    sock = bind_socket(host, port)
    server = guarded_server(app, sock, cert, key, ca, limits=limits, reporter=reporter,
                            on_handshake=on_handshake, log_level=log_level,
                            access_log=access_log)
    try:
        server.run(sockets=[sock])
    finally:
        server.reporter.flush(force=True)
        sock.close()


@dataclass(frozen=True)
class RunningServer:
    """A server started by :func:`running_server`."""

    host: str
    port: int
    guard: ConnectionGuard | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``https://127.0.0.1:43123``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"


def is_address_error(exc: OSError) -> bool:
    """Whether binding failed on the address, not the port: no such name, or not an
    address of this machine."""
    return isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL


def bind_socket(host: str = "127.0.0.1", port: int = 0, *,
                reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket bound to ``host``; ``port=0`` picks a free port.

    Binding first lets a caller learn every server's port before any server starts
    (two KMEs that must know each other's URL). ``reuse_port`` sets ``SO_REUSEPORT``:
    several processes of one user bind the same port and the kernel spreads new
    connections over them (the workers of one KME, docs/ha.md).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket's proto is IPPROTO_TCP, and without it every response waits for a
    # delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if is_address_error(exc):
            raise ParameterError("host", host, "an address of this machine",
                                 str(exc)) from None
        raise ParameterError("port", port, f"a free port on {host}", str(exc)) from None
    return sock


@contextmanager
def running_server(app: ASGIApp, cert: PathLike, key: PathLike, ca: PathLike, *,
                   host: str = "127.0.0.1", port: int = 0,
                   sock: socket.socket | None = None,
                   limits: ConnectionLimits | None = None,
                   reporter: RefusalReporter | None = None,
                   on_handshake: Callable[[str], None] | None = None,
                   startup_timeout_s: float = 10.0) -> Iterator[RunningServer]:
    """Run ``app`` over mutual TLS in a background thread; ``port=0`` picks a free port
    (or pass a socket from :func:`bind_socket`, which this then owns and closes).
    ``limits``, ``reporter`` and ``on_handshake`` as for :func:`guarded_server`.

    Yields once the server accepts connections; on exit it stops accepting, lets
    in-flight requests finish, and joins the thread.
    """
    if sock is None:
        sock = bind_socket(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    server = guarded_server(app, sock, cert, key, ca, limits=limits, reporter=reporter,
                            on_handshake=on_handshake)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=run, name=f"kme-server-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if failure or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"server on port {bound_port} failed to start") from (
                failure[0] if failure else None)
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise RuntimeError(f"server on port {bound_port} did not start in time")
        time.sleep(0.01)
    try:
        yield RunningServer(bound_host, bound_port, server.guard)
    finally:
        server.should_exit = True
        thread.join(15)
        server.reporter.flush(force=True)
        sock.close()
    if thread.is_alive():
        raise RuntimeError(f"server on port {bound_port} did not stop within 15 s")
