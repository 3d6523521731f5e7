"""ETSI GS QKD 014 conformance checklist (ETSI014.md, items 1-13), over real mutual-TLS
sockets: two real KMEs (KeyManager, SQLite stores) linked by HttpsPeerLink, each served
by uvicorn on 127.0.0.1."""

from __future__ import annotations

import base64
import os
import ssl
import uuid

import httpx
import pytest

from corridor.kms.api import HttpsPeerLink
from corridor.kms.client import KmeResponseError, SaeClient
from corridor.kms.interface import (
    MSG_EXTENSION_NOT_SUPPORTED,
    MSG_KEYS_NOT_FOUND,
    MSG_SIZE_MULTIPLE_OF_8,
    KeysUnavailableError,
    Reservation,
)
from corridor.kms.pki import init_pki
from tests.kms.mtls_harness import (
    KME_A,
    KME_B,
    LINK_ID,
    ODD_SAE_ID,
    OPERATOR,
    fingerprint,
    fingerprints,
    two_kme_deployment,
)

STATUS_FIELDS = {"source_KME_ID": str, "target_KME_ID": str, "master_SAE_ID": str,
                 "slave_SAE_ID": str, "key_size": int, "stored_key_count": int,
                 "max_key_count": int, "max_key_per_request": int, "max_key_size": int,
                 "min_key_size": int, "max_SAE_ID_count": int}
ENC = "/api/v1/keys/sae-b/enc_keys"


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with two_kme_deployment(tmp_path_factory.mktemp("kmes"), with_metrics=True) as deployment:
        deployment.ingest(16 * 1024)
        yield deployment


@pytest.fixture(scope="module")
def sae_a(dep):
    with dep.client("sae-a") as client:
        yield client


@pytest.fixture(scope="module")
def sae_b(dep):
    with dep.client("sae-b") as client:
        yield client


@pytest.fixture(scope="module")
def raw_a(dep):
    with dep.raw("sae-a", kme_id=KME_A) as client:
        yield client


def _stored(client: SaeClient, slave: str = "sae-b") -> int:
    return client.status(slave).stored_key_count


def _assert_error_body(response: httpx.Response, status: int, message: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body.get("details", []), list)
    if message is not None:
        assert body["message"] == message


def _assert_bodiless_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.content == b""


# 1 ------------------------------------------------------------------------------------


def test_01_no_client_certificate_is_refused(dep, sae_a) -> None:
    # The handshake completes without a client certificate (CERT_OPTIONAL) so that the
    # caller learns what is missing; every ETSI call answers the bodiless 401, with the
    # explanation in WWW-Authenticate, and nothing is reserved or delivered.
    before = _stored(sae_a)
    context = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    with httpx.Client(verify=context, base_url=dep.urls[KME_A]) as anonymous:
        for response in (anonymous.post(ENC, json={}), anonymous.get(ENC),
                         anonymous.get("/api/v1/keys/sae-b/status"),
                         anonymous.get("/api/v1/keys/sae-b/dec_keys",
                                       params={"key_ID": str(uuid.uuid4())}),
                         anonymous.post("/kme/v1/reservations", json={"runs": []}),
                         anonymous.post("/kme/v1/sync", json={"withdrawn_key_ids": []})):
            _assert_bodiless_401(response)
            assert "client certificate required" in response.headers["www-authenticate"]
        # Other paths say it in an Error body.
        for path in ("/metrics", "/openapi.json", "/nonsense"):
            _assert_error_body(anonymous.get(path), 401,
                               "client certificate required: pass --cert/--key issued by "
                               "this corridor's CA")
    assert _stored(sae_a) == before


def test_01_certificate_from_another_ca_is_refused(dep, sae_a, tmp_path) -> None:
    rogue = init_pki(tmp_path / "rogue", [KME_A], [("sae-a", KME_A)])
    before = _stored(sae_a)
    paths = rogue.saes["sae-a"]  # same SAE ID, wrong CA
    context = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    context.load_cert_chain(paths.cert, paths.key)
    with httpx.Client(verify=context) as impostor, pytest.raises(httpx.TransportError):
        impostor.post(dep.urls[KME_A] + ENC, json={})
    assert _stored(sae_a) == before


