"""Without Mosquitto the broker tests skip with a message, except under CI=true: fail."""

from __future__ import annotations

import pytest

from tests.mobility.fleet import harness


def test_missing_broker_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(harness, "broker_reachable", lambda: False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Mosquitto is not reachable"):
        harness.require_broker()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="Mosquitto is not reachable"):
        harness.require_broker()
