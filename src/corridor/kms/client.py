"""A Python SAE: the client side of ETSI GS QKD 014 over mutual TLS.

:class:`SaeClient` is what an application imports to get keys from its KME. It keeps
one pooled keep-alive connection (httpx), presents the SAE's certificate, verifies the
KME against the deployment's CA and, when told which KME it expects, checks the KME's
certificate identity during the handshake, before a request is sent.

Every non-200 answer raises :class:`KmeResponseError` carrying the status code and the
Error body; the interface's 401 has no body, and the client does not try to parse one
(ETSI014.md, "Known trouble"). A connection that fails raises
:class:`KmeConnectionError` with one line that says which side refused what
(:func:`describe_connection_failure`): the KME's certificate not signed by ``--ca``,
not naming the host or not the expected KME, or the KME refusing our certificate. Keys come back as
:class:`~corridor.kms.interface.DeliveredKey`, whose ``repr`` never shows key bytes;
nothing here logs keys.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from corridor.errors import CorridorError, ParameterError
from corridor.kms.interface import DeliveredKey, KmeStatus
from corridor.kms.pki import ROLE_KME, Identity
from corridor.kms.tls import CLIENT_SOCKET_OPTIONS, PathLike, client_ssl_context

API_PREFIX = "/api/v1/keys"
_STATUS_INT_FIELDS = ("key_size", "stored_key_count", "max_key_count", "max_key_per_request",
                      "max_key_size", "min_key_size", "max_SAE_ID_count")
_STATUS_STR_FIELDS = ("source_KME_ID", "target_KME_ID", "master_SAE_ID", "slave_SAE_ID")


class KmeResponseError(CorridorError):
    """The KME answered with an error status (400, 401, 503, ...).

    ``message`` and ``details`` are the Error body's (empty for the bodiless 401).
    """

    def __init__(self, status_code: int, message: str,
                 details: list[dict[str, Any]] | None = None) -> None:
        self.status_code = status_code
        self.message = message
        self.details = details or []
        super().__init__(f"KME answered {status_code}: {message}")


class KmeConnectionError(CorridorError):
    """The KME could not be reached, or its certificate was not the expected one."""


class KmeProtocolError(CorridorError):
    """The KME's 200 answer does not follow ETSI GS QKD 014."""


def _issued_by(cert: PathLike, ca: PathLike) -> bool | None:
    """Whether ``cert`` is signed by a certificate in ``ca`` (None if unreadable)."""
    try:
        leaf = x509.load_pem_x509_certificates(Path(cert).read_bytes())[0]
        authorities = x509.load_pem_x509_certificates(Path(ca).read_bytes())
    except (OSError, ValueError):
        return None
    for authority in authorities:
        try:
            leaf.verify_directly_issued_by(authority)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _answers_without_certificate(kme_url: str, ca: PathLike, timeout_s: float) -> bool:
    """True if the KME completes a handshake and answers HTTP to a caller without a
    client certificate (it does: 401), i.e. it is up and speaks TLS with our CA."""
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with httpx.Client(verify=context, timeout=timeout_s) as probe:
            probe.get(kme_url + "/")
    except httpx.HTTPError:
        return False
    return True


