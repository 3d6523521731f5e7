"""``WarningThrottle``: the first warning of a kind shows, repeats within the window are
hidden and counted on the next line shown, other kinds are never hidden."""

from __future__ import annotations

import logging

import pytest

from corridor.log_throttle import WarningThrottle


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_hidden_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    throttle = WarningThrottle(logging.getLogger("t.throttle"), 60.0, clock=clock)
    caplog.set_level(logging.WARNING, "t.throttle")
    shown = [throttle.warning("pool_empty", "no key for %s: %s", "a", "pool_empty")]
    for _ in range(5):
        clock.now += 10.0  # 10 .. 50 s: inside the window
        shown.append(throttle.warning("pool_empty", "no key for %s: %s", "a", "pool_empty"))
    shown.append(throttle.warning("no_relay_path", "no key for %s: %s", "a", "no_relay_path"))
    clock.now += 10.0  # 60 s after the first line: the window has passed
    shown.append(throttle.warning("pool_empty", "no key for %s: %s", "a", "pool_empty"))
    assert shown == [True, False, False, False, False, False, True, True]
    assert [r.getMessage() for r in caplog.records] == [
        "no key for a: pool_empty", "no key for a: no_relay_path",
        "no key for a: pool_empty (5 more like this not shown since the last such line)"]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert {r.funcName for r in caplog.records} == {"test_repeats_are_hidden_then_counted"}


def test_many_kinds_stay_bounded_even_inside_one_window() -> None:
    """10,000 distinct kinds at one instant: the oldest shown are forgotten (at worst
    shown again), so memory stays bounded."""
    clock = _Clock()
    throttle = WarningThrottle(logging.getLogger("t.throttle2"), 60.0, clock=clock)
    for i in range(10_000):
        assert throttle.warning(i, "kind %d", i)
    assert len(throttle._kinds) == 4096
    assert not throttle.warning(9_999, "kind %d", 9_999)  # the newest are remembered
    assert throttle.warning(0, "kind %d", 0)  # the oldest was forgotten


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window_s"):
        WarningThrottle(logging.getLogger("t"), 0)
