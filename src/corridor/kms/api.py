"""The ETSI GS QKD 014 REST interface of one KME, and the KME-to-KME reservation call.

:func:`create_app` builds the FastAPI application that serves a
:class:`~corridor.kms.interface.KeyDeliveryService` (ETSI014.md):

- ``GET /api/v1/keys/{slave_SAE_ID}/status``
- ``GET|POST /api/v1/keys/{slave_SAE_ID}/enc_keys`` (GET with ``?number=&size=``)
- ``GET|POST /api/v1/keys/{master_SAE_ID}/dec_keys`` (GET with one ``?key_ID=``)
- ``POST /kme/v1/reservations``: the peer KME announces reservations (KME certs only)
- operator certificates only: ``GET /metrics`` (Prometheus text, when a metrics object
  is given), ``GET /openapi.json``, and, when an :class:`~corridor.kms.operator.AlarmDesk`
  is given, ``GET /operator/v1/alarms`` and ``POST /operator/v1/alarms/{link_id}/clear``,
  and, when an :class:`~corridor.kms.audit_follow.AuditFollower` is given,
  ``GET /operator/v1/audit?after_seq=&limit=`` (the verified tail and the chain's state).

The caller's identity comes only from the verified TLS client certificate that
:mod:`corridor.kms.tls` puts into ``scope["extensions"]["tls"]`` (never from a header or
the body); SAE routes demand an SAE certificate, the reservation route a KME one, the
operator routes an operator one. A request without a verified Corridor certificate (the
TLS server accepts a handshake without a client certificate, so that such a caller gets
an answer rather than a dropped connection) never reaches a route: the ETSI GS QKD 014
and KME-to-KME paths answer 401 with no body and a ``WWW-Authenticate`` header saying
what is missing, every other path 401 with an Error body saying the same. A verified
SAE or KME certificate on an operator route gets 403 with an Error body.
Status codes of the ETSI routes are exactly the interface's: 200 with a body, 400 with
an Error body (also for malformed JSON, wrong types and bodies over
:data:`MAX_BODY_BYTES`: FastAPI's 422 is mapped to 400), 401 with no body, 503 with an
Error body.

:class:`HttpsPeerLink` is the master KME's side of the reservation call: a
:class:`~corridor.kms.interface.PeerLink` over ``http.client`` with mutual TLS that talks only to
the expected peer KME certificate.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
)
from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException

from corridor.errors import CorridorError, ParameterError
from corridor.kms.api_hot import (
    API_PREFIX,
    EncKeysBatcher,
    HotPathMiddleware,
    call_service,
    error_response,
    json_response,
    keys_body,
    service_answer,
    status_body,
    unauthorized_response,
)
from corridor.kms.audit_follow import AuditFollower
from corridor.kms.crypto import AtRestDecryptionError
from corridor.kms.interface import (
    KeyDeliveryService,
    KeyRequestError,
    KeysUnavailableError,
    Reservation,
    UnauthorizedError,
)
from corridor.kms.manager import PeerUnreachableError
from corridor.kms.operator import AlarmDesk, UnknownLinkError
from corridor.kms.pki import (
    ROLE_KME,
    ROLE_OPERATOR,
    ROLE_SAE,
    CertificateIdentityError,
    Identity,
    identity_from_pem,
)
from corridor.kms.relay import RelayEngine, RelayError, RelayHop
from corridor.kms.store import ReservationRefusedError
from corridor.kms.tls import (
    CLIENT_SOCKET_OPTIONS,
    PathLike,
    check_peer_identity,
    client_ssl_context,
)
from corridor.kms.tls_openssl import DEFAULT_TLS_GROUPS, connect_tls, openssl_client_context

RESERVATIONS_PATH = "/kme/v1/reservations"
SYNC_PATH = "/kme/v1/sync"
RELAY_PATH = "/kme/v1/ext_keys"
RELAY_VOID_PATH = "/kme/v1/ext_keys/void"
MSG_INVALID_REQUEST = "invalid request"
MSG_BODY_TOO_LARGE = "request body too large"
# The largest legitimate body (a reservation announcement of max_key_per_request keys)
# is tens of kilobytes; anything far above is refused before it is buffered.
MAX_BODY_BYTES = 1 << 20
MSG_PEER_UNREACHABLE = "peer KME unreachable"
MSG_PEER_REFUSED = "peer KME refused the reservation"
OPERATOR_PREFIX = "/operator/v1"
#: Entries ``GET /operator/v1/audit`` returns by default and at most.
AUDIT_TAIL_DEFAULT = 100
AUDIT_TAIL_MAX = 1000
MSG_CLIENT_CERT_REQUIRED = ("client certificate required: pass --cert/--key issued by this "
                            "corridor's CA")
#: On a bodiless 401 (RFC 9110 asks for the header; ETSI GS QKD 014 for no body).
WWW_AUTHENTICATE = f'MutualTLS realm="corridor", error="{MSG_CLIENT_CERT_REQUIRED}"'
MSG_OPERATOR_REQUIRED = ("operator certificate required: this path serves operator "
                         "certificates only (corridor pki init --operator NAME; corridor up "
                         "writes one, see corridor-up.json)")

IdentityResolver = Callable[[Mapping[str, Any]], Identity | None]
PeerAcceptor = Callable[[str, list[Reservation]], None]
PeerSyncAcceptor = Callable[[str, list[str], list[tuple[str, str, int]]], tuple[int, int]]


# ---------------------------------------------------------------------------------------
# Wire objects (ETSI GS QKD 014 section 6 data formats)


class Status(BaseModel):
    """Status of the key pool serving a master/slave pair (sizes in bits)."""

    source_KME_ID: str
    target_KME_ID: str
    master_SAE_ID: str
    slave_SAE_ID: str
    key_size: int
    stored_key_count: int
    max_key_count: int
    max_key_per_request: int
    max_key_size: int
    min_key_size: int
    max_SAE_ID_count: int
    status_extension: dict[str, Any] | None = None


class KeyRequest(BaseModel):
    """Get key request; every field is optional and ``{}`` asks for the defaults."""

    model_config = ConfigDict(extra="ignore")

    number: StrictInt | None = Field(default=None, ge=1,
                                     description="number of keys (default 1)")
    size: StrictInt | None = Field(default=None, ge=1,
                                   description="key size in bits (default key_size)")
    additional_slave_SAE_IDs: list[StrictStr] | None = None
    extension_mandatory: list[dict[str, Any]] | None = None
    extension_optional: list[dict[str, Any]] | None = None


class Key(BaseModel):
    """One key: UUID key ID and base64 key bytes."""

    key_ID: str = Field(description="key ID (UUID)", json_schema_extra={"format": "uuid"})
    key: str = Field(description="key bytes, base64", json_schema_extra={"format": "byte"})
    key_ID_extension: dict[str, Any] | None = None
    key_extension: dict[str, Any] | None = None


class KeyContainer(BaseModel):
    """The keys of one response. Sent as ``keys``; the spec's table spells it ``Keys``,
    so both are accepted when parsing."""

    model_config = ConfigDict(populate_by_name=True)

    keys: list[Key] = Field(validation_alias=AliasChoices("keys", "Keys"))
    key_container_extension: dict[str, Any] | None = None


class KeyIDItem(BaseModel):
    """One requested key ID."""

    key_ID: StrictStr
    key_ID_extension: dict[str, Any] | None = None


class KeyIDs(BaseModel):
    """Get key with key IDs request."""

    key_IDs: list[KeyIDItem] = Field(min_length=1)
    key_IDs_extension: dict[str, Any] | None = None


class Error(BaseModel):
    """Error body of 400 and 503 responses."""

    message: str
    details: list[dict[str, Any]] | None = None


class ReservationItem(BaseModel):
    """One reservation announced by the master KME (public values only)."""

    key_id: StrictStr
    link_id: StrictStr
    direction: StrictStr
    byte_offset: StrictInt = Field(ge=0)
    length_bytes: StrictInt = Field(ge=1)
    master_sae_id: StrictStr
    slave_sae_ids: list[StrictStr]


class ReservationRun(BaseModel):
    """Consecutive reservations of one key size and the same SAEs, in compact form: key
    ``i`` of ``key_ids`` is bytes ``[byte_offset + i * length_bytes, + length_bytes)``."""

    link_id: StrictStr
    direction: StrictStr
    byte_offset: StrictInt = Field(ge=0)
    length_bytes: StrictInt = Field(ge=1)
    master_sae_id: StrictStr
    slave_sae_ids: list[StrictStr]
    key_ids: list[StrictStr] = Field(min_length=1)


class ReservationAnnouncement(BaseModel):
    """KME-to-KME: reservations made by the calling (master) KME, one by one
    (``reservations``) and/or as runs (``runs``, what :class:`HttpsPeerLink` sends: a
    batch of 100 keys is one object instead of 100); at least one in all."""

    reservations: list[ReservationItem] = Field(default_factory=list)
    runs: list[ReservationRun] = Field(default_factory=list)


class PoolWatermark(BaseModel):
    """Below ``below_offset``, the master KME has cut every byte of this pool."""

    link_id: StrictStr
    direction: StrictStr
    below_offset: StrictInt = Field(ge=0)


class PeerSync(BaseModel):
    """KME-to-KME: keys whose announcement failed at the master (withdraw them: no SAE
    holds their IDs) and each pool's watermark (trim skipped bytes below it)."""

    withdrawn_key_ids: list[StrictStr] = Field(default_factory=list, max_length=100_000)
    watermarks: list[PoolWatermark] = Field(default_factory=list, max_length=1024)


