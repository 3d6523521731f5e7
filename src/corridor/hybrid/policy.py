"""Hybrid key policies: which inputs a session needs, and the decision when one is missing.

This module owns the four policy names of HYBRID.md, the decision they imply for a
given availability of inputs, and how a decision is recorded. A decision is pure
(:func:`decide`); recording it (:class:`DecisionRecorder`) writes one audit event
``hybrid_decision`` and increments ``corridor_hybrid_sessions_total{policy,inputs,outcome}``,
so no fallback is ever silent.

Policies (per pair of SAEs, default ``both-required``):

================  ==================================  ==================================
policy            QKD key missing                     PQC (ML-KEM + X25519) missing
================  ==================================  ==================================
qkd-required      refuse (fail closed)                proceed on QKD alone, degraded
pqc-required      proceed on PQC alone, degraded      refuse
both-required     refuse                              refuse
any               proceed on PQC alone, degraded      proceed on QKD alone, degraded
================  ==================================  ==================================

An input that is available is always used: more independent inputs never weaken a
key combined by a KDF (docs/hybrid.md). ``outcome`` is ``established`` when every input
was used, ``degraded`` when the session proceeded without an input that was missing
(a fallback the policy allowed, counted and audited), ``refused`` when the policy
forbade proceeding.
"""

from __future__ import annotations

import enum
import logging
import re
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from corridor.errors import ParameterError
from corridor.log_throttle import WarningThrottle

_log = logging.getLogger(__name__)
_WARNINGS = WarningThrottle(_log)  # a refusal retried: once a minute per SAE and outcome


class Policy(enum.StrEnum):
    """What a hybrid session between two SAEs needs (HYBRID.md, "Policies")."""

    QKD_REQUIRED = "qkd-required"
    PQC_REQUIRED = "pqc-required"
    BOTH_REQUIRED = "both-required"
    ANY = "any"


DEFAULT_POLICY = Policy.BOTH_REQUIRED
"""The policy of a pair of SAEs for which the corridor file names none."""

QKD = "qkd"
PQC = "pqc"

ESTABLISHED = "established"
DEGRADED = "degraded"
REFUSED = "refused"

# Reason codes travel into audit entries and log lines: short snake_case, no key bytes.
_REASON = re.compile(r"[a-z][a-z0-9_]{0,63}")


def parse_policy(value: Any, field: str = "policy") -> Policy:
    """The :class:`Policy` named ``value``; :class:`ParameterError` naming ``field`` if unknown."""
    if isinstance(value, Policy):
        return value
    try:
        return Policy(value)
    except ValueError:
        allowed = ", ".join(p.value for p in Policy)
        raise ParameterError(field, value, f"one of {allowed}") from None


@dataclass(frozen=True)
class Decision:
    """What the policy decided for one session (or one re-key) given what was available.

    Attributes:
        policy: the policy that decided.
        inputs: the inputs the session uses, a subset of ``("qkd", "pqc")`` in that
            order; empty when refused.
        outcome: ``established``, ``degraded`` or ``refused``.
        missing: the inputs that were not available, with the reason code for each
            (``pool_empty``, ``link_quarantined``, ``kme_unreachable``, ...).
    """

    policy: Policy
    inputs: tuple[str, ...]
    outcome: str
    missing: tuple[tuple[str, str], ...] = ()

    @property
    def proceed(self) -> bool:
        """True unless the policy refused the session."""
        return self.outcome != REFUSED

    @property
    def inputs_label(self) -> str:
        """``qkd+pqc``, ``qkd``, ``pqc`` or ``none``: the metric label of :attr:`inputs`."""
        return "+".join(self.inputs) if self.inputs else "none"


def _needed(policy: Policy) -> frozenset[str]:
    return {
        Policy.QKD_REQUIRED: frozenset({QKD}),
        Policy.PQC_REQUIRED: frozenset({PQC}),
        Policy.BOTH_REQUIRED: frozenset({QKD, PQC}),
        Policy.ANY: frozenset(),
    }[policy]


def decide(policy: Policy | str, *, qkd_missing: str | None = None,
           pqc_missing: str | None = None) -> Decision:
    """The decision of ``policy`` when the QKD key and/or PQC are missing.

    Args:
        policy: a :class:`Policy` or its name.
        qkd_missing: ``None`` when a QKD key is available, else the reason code why not.
        pqc_missing: ``None`` when ML-KEM + X25519 can run, else the reason code why not.
    """
    policy = parse_policy(policy)
    if qkd_missing is None and pqc_missing is None:
        return _ALL_INPUTS[policy]  # every handshake that has both inputs
    missing: list[tuple[str, str]] = []
    for name, reason in ((QKD, qkd_missing), (PQC, pqc_missing)):
        if reason is not None:
            if not isinstance(reason, str) or not _REASON.fullmatch(reason):
                raise ParameterError(f"{name}_missing", reason,
                                     "None or a snake_case reason code")
            missing.append((name, reason))
    absent = {name for name, _ in missing}
    available = tuple(name for name in (QKD, PQC) if name not in absent)
    if _needed(policy) & absent or not available:
        return Decision(policy, (), REFUSED, tuple(missing))
    return Decision(policy, available, DEGRADED if missing else ESTABLISHED, tuple(missing))


# The decision of each policy when nothing is missing (Decisions are immutable).
_ALL_INPUTS = {policy: Decision(policy, (QKD, PQC), ESTABLISHED) for policy in Policy}


class DecisionRecorder:
    """Records every decision in the audit trail, the metrics and the log.

    Args:
        events: an ``EventSink`` (``emit(event, **fields)``): the audit log, or a
            fan-out of the audit log and other sinks; ``None`` for none.
        registry: the Prometheus registry that holds
            ``corridor_hybrid_sessions_total``; a fresh one when ``None``.
    """

    def __init__(self, events: Any = None, registry: CollectorRegistry | None = None) -> None:
        self.events = events
        self.registry = registry if registry is not None else CollectorRegistry()
        self.sessions = Counter(
            "corridor_hybrid_sessions_total",
            "Hybrid session keys decided (each establishment and each re-key), by policy, "
            "inputs used (qkd+pqc, qkd, pqc, none) and outcome (established, degraded, "
            "refused).", ["policy", "inputs", "outcome"], registry=self.registry)

    def record(self, decision: Decision, **context: Any) -> None:
        """Audit and count ``decision``; ``context`` adds public fields (SAE IDs, key_ID,
        session ID, generation). The audit entry is written before the counter moves, so
        a decision the audit trail could not take is not counted as done."""
        fields: dict[str, Any] = {
            "policy": decision.policy.value,
            "inputs": decision.inputs_label,
            "outcome": decision.outcome,
            "missing": [f"{name}:{reason}" for name, reason in decision.missing],
        }
        fields.update(context)
        if self.events is not None:
            self.events.emit("hybrid_decision", **fields)
        self.sessions.labels(decision.policy.value, decision.inputs_label,
                             decision.outcome).inc()
        args = (decision.policy.value, decision.inputs_label, decision.outcome,
                "".join(f", {name} missing ({reason})" for name, reason in decision.missing))
        if decision.outcome == ESTABLISHED:
            _log.info("hybrid decision: policy %s, inputs %s, outcome %s%s", *args)
        else:  # the same refusal or degradation, retried, once a minute on stderr
            kind = (*args, context.get("role"), context.get("sae_id"),
                    context.get("peer_sae_id"))
            _WARNINGS.warning(kind, "hybrid decision: policy %s, inputs %s, outcome %s%s",
                              *args)
