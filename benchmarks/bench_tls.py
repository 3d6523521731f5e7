"""TLS handshake cost of a KME listener: hybrid post-quantum (X25519MLKEM768) against
classical (X25519), and the listener on pyOpenSSL against the one on Python's ssl.

Two KME-like servers on 127.0.0.1 (:func:`corridor.kms.tls.running_server`, a trivial
ASGI application), one per listener kind; the clients run in this process, one
handshake at a time, the variants interleaved round-robin. The figure is the latency
of one handshake, both ends' CPU included, since both run on this machine. Each
handshake is a fresh TCP connection, a full mutual-TLS 1.3 handshake with the SAE
certificate (no resumption), then one ``GET /`` and close, so that the server's side
(certificate check, HTTP protocol) completes.

Variants:

- ``pq``: pyOpenSSL client, default groups (X25519MLKEM768 first) -> server on
  pyOpenSSL with ``tls_groups`` default; negotiates X25519MLKEM768.
- ``x25519-openssl4``: the same client limited to X25519 -> same server; isolates the
  cost of the ML-KEM part on the same code path.
- ``classical-client``: Python's ssl client (system OpenSSL, what SaeClient, curl and
  the ETSI 014 clients use) -> the same pyOpenSSL server; negotiates X25519.
- ``stdlib-server``: Python's ssl client -> server on Python's ssl (``tls_groups``
  None, the listener before post-quantum TLS); negotiates X25519.

Then the KME-to-KME link: ``HttpsPeerLink.announce`` of one reservation, repeated on
its keep-alive connection, to a server that accepts everything, with the link on
pyOpenSSL (``tls_groups`` default, X25519MLKEM768) and on Python's ssl (``None``): the
per-call cost of the record layer in Python, both ends' CPU included.

    .venv/bin/python benchmarks/bench_tls.py [--handshakes 300] [--announcements 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib as _lib

from corridor.kms.api import HttpsPeerLink
from corridor.kms.interface import Reservation
from corridor.kms.limits import ConnectionLimits
from corridor.kms.pki import init_pki
from corridor.kms.tls import client_ssl_context, running_server
from corridor.kms.tls_openssl import DEFAULT_TLS_GROUPS

REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def accepting_peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Accepts every announcement (counts the key IDs of its runs)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    answer = json.dumps({"accepted": sum(len(run["key_ids"])
                                         for run in json.loads(body)["runs"])}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(len(answer)).encode())]})
    await send({"type": "http.response.body", "body": answer})


def bench_peer_link(pki: Any, count: int) -> None:
    """Announcements per second on one keep-alive connection, per TLS stack."""
    server_paths, own = pki.kmes["kme-b"], pki.kmes["kme-a"]
    reservation = [Reservation(str(uuid.uuid4()), "link-ab", "A->B", 0, 32, "sae-a",
                               ("sae-b",))]
    print(f"HttpsPeerLink.announce, 1 reservation, {count} calls on one connection")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(running_server(
            accepting_peer, server_paths.cert, server_paths.key, pki.ca_cert)).url
        links = {name: HttpsPeerLink(url, cert=own.cert, key=own.key, ca=pki.ca_cert,
                                     peer_kme_id="kme-b", tls_groups=groups)
                 for name, groups in (("pyOpenSSL (X25519MLKEM768)", DEFAULT_TLS_GROUPS),
                                      ("Python ssl (x25519)", None))}
        for link in links.values():
            stack.callback(link.close)
            link.announce(reservation)  # the handshake, not timed
        times_ms: dict[str, list[float]] = {name: [] for name in links}
        for _ in range(count):
            for name, link in links.items():
                start = time.perf_counter()
                link.announce(reservation)
                times_ms[name].append(1e3 * (time.perf_counter() - start))
    for name, timings in times_ms.items():
        print(f"  {name:<28} median {statistics.median(timings):.3f} ms, "
              f"mean {statistics.fmean(timings):.3f} ms per call")


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers ``ok`` to every request."""
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _drain(recv: Callable[[int], bytes], closed: type[BaseException]) -> None:
    while True:
        try:
            if not recv(65536):
                return
        except closed:
            return


