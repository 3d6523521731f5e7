"""The hot ETSI GS QKD 014 calls as plain ASGI, and the batching of enc_keys.

:class:`HotPathMiddleware` sits inside the certificate, body-limit and metrics
middlewares of :func:`corridor.kms.api.create_app` and answers the calls that carry the
load (``status``, ``enc_keys`` and ``dec_keys``, GET and POST) without FastAPI's routing,
pydantic validation and per-request thread hand-off. It takes a request only when it is
plainly well formed (a bounded positive integer query value, a JSON object whose fields
have exactly the types the pydantic models of :mod:`corridor.kms.api` accept, no other
content type than ``application/json``) and hands everything else to the FastAPI
application behind it, so every malformed request gets FastAPI's answer unchanged; the
well-formed ones get the same status code, body and headers as the FastAPI routes give
(tests/kms/test_api_hot.py compares both on a set of valid and invalid requests). The
OpenAPI document still comes from the FastAPI route declarations.

:class:`EncKeysBatcher` coalesces concurrent enc_keys requests on the event loop: while
``max_in_flight`` batches run in worker threads, new requests queue, and the next batch
takes every queued one (up to ``max_keys`` keys) into one
:meth:`~corridor.kms.manager.KeyManager.enc_keys_batch` call: one thread hop, one audit
intent, one store transaction, one announcement to the peer KME per batch instead of per
request. At low load a request starts a batch of its own at once (no timer).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import json
import re
import urllib.parse
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from corridor.errors import ParameterError
from corridor.kms.interface import (
    DeliveredKey,
    KeyRequestError,
    KeysUnavailableError,
    UnauthorizedError,
)
from corridor.kms.pki import ROLE_SAE, Identity

API_PREFIX = "/api/v1/keys"

#: On every answer of a call that delivers keys: no cache, proxy or browser may keep it.
NO_STORE_HEADERS = {"Cache-Control": "no-store", "Pragma": "no-cache"}

# Query values the fast path reads itself: what pydantic reads as the same positive int
# without doubt (no sign, blanks, underscores or leading zeros); anything else goes to
# FastAPI.
_PLAIN_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,17}")


def json_response(status_code: int, body: Any,
                  headers: Mapping[str, str] | None = None) -> Response:
    """A compact JSON answer."""
    return Response(json.dumps(body, separators=(",", ":")), status_code=status_code,
                    media_type="application/json", headers=headers)


def error_response(status_code: int, message: str,
                   details: Sequence[Mapping[str, Any]] = ()) -> Response:
    """An ETSI GS QKD 014 Error body."""
    return json_response(status_code, {"message": message,
                                       "details": [dict(d) for d in details]})


def unauthorized_response() -> Response:
    """401 with no body (ETSI GS QKD 014)."""
    return Response(status_code=401)


def keys_body(keys: Sequence[DeliveredKey]) -> dict[str, Any]:
    """The KeyContainer of delivered keys."""
    return {"keys": [{"key_ID": k.key_id, "key": base64.b64encode(k.key).decode("ascii")}
                     for k in keys]}


# What a key ID may hold for keys_json to write it without JSON escaping (canonical UUIDs).
_UNESCAPED_IDS = re.compile(r"[0-9A-Za-z-]*")


def keys_json(keys: Sequence[DeliveredKey]) -> str | None:
    """The text ``json.dumps(keys_body(keys), separators=(",", ":"))`` gives, written
    directly (for a large delivery the dicts cost more than the keys), or None when a
    key ID would need escaping (then the caller encodes ``keys_body``)."""
    ids = [k.key_id for k in keys]
    if set(map(type, ids)) - {str} or not _UNESCAPED_IDS.fullmatch("".join(ids)):
        return None
    b64 = binascii.b2a_base64
    return '{"keys":[' + ",".join([
        f'{{"key_ID":"{k.key_id}","key":"{b64(k.key, newline=False).decode("ascii")}"}}'
        for k in keys]) + "]}"


def service_answer(result: Any, render: Callable[[Any], Any], *,
                   carries_keys: bool = False) -> Response:
    """The answer to a service call's result, or to the error it raised (passed as the
    result): 401, 400 or 503 as the interface says; keys are marked ``no-store``."""
    if isinstance(result, UnauthorizedError):
        return unauthorized_response()
    if isinstance(result, KeyRequestError):
        return error_response(400, result.message, result.details)
    if isinstance(result, ParameterError):
        return error_response(400, str(result), [{"field": result.field}])
    if isinstance(result, KeysUnavailableError):
        return error_response(503, result.message, result.details)
    if isinstance(result, BaseException):
        raise result
    if render is keys_body:
        text = keys_json(result)
        if text is not None:
            return Response(text, status_code=200, media_type="application/json",
                            headers=NO_STORE_HEADERS)
    return json_response(200, render(result), NO_STORE_HEADERS if carries_keys else None)


def call_service(call: Callable[[], Any]) -> Any:
    """``call()``, or the interface error it raised (returned, for :func:`service_answer`)."""
    try:
        return call()
    except (UnauthorizedError, KeyRequestError, ParameterError, KeysUnavailableError) as exc:
        return exc


def status_body(status: Any) -> dict[str, Any]:
    """The Status object as the interface sends it (no ``status_extension`` when unset)."""
    return {k: v for k, v in dataclasses.asdict(status).items()
            if not (k == "status_extension" and v is None)}


# ---------------------------------------------------------------------------------------
# Batching enc_keys on the event loop


@dataclass
class EncKeysRequest:
    """One enc_keys call's arguments (KeyManager.enc_keys' keyword names)."""

    master_sae_id: str
    slave_sae_id: str
    number: int | None = None
    size_bits: int | None = None
    additional_slave_sae_ids: list[str] | None = None
    extension_mandatory: list[dict[str, Any]] | None = None
    extension_optional: list[dict[str, Any]] | None = None


@dataclass
class _LoopState:
    queue: list[tuple[EncKeysRequest, asyncio.Future[Any]]] = field(default_factory=list)
    running: int = 0


class EncKeysBatcher:
    """Coalesces concurrent enc_keys calls into batches (module docstring).

    ``service.enc_keys_batch(orders)`` is used when the service has it (a
    :class:`~corridor.kms.manager.KeyManager`), else the batch calls ``enc_keys`` once
    per request in the same worker thread. Each request's result is its keys or the
    interface error it would have raised on its own.
    """

    def __init__(self, service: Any, *, max_in_flight: int = 2, max_keys: int = 2048) -> None:
        if max_in_flight < 1 or max_keys < 1:
            raise ParameterError("max_in_flight/max_keys", (max_in_flight, max_keys),
                                 "integers >= 1")
        self.service = service
        self.max_in_flight = max_in_flight
        self.max_keys = max_keys
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = \
            weakref.WeakKeyDictionary()
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.requests = 0

    async def submit(self, request: EncKeysRequest) -> Any:
        """The keys for ``request``, or the interface error for it (returned)."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            state = self._states[loop] = _LoopState()
        future: asyncio.Future[Any] = loop.create_future()
        state.queue.append((request, future))
        if state.running < self.max_in_flight:
            state.running += 1
            task = loop.create_task(self._drain(state))
            # Keep a reference until it ends (the loop holds tasks only weakly).
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, state: _LoopState) -> None:
        try:
            while state.queue:
                batch = [state.queue.pop(0)]
                keys = _wanted(batch[0][0])
                while state.queue and keys + _wanted(state.queue[0][0]) <= self.max_keys:
                    keys += _wanted(state.queue[0][0])
                    batch.append(state.queue.pop(0))
                orders = [request for request, _ in batch]
                try:
                    results = await run_in_threadpool(self._serve, orders)
                except BaseException as exc:  # a bug: every caller of the batch sees it
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self.batches += 1
                self.requests += len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            state.running -= 1

    def _serve(self, orders: list[EncKeysRequest]) -> list[Any]:
        batch = getattr(self.service, "enc_keys_batch", None)
        if batch is not None:
            from corridor.kms.manager import KeyOrder

            return list(batch([KeyOrder(o.master_sae_id, o.slave_sae_id, number=o.number,
                                        size_bits=o.size_bits,
                                        additional_slave_sae_ids=o.additional_slave_sae_ids,
                                        extension_mandatory=o.extension_mandatory,
                                        extension_optional=o.extension_optional)
                               for o in orders]))
        return [call_service(functools.partial(
            self.service.enc_keys, o.master_sae_id, o.slave_sae_id, number=o.number,
            size_bits=o.size_bits, additional_slave_sae_ids=o.additional_slave_sae_ids,
            extension_mandatory=o.extension_mandatory,
            extension_optional=o.extension_optional)) for o in orders]


