"""Mutual TLS serving: required client certificates, and the verified certificate in the
ASGI scope of every request on its own connection only."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from corridor.errors import ParameterError
from corridor.kms.pki import ROLE_KME, ROLE_SAE, Identity, identity_from_pem, init_pki
from corridor.kms.tls import (
    bind_socket,
    client_ssl_context,
    running_server,
    server_ssl_context,
)


async def echo_tls_app(scope, receive, send) -> None:
    """Answers with what the server put into the TLS extension (public values only)."""
    assert scope["type"] == "http"
    tls = scope.get("extensions", {}).get("tls")
    body = json.dumps({
        "chain": tls["client_cert_chain"] if tls else None,
        "tls_version": tls["tls_version"] if tls else None,
        "client": list(scope["client"]),
    }).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("pki"), ["kme-a", "kme-b"],
                    [("sae-a", "kme-a"), ("sae-b", "kme-a")])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("other"), ["kme-a"], [("sae-a", "kme-a")])


@pytest.fixture(scope="module")
def server(pki):
    kme = pki.kmes["kme-a"]
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert) as running:
        yield running


def _client(pki, sae: str, expected: Identity | None = None) -> httpx.Client:
    paths = pki.saes[sae]
    return httpx.Client(verify=client_ssl_context(paths.cert, paths.key, pki.ca_cert, expected))


def _der(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def test_each_request_sees_the_verified_certificate_of_its_own_connection(pki, server) -> None:
    with _client(pki, "sae-a") as a, _client(pki, "sae-b") as b:
        for _ in range(3):  # keep-alive: several requests per connection
            seen_a = a.get(server.url + "/").json()
            seen_b = b.get(server.url + "/").json()
            assert identity_from_pem(seen_a["chain"][0]) == Identity(ROLE_SAE, "sae-a")
            assert identity_from_pem(seen_b["chain"][0]) == Identity(ROLE_SAE, "sae-b")
            assert ssl.PEM_cert_to_DER_cert(seen_a["chain"][0]) == _der(pki.saes["sae-a"].cert)
            assert seen_a["tls_version"] in (0x0303, 0x0304)
        assert seen_a["client"] != seen_b["client"]


def test_connection_without_client_certificate_reaches_http_with_an_empty_chain(
        pki, server) -> None:
    # CERT_OPTIONAL: the handshake completes so that the caller gets an HTTP answer; the
    # application sees no certificate and refuses (corridor.kms.api, test_api_conformance).
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    with httpx.Client(verify=context) as client:
        seen = client.get(server.url + "/").json()
    assert seen["chain"] == []


def test_certificate_from_another_ca_is_refused(pki, other_pki, server) -> None:
    paths = other_pki.saes["sae-a"]
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    context.load_cert_chain(paths.cert, paths.key)
    with pytest.raises(httpx.TransportError), httpx.Client(verify=context) as client:
        client.get(server.url + "/")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_tls_below_1_2_is_refused(pki, server) -> None:
    paths = pki.saes["sae-a"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.ca_cert)
    context.load_cert_chain(paths.cert, paths.key)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection((server.host, server.port), timeout=5) as raw, \
            pytest.raises(ssl.SSLError):
        context.wrap_socket(raw, server_hostname="localhost")


def test_plain_http_gets_no_answer(server) -> None:
    with socket.create_connection((server.host, server.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = raw.recv(4096)
    assert b"HTTP/1.1 200" not in reply


def test_client_checks_the_server_identity_before_sending(pki, server) -> None:
    with _client(pki, "sae-a", Identity(ROLE_KME, "kme-a")) as good:
        assert good.get(server.url + "/").status_code == 200
    with _client(pki, "sae-a", Identity(ROLE_KME, "kme-b")) as wrong, \
            pytest.raises(httpx.ConnectError, match="not the expected"):
        wrong.get(server.url + "/")


def test_server_context_settings(pki) -> None:
    kme = pki.kmes["kme-a"]
    context = server_ssl_context(kme.cert, kme.key, pki.ca_cert)
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert len(context.get_ca_certs()) == 1
    with pytest.raises(ParameterError, match="ca"):
        server_ssl_context(kme.cert, kme.key, pki.root / "missing.pem")


def test_bound_socket_gives_the_port_before_the_server_starts(pki) -> None:
    kme = pki.kmes["kme-a"]
    sock = bind_socket()
    # asyncio sets TCP_NODELAY on accepted connections only for IPPROTO_TCP listeners.
    assert sock.proto == socket.IPPROTO_TCP
    port = sock.getsockname()[1]
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert, sock=sock) as running:
        assert running.port == port
        with _client(pki, "sae-a") as client:
            assert client.get(running.url + "/").status_code == 200
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_server_stops_promptly_while_a_client_holds_an_idle_connection(pki) -> None:
    kme = pki.kmes["kme-a"]
    # running_server raises if its thread is still alive 15 s after the stop request; a
    # TLS close waiting for this idle client's close_notify would take 30 s.
    with _client(pki, "sae-a") as idle, \
            running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert) as running:
        assert idle.get(running.url + "/").status_code == 200


@pytest.mark.parametrize("host", ["999.1.1.1", "192.0.2.77"])
def test_a_host_that_is_not_this_machine_s_is_named_not_the_port(host: str) -> None:
    """No such name, or an address this machine does not hold: ``--host`` is wrong, and
    the error says so (it said "port = 0: a free port")."""
    with pytest.raises(ParameterError) as info:
        bind_socket(host, 0)
    assert info.value.field == "host" and info.value.value == host


def test_a_port_in_use_is_named_as_the_port() -> None:
    taken = bind_socket("127.0.0.1", 0)
    taken.listen()
    try:
        with pytest.raises(ParameterError) as info:
            bind_socket("127.0.0.1", taken.getsockname()[1])
        assert info.value.field == "port"
    finally:
        taken.close()
