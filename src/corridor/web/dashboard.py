"""The operator's live dashboard of a running corridor, served over mutual TLS.

This module owns the dashboard's HTTP application and its lifecycle:

- :func:`create_app`: a Starlette application. Every request must carry a verified
  client certificate of the deployment's CA (the listener of
  :func:`corridor.kms.tls.running_server` checks the chain and puts it in the ASGI TLS
  extension) whose Corridor identity has the ``operator`` role: no certificate gets 401,
  an SAE's or a KME's certificate 403. Pages and data are read-only; the one write is
  ``POST /api/alarms/{link_id}/clear`` with a ``reason``, which goes through the KMEs'
  :class:`~corridor.kms.operator.AlarmDesk` (in process, or over the KMEs' operator
  endpoints, the same path as ``corridor alarm clear``), so the KME's audit trail
  records the operator and the reason (``link_cleared``).
- :class:`Dashboard`: samples its data source once per ``interval_s`` (a corridor in this
  process, :class:`corridor.web.snapshot.LocalCorridor`, or KMEs elsewhere,
  :class:`corridor.web.remote.RemoteCorridor`), follows every KME's verified audit trail
  (the tail panel, each chain's state, the per SAE pair figures of
  :mod:`corridor.web.pairs`), reads the certificates' expiry (:mod:`corridor.web.certs`),
  keeps the history for the charts, streams each snapshot to every open page as
  server-sent events (``/api/events``), and runs the listener in a background thread.

Every script and style is served from ``corridor/web/static`` by this application: the
page works without internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from corridor.errors import CorridorError
from corridor.kms.pki import ROLE_OPERATOR, Identity, identity_from_pem
from corridor.web.certs import certificate_rows
from corridor.web.pairs import PairTracker
from corridor.web.snapshot import History

_log = logging.getLogger(__name__)

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
           "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8")}
_NO_STORE = {"Cache-Control": "no-store"}


def _static(name: str) -> bytes:
    return resources.files("corridor.web").joinpath("static", name).read_bytes()


def peer_identity(scope: dict[str, Any]) -> Identity | None:
    """The Corridor identity of the verified client certificate, or None without one."""
    chain = ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_chain")
    if not chain:
        return None
    try:
        return identity_from_pem(chain[0])
    except CorridorError:
        return None


class _OperatorOnly:
    """401 without a certificate, 403 for any role but ``operator``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        identity = peer_identity(scope)
        if identity is None or identity.role != ROLE_OPERATOR:
            status = 401 if identity is None else 403
            message = ("a client certificate of the deployment's CA is required"
                       if identity is None else
                       f"the dashboard is for operator certificates; this is a "
                       f"{identity.role} certificate ({identity.entity_id})")
            await JSONResponse({"message": message}, status_code=status)(scope, receive, send)
            return
        scope.setdefault("state", {})["operator"] = identity.entity_id
        await self.app(scope, receive, send)


#: Audit entries shown in the tail panel, newest first.
AUDIT_TAIL_SHOWN = 40
#: Most audit entries read from one KME per sample (the rest waits for the next one).
AUDIT_PAGES_PER_SAMPLE = 5
AUDIT_PAGE = 1000
#: How often the certificates are read again.
CERTIFICATE_REFRESH_S = 60.0


def describe_fields(fields: dict[str, Any]) -> str:
    """An audit entry's fields in one short line (lists of IDs counted, not listed)."""
    parts = []
    for name, value in fields.items():
        if name == "kme_id":
            continue
        if isinstance(value, list):
            text = (", ".join(str(v) for v in value) if len(value) <= 2
                    else f"{len(value)} items")
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        parts.append(f"{name}={text[:80]}")
    return " ".join(parts)


