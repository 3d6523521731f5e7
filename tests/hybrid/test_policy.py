"""The policy table of corridor.hybrid.policy, and that every decision is audited and counted."""

from __future__ import annotations

from typing import Any

import pytest

from corridor.errors import ParameterError
from corridor.hybrid.policy import (
    DEGRADED,
    ESTABLISHED,
    REFUSED,
    DecisionRecorder,
    Policy,
    decide,
    parse_policy,
)

# (policy, qkd missing, pqc missing) -> (inputs, outcome)
TABLE = [
    ("qkd-required", False, False, ("qkd", "pqc"), ESTABLISHED),
    ("qkd-required", True, False, (), REFUSED),
    ("qkd-required", False, True, ("qkd",), DEGRADED),
    ("qkd-required", True, True, (), REFUSED),
    ("pqc-required", False, False, ("qkd", "pqc"), ESTABLISHED),
    ("pqc-required", True, False, ("pqc",), DEGRADED),
    ("pqc-required", False, True, (), REFUSED),
    ("both-required", False, False, ("qkd", "pqc"), ESTABLISHED),
    ("both-required", True, False, (), REFUSED),
    ("both-required", False, True, (), REFUSED),
    ("any", False, False, ("qkd", "pqc"), ESTABLISHED),
    ("any", True, False, ("pqc",), DEGRADED),
    ("any", False, True, ("qkd",), DEGRADED),
    ("any", True, True, (), REFUSED),
]


@pytest.mark.parametrize(("policy", "no_qkd", "no_pqc", "inputs", "outcome"), TABLE)
def test_policy_table(policy: str, no_qkd: bool, no_pqc: bool, inputs: tuple[str, ...],
                      outcome: str) -> None:
    decision = decide(policy, qkd_missing="pool_empty" if no_qkd else None,
                      pqc_missing="peer_no_kem" if no_pqc else None)
    assert decision.inputs == inputs
    assert decision.outcome == outcome
    assert decision.proceed == (outcome != REFUSED)


def test_unknown_policy_names_the_field_and_the_allowed_values() -> None:
    with pytest.raises(ParameterError, match=r"hybrid.policy = 'qkd-only': one of qkd-required"):
        parse_policy("qkd-only", "hybrid.policy")


def test_reason_must_be_a_code() -> None:
    with pytest.raises(ParameterError, match="qkd_missing"):
        decide(Policy.ANY, qkd_missing="KME said: 0a1b2c3d...")


class _Sink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def test_every_decision_is_audited_and_counted() -> None:
    sink = _Sink()
    recorder = DecisionRecorder(sink)
    recorder.record(decide("pqc-required", qkd_missing="link_quarantined"),
                    master_sae_id="sae-a", slave_sae_id="sae-b")
    recorder.record(decide("qkd-required", qkd_missing="kme_unreachable"))
    assert sink.events[0] == ("hybrid_decision", {
        "policy": "pqc-required", "inputs": "pqc", "outcome": "degraded",
        "missing": ["qkd:link_quarantined"], "master_sae_id": "sae-a", "slave_sae_id": "sae-b"})
    assert sink.events[1][1]["outcome"] == "refused"
    value = recorder.registry.get_sample_value(
        "corridor_hybrid_sessions_total",
        {"policy": "pqc-required", "inputs": "pqc", "outcome": "degraded"})
    assert value == 1.0
    assert recorder.registry.get_sample_value(
        "corridor_hybrid_sessions_total",
        {"policy": "qkd-required", "inputs": "none", "outcome": "refused"}) == 1.0


def test_a_decision_the_audit_trail_refuses_is_not_counted() -> None:
    class Failing:
        def emit(self, event: str, **fields: Any) -> None:
            raise OSError("disk full")

    recorder = DecisionRecorder(Failing())
    with pytest.raises(OSError):
        recorder.record(decide("any"))
    assert recorder.registry.get_sample_value(
        "corridor_hybrid_sessions_total",
        {"policy": "any", "inputs": "qkd+pqc", "outcome": "established"}) is None