def describe_connection_failure(exc: httpx.HTTPError, kme_url: str, cert: PathLike,
                                key: PathLike, ca: PathLike, *, timeout_s: float = 5.0) -> str:
    """One line: what went wrong connecting to ``kme_url`` and what to do."""
    text = str(exc)
    if isinstance(exc, httpx.ConnectError):
        if "CERTIFICATE_VERIFY_FAILED" in text:
            if "mismatch" in text:
                return (f"the KME's certificate at {kme_url} does not name that host: use the "
                        "host the KME certificates were issued for (corridor pki init --host)")
            if "expired" in text:
                return (f"the KME's certificate at {kme_url} has expired: issue new "
                        "certificates (corridor pki init)")
            return (f"the KME's certificate at {kme_url} is not signed by the CA in --ca "
                    f"{ca}: pass the ca.pem of the corridor that KME belongs to "
                    "(corridor-up.json: ca_cert)")
        if "not the expected" in text or "peer certificate" in text:
            found = re.search(r"identity Identity\(role='(\w+)', entity_id='(.*?)'\) is not "
                              r"the expected Identity\(role='\w+', entity_id='(.*?)'\)", text)
            if found:
                role, actual, wanted = found.groups()
                return (f"the server at {kme_url} is {role.upper()} {actual!r}, not the "
                        f"expected KME {wanted!r}: check --kme and --expect-kme "
                        "(corridor-up.json: kmes[].base_url)")
            return (f"the server at {kme_url} is not the expected KME: check --kme and "
                    "--expect-kme")
        if isinstance(exc.__context__, ssl.SSLError) or "SSL" in text or "alert" in text:
            pass  # a TLS alert during the handshake: diagnosed below
        else:
            return (f"cannot reach KME at {kme_url}: {text or type(exc).__name__}: check the "
                    "URL and that the KME is running")
    elif isinstance(exc, httpx.TimeoutException):
        return (f"KME at {kme_url} did not answer within {timeout_s:g} s "
                f"({type(exc).__name__}): check the URL, the KME and the network")
    elif not isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return f"cannot reach KME at {kme_url}: {type(exc).__name__}: {text}"
    # The KME dropped the connection during or right after the handshake: with TLS 1.3
    # that is how a server refuses the client's certificate.
    if _issued_by(cert, ca) is False:
        return (f"the KME at {kme_url} refused our certificate --cert {cert}: it is not "
                f"issued by the corridor's CA (--ca {ca}); use the certificate of an SAE of "
                "this corridor (corridor-up.json: saes[].cert)")
    if _answers_without_certificate(kme_url, ca, timeout_s):
        return (f"the KME at {kme_url} refused our certificate --cert {cert} (not issued by "
                "its CA, or expired): use a certificate issued by the KME's CA")
    return (f"cannot reach KME at {kme_url}: {type(exc).__name__}: {text or 'disconnected'}: "
            "check the URL and that the KME is running")


def _path_id(sae_id: str) -> str:
    if not isinstance(sae_id, str) or not sae_id:
        raise ParameterError("sae_id", sae_id, "a non-empty SAE ID")
    return quote(sae_id, safe="")


def parse_keys(body: Any) -> list[DeliveredKey]:
    """Parse a key container (``keys``, or ``Keys`` as the spec's table spells it)."""
    if not isinstance(body, dict):
        raise KmeProtocolError("key container is not a JSON object")
    items = body.get("keys", body.get("Keys"))
    if not isinstance(items, list):
        raise KmeProtocolError("key container has no keys array")
    keys = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key_ID"), str) \
                or not isinstance(item.get("key"), str):
            raise KmeProtocolError("key entry lacks key_ID or key")
        try:
            uuid.UUID(item["key_ID"])
        except ValueError:
            raise KmeProtocolError(f"key_ID {item['key_ID']!r} is not a UUID") from None
        try:
            key = base64.b64decode(item["key"], validate=True)
        except (binascii.Error, ValueError):
            # Never echo the key field: it is (malformed) key material.
            raise KmeProtocolError(f"key {item['key_ID']} is not valid base64") from None
        keys.append(DeliveredKey(key_id=item["key_ID"], key=key))
    return keys


def parse_status(body: Any) -> KmeStatus:
    """Parse a Status object, checking every required field's JSON type."""
    if not isinstance(body, dict):
        raise KmeProtocolError("status is not a JSON object")
    for name in _STATUS_STR_FIELDS:
        if not isinstance(body.get(name), str):
            raise KmeProtocolError(f"status field {name} missing or not a string")
    for name in _STATUS_INT_FIELDS:
        value = body.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise KmeProtocolError(f"status field {name} missing or not an integer")
    extension = body.get("status_extension")
    return KmeStatus(**{n: body[n] for n in _STATUS_STR_FIELDS + _STATUS_INT_FIELDS},
                     status_extension=extension if isinstance(extension, dict) else None)


