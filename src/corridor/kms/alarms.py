"""Link alarms and quarantine: when a link's output must stop feeding the key stores.

This module owns the rules that decide, block by block, whether a link is healthy. The
KeySource calls :meth:`LinkMonitor.observe_block` once per block of a link (not once
per KME) with the block's outcome (aborted with a reason, or distilled with its QBER
and secret bits) and stores the block into *both* KMEs of the link only when the
returned verdict says ``ingest``, so the two pools stay identical. While a link is
quarantined no new keys from it enter any pool (keys already stored stay deliverable:
they came from blocks that passed every check).

Rules (all thresholds are constructor arguments):

1. **Aborted block.** The abort reason decides:

   - *estimation* reasons (:data:`ESTIMATION_REASONS`: ``qber_above_threshold``,
     ``single_photon_bound_too_low``, ``phase_error_bound_too_high``, ``no_secret_key``,
     ``insufficient_statistics``, ``insufficient_test_bits``): alarm ``block_aborted``,
     quarantine, automatic recovery allowed;
   - *benign* reasons (:data:`BENIGN_REASONS`: ``verification_failed``, a Cascade frame
     error caught by the verification hash; ``channel_timeout``;
     ``output_used_for_authentication``, a block too short to pay for its own
     authentication; ``channel_lost``, the block in flight when a split-site link's
     TCP connection went away, after which the party reconnects by itself,
     :class:`~corridor.kms.sources.party.SimulatedLinkPartySource`): no alarm, but
     ``max_consecutive_discards`` (5) discarded blocks in a row raise
     ``consecutive_discards`` (quarantine, automatic recovery allowed);
   - every other reason (``authentication_failed``, ``malformed_message``,
     ``sifting_index_mismatch``, and any reason this module does not know, fail
     closed): alarm ``integrity``, quarantine, *latched*: only an operator's
     :meth:`LinkMonitor.clear` lifts it, because it means the classical channel was
     tampered with or a peer misbehaved.

2. **QBER trend.** Over the last ``trend_window_blocks`` (5) blocks that reported a
   QBER (aborted or not), once the window is full, a mean above
   ``qber_alarm_threshold`` (8 %) raises ``qber_trend`` and quarantines; the block that
   completes the window is not ingested. 8 % sits below distillation's 11 % abort
   threshold (where 1 - 2 H2(e) = 0): a link drifting towards it is stopped before its
   blocks start to abort, and its key rate has already fallen to a fraction of nominal.

3. **Automatic recovery.** A quarantined link whose active alarms are all
   non-latched is released after ``recovery_blocks`` (3) consecutive *good* blocks: not
   aborted, ``secret_bits > 0`` and QBER at most ``recovery_qber_threshold`` (default
   0.75 x the alarm threshold = 6 %, a hysteresis band so that a link sitting at the
   threshold does not flap). The block that completes the streak is ingested; the
   trend window restarts at every alarm, so it is judged on post-alarm blocks only.
   Blocks that arrive while quarantined are never ingested.

4. **Operator clear.** :meth:`LinkMonitor.clear` lifts every alarm of a link, latched
   or not, and records the operator's name.

Repeated alarms of the same kind and reason on an already quarantined link are not
raised again (the active one stands). Every alarm, quarantine, recovery and clear is an
event on the sink (audit log and metrics): ``link_alarm_raised``, ``link_quarantined``,
``link_recovered``, ``link_cleared``; every block is a ``link_block`` event.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.interface import EventSink

_log = logging.getLogger(__name__)

ESTIMATION_REASONS = frozenset({
    "qber_above_threshold", "single_photon_bound_too_low", "phase_error_bound_too_high",
    "no_secret_key", "insufficient_statistics", "insufficient_test_bits",
})
"""Abort reasons from parameter estimation (corridor.distill.estimation)."""

# ``output_used_for_authentication``: a block too short to pay for its own
# authentication yields no key but says nothing about the channel's integrity.
# ``channel_lost``: a split-site party lost its TCP connection mid-block and reconnects
# (kms/sources/party.py); an attacker who cuts connections gets only this (denial of service):
# a tampered message fails authentication, which stays an integrity alarm.
BENIGN_REASONS = frozenset({"verification_failed", "channel_timeout",
                            "output_used_for_authentication", "channel_lost"})
"""Abort reasons that alone raise no alarm (counted towards consecutive_discards)."""

ALARM_BLOCK_ABORTED = "block_aborted"
ALARM_QBER_TREND = "qber_trend"
ALARM_CONSECUTIVE_DISCARDS = "consecutive_discards"
ALARM_INTEGRITY = "integrity"

EVENT_BLOCK = "link_block"
EVENT_ALARM_RAISED = "link_alarm_raised"
EVENT_QUARANTINED = "link_quarantined"
EVENT_RECOVERED = "link_recovered"
EVENT_CLEARED = "link_cleared"

OUTCOME_ACCEPTED = "accepted"
OUTCOME_DISCARDED = "discarded"
OUTCOME_QUARANTINED = "quarantined"
REASON_LINK_QUARANTINED = "link_quarantined"
REASON_EMPTY_BLOCK = "empty_block"


@dataclass(frozen=True)
class Alarm:
    """One raised alarm on a link."""

    alarm_id: str
    link_id: str
    kind: str
    reason: str
    block_id: int
    latched: bool
    raised_at_unix_s: float


@dataclass(frozen=True)
class BlockVerdict:
    """What the KeySource must do with a block: ``ingest`` it or not, and why."""

    ingest: bool
    outcome: str
    quarantined: bool
    alarms_raised: tuple[Alarm, ...] = ()


@dataclass(frozen=True)
class LinkHealth:
    """A snapshot of one link's state (for status displays)."""

    link_id: str
    quarantined: bool
    active_alarms: tuple[Alarm, ...]
    qber_mean: float | None
    good_streak: int
    consecutive_discards: int
    blocks_observed: int
    last_qber: float | None


