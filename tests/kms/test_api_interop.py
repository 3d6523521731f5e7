"""Third-party ETSI GS QKD 014 clients from PyPI against our KMEs over mutual TLS.

- ``etsi-qkd-014-client`` 0.9 (LIP6): works for status, get key (GET and POST) and get
  key with key IDs; it parses every non-200 answer as JSON, so the spec's bodiless 401
  makes it raise instead of returning (401, error).
- ``qkdsec`` 0.3: works for all three calls and handles the bodiless 401; its
  conformance probe ("doctor") expects 404 for an unknown key ID where the spec says
  400, and round-trips dec_keys with the master's own credentials at the master's KME,
  which a KME that checks the slave's identity must refuse (401).

docs/kms-api.md ("Interoperability") records the same findings.
"""

from __future__ import annotations

import base64
from urllib.parse import quote, urlsplit

import pytest
import requests

from corridor.kms.interface import MSG_KEYS_NOT_FOUND, MSG_SIZE_MULTIPLE_OF_8
from tests.kms.mtls_harness import (
    KME_A,
    KME_B,
    ODD_SAE_ID,
    fingerprint,
    fingerprints,
    two_kme_deployment,
)

etsi_client = pytest.importorskip("etsi_qkd_014_client")


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with two_kme_deployment(tmp_path_factory.mktemp("kmes")) as deployment:
        deployment.ingest(64 * 1024)
        yield deployment


def _lip6(dep, sae: str, kme: str):
    paths = dep.pki.saes[sae]
    return etsi_client.QKD014Client(urlsplit(dep.urls[kme]).netloc, str(paths.cert),
                                    str(paths.key), str(dep.pki.ca_cert))


# etsi-qkd-014-client -------------------------------------------------------------------


def test_lip6_client_status_get_key_and_get_key_with_ids(dep) -> None:
    master, slave = _lip6(dep, "sae-a", KME_A), _lip6(dep, "sae-b", KME_B)
    code, status = master.get_status("sae-b")
    assert code == 200
    assert (status.source_kme_id, status.target_kme_id) == (KME_A, KME_B)
    assert status.master_sae_id == "sae-a" and status.max_sae_id_count == 0

    code, simple = master.get_key("sae-b")  # no options: the GET form
    assert code == 200 and len(simple.keys) == 1
    assert len(base64.b64decode(simple.keys[0].key)) * 8 == status.key_size
    code, batch = master.get_key("sae-b", number=3, size=512)  # POST with a body
    assert code == 200 and len(batch.keys) == 3
    assert {len(base64.b64decode(k.key)) for k in batch.keys} == {64}

    issued = simple.keys + batch.keys
    code, got = slave.get_key_with_key_IDs("sae-a", [k.key_id for k in issued])
    assert code == 200
    assert fingerprints(got.keys) == fingerprints(issued)


def test_lip6_client_reads_our_400_error_bodies(dep) -> None:
    master, slave = _lip6(dep, "sae-a", KME_A), _lip6(dep, "sae-b", KME_B)
    code, error = master.get_key("sae-b", size=129)
    assert code == 400 and error.message == MSG_SIZE_MULTIPLE_OF_8
    code, error = slave.get_key_with_key_IDs("sae-a", ["00000000-0000-4000-8000-000000000000"])
    assert code == 400 and error.message == MSG_KEYS_NOT_FOUND


def test_lip6_client_needs_url_encoded_sae_ids(dep) -> None:
    # Its docstrings ask the caller for a URL-encoded SAE ID; given one, it works.
    master = _lip6(dep, "sae-a", KME_A)
    code, status = master.get_status(quote(ODD_SAE_ID, safe=""))
    assert code == 200 and status.slave_sae_id == ODD_SAE_ID


def test_lip6_client_deviation_bodiless_401_is_parsed_as_json(dep) -> None:
    """Deviation: it calls response.json() on every non-200 answer, and the spec's 401
    has no body, so the caller gets a JSON decoding exception, not (401, error)."""
    master = _lip6(dep, "sae-a", KME_A)
    _, container = master.get_key("sae-b")
    third = _lip6(dep, "sae-c", KME_B)
    with pytest.raises(requests.exceptions.JSONDecodeError):
        third.get_key_with_key_IDs("sae-a", [container.keys[0].key_id])
    # Our side of it: the 401 really is bodiless, and the key is still there for sae-b.
    code, got = _lip6(dep, "sae-b", KME_B).get_key_with_key_IDs(
        "sae-a", [container.keys[0].key_id])
    assert code == 200
    assert fingerprint(got.keys[0].key) == fingerprint(container.keys[0].key)


# qkdsec --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qkdsec_client():
    return pytest.importorskip("qkdsec.client")


def _qkdsec(module, dep, sae: str, kme: str):
    paths = dep.pki.saes[sae]
    return module.ETSI014Client(dep.urls[kme], client_cert=(str(paths.cert), str(paths.key)),
                                verify=str(dep.pki.ca_cert), timeout=10)


def test_qkdsec_client_all_three_calls(dep, qkdsec_client) -> None:
    with _qkdsec(qkdsec_client, dep, "sae-a", KME_A) as master, \
            _qkdsec(qkdsec_client, dep, "sae-b", KME_B) as slave:
        status = master.status("sae-b")
        assert status.source_kme_id == KME_A and status.stored_key_count > 0
        by_get = master.get_enc_keys("sae-b", number=2, size=256)
        by_post = master.get_enc_keys("sae-b", number=2, size=128, method="POST")
        assert [k.size_bits for k in by_get + by_post] == [256, 256, 128, 128]
        # qkdsec names the dec_keys path parameter "slave_sae_id"; the spec's path
        # segment is the master's SAE ID, which is what we pass.
        got = slave.get_dec_keys("sae-a", key_ids=[k.key_id for k in by_get + by_post])
        assert [fingerprint(k.key) for k in got] == [fingerprint(k.key) for k in by_get + by_post]


def test_qkdsec_client_handles_the_bodiless_401(dep, qkdsec_client) -> None:
    with _qkdsec(qkdsec_client, dep, "sae-a", KME_A) as master, \
            _qkdsec(qkdsec_client, dep, "sae-c", KME_B) as third:
        (key,) = master.get_enc_keys("sae-b", number=1)
        with pytest.raises(qkdsec_client.KMEHTTPError) as info:
            third.get_dec_keys("sae-a", key_ids=[key.key_id])
        assert info.value.status_code == 401 and info.value.message == ""


def test_qkdsec_doctor_probe_findings(dep, qkdsec_client) -> None:
    probes = pytest.importorskip("qkdsec.doctor.probes")
    with _qkdsec(qkdsec_client, dep, "sae-a", KME_A) as master:
        report = probes.run_all(master, "sae-b", latency_samples=2)
    outcome = {r.name: r.status.value for r in report.results}
    # What it checks and we meet.
    for name in ("reachability", "status_fields", "enc_keys_get", "enc_keys_post",
                 "enc_keys_caps", "extensions_accepted", "error_contract_400"):
        assert outcome[name] == "pass", (name, outcome)
    # Deviation 1: it expects 404 for an unknown key ID; the spec (and we) answer 400.
    assert outcome["error_contract_404"] == "warn"
    # Deviation 2: it fetches the key by ID as the master SAE at the master's KME; only a
    # slave named on the key may, at its own KME, so we answer 401.
    assert outcome["dec_keys_roundtrip"] == "fail"