def _wanted(request: EncKeysRequest) -> int:
    number = request.number
    return number if isinstance(number, int) and number > 0 else 1


# ---------------------------------------------------------------------------------------
# Recognising plainly well-formed requests (anything else: None, FastAPI answers)


def _query(scope: Mapping[str, Any]) -> dict[str, str] | None:
    raw = scope.get("query_string", b"")
    if not raw:
        return {}
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    # Starlette's QueryParams: the last value of a repeated name counts.
    return dict(urllib.parse.parse_qsl(text, keep_blank_values=True))


def _plain_int(value: str | None) -> int | None:
    """The int of a plain query value, None when absent, -1 when not plain."""
    if value is None:
        return None
    if not _PLAIN_POSITIVE_INT.fullmatch(value):
        return -1
    return int(value)


def _is_positive_int(value: Any) -> bool:
    return type(value) is int and value >= 1


def _is_object_list(value: Any) -> bool:
    return type(value) is list and all(type(item) is dict for item in value)


def enc_keys_from_query(query: Mapping[str, str]) -> tuple[int | None, int | None] | None:
    """(number, size) of a plain GET enc_keys query, else None."""
    number, size = _plain_int(query.get("number")), _plain_int(query.get("size"))
    if number == -1 or size == -1:
        return None
    return number, size