def openssl_client(paths: Any, ca: str, groups: str | None) -> Callable[[int], str]:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.load_verify_locations(ca)
    context.set_verify(SSL.VERIFY_PEER)
    context.use_certificate_chain_file(str(paths.cert))
    context.use_privatekey_file(str(paths.key))
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if groups is not None:
        assert _lib.SSL_CTX_set1_curves_list(context._context, groups.encode()) == 1

    def handshake(port: int) -> str:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = SSL.Connection(context, sock)
            connection.set_connect_state()
            connection.do_handshake()
            group = connection.get_group_name()
            connection.sendall(REQUEST)
            _drain(connection.recv, SSL.ZeroReturnError)
        return str(group)
    return handshake


def stdlib_client(paths: Any, ca: str) -> Callable[[int], str]:
    context = client_ssl_context(paths.cert, paths.key, ca)

    def handshake(port: int) -> str:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
                tls.sendall(REQUEST)
                _drain(tls.recv, ssl.SSLZeroReturnError)
        return "x25519 (system OpenSSL)"
    return handshake


def measure(cases: list[tuple[Callable[[int], str], int]], count: int
            ) -> list[tuple[str, list[float]]]:
    """``count`` timed handshakes per (client, port), interleaved round-robin so that
    the load of a shared machine drifts over every variant alike."""
    groups = [client(port) for client, port in cases]  # warm-up, and the groups
    times_ms: list[list[float]] = [[] for _ in cases]
    for _ in range(count):
        for (client, port), timings in zip(cases, times_ms, strict=True):
            start = time.perf_counter()
            client(port)
            timings.append(1e3 * (time.perf_counter() - start))
    return list(zip(groups, times_ms, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--handshakes", type=int, default=300)
    parser.add_argument("--announcements", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(tmp, ["kme-a", "kme-b"], [("sae-a", "kme-a")])
        kme, sae, ca = pki.kmes["kme-a"], pki.saes["sae-a"], str(pki.ca_cert)
        cases = [
            ("pq", DEFAULT_TLS_GROUPS, openssl_client(sae, ca, None)),
            ("x25519-openssl4", DEFAULT_TLS_GROUPS, openssl_client(sae, ca, "X25519")),
            ("classical-client", DEFAULT_TLS_GROUPS, stdlib_client(sae, ca)),
            ("stdlib-server", None, stdlib_client(sae, ca)),
        ]
        print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; "
              f"{args.handshakes} handshakes + GET each, one at a time")
        print(f"{'variant':<18} {'group':<24} {'median ms':>10} {'mean ms':>9} {'p90 ms':>8}")
        medians = {}
        with contextlib.ExitStack() as stack:
            ports = {tls_groups: stack.enter_context(running_server(
                hello_app, kme.cert, kme.key, ca,
                limits=ConnectionLimits(tls_groups=tls_groups))).port
                     for tls_groups in (DEFAULT_TLS_GROUPS, None)}
            results = measure([(client, ports[groups]) for _, groups, client in cases],
                              args.handshakes)
        for (name, _, _), (group, times_ms) in zip(cases, results, strict=True):
            medians[name] = statistics.median(times_ms)
            p90 = statistics.quantiles(times_ms, n=10)[-1]
            print(f"{name:<18} {group:<24} {medians[name]:>10.3f} "
                  f"{statistics.fmean(times_ms):>9.3f} {p90:>8.3f}")
        print(f"ML-KEM cost (pq - x25519-openssl4): "
              f"{medians['pq'] - medians['x25519-openssl4']:+.3f} ms per handshake; "
              f"pyOpenSSL listener vs Python's ssl (classical client): "
              f"{medians['classical-client'] - medians['stdlib-server']:+.3f} ms")
        bench_peer_link(pki, args.announcements)


if __name__ == "__main__":
    main()
