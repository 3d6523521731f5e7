"""The operator's side of a KME: link states, alarms logged at warning level, and the
operator endpoints (operator certificates only; clear needs a reason and is audited)."""

from __future__ import annotations

import logging
import ssl
from types import SimpleNamespace

import httpx
import pytest

from corridor.errors import ParameterError
from corridor.kms.alarms import LinkMonitor
from corridor.kms.client import KmeResponseError, OperatorClient
from corridor.kms.operator import (
    LINK_STATES,
    AlarmDesk,
    check_reason,
    feeder_state,
    link_state,
)
from corridor.kms.sources.feeder import FeederStats
from tests.kms.mtls_harness import KME_A, KME_B, LINK_ID, OPERATOR, two_kme_deployment
from tests.kms.test_manager import RecordingSink

# --- link states ------------------------------------------------------------------------


def state(**changes) -> str:
    base = {"running": True, "stopped_reason": None, "blocks_seen": 5, "last_block_age_s": 1.0,
            "running_for_s": 100.0, "quarantined": False, "last_outcome": "stored",
            "dead_after_s": 60.0}
    return link_state(**{**base, **changes})


def test_a_link_that_stores_its_blocks_is_ok() -> None:
    assert state() == "ok"
    # One discarded block is not a fault.
    assert state(last_outcome="aborted") == "ok"
    assert state(last_outcome="empty") == "ok"


@pytest.mark.parametrize("outcome", ["dropped_full", "stored_partly"])
def test_blocks_dropped_for_capacity_read_pool_full_not_dead(outcome: str) -> None:
    assert state(last_outcome=outcome) == "pool_full"


def test_no_block_for_dead_after_s_or_a_stopped_feed_is_dead() -> None:
    assert state(last_block_age_s=59.9) == "ok"
    assert state(last_block_age_s=60.0) == "dead"
    assert state(running=False) == "dead"
    assert state(stopped_reason="source exhausted") == "dead"
    # Dead wins over pool full and quarantine: no block arrives at all.
    assert state(last_block_age_s=600.0, last_outcome="dropped_full") == "dead"
    assert state(last_block_age_s=600.0, quarantined=True) == "dead"


def test_a_feed_paused_for_full_pools_reads_pool_full_however_old_its_last_block() -> None:
    assert state(paused_full=True, last_block_age_s=600.0) == "pool_full"
    assert state(paused_full=True, last_block_age_s=600.0, quarantined=True) == "quarantined"
    # A stopped feed is dead, paused or not.
    assert state(paused_full=True, running=False) == "dead"
    assert state(paused_full=True, stopped_reason="error") == "dead"


def test_no_block_yet_is_starting_until_dead_after_s() -> None:
    assert state(blocks_seen=0, last_block_age_s=None, running_for_s=5.0) == "starting"
    assert state(blocks_seen=0, last_block_age_s=None, running_for_s=60.0) == "dead"


def test_quarantine_wins_over_pool_full() -> None:
    assert state(quarantined=True, last_outcome="dropped_full") == "quarantined"
    assert state(quarantined=True, last_outcome="quarantined") == "quarantined"


def test_feeder_state_reads_the_feeder_clock() -> None:
    stats = FeederStats(started_at_monotonic_s=1000.0)
    feeder = SimpleNamespace(stats=stats, running=True)
    assert feeder_state(feeder, False, now_s=1010.0) == ("starting", None)
    stats.blocks_seen, stats.last_block_at_monotonic_s = 3, 1005.0
    stats.last_outcome = "dropped_full"
    assert feeder_state(feeder, False, now_s=1010.0) == ("pool_full", 5.0)
    assert feeder_state(feeder, False, now_s=1065.0) == ("dead", 60.0)
    assert {feeder_state(feeder, q, now_s=t)[0] for q in (False, True)
            for t in (1006.0, 2000.0)} <= set(LINK_STATES)


@pytest.mark.parametrize("reason", ["", "   ", None, 3, "x" * 257, "line\nbreak"])
def test_a_reason_is_required_text(reason) -> None:
    with pytest.raises(ParameterError, match="reason"):
        check_reason(reason)
    assert check_reason(" fibre repaired ") == "fibre repaired"


# --- logging ------------------------------------------------------------------------------


