"""What an operator sees and does at one KME: each link's state, its alarms, clearing them.

This module owns the *link states* shown by ``corridor up``'s status, by
``corridor alarm list`` and by ``GET /operator/v1/alarms``, and the
:class:`AlarmDesk` behind the operator endpoints of :mod:`corridor.kms.api`.

Link states (:func:`link_state`, first match wins):

- ``dead``: no key can come from the link: its feeder stopped (source exhausted or
  failed), or no block arrived for ``dead_after_s`` (:data:`DEFAULT_LINK_DEAD_AFTER_S`,
  60 s; since the feeder started when no block ever came) while the feeder was not
  paused for full pools. Look at the link itself: the source, the classical channel,
  the peer site.
- ``quarantined``: blocks arrive but the LinkMonitor keeps them out of the pools (an
  active alarm, :mod:`corridor.kms.alarms`); keys already stored stay deliverable. An
  automatic recovery may lift it; a latched alarm needs ``corridor alarm clear``.
- ``pool_full``: blocks arrive and pass every check, but the last one was (partly)
  dropped because a pool of the link is at its capacity (``max_key_count``; events
  ``pool_full``/``link_feed_dropped``), or the feeder has paused the link until its
  pools have room (``link_feed_paused``; however long ago its last block came). Nothing
  is wrong with the link: the SAEs are not fetching keys as fast as the link makes them.
- ``starting``: no block yet, and the feeder has run for less than ``dead_after_s``.
- ``ok``: the last block was stored whole (or aborted/empty without an alarm: a single
  discarded block is not a fault).

Which KME owns a link's alarms: the LinkMonitor that judges the link's blocks. In
``corridor up`` one monitor (shared by every KME of the process) judges every link, so
clearing at either KME of a link clears it for both. In ``corridor kme serve`` each KME
process judges its own copy of each of its links: the KMEs at both ends hold their own
alarms, and an operator clears the link at each of them (``corridor alarm clear
--from-up`` visits every KME of the file; with ``--kme`` one KME at a time).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.alarms import Alarm, LinkMonitor

DEFAULT_LINK_DEAD_AFTER_S = 60.0
MAX_REASON_CHARS = 256

STATE_OK = "ok"
STATE_STARTING = "starting"
STATE_POOL_FULL = "pool_full"
STATE_QUARANTINED = "quarantined"
STATE_DEAD = "dead"
LINK_STATES = (STATE_OK, STATE_STARTING, STATE_POOL_FULL, STATE_QUARANTINED, STATE_DEAD)

_POOL_FULL_OUTCOMES = frozenset({"dropped_full", "stored_partly"})


class UnknownLinkError(ParameterError):
    """The link is not a link of this KME."""


def link_state(*, running: bool, stopped_reason: str | None, blocks_seen: int,
               last_block_age_s: float | None, running_for_s: float, quarantined: bool,
               last_outcome: str | None, paused_full: bool = False,
               dead_after_s: float = DEFAULT_LINK_DEAD_AFTER_S) -> str:
    """The state of one link (module docstring): ``dead``, ``quarantined``,
    ``pool_full``, ``starting`` or ``ok``."""
    if not running or stopped_reason is not None:
        return STATE_DEAD
    if paused_full:
        return STATE_QUARANTINED if quarantined else STATE_POOL_FULL
    if blocks_seen == 0 or last_block_age_s is None:
        if running_for_s >= dead_after_s:
            return STATE_DEAD
    elif last_block_age_s >= dead_after_s:
        return STATE_DEAD
    if quarantined:
        return STATE_QUARANTINED
    if blocks_seen == 0:
        return STATE_STARTING
    if last_outcome in _POOL_FULL_OUTCOMES:
        return STATE_POOL_FULL
    return STATE_OK


def feeder_state(feeder: Any, quarantined: bool, *, now_s: float | None = None,
                 dead_after_s: float = DEFAULT_LINK_DEAD_AFTER_S) -> tuple[str, float | None]:
    """:func:`link_state` of a :class:`~corridor.kms.sources.feeder.LinkFeeder`, and the age of
    its last block in seconds (None before the first)."""
    now = time.monotonic() if now_s is None else now_s
    stats = feeder.stats
    last_at = stats.last_block_at_monotonic_s
    age = None if last_at is None else max(0.0, now - last_at)
    state = link_state(running=feeder.running, stopped_reason=stats.stopped_reason,
                       blocks_seen=stats.blocks_seen, last_block_age_s=age,
                       running_for_s=max(0.0, now - stats.started_at_monotonic_s),
                       quarantined=quarantined, last_outcome=stats.last_outcome,
                       paused_full=stats.paused_full,
                       dead_after_s=dead_after_s)
    return state, age


def alarm_dict(alarm: Alarm) -> dict[str, Any]:
    """An alarm as public plain data."""
    return {"alarm_id": alarm.alarm_id, "kind": alarm.kind, "reason": alarm.reason,
            "latched": alarm.latched, "block_id": alarm.block_id,
            "raised_at_unix_s": alarm.raised_at_unix_s}


def check_reason(reason: Any, field: str = "reason") -> str:
    """An operator's reason: non-empty printable text of at most 256 characters."""
    if (not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS
            or not reason.isprintable()):
        raise ParameterError(field, reason, f"must be a non-empty printable text of at most "
                             f"{MAX_REASON_CHARS} characters saying why the alarm is cleared")
    return reason.strip()