def enc_keys_from_body(body: Any) -> dict[str, Any] | None:
    """The fields of a plainly valid KeyRequest body (a JSON object), else None."""
    if type(body) is not dict:
        return None
    number, size = body.get("number"), body.get("size")
    additional = body.get("additional_slave_SAE_IDs")
    mandatory, optional = body.get("extension_mandatory"), body.get("extension_optional")
    if ((number is not None and not _is_positive_int(number))
            or (size is not None and not _is_positive_int(size))
            or (additional is not None and not (type(additional) is list and all(
                type(item) is str for item in additional)))
            or (mandatory is not None and not _is_object_list(mandatory))
            or (optional is not None and not _is_object_list(optional))):
        return None
    return {"number": number, "size_bits": size, "additional_slave_sae_ids": additional,
            "extension_mandatory": mandatory, "extension_optional": optional}


def key_ids_from_body(body: Any) -> list[str] | None:
    """The key IDs of a plainly valid KeyIDs body, else None."""
    if type(body) is not dict:
        return None
    items, extension = body.get("key_IDs"), body.get("key_IDs_extension")
    if type(items) is not list or not items or (extension is not None
                                                and type(extension) is not dict):
        return None
    key_ids = []
    for item in items:
        if type(item) is not dict or type(item.get("key_ID")) is not str:
            return None
        item_extension = item.get("key_ID_extension")
        if item_extension is not None and type(item_extension) is not dict:
            return None
        key_ids.append(item["key_ID"])
    return key_ids


