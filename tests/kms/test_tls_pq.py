"""Hybrid post-quantum TLS on the KME listeners, over real sockets: which key-exchange
group each client negotiates (a pyOpenSSL client on OpenSSL 4: X25519MLKEM768; httpx,
curl and the ETSI 014 clients on the system OpenSSL: X25519), that every one of them
still gets keys, and the ``tls_groups`` setting."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from OpenSSL import SSL

from corridor.errors import ParameterError
from corridor.kms.api import HttpsPeerLink
from corridor.kms.interface import KeysUnavailableError, Reservation
from corridor.kms.limits import ConnectionLimits, RefusalReporter
from corridor.kms.node import Corridor, parse_corridor
from corridor.kms.pki import identity_from_pem, init_pki
from corridor.kms.tls import client_ssl_context, running_server
from corridor.kms.tls_openssl import (
    DEFAULT_TLS_GROUPS,
    OpenSSLServerProtocol,
    check_tls_groups,
)

from .test_node import _spec_data, keys_dir  # noqa: F401  (fixture)
from .test_tls import echo_tls_app

PQ_GROUP = "X25519MLKEM768"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("pki"), ["kme-a"], [("sae-a", "kme-a")])


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("other"), ["kme-a"], [("sae-a", "kme-a")])


def pq_get(url: str, path: str, ca: Path, cert: Path | None = None,
           key: Path | None = None) -> tuple[str, int, dict[str, Any]]:
    """GET ``path`` with a pyOpenSSL client (OpenSSL 4, default groups: X25519MLKEM768
    first); returns (negotiated group, HTTP status, JSON body)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(str(ca))
    context.set_verify(SSL.VERIFY_PEER)
    if cert is not None and key is not None:
        context.use_certificate_chain_file(str(cert))
        context.use_privatekey_file(str(key))
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.setblocking(True)  # pyOpenSSL raises WantReadError on a socket timeout
        connection = SSL.Connection(context, sock)
        connection.set_connect_state()
        connection.set_tlsext_host_name(host.encode())
        connection.do_handshake()
        group = connection.get_group_name()
        connection.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                           "Connection: close\r\n\r\n".encode())
        response = b""
        while True:
            try:
                chunk = connection.recv(65536)
            except SSL.ZeroReturnError:
                break
            if not chunk:
                break
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _dechunk(body)
    return group, status, json.loads(body) if body else {}


def _dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2:]


def _recording() -> tuple[list[str], Any]:
    groups: list[str] = []
    lock = threading.Lock()

    def record(group: str) -> None:
        with lock:
            groups.append(group)
    return groups, record


def test_pq_client_gets_the_hybrid_group_and_the_certificate_in_the_scope(pki) -> None:
    kme, sae = pki.kmes["kme-a"], pki.saes["sae-a"]
    groups, record = _recording()
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert,
                        on_handshake=record) as server:
        group, status, body = pq_get(server.url, "/", pki.ca_cert, sae.cert, sae.key)
        assert (group, status, body["tls_version"]) == (PQ_GROUP, 200, 0x0304)
        [pem] = body["chain"]
        assert identity_from_pem(pem).entity_id == "sae-a"
        # Without a certificate the handshake completes and the application sees an
        # empty chain (it answers 401 there); the exchange is still hybrid.
        group, status, body = pq_get(server.url, "/", pki.ca_cert)
        assert (group, status, body["chain"]) == (PQ_GROUP, 200, [])
        # A classical client (Python's ssl on the system OpenSSL) on the same listener.
        context = client_ssl_context(sae.cert, sae.key, pki.ca_cert)
        with httpx.Client(verify=context) as http:
            answer = http.get(server.url + "/").json()
        assert identity_from_pem(answer["chain"][0]).entity_id == "sae-a"
    assert groups == [PQ_GROUP, PQ_GROUP, "x25519"]


def test_a_certificate_of_another_ca_fails_the_handshake(pki, other_pki) -> None:
    kme, stranger = pki.kmes["kme-a"], other_pki.saes["sae-a"]
    groups, record = _recording()
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert,
                        on_handshake=record) as server, pytest.raises(SSL.Error):
        pq_get(server.url, "/", pki.ca_cert, stranger.cert, stranger.key)
    assert groups == []