class PeerSynced(BaseModel):
    """KME-to-KME: what the slave KME withdrew and trimmed."""

    withdrawn: int
    trimmed_bytes: int


class RelayKeyItem(BaseModel):
    """One key of a relay hop: its ID and where its pad lies in the hop's pool."""

    key_ID: StrictStr
    byte_offset: StrictInt = Field(ge=0)


class RelayHopBody(BaseModel):
    """KME-to-KME ``ext_keys``: one hop of a trusted-node relay (corridor.kms.relay):
    the relay, its whole path (master KME first), the SAEs, the byte ranges of the pool
    caller -> callee under the key IDs, and per key ``K xor pad`` in hex (absent on the
    first hop)."""

    relay_id: StrictStr
    path: list[StrictStr] = Field(min_length=3, max_length=17)
    master_SAE_ID: StrictStr
    slave_SAE_IDs: list[StrictStr] = Field(min_length=1, max_length=64)
    link_id: StrictStr
    direction: StrictStr
    key_size: StrictInt = Field(ge=8)
    keys: list[RelayKeyItem] = Field(min_length=1, max_length=4096)
    pads: list[StrictStr] | None = None
    share_index: StrictInt = Field(default=1, ge=1, le=8)
    share_count: StrictInt = Field(default=1, ge=1, le=8)


