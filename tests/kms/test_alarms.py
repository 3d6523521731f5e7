"""Tests of corridor.kms.alarms: alarms, quarantine, recovery and clear, by the stated rules."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.kms.alarms import (
    ALARM_BLOCK_ABORTED,
    ALARM_CONSECUTIVE_DISCARDS,
    ALARM_INTEGRITY,
    ALARM_QBER_TREND,
    LinkMonitor,
)
from tests.kms.test_manager import RecordingSink


class ListSink(RecordingSink):
    """Records every event; ``names`` lists them, without the per-block ones by default."""

    def names(self, skip_blocks: bool = True) -> list[str]:
        return [e for e, _ in self.events if not (skip_blocks and e == "link_block")]


LINK = "site-a--site-b"


def good(monitor: LinkMonitor, block_id: int, qber: float = 0.02, bits: int = 4096) -> bool:
    return monitor.observe_block(LINK, block_id, aborted_reason=None, qber=qber,
                                 secret_bits=bits).ingest


def aborted(monitor: LinkMonitor, block_id: int, reason: str, qber: float | None = None) -> bool:
    return monitor.observe_block(LINK, block_id, aborted_reason=reason, qber=qber,
                                 secret_bits=0).ingest


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


@pytest.fixture
def monitor(sink: ListSink) -> LinkMonitor:
    return LinkMonitor(sink)


def test_healthy_link_ingests_every_block(monitor: LinkMonitor, sink: ListSink) -> None:
    assert all(good(monitor, i) for i in range(20))
    assert not monitor.is_quarantined(LINK) and sink.names() == []
    blocks = [f for e, f in sink.events if e == "link_block"]
    assert len(blocks) == 20 and blocks[0]["outcome"] == "accepted"
    assert blocks[0]["secret_bits"] == 4096 and blocks[0]["qber"] == 0.02


@pytest.mark.parametrize("reason", ["qber_above_threshold", "single_photon_bound_too_low",
                                    "phase_error_bound_too_high", "no_secret_key",
                                    "insufficient_statistics"])
def test_estimation_abort_quarantines_then_recovers(monitor: LinkMonitor, sink: ListSink,
                                                    reason: str) -> None:
    assert good(monitor, 0)
    assert not aborted(monitor, 1, reason, qber=0.12)
    assert monitor.is_quarantined(LINK)
    assert sink.names() == ["link_alarm_raised", "link_quarantined"]
    alarm = monitor.active_alarms(LINK)[0]
    assert alarm.kind == ALARM_BLOCK_ABORTED and alarm.reason == reason and not alarm.latched
    # Rule 3: three consecutive good blocks at QBER <= 6 %; the third is ingested.
    assert not good(monitor, 2) and not good(monitor, 3)
    assert monitor.is_quarantined(LINK)
    assert good(monitor, 4)
    assert not monitor.is_quarantined(LINK)
    assert sink.names()[-1] == "link_recovered"
    recovered = sink.events[-2][1]  # the recovery event precedes the block's own event
    assert recovered["alarm_ids"] == [alarm.alarm_id] and recovered["good_blocks"] == 3


def test_quarantined_blocks_are_reported_as_such(monitor: LinkMonitor, sink: ListSink) -> None:
    aborted(monitor, 0, "qber_above_threshold", qber=0.2)
    good(monitor, 1)
    last = sink.events[-1][1]
    assert last["outcome"] == "quarantined" and last["reason"] == "link_quarantined"


def test_hysteresis_blocks_between_thresholds_do_not_recover(monitor: LinkMonitor) -> None:
    aborted(monitor, 0, "qber_above_threshold", qber=0.12)
    # 7 % is under the 8 % alarm threshold but over the 6 % recovery threshold.
    assert not any(good(monitor, i, qber=0.07) for i in range(1, 11))
    assert monitor.is_quarantined(LINK)
    assert [good(monitor, i) for i in range(11, 14)] == [False, False, True]


def test_a_bad_block_resets_the_recovery_streak(monitor: LinkMonitor) -> None:
    aborted(monitor, 0, "no_secret_key")
    good(monitor, 1)
    good(monitor, 2)
    aborted(monitor, 3, "verification_failed")  # benign, but not good either
    assert [good(monitor, i) for i in range(4, 7)] == [False, False, True]


def test_qber_trend_above_threshold_raises(monitor: LinkMonitor, sink: ListSink) -> None:
    # Rule 2: mean over 5 blocks; the first four are ingested, the fifth completes the
    # window with a mean of 9 % > 8 % and is not.
    assert [good(monitor, i, qber=0.09) for i in range(5)] == [True] * 4 + [False]
    assert monitor.is_quarantined(LINK)
    raised = next(f for e, f in sink.events if e == "link_alarm_raised")
    assert raised["kind"] == ALARM_QBER_TREND and raised["window_blocks"] == 5
    assert raised["qber_mean"] == pytest.approx(0.09)


def test_qber_trend_below_threshold_does_not_raise(monitor: LinkMonitor) -> None:
    qbers = [0.10, 0.07, 0.07, 0.07, 0.07, 0.07]  # window means 7.6 %, then 7 %
    assert all(good(monitor, i, qber=q) for i, q in enumerate(qbers))
    assert not monitor.is_quarantined(LINK)


@pytest.mark.parametrize("reason", ["authentication_failed", "malformed_message",
                                    "sifting_index_mismatch", "something_new"])
def test_integrity_alarms_are_latched_until_an_operator_clears(
        monitor: LinkMonitor, sink: ListSink, reason: str) -> None:
    aborted(monitor, 0, reason)
    alarm = monitor.active_alarms(LINK)[0]
    assert alarm.kind == ALARM_INTEGRITY and alarm.latched
    assert not any(good(monitor, i) for i in range(1, 20))
    assert monitor.is_quarantined(LINK)
    assert monitor.clear(LINK, operator="alice")
    assert not monitor.is_quarantined(LINK) and monitor.active_alarms(LINK) == []
    event, fields = sink.events[-1]
    assert event == "link_cleared" and fields["operator"] == "alice"
    assert fields["alarm_ids"] == [alarm.alarm_id]
    assert good(monitor, 20)


def test_latched_alarm_survives_recovery_of_other_alarms(monitor: LinkMonitor) -> None:
    aborted(monitor, 0, "qber_above_threshold", qber=0.2)
    aborted(monitor, 1, "authentication_failed")
    kinds = {a.kind for a in monitor.active_alarms(LINK)}
    assert kinds == {ALARM_BLOCK_ABORTED, ALARM_INTEGRITY}
    assert not any(good(monitor, i) for i in range(2, 12))


def test_benign_aborts_alarm_only_when_consecutive(monitor: LinkMonitor, sink: ListSink) -> None:
    for i in range(4):
        aborted(monitor, i, "verification_failed")
    good(monitor, 4)
    for i in range(5, 9):
        aborted(monitor, i, "verification_failed")
    assert not monitor.is_quarantined(LINK) and sink.names() == []
    aborted(monitor, 9, "channel_timeout")  # the fifth in a row
    assert monitor.active_alarms(LINK)[0].kind == ALARM_CONSECUTIVE_DISCARDS
    assert [good(monitor, i) for i in range(10, 13)] == [False, False, True]


def test_repeated_alarm_is_not_raised_twice(monitor: LinkMonitor, sink: ListSink) -> None:
    for i in range(20):
        aborted(monitor, i, "qber_above_threshold", qber=0.2)
    # One alarm per kind: the abort, and the trend once five post-alarm QBERs accrue.
    kinds = [f["kind"] for e, f in sink.events if e == "link_alarm_raised"]
    assert kinds == [ALARM_BLOCK_ABORTED, ALARM_QBER_TREND]
    assert sink.names().count("link_quarantined") == 1


def test_clear_without_alarm_is_a_no_op(monitor: LinkMonitor, sink: ListSink) -> None:
    assert not monitor.clear(LINK, operator="alice")
    good(monitor, 0)
    assert not monitor.clear(LINK, operator="alice") and sink.names() == []


def test_links_are_independent(monitor: LinkMonitor) -> None:
    monitor.observe_block("other", 0, aborted_reason="authentication_failed", qber=None,
                          secret_bits=0)
    assert monitor.is_quarantined("other") and not monitor.is_quarantined(LINK)
    assert good(monitor, 0)


def test_numpy_numbers_are_accepted(monitor: LinkMonitor, sink: ListSink) -> None:
    verdict = monitor.observe_block(LINK, np.int64(3), aborted_reason=None,
                                    qber=np.float32(0.02), secret_bits=np.int64(512),
                                    duration_s=np.float64(0.5))
    assert verdict.ingest
    fields = sink.events[-1][1]
    assert type(fields["secret_bits"]) is int and type(fields["qber"]) is float


def test_health_snapshot(monitor: LinkMonitor) -> None:
    for i, q in enumerate((0.01, 0.03)):
        good(monitor, i, qber=q)
    health = monitor.health(LINK)
    assert health.qber_mean == pytest.approx(0.02) and health.last_qber == 0.03
    assert health.blocks_observed == 2 and health.good_streak == 2 and not health.quarantined


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"link_id": ""}, "link_id"), ({"block_id": -1}, "block_id"), ({"qber": 1.5}, "qber"),
    ({"qber": float("nan")}, "qber"), ({"secret_bits": -1}, "secret_bits"),
    ({"aborted_reason": "qber_above_threshold", "secret_bits": 10}, "secret_bits"),
    ({"duration_s": 0.0}, "duration_s"),
])
def test_bad_observations_name_the_field(monitor: LinkMonitor, kwargs: dict[str, Any],
                                         field: str) -> None:
    args: dict[str, Any] = {"link_id": LINK, "block_id": 0, "aborted_reason": None,
                            "qber": 0.02, "secret_bits": 100, **kwargs}
    with pytest.raises(ParameterError, match=field):
        monitor.observe_block(args.pop("link_id"), args.pop("block_id"), **args)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"qber_alarm_threshold": 0.6}, "qber_alarm_threshold"),
    ({"recovery_qber_threshold": 0.09}, "recovery_qber_threshold"),
    ({"trend_window_blocks": 0}, "trend_window_blocks"),
    ({"recovery_blocks": 1.5}, "recovery_blocks"),
    ({"benign_reasons": frozenset({"no_secret_key"})}, "benign_reasons"),
])
def test_bad_settings_name_the_field(sink: ListSink, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ParameterError, match=field):
        LinkMonitor(sink, **kwargs)


def test_operator_name_is_checked(monitor: LinkMonitor) -> None:
    with pytest.raises(ParameterError, match="operator"):
        monitor.clear(LINK, operator="")


def test_concurrent_observations(sink: ListSink) -> None:
    monitor = LinkMonitor(sink)

    def feed(link: str) -> None:
        for i in range(200):
            reason = "qber_above_threshold" if i == 100 else None
            monitor.observe_block(link, i, aborted_reason=reason, qber=0.02,
                                  secret_bits=0 if reason else 1000)

    threads = [threading.Thread(target=feed, args=(f"link-{n}",)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(6):
        health = monitor.health(f"link-{n}")
        assert health.blocks_observed == 200 and not health.quarantined
    names = sink.names()
    assert names.count("link_quarantined") == 6 and names.count("link_recovered") == 6


_OUTCOMES = st.tuples(
    st.sampled_from([None, None, None, "qber_above_threshold", "verification_failed",
                     "authentication_failed"]),
    st.floats(0.0, 0.15))


@settings(max_examples=100, deadline=None)
@given(st.lists(_OUTCOMES, max_size=60))
def test_no_key_ever_ingested_from_an_unhealthy_link(outcomes: list[tuple[str | None,
                                                                          float]]) -> None:
    sink = ListSink()
    monitor = LinkMonitor(sink)
    latched = False
    for block_id, (reason, qber) in enumerate(outcomes):
        verdict = monitor.observe_block(LINK, block_id, aborted_reason=reason, qber=qber,
                                        secret_bits=0 if reason else 1000)
        latched = latched or reason == "authentication_failed"
        if verdict.ingest:
            assert reason is None and not monitor.is_quarantined(LINK) and not latched
        assert monitor.is_quarantined(LINK) == bool(monitor.active_alarms(LINK))
        if reason == "qber_above_threshold" or latched:
            assert monitor.is_quarantined(LINK)
    # Quarantine and release alternate in the event stream.
    state = False
    for name in sink.names():
        if name == "link_quarantined":
            assert not state
            state = True
        elif name in ("link_recovered", "link_cleared"):
            assert state
            state = False
    assert state == monitor.is_quarantined(LINK)
