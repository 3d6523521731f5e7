"""The operator's live dashboard of a running corridor, served over mutual TLS.

This module owns the dashboard's HTTP application and its lifecycle:

- :func:`create_app`: a Starlette application. Every request must carry a verified
  client certificate of the deployment's CA (the listener of
  :func:`corridor.kms.tls.running_server` checks the chain and puts it in the ASGI TLS
  extension) whose Corridor identity has the ``operator`` role: no certificate gets 401,
  an SAE's or a KME's certificate 403. Pages and data are read-only; the one write is
  ``POST /api/alarms/{link_id}/clear`` with a ``reason``, which goes through the KMEs'
  :class:`~corridor.kms.operator.AlarmDesk` (the same path as ``corridor alarm clear``),
  so the KME's audit trail records the operator's identity and reason (``link_cleared``).
- :class:`Dashboard`: samples the corridor once per ``interval_s`` (:mod:`corridor.web.
  snapshot`), keeps the history for the charts, streams each snapshot to every open page
  as server-sent events (``/api/events``), and runs the listener in a background thread.

Every script and style is served from ``corridor/web/static`` by this application: the
page works without internet.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
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
from corridor.web.snapshot import History, snapshot

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


class Dashboard:
    """Samples a corridor and serves the dashboard (:meth:`start`, :attr:`url`,
    :meth:`close`)."""

    def __init__(self, corridor: Any, *, hybrid: Any = None, mobility: Any = None,
                 inventory: dict[str, Any] | None = None, interval_s: float = 1.0,
                 history_size: int = 600) -> None:
        self.corridor, self.hybrid, self.mobility = corridor, hybrid, mobility
        self.inventory = inventory
        self.interval_s = interval_s
        self.history = History(history_size)
        self.latest: dict[str, Any] | None = None
        self.url: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._server: contextlib.ExitStack | None = None

    def sample(self) -> dict[str, Any]:
        """Take one snapshot and add it to the history."""
        snap = snapshot(self.corridor, hybrid=self.hybrid, mobility=self.mobility,
                        inventory=self.inventory)
        self.history.add(snap)
        self.latest = snap
        return snap

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):  # a part stopping must not end sampling
                self.sample()

    def clear(self, link_id: str, operator: str, reason: Any) -> dict[str, Any]:
        """Clear ``link_id``'s alarms at every KME that judges it (audited there)."""
        results = []
        for node in self.corridor.nodes.values():
            desk = node.alarm_desk
            if link_id in desk.link_ids:
                results.append(desk.clear(link_id, operator, reason))
        if not results:
            raise KeyError(link_id)
        self.sample()
        return {"link_id": link_id, "operator": operator, "results": results}

    def start(self, cert: Path, key: Path, ca: Path, *, host: str = "127.0.0.1",
              port: int = 0) -> str:
        """Sample once, start sampling and the HTTPS listener; returns the URL."""
        from corridor.kms.tls import running_server

        self.sample()
        self._thread = threading.Thread(target=self._run, name="dashboard-sampler",
                                        daemon=True)
        self._thread.start()
        stack = contextlib.ExitStack()
        server = stack.enter_context(running_server(create_app(self), cert, key, ca,
                                                    host=host, port=port))
        self._server = stack
        self.url = f"https://{server.host}:{server.port}/"
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


__all__ = ["Dashboard", "create_app", "peer_identity"]
