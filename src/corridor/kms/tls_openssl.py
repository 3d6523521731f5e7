"""Hybrid post-quantum TLS for the KME listeners: TLS terminated by the OpenSSL that
pyca/cryptography bundles (through pyOpenSSL), under uvicorn's HTTP protocol.

Why. Python's :mod:`ssl` binds the system OpenSSL (3.0 here), which has no ML-KEM, so a
server on it negotiates classical X25519 and a recorded session exposes the delivered
keys to a future quantum computer. The cryptography wheels bundle OpenSSL 4, whose TLS
1.3 offers the hybrid group X25519MLKEM768 (X25519 and ML-KEM-768 combined, secure if
either holds); pyOpenSSL is the only Python binding to that library. Uvicorn accepts
only a stdlib ``ssl.SSLContext``, so this module runs TLS itself:

- :func:`openssl_server_context` builds the server context: our certificate, client
  certificates verified against the deployment's CA only, optional at the handshake
  (``CERT_OPTIONAL`` as :func:`corridor.kms.tls.server_ssl_context`: none presented ->
  the application answers 401; one presented that does not verify -> the handshake
  fails), TLS 1.2 or later, the key-exchange groups of the KME's ``tls_groups``.
- :class:`OpenSSLServerProtocol` is the asyncio protocol of an accepted socket. It feeds
  the socket's bytes to a pyOpenSSL ``Connection`` over memory BIOs (no blocking call),
  and once the handshake is done it hands the plaintext to uvicorn's HTTP protocol
  through :class:`OpenSSLTransport`, a transport that encrypts what is written and
  answers ``get_extra_info`` like asyncio's SSL transport (``ssl_object``: a
  :class:`PeerInfo` with ``getpeercert``/``cipher``/``version``/``group``). The
  handshake has its own timeout (the KME's ``tls_handshake_timeout_s``); the socket
  still passes the connection guard first, and the guard still sees its close.
- :func:`check_tls_groups` validates a ``tls_groups`` value against the OpenSSL that
  will use it (one :class:`~corridor.errors.ParameterError` naming the field).

Classical clients (curl and Python on OpenSSL 3.0) do not offer X25519MLKEM768 and
negotiate X25519 with the same listener; ``tls_groups`` decides what is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import ipaddress
import logging
import os
import re
import select
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from corridor.errors import ParameterError

DEFAULT_TLS_GROUPS = "X25519MLKEM768:X25519"
# TLS 1.2 suites as Python's ssl module chooses them (forward secret, AEAD first).
_TLS12_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20:ECDHE+AES:!aNULL:!eNULL:!SHA1:!AESCCM"
_READ_CHUNK = 65536

logger = logging.getLogger(__name__)


def _set_groups(context: Any, groups: str) -> bool:
    # SSL_CTX_set1_curves_list is OpenSSL's older name of SSL_CTX_set1_groups_list, the
    # one pyOpenSSL's bindings export; it takes the same list and returns 1 on success.
    ok = _lib.SSL_CTX_set1_curves_list(context._context, groups.encode("ascii")) == 1
    if not ok:
        _lib.ERR_clear_error()
    return ok


def check_tls_groups(value: Any, field: str = "tls_groups") -> str:
    """``value`` if it is a colon-separated list of key-exchange groups the bundled
    OpenSSL accepts (e.g. ``X25519MLKEM768:X25519``); else :class:`ParameterError`."""
    allowed = ("a colon-separated list of TLS groups of OpenSSL 4, e.g. "
               f"'{DEFAULT_TLS_GROUPS}' (hybrid post-quantum first, classical X25519 "
               "for older clients)")
    if not isinstance(value, str) or not value or not value.isascii() \
            or any(c.isspace() for c in value):
        raise ParameterError(field, value, allowed)
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    if not _set_groups(context, value):
        names = [name.lstrip("?*-") for name in re.split(r"[:/]", value)]
        unknown = [name for name in names if not name or not _set_groups(context, name)]
        raise ParameterError(field, value, allowed,
                             f"{SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()} "
                             f"has no group {', '.join(map(repr, unknown))}" if unknown
                             else "OpenSSL refuses the list")
    return value


def openssl_server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                           ca: str | os.PathLike[str], groups: str) -> Any:
    """A pyOpenSSL server context for a KME listener (files already checked by
    :func:`corridor.kms.tls.load_pem_files`)."""
    # VERIFY_PEER without FAIL_IF_NO_PEER_CERT: a certificate is asked for and, when
    # presented, must verify against the CA; a client without one completes the
    # handshake and is refused by the application (401), as with ssl.CERT_OPTIONAL.
    return _context(SSL.TLS_SERVER_METHOD, SSL.OP_CIPHER_SERVER_PREFERENCE, cert, key, ca,
                    groups)


def _context(method: int, options: int, cert: str | os.PathLike[str],
             key: str | os.PathLike[str], ca: str | os.PathLike[str], groups: str) -> Any:
    """A pyOpenSSL context with our certificate and key, peers verified against the
    deployment's CA only (never the system store, which would admit any certificate),
    TLS 1.2 or later, key exchange from ``groups``."""
    check_tls_groups(groups)
    context = SSL.Context(method)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION | options)
    context.set_cipher_list(_TLS12_CIPHERS)
    try:
        context.use_certificate_chain_file(os.fspath(cert))
        context.use_privatekey_file(os.fspath(key))
        context.check_privatekey()
        context.load_verify_locations(os.fspath(ca))
    except SSL.Error as exc:
        raise ParameterError("--cert/--key/--ca", f"{cert}, {key}, {ca}",
                             "must be a matching certificate, key and CA in PEM",
                             f"OpenSSL: {exc}") from None
    context.set_verify(SSL.VERIFY_PEER)
    _set_groups(context, groups)
    return context


class PeerInfo:
    """What the application may learn about a TLS connection (the ``ssl_object`` extra
    of :class:`OpenSSLTransport`), in the shape of :class:`ssl.SSLObject`'s methods."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        """The client's verified certificate in DER (``binary_form`` only), or None."""
        if not binary_form:
            raise ValueError("only binary_form=True is provided")
        cert = self._connection.get_peer_certificate(as_cryptography=True)
        return None if cert is None else cert.public_bytes(serialization.Encoding.DER)

    def cipher(self) -> tuple[str, str, int] | None:
        """(cipher name, protocol, secret bits) as :meth:`ssl.SSLObject.cipher`."""
        name = self._connection.get_cipher_name()
        if name is None:
            return None
        return name, self._connection.get_cipher_version(), self._connection.get_cipher_bits()

    def version(self) -> str | None:
        """``TLSv1.2`` or ``TLSv1.3``."""
        return str(self._connection.get_protocol_version_name())

    def group(self) -> str | None:
        """The negotiated key-exchange group, e.g. ``X25519MLKEM768`` or ``x25519``."""
        return self._connection.get_group_name()


class OpenSSLTransport(asyncio.Transport):
    """The transport uvicorn's HTTP protocol sees: plaintext in, TLS records out."""

    def __init__(self, owner: OpenSSLServerProtocol) -> None:
        super().__init__()
        self._owner = owner
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "sslcontext":
            return self._owner.context
        if name == "ssl_object":
            return self._owner.peer_info
        return self._owner.raw.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._owner.send(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing or self._owner.raw.is_closing()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._owner.close_tls()

    def abort(self) -> None:
        self._closing = True
        self._owner.raw.abort()

    def pause_reading(self) -> None:
        self._owner.raw.pause_reading()

    def resume_reading(self) -> None:
        self._owner.raw.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._owner.raw.is_reading())

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._owner.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return int(self._owner.raw.get_write_buffer_size())

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._owner.app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._owner.app  # type: ignore[return-value]