def _json_content_type(scope: Mapping[str, Any]) -> bool:
    """True when the request names exactly ``application/json`` as its content type
    (FastAPI reads a body without one as bytes, which the models refuse)."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.lower() == b"application/json")
    return False


async def _read_body(receive: Callable[[], Any]) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            # The client left: nothing to answer (as Starlette, which raises).
            raise _ClientDisconnected
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class _ClientDisconnected(Exception):
    pass


def _replay(body: bytes) -> Callable[[], Any]:
    """A ``receive`` that hands ``body`` to the application behind, once."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


# ---------------------------------------------------------------------------------------
# The middleware


class HotPathMiddleware:
    """Answers plainly well-formed status, enc_keys and dec_keys calls itself (module
    docstring); hands every other request to ``app`` (the FastAPI application)."""

    def __init__(self, app: Any, service: Any,
                 identity: Callable[[Mapping[str, Any]], Identity | None],
                 batcher: EncKeysBatcher | None = None) -> None:
        self.app = app
        self.service = service
        self.identity = identity
        self.batcher = batcher if batcher is not None else EncKeysBatcher(service)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        method = scope.get("method")
        if (not path.startswith(API_PREFIX + "/") or method not in ("GET", "POST")
                or scope.get("root_path")):
            await self.app(scope, receive, send)
            return
        rest = path[len(API_PREFIX) + 1:]
        call, _, sae_id = "", "", ""
        for name in ("status", "enc_keys", "dec_keys"):
            suffix = "/" + name
            if rest.endswith(suffix) and len(rest) >= len(suffix):
                call, sae_id = name, rest[:-len(suffix)]
                break
        if not call or (call == "status" and method != "GET"):
            await self.app(scope, receive, send)
            return
        body = b""
        if method == "POST":
            try:
                body = await _read_body(receive)
            except _ClientDisconnected:
                return
            receive = _replay(body)
        response = await self._answer(scope, call, method, sae_id, body)
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)

    def _caller(self, scope: Mapping[str, Any]) -> Identity | None:
        who = self.identity(scope)
        return who if who is not None and who.role == ROLE_SAE else None

    async def _answer(self, scope: Mapping[str, Any], call: str, method: str, sae_id: str,
                      body: bytes) -> Response | None:
        if method == "GET":
            query = _query(scope)
            if query is None:
                return None
            parsed: Any = query
        else:
            if not body:
                parsed = None  # FastAPI: no body, whatever the content type
            elif not _json_content_type(scope):
                return None
            else:
                try:
                    parsed = json.loads(body)
                except (ValueError, RecursionError):  # FastAPI gives its own answer
                    return None
        if call == "status":
            who = self._caller(scope)
            if who is None:
                return unauthorized_response()
            master = who.entity_id
            result = await run_in_threadpool(
                call_service, lambda: self.service.status(master, sae_id))
            return service_answer(result, status_body)
        if call == "enc_keys":
            if method == "GET":
                numbers = enc_keys_from_query(parsed)
                if numbers is None:
                    return None
                fields: dict[str, Any] | None = {"number": numbers[0], "size_bits": numbers[1]}
            else:
                fields = enc_keys_from_body({} if parsed is None else parsed)
                if fields is None:
                    return None
            who = self._caller(scope)
            if who is None:
                return unauthorized_response()
            assert fields is not None
            result = await self.batcher.submit(EncKeysRequest(who.entity_id, sae_id, **fields))
            return service_answer(result, keys_body, carries_keys=True)
        # dec_keys
        if method == "GET":
            key_id = parsed.get("key_ID")
            if key_id is None:
                return None
            key_ids: list[str] | None = [key_id]
        else:
            key_ids = key_ids_from_body(parsed)
            if key_ids is None:
                return None
        who = self._caller(scope)
        if who is None:
            return unauthorized_response()
        slave = who.entity_id
        wanted = key_ids
        result = await run_in_threadpool(
            call_service, lambda: self.service.dec_keys(slave, sae_id, wanted))
        return service_answer(result, keys_body, carries_keys=True)
