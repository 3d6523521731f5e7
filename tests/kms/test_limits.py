"""Connection limits: their validation, the open-file budget, the guard's bookkeeping
and the rate-limited refusal log; the corridor file's connection and quota fields."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from corridor.errors import ParameterError
from corridor.kms.limits import (
    FILE_RESERVE,
    REASON_EVICTED,
    REASON_HANDSHAKE_FAILED,
    REASON_HANDSHAKE_TIMEOUT,
    REASON_LIMIT,
    ConnectionGuard,
    ConnectionLimits,
    RefusalReporter,
    check_file_budget,
    hard_cap,
    open_file_limit,
    raise_open_file_limit,
)
from corridor.kms.node import parse_corridor
from corridor.kms.quota import QuotaLimits
from tests.kms.test_node import _spec_data


class Clock:
    def __init__(self) -> None:
        self.now_s = 50.0

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.parametrize(("settings", "field"), [
    ({"max_connections": 4}, "max_connections"),
    ({"max_connections": 10.5}, "max_connections"),
    ({"max_connections": True}, "max_connections"),
    ({"tls_handshake_timeout_s": 0}, "tls_handshake_timeout_s"),
    ({"tls_handshake_timeout_s": 120}, "tls_handshake_timeout_s"),
    ({"header_timeout_s": "10"}, "header_timeout_s"),
    ({"keep_alive_s": 0.5}, "keep_alive_s"),
])
def test_bad_limits_name_the_field(settings, field):
    with pytest.raises(ParameterError) as info:
        ConnectionLimits(**settings)
    assert info.value.field == field


def test_corridor_file_carries_connection_limits_and_quotas():
    data = _spec_data()
    data["kme"].update(max_connections=300, header_timeout_s=4)
    data["kmes"][1].update(max_connections=100, tls_handshake_timeout_s=2.5)
    data["quota"] = {"keys_per_second": 50, "keys_per_day": 1_000_000,
                     "pairs": [{"master": "sae-a", "slave": "sae-b", "keys_per_second": 500,
                                "burst_keys": 1000}]}
    spec = parse_corridor(data)
    a, b = spec.kmes["kme-a"].limits, spec.kmes["kme-b"].limits
    assert (a.max_connections, a.header_timeout_s, a.tls_handshake_timeout_s) == (300, 4, 5.0)
    assert (b.max_connections, b.header_timeout_s, b.tls_handshake_timeout_s) == (100, 4, 2.5)
    assert spec.kmes["kme-a"].config.max_key_count == 10_000  # the rest still reaches KmeConfig
    assert spec.quota.limits("sae-a", "sae-b") == QuotaLimits(500, 1000, 1_000_000)
    assert spec.quota.limits("sae-b", "sae-a") == QuotaLimits(50, 50, 1_000_000)


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["kme"].update(max_connections=2), "kmes.kme-a.max_connections"),
    (lambda d: d["kmes"][1].update(header_timeout_s=-1), "kmes.kme-b.header_timeout_s"),
    (lambda d: d.update(quota={"keys_per_second": -5}), "quota.keys_per_second"),
    (lambda d: d.update(quota={"pairs": [{"master": "sae-a", "slave": "nobody"}]}),
     "quota.pairs[0].slave"),
])
def test_bad_connection_or_quota_fields_name_the_field(change, field):
    data = _spec_data()
    change(data)
    with pytest.raises(ParameterError) as info:
        parse_corridor(data)
    assert info.value.field == field


def test_file_budget_sizes_unset_caps_and_refuses_too_many():
    limits = {"a": ConnectionLimits(), "b": ConnectionLimits()}
    sized = check_file_budget(limits, 1024)
    caps = [lim.max_connections or 0 for lim in sized.values()]
    assert caps == [192, 192]
    assert sum(hard_cap(c) for c in caps) + FILE_RESERVE <= 1024
    assert [lim.max_connections for lim in check_file_budget(limits, 1 << 20).values()] \
        == [1024, 1024]
    fixed = {"a": ConnectionLimits(max_connections=2000), "b": ConnectionLimits()}
    with pytest.raises(ParameterError) as info:
        check_file_budget(fixed, 4096)
    assert info.value.field == "kmes.b.max_connections"
    with pytest.raises(ParameterError) as info:
        check_file_budget({"a": ConnectionLimits(max_connections=500)}, 1024)
    assert info.value.field == "kmes.a.max_connections" and "ulimit -n" in info.value.allowed


def test_open_file_limit_is_raised_to_the_hard_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft - 16, hard))
        now = raise_open_file_limit()
        assert now == open_file_limit()
        assert now is not None and now >= soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, open_file_limit() or soft), hard))


def test_reporter_logs_the_first_then_one_line_per_interval(caplog):
    caplog.set_level(logging.WARNING, logger="corridor.kms.limits")
    clock, counted = Clock(), []
    reporter = RefusalReporter("kme-x", count=counted.append, interval_s=10.0, clock=clock)
    for _ in range(500):
        reporter.refused(REASON_LIMIT)
    reporter.refused(REASON_EVICTED)
    assert len(caplog.records) == 1 and "1 connection(s) (limit 1)" in caplog.records[0].message
    reporter.flush()
    assert len(caplog.records) == 1  # the interval is not over
    clock.now_s += 10.0
    reporter.flush()
    assert len(caplog.records) == 2
    assert "500 connection(s) (evicted 1, limit 499)" in caplog.records[1].message
    assert len(counted) == 501 and reporter.totals == {REASON_LIMIT: 500, REASON_EVICTED: 1}
    reporter.flush(force=True)
    assert len(caplog.records) == 2  # nothing pending
    assert caplog.records[0].message.startswith("KME kme-x refused or closed")
    assert "corridor_connections_refused_total" in caplog.records[0].message


def test_a_reporter_without_a_metric_names_its_server_and_claims_no_count(caplog):
    """The dashboard's server: not "KME kme", and no metric counts its refusals."""
    caplog.set_level(logging.WARNING, logger="corridor.kms.limits")
    RefusalReporter("dashboard", label="the dashboard").refused(REASON_LIMIT)
    (record,) = caplog.records
    assert record.message.startswith("the dashboard refused or closed 1 connection(s)")
    assert "corridor_connections_refused_total" not in record.message