def test_alarm_quarantine_recovery_and_clear_are_logged_at_warning(caplog) -> None:
    monitor = LinkMonitor(RecordingSink(), recovery_blocks=2)
    caplog.set_level(logging.WARNING, logger="corridor.kms.alarms")
    monitor.observe_block("ab", 0, aborted_reason="qber_above_threshold", qber=0.2,
                          secret_bits=0)
    for block_id in (1, 2):
        monitor.observe_block("ab", block_id, aborted_reason=None, qber=0.01,
                              secret_bits=1000)
    monitor.observe_block("ab", 3, aborted_reason="authentication_failed", qber=None,
                          secret_bits=0)
    assert monitor.clear("ab", "alice", reason="channel re-keyed")
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("alarm block_aborted (qber_above_threshold) raised at block 0" in m
               for m in messages)
    assert any("quarantined at block 0" in m for m in messages)
    assert any("recovered at block 2" in m for m in messages)
    assert any("alarm integrity (authentication_failed) raised at block 3" in m
               and "latched" in m for m in messages)
    assert any("operator alice cleared 1 alarm(s) (integrity)" in m
               and "channel re-keyed" in m for m in messages)


# --- the endpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corridor_desks(tmp_path_factory):
    sink = RecordingSink()
    monitor = LinkMonitor(sink)
    desks = {kme: AlarmDesk(kme, [LINK_ID]) for kme in (KME_A, KME_B)}
    feeder = SimpleNamespace(stats=FeederStats(), running=True)
    for desk in desks.values():  # one shared monitor, as in `corridor up`
        desk.attach(monitor, {LINK_ID: feeder})
    with two_kme_deployment(tmp_path_factory.mktemp("kmes"), alarm_desks=desks) as dep:
        yield dep, monitor, sink, feeder


def _operator(dep, kme: str = KME_A) -> OperatorClient:
    paths = dep.pki.operators[OPERATOR]
    return OperatorClient(dep.urls[kme], paths.cert, paths.key, dep.pki.ca_cert,
                          expected_kme_id=kme)


def test_operator_lists_states_and_clears_with_a_reason_audited(corridor_desks) -> None:
    dep, monitor, sink, feeder = corridor_desks
    monitor.observe_block(LINK_ID, 7, aborted_reason="authentication_failed", qber=None,
                          secret_bits=0)
    feeder.stats.blocks_seen = 1
    feeder.stats.last_block_at_monotonic_s = feeder.stats.started_at_monotonic_s
    with _operator(dep) as ops:
        listed = ops.alarms()
        assert listed["kme_id"] == KME_A
        [link] = listed["links"]
        assert link["link_id"] == LINK_ID and link["state"] == "quarantined"
        assert link["quarantined"] and link["fed_here"]
        assert [(a["kind"], a["reason"], a["latched"]) for a in link["alarms"]] == \
            [("integrity", "authentication_failed", True)]
        for body in (None, {}, {"reason": ""}, {"reason": "  "}, {"reason": 5}):
            with pytest.raises(KmeResponseError) as refused:
                ops._http._request("POST", f"/operator/v1/alarms/{LINK_ID}/clear",
                                   json_body=body)
            assert refused.value.status_code == 400
        assert monitor.is_quarantined(LINK_ID)
        with pytest.raises(KmeResponseError) as unknown:
            ops.clear("no-such-link", "tested")
        assert unknown.value.status_code == 404
        before = len(sink.events)
        answer = ops.clear(LINK_ID, "MAC key rotated after the tamper test")
    assert answer["cleared"] and answer["alarm_ids"] == [link["alarms"][0]["alarm_id"]]
    assert not monitor.is_quarantined(LINK_ID)
    [(_, fields)] = [e for e in sink.events[before:] if e[0] == "link_cleared"]
    # The operator's name comes from the certificate, the reason from the request.
    assert fields["operator"] == OPERATOR
    assert fields["operator_reason"] == "MAC key rotated after the tamper test"
    # The monitor is shared (corridor up): the other KME sees it cleared too.
    with _operator(dep, KME_B) as ops_b:
        assert ops_b.alarms()["links"][0]["alarms"] == []
        assert ops_b.clear(LINK_ID, "again")["cleared"] is False


def test_only_operator_certificates_reach_the_alarm_routes(corridor_desks) -> None:
    dep, monitor, _, _ = corridor_desks
    monitor.observe_block(LINK_ID, 9, aborted_reason="malformed_message", qber=None,
                          secret_bits=0)
    clear = f"/operator/v1/alarms/{LINK_ID}/clear"
    for owner, role in (("sae-a", "sae"), (KME_B, "kme")):
        with dep.raw(owner, kme_id=KME_A, role=role) as client:
            for response in (client.get("/operator/v1/alarms"),
                             client.post(clear, json={"reason": "not mine to clear"}),
                             client.post(clear, json={})):
                assert response.status_code == 403, response.text
                assert response.json()["message"].startswith("operator certificate required")
    context = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    with httpx.Client(verify=context, base_url=dep.urls[KME_A]) as anonymous:
        response = anonymous.post(clear, json={"reason": "anonymous"})
    assert response.status_code == 401
    assert response.json()["message"].startswith("client certificate required")
    assert monitor.is_quarantined(LINK_ID)
    with _operator(dep) as ops:
        assert ops.clear(LINK_ID, "cleanup")["cleared"]