# 2 ------------------------------------------------------------------------------------


def test_02_sae_id_comes_from_the_certificate_only(dep, raw_a) -> None:
    claims = {"X-SAE-ID": "sae-a2", "X-Client-Cert-CN": "sae-a2", "SSL-Client-S-DN": "sae-a2"}
    status = raw_a.get("/api/v1/keys/sae-b/status", headers=claims).json()
    assert status["master_SAE_ID"] == "sae-a"
    response = raw_a.post(ENC, headers=claims, json={"master_SAE_ID": "sae-a2", "number": 1})
    assert response.status_code == 200
    key_id = response.json()["keys"][0]["key_ID"]
    # The key was issued to sae-a: sae-b gets it with master sae-a, not sae-a2.
    with dep.client("sae-b") as sae_b:
        with pytest.raises(KmeResponseError) as info:
            sae_b.get_key_with_id("sae-a2", [key_id])
        assert info.value.status_code in (400, 401)
        assert len(sae_b.get_key_with_id("sae-a", [key_id])) == 1


def test_02_a_kme_certificate_cannot_call_as_an_sae(dep) -> None:
    with dep.raw(KME_B, kme_id=KME_A, role="kme") as kme_client:
        _assert_bodiless_401(kme_client.post(ENC, json={}))
        _assert_bodiless_401(kme_client.get("/api/v1/keys/sae-b/status"))


def test_02_an_sae_certificate_cannot_announce_reservations(dep, raw_a) -> None:
    body = {"reservations": [{"key_id": str(uuid.uuid4()), "link_id": LINK_ID,
                              "direction": "A->B", "byte_offset": 0, "length_bytes": 32,
                              "master_sae_id": "sae-a", "slave_sae_ids": ["sae-b"]}]}
    with dep.raw("sae-a", kme_id=KME_B) as sae_at_b:
        _assert_bodiless_401(sae_at_b.post("/kme/v1/reservations", json=body))


def test_02_a_kme_that_shares_no_link_cannot_announce(dep) -> None:
    paths = dep.pki.kmes["kme-c"]
    link = HttpsPeerLink(dep.urls[KME_B], cert=paths.cert, key=paths.key,
                         ca=dep.pki.ca_cert, peer_kme_id=KME_B)
    try:
        with pytest.raises(KeysUnavailableError):
            link.announce([Reservation(str(uuid.uuid4()), LINK_ID, "A->B", 0, 32, "sae-a",
                                       ("sae-b",))])
    finally:
        link.close()


# 3 ------------------------------------------------------------------------------------


def test_03_status_has_every_field_with_its_json_type(raw_a) -> None:
    response = raw_a.get("/api/v1/keys/sae-b/status")
    assert response.status_code == 200
    body = response.json()
    assert set(STATUS_FIELDS) <= set(body) <= set(STATUS_FIELDS) | {"status_extension"}
    for name, kind in STATUS_FIELDS.items():
        assert type(body[name]) is kind, name  # bool is not an int here
    assert body["source_KME_ID"] == KME_A and body["target_KME_ID"] == KME_B
    assert body["master_SAE_ID"] == "sae-a" and body["slave_SAE_ID"] == "sae-b"
    assert 0 <= body["stored_key_count"] <= body["max_key_count"]
    assert body["min_key_size"] <= body["key_size"] <= body["max_key_size"]


# 4 ------------------------------------------------------------------------------------


def test_04_get_and_post_behave_alike(raw_a) -> None:
    by_get = raw_a.get(ENC, params={"number": 3, "size": 128})
    by_post = raw_a.post(ENC, json={"number": 3, "size": 128})
    for response in (by_get, by_post):
        assert response.status_code == 200
        keys = response.json()["keys"]
        assert len(keys) == 3
        assert {len(base64.b64decode(k["key"])) for k in keys} == {16}
    assert not {k["key_ID"] for k in by_get.json()["keys"]} & {
        k["key_ID"] for k in by_post.json()["keys"]}