@dataclass
class _LinkState:
    qber_window: deque[float]
    alarms: list[Alarm] = field(default_factory=list)
    good_streak: int = 0
    consecutive_discards: int = 0
    blocks_observed: int = 0
    last_qber: float | None = None

    @property
    def quarantined(self) -> bool:
        return bool(self.alarms)


def _check_text(name: str, value: Any, limit: int = 128) -> str:
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise ParameterError(name, value, f"a non-empty printable string of at most {limit} "
                                          "characters")
    return value


class LinkMonitor:
    """Raises link alarms, quarantines links and releases them (module docstring rules).

    Thread-safe: one lock guards all links; events are emitted under it so their
    order in the audit log is the order of the state changes.
    """

    def __init__(self, event_sink: EventSink, *, qber_alarm_threshold: float = 0.08,
                 trend_window_blocks: int = 5, recovery_blocks: int = 3,
                 recovery_qber_threshold: float | None = None,
                 max_consecutive_discards: int = 5,
                 estimation_reasons: frozenset[str] = ESTIMATION_REASONS,
                 benign_reasons: frozenset[str] = BENIGN_REASONS) -> None:
        if not (isinstance(qber_alarm_threshold, int | float)
                and 0 < qber_alarm_threshold < 0.5):
            raise ParameterError("qber_alarm_threshold", qber_alarm_threshold,
                                 "a fraction in (0, 0.5)")
        if recovery_qber_threshold is None:
            recovery_qber_threshold = 0.75 * qber_alarm_threshold
        if not (isinstance(recovery_qber_threshold, int | float)
                and 0 <= recovery_qber_threshold <= qber_alarm_threshold):
            raise ParameterError("recovery_qber_threshold", recovery_qber_threshold,
                                 f"a fraction in [0, qber_alarm_threshold = "
                                 f"{qber_alarm_threshold}]")
        for name, value in (("trend_window_blocks", trend_window_blocks),
                            ("recovery_blocks", recovery_blocks),
                            ("max_consecutive_discards", max_consecutive_discards)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParameterError(name, value, "an integer >= 1")
        overlap = estimation_reasons & benign_reasons
        if overlap:
            raise ParameterError("benign_reasons", sorted(overlap),
                                 "reasons that are not also estimation reasons")
        self.event_sink = event_sink
        self.qber_alarm_threshold = float(qber_alarm_threshold)
        self.recovery_qber_threshold = float(recovery_qber_threshold)
        self.trend_window_blocks = trend_window_blocks
        self.recovery_blocks = recovery_blocks
        self.max_consecutive_discards = max_consecutive_discards
        self.estimation_reasons = frozenset(estimation_reasons)
        self.benign_reasons = frozenset(benign_reasons)
        self._lock = threading.RLock()
        self._links: dict[str, _LinkState] = {}

    # -- queries --------------------------------------------------------------

    def is_quarantined(self, link_id: str) -> bool:
        """True while the link has an active alarm (no new keys from it)."""
        with self._lock:
            state = self._links.get(link_id)
            return state is not None and state.quarantined

    def active_alarms(self, link_id: str | None = None) -> list[Alarm]:
        """Active alarms of one link, or of every link."""
        with self._lock:
            links = [self._links[link_id]] if link_id in self._links else (
                [] if link_id is not None else list(self._links.values()))
            return [alarm for state in links for alarm in state.alarms]

    def health(self, link_id: str) -> LinkHealth:
        """A snapshot of the link's state (an unseen link is healthy and empty)."""
        with self._lock:
            state = self._links.get(link_id) or _LinkState(qber_window=deque())
            window = state.qber_window
            return LinkHealth(link_id=link_id, quarantined=state.quarantined,
                              active_alarms=tuple(state.alarms),
                              qber_mean=(math.fsum(window) / len(window)) if window else None,
                              good_streak=state.good_streak,
                              consecutive_discards=state.consecutive_discards,
                              blocks_observed=state.blocks_observed,
                              last_qber=state.last_qber)

    # -- observations ---------------------------------------------------------

    def observe_block(self, link_id: str, block_id: int, *, aborted_reason: str | None,
                      qber: float | None, secret_bits: int,
                      duration_s: float | None = None) -> BlockVerdict:
        """Take one block's outcome and say whether its key may be stored.

        Args:
            link_id: the link that produced the block.
            block_id: the block's sequence number on the link.
            aborted_reason: the ``ProtocolAbort`` reason, or ``None`` if it was distilled.
            qber: the block's observed QBER (fraction), or ``None`` if not measured.
            secret_bits: final key length in bits (0 for an aborted block).
            duration_s: acquisition time the block covers, if known (for key rates).
        """
        _check_text("link_id", link_id)
        if not isinstance(block_id, numbers.Integral) or isinstance(block_id, bool) or block_id < 0:
            raise ParameterError("block_id", block_id, "an integer >= 0")
        block_id = int(block_id)
        if aborted_reason is not None:
            _check_text("aborted_reason", aborted_reason, 64)
        if qber is not None and not (isinstance(qber, numbers.Real) and not isinstance(qber, bool)
                                     and 0 <= qber <= 1):
            raise ParameterError("qber", qber, "a fraction in [0, 1] or None")
        if (not isinstance(secret_bits, numbers.Integral) or isinstance(secret_bits, bool)
                or secret_bits < 0):
            raise ParameterError("secret_bits", secret_bits, "an integer >= 0")
        secret_bits = int(secret_bits)
        if aborted_reason is not None and secret_bits:
            raise ParameterError("secret_bits", secret_bits, "0 for an aborted block")
        if duration_s is not None and not (isinstance(duration_s, numbers.Real)
                                           and duration_s > 0 and math.isfinite(duration_s)):
            raise ParameterError("duration_s", duration_s, "a positive number of seconds or None")
        qber = None if qber is None else float(qber)
        duration_s = None if duration_s is None else float(duration_s)
        with self._lock:
            state = self._state(link_id)
            state.blocks_observed += 1
            if qber is not None:
                state.last_qber = qber
            raised = self._judge(link_id, block_id, state, aborted_reason, qber, secret_bits)
            if aborted_reason is not None:
                outcome, ingest, reason = OUTCOME_DISCARDED, False, aborted_reason
            elif state.quarantined:
                outcome, ingest, reason = OUTCOME_QUARANTINED, False, REASON_LINK_QUARANTINED
            elif secret_bits == 0:
                outcome, ingest, reason = OUTCOME_DISCARDED, False, REASON_EMPTY_BLOCK
            else:
                outcome, ingest, reason = OUTCOME_ACCEPTED, True, None
            self.event_sink.emit(EVENT_BLOCK, link_id=link_id, block_id=block_id,
                                 outcome=outcome, reason=reason, qber=qber,
                                 secret_bits=secret_bits, duration_s=duration_s)
            return BlockVerdict(ingest=ingest, outcome=outcome, quarantined=state.quarantined,
                                alarms_raised=tuple(raised))

    def clear(self, link_id: str, operator: str, *, reason: str | None = None) -> bool:
        """An operator lifts every alarm of ``link_id``; False if there was none.

        ``reason`` (the operator's words, required by the operator endpoints and
        ``corridor alarm clear``) goes into the ``link_cleared`` event and the log.
        """
        _check_text("link_id", link_id)
        _check_text("operator", operator, 64)
        if reason is not None:
            _check_text("reason", reason, 256)
        with self._lock:
            state = self._links.get(link_id)
            if state is None or not state.alarms:
                return False
            cleared = [alarm.alarm_id for alarm in state.alarms]
            kinds = sorted({alarm.kind for alarm in state.alarms})
            self._release(state)
            detail = {} if reason is None else {"operator_reason": reason}
            self.event_sink.emit(EVENT_CLEARED, link_id=link_id, operator=operator,
                                 alarm_ids=cleared, active_alarms=0, **detail)
            _log.warning("link %s: operator %s cleared %d alarm(s) (%s), quarantine lifted; "
                         "reason: %s", link_id, operator, len(cleared), ", ".join(kinds),
                         reason if reason is not None else "(none given)")
            return True

    # -- internals (called under the lock) -------------------------------------

    def _state(self, link_id: str) -> _LinkState:
        state = self._links.get(link_id)
        if state is None:
            state = _LinkState(qber_window=deque(maxlen=self.trend_window_blocks))
            self._links[link_id] = state
        return state

    def _judge(self, link_id: str, block_id: int, state: _LinkState,
               aborted_reason: str | None, qber: float | None,
               secret_bits: int) -> list[Alarm]:
        raised: list[Alarm] = []
        if qber is not None:
            state.qber_window.append(qber)
        if aborted_reason is not None:
            state.good_streak = 0
            state.consecutive_discards += 1
            if aborted_reason in self.estimation_reasons:
                raised += self._raise(link_id, block_id, state, ALARM_BLOCK_ABORTED,
                                      aborted_reason, latched=False)
            elif aborted_reason not in self.benign_reasons:
                raised += self._raise(link_id, block_id, state, ALARM_INTEGRITY,
                                      aborted_reason, latched=True)
            elif state.consecutive_discards >= self.max_consecutive_discards:
                raised += self._raise(link_id, block_id, state, ALARM_CONSECUTIVE_DISCARDS,
                                      aborted_reason, latched=False,
                                      consecutive_discards=state.consecutive_discards)
        else:
            state.consecutive_discards = 0
        window = state.qber_window
        if len(window) == self.trend_window_blocks:
            mean = math.fsum(window) / len(window)
            if mean > self.qber_alarm_threshold:
                raised += self._raise(link_id, block_id, state, ALARM_QBER_TREND,
                                      "qber_mean_above_threshold", latched=False,
                                      qber_mean=mean, window_blocks=len(window),
                                      threshold=self.qber_alarm_threshold)
        if raised or aborted_reason is not None:
            return raised
        good = (secret_bits > 0 and qber is not None and qber <= self.recovery_qber_threshold)
        state.good_streak = state.good_streak + 1 if good else 0
        if (state.quarantined and state.good_streak >= self.recovery_blocks
                and not any(alarm.latched for alarm in state.alarms)):
            cleared = [alarm.alarm_id for alarm in state.alarms]
            streak = state.good_streak
            self._release(state)
            self.event_sink.emit(EVENT_RECOVERED, link_id=link_id, block_id=block_id,
                                 alarm_ids=cleared, good_blocks=streak,
                                 recovery_qber_threshold=self.recovery_qber_threshold,
                                 active_alarms=0)
            _log.warning("link %s recovered at block %d after %d good blocks (QBER <= %.4f): "
                         "%d alarm(s) lifted, keys flow again", link_id, block_id, streak,
                         self.recovery_qber_threshold, len(cleared))
        return raised

    def _raise(self, link_id: str, block_id: int, state: _LinkState, kind: str, reason: str,
               *, latched: bool, **detail: Any) -> list[Alarm]:
        if any(a.kind == kind and a.reason == reason for a in state.alarms):
            return []
        was_quarantined = state.quarantined
        alarm = Alarm(alarm_id=str(uuid.uuid4()), link_id=link_id, kind=kind, reason=reason,
                      block_id=block_id, latched=latched, raised_at_unix_s=time.time())
        state.alarms.append(alarm)
        state.good_streak = 0
        state.qber_window.clear()  # recovery and the next trend are judged on new blocks
        self.event_sink.emit(EVENT_ALARM_RAISED, link_id=link_id, alarm_id=alarm.alarm_id,
                             kind=kind, reason=reason, block_id=block_id, latched=latched,
                             active_alarms=len(state.alarms), **detail)
        _log.warning("link %s: alarm %s (%s) raised at block %d%s", link_id, kind, reason,
                     block_id, ", latched until an operator clears it (corridor alarm clear)"
                     if latched else "")
        if not was_quarantined:
            self.event_sink.emit(EVENT_QUARANTINED, link_id=link_id, alarm_id=alarm.alarm_id,
                                 kind=kind, reason=reason, block_id=block_id,
                                 active_alarms=len(state.alarms))
            _log.warning("link %s quarantined at block %d (%s: %s): its blocks no longer "
                         "enter the key pools", link_id, block_id, kind, reason)
        return [alarm]

    def _release(self, state: _LinkState) -> None:
        state.alarms.clear()
        state.good_streak = 0
        state.consecutive_discards = 0
        state.qber_window.clear()