class RelayVoid(BaseModel):
    """KME-to-KME: withdraw a failed relay down its path."""

    relay_id: StrictStr
    path: list[StrictStr] = Field(min_length=3, max_length=17)
    key_IDs: list[StrictStr] = Field(min_length=1, max_length=4096)


class RelayStored(BaseModel):
    """KME-to-KME: the acknowledgement of a relay hop: how many keys the slave KME
    stored (the answer comes only once it did)."""

    stored: int


class ReservationAccepted(BaseModel):
    """KME-to-KME: how many reservations the slave KME durably accepted."""

    accepted: int


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "Bad request format (Error body)"},
    401: {"description": "Unauthorized: no body", "content": {}},
    503: {"model": Error, "description": "Error on the server side (Error body)"},
}


class SaeIdConvertor(Convertor[str]):
    """A path segment holding an SAE ID: any characters once URL-decoded, ``/`` and line
    breaks included (Starlette's ``path`` stops at a newline), so that every ID reaches
    the KME, which answers 400 for one it does not know, never 404."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


if "sae_id" not in CONVERTOR_TYPES:
    register_url_convertor("sae_id", SaeIdConvertor())


# ---------------------------------------------------------------------------------------
# Identity


def identity_from_scope(scope: Mapping[str, Any]) -> Identity | None:
    """The caller's identity from the verified client certificate, or ``None``."""
    tls = scope.get("extensions", {}).get("tls")
    if not tls:
        return None
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    try:
        return identity_from_pem(chain[0])
    except CertificateIdentityError:
        return None


# ---------------------------------------------------------------------------------------
# Responses


_json = json_response
_error = error_response
_unauthorized = unauthorized_response
_keys_body = keys_body


KME_TO_KME_PREFIX = "/kme/v1/"


def _is_etsi_path(path: str) -> bool:
    """ETSI GS QKD 014 and KME-to-KME paths: their 401 carries no body."""
    return path.startswith(API_PREFIX + "/") or path.startswith(KME_TO_KME_PREFIX)


def _service_call(call: Callable[[], Any], render: Callable[[Any], Any], *,
                  carries_keys: bool = False) -> Response:
    """Run a service call and map its errors onto the interface's status codes; an
    answer that carries keys is marked ``Cache-Control: no-store``."""
    return service_answer(call_service(call), render, carries_keys=carries_keys)


def _validation_message(exc: RequestValidationError) -> str:
    """``invalid request: number = 0: must be at least 1``: the
    first problem's field, its value when it is a short scalar, and what is allowed."""
    errors = exc.errors()
    if not errors:
        return MSG_INVALID_REQUEST
    err = errors[0]
    loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
    field_name = ".".join(loc) or "request"
    value = err.get("input")
    if isinstance(value, str) and len(value) <= 64:
        # Query values arrive as text: number=0 is shown as "number = 0".
        shown = f" = {value}" if value.strip() and value.isprintable() else f" = {value!r}"
    elif isinstance(value, (int, float, bool)) or value is None:
        shown = f" = {value!r}"
    else:
        shown = ""
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{MSG_INVALID_REQUEST}: {field_name}{shown}: {_plain(err)}{more}"


def _plain(err: Mapping[str, Any]) -> str:
    """What is allowed, in the words of the rest of the interface's messages ("must be
    at least 1") rather than pydantic's ("Input should be greater than or equal to 1")."""
    kind, ctx = err.get("type"), err.get("ctx") or {}
    message = str(err.get("msg", "invalid"))
    if kind == "greater_than_equal" and "ge" in ctx:
        return f"must be at least {ctx['ge']}"
    if kind == "less_than_equal" and "le" in ctx:
        return f"must be at most {ctx['le']}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return "must be an integer"
    if kind == "missing":
        return "is required"
    return message.removeprefix("Value error, ")


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    details = []
    for err in exc.errors():
        # Only location, type and message: never echo the input back.
        details.append({"loc": [str(part) for part in err.get("loc", ())],
                        "type": str(err.get("type", "")), "msg": str(err.get("msg", ""))})
    return details


# ---------------------------------------------------------------------------------------
# Middleware


class _BodyTooLarge(Exception):
    pass