def test_04_empty_request_yields_the_defaults(raw_a) -> None:
    key_size = raw_a.get("/api/v1/keys/sae-b/status").json()["key_size"]
    for response in (raw_a.post(ENC, json={}), raw_a.get(ENC), raw_a.post(ENC)):
        assert response.status_code == 200
        keys = response.json()["keys"]
        assert len(keys) == 1
        assert len(base64.b64decode(keys[0]["key"])) * 8 == key_size


# 5 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("request_body", [
    {"number": 129},             # above max_key_per_request = 128
    {"number": 0},
    {"number": -1},
    {"size": 56},                # below min_key_size = 64
    {"size": 1032},              # above max_key_size = 1024
    {"size": 0},
])
def test_05_number_and_size_out_of_range_are_400(raw_a, sae_a, request_body) -> None:
    before = _stored(sae_a)
    _assert_error_body(raw_a.post(ENC, json=request_body), 400)
    _assert_error_body(raw_a.get(ENC, params=request_body), 400)
    assert _stored(sae_a) == before


def test_05_a_value_out_of_range_is_named_in_the_interface_s_words(raw_a) -> None:
    """``number=0`` in the GET form fails the query's own bound: the message names the
    value and the bound without pydantic's wording."""
    response = raw_a.get(ENC, params={"number": 0})
    _assert_error_body(response, 400, "invalid request: number = 0: must be at least 1")
    response = raw_a.get(ENC, params={"number": "two"})
    _assert_error_body(response, 400, "invalid request: number = two: must be an integer")


def test_05_size_not_multiple_of_8_has_the_exact_message(raw_a) -> None:
    _assert_error_body(raw_a.post(ENC, json={"size": 129}), 400, MSG_SIZE_MULTIPLE_OF_8)
    _assert_error_body(raw_a.get(ENC, params={"size": 129}), 400, MSG_SIZE_MULTIPLE_OF_8)


@pytest.mark.parametrize("content", [
    b"{not json", b"[1, 2]", b'{"number": "3"}', b'{"number": 1.5}', b'{"number": true}',
    b'{"size": "big"}', b'{"additional_slave_SAE_IDs": "sae-c"}',
    b'{"extension_mandatory": {"a": 1}}', b'{"number": 100000000000000000000000}',
])
def test_05_malformed_or_mistyped_bodies_are_400_not_422(raw_a, content) -> None:
    response = raw_a.post(ENC, content=content, headers={"content-type": "application/json"})
    _assert_error_body(response, 400)


@pytest.mark.parametrize("params", [{"number": "x"}, {"size": "1e3"}, {"number": ""}])
def test_05_mistyped_query_parameters_are_400(raw_a, params) -> None:
    _assert_error_body(raw_a.get(ENC, params=params), 400)


# 6, 7, 8 ------------------------------------------------------------------------------


def test_06_07_08_keys_are_uuid_base64_and_delivered_once_to_each_side(sae_a, sae_b) -> None:
    keys = sae_a.get_key("sae-b", number=5, size=512)
    for key in keys:
        assert str(uuid.UUID(key.key_id)) == key.key_id
        assert len(key.key) == 512 // 8
    assert len({k.key_id for k in keys}) == 5 and len({k.key for k in keys}) == 5
    first, rest = keys[:1], keys[1:]
    by_post = sae_b.get_key_with_id("sae-a", [k.key_id for k in rest])
    assert fingerprints(by_post) == fingerprints(rest)
    by_get = _dec_by_get(sae_b, first[0].key_id)
    assert by_get == (first[0].key_id, fingerprint(first[0].key))
    for key_id in (first[0].key_id, rest[2].key_id):
        with pytest.raises(KmeResponseError) as info:
            sae_b.get_key_with_id("sae-a", [key_id])
        assert info.value.status_code == 400
        assert info.value.message == MSG_KEYS_NOT_FOUND


