"""Per SAE pair: keys delivered and time-to-key, from the KMEs' verified audit entries.

This module owns :class:`PairTracker`, which the dashboard feeds with every audit entry
its KMEs verified (:class:`~corridor.kms.audit_follow.AuditFollower`), in the order each
KME wrote them. The definitions are those of the pilot KPIs (:mod:`corridor.web.kpis`):

- a *pair* is a master SAE and the slave SAE(s) it asked keys for, read from the master
  KME's ``keys_reserving`` entry of the delivery (its ``slave_sae_ids``);
- *keys delivered* counts the master KME's ``keys_delivered`` entries (role ``master``),
  one per answered ``enc_keys`` request, and the keys they carried;
- *time-to-key* runs from the master KME's ``keys_delivered`` of a key ID to the slave
  KME's ``keys_delivered`` of the same ID: how long until both SAEs hold the key. p50
  and p99 are nearest-rank over the last :data:`SAMPLES_KEPT` keys of the pair.

Memory is bounded: deliveries and key IDs waiting for their other half are forgotten
oldest first beyond :data:`PENDING_KEPT`. Only IDs and counts are kept, no key.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from corridor.web.kpis import parse_time, percentile

#: Time-to-key samples kept per pair for the percentiles.
SAMPLES_KEPT = 1000
#: Deliveries and key IDs remembered while their other half has not been seen.
PENDING_KEPT = 50_000


@dataclass
class _Pair:
    requests: int = 0
    keys: int = 0
    last_delivery: str | None = None
    slave_requests: int = 0
    time_to_key_s: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES_KEPT))


def _remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
    table[key] = value
    if len(table) > PENDING_KEPT:
        table.popitem(last=False)


class PairTracker:
    """Keys delivered and time-to-key per SAE pair (module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pairs: dict[str, _Pair] = {}
        self._slaves_of: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._master_at: OrderedDict[str, tuple[str, dt.datetime]] = OrderedDict()
        self.entries_seen = 0

    def observe(self, entry: dict[str, Any]) -> None:
        """Take one verified audit entry of any KME."""
        event = entry.get("event")
        fields = entry.get("fields")
        if not isinstance(fields, dict) or event not in ("keys_reserving", "keys_delivered"):
            return
        with self._lock:
            self.entries_seen += 1
            if event == "keys_reserving":
                slaves = fields.get("slave_sae_ids")
                if isinstance(slaves, list) and fields.get("delivery_id"):
                    _remember(self._slaves_of, str(fields["delivery_id"]),
                              tuple(str(s) for s in slaves))
                return
            ids = [str(k) for k in fields.get("key_ids") or []]
            when = parse_time(str(entry.get("time")))
            master = str(fields.get("master_sae_id"))
            if fields.get("role") == "master":
                slaves = self._slaves_of.pop(str(fields.get("delivery_id")), None)
                name = self.pair_name(master, slaves)
                pair = self._pairs.setdefault(name, _Pair())
                pair.requests += int(fields.get("requests") or 1)
                pair.keys += int(fields.get("count") or len(ids))
                pair.last_delivery = str(entry.get("time"))
                for key_id in ids:
                    _remember(self._master_at, key_id, (name, when))
            elif fields.get("role") == "slave":
                for key_id in ids:
                    found = self._master_at.pop(key_id, None)
                    if found is None:
                        continue
                    name, master_time = found
                    pair = self._pairs.setdefault(name, _Pair())
                    pair.time_to_key_s.append(max(0.0, (when - master_time).total_seconds()))
                if ids:
                    slave = str(fields.get("sae_id"))
                    self._pairs.setdefault(self.pair_name(master, (slave,)),
                                           _Pair()).slave_requests += 1

    @staticmethod
    def pair_name(master: str, slaves: tuple[str, ...] | None) -> str:
        """``master -> slave[, slave...]`` (``?`` when the reservation was not seen)."""
        return f"{master} -> {', '.join(slaves) if slaves else '?'}"

    def rows(self) -> list[dict[str, Any]]:
        """One row per pair, by name."""
        with self._lock:
            out = []
            for name, pair in sorted(self._pairs.items()):
                samples = list(pair.time_to_key_s)
                out.append({"pair": name, "requests": pair.requests, "keys": pair.keys,
                            "slave_fetches": pair.slave_requests,
                            "last_delivery": pair.last_delivery,
                            "time_to_key_samples": len(samples),
                            "time_to_key_p50_s": percentile(samples, 50),
                            "time_to_key_p99_s": percentile(samples, 99)})
            return out


__all__ = ["PENDING_KEPT", "SAMPLES_KEPT", "PairTracker"]
