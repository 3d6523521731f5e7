"""schemathesis against the OpenAPI document the KME serves, over real mutual TLS: no
5xx for any generated request, and every response matches the documented schema,
status codes and content type. Bounded: a fixed number of examples per operation."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.kms.mtls_harness import KME_A, KME_B, OPERATOR, two_kme_deployment

MAX_EXAMPLES = 60
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance,
          content_type_conformance]


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with two_kme_deployment(tmp_path_factory.mktemp("kmes")) as deployment:
        deployment.ingest(512 * 1024)
        yield deployment


@pytest.fixture(scope="module")
def sessions(dep):
    """requests sessions with an SAE certificate and with the peer KME's certificate."""
    made = {}
    for name, paths in (("sae", dep.pki.saes["sae-a"]), ("kme", dep.pki.kmes[KME_B]),
                        ("operator", dep.pki.operators[OPERATOR])):
        session = requests.Session()
        # Otherwise REQUESTS_CA_BUNDLE from the environment silently replaces session.verify.
        session.trust_env = False
        session.cert = (str(paths.cert), str(paths.key))
        session.verify = str(dep.pki.ca_cert)
        made[name] = session
    yield made
    for session in made.values():
        session.close()


@pytest.fixture(scope="module")
def kme_schema(dep, sessions):
    document = sessions["operator"].get(dep.urls[KME_A] + "/openapi.json", timeout=10).json()
    return schemathesis.openapi.from_dict(document)


# schemathesis.pytest.from_fixture needs a pytest attribute that pytest 9 removed, so each
# documented operation is driven through its hypothesis strategy directly.
OPERATIONS = [
    ("GET", "/api/v1/keys/{slave_SAE_ID}/status"),
    ("GET", "/api/v1/keys/{slave_SAE_ID}/enc_keys"),
    ("POST", "/api/v1/keys/{slave_SAE_ID}/enc_keys"),
    ("GET", "/api/v1/keys/{master_SAE_ID}/dec_keys"),
    ("POST", "/api/v1/keys/{master_SAE_ID}/dec_keys"),
    ("POST", "/kme/v1/reservations"),
    ("POST", "/kme/v1/sync"),
]


def test_every_operation_is_covered(kme_schema) -> None:
    served = {(op.ok().method.upper(), op.ok().path) for op in kme_schema.get_all_operations()}
    assert served == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_generated_requests_get_documented_answers(kme_schema, dep, sessions, method,
                                                   path) -> None:
    operation = kme_schema[path][method]
    # The KME-to-KME routes are for KMEs: call them with the peer KME's certificate so the
    # generated bodies reach the validation behind the identity check.
    session = sessions["kme" if path.startswith("/kme/") else "sae"]
    statuses = set()

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        # schemathesis passes its own verify=True unless told: name the CA and cert here.
        response = case.call(base_url=dep.urls[KME_A], session=session, timeout=10,
                             verify=session.verify, cert=session.cert)
        case.validate_response(response, checks=CHECKS)
        assert response.status_code in (200, 400, 401, 503)
        if response.status_code == 401:
            assert response.content == b""
        statuses.add(response.status_code)

    check()
    assert statuses, "no request was made"