class SaeClient:
    """An SAE's connection to its KME (ETSI GS QKD 014 over mutual TLS).

    ``kme_url`` is the KME's base URL (``https://host:port``); ``cert``/``key`` are the
    SAE's certificate and private key, ``ca`` the deployment's CA certificate;
    ``expected_kme_id``, when given, must be the identity in the KME's certificate.
    Safe to share between threads.
    """

    def __init__(self, kme_url: str, cert: PathLike, key: PathLike, ca: PathLike,
                 expected_kme_id: str | None = None, *, timeout_s: float = 10.0,
                 max_connections: int = 16) -> None:
        if not kme_url.startswith("https://"):
            raise ParameterError("kme_url", kme_url, "an https:// URL",
                                 "ETSI GS QKD 014 runs over TLS only")
        self.kme_url = kme_url.rstrip("/")
        self.expected_kme_id = expected_kme_id
        self._files = (cert, key, ca)
        self._timeout_s = timeout_s
        expected = Identity(ROLE_KME, expected_kme_id) if expected_kme_id else None
        context = client_ssl_context(cert, key, ca, expected)
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        transport = httpx.HTTPTransport(verify=context, limits=limits,
                                        socket_options=CLIENT_SOCKET_OPTIONS)
        self._client = httpx.Client(base_url=self.kme_url, transport=transport,
                                    timeout=timeout_s)

    def __repr__(self) -> str:
        return f"SaeClient(kme_url={self.kme_url!r}, expected_kme_id={self.expected_kme_id!r})"

    def __enter__(self) -> SaeClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def _request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                 json_body: Any = None, text: bool = False) -> Any:
        try:
            response = self._client.request(method, path, params=params, json=json_body)
        except httpx.HTTPError as exc:
            raise KmeConnectionError(describe_connection_failure(
                exc, self.kme_url, *self._files, timeout_s=self._timeout_s)) from None
        if response.status_code == 200:
            if text:
                return response.text
            try:
                return response.json()
            except ValueError:
                raise KmeProtocolError("200 answer is not JSON") from None
        if response.status_code == 401:
            # ETSI GS QKD 014: 401 has no body; never parse one.
            raise KmeResponseError(401, "unauthorized")
        message, details = f"HTTP {response.status_code}", []
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            message = str(body.get("message", message))
            if isinstance(body.get("details"), list):
                details = [d for d in body["details"] if isinstance(d, dict)]
        raise KmeResponseError(response.status_code, message, details)

    def status(self, slave_sae_id: str) -> KmeStatus:
        """Get status of the pool serving this SAE (master) and ``slave_sae_id``."""
        return parse_status(self._request("GET", f"{API_PREFIX}/{_path_id(slave_sae_id)}/status"))

    def get_key(self, slave_sae_id: str, number: int = 1, size: int | None = None,
                additional_slave_sae_ids: Sequence[str] | None = None, *,
                extension_mandatory: Sequence[dict[str, Any]] | None = None,
                extension_optional: Sequence[dict[str, Any]] | None = None,
                method: str = "POST") -> list[DeliveredKey]:
        """Get ``number`` new keys of ``size`` bits (default: the KME's key_size) to
        share with ``slave_sae_id`` (and any additional slaves). ``method="GET"`` uses
        the simple form, which carries only number and size."""
        path = f"{API_PREFIX}/{_path_id(slave_sae_id)}/enc_keys"
        if method == "GET":
            if additional_slave_sae_ids or extension_mandatory or extension_optional:
                raise ParameterError("method", method, "POST",
                                     "the GET form carries only number and size")
            params: dict[str, Any] = {"number": number}
            if size is not None:
                params["size"] = size
            return parse_keys(self._request("GET", path, params=params))
        if method != "POST":
            raise ParameterError("method", method, "GET or POST")
        body: dict[str, Any] = {"number": number}
        if size is not None:
            body["size"] = size
        if additional_slave_sae_ids:
            body["additional_slave_SAE_IDs"] = list(additional_slave_sae_ids)
        if extension_mandatory:
            body["extension_mandatory"] = list(extension_mandatory)
        if extension_optional:
            body["extension_optional"] = list(extension_optional)
        return parse_keys(self._request("POST", path, json_body=body))

    def get_key_with_id(self, master_sae_id: str,
                        key_ids: str | Sequence[str]) -> list[DeliveredKey]:
        """Get the keys ``key_ids`` that ``master_sae_id`` obtained for this SAE."""
        ids = [key_ids] if isinstance(key_ids, str) else list(key_ids)
        if not ids:
            raise ParameterError("key_ids", ids, "at least one key ID")
        path = f"{API_PREFIX}/{_path_id(master_sae_id)}/dec_keys"
        return parse_keys(self._request(
            "POST", path, json_body={"key_IDs": [{"key_ID": k} for k in ids]}))


