"""Key rotation: a new generation after N bytes or T seconds, with a fresh QKD key and a
fresh policy decision each time; a refused re-key wipes the old key."""

from __future__ import annotations

import threading

import pytest

from corridor.errors import ParameterError
from corridor.hybrid.errors import QkdKeyUnavailable
from corridor.hybrid.rotation import KeyHolder, RekeyLimits, RotatingInitiator
from corridor.hybrid.session import Initiator, Responder, SessionKey
from corridor.hybrid.transport import memory_pair
from tests.hybrid.session_helpers import FakeQkd, SharedPool, count, recorder

A, B = "sae-a", "sae-b"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _session(limits: RekeyLimits, policy: str = "both-required"):
    pool = SharedPool()
    rec_a, sink_a = recorder()
    qkd_a = FakeQkd(pool)
    initiator = Initiator(A, B, policy, qkd=qkd_a, recorder=rec_a)
    responder = Responder(B, {A: policy}, qkd=FakeQkd(pool))
    a, b = memory_pair(timeout_s=5.0)
    holder = KeyHolder()
    thread = threading.Thread(target=responder.serve, args=(b, holder.replace), daemon=True)
    thread.start()
    clock = Clock()
    records: list = []
    session = RotatingInitiator(initiator, a, limits, clock=clock, on_record=records.append)
    return session, holder, clock, pool, records, (rec_a, sink_a), qkd_a, thread


def _settle(holder: KeyHolder, generations: int) -> SessionKey:
    # The responder's key lands after it checked the initiator's CONFIRM.
    for _ in range(200):
        if holder.generations >= generations and holder.current is not None:
            return holder.current
        threading.Event().wait(0.01)
    raise AssertionError("the responder did not finish the handshake")


def test_rekey_after_bytes_draws_a_fresh_qkd_key_each_generation() -> None:
    session, holder, _, pool, records, (rec_a, sink_a), _, thread = _session(
        RekeyLimits(after_bytes=1000, after_s=None))
    first = session.use(600)
    assert first.record.generation == 0 and session.rotations == 0
    assert session.use(400) is first          # exactly at the limit: still this key
    old_key = first.key
    second = session.use(1)                   # over the limit: re-key first
    assert second.record.generation == 1 and session.rotations == 1
    assert first.wiped and second.key != old_key
    assert _settle(holder, 2).key == second.key
    third = session.use(1500)                 # a message is never split across keys
    assert third.record.generation == 2
    fourth = session.use(1)
    assert fourth.record.generation == 3
    key_ids = [r.key_id for r in records]
    assert key_ids == pool.issued and len(set(key_ids)) == 4
    assert {r.session_id for r in records} == {session.session_id.hex()}
    assert count(rec_a, "both-required", "qkd+pqc", "established") == 4
    assert [e["generation"] for e in sink_a.of("hybrid_decision")] == [0, 1, 2, 3]
    session.close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_rekey_after_time() -> None:
    session, holder, clock, pool, _records, *_ = _session(
        RekeyLimits(after_bytes=None, after_s=30.0))
    first = session.use(10)
    clock.now += 29.9
    assert session.use(10) is first and not session.due
    clock.now += 0.2
    assert session.due
    second = session.use(10)
    assert second.record.generation == 1 and second.record.key_id != first.record.key_id
    assert len(pool.issued) == 2
    assert _settle(holder, 2).key == second.key
    session.close()


def test_a_refused_rekey_wipes_the_old_key_and_says_why() -> None:
    session, _, clock, _, _, (rec_a, _), qkd_a, _ = _session(
        RekeyLimits(after_bytes=None, after_s=10.0), policy="qkd-required")
    first = session.use(1)
    qkd_a.fail = "link_quarantined"
    clock.now += 11
    with pytest.raises(QkdKeyUnavailable, match="link_quarantined"):
        session.use(1)
    assert first.wiped and session.holder.current is None
    assert isinstance(session.last_error, QkdKeyUnavailable)
    assert count(rec_a, "qkd-required", "none", "refused") == 1
    # The link is back: the next use establishes the next generation.
    qkd_a.fail = None
    again = session.use(1)
    assert again.record.generation == 1
    session.close()


def test_pqc_required_rekeys_on_pqc_alone_while_qkd_is_missing() -> None:
    session, _, clock, _, records, (rec_a, _), qkd_a, _ = _session(
        RekeyLimits(after_bytes=None, after_s=10.0), policy="pqc-required")
    session.use(1)
    qkd_a.fail = "pool_empty"
    clock.now += 11
    degraded = session.use(1)
    assert degraded.record.inputs == ("pqc",) and degraded.record.key_id is None
    assert [r.inputs for r in records] == [("qkd", "pqc"), ("pqc",)]
    assert count(rec_a, "pqc-required", "pqc", "degraded") == 1
    session.close()


def test_bad_limits_are_named() -> None:
    with pytest.raises(ParameterError, match=r"^rekey_after_bytes = 0"):
        RekeyLimits(after_bytes=0)
    with pytest.raises(ParameterError, match=r"^rekey_after_s = -1"):
        RekeyLimits(after_s=-1)