class Dashboard:
    """Samples a data source (:class:`~corridor.web.snapshot.LocalCorridor` or
    :class:`~corridor.web.remote.RemoteCorridor`) and serves the dashboard
    (:meth:`start`, :attr:`url`, :meth:`close`).

    Each sample adds to the source's snapshot: the audit trail of every KME (verified
    entries since the last sample, fed to the per-pair figures, the newest shown with
    each chain's state), the per SAE pair figures, and the certificates' expiry.
    """

    def __init__(self, source: Any, *, interval_s: float = 1.0,
                 history_size: int = 600) -> None:
        self.source = source
        self.interval_s = interval_s
        self.history = History(history_size)
        self.pairs = PairTracker()
        self.latest: dict[str, Any] | None = None
        self.url: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: contextlib.ExitStack | None = None
        self._sample_lock = threading.Lock()
        self._audit_seen: dict[str, int] = {}
        self._audit_chain: dict[str, dict[str, Any]] = {}
        self._audit_tail: deque[dict[str, Any]] = deque(maxlen=AUDIT_TAIL_SHOWN)
        self._certificates: list[dict[str, Any]] = []
        self._certificates_at = -math.inf

    def _follow_audit(self) -> dict[str, Any]:
        for feed in self.source.audit_feeds():
            try:
                for _ in range(AUDIT_PAGES_PER_SAMPLE):
                    chain, entries = feed.fetch(self._audit_seen.get(feed.kme_id, 0), AUDIT_PAGE)
                    self._audit_chain[feed.kme_id] = {"kme_id": feed.kme_id, **chain}
                    for entry in entries:
                        self.pairs.observe(entry)
                        self._audit_tail.append({
                            "kme_id": feed.kme_id, "seq": entry.get("seq"),
                            "time": entry.get("time"), "event": entry.get("event"),
                            "summary": describe_fields(entry.get("fields") or {})})
                    if entries:
                        self._audit_seen[feed.kme_id] = int(entries[-1]["seq"])
                    if len(entries) < AUDIT_PAGE:
                        break
            except Exception as exc:  # one KME away must not blank the others
                self._audit_chain[feed.kme_id] = {
                    "kme_id": feed.kme_id, "ok": None, "verified_seq": None,
                    "broken_at_seq": None, "reason": f"not read: {exc}"}
        tail = sorted(self._audit_tail, key=lambda e: str(e["time"]), reverse=True)
        return {"chains": [self._audit_chain[k] for k in sorted(self._audit_chain)],
                "tail": tail}

    def _certificate_rows(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        if now - self._certificates_at >= CERTIFICATE_REFRESH_S:
            self._certificates = certificate_rows(self.source.certificates())
            self._certificates_at = now
        return self._certificates

    def sample(self) -> dict[str, Any]:
        """Take one snapshot and add it to the history."""
        with self._sample_lock:
            snap = self.source.snapshot()
            snap["audit"] = self._follow_audit()
            snap["pairs"] = self.pairs.rows()
            snap["certificates"] = self._certificate_rows()
            self.history.add(snap)
            self.latest = snap
            return snap

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception:  # a part stopping must not end sampling
                _log.warning("dashboard sample failed", exc_info=True)

    def clear(self, link_id: str, operator: str, reason: Any) -> dict[str, Any]:
        """Clear ``link_id``'s alarms through the source (audited at the KMEs)."""
        result: dict[str, Any] = self.source.clear(link_id, operator, reason)
        self.sample()
        return result

    def start(self, cert: Path, key: Path, ca: Path, *, host: str = "127.0.0.1",
              port: int = 0) -> str:
        """Sample once, start sampling and the HTTPS listener; returns the URL."""
        from corridor.kms.limits import RefusalReporter
        from corridor.kms.tls import running_server

        self.sample()
        self._thread = threading.Thread(target=self._run, name="dashboard-sampler",
                                        daemon=True)
        self._thread.start()
        stack = contextlib.ExitStack()
        reporter = RefusalReporter("dashboard", label="the dashboard")  # not "KME kme"
        server = stack.enter_context(running_server(create_app(self), cert, key, ca,
                                                    host=host, port=port, reporter=reporter))
        self._server = stack
        shown = f"[{server.host}]" if ":" in server.host else server.host
        self.url = f"https://{shown}:{server.port}/"
        return self.url

    @property
    def stopping(self) -> bool:
        """True once :meth:`close` began (open event streams end)."""
        return self._stop.is_set()

    def close(self) -> None:
        """End the event streams, stop the listener and the sampler."""
        self._stop.set()
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)


def create_app(dashboard: Dashboard) -> Any:
    """The dashboard's ASGI application (operator certificates only)."""

    async def page(request: Request) -> Response:
        name, media = _STATIC[request.url.path]
        return Response(_static(name), media_type=media, headers=_NO_STORE)

    async def snap(request: Request) -> Response:
        return JSONResponse(dashboard.latest or dashboard.sample(), headers=_NO_STORE)

    async def history(request: Request) -> Response:
        return JSONResponse(dashboard.history.series(), headers=_NO_STORE)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            sent = None
            while not dashboard.stopping and not await request.is_disconnected():
                latest = dashboard.latest
                if latest is not None and latest is not sent:
                    sent = latest
                    yield f"data: {json.dumps(latest, separators=(',', ':'))}\n\n".encode()
                await asyncio.sleep(min(dashboard.interval_s, 0.25))
        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={**_NO_STORE, "X-Accel-Buffering": "no"})

    async def clear(request: Request) -> Response:
        link_id = request.path_params["link_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        reason = body.get("reason") if isinstance(body, dict) else None
        operator = request.scope["state"]["operator"]
        try:
            result = await run_in_threadpool(dashboard.clear, link_id, operator, reason)
        except KeyError:
            return JSONResponse({"message": f"link_id {link_id!r}: no such link"},
                                status_code=404)
        except CorridorError as exc:
            return JSONResponse({"message": str(exc)}, status_code=400)
        return JSONResponse(result, headers=_NO_STORE)

    routes = [Route(path, page) for path in _STATIC]
    routes += [Route("/api/snapshot", snap), Route("/api/history", history),
               Route("/api/events", events),
               Route("/api/alarms/{link_id}/clear", clear, methods=["POST"])]
    app = Starlette(routes=routes)
    return _OperatorOnly(app)


__all__ = ["Dashboard", "create_app", "describe_fields", "peer_identity"]
