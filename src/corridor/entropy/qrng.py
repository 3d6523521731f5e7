"""Readers of raw QRNG bytes: an HTTPS entropy endpoint or a device/file path.

A reader returns exactly the number of bytes asked for, or raises
:class:`QrngUnavailable` with a short machine-readable ``reason``; it never pads,
repeats or invents bytes. What it returns is raw: the caller health-tests and mixes it.

HTTPS endpoint (``GET``; the requested size goes in the query string, ``length=<n>``
unless the URL holds a ``{length}`` placeholder). Accepted answers, by content type:

* ``application/octet-stream``: the raw bytes;
* ``application/json`` in the ANU QRNG shape,
  ``{"success": true, "type": "uint8"|"hex8"|"hex16", "data": [...]}``: integers 0-255
  for ``uint8``, hexadecimal strings for ``hex8``/``hex16``;
* ``application/json`` in the Qrypt shape, ``{"random": ["<base64>", ...]}``: the
  base64 strings decoded and concatenated.

Mutual TLS: ``ca`` (the CA bundle that signs the endpoint), ``cert``/``key`` (this
client's certificate). Headers such as ``Authorization`` are sent as given and never
shown. Device path: a character device (``/dev/qrandom0``), a FIFO or a file, read
sequentially; end of file is a short read.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import stat
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import httpx

from corridor.errors import CorridorError, ParameterError

MAX_REQUEST_BYTES = 1 << 20


class QrngUnavailable(CorridorError):
    """The QRNG gave no usable bytes. ``reason`` is a short code, ``detail`` public text."""

    def __init__(self, source: str, reason: str, detail: str = "") -> None:
        self.source = source
        self.reason = reason
        self.detail = detail
        text = f"QRNG {source} unavailable: {reason}"
        super().__init__(f"{text} ({detail})" if detail else text)


class QrngReader(Protocol):
    """Anything that reads raw QRNG bytes."""

    @property
    def label(self) -> str:
        """Where the bytes come from, without secrets (URL without query, or path)."""
        ...

    def read(self, size_bytes: int) -> bytes:
        """Exactly ``size_bytes`` raw bytes, or :class:`QrngUnavailable`."""
        ...

    def close(self) -> None:
        """Release the connection or file."""
        ...


def public_label(url: str) -> str:
    """The URL without query string, fragment or user info: safe to log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def decode_body(content_type: str, body: bytes, source: str) -> bytes:
    """The raw bytes in an endpoint's answer, for the formats of the module docstring."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == "application/octet-stream":
        return body
    if kind != "application/json":
        raise QrngUnavailable(source, "bad_format", f"content type {kind or 'missing'!r}")
    try:
        document = json.loads(body)
    except ValueError:
        raise QrngUnavailable(source, "bad_format", "body is not JSON") from None
    if not isinstance(document, dict):
        raise QrngUnavailable(source, "bad_format", "JSON body is not an object")
    try:
        if "random" in document:
            return b"".join(base64.b64decode(item, validate=True)
                            for item in _list(document["random"]))
        if "data" in document:
            return _anu_data(document)
    except (binascii.Error, TypeError, ValueError):
        raise QrngUnavailable(source, "bad_format", "undecodable values in JSON") from None
    raise QrngUnavailable(source, "bad_format", "JSON without 'data' or 'random'")


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("not a list")
    return value


def _anu_data(document: Mapping[str, Any]) -> bytes:
    if document.get("success") is False:
        raise ValueError("success is false")
    kind = document.get("type", "uint8")
    items = _list(document["data"])
    if kind == "uint8":
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
                   for v in items):
            raise ValueError("uint8 out of range")
        return bytes(items)
    if kind in ("hex8", "hex16"):
        if not all(isinstance(v, str) for v in items):
            raise TypeError("hex item not a string")
        return b"".join(bytes.fromhex(v) for v in items)
    raise ValueError("unsupported type")


def _check_size(size_bytes: int) -> int:
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int) \
            or not 1 <= size_bytes <= MAX_REQUEST_BYTES:
        raise ParameterError("size_bytes", size_bytes, f"an integer in 1..{MAX_REQUEST_BYTES}")
    return size_bytes


class HttpsQrngReader:
    """Raw bytes from an HTTPS entropy endpoint (see the module docstring).

    Args:
        url: the endpoint; ``https://`` (``http://`` only with ``allow_plain_http``,
            for tests: entropy sent in clear can be read by anyone on the path).
        ca: CA bundle to verify the endpoint (default: the system's trust store).
        cert, key: client certificate and key for mutual TLS.
        headers: extra request headers (an API token); never shown.
        timeout_s: connect and read timeout.
    """

    def __init__(self, url: str, *, ca: str | os.PathLike[str] | None = None,
                 cert: str | os.PathLike[str] | None = None,
                 key: str | os.PathLike[str] | None = None,
                 headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                 allow_plain_http: bool = False) -> None:
        scheme = urlsplit(url).scheme
        if scheme != "https" and not (scheme == "http" and allow_plain_http):
            raise ParameterError("source", public_label(url), "an https:// URL or a path")
        if (cert is None) != (key is None):
            raise ParameterError("cert/key", "one of them", "both or neither")
        if timeout_s <= 0:
            raise ParameterError("timeout_s", timeout_s, "a positive number of seconds")
        self._url = url
        self._label = public_label(url)
        verify: ssl.SSLContext | bool = True
        if scheme == "https":
            try:
                context = ssl.create_default_context(cafile=os.fspath(ca) if ca else None)
                if cert is not None and key is not None:
                    context.load_cert_chain(os.fspath(cert), os.fspath(key))
            except (OSError, ssl.SSLError) as exc:
                raise ParameterError("ca/cert/key", "the files given",
                                     "readable PEM files that match",
                                     type(exc).__name__) from None
            verify = context
        self._client = httpx.Client(verify=verify, timeout=timeout_s,
                                    headers=dict(headers or {}), follow_redirects=False)

    @property
    def label(self) -> str:
        return self._label

    def read(self, size_bytes: int) -> bytes:
        size_bytes = _check_size(size_bytes)
        if "{length}" in self._url:
            url, params = self._url.replace("{length}", str(size_bytes)), None
        else:
            url, params = self._url, {"length": str(size_bytes)}
        try:
            response = self._client.get(url, params=params)
        except httpx.ConnectError as exc:
            reason = "tls" if isinstance(exc.__cause__, ssl.SSLError) or "SSL" in str(exc) \
                else "connection_refused"
            raise QrngUnavailable(self._label, reason, type(exc).__name__) from None
        except httpx.TimeoutException as exc:
            raise QrngUnavailable(self._label, "timeout", type(exc).__name__) from None
        except httpx.HTTPError as exc:
            raise QrngUnavailable(self._label, "transport", type(exc).__name__) from None
        if response.status_code != 200:
            raise QrngUnavailable(self._label, "http_status", str(response.status_code))
        data = decode_body(response.headers.get("content-type", ""), response.content,
                           self._label)
        if len(data) < size_bytes:
            raise QrngUnavailable(self._label, "short_read",
                                  f"{len(data)} of {size_bytes} bytes")
        # Extra bytes are dropped, never kept for later: each answer is used once.
        return data[:size_bytes]

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"HttpsQrngReader({self._label})"


class DeviceQrngReader:
    """Raw bytes read in sequence from a character device, a FIFO or a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._label = str(self._path)
        try:
            mode = self._path.stat().st_mode
        except OSError:
            raise ParameterError("source", self._label,
                                 "an https:// URL or an existing device, FIFO or file") from None
        if stat.S_ISDIR(mode):
            raise ParameterError("source", self._label, "a device, FIFO or file, not a directory")
        self._file: Any = None
        self._lock = threading.Lock()

    @property
    def label(self) -> str:
        return self._label

    def read(self, size_bytes: int) -> bytes:
        size_bytes = _check_size(size_bytes)
        with self._lock:
            try:
                if self._file is None:
                    # Opened on first use: opening a FIFO blocks until a writer appears.
                    self._file = open(self._path, "rb", buffering=0)  # noqa: SIM115
                chunks: list[bytes] = []
                remaining = size_bytes
                while remaining:
                    chunk = self._file.read(remaining)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    remaining -= len(chunk)
            except OSError as exc:
                raise QrngUnavailable(self._label, "read_error", type(exc).__name__) from None
        data = b"".join(chunks)
        if len(data) < size_bytes:
            raise QrngUnavailable(self._label, "short_read", f"{len(data)} of {size_bytes} bytes")
        return data

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __repr__(self) -> str:
        return f"DeviceQrngReader({self._label})"


def open_reader(source: str, *, ca: str | os.PathLike[str] | None = None,
                cert: str | os.PathLike[str] | None = None,
                key: str | os.PathLike[str] | None = None,
                headers: Mapping[str, str] | None = None, timeout_s: float = 10.0,
                allow_plain_http: bool = False) -> QrngReader:
    """An HTTPS reader for an ``https://`` (or ``http://``) URL, else a device reader."""
    if source.startswith(("https://", "http://")):
        return HttpsQrngReader(source, ca=ca, cert=cert, key=key, headers=headers,
                               timeout_s=timeout_s, allow_plain_http=allow_plain_http)
    if ca is not None or cert is not None or key is not None:
        raise ParameterError("ca/cert/key", "given", "only with an https:// source")
    return DeviceQrngReader(source)
