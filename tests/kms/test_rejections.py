"""RejectionAggregator: a flood of refused requests costs a bounded number of audit
lines, and the lines' counts add up to every rejection."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.kms.audit import AuditLog, verify_audit_log
from corridor.kms.crypto import generate_kek
from corridor.kms.rejections import EVENT_REJECTED, EVENT_SUMMARY, RejectionAggregator
from tests.kms.test_manager import RecordingSink


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def reject(sink, sae="a1", reason="quota_exceeded", **extra):
    sink.emit(EVENT_REJECTED, kme_id="kme-a", endpoint="enc_keys", sae_id=sae, reason=reason,
              status_code=503, **extra)


def counted(events) -> dict[tuple[str, str], int]:
    totals: dict[tuple[str, str], int] = {}
    for name, fields in events:
        if name in (EVENT_REJECTED, EVENT_SUMMARY):
            key = (fields["sae_id"], fields["reason"])
            totals[key] = totals.get(key, 0) + (fields["count"] if name == EVENT_SUMMARY else 1)
    return totals


def test_first_at_once_then_one_summary_per_interval():
    clock, inner = Clock(), RecordingSink()
    agg = RejectionAggregator(inner, interval_s=10.0, clock=clock)
    reject(agg)
    assert [name for name, _ in inner.events] == [EVENT_REJECTED]
    for _ in range(99):
        reject(agg)
    assert len(inner.events) == 1
    clock.now_s += 10.0
    assert agg.flush() == 1
    summary = inner.named(EVENT_SUMMARY)[0]
    assert summary == {"kme_id": "kme-a", "endpoint": "enc_keys", "sae_id": "a1",
                       "reason": "quota_exceeded", "status_code": 503, "count": 99,
                       "interval_s": 10.0}
    # A quiet interval forgets the key: the next rejection is written at once again.
    clock.now_s += 10.0
    assert agg.flush() == 0
    reject(agg)
    assert inner.events[-1][0] == EVENT_REJECTED
    assert counted(inner.events) == {("a1", "quota_exceeded"): 101}


def test_other_events_and_intent_outcomes_pass_through():
    clock, inner = Clock(), RecordingSink()
    agg = RejectionAggregator(inner, clock=clock)
    for _ in range(3):
        reject(agg, reason="pool_exhausted", delivery_id="d1")  # closes an intent
        agg.emit("keys_delivered", kme_id="kme-a", count=1)
    assert len(inner.named(EVENT_REJECTED)) == 3
    assert len(inner.named("keys_delivered")) == 3


def test_keys_are_separate_and_close_writes_every_pending_count():
    clock, inner = Clock(), RecordingSink()
    agg = RejectionAggregator(inner, clock=clock)
    for i in range(30):
        reject(agg, sae=f"s{i % 3}", reason="invalid_request" if i % 2 else "quota_exceeded")
    assert len(inner.named(EVENT_REJECTED)) == 6  # 3 SAEs x 2 reasons
    agg.close()
    assert counted(inner.events) == {(f"s{s}", r): 5 for s in range(3)
                                     for r in ("invalid_request", "quota_exceeded")}


class FailingSink(RecordingSink):
    def __init__(self) -> None:
        super().__init__()
        self.failing = False

    def emit(self, event, **fields):
        if self.failing:
            raise OSError(28, "No space left on device")
        super().emit(event, **fields)


def test_nothing_is_held_back_while_the_sink_fails():
    """A held-back rejection would look written and clear the KME's storage alarm."""
    clock, inner = Clock(), FailingSink()
    agg = RejectionAggregator(inner, clock=clock)
    reject(agg)
    reject(agg)  # held back: the sink works
    inner.failing = True
    for _ in range(3):
        try:
            agg.emit("keys_reserving", kme_id="kme-a")
        except OSError:
            pass
        else:
            raise AssertionError("the failure must reach the caller")
        try:
            reject(agg)
        except OSError:
            pass
        else:
            raise AssertionError("a rejection was held back while the audit trail fails")
    inner.failing = False
    reject(agg)  # written (the key is not held back after the failures)...
    reject(agg)  # ...and this one is held back again
    agg.close()
    assert counted(inner.events) == {("a1", "quota_exceeded"): 4}  # the 3 failed are lost


def test_max_keys_bounds_memory_and_writes_the_rest():
    clock, inner = Clock(), RecordingSink()
    agg = RejectionAggregator(inner, clock=clock, max_keys=2)
    for i in range(5):
        reject(agg, sae=f"s{i}")
        reject(agg, sae=f"s{i}")
    agg.close()
    assert counted(inner.events) == {(f"s{i}", "quota_exceeded"): 2 for i in range(5)}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 5), st.integers(0, 3)), max_size=200))
def test_counts_always_add_up(steps):
    clock, inner = Clock(), RecordingSink()
    agg = RejectionAggregator(inner, interval_s=2.0, clock=clock)
    sent: dict[tuple[str, str], int] = {}
    for wait_s, sae in steps:
        clock.now_s += wait_s
        reject(agg, sae=f"s{sae}")
        sent[(f"s{sae}", "quota_exceeded")] = sent.get((f"s{sae}", "quota_exceeded"), 0) + 1
        if wait_s > 4:
            agg.flush()
    agg.close()
    assert counted(inner.events) == sent
    # At most one line per key per interval, plus the first of each quiet spell.
    elapsed_s = clock.now_s - 1000.0
    assert len(inner.events) <= 4 * (2 * (elapsed_s / 2.0 + 1) + 1)


def test_a_thousand_rejections_cost_a_bounded_number_of_audit_lines(tmp_path):
    kek = generate_kek()
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, kek)
    agg = RejectionAggregator(log, interval_s=10.0)
    for i in range(1000):
        reject(agg, sae="a1", reason="quota_exceeded" if i % 4 else "invalid_request")
    agg.close()
    log.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) <= 4  # the first of each reason, then one summary each
    assert counted([(e["event"], e["fields"]) for e in lines]) == {
        ("a1", "quota_exceeded"): 750, ("a1", "invalid_request"): 250}
    assert verify_audit_log(path, kek).ok


def test_a_summary_that_cannot_be_written_keeps_its_count():
    """The audit volume is full when a summary is due: the count is not lost, it goes
    into a later summary, and the lines still add up to every rejection."""
    import pytest

    clock, inner = Clock(), RecordingSink()

    class Failing:
        failing = False

        def emit(self, event, **fields):  # type: ignore[no-untyped-def]
            if self.failing and event == EVENT_SUMMARY:
                raise OSError(28, "No space left on device")
            inner.emit(event, **fields)

    sink = Failing()
    agg = RejectionAggregator(sink, interval_s=10.0, clock=clock)
    for _ in range(50):
        reject(agg)
    clock.now_s += 10.0
    sink.failing = True
    with pytest.raises(OSError):
        agg.flush()
    sink.failing = False
    for _ in range(7):
        reject(agg)
    agg.close()
    assert counted(inner.events) == {("a1", "quota_exceeded"): 57}