class OpenSSLServerProtocol(asyncio.Protocol):
    """TLS server side of one accepted socket; the HTTP protocol runs on top.

    ``app_factory`` makes the HTTP protocol (called once the handshake is done, so a
    connection that never completes it costs no HTTP state); ``on_handshake`` is told
    the negotiated group of every completed handshake; ``pending`` holds the protocols
    still in their handshake (the server aborts them when it stops).
    """

    def __init__(self, context: Any, app_factory: Callable[[], asyncio.Protocol], *,
                 handshake_timeout_s: float,
                 on_handshake: Callable[[str], None] | None = None,
                 pending: set[OpenSSLServerProtocol] | None = None) -> None:
        self.context = context
        self.app_factory = app_factory
        self.handshake_timeout_s = handshake_timeout_s
        self.on_handshake = on_handshake
        self.pending = pending if pending is not None else set()
        self.raw: asyncio.Transport = None  # type: ignore[assignment]
        self.app: asyncio.Protocol | None = None
        self.peer_info: PeerInfo | None = None
        self._connection: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._transport: OpenSSLTransport | None = None

    # -- raw socket side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.raw = transport  # type: ignore[assignment]
        self._connection = SSL.Connection(self.context, None)  # memory BIOs
        self._connection.set_accept_state()
        self._timer = asyncio.get_running_loop().call_later(self.handshake_timeout_s,
                                                            self._handshake_timeout)
        self.pending.add(self)

    def data_received(self, data: bytes) -> None:
        connection = self._connection
        if connection is None:
            return
        connection.bio_write(data)
        if self.app is None:
            try:
                connection.do_handshake()
            except SSL.WantReadError:
                self._flush()
                return
            except SSL.Error as exc:
                logger.debug("TLS handshake failed: %s", exc)
                self._flush()  # the alert
                self._drop(abort=False)
                return
            self._handshake_done()
        self._read_plaintext()

    def eof_received(self) -> bool | None:
        if self.app is not None:
            return self.app.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self.pending.discard(self)
        self._connection = None
        if self._transport is not None:
            self._transport._closing = True
        if self.app is not None:
            self.app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # -- TLS

    def _handshake_done(self) -> None:
        self._cancel_timer()
        self.pending.discard(self)
        self._flush()  # Finished / session tickets
        self.peer_info = PeerInfo(self._connection)
        group = self.peer_info.group() or "none"
        if self.on_handshake is not None:
            self.on_handshake(group)
        logger.debug("TLS handshake done: %s, group %s", self.peer_info.version(), group)
        self._transport = OpenSSLTransport(self)
        self.app = self.app_factory()
        self.app.connection_made(self._transport)

    def _read_plaintext(self) -> None:
        while self._connection is not None and self.app is not None:
            try:
                chunk = self._connection.recv(_READ_CHUNK)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:  # the client's close_notify
                self._flush()
                if not self.app.eof_received():
                    self.close_tls()
                return
            except SSL.Error as exc:
                logger.debug("TLS record error: %s", exc)
                self._drop(abort=True)
                return
            if not chunk:
                break
            self.app.data_received(chunk)
        self._flush()

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` and queue the records on the socket."""
        if self._connection is None or self.raw.is_closing():
            return
        try:
            self._connection.sendall(data)
        except SSL.Error as exc:
            logger.debug("TLS write error: %s", exc)
            self._drop(abort=True)
            return
        self._flush()

    def close_tls(self) -> None:
        """Send close_notify and close the socket once its buffer is written."""
        if self._connection is not None and not self.raw.is_closing():
            with contextlib.suppress(SSL.Error):  # the socket may be half gone already
                self._connection.shutdown()
            self._flush()
        if not self.raw.is_closing():
            self.raw.close()

    def _flush(self) -> None:
        connection = self._connection
        if connection is None or self.raw.is_closing():
            return
        while True:
            try:
                records = connection.bio_read(_READ_CHUNK)
            except SSL.WantReadError:
                return
            if not records:
                return
            self.raw.write(records)

    def _drop(self, *, abort: bool) -> None:
        if abort:
            self.raw.abort()
        elif not self.raw.is_closing():
            self.raw.close()

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self.app is None:
            self.raw.abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort_handshake(self) -> None:
        """Server stop: drop a connection that has not completed its handshake."""
        if self.app is None and self.raw is not None:
            self.raw.abort()


# ---------------------------------------------------------------------------------------
# Client side: a blocking socket over pyOpenSSL for http.client (KME to KME)


def openssl_client_context(cert: str | os.PathLike[str], key: str | os.PathLike[str],
                           ca: str | os.PathLike[str], groups: str = DEFAULT_TLS_GROUPS
                           ) -> Any:
    """A pyOpenSSL client context: our certificate, the server verified against the
    deployment's CA only, TLS 1.2 or later, key exchange from ``groups``. Host name and
    identity are checked per connection (:func:`connect_tls`)."""
    return _context(SSL.TLS_CLIENT_METHOD, 0, cert, key, ca, groups)


def _wait_ready(sock: socket.socket, readable: bool, timeout_s: float | None) -> bool:
    """Wait until ``sock`` is readable (or writable); False when ``timeout_s`` ran out.
    poll, not select: a KME holds many sockets, and select fails above descriptor 1023."""
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        ready = select.select([sock] if readable else [], [] if readable else [sock], [],
                              timeout_s)
        return any(ready)
    poller = select.poll()
    poller.register(sock, select.POLLIN if readable else select.POLLOUT)
    return bool(poller.poll(None if timeout_s is None else max(0, int(timeout_s * 1e3) + 1)))


class OpenSSLClientSocket:
    """The part of a socket's interface ``http.client`` uses (``sendall``,
    ``recv_into``, ``makefile``, ``close``), over a pyOpenSSL connection, honouring the
    socket's timeout (:class:`TimeoutError` when it runs out). TLS failures are raised
    as :class:`ssl.SSLError` (an ``OSError``), a peer's close as end of file."""

    def __init__(self, connection: Any, sock: socket.socket) -> None:
        self._connection = connection
        self._sock = sock
        self._io_refs = 0
        self._closed = False

    def _wait(self, operation: Callable[[], Any]) -> Any:
        timeout_s = self._sock.gettimeout()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                return operation()
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError("timed out") from None
                if not _wait_ready(self._sock, isinstance(want, SSL.WantReadError),
                                   remaining):
                    raise TimeoutError("timed out") from None
            except SSL.ZeroReturnError:
                return None
            except SSL.SysCallError as exc:
                if exc.args and exc.args[0] == -1:  # EOF without close_notify
                    return None
                raise ConnectionResetError(str(exc)) from None
            except SSL.Error as exc:
                raise ssl.SSLError(f"TLS: {exc}") from None

    def handshake(self) -> None:
        """Complete the TLS handshake (the socket's timeout applies)."""
        self._wait(self._connection.do_handshake)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            sent = self._wait(functools.partial(self._connection.send, view[:65536]))
            if sent is None:
                raise BrokenPipeError("the peer closed the TLS connection")
            view = view[sent:]

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        size = nbytes or len(buffer)
        data = self._wait(lambda: self._connection.recv(size))
        if not data:
            return 0
        buffer[:len(data)] = data
        return len(data)

    def makefile(self, mode: str = "rb", buffering: int | None = None, **_: Any) -> Any:
        if mode not in ("r", "rb"):
            raise ValueError(f"mode {mode!r}: only reading")
        self._io_refs += 1
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:  # called by socket.SocketIO.close
        self._io_refs -= 1
        if self._closed and self._io_refs <= 0:
            self._sock.close()

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def settimeout(self, timeout_s: float | None) -> None:
        self._sock.settimeout(timeout_s)

    def fileno(self) -> int:
        return self._sock.fileno()

    def peer_info(self) -> PeerInfo:
        """Version, cipher, group and certificate of the connection."""
        return PeerInfo(self._connection)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # No close_notify: it could block on a full socket, and the peer needs none
        # (every HTTP response here is length-delimited).
        if self._io_refs <= 0:
            self._sock.close()


def connect_tls(sock: socket.socket, context: Any, host: str,
                check_peer: Callable[[bytes], None] | None = None) -> OpenSSLClientSocket:
    """Run the client handshake on the connected ``sock``: SNI and host-name check for
    ``host``, then ``check_peer`` on the server's certificate (DER) before anything is
    sent. Raises :class:`ssl.SSLError` (or :class:`TimeoutError`) and closes ``sock``."""
    connection = SSL.Connection(context, sock)
    param = _lib.SSL_get0_param(connection._ssl)
    try:
        address = ipaddress.ip_address(host).packed
    except ValueError:  # a name: sent as SNI, checked against the DNS names
        connection.set_tlsext_host_name(host.encode("idna"))
        ok = _lib.X509_VERIFY_PARAM_set1_host(param, host.encode("idna"), 0)
    else:  # an address: checked against the IP addresses
        ok = _lib.X509_VERIFY_PARAM_set1_ip(param, address, len(address))
    if ok != 1:
        sock.close()
        raise ssl.SSLError(f"TLS: cannot check the host name {host!r}")
    connection.set_connect_state()
    tls = OpenSSLClientSocket(connection, sock)
    try:
        tls.handshake()
        if check_peer is not None:
            certificate = tls.peer_info().getpeercert(binary_form=True)
            if certificate is None:
                raise ssl.SSLCertVerificationError("the server presented no certificate")
            check_peer(certificate)
    except BaseException:
        tls.close()
        raise
    return tls