def _dec_by_get(client: SaeClient, key_id: str) -> tuple[str, str]:
    response = client._client.get("/api/v1/keys/sae-a/dec_keys", params={"key_ID": key_id})
    assert response.status_code == 200
    (item,) = response.json()["keys"]
    return item["key_ID"], fingerprint(base64.b64decode(item["key"]))


def test_08_unknown_and_malformed_key_ids_are_400_with_the_exact_message(sae_b) -> None:
    for key_ids in ([str(uuid.uuid4())], ["not-a-uuid"], ["../../etc"]):
        with pytest.raises(KmeResponseError) as info:
            sae_b.get_key_with_id("sae-a", key_ids)
        assert info.value.status_code == 400
        assert info.value.message == MSG_KEYS_NOT_FOUND


def test_08_all_or_nothing_when_one_id_is_unknown(sae_a, sae_b) -> None:
    (key,) = sae_a.get_key("sae-b")
    with pytest.raises(KmeResponseError):
        sae_b.get_key_with_id("sae-a", [key.key_id, str(uuid.uuid4())])
    got = sae_b.get_key_with_id("sae-a", [key.key_id])
    assert fingerprint(got[0].key) == fingerprint(key.key)


# 9 ------------------------------------------------------------------------------------


def test_09_a_third_sae_gets_a_bodiless_401_and_takes_nothing(dep, sae_a, sae_b) -> None:
    keys = sae_a.get_key("sae-b", number=2)
    body = {"key_IDs": [{"key_ID": k.key_id} for k in keys]}
    with dep.raw("sae-c", kme_id=KME_B) as third:
        _assert_bodiless_401(third.post("/api/v1/keys/sae-a/dec_keys", json=body))
        _assert_bodiless_401(third.get("/api/v1/keys/sae-a/dec_keys",
                                       params={"key_ID": keys[0].key_id}))
    with dep.client("sae-c") as third_client, pytest.raises(KmeResponseError) as info:
        third_client.get_key_with_id("sae-a", [k.key_id for k in keys])
    assert info.value.status_code == 401 and info.value.details == []
    # The master SAE itself, at the slave's KME, is not a slave either.
    with dep.raw("sae-a", kme_id=KME_B) as master_at_b:
        _assert_bodiless_401(master_at_b.post("/api/v1/keys/sae-a/dec_keys", json=body))
    got = sae_b.get_key_with_id("sae-a", [k.key_id for k in keys])
    assert [fingerprint(k.key) for k in got] == [fingerprint(k.key) for k in keys]


# 10, 11 -------------------------------------------------------------------------------


def test_10_multicast_when_disabled_is_400(raw_a, sae_a) -> None:
    assert sae_a.status("sae-b").max_SAE_ID_count == 0
    before = _stored(sae_a)
    _assert_error_body(raw_a.post(ENC, json={"additional_slave_SAE_IDs": ["sae-c"]}), 400)
    assert _stored(sae_a) == before


def test_11_unknown_mandatory_extension_is_400_with_the_exact_message(raw_a) -> None:
    response = raw_a.post(ENC, json={"extension_mandatory": [{"abc_route_type": "direct"}]})
    _assert_error_body(response, 400, MSG_EXTENSION_NOT_SUPPORTED)


def test_11_unknown_optional_extension_is_ignored(raw_a) -> None:
    response = raw_a.post(ENC, json={"extension_optional": [{"abc_key_lifetime": 60}]})
    assert response.status_code == 200
    assert len(response.json()["keys"]) == 1


# 12 -----------------------------------------------------------------------------------