class _BodyLimitMiddleware:
    """Refuses request bodies above ``max_bytes`` with 400 and an Error body (the interface
    has no 413), by declared length or while streaming, so a huge body is never
    buffered whole."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"message": MSG_BODY_TOO_LARGE,
                           "details": [{"max_body_bytes": self.max_bytes}]}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit()
                                              or int(value) > self.max_bytes):
                await self._refuse(send)
                return
        received = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)


class _ClientCertificateMiddleware:
    """No request without a verified Corridor certificate reaches a route: ETSI paths get
    the bodiless 401 (with ``WWW-Authenticate``), every other path a 401 Error body."""

    def __init__(self, app: Any, identity: IdentityResolver) -> None:
        self.app = app
        self.identity = identity

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.identity(scope) is not None:
            await self.app(scope, receive, send)
            return
        # The connection closes after the 401: nothing more can come of it.
        headers = [(b"www-authenticate", WWW_AUTHENTICATE.encode()), (b"connection", b"close")]
        if _is_etsi_path(scope["path"]):
            body = b""
            headers.append((b"content-length", b"0"))
        else:
            body = json.dumps({"message": MSG_CLIENT_CERT_REQUIRED, "details": []}).encode()
            headers += [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _endpoint_label(path: str) -> str:
    if path.startswith(API_PREFIX + "/"):
        for name in ("status", "enc_keys", "dec_keys"):
            if path.endswith("/" + name):
                return name
    if path == RESERVATIONS_PATH:
        return "reservations"
    if path == SYNC_PATH:
        return "sync"
    if path == "/metrics":
        return "metrics"
    if path == "/openapi.json":
        return "openapi"
    if path.startswith(OPERATOR_PREFIX + "/alarms"):
        return "operator_alarms"
    if path == OPERATOR_PREFIX + "/audit":
        return "operator_audit"
    return "other"  # keeps label cardinality bounded whatever paths clients send


class _RequestMetricsMiddleware:
    """Counts every request by endpoint, method and status and times it."""

    def __init__(self, app: Any, metrics: Any) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.metrics.observe_request(_endpoint_label(scope["path"]), scope["method"],
                                         status, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------
# The application


def create_app(service: KeyDeliveryService, *,
               identity: IdentityResolver = identity_from_scope,
               metrics: Any = None,
               peer_acceptor: PeerAcceptor | None = None,
               peer_sync: PeerSyncAcceptor | None = None,
               alarms: AlarmDesk | None = None,
               relay: RelayEngine | None = None,
               audit: AuditFollower | None = None,
               hot_paths: bool = True) -> FastAPI:
    """The ETSI GS QKD 014 application of one KME.

    ``identity`` reads the caller's identity from the ASGI scope (default: the verified
    client certificate); ``metrics`` (a ``KmsMetrics``) adds ``/metrics`` and request
    counting; ``peer_acceptor(from_kme_id, reservations)`` enables the KME-to-KME route,
    ``peer_sync(from_kme_id, withdrawn_key_ids, watermarks)`` the KME-to-KME sync;
    ``alarms`` enables the operator's alarm routes; ``audit`` (an
    :class:`~corridor.kms.audit_follow.AuditFollower` of this KME's log) the operator's
    audit tail ``GET /operator/v1/audit``; ``relay`` the trusted-node relay
    routes (``ext_keys``, ``ext_keys/void``); ``hot_paths`` (default) answers
    plainly well-formed status, enc_keys and dec_keys calls without FastAPI and batches
    concurrent enc_keys calls (:mod:`corridor.kms.api_hot`; the same answers).
    """
    app = FastAPI(
        title=f"Corridor KME {service.kme_id}: ETSI GS QKD 014 key delivery",
        version="1.1.1",
        description="ETSI GS QKD 014 V1.1.1 REST key delivery over mutual TLS. The caller's "
                    "SAE ID is taken from its client certificate.",
        docs_url=None, redoc_url=None, openapi_url=None,
    )

    def caller(request: Request, role: str) -> Identity | None:
        who = identity(request.scope)
        return who if who is not None and who.role == role else None

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        if identity(request.scope) is None:
            return _unauthorized()
        return _error(400, _validation_message(exc), _validation_details(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, str(exc.detail))

    @app.get(API_PREFIX + "/{slave_SAE_ID:sae_id}/status", responses={
        200: {"model": Status, "description": "Status of the key pool"}, **_ERROR_RESPONSES},
        summary="Get status", operation_id="get_status", tags=["ETSI GS QKD 014"])
    def get_status(request: Request, slave_SAE_ID: str) -> Response:
        master = caller(request, ROLE_SAE)
        if master is None:
            return _unauthorized()
        return _service_call(
            lambda: service.status(master.entity_id, slave_SAE_ID),
            status_body)

    def enc_keys(request: Request, slave_sae_id: str, body: KeyRequest) -> Response:
        master = caller(request, ROLE_SAE)
        if master is None:
            return _unauthorized()
        return _service_call(
            lambda: service.enc_keys(
                master.entity_id, slave_sae_id, number=body.number, size_bits=body.size,
                additional_slave_sae_ids=body.additional_slave_SAE_IDs,
                extension_mandatory=body.extension_mandatory,
                extension_optional=body.extension_optional),
            _keys_body, carries_keys=True)

    @app.get(API_PREFIX + "/{slave_SAE_ID:sae_id}/enc_keys", responses={
        200: {"model": KeyContainer, "description": "Keys for the master SAE"},
        **_ERROR_RESPONSES},
        summary="Get key (simple form)", operation_id="get_key_get", tags=["ETSI GS QKD 014"])
    def get_key_by_get(request: Request, slave_SAE_ID: str,
                       number: Annotated[int | None, Query(ge=1)] = None,
                       size: Annotated[int | None, Query(ge=1)] = None) -> Response:
        return enc_keys(request, slave_SAE_ID, KeyRequest(number=number, size=size))

    @app.post(API_PREFIX + "/{slave_SAE_ID:sae_id}/enc_keys", responses={
        200: {"model": KeyContainer, "description": "Keys for the master SAE"},
        **_ERROR_RESPONSES},
        summary="Get key", operation_id="get_key", tags=["ETSI GS QKD 014"])
    def get_key_by_post(request: Request, slave_SAE_ID: str,
                        body: Annotated[KeyRequest | None, Body()] = None) -> Response:
        return enc_keys(request, slave_SAE_ID,
                        body if body is not None else KeyRequest.model_validate({}))

    def dec_keys(request: Request, master_sae_id: str, key_ids: list[str]) -> Response:
        slave = caller(request, ROLE_SAE)
        if slave is None:
            return _unauthorized()
        return _service_call(
            lambda: service.dec_keys(slave.entity_id, master_sae_id, key_ids), _keys_body,
            carries_keys=True)

    @app.get(API_PREFIX + "/{master_SAE_ID:sae_id}/dec_keys", responses={
        200: {"model": KeyContainer, "description": "Keys for the slave SAE"},
        **_ERROR_RESPONSES},
        summary="Get key with key IDs (simple form)", operation_id="get_key_with_key_ids_get",
        tags=["ETSI GS QKD 014"])
    def get_key_with_ids_by_get(request: Request, master_SAE_ID: str,
                                key_ID: Annotated[str, Query()]) -> Response:
        return dec_keys(request, master_SAE_ID, [key_ID])

    @app.post(API_PREFIX + "/{master_SAE_ID:sae_id}/dec_keys", responses={
        200: {"model": KeyContainer, "description": "Keys for the slave SAE"},
        **_ERROR_RESPONSES},
        summary="Get key with key IDs", operation_id="get_key_with_key_ids",
        tags=["ETSI GS QKD 014"])
    def get_key_with_ids_by_post(request: Request, master_SAE_ID: str,
                                 body: Annotated[KeyIDs, Body()]) -> Response:
        return dec_keys(request, master_SAE_ID, [item.key_ID for item in body.key_IDs])

    if peer_acceptor is not None:
        acceptor = peer_acceptor

        @app.post(RESERVATIONS_PATH, responses={
            200: {"model": ReservationAccepted, "description": "Reservations accepted"},
            **_ERROR_RESPONSES},
            summary="Accept reservations from the peer KME", operation_id="kme_reservations",
            tags=["KME to KME"])
        def accept_reservations(request: Request,
                                body: Annotated[ReservationAnnouncement, Body()]) -> Response:
            peer = caller(request, ROLE_KME)
            if peer is None:
                return _unauthorized()
            reservations = [Reservation(
                key_id=r.key_id, link_id=r.link_id, direction=r.direction,
                byte_offset=r.byte_offset, length_bytes=r.length_bytes,
                master_sae_id=r.master_sae_id, slave_sae_ids=tuple(r.slave_sae_ids))
                for r in body.reservations]
            for run in body.runs:
                slaves = tuple(run.slave_sae_ids)
                # Positional fields: by keyword a named tuple costs 4x as much, per key.
                link_id, direction, length = run.link_id, run.direction, run.length_bytes
                offset, master = run.byte_offset, run.master_sae_id
                reservations.extend(Reservation(
                    key_id, link_id, direction, offset + index * length, length, master,
                    slaves) for index, key_id in enumerate(run.key_ids))
            try:
                acceptor(peer.entity_id, reservations)
            except ReservationRefusedError as exc:
                # A refused announcement is a bad request from the peer, unless the store
                # itself failed its integrity check (a server-side fault).
                if isinstance(exc.__cause__, AtRestDecryptionError):
                    return _error(503, exc.message, exc.details)
                return _error(400, exc.message, exc.details)
            except KeysUnavailableError as exc:
                return _error(503, exc.message, exc.details)
            except (KeyRequestError, ParameterError) as exc:
                return _error(400, str(exc))
            except UnauthorizedError:
                return _unauthorized()
            return _json(200, {"accepted": len(reservations)})

    if peer_sync is not None:
        syncer = peer_sync

        @app.post(SYNC_PATH, responses={
            200: {"model": PeerSynced, "description": "Withdrawn and trimmed"},
            **_ERROR_RESPONSES},
            summary="Withdraw keys and trim skipped pool bytes at the peer KME",
            operation_id="kme_sync", tags=["KME to KME"])
        def accept_sync(request: Request, body: Annotated[PeerSync, Body()]) -> Response:
            peer = caller(request, ROLE_KME)
            if peer is None:
                return _unauthorized()
            try:
                withdrawn, trimmed = syncer(
                    peer.entity_id, list(body.withdrawn_key_ids),
                    [(w.link_id, w.direction, w.below_offset) for w in body.watermarks])
            except KeysUnavailableError as exc:
                return _error(503, exc.message, exc.details)
            except CorridorError as exc:  # a malformed or foreign sync: the peer's fault
                return _error(400, str(exc))
            return _json(200, {"withdrawn": withdrawn, "trimmed_bytes": trimmed})

    if relay is not None:
        engine = relay

        @app.post(RELAY_PATH, responses={
            200: {"model": RelayStored, "description": "Relayed and stored at the far end"},
            **_ERROR_RESPONSES},
            summary="Relay keys one hop towards the slave KME (trusted node)",
            operation_id="kme_ext_keys", tags=["KME to KME"])
        def ext_keys(request: Request, body: Annotated[RelayHopBody, Body()]) -> Response:
            peer = caller(request, ROLE_KME)
            if peer is None:
                return _unauthorized()
            try:
                stored = engine.accept_hop(peer.entity_id,
                                           RelayHop.from_json(body.model_dump()))
            except RelayError as exc:
                details = [*exc.details, {"failed_kme_id": exc.failed_kme_id}] \
                    if exc.failed_kme_id else exc.details
                return _error(503, exc.message, details)
            except KeysUnavailableError as exc:
                return _error(503, exc.message, exc.details)
            except CorridorError as exc:  # a malformed or foreign hop: the caller's fault
                return _error(400, str(exc))
            return _json(200, {"stored": stored})

        @app.post(RELAY_VOID_PATH, responses={
            200: {"description": "Withdrawn (here or passed on)"}, **_ERROR_RESPONSES},
            summary="Withdraw a failed relay down its path", operation_id="kme_ext_keys_void",
            tags=["KME to KME"])
        def ext_keys_void(request: Request, body: Annotated[RelayVoid, Body()]) -> Response:
            peer = caller(request, ROLE_KME)
            if peer is None:
                return _unauthorized()
            try:
                discarded = engine.accept_void(peer.entity_id, body.relay_id, body.path,
                                               body.key_IDs)
            except KeysUnavailableError as exc:
                return _error(503, exc.message, exc.details)
            except CorridorError as exc:
                return _error(400, str(exc))
            return _json(200, {"discarded": discarded})

    def operator_refusal(request: Request) -> tuple[Identity | None, Response | None]:
        """(operator identity, None), or (None, the 401/403 answer for anyone else)."""
        who = identity(request.scope)
        if who is None:
            return None, _error(401, MSG_CLIENT_CERT_REQUIRED)
        if who.role != ROLE_OPERATOR:
            return None, _error(403, MSG_OPERATOR_REQUIRED,
                                [{"certificate_role": who.role}])
        return who, None

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(request: Request) -> Response:
        _, refusal = operator_refusal(request)
        return refusal or _json(200, app.openapi())

    if metrics is not None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        @app.get("/metrics", include_in_schema=False)
        def prometheus_metrics(request: Request) -> Response:
            _, refusal = operator_refusal(request)
            return refusal or Response(generate_latest(metrics.registry),
                                       media_type=CONTENT_TYPE_LATEST)

    if alarms is not None:
        desk = alarms
        operator_responses: dict[int | str, dict[str, Any]] = {
            400: {"model": Error, "description": "Bad request (Error body)"},
            401: {"model": Error, "description": "No verified client certificate"},
            403: {"model": Error, "description": "Not an operator certificate"},
        }

        @app.get(OPERATOR_PREFIX + "/alarms", responses={
            200: {"description": "Each link of this KME: state and active alarms"},
            **operator_responses},
            summary="List link states and alarms", operation_id="operator_alarms",
            tags=["Operator"])
        def list_alarms(request: Request) -> Response:
            _, refusal = operator_refusal(request)
            return refusal or _json(200, {"kme_id": desk.kme_id, "links": desk.links()})

        @app.post(OPERATOR_PREFIX + "/alarms/{link_id:sae_id}/clear", responses={
            200: {"description": "What was cleared (cleared false: no active alarm here)"},
            404: {"model": Error, "description": "Not a link of this KME"},
            **operator_responses},
            summary="Clear a link's alarms (reason required, audited)",
            operation_id="operator_clear_alarms", tags=["Operator"],
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/json": {"schema": {
                    "type": "object", "required": ["reason"],
                    "properties": {"reason": {"type": "string", "minLength": 1,
                                              "maxLength": 256}}}}}}})
        async def clear_alarms(request: Request, link_id: str) -> Response:
            who, refusal = operator_refusal(request)
            if refusal is not None or who is None:
                return refusal or _unauthorized()
            try:
                body = json.loads(await request.body() or b"null")
            except ValueError:
                body = None
            if not isinstance(body, dict):
                return _error(400, f"{MSG_INVALID_REQUEST}: body must be a JSON object "
                                   '{"reason": "..."}')
            try:
                result = desk.clear(link_id, who.entity_id, body.get("reason"))
            except UnknownLinkError as exc:
                return _error(404, str(exc), [{"field": exc.field}])
            except ParameterError as exc:
                return _error(400, str(exc), [{"field": exc.field}])
            return _json(200, result)

    if audit is not None:
        follower = audit

        @app.get(OPERATOR_PREFIX + "/audit", responses={
            200: {"description": "The audit chain's state and verified entries "
                                 "(seq, time, event, fields), oldest first"},
            400: {"model": Error, "description": "Bad request (Error body)"},
            401: {"model": Error, "description": "No verified client certificate"},
            403: {"model": Error, "description": "Not an operator certificate"}},
            summary="The audit trail's tail and chain status", operation_id="operator_audit",
            tags=["Operator"])
        def audit_tail(request: Request, after_seq: int = 0,
                       limit: int = AUDIT_TAIL_DEFAULT) -> Response:
            _, refusal = operator_refusal(request)
            if refusal is not None:
                return refusal
            if not 1 <= limit <= AUDIT_TAIL_MAX:
                return _error(400, f"{MSG_INVALID_REQUEST}: limit = {limit} must lie in "
                                   f"[1, {AUDIT_TAIL_MAX}]", [{"field": "limit"}])
            if after_seq < 0:
                return _error(400, f"{MSG_INVALID_REQUEST}: after_seq = {after_seq} must be "
                                   "0 or more", [{"field": "after_seq"}])
            follower.poll()
            entries = [{k: e[k] for k in ("seq", "time", "event", "fields")}
                       for e in follower.tail(after_seq=after_seq, limit=limit)]
            return _json(200, {"kme_id": service.kme_id, "chain": follower.status(),
                               "entries": entries})

    if hot_paths:
        # Innermost: behind the body limit and the certificate check, as the routes are.
        app.state.enc_keys_batcher = EncKeysBatcher(service)
        app.add_middleware(HotPathMiddleware, service=service, identity=identity,
                           batcher=app.state.enc_keys_batcher)
    # Added last = outermost: the metrics see the body-limit and certificate refusals.
    app.add_middleware(_BodyLimitMiddleware, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(_ClientCertificateMiddleware, identity=identity)
    if metrics is not None:
        app.add_middleware(_RequestMetricsMiddleware, metrics=metrics)
    _document_status_codes(app)
    return app


def _document_status_codes(app: FastAPI) -> None:
    """Make the OpenAPI document say what is served: 400 instead of FastAPI's 422."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------------------------------