@pytest.mark.parametrize(("tls_groups", "expected"), [
    ("X25519", "x25519"),
    ("secp256r1", "secp256r1"),  # not in the key shares the client sent first: a retry
    (None, "x25519"),  # Python's ssl module: the system OpenSSL, no ML-KEM
])
def test_tls_groups_decides_what_the_listener_negotiates(pki, tls_groups, expected) -> None:
    kme, sae = pki.kmes["kme-a"], pki.saes["sae-a"]
    limits = ConnectionLimits(tls_groups=tls_groups)
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert,
                        limits=limits) as server:
        group, status, body = pq_get(server.url, "/", pki.ca_cert, sae.cert, sae.key)
    assert (group, status, len(body["chain"])) == (expected, 200, 1)


def test_a_listener_without_classical_groups_refuses_classical_clients(pki) -> None:
    kme, sae = pki.kmes["kme-a"], pki.saes["sae-a"]
    limits = ConnectionLimits(tls_groups=PQ_GROUP)
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert,
                        limits=limits) as server:
        context = client_ssl_context(sae.cert, sae.key, pki.ca_cert)
        with httpx.Client(verify=context) as http, pytest.raises(httpx.ConnectError):
            http.get(server.url + "/")
        assert pq_get(server.url, "/", pki.ca_cert, sae.cert, sae.key)[0] == PQ_GROUP


@pytest.mark.parametrize("bad", ["", "X25519 MLKEM", "X25519:NoSuchGroup", 25519, None])
def test_bad_tls_groups_name_the_setting(bad) -> None:
    with pytest.raises(ParameterError) as excinfo:
        check_tls_groups(bad)
    assert excinfo.value.field == "tls_groups"
    assert DEFAULT_TLS_GROUPS in str(excinfo.value)


def test_tls_groups_in_the_corridor_file() -> None:
    data = _spec_data()
    data["kme"]["tls_groups"] = "X25519"
    data["kmes"][1]["tls_groups"] = DEFAULT_TLS_GROUPS
    spec = parse_corridor(data)
    assert spec.kmes["kme-a"].limits.tls_groups == "X25519"
    assert spec.kmes["kme-b"].limits.tls_groups == DEFAULT_TLS_GROUPS
    data["kmes"][0]["tls_groups"] = "X25519:kyber"
    with pytest.raises(ParameterError) as excinfo:
        parse_corridor(data)
    assert excinfo.value.field == "kmes.kme-a.tls_groups"
    assert "has no group 'kyber'" in str(excinfo.value)