def test_12_sae_ids_that_need_url_encoding_work_in_paths(dep, sae_a) -> None:
    with dep.client(ODD_SAE_ID) as odd:
        assert sae_a.status(ODD_SAE_ID).slave_SAE_ID == ODD_SAE_ID
        keys = sae_a.get_key(ODD_SAE_ID, number=2)
        got = odd.get_key_with_id("sae-a", [k.key_id for k in keys])
        assert [fingerprint(k.key) for k in got] == [fingerprint(k.key) for k in keys]
        # ... and as master: its KME is B, the slave sae-a is at A.
        status = odd.status("sae-a")
        assert (status.master_SAE_ID, status.source_KME_ID) == (ODD_SAE_ID, KME_B)
        back = odd.get_key("sae-a")
        returned = sae_a.get_key_with_id(ODD_SAE_ID, [back[0].key_id])
        assert fingerprint(returned[0].key) == fingerprint(back[0].key)


# 13 -----------------------------------------------------------------------------------


def test_13_a_short_pool_is_503_with_nothing_reserved_or_lost(dep, sae_a, sae_b) -> None:
    status = sae_a.status("sae-b")
    stored_bytes = status.stored_key_count * status.key_size // 8
    size_bits = status.max_key_size
    per_key = size_bits // 8
    number = min(status.max_key_per_request, stored_bytes // per_key + 1)
    assert number * per_key > stored_bytes, "fixture pool too large for this test"
    with pytest.raises(KmeResponseError) as info:
        sae_a.get_key("sae-b", number=number, size=size_bits)
    assert info.value.status_code == 503 and info.value.message
    assert _stored(sae_a) == status.stored_key_count
    # Nothing lost: every stored key can still be delivered, and both sides agree.
    remaining = stored_bytes // per_key
    keys = sae_a.get_key("sae-b", number=remaining, size=size_bits) if remaining else []
    got = sae_b.get_key_with_id("sae-a", [k.key_id for k in keys]) if keys else []
    assert [fingerprint(k.key) for k in got] == [fingerprint(k.key) for k in keys]
    with pytest.raises(KmeResponseError) as info:
        sae_a.get_key("sae-b", size=size_bits)
    assert info.value.status_code == 503
    dep.ingest(8 * 1024)  # the link delivers more: service resumes
    assert len(sae_a.get_key("sae-b", size=size_bits)) == 1


def test_13_an_unreachable_peer_kme_is_503_and_nothing_is_delivered(dep) -> None:
    paths = dep.pki.kmes[KME_A]
    dead = HttpsPeerLink("https://127.0.0.1:9", cert=paths.cert, key=paths.key,
                         ca=dep.pki.ca_cert, peer_kme_id=KME_B, timeout_s=2)
    wrong = HttpsPeerLink(dep.urls[KME_A], cert=paths.cert, key=paths.key,
                          ca=dep.pki.ca_cert, peer_kme_id=KME_B, timeout_s=2)
    reservation = Reservation(str(uuid.uuid4()), LINK_ID, "A->B", 0, 32, "sae-a", ("sae-b",))
    try:
        for link in (dead, wrong):  # nobody listening; a server that is not KME B
            with pytest.raises(KeysUnavailableError):
                link.announce([reservation])
        manager = dep.managers[KME_A]
        manager.set_peer(KME_B, dead)
        with dep.client("sae-a") as client, pytest.raises(KmeResponseError) as info:
            client.get_key("sae-b")
        assert info.value.status_code == 503
    finally:
        manager.set_peer(KME_B, HttpsPeerLink(
            dep.urls[KME_B], cert=paths.cert, key=paths.key, ca=dep.pki.ca_cert,
            peer_kme_id=KME_B))
        dead.close()
        wrong.close()


def test_13_a_slave_that_has_not_stored_the_block_yet_refuses_and_the_503_says_so(
        tmp_path) -> None:
    # At start-up the master's KME may hold a block its peer has not stored yet: the
    # peer refuses the reservation. The 503 says refused (with the peer's reason), not
    # unreachable, and a hybrid session reads it as peer_kme_refused.
    from corridor.hybrid.qkd import missing_reason

    with two_kme_deployment(tmp_path) as d:
        d.managers[KME_A].ingest_block(LINK_ID, 1, os.urandom(1024))   # not at KME B
        with d.client("sae-a") as client, pytest.raises(KmeResponseError) as info:
            client.get_key("sae-b")
    assert info.value.status_code == 503
    assert f"the slave's KME {KME_B!r} refused the reservation" in info.value.message
    assert "not yet ingested" in info.value.message
    assert missing_reason(info.value) == "peer_kme_refused"


# The rest of the interface -------------------------------------------------------------


def test_unknown_paths_and_methods_answer_with_an_error_body(raw_a) -> None:
    _assert_error_body(raw_a.get("/api/v1/keys/sae-b/nonsense"), 404)
    _assert_error_body(raw_a.delete(ENC), 405)


@pytest.fixture(scope="module")
def raw_operator(dep):
    with dep.raw(OPERATOR, kme_id=KME_A, role="operator") as client:
        yield client


def test_metrics_and_openapi_answer_operator_certificates_only(dep, raw_a,
                                                               raw_operator) -> None:
    with dep.raw(KME_B, kme_id=KME_A, role="kme") as raw_kme:
        for client, role in ((raw_a, "sae"), (raw_kme, "kme")):
            for path in ("/metrics", "/openapi.json"):
                response = client.get(path)
                _assert_error_body(response, 403)
                assert response.json()["message"].startswith("operator certificate required")
                assert response.json()["details"] == [{"certificate_role": role}]
    assert raw_operator.get("/metrics").status_code == 200
    assert raw_operator.get("/openapi.json").json()["info"]["version"] == "1.1.1"
    # And an operator certificate gets no key: it is not an SAE.
    _assert_bodiless_401(raw_operator.post(ENC, json={}))
    _assert_bodiless_401(raw_operator.get("/api/v1/keys/sae-b/status"))


def test_openapi_documents_every_call_with_its_status_codes(raw_operator) -> None:
    document = raw_operator.get("/openapi.json").json()
    paths = document["paths"]
    expected = {"/api/v1/keys/{slave_SAE_ID}/status": {"get"},
                "/api/v1/keys/{slave_SAE_ID}/enc_keys": {"get", "post"},
                "/api/v1/keys/{master_SAE_ID}/dec_keys": {"get", "post"},
                "/kme/v1/reservations": {"post"}, "/kme/v1/sync": {"post"}}
    assert {p: set(ops) for p, ops in paths.items()} == expected
    for path, operations in expected.items():
        for method in operations:
            responses = paths[path][method]["responses"]
            assert set(responses) == {"200", "400", "401", "503"}
            assert "content" not in responses["401"] or responses["401"]["content"] == {}
    schemas = document["components"]["schemas"]
    assert {"Status", "KeyRequest", "KeyContainer", "KeyIDs", "Error"} <= set(schemas)
    assert "HTTPValidationError" not in schemas


def test_metrics_count_requests_by_endpoint_and_status(dep, raw_a, sae_a,
                                                       raw_operator) -> None:
    sae_a.get_key("sae-b")  # one announcement from KME A to KME B
    raw_a.post(ENC, json={"size": 129})
    raw_a.get("/api/v1/keys/sae-b/status")
    text = raw_operator.get("/metrics").text
    assert 'corridor_requests_total{endpoint="enc_keys",method="POST",status="400"}' in text
    assert 'corridor_requests_total{endpoint="status",method="GET",status="200"}' in text
    assert 'corridor_request_duration_seconds_count{endpoint="enc_keys"}' in text
    # The slave KME counted the reservations it accepted from the master KME.
    with dep.raw(OPERATOR, kme_id=KME_B, role="operator") as raw_b:
        text_b = raw_b.get("/metrics").text
    assert 'corridor_requests_total{endpoint="reservations",method="POST",status="200"}' in text_b


def test_oversized_and_pathological_bodies_are_400(raw_a, sae_a) -> None:
    before = _stored(sae_a)
    declared = b'{"number": 1, "pad": "' + b"x" * (2 << 20) + b'"}'
    _assert_error_body(raw_a.post(ENC, content=declared,
                                  headers={"content-type": "application/json"}), 400)

    def chunks():
        yield b'{"number": 1, "pad": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}'

    # Chunked: no declared length, refused while streaming.
    _assert_error_body(raw_a.post(ENC, content=chunks(),
                                  headers={"content-type": "application/json"}), 400)
    _assert_error_body(raw_a.post(ENC, content=b"[" * 100_000,
                                  headers={"content-type": "application/json"}), 400)
    _assert_error_body(raw_a.post(ENC, content=b'{"number": ' + b"9" * 5000 + b"}",
                                  headers={"content-type": "application/json"}), 400)
    assert _stored(sae_a) == before


def test_multicast_when_enabled_delivers_the_same_key_to_every_named_slave(tmp_path) -> None:
    with two_kme_deployment(tmp_path, config={"max_sae_id_count": 2}) as multi:
        multi.ingest(4096)
        with multi.client("sae-a") as master, multi.client("sae-b") as first, \
                multi.client("sae-c") as second, multi.client(ODD_SAE_ID) as unnamed:
            assert master.status("sae-b").max_SAE_ID_count == 2
            keys = master.get_key("sae-b", number=2, additional_slave_sae_ids=["sae-c"])
            ids = [k.key_id for k in keys]
            with pytest.raises(KmeResponseError) as info:
                unnamed.get_key_with_id("sae-a", ids)
            assert info.value.status_code == 401
            assert fingerprints(first.get_key_with_id("sae-a", ids)) == fingerprints(keys)
            assert fingerprints(second.get_key_with_id("sae-a", ids)) == fingerprints(keys)
            for slave in (first, second):  # once per slave, never twice
                with pytest.raises(KmeResponseError) as info:
                    slave.get_key_with_id("sae-a", ids)
                assert info.value.message == MSG_KEYS_NOT_FOUND
            with pytest.raises(KmeResponseError) as info:  # above max_SAE_ID_count
                master.get_key("sae-b", additional_slave_sae_ids=["sae-c", ODD_SAE_ID, "x"])
            assert info.value.status_code == 400


def test_every_answer_that_carries_keys_says_no_store(raw_a, sae_b) -> None:
    """Keys must not linger in an HTTP cache: enc_keys and dec_keys answers, by GET and
    by POST, carry ``Cache-Control: no-store``; the status answer carries no key."""
    by_get = raw_a.get(ENC, params={"number": 2, "size": 128})
    by_post = raw_a.post(ENC, json={"number": 1, "size": 128})
    key_ids = [k["key_ID"] for k in by_get.json()["keys"] + by_post.json()["keys"]]
    dec_get = sae_b._client.get("/api/v1/keys/sae-a/dec_keys", params={"key_ID": key_ids[0]})
    dec_post = sae_b._client.post("/api/v1/keys/sae-a/dec_keys",
                                  json={"key_IDs": [{"key_ID": k} for k in key_ids[1:]]})
    for response in (by_get, by_post, dec_get, dec_post):
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["pragma"] == "no-cache"


def test_kme_to_kme_sync_over_mutual_tls(dep, raw_a) -> None:
    """The sync route (withdraw, trim) takes only a peer KME's certificate and only for
    the pools that KME masters; HttpsPeerLink.sync reaches it."""
    assert raw_a.post("/kme/v1/sync", json={}).status_code == 401
    with dep.raw(KME_A, kme_id=KME_B, role="kme") as kme_a:
        foreign = kme_a.post("/kme/v1/sync", json={"withdrawn_key_ids": [], "watermarks": [
            {"link_id": "link-ab", "direction": "B->A", "below_offset": 1}]})
        assert foreign.status_code == 400 and "not the master" in foreign.json()["message"]
        malformed = kme_a.post("/kme/v1/sync", json={"withdrawn_key_ids": ["x"]})
        assert malformed.status_code == 400
    dep.managers[KME_A].sync_peer(KME_B)  # no error: B answered 200
    assert dep.managers[KME_A].peer_outage(KME_B) is None