# KME to KME


def _as_runs(reservations: Sequence[Reservation]) -> list[dict[str, Any]]:
    """Group consecutive reservations (same link, direction, size and SAEs, each starting
    where the previous one ends) into the compact ``runs`` wire form."""
    runs: list[dict[str, Any]] = []
    end = -1
    shared: tuple[Any, ...] | None = None
    key_ids: list[str] = []
    for key_id, link_id, direction, offset, length, master, slaves in reservations:
        fields = (link_id, direction, length, master, slaves)
        if offset == end and fields == shared:
            key_ids.append(key_id)
            end += length
            continue
        key_ids = [key_id]
        runs.append({"link_id": link_id, "direction": direction, "byte_offset": offset,
                     "length_bytes": length, "master_sae_id": master,
                     "slave_sae_ids": list(slaves), "key_ids": key_ids})
        shared, end = fields, offset + length
    return runs


class _PeerConnection(http.client.HTTPSConnection):
    """An HTTPS connection with TCP_NODELAY (a request never waits for a delayed ACK)."""

    def connect(self) -> None:
        super().connect()
        for level, option, value in CLIENT_SOCKET_OPTIONS:
            self.sock.setsockopt(level, option, value)


class _OpenSSLPeerConnection(http.client.HTTPConnection):
    """An HTTPS connection on the OpenSSL that cryptography bundles (hybrid post-quantum
    key exchange, :mod:`corridor.kms.tls_openssl`), TCP_NODELAY, the peer's host name and
    identity checked in the handshake, before the request is sent."""

    default_port = 443

    def __init__(self, host: str, port: int, *, timeout: float, context: Any,
                 expected: Identity) -> None:
        super().__init__(host, port, timeout=timeout)
        self._tls_context = context
        self._expected = expected

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            for level, option, value in CLIENT_SOCKET_OPTIONS:
                sock.setsockopt(level, option, value)
        except OSError:
            sock.close()
            raise
        expected = self._expected
        self.sock = connect_tls(sock, self._tls_context, self.host,
                                lambda der: check_peer_identity(der, expected))