OPERATOR_PREFIX = "/operator/v1"


class OperatorClient:
    """An operator's connection to one KME (operator certificate; docs/kms-api.md,
    "Operator endpoints"): link states and alarms, and clearing them with a reason.

    Same transport, checks and errors as :class:`SaeClient` (a refusal raises
    :class:`KmeResponseError`: 401 without a verified certificate, 403 for a certificate
    that is not an operator's).
    """

    def __init__(self, kme_url: str, cert: PathLike, key: PathLike, ca: PathLike,
                 expected_kme_id: str | None = None, *, timeout_s: float = 10.0) -> None:
        self._http = SaeClient(kme_url, cert, key, ca, expected_kme_id, timeout_s=timeout_s,
                               max_connections=2)
        self.kme_url = self._http.kme_url

    def __repr__(self) -> str:
        return f"OperatorClient(kme_url={self.kme_url!r})"

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the pooled connections."""
        self._http.close()

    def alarms(self) -> dict[str, Any]:
        """``{"kme_id": ..., "links": [{"link_id", "state", "quarantined", "alarms", ...}]}``."""
        body = self._http._request("GET", f"{OPERATOR_PREFIX}/alarms")
        if not isinstance(body, dict) or not isinstance(body.get("links"), list):
            raise KmeProtocolError("alarm list is not a JSON object with links")
        return body

    def audit(self, *, after_seq: int = 0, limit: int = 100) -> dict[str, Any]:
        """``{"kme_id", "chain": {"ok", "verified_seq", ...}, "entries": [...]}``: the
        verified audit entries after ``after_seq`` (0: the last ``limit``)."""
        body = self._http._request("GET", f"{OPERATOR_PREFIX}/audit",
                                   params={"after_seq": int(after_seq), "limit": int(limit)})
        if not isinstance(body, dict) or not isinstance(body.get("entries"), list) \
                or not isinstance(body.get("chain"), dict):
            raise KmeProtocolError("audit answer is not a JSON object with chain and entries")
        return body

    def metrics(self) -> str:
        """The KME's Prometheus text (``GET /metrics``)."""
        return str(self._http._request("GET", "/metrics", text=True))

    def clear(self, link_id: str, reason: str) -> dict[str, Any]:
        """Clear every alarm of ``link_id`` at this KME; ``reason`` is audited."""
        body = self._http._request("POST", f"{OPERATOR_PREFIX}/alarms/{_path_id(link_id)}/clear",
                                   json_body={"reason": reason})
        if not isinstance(body, dict) or not isinstance(body.get("cleared"), bool):
            raise KmeProtocolError("clear answer is not a JSON object with cleared")
        return body
