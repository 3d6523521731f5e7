"""The plain-ASGI hot paths and the enc_keys batcher (corridor.kms.api_hot).

Differential: one application with the hot paths and one without (FastAPI answering every
request, today's behaviour) get the same requests, valid and invalid, and must give the
same status codes, headers and bodies and make the same service calls. Then the batcher
on a real KME pair: concurrent requests share deliveries, and every key is delivered once
and fetchable at the slave.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.kms.api import create_app
from corridor.kms.api_hot import keys_body, keys_json
from corridor.kms.interface import (
    DeliveredKey,
    KeyRequestError,
    KeysUnavailableError,
    KmeStatus,
    UnauthorizedError,
)
from corridor.kms.manager import KeyOrder
from corridor.kms.pki import ROLE_KME, ROLE_SAE, Identity
from tests.kms.test_manager import LINK, pair, pair_factory  # noqa: F401 (fixtures)

ROLE_HEADER = b"x-test-role"


def identity_from_test_header(scope: Any) -> Identity | None:
    """Test stand-in for the TLS certificate: role and entity from one header."""
    for name, value in scope.get("headers", []):
        if name == ROLE_HEADER:
            role, _, entity = value.decode().partition(":")
            return Identity(role, entity)
    return None


class ScriptedService:
    """A deterministic KeyDeliveryService: answers by its arguments, records every call."""

    kme_id = "kme-a"

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.counter = 0

    def _fail(self, sae_id: str) -> None:
        if sae_id == "stranger":
            raise UnauthorizedError("caller is not an SAE of this KME")
        if sae_id == "unknown":
            raise KeyRequestError("slave_SAE_ID 'unknown' is not known", [{"slave": sae_id}])
        if sae_id == "busy":
            raise KeysUnavailableError("not enough key material", [{"stored_key_count": 0}])
        if sae_id == "param":
            raise ParameterError("size", 7, "a multiple of 8")

    def status(self, master_sae_id: str, slave_sae_id: str) -> KmeStatus:
        self.calls.append(("status", master_sae_id, slave_sae_id))
        self._fail(slave_sae_id)
        return KmeStatus(source_KME_ID="kme-a", target_KME_ID="kme-b",
                         master_SAE_ID=master_sae_id, slave_SAE_ID=slave_sae_id, key_size=256,
                         stored_key_count=12, max_key_count=100, max_key_per_request=128,
                         max_key_size=8192, min_key_size=64, max_SAE_ID_count=0)

    def enc_keys(self, master_sae_id: str, slave_sae_id: str, **kwargs: Any) -> list[DeliveredKey]:
        self.calls.append(("enc_keys", master_sae_id, slave_sae_id,
                           json.dumps(kwargs, sort_keys=True)))
        self._fail(slave_sae_id)
        number = kwargs.get("number") or 1
        keys = []
        for _ in range(min(number, 4)):
            self.counter += 1
            keys.append(DeliveredKey(str(uuid.UUID(int=self.counter)),
                                     self.counter.to_bytes(32, "big")))
        return keys

    def dec_keys(self, slave_sae_id: str, master_sae_id: str,
                 key_ids: list[str]) -> list[DeliveredKey]:
        self.calls.append(("dec_keys", slave_sae_id, master_sae_id, tuple(key_ids)))
        self._fail(master_sae_id)
        return [DeliveredKey(key_id, key_id.encode()[:32].ljust(32, b"\0"))
                for key_id in key_ids]


SAE = {"x-test-role": f"{ROLE_SAE}:sae-a"}
KME = {"x-test-role": f"{ROLE_KME}:kme-b"}
JSON = {"content-type": "application/json"}
P = "/api/v1/keys"

# (method, path, headers, body): body None = none sent, str = raw text.
REQUESTS: list[tuple[str, str, dict[str, str], str | None]] = [
    ("GET", f"{P}/sae-b/status", SAE, None),
    ("GET", f"{P}/unknown/status", SAE, None),
    ("GET", f"{P}/stranger/status", SAE, None),
    ("GET", f"{P}/busy/status", SAE, None),
    ("GET", f"{P}/sae-b/status", KME, None),
    ("GET", f"{P}//status", SAE, None),
    ("GET", f"{P}/a%2Fb/status", SAE, None),
    ("GET", f"{P}/sae-b/status?number=2", SAE, None),
    ("POST", f"{P}/sae-b/status", SAE, "{}"),
    ("GET", f"{P}/sae-b/enc_keys", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=3", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=3&size=512", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=2&number=3", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=0", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=-1", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=01", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=%202", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=1.5", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=abc", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?size=7", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?other=1", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys?number=99999999999999999999999", SAE, None),
    ("GET", f"{P}/unknown/enc_keys", SAE, None),
    ("GET", f"{P}/busy/enc_keys?number=2", SAE, None),
    ("GET", f"{P}/param/enc_keys", SAE, None),
    ("GET", f"{P}/stranger/enc_keys", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys", KME, None),
    ("GET", f"{P}//enc_keys", SAE, None),
    ("GET", f"{P}/x/enc_keys/enc_keys", SAE, None),
    ("GET", f"{P}/sae-b/enc_keys/", SAE, None),
    ("PUT", f"{P}/sae-b/enc_keys", SAE, "{}"),
    ("POST", f"{P}/sae-b/enc_keys", SAE, None),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, ""),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, "{}"),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, "null"),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"number":2}'),
    ("POST", f"{P}/sae-b/enc_keys", SAE, '{"number":2,"size":256}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"number":0}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"number":"2"}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"number":true}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"number":2.0}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"size":"x"}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"number":null,"size":null}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"foo":1}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"additional_slave_SAE_IDs":["c"]}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"additional_slave_SAE_IDs":"c"}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"additional_slave_SAE_IDs":[1]}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON},
     '{"extension_mandatory":[{"a":1}],"extension_optional":[]}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"extension_mandatory":[1]}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '{"extension_optional":{"a":1}}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, "[]"),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, '"text"'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, "{"),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, **JSON}, "[" * 5000 + "]" * 5000),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, "content-type": "text/plain"}, '{"number":2}'),
    ("POST", f"{P}/sae-b/enc_keys", {**SAE, "content-type": "application/json; charset=utf-8"},
     '{"number":2}'),
    ("POST", f"{P}/unknown/enc_keys", {**SAE, **JSON}, '{"number":2}'),
    ("POST", f"{P}/busy/enc_keys", {**SAE, **JSON}, "{}"),
    ("POST", f"{P}/sae-b/enc_keys", {**KME, **JSON}, "{}"),
    ("GET", f"{P}/sae-a/dec_keys?key_ID=k1", SAE, None),
    ("GET", f"{P}/sae-a/dec_keys?key_ID=", SAE, None),
    ("GET", f"{P}/sae-a/dec_keys?key_ID=a&key_ID=b", SAE, None),
    ("GET", f"{P}/sae-a/dec_keys", SAE, None),
    ("GET", f"{P}/sae-a/dec_keys?key_id=k1", SAE, None),
    ("GET", f"{P}/unknown/dec_keys?key_ID=k1", SAE, None),
    ("GET", f"{P}/sae-a/dec_keys?key_ID=k1", KME, None),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, '{"key_IDs":[{"key_ID":"k1"}]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON},
     '{"key_IDs":[{"key_ID":"k1","key_ID_extension":{"x":1}},{"key_ID":"k2"}],'
     '"key_IDs_extension":null}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, '{"key_IDs":[]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, '{"key_IDs":[{"key_ID":1}]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, '{"key_IDs":[{"key_id":"k1"}]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON},
     '{"key_IDs":[{"key_ID":"k","key_ID_extension":1}]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, '{"key_IDs":"k1"}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON},
     '{"key_IDs":[{"key_ID":"k"}],"key_IDs_extension":[]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, "{}"),
    ("POST", f"{P}/sae-a/dec_keys", {**SAE, **JSON}, ""),
    ("POST", f"{P}/busy/dec_keys", {**SAE, **JSON}, '{"key_IDs":[{"key_ID":"k1"}]}'),
    ("POST", f"{P}/stranger/dec_keys", {**SAE, **JSON}, '{"key_IDs":[{"key_ID":"k1"}]}'),
    ("POST", f"{P}/sae-a/dec_keys", {**KME, **JSON}, '{"key_IDs":[{"key_ID":"k1"}]}'),
    ("GET", "/api/v1/keys/sae-b/other", SAE, None),
    ("GET", "/api/v1/status", SAE, None),
]


def _answers(hot_paths: bool) -> tuple[list[tuple[int, list[tuple[str, str]], bytes]],
                                       list[tuple[Any, ...]]]:
    service = ScriptedService()
    app = create_app(service, identity=identity_from_test_header, hot_paths=hot_paths)
    answers = []
    with TestClient(app, raise_server_exceptions=True) as client:
        for method, path, headers, body in REQUESTS:
            response = client.request(method, path, headers=headers,
                                      content=None if body is None else body.encode())
            answers.append((response.status_code, sorted(response.headers.items()),
                            response.content))
    return answers, service.calls


def test_hot_paths_answer_exactly_as_fastapi_does():
    before, before_calls = _answers(hot_paths=False)
    after, after_calls = _answers(hot_paths=True)
    for request, old, new in zip(REQUESTS, before, after, strict=True):
        assert new == old, request
    assert after_calls == before_calls
    # The set covers every interface outcome of the hot calls.
    assert {status for status, _, _ in before} >= {200, 400, 401, 404, 405, 503}


def test_hot_paths_serve_well_formed_calls_without_fastapi(monkeypatch):
    """The plain requests are answered by the middleware (FastAPI's routes never run)."""
    service = ScriptedService()
    app = create_app(service, identity=identity_from_test_header)
    import corridor.kms.api as api_module

    def no_fastapi(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a FastAPI route answered a well-formed hot call")

    monkeypatch.setattr(api_module, "_service_call", no_fastapi)
    with TestClient(app) as client:
        assert client.get(f"{P}/sae-b/status", headers=SAE).status_code == 200
        assert client.get(f"{P}/sae-b/enc_keys?number=2", headers=SAE).status_code == 200
        assert client.post(f"{P}/sae-b/enc_keys", headers=SAE,
                           json={"number": 2}).status_code == 200
        assert client.post(f"{P}/sae-a/dec_keys", headers=SAE,
                           json={"key_IDs": [{"key_ID": "k"}]}).status_code == 200
    assert app.state.enc_keys_batcher.requests == 2


def test_openapi_document_is_unchanged_by_the_hot_paths():
    documents = [create_app(ScriptedService(), identity=identity_from_test_header,
                            hot_paths=hot).openapi() for hot in (False, True)]
    assert documents[0] == documents[1]


async def _concurrent_enc_keys(app: Any, count: int, number: int) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://kme") as client:
        return await asyncio.gather(*(
            client.post(f"{P}/b1/enc_keys", json={"number": number},
                        headers={"x-test-role": f"{ROLE_SAE}:a1"}) for _ in range(count)))


def test_concurrent_enc_keys_share_deliveries_and_each_key_is_fetched_once(pair):  # noqa: F811
    app = create_app(pair.a, identity=identity_from_test_header)
    responses = asyncio.run(_concurrent_enc_keys(app, 40, 2))
    assert [r.status_code for r in responses] == [200] * 40
    assert all(r.headers["cache-control"] == "no-store" for r in responses)
    delivered = [key for r in responses for key in r.json()["keys"]]
    assert len(delivered) == 80 and len({k["key_ID"] for k in delivered}) == 80
    batcher = app.state.enc_keys_batcher
    assert batcher.requests == 40 and batcher.batches < 40  # some requests shared a batch
    intents = pair.sink.named("keys_reserving")
    assert len(intents) < 40 and sum(i["count"] for i in intents) == 80
    assert any(i.get("requests", 1) > 1 for i in intents)
    # Every intent has its outcome, with the same delivery_id and key IDs.
    outcomes = {d["delivery_id"]: d for d in pair.sink.named("keys_delivered")
                if d["role"] == "master"}
    for intent in intents:
        assert outcomes[intent["delivery_id"]]["key_ids"] == intent["key_ids"]
    # The slave hands out each key once, with the same bytes.
    for key in delivered:
        (got,) = pair.b.dec_keys("b1", "a1", [key["key_ID"]])
        assert got.key == base64.b64decode(key["key"])
    with pytest.raises(KeyRequestError):
        pair.b.dec_keys("b1", "a1", [delivered[0]["key_ID"]])


def test_enc_keys_batch_rejects_each_bad_request_alone_and_serves_the_others(pair):  # noqa: F811
    results = pair.a.enc_keys_batch([
        KeyOrder("a1", "b1", number=3), KeyOrder("a1", "b1", number=0),
        KeyOrder("a1", "zz"), KeyOrder("b1", "a1"), KeyOrder("a1", "b1", size_bits=512),
        KeyOrder("a1", "b1", number=2)])
    assert [type(r).__name__ if isinstance(r, Exception) else len(r) for r in results] == \
        [3, "KeyRequestError", "KeyRequestError", "UnauthorizedError", 1, 2]
    # The two 256-bit requests of a1 -> b1 were one delivery, the 512-bit one another.
    intents = pair.sink.named("keys_reserving")
    assert sorted((i["count"], i.get("requests", 1)) for i in intents) == [(1, 1), (5, 2)]
    for result in (results[0], results[5], results[4]):
        assert isinstance(result, list)
        assert pair.b.dec_keys("b1", "a1", [k.key_id for k in result]) == result


def test_enc_keys_batch_serves_alone_what_the_pool_cannot_serve_together(pair_factory):  # noqa: F811
    small = pair_factory()
    small.feed(blocks=1, length=2 * 128 * 32)  # 128 keys of 256 bits per direction
    results = small.a.enc_keys_batch([KeyOrder("a1", "b1", number=100),
                                     KeyOrder("a1", "b1", number=100),
                                     KeyOrder("a1", "b1", number=20)])
    assert [len(r) if isinstance(r, list) else type(r).__name__ for r in results] == \
        [100, "KeysUnavailableError", 20]
    # Each was a delivery of its own; the second one's intent is closed by its rejection.
    intents = small.sink.named("keys_reserving")
    assert [i["count"] for i in intents] == [100, 100, 20]
    rejected = [r for r in small.sink.named("request_rejected") if "delivery_id" in r]
    assert [(r["delivery_id"], r["reason"]) for r in rejected] == \
        [(intents[1]["delivery_id"], "pool_exhausted")]


@given(st.lists(st.tuples(st.uuids().map(str), st.binary(min_size=1, max_size=64)),
                max_size=40))
def test_keys_json_is_the_text_json_dumps_gives(items):
    keys = [DeliveredKey(key_id, key) for key_id, key in items]
    assert keys_json(keys) == json.dumps(keys_body(keys), separators=(",", ":"))


@pytest.mark.parametrize("key_id", ['a"b', "a\\b", "caf\u00e9", "a\nb", "a b"])
def test_keys_json_leaves_ids_that_need_escaping_to_json_dumps(key_id):
    assert keys_json([DeliveredKey(key_id, b"k")]) is None
