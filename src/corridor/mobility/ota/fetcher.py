"""The vehicle's downloader: HTTPS to the pinned CA, a time limit and a progress callback.

This module owns :class:`BoundedFetcher`, the ``tuf.ngclient`` fetcher of every download a
vehicle makes (metadata and images). It adds what Uptane asks of a download beyond TUF's
size limits (which ``ngclient`` enforces itself, from the role's declared length or
its ``*_max_length`` setting: an endless server is cut off at that size):

- a **time limit per download** (``time_limit_s``, whole file): a server that trickles
  bytes is cut off with :class:`tuf.api.exceptions.SlowRetrievalError` however regularly
  it sends (a per-read timeout alone never fires on such a server);
- TLS verified against the OTA server's CA only (``ca_file``);
- ``on_progress(url, received_bytes, total_bytes or None)`` after each chunk (the CLI's
  progress bar), and the bytes received, counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

CHUNK_BYTES = 65_536
Progress = Callable[[str, int, int | None], None]


class BoundedFetcher(FetcherInterface):
    """HTTPS downloads with a whole-file time limit (module docstring)."""

    def __init__(self, ca_file: Path | None, *, time_limit_s: float = 30.0,
                 connect_timeout_s: float = 5.0, on_progress: Progress | None = None) -> None:
        self.time_limit_s = time_limit_s
        self.on_progress = on_progress
        self.received_bytes = 0
        self._pool = urllib3.PoolManager(
            cert_reqs="CERT_REQUIRED" if ca_file else "CERT_NONE",
            ca_certs=str(ca_file) if ca_file else None,
            timeout=urllib3.Timeout(connect=connect_timeout_s, read=time_limit_s),
            retries=False)

    def __repr__(self) -> str:
        return f"BoundedFetcher(time_limit_s={self.time_limit_s:g})"

    def _fetch(self, url: str) -> Iterator[bytes]:
        deadline = time.monotonic() + self.time_limit_s
        try:
            response = self._pool.request("GET", url, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: {type(exc).__name__}") from None
        if response.status >= 400:
            response.drain_conn()
            response.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}",
                                               response.status)
        return self._chunks(url, response, deadline)

    def _chunks(self, url: str, response: urllib3.BaseHTTPResponse, deadline: float
                ) -> Iterator[bytes]:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        received = 0
        complete = False
        try:
            while True:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    raise exceptions.SlowRetrievalError(
                        f"{url}: not complete after {self.time_limit_s:g} s "
                        f"({received} bytes received)")
                try:
                    # read1: whatever one receive brings, so the deadline is checked
                    # between the trickled bytes (read(n) would wait for all n).
                    chunk = response.read1(CHUNK_BYTES)
                except urllib3.exceptions.ReadTimeoutError:
                    raise exceptions.SlowRetrievalError(
                        f"{url}: nothing received for {self.time_limit_s:g} s") from None
                except urllib3.exceptions.HTTPError as exc:
                    raise exceptions.DownloadError(f"{url}: {type(exc).__name__}") from None
                if not chunk:
                    complete = True
                    return
                received += len(chunk)
                self.received_bytes += len(chunk)
                if self.on_progress is not None:
                    self.on_progress(url, received, total)
                yield chunk
        finally:
            if not complete:  # the rest is not wanted: the connection is not reused
                response.close()
            response.release_conn()

    def close(self) -> None:
        self._pool.clear()


__all__ = ["BoundedFetcher", "Progress"]