class AlarmDesk:
    """The operator's view of one KME's links (``/operator/v1/alarms``).

    ``link_ids`` are the links of this KME. :meth:`attach` hands it the LinkMonitor that
    judges those links in this process and their feeders (none when this KME serves
    stored keys only); until then every link reads ``dead`` with no alarm.
    """

    def __init__(self, kme_id: str, link_ids: Iterable[str], *,
                 dead_after_s: float = DEFAULT_LINK_DEAD_AFTER_S) -> None:
        self.kme_id = kme_id
        self.link_ids = tuple(link_ids)
        self.dead_after_s = float(dead_after_s)
        self._lock = threading.Lock()
        self._monitor: LinkMonitor | None = None
        self._feeders: dict[str, Any] = {}

    def attach(self, monitor: LinkMonitor, feeders: Mapping[str, Any]) -> None:
        """The monitor judging this KME's links here, and their feeders by link ID."""
        with self._lock:
            self._monitor = monitor
            self._feeders = {k: v for k, v in feeders.items() if k in self.link_ids}

    def links(self) -> list[dict[str, Any]]:
        """Each link of this KME: state, alarms, last block age, whether it is fed here."""
        with self._lock:
            monitor, feeders = self._monitor, dict(self._feeders)
        out = []
        for link_id in self.link_ids:
            health = monitor.health(link_id) if monitor is not None else None
            quarantined = bool(health and health.quarantined)
            feeder = feeders.get(link_id)
            if feeder is None:
                state, age = STATE_DEAD, None
            else:
                state, age = feeder_state(feeder, quarantined, dead_after_s=self.dead_after_s)
            out.append({"link_id": link_id, "state": state, "quarantined": quarantined,
                        "fed_here": feeder is not None, "last_block_age_s": age,
                        "alarms": [alarm_dict(a) for a in (health.active_alarms
                                                           if health else ())]})
        return out

    def clear(self, link_id: str, operator: str, reason: Any) -> dict[str, Any]:
        """Lift every alarm of ``link_id`` at this KME for ``operator`` with ``reason``
        (audited as ``link_cleared`` by the monitor); says whether anything was cleared."""
        reason = check_reason(reason)
        if link_id not in self.link_ids:
            raise UnknownLinkError("link_id", link_id,
                                   f"must be a link of KME {self.kme_id}: {list(self.link_ids)}")
        with self._lock:
            monitor = self._monitor
        if monitor is None:
            return {"kme_id": self.kme_id, "link_id": link_id, "cleared": False,
                    "alarm_ids": [], "note": "no link is judged at this KME"}
        alarm_ids = [a.alarm_id for a in monitor.active_alarms(link_id)]
        cleared = monitor.clear(link_id, operator, reason=reason)
        return {"kme_id": self.kme_id, "link_id": link_id, "cleared": cleared,
                "alarm_ids": alarm_ids if cleared else []}


__all__ = ["DEFAULT_LINK_DEAD_AFTER_S", "LINK_STATES", "AlarmDesk", "UnknownLinkError",
           "alarm_dict", "check_reason", "feeder_state", "link_state"]