def _pairs(n: int) -> list[tuple[socket.socket, socket.socket]]:
    return [socket.socketpair() for _ in range(n)]


def test_guard_evicts_the_oldest_handshake_then_refuses_at_an_established_cap():
    clock = Clock()
    reporter = RefusalReporter("kme-x", interval_s=60.0, clock=clock)
    guard = ConnectionGuard(ConnectionLimits(max_connections=8, tls_handshake_timeout_s=2.0),
                            reporter, clock=clock)
    pairs = _pairs(20)
    try:
        served = [ours for ours, _ in pairs]
        assert all(guard.admit(sock) for sock in served[:8])
        assert guard.open_count == 8
        # Two of them finish their handshakes; the next newcomer evicts the oldest other.
        guard.established(served[0].fileno())
        guard.established(served[1].fileno())
        assert guard.admit(served[8])
        assert reporter.totals == {REASON_EVICTED: 1}
        assert pairs[2][1].recv(1) == b""  # served[2] was shut down: its peer sees EOF
        guard.closed(served[2].fileno())  # as asyncio does once it sees that
        # A socket that times out in its handshake, one that fails early.
        clock.now_s += 2.0
        guard.closed(served[3].fileno())
        clock.now_s -= 1.5
        guard.established(served[8].fileno())
        guard.closed(served[4].fileno())
        assert reporter.totals == {REASON_EVICTED: 1, REASON_HANDSHAKE_TIMEOUT: 1,
                                   REASON_HANDSHAKE_FAILED: 1}
        # Open: 0, 1, 8 established, 5, 6, 7 in their handshakes. Once every open one
        # is established and the cap is full, a newcomer is refused.
        for sock in served[5:8]:
            guard.established(sock.fileno())
        for sock in served[9:11]:
            assert guard.admit(sock)
            guard.established(sock.fileno())
        assert guard.established_count == guard.open_count == 8
        assert not guard.admit(served[11])
        assert reporter.totals[REASON_LIMIT] == 1 and reporter.totals[REASON_EVICTED] == 1
        guard.closed(served[0].fileno())
        assert guard.admit(served[11]) and guard.open_count == 8
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_guard_never_holds_more_than_the_hard_cap():
    clock = Clock()
    reporter = RefusalReporter("kme-x", interval_s=60.0, clock=clock)
    guard = ConnectionGuard(ConnectionLimits(max_connections=8), reporter, clock=clock)
    pairs = _pairs(40)
    try:
        admitted = [guard.admit(ours) for ours, _ in pairs]  # none ever closes
        assert sum(admitted) == hard_cap(8) == guard.open_count
        assert reporter.totals == {REASON_EVICTED: 8, REASON_LIMIT: 40 - 16}
    finally:
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


@pytest.mark.parametrize("tls_groups", [None, "X25519MLKEM768:X25519"])
def test_anonymous_connections_cannot_hold_the_slots_of_saes(tmp_path, tls_groups) -> None:
    """Clients without a certificate complete the handshake (so that they can be told
    what is missing) but only ever get a 401: they stay evictable, and a full house of
    them never locks an SAE out."""
    import socket
    import ssl

    from corridor.kms.limits import ConnectionLimits
    from corridor.kms.pki import init_pki
    from corridor.kms.tls import client_ssl_context, running_server

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        chain = scope.get("extensions", {}).get("tls", {}).get("client_cert_chain") or []
        await send({"type": "http.response.start", "status": 200 if chain else 401,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    pki = init_pki(tmp_path / "pki", ["kme-a"], [("sae-a", "kme-a")])
    kme = pki.kmes["kme-a"]
    limits = ConnectionLimits(max_connections=8, tls_handshake_timeout_s=1.0,
                              header_timeout_s=3.0, keep_alive_s=30.0, tls_groups=tls_groups)
    anonymous = ssl.create_default_context(cafile=str(pki.ca_cert))
    anonymous.check_hostname = False
    with running_server(app, kme.cert, kme.key, pki.ca_cert, limits=limits) as server:
        held = []
        for _ in range(8):
            sock = anonymous.wrap_socket(socket.create_connection((server.host, server.port),
                                                                  timeout=5))
            sock.sendall(b"GET /api/v1/keys/x/status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(200).startswith(b"HTTP/1.1 401")
            held.append(sock)
        assert server.guard is not None and server.guard.established_count == 0
        sae = pki.saes["sae-a"]
        context = client_ssl_context(sae.cert, sae.key, pki.ca_cert)
        with context.wrap_socket(socket.create_connection((server.host, server.port), timeout=5),
                                 server_hostname="localhost") as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
        for sock in held:
            sock.close()
        # Their closes are no failed handshakes (each curl without --cert was counted
        # and logged as one); eviction is what the reporter may count.
        deadline = time.monotonic() + 5
        while server.guard.open_count and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not server.guard.reporter.totals.get(REASON_HANDSHAKE_FAILED), \
            server.guard.reporter.totals