class HttpsPeerLink:
    """The master KME's announcement of reservations to its peer KME over mutual TLS.

    Talks only to a server whose certificate carries the peer's KME identity (checked
    during the handshake, before the request leaves). Returns once the peer answered
    200; anything else (unreachable, timeout, refusal) raises
    :class:`KeysUnavailableError` (:class:`~corridor.kms.manager.PeerUnreachableError`
    when no answer came), so the master never hands out keys the slave did not durably
    accept (fail closed).

    HTTP/1.1 keep-alive connections are pooled and reused (thread-safe). It uses the
    standard library's ``http.client`` rather than httpx: one announcement costs about
    half the CPU, and this call sits on every delivery's path. A request that fails on
    a reused connection (the peer may have closed it while idle) is sent once more on a
    fresh one; announcements are idempotent at the peer, so a repeat never reserves
    anything twice.
    """

    def __init__(self, peer_url: str, *, cert: PathLike, key: PathLike, ca: PathLike,
                 peer_kme_id: str, timeout_s: float = 5.0, max_idle_connections: int = 64,
                 tls_groups: str | None = DEFAULT_TLS_GROUPS) -> None:
        self.peer_url = peer_url.rstrip("/")
        self.peer_kme_id = peer_kme_id
        parts = urllib.parse.urlsplit(self.peer_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ParameterError("peer_url", peer_url, "an https://host:port URL")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._path = parts.path + RESERVATIONS_PATH
        self._sync_path = parts.path + SYNC_PATH
        self._relay_path = parts.path + RELAY_PATH
        self._void_path = parts.path + RELAY_VOID_PATH
        self._timeout_s = timeout_s
        self._identity = Identity(ROLE_KME, peer_kme_id)
        # tls_groups: TLS on the bundled OpenSSL 4 with these key-exchange groups (hybrid
        # post-quantum by default); None: Python's ssl (system OpenSSL, classical).
        self._openssl_context = None if tls_groups is None else openssl_client_context(
            cert, key, ca, tls_groups)
        self._context = client_ssl_context(cert, key, ca, self._identity)
        self._max_idle = max_idle_connections
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpsPeerLink(peer_url={self.peer_url!r}, peer_kme_id={self.peer_kme_id!r})"

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._openssl_context is not None:
            return _OpenSSLPeerConnection(self._host, self._port, timeout=self._timeout_s,
                                          context=self._openssl_context,
                                          expected=self._identity), False
        return _PeerConnection(self._host, self._port, timeout=self._timeout_s,
                               context=self._context), False

    def _release(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def _post(self, body: bytes, path: str | None = None,
              timeout_s: float | None = None) -> tuple[int, bytes]:
        for _attempt in range(2):
            conn, reused = self._connection()
            try:
                if timeout_s is not None:  # this call only (a relay waits for its path)
                    conn.timeout = timeout_s
                    if conn.sock is not None:
                        conn.sock.settimeout(timeout_s)
                conn.request("POST", path or self._path, body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                content = response.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # A reused connection may have been closed by the peer while idle, and a
                # fresh one reset by a peer at its connection cap (corridor.kms.limits,
                # it makes room within a moment): one more try on a fresh one. A timeout
                # is not retried (it would double it).
                if reused and not isinstance(exc, TimeoutError):
                    continue
                if isinstance(exc, ConnectionResetError) and _attempt == 0:
                    time.sleep(0.05)
                    continue
                raise PeerUnreachableError(MSG_PEER_UNREACHABLE, [
                    {"peer_kme_id": self.peer_kme_id, "reason": type(exc).__name__}]) from None
            if response.will_close:
                conn.close()
            else:
                if timeout_s is not None:
                    conn.timeout = self._timeout_s
                    if conn.sock is not None:
                        conn.sock.settimeout(self._timeout_s)
                self._release(conn)
            return response.status, content
        raise PeerUnreachableError(MSG_PEER_UNREACHABLE, [  # pragma: no cover - loop exits
            {"peer_kme_id": self.peer_kme_id, "reason": "connection lost"}])

    def sync(self, withdrawn_key_ids: list[str],
             watermarks: list[tuple[str, str, int]]) -> None:
        """Have the peer withdraw keys and trim skipped pool bytes; raises unless it
        answered 200 (:class:`~corridor.kms.manager.PeerUnreachableError` without an
        answer)."""
        body = json.dumps({"withdrawn_key_ids": withdrawn_key_ids,
                           "watermarks": [{"link_id": link, "direction": direction,
                                           "below_offset": offset}
                                          for link, direction, offset in watermarks]},
                          separators=(",", ":")).encode()
        self._check_answer(*self._post(body, self._sync_path))

    def _check_answer(self, status: int, content: bytes) -> None:
        """Raise :class:`KeysUnavailableError` (the peer's message in the details) unless
        the peer answered 200."""
        if status != 200:
            details: dict[str, Any] = {"peer_kme_id": self.peer_kme_id, "status": status}
            if content:
                with contextlib.suppress(ValueError, AttributeError):
                    details["message"] = str(json.loads(content).get("message", ""))
            raise KeysUnavailableError(MSG_PEER_REFUSED, [details])

    def relay(self, hop: RelayHop, timeout_s: float) -> None:
        """Send one relay hop (``ext_keys``) and wait up to ``timeout_s`` for the far
        end's acknowledgement; :class:`~corridor.kms.relay.RelayError` names the KME
        that failed when the answer says so. No answer at all raises
        :class:`~corridor.kms.manager.PeerUnreachableError` (the caller knows whom it
        called). A hop sent again (only after a reused keep-alive connection failed)
        is refused by the next KME, whose ranges are already taken: fail closed."""
        body = json.dumps(hop.to_json(), separators=(",", ":")).encode()
        try:
            status, content = self._post(body, self._relay_path, timeout_s=timeout_s)
        finally:
            del body
        if status == 200:
            return
        message, failed = MSG_PEER_REFUSED, None
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            answer = json.loads(content)
            message = str(answer.get("message", message))
            for item in answer.get("details") or []:
                if isinstance(item, dict) and isinstance(item.get("failed_kme_id"), str):
                    failed = item["failed_kme_id"]
        raise RelayError(f"KME {self.peer_kme_id!r} answered {status}: {message}",
                         [{"peer_kme_id": self.peer_kme_id, "status": status}],
                         failed_kme_id=failed)

    def void(self, relay_id: str, path: Sequence[str], key_ids: Sequence[str]) -> None:
        """Have the next KME withdraw a failed relay (and pass the void on)."""
        body = json.dumps({"relay_id": relay_id, "path": list(path),
                           "key_IDs": list(key_ids)}, separators=(",", ":")).encode()
        self._check_answer(*self._post(body, self._void_path))

    def announce(self, reservations: list[Reservation]) -> None:
        """Send ``reservations``; return only once the peer accepted all of them."""
        if not reservations:
            return
        body = json.dumps({"runs": _as_runs(reservations)}, separators=(",", ":")).encode()
        status, content = self._post(body)
        self._check_answer(status, content)
        try:
            accepted = json.loads(content).get("accepted")
        except (ValueError, AttributeError):
            accepted = None
        if accepted != len(reservations):
            raise KeysUnavailableError(MSG_PEER_REFUSED, [
                {"peer_kme_id": self.peer_kme_id, "reason": "unexpected acknowledgement"}])

    def close(self) -> None:
        """Close the pooled connections."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