@pytest.mark.timeout(120)
def test_every_client_gets_keys_and_operators_see_the_groups(
        tmp_path: Path, keys_dir: Path) -> None:  # noqa: F811
    spec = parse_corridor(_spec_data(keys_dir))
    assert spec.kmes["kme-a"].limits.tls_groups == DEFAULT_TLS_GROUPS  # on by default
    with Corridor(spec, tmp_path / "run", host="127.0.0.1") as corridor:
        pki = corridor.pki
        assert pki is not None
        sae = pki.saes["sae-a"]
        url = corridor.nodes["kme-a"].url or ""
        context = client_ssl_context(sae.cert, sae.key, pki.ca_cert)
        # httpx on Python's ssl: the SaeClient's stack, classical.
        with httpx.Client(verify=context, base_url=url) as http:
            deadline = time.monotonic() + 30.0
            while http.get("/api/v1/keys/sae-b/status").json()["stored_key_count"] < 4:
                assert time.monotonic() < deadline, "no key reached the pool in time"
                time.sleep(0.1)
            by_httpx = http.get("/api/v1/keys/sae-b/enc_keys").json()["keys"]
        group, code, by_pq = pq_get(url, "/api/v1/keys/sae-b/enc_keys", pki.ca_cert,
                                    sae.cert, sae.key)
        assert (group, code, len(by_pq["keys"])) == (PQ_GROUP, 200, 1)
        # No certificate: a hybrid handshake, then the application's 401.
        assert pq_get(url, "/api/v1/keys/sae-b/enc_keys", pki.ca_cert)[:2] == (PQ_GROUP, 401)
        keys = [by_httpx[0]["key_ID"], by_pq["keys"][0]["key_ID"]]
        if shutil.which("curl") is not None:
            result = subprocess.run(
                ["curl", "--silent", "--show-error", "--fail", "--cert", str(sae.cert),
                 "--key", str(sae.key), "--cacert", str(pki.ca_cert),
                 f"{url}/api/v1/keys/sae-b/enc_keys"],
                capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
            keys.append(json.loads(result.stdout)["keys"][0]["key_ID"])
        assert len(set(keys)) == len(keys)
        registry = corridor.nodes["kme-a"].metrics.registry

        def handshakes(group: str) -> float:
            value = registry.get_sample_value("corridor_tls_handshakes_total",
                                              {"kme_id": "kme-a", "group": group})
            return value or 0.0
        assert handshakes(PQ_GROUP) >= 2  # pq_get twice (and kme-b's peer link, if used)
        assert handshakes("x25519") == 1 + (len(keys) == 3)  # httpx and curl, nobody else


class AcceptingPeer:
    """An ASGI stand-in for a peer KME: accepts every announcement, records who sent it
    (the KME identity of the client certificate) and how large it was."""

    def __init__(self) -> None:
        self.callers: list[str] = []

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        chain = scope["extensions"]["tls"]["client_cert_chain"]
        self.callers.append(identity_from_pem(chain[0]).entity_id if chain else "")
        accepted = sum(len(run["key_ids"]) for run in json.loads(body)["runs"])
        answer = json.dumps({"accepted": accepted}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


def _reservations(count: int) -> list[Reservation]:
    return [Reservation(str(uuid.uuid4()), "link-ab", "A->B", 32 * i, 32, "sae-a", ("sae-b",))
            for i in range(count)]


@pytest.fixture(scope="module")
def kme_pki(tmp_path_factory):
    return init_pki(tmp_path_factory.mktemp("kmes"), ["kme-a", "kme-b"], [("sae-a", "kme-a")])


@pytest.mark.parametrize(("tls_groups", "expected"), [
    (DEFAULT_TLS_GROUPS, PQ_GROUP), (None, "x25519")])
def test_the_peer_link_negotiates_the_hybrid_group_and_reuses_its_connection(
        kme_pki, tls_groups, expected) -> None:
    server_paths, own = kme_pki.kmes["kme-b"], kme_pki.kmes["kme-a"]
    peer, (groups, record) = AcceptingPeer(), _recording()
    with running_server(peer, server_paths.cert, server_paths.key, kme_pki.ca_cert,
                        on_handshake=record) as server:
        link = HttpsPeerLink(server.url, cert=own.cert, key=own.key, ca=kme_pki.ca_cert,
                             peer_kme_id="kme-b", tls_groups=tls_groups)
        try:
            link.announce(_reservations(3))
            link.announce(_reservations(2000))  # a body of many TLS records
            link.announce(_reservations(1))
        finally:
            link.close()
    assert peer.callers == ["kme-a"] * 3
    assert groups == [expected]  # one handshake, a keep-alive connection after it


def test_the_peer_link_sends_nothing_to_a_server_of_another_identity_or_host(
        kme_pki) -> None:
    server_paths, own = kme_pki.kmes["kme-b"], kme_pki.kmes["kme-a"]
    peer = AcceptingPeer()
    with running_server(peer, server_paths.cert, server_paths.key, kme_pki.ca_cert) as server:
        # kme-b's certificate where kme-a was expected.
        link = HttpsPeerLink(server.url, cert=own.cert, key=own.key, ca=kme_pki.ca_cert,
                             peer_kme_id="kme-a")
        try:
            with pytest.raises(KeysUnavailableError) as excinfo:
                link.announce(_reservations(1))
        finally:
            link.close()
        assert excinfo.value.details[0]["reason"] == "SSLCertVerificationError"
    # The same certificate on an address it does not name (it names 127.0.0.1 only).
    with running_server(peer, server_paths.cert, server_paths.key, kme_pki.ca_cert,
                        host="127.0.0.2") as server:
        link = HttpsPeerLink(server.url, cert=own.cert, key=own.key, ca=kme_pki.ca_cert,
                             peer_kme_id="kme-b")
        try:
            with pytest.raises(KeysUnavailableError) as excinfo:
                link.announce(_reservations(1))
        finally:
            link.close()
        assert excinfo.value.details[0]["reason"] == "SSLError"  # the host name
    assert peer.callers == []


def test_the_peer_link_times_out_on_a_silent_peer(kme_pki) -> None:
    own = kme_pki.kmes["kme-a"]
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers the hello
    try:
        port = silent.getsockname()[1]
        link = HttpsPeerLink(f"https://127.0.0.1:{port}", cert=own.cert, key=own.key,
                             ca=kme_pki.ca_cert, peer_kme_id="kme-b", timeout_s=0.5)
        start = time.monotonic()
        try:
            with pytest.raises(KeysUnavailableError) as excinfo:
                link.announce(_reservations(1))
        finally:
            link.close()
        assert time.monotonic() - start < 5.0
        assert excinfo.value.details[0]["reason"] == "TimeoutError"
    finally:
        silent.close()


BIG_BYTES = 6 * 1024 * 1024


async def big_echo_app(scope, receive, send) -> None:
    """Reads the whole request body, answers with BIG_BYTES in 64 KiB chunks followed by
    the request body's length."""
    received = 0
    while True:
        message = await receive()
        received += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(BIG_BYTES + 12).encode())]})
    chunk = b"k" * 65536
    for _ in range(BIG_BYTES // len(chunk)):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b"%012d" % received})


def test_large_bodies_and_a_slow_reader_pass_through_flow_control(pki, monkeypatch) -> None:
    kme, sae = pki.kmes["kme-a"], pki.saes["sae-a"]
    pauses: list[str] = []
    for name in ("pause_writing", "resume_writing"):
        original = getattr(OpenSSLServerProtocol, name)

        def recording(self, _original=original, _name=name) -> None:
            pauses.append(_name)
            _original(self)
        monkeypatch.setattr(OpenSSLServerProtocol, name, recording)
    upload = os.urandom(3 * 1024 * 1024)
    with running_server(big_echo_app, kme.cert, kme.key, pki.ca_cert) as server:
        # A reader with a small receive buffer that waits before reading: the server's
        # socket buffer fills and uvicorn is told to stop writing, then to go on.
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(str(pki.ca_cert))
        context.use_certificate_chain_file(str(sae.cert))
        context.use_privatekey_file(str(sae.key))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.connect(("127.0.0.1", server.port))
        with sock:
            connection = SSL.Connection(context, sock)
            connection.set_connect_state()
            connection.do_handshake()
            connection.sendall(b"POST / HTTP/1.1\r\nHost: kme\r\nContent-Length: 1\r\n\r\nx")
            time.sleep(0.5)
            response = b""
            while not response.endswith(b"%012d" % 1):
                response += connection.recv(65536)
        assert len(response.partition(b"\r\n\r\n")[2]) == BIG_BYTES + 12
        assert pauses[:2] == ["pause_writing", "resume_writing"]
        # Both directions large through httpx (Python's ssl), on a keep-alive connection.
        client_context = client_ssl_context(sae.cert, sae.key, pki.ca_cert)
        with httpx.Client(verify=client_context, timeout=30) as http:
            received = http.post(server.url + "/", content=upload).content
            assert len(received) == BIG_BYTES + 12
            assert int(received[-12:]) == len(upload)
            assert received[:BIG_BYTES] == b"k" * BIG_BYTES
            assert http.post(server.url + "/", content=b"x").content[-12:] == b"%012d" % 1


def test_garbage_and_broken_handshakes_are_counted_and_do_not_disturb_the_server(pki) -> None:
    kme, sae = pki.kmes["kme-a"], pki.saes["sae-a"]
    refused: list[str] = []
    reporter = RefusalReporter("kme-a", count=refused.append)
    with running_server(echo_tls_app, kme.cert, kme.key, pki.ca_cert,
                        reporter=reporter) as server:
        # Random bytes after a first byte that is no TLS record type: random junk that
        # began with 0x16 (1 run in 256) looked like a record to wait for and was
        # counted as a handshake timeout, not a failure.
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" + os.urandom(4095),
                     b"\x16\x03\x01\x00\x05hello", b"\x16\x03\x01\xff\xff" + b"\x00" * 70000):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock, \
                    contextlib.suppress(OSError):
                sock.sendall(junk)
                while sock.recv(65536):  # the alert, then the server's close
                    pass
        # A client that leaves in the middle of its handshake.
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            connection = SSL.Connection(context, sock)
            connection.set_connect_state()
            with contextlib.suppress(SSL.WantReadError, SSL.Error):
                connection.do_handshake()  # sends the ClientHello, leaves
        group, status, body = pq_get(server.url, "/", pki.ca_cert, sae.cert, sae.key)
        assert (group, status, len(body["chain"])) == (PQ_GROUP, 200, 1)
        deadline = time.monotonic() + 5
        while len(refused) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert refused == ["handshake_failed"] * 5
