"""Per-SAE-pair key quotas: a rate limit (token bucket) and a daily allowance.

This module owns the quota arithmetic and its configuration (the ``[quota]`` table of a
corridor file, docs/corridor-up.md). A quota applies to one ordered pair of SAEs
(master, slave) at the master's KME and counts keys, whatever their size:

- ``keys_per_second`` with ``burst_keys``: a token bucket holding at most
  ``burst_keys`` tokens, refilled continuously at ``keys_per_second``; a request for
  ``n`` keys takes ``n`` tokens or is refused whole (nothing is taken);
- ``keys_per_day``: at most that many keys per UTC calendar day (the count restarts at
  00:00 UTC).

``0`` switches a limit off. :class:`QuotaPolicy` holds the default and the per-pair
overrides; :class:`SaeQuotas` keeps one :class:`PairQuota` per pair that asked and is
what :class:`~corridor.kms.manager.KeyManager` consults, before any key is cut, so a
refused request costs no key material, no audit intent and no store write. State is in
memory: a restarted KME starts every bucket full and every daily count at zero.

Both clocks are injected (``monotonic`` for the bucket, ``wall`` in UNIX seconds for the
UTC day) so that the arithmetic is tested without sleeping.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.config import check_id

SECONDS_PER_DAY = 86_400
_LIMIT_KEYS = ("keys_per_second", "burst_keys", "keys_per_day")

# Why a request was refused, as the ``quota`` detail names it.
QUOTA_RATE = "keys_per_second"
QUOTA_DAY = "keys_per_day"


@dataclass(frozen=True)
class QuotaLimits:
    """The limits of one SAE pair; 0 switches a limit off.

    Attributes:
        keys_per_second: refill rate of the token bucket.
        burst_keys: bucket size, the most keys taken at once after a quiet spell
            (default: ``max(1, ceil(keys_per_second))``).
        keys_per_day: keys per UTC calendar day.
    """

    keys_per_second: float = 0.0
    burst_keys: int = 0
    keys_per_day: int = 0

    def __post_init__(self) -> None:
        rate = self.keys_per_second
        if isinstance(rate, bool) or not isinstance(rate, int | float) \
                or not 0.0 <= rate <= 1e9 or math.isnan(rate):
            raise ParameterError("keys_per_second", rate, "must be a number in [0, 1e9] "
                                 "(0: no rate limit)")
        for name in ("burst_keys", "keys_per_day"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ParameterError(name, value, "must be an integer >= 0 (0: no limit)")
        if rate > 0 and self.burst_keys == 0:
            object.__setattr__(self, "burst_keys", max(1, math.ceil(rate)))
        if rate == 0 and self.burst_keys:
            raise ParameterError("burst_keys", self.burst_keys,
                                 "needs keys_per_second > 0 (a burst of a bucket that "
                                 "never refills would be a lifetime allowance)")

    @property
    def unlimited(self) -> bool:
        """True when neither limit is on."""
        return self.keys_per_second == 0 and self.keys_per_day == 0

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str,
                     base: QuotaLimits | None = None) -> QuotaLimits:
        """Limits from a TOML table; fields not given come from ``base``."""
        extra = sorted(set(data) - set(_LIMIT_KEYS))
        if extra:
            raise ParameterError(f"{where}.{extra[0]}", data[extra[0]],
                                 f"unknown setting; allowed: {', '.join(_LIMIT_KEYS)}")
        merged: dict[str, Any] = {}
        if base is not None:
            merged = {"keys_per_second": base.keys_per_second,
                      "keys_per_day": base.keys_per_day}
            # A pair that changes the rate without a burst gets the rate's own default.
            if "keys_per_second" not in data:
                merged["burst_keys"] = base.burst_keys
        merged.update(data)
        try:
            return cls(**merged)
        except ParameterError as exc:
            raise ParameterError(f"{where}.{exc.field}", exc.value, exc.allowed) from None


@dataclass(frozen=True)
class QuotaRefusal:
    """Why a request was refused and when asking again can succeed.

    ``retry_after_s`` is None when the request can never fit (it asks for more than
    the burst or the daily allowance); the KME then answers 400, else 503.
    """

    quota: str
    message: str
    retry_after_s: float | None

    def details(self) -> list[dict[str, Any]]:
        """The ETSI 014 Error ``details``."""
        detail: dict[str, Any] = {"quota": self.quota}
        if self.retry_after_s is not None:
            detail["retry_after_s"] = round(self.retry_after_s, 3)
        return [detail]


class PairQuota:
    """The bucket and daily count of one SAE pair. Not thread-safe on its own
    (:class:`SaeQuotas` serialises it)."""

    def __init__(self, limits: QuotaLimits, monotonic_s: float, wall_s: float) -> None:
        self.limits = limits
        self.tokens = float(limits.burst_keys)
        self.updated_s = monotonic_s
        self.day = int(wall_s // SECONDS_PER_DAY)
        self.used_today = 0

    def take(self, count: int, monotonic_s: float, wall_s: float) -> QuotaRefusal | None:
        """Take ``count`` keys, or return why not (nothing is taken then)."""
        limits = self.limits
        day = int(wall_s // SECONDS_PER_DAY)
        if day != self.day:
            self.day, self.used_today = day, 0
        if limits.keys_per_second > 0:
            elapsed_s = max(0.0, monotonic_s - self.updated_s)
            self.tokens = min(float(limits.burst_keys),
                              self.tokens + elapsed_s * limits.keys_per_second)
            self.updated_s = monotonic_s
        if limits.keys_per_day and count > limits.keys_per_day:
            return QuotaRefusal(QUOTA_DAY, f"{count} keys exceed this SAE pair's allowance "
                                f"of {limits.keys_per_day} keys per day", None)
        if limits.keys_per_second > 0 and count > limits.burst_keys:
            return QuotaRefusal(QUOTA_RATE, f"{count} keys exceed this SAE pair's burst of "
                                f"{limits.burst_keys} keys; ask for at most "
                                f"{limits.burst_keys} at a time", None)
        if limits.keys_per_day and self.used_today + count > limits.keys_per_day:
            refill_s = (day + 1) * SECONDS_PER_DAY - wall_s
            return QuotaRefusal(QUOTA_DAY, f"this SAE pair used {self.used_today} of its "
                                f"{limits.keys_per_day} keys per day; the allowance "
                                f"restarts at 00:00 UTC, in {refill_s:.0f} s", refill_s)
        if limits.keys_per_second > 0 and self.tokens < count:
            wait_s = (count - self.tokens) / limits.keys_per_second
            return QuotaRefusal(QUOTA_RATE, f"this SAE pair is over its rate of "
                                f"{limits.keys_per_second:g} keys per second (burst "
                                f"{limits.burst_keys}); {count} keys are available again "
                                f"in {wait_s:.3f} s", wait_s)
        if limits.keys_per_second > 0:
            self.tokens -= count
        self.used_today += count
        return None


@dataclass(frozen=True)
class QuotaPolicy:
    """The corridor's quotas: a default for every pair and per-pair overrides.

    ``pairs`` maps ``(master_sae_id, slave_sae_id)`` to that pair's limits.
    """

    default: QuotaLimits = QuotaLimits()
    pairs: Mapping[tuple[str, str], QuotaLimits] | None = None

    def limits(self, master_sae_id: str, slave_sae_id: str) -> QuotaLimits:
        """The limits of one pair."""
        return (self.pairs or {}).get((master_sae_id, slave_sae_id), self.default)

    @property
    def unlimited(self) -> bool:
        """True when no pair has any limit."""
        return self.default.unlimited and all(
            limits.unlimited for limits in (self.pairs or {}).values())

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any],
                     saes: Mapping[str, str] | None = None) -> QuotaPolicy:
        """Build from the ``[quota]`` table: the limits, plus ``[[quota.pairs]]`` entries
        with ``master``, ``slave`` and any of the limits (the rest from the default).
        ``saes`` (SAE -> KME), when given, must know every SAE named."""
        if not isinstance(data, Mapping):
            raise ParameterError("quota", data, "must be a TOML table")
        pair_entries = data.get("pairs", [])
        default = QuotaLimits.from_mapping(
            {k: v for k, v in data.items() if k != "pairs"}, "quota")
        if not isinstance(pair_entries, list):
            raise ParameterError("quota.pairs", pair_entries,
                                 "must list [[quota.pairs]] tables")
        pairs: dict[tuple[str, str], QuotaLimits] = {}
        for index, raw in enumerate(pair_entries):
            where = f"quota.pairs[{index}]"
            if not isinstance(raw, Mapping):
                raise ParameterError(where, raw, "must be a TOML table")
            ends = []
            for role in ("master", "slave"):
                sae = check_id(f"{where}.{role}", raw.get(role))
                if saes is not None and sae not in saes:
                    raise ParameterError(f"{where}.{role}", sae,
                                         f"must be one of the corridor's SAEs {sorted(saes)}")
                ends.append(sae)
            key = (ends[0], ends[1])
            if key in pairs:
                raise ParameterError(f"{where}.master", key[0],
                                     f"the pair ({key[0]}, {key[1]}) is listed twice")
            pairs[key] = QuotaLimits.from_mapping(
                {k: v for k, v in raw.items() if k not in ("master", "slave")}, where,
                base=default)
        return cls(default=default, pairs=pairs)


class SaeQuotas:
    """The live quotas of one KME (thread-safe).

    Args:
        policy: the limits.
        monotonic: seconds on a monotonic clock (the buckets).
        wall: UNIX seconds (the UTC day).
    """

    def __init__(self, policy: QuotaPolicy, *,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, str], PairQuota] = {}

    def take(self, master_sae_id: str, slave_sae_id: str, count: int) -> QuotaRefusal | None:
        """Take ``count`` keys from the pair's quota, or return why not."""
        limits = self.policy.limits(master_sae_id, slave_sae_id)
        if limits.unlimited:
            return None
        with self._lock:
            now_s, wall_s = self._monotonic(), self._wall()
            pair = self._pairs.get((master_sae_id, slave_sae_id))
            if pair is None:
                pair = self._pairs[(master_sae_id, slave_sae_id)] = PairQuota(
                    limits, now_s, wall_s)
            return pair.take(count, now_s, wall_s)

    def __repr__(self) -> str:
        return f"SaeQuotas(pairs={len(self._pairs)}, default={self.policy.default})"
