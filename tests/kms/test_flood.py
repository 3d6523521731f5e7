"""A bounded connection flood on 127.0.0.1 against one KME of a running two-KME corridor.

Idle TCP sockets, half-sent TLS handshakes and authenticated connections that never
finish their request headers, each about twice the KME's connection cap: the other KME
keeps serving keys, the attacked one serves a legitimate SAE during and after the flood,
every refusal is counted and logged (a bounded number of lines), and the server closes
what it left open after the handshake and header timeouts. Every socket the test opens
is closed at the end; the whole test stops by itself in well under a minute.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from corridor.kms.client import SaeClient
from corridor.kms.node import Corridor, parse_corridor
from corridor.kms.tls import client_ssl_context

CAP = 48
HANDSHAKE_TIMEOUT_S = 1.0
HEADER_TIMEOUT_S = 3.0  # longer than opening CAP TLS connections takes on a loaded machine

pytestmark = pytest.mark.slow


def _spec(keys_dir: Path) -> Any:
    return parse_corridor({
        "name": "flood",
        "kme": {"max_key_count": 10_000, "max_connections": CAP,
                "tls_handshake_timeout_s": HANDSHAKE_TIMEOUT_S,
                "header_timeout_s": HEADER_TIMEOUT_S, "keep_alive_s": 5},
        "kmes": [{"id": "kme-a"}, {"id": "kme-b"}],
        "links": [{"id": "link-ab", "alice_kme": "kme-a", "bob_kme": "kme-b",
                   "source": "recorded", "keys_dir": str(keys_dir), "block_bytes": 1024}],
        "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}]})


@pytest.fixture
def corridor(tmp_path: Path) -> Iterator[Corridor]:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    data = os.urandom(400 * 1024)
    (keys_dir / "alice.bin").write_bytes(data)
    (keys_dir / "bob.bin").write_bytes(data)
    with Corridor(_spec(keys_dir), tmp_path / "run", host="127.0.0.1") as running:
        yield running


def _refused(corridor: Corridor, kme: str, reason: str) -> float:
    value = corridor.nodes[kme].metrics.registry.get_sample_value(
        "corridor_connections_refused_total", {"kme_id": kme, "reason": reason})
    return value or 0.0


def _address(corridor: Corridor, kme: str) -> tuple[str, int]:
    url = corridor.nodes[kme].url or ""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def _open(stack: ExitStack, address: tuple[str, int], payload: bytes = b"") -> socket.socket:
    """A connected socket, possibly already reset by the server (counted as ``limit``)."""
    sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.settimeout(5)
    try:
        sock.connect(address)
        if payload:
            sock.sendall(payload)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return sock


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _timed_key(client: SaeClient, slave: str) -> float:
    start = time.monotonic()
    keys = client.get_key(slave, number=1)
    assert len(keys) == 1 and len(keys[0].key) == 32
    return time.monotonic() - start


def test_flood_on_one_kme(corridor: Corridor, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="corridor.kms.limits")
    pki = corridor.pki
    assert pki is not None
    address = _address(corridor, "kme-a")
    guard = corridor.nodes["kme-a"]
    sae_a = SaeClient(guard.url or "", pki.saes["sae-a"].cert, pki.saes["sae-a"].key,
                      pki.ca_cert, expected_kme_id="kme-a")
    sae_b = SaeClient(corridor.nodes["kme-b"].url or "", pki.saes["sae-b"].cert,
                      pki.saes["sae-b"].key, pki.ca_cert, expected_kme_id="kme-b")
    latencies: dict[str, float] = {}
    with sae_a, sae_b:
        deadline = time.monotonic() + 30
        while sae_a.status("sae-b").stored_key_count < 50 or \
                sae_b.status("sae-a").stored_key_count < 50:
            assert time.monotonic() < deadline, "no key material in time"
            time.sleep(0.05)
        sae_a.close()  # its pooled connection would count against the cap

        with ExitStack() as stack:
            # 1. Twice the cap of idle TCP sockets: the oldest are evicted to make room.
            idle = [_open(stack, address) for _ in range(2 * CAP)]
            # 2. Twice the cap of half-sent TLS handshakes (a record header and a few
            #    bytes of a ClientHello that claims 512).
            half = [_open(stack, address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
                    for _ in range(2 * CAP)]
            # The other KME serves meanwhile, and so does the attacked one: a fresh
            # handshake evicts the oldest unfinished one.
            latencies["other_kme_during"] = _timed_key(sae_b, "sae-a")
            with SaeClient(guard.url or "", pki.saes["sae-a"].cert, pki.saes["sae-a"].key,
                           pki.ca_cert, expected_kme_id="kme-a") as during:
                latencies["attacked_kme_during"] = _timed_key(during, "sae-b")
            # At most the cap stays open: every other one was evicted or reset.
            beyond = _refused(corridor, "kme-a", "evicted") + _refused(corridor, "kme-a", "limit")
            assert beyond >= 3 * CAP, beyond
            # 3. Authenticated connections that never finish their headers; past the cap
            #    with all of them established, a newcomer is reset at once.
            context = client_ssl_context(pki.saes["sae-a"].cert, pki.saes["sae-a"].key,
                                         pki.ca_cert)
            slow: list[ssl.SSLSocket] = []
            limit_before = _refused(corridor, "kme-a", "limit")
            for _ in range(CAP + 8):
                raw = _open(stack, address)
                try:
                    tls = stack.enter_context(context.wrap_socket(
                        raw, server_hostname=address[0]))
                    # With TLS 1.3 the client may finish its side of the handshake
                    # before the server's reset arrives: the first write then fails.
                    tls.sendall(b"GET /api/v1/keys/sae-b/status HTTP/1.1\r\nHost: kme\r\n")
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    break  # reset at once: the cap is full of established connections
                slow.append(tls)
            else:
                pytest.fail("a connection past an all-established cap was not refused")
            # Every unfinished handshake was evicted for them (a connection of the
            # previous step may still be closing).
            assert CAP - 2 <= len(slow) <= CAP, len(slow)
            assert _refused(corridor, "kme-a", "limit") == limit_before + 1
            # 4. The server closes what is left after its timeouts.
            for sock in (*idle, *half):
                assert _closed_by_server(sock, 2 * HANDSHAKE_TIMEOUT_S + 1)
            for tls in slow:
                assert _closed_by_server(tls, 2 * HEADER_TIMEOUT_S + 1)
            assert _refused(corridor, "kme-a", "header_timeout") == len(slow)
            opened = len(idle) + len(half) + len(slow)
        # Flood over, every attacking socket closed: served again at once.
        start = time.monotonic()
        with SaeClient(guard.url or "", pki.saes["sae-a"].cert, pki.saes["sae-a"].key,
                       pki.ca_cert, expected_kme_id="kme-a") as after:
            latencies["attacked_kme_after"] = _timed_key(after, "sae-b")
        latencies["after_including_connect"] = time.monotonic() - start
        latencies["other_kme_after"] = _timed_key(sae_b, "sae-a")

    reasons = ("limit", "evicted", "handshake_timeout", "handshake_failed", "header_timeout")
    counts = {reason: _refused(corridor, "kme-a", reason) for reason in reasons}
    # Nothing reached the other KME.
    assert all(_refused(corridor, "kme-b", reason) == 0 for reason in reasons)
    # Each idle or half-open socket was counted once: reset at accept, evicted for a
    # newcomer, or timed out in its handshake. Besides them, step 3's newcomer was
    # reset, and the peer KME's announcement may have been once (it tries again).
    beyond = counts["evicted"] + counts["handshake_timeout"] + counts["handshake_failed"] \
        + counts["limit"] - 1
    assert 4 * CAP <= beyond <= 4 * CAP + 2, counts
    lines = [r.getMessage() for r in caplog.records if r.name == "corridor.kms.limits"]
    assert 1 <= len(lines) <= 6, lines  # rate-limited: 10 s between summaries
    assert "kme-a" in lines[0] and "corridor_connections_refused_total" in lines[0]
    print(f"\nflood: {opened} attacking sockets on a cap of {CAP}; refusals "
          f"{ {k: int(v) for k, v in counts.items()} }; {len(lines)} log lines; "
          f"latencies (s) { {k: round(v, 3) for k, v in latencies.items()} }")


def test_timeouts_close_idle_sockets_and_refusal_is_a_reset(corridor: Corridor) -> None:
    """Below the cap, idle and half-open sockets are closed at the handshake timeout;
    at a cap full of established connections a newcomer is reset at once."""
    address = _address(corridor, "kme-b")
    pki = corridor.pki
    assert pki is not None
    with ExitStack() as stack:
        quiet = [_open(stack, address) for _ in range(CAP // 4)]
        quiet += [_open(stack, address, b"\x16\x03\x01\x02\x00\x01")
                  for _ in range(CAP // 4)]
        assert all(_closed_by_server(sock, 2 * HANDSHAKE_TIMEOUT_S + 1) for sock in quiet)
    assert _refused(corridor, "kme-b", "handshake_timeout") == len(quiet)
    assert _refused(corridor, "kme-b", "evicted") == _refused(corridor, "kme-b", "limit") == 0
    context = client_ssl_context(pki.saes["sae-b"].cert, pki.saes["sae-b"].key, pki.ca_cert)
    with ExitStack() as stack:
        # A reset, not a wait: past a cap of established connections a newcomer's
        # handshake fails at once (a timeout would raise TimeoutError, not accepted here).
        for _ in range(2 * CAP):
            raw = _open(stack, address)
            try:
                stack.enter_context(context.wrap_socket(raw, server_hostname=address[0]))
            except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                break
        else:
            pytest.fail("no connection was refused past the cap")
    # The newcomer, and possibly the peer KME's own calls if they came while the cap was
    # full: a sync or announcement reset at the cap is tried once more on a fresh
    # connection, and the outage it leaves is probed 0.5 s later (also tried twice), so
    # under load up to two such calls meet the full cap (4 refusals seen in a full run).
    assert 1 <= _refused(corridor, "kme-b", "limit") <= 5
