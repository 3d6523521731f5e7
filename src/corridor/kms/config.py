"""What one KME is configured with, and who is attached where.

:class:`KmeConfig` holds one KME's limits as the ETSI GS QKD 014 Status object reports
them (sizes in bits) plus the capacity of each of its key pools. :class:`SaeDirectory`
is the deployment's map: which KME every SAE is attached to, and which pairs of KMEs
share a QKD link (``link_id``). Both validate everything they are given and raise
:class:`~corridor.errors.ParameterError` naming the field, the value and what is allowed.

The direction rule lives here because both KMEs of a link must apply it identically:
of the two KME IDs of a link, the lexicographically smaller one is "A". Each distilled
block is split into a first half (``floor(len/2)`` bytes, pool ``"A->B"``) and a second
half (pool ``"B->A"``); KME A serves the master SAEs of direction ``"A->B"`` and is the
only KME that ever reserves from that pool (docs/kms-store.md).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from corridor.errors import ParameterError

DIRECTION_A_TO_B = "A->B"
DIRECTION_B_TO_A = "B->A"
DIRECTIONS = (DIRECTION_A_TO_B, DIRECTION_B_TO_A)

# IDs travel in URL paths, SQL rows and audit lines: printable, no whitespace, bounded.
_ID_PATTERN = re.compile(r"^[^\s\x00-\x1f\x7f]{1,128}$")


def check_id(field_name: str, value: Any) -> str:
    """Return ``value`` if it is a usable KME/SAE/link ID, else raise ParameterError."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ParameterError(field_name, value,
                             "must be a string of 1 to 128 printable characters without "
                             "whitespace")
    return value


def _positive_int(field_name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(field_name, value, f"must be an integer >= {minimum}")
    return value


KME_SETTING_NAMES = frozenset({
    "key_size_bits", "min_key_size_bits", "max_key_size_bits", "max_key_per_request",
    "max_key_count", "max_sae_id_count", "supported_extensions",
    "undelivered_key_lifetime_s"})
"""The settings of :class:`KmeConfig` a corridor file may give (``[kme]``, ``[[kmes]]``)."""


@dataclass(frozen=True)
class KmeConfig:
    """One KME's limits (ETSI GS QKD 014 Status fields) and pool capacity.

    Attributes:
        kme_id: this KME's ID (``source_KME_ID`` in Status).
        key_size_bits: default key size when a request names none.
        min_key_size_bits: smallest size a request may ask for (multiple of 8).
        max_key_size_bits: largest size a request may ask for (multiple of 8).
        max_key_per_request: most keys in one ``enc_keys`` (and key IDs in one ``dec_keys``).
        max_key_count: capacity of each pool, counted in keys of ``key_size_bits``; a pool
            holds at most ``max_key_count * key_size_bits / 8`` bytes.
        max_sae_id_count: most ``additional_slave_SAE_IDs`` in one request; 0 disables
            multicast.
        supported_extensions: the ``extension_mandatory`` names this KME honours, each
            mapped to the option values it inherently satisfies (for example
            ``{"abc_route_type": ("direct",)}`` for a KME that only serves direct links).
            Empty by default: every mandatory extension is refused with the spec's message.
        undelivered_key_lifetime_s: how long a reserved key waits to be fetched; after it
            the KME discards it (audited ``keys_expired``), so keys that no SAE fetches
            (a master SAE that never passed the ID on, an announcement whose answer was
            lost) do not fill the store.
    """

    kme_id: str
    key_size_bits: int = 256
    min_key_size_bits: int = 64
    max_key_size_bits: int = 8192
    max_key_per_request: int = 128
    max_key_count: int = 100_000
    max_sae_id_count: int = 0
    supported_extensions: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    undelivered_key_lifetime_s: float = 86_400.0

    def __post_init__(self) -> None:
        check_id("kme_id", self.kme_id)
        lifetime = self.undelivered_key_lifetime_s
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) \
                or not 1.0 <= lifetime <= 365 * 86_400.0:
            raise ParameterError("undelivered_key_lifetime_s", lifetime,
                                 "must be a number of seconds in [1, 31536000]")
        for name in ("key_size_bits", "min_key_size_bits", "max_key_size_bits"):
            value = _positive_int(name, getattr(self, name), 8)
            if value % 8:
                raise ParameterError(name, value, "must be a multiple of 8 (whole bytes)")
        if self.min_key_size_bits > self.max_key_size_bits:
            raise ParameterError("min_key_size_bits", self.min_key_size_bits,
                                 f"must not exceed max_key_size_bits = {self.max_key_size_bits}")
        if not self.min_key_size_bits <= self.key_size_bits <= self.max_key_size_bits:
            raise ParameterError("key_size_bits", self.key_size_bits,
                                 f"must lie in [min_key_size_bits, max_key_size_bits] = "
                                 f"[{self.min_key_size_bits}, {self.max_key_size_bits}]")
        _positive_int("max_key_per_request", self.max_key_per_request)
        _positive_int("max_key_count", self.max_key_count)
        _positive_int("max_sae_id_count", self.max_sae_id_count, 0)
        if not isinstance(self.supported_extensions, Mapping):
            raise ParameterError("supported_extensions", self.supported_extensions,
                                 "must map extension names to tuples of satisfied values")
        normalised: dict[str, tuple[Any, ...]] = {}
        for name, values in self.supported_extensions.items():
            if not isinstance(name, str) or not name:
                raise ParameterError("supported_extensions", name,
                                     "extension names must be non-empty strings")
            if isinstance(values, str | bytes) or not isinstance(values, Iterable):
                raise ParameterError(f"supported_extensions.{name}", values,
                                     "must be a list of the option values this KME satisfies")
            normalised[name] = tuple(values)
        object.__setattr__(self, "supported_extensions", normalised)

    @property
    def key_size_bytes(self) -> int:
        """The default key size in bytes."""
        return self.key_size_bits // 8

    @property
    def pool_capacity_bytes(self) -> int:
        """Most bytes one pool (link, direction) may hold."""
        return self.max_key_count * self.key_size_bytes

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> KmeConfig:
        """Build from a parsed TOML/JSON table; unknown keys are refused by name."""
        known = {"kme_id", *KME_SETTING_NAMES}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ParameterError("kme", unknown[0], f"unknown setting; allowed: {sorted(known)}")
        if "kme_id" not in data:
            raise ParameterError("kme_id", None, "is required")
        return cls(**dict(data))


@dataclass(frozen=True)
class LinkSpec:
    """A QKD link between two KMEs; ``kme_a`` is the lexicographically smaller ID."""

    link_id: str
    kme_a: str
    kme_b: str

    def direction_from(self, master_kme_id: str) -> str:
        """The pool direction whose master KME is ``master_kme_id``."""
        if master_kme_id == self.kme_a:
            return DIRECTION_A_TO_B
        if master_kme_id == self.kme_b:
            return DIRECTION_B_TO_A
        raise ParameterError("kme_id", master_kme_id,
                             f"is not an end of link {self.link_id!r} "
                             f"({self.kme_a!r}, {self.kme_b!r})")

    def master_kme(self, direction: str) -> str:
        """The KME that reserves from pool ``direction`` (serves its master SAEs)."""
        if direction == DIRECTION_A_TO_B:
            return self.kme_a
        if direction == DIRECTION_B_TO_A:
            return self.kme_b
        raise ParameterError("direction", direction, f"must be one of {list(DIRECTIONS)}")

    def slave_kme(self, direction: str) -> str:
        """The KME that cuts reservations announced for pool ``direction``."""
        master = self.master_kme(direction)
        return self.kme_b if master == self.kme_a else self.kme_a

    def other(self, kme_id: str) -> str:
        """The KME at the other end from ``kme_id``."""
        self.direction_from(kme_id)
        return self.kme_b if kme_id == self.kme_a else self.kme_a


def split_block(key: bytes) -> dict[str, bytes]:
    """Split a distilled block into its two direction pools by the fixed public rule."""
    half = len(key) // 2
    return {DIRECTION_A_TO_B: key[:half], DIRECTION_B_TO_A: key[half:]}


class SaeDirectory:
    """Every SAE of the deployment with the KME it is attached to, and the links.

    Args:
        sae_kme: ``{sae_id: kme_id}`` for every SAE.
        links: ``{link_id: (kme_id, kme_id)}``; at most one link per KME pair.
    """

    def __init__(self, sae_kme: Mapping[str, str],
                 links: Mapping[str, tuple[str, str] | list[str]]) -> None:
        self._sae_kme: dict[str, str] = {}
        for sae_id, kme_id in sae_kme.items():
            self._sae_kme[check_id("sae_id", sae_id)] = check_id(f"saes.{sae_id}", kme_id)
        self._links: dict[str, LinkSpec] = {}
        self._pairs: dict[tuple[str, str], LinkSpec] = {}
        for link_id, ends in links.items():
            check_id("link_id", link_id)
            if isinstance(ends, str) or len(ends) != 2:
                raise ParameterError(f"links.{link_id}", ends, "must be a pair of KME IDs")
            first, second = (check_id(f"links.{link_id}", end) for end in ends)
            if first == second:
                raise ParameterError(f"links.{link_id}", list(ends),
                                     "must join two different KMEs")
            low, high = sorted((first, second))
            if (low, high) in self._pairs:
                raise ParameterError(f"links.{link_id}", list(ends),
                                     f"KMEs {low!r} and {high!r} already share link "
                                     f"{self._pairs[(low, high)].link_id!r}")
            spec = LinkSpec(link_id, low, high)
            self._links[link_id] = spec
            self._pairs[(low, high)] = spec

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> SaeDirectory:
        """Build from ``{"saes": {sae: kme}, "links": {link_id: [kme, kme]}}``."""
        unknown = sorted(set(data) - {"saes", "links"})
        if unknown:
            raise ParameterError("directory", unknown[0], "unknown key; allowed: saes, links")
        saes = data.get("saes", {})
        links = data.get("links", {})
        if not isinstance(saes, Mapping):
            raise ParameterError("saes", saes, "must map SAE IDs to KME IDs")
        if not isinstance(links, Mapping):
            raise ParameterError("links", links, "must map link IDs to pairs of KME IDs")
        return cls(saes, links)

    def kme_of(self, sae_id: str) -> str | None:
        """The KME ``sae_id`` is attached to, or None for an unknown SAE."""
        return self._sae_kme.get(sae_id)

    def saes_of(self, kme_id: str) -> list[str]:
        """The SAEs attached to ``kme_id``, sorted."""
        return sorted(sae for sae, kme in self._sae_kme.items() if kme == kme_id)

    def link(self, link_id: str) -> LinkSpec | None:
        """The link called ``link_id``, or None."""
        return self._links.get(link_id)

    def link_between(self, kme_x: str, kme_y: str) -> LinkSpec | None:
        """The link joining two KMEs, or None."""
        low, high = sorted((kme_x, kme_y))
        return self._pairs.get((low, high))

    def links_of(self, kme_id: str) -> list[LinkSpec]:
        """Every link with ``kme_id`` at one end."""
        return [spec for spec in self._links.values() if kme_id in (spec.kme_a, spec.kme_b)]

    def __repr__(self) -> str:
        return f"SaeDirectory(saes={len(self._sae_kme)}, links={sorted(self._links)})"


HYBRID_POLICY_NAMES = ("qkd-required", "pqc-required", "both-required", "any")
"""The policy names a ``[[hybrid]]`` entry may give: those of
:class:`corridor.hybrid.policy.Policy`, spelled out here because the kms layer may not
import the hybrid layer (ARCHITECTURE.md); tests/hybrid/test_session_config.py checks
that the two lists agree."""
DEFAULT_HYBRID_POLICY = "both-required"


@dataclass(frozen=True)
class HybridPairConfig:
    """The hybrid session policy of one pair of SAEs (a ``[[hybrid]]`` table).

    Attributes:
        master_sae_id: the initiator (gets the QKD key with ``enc_keys``).
        slave_sae_id: the responder (gets it by ID with ``dec_keys``).
        policy: ``qkd-required``, ``pqc-required``, ``both-required`` (default) or ``any``.
        rekey_after_bytes: re-key after this many protected bytes (None: no byte limit).
        rekey_after_s: re-key after this many seconds (None: no time limit).
    """

    master_sae_id: str
    slave_sae_id: str
    policy: str = DEFAULT_HYBRID_POLICY
    rekey_after_bytes: int | None = 1 << 30
    rekey_after_s: float | None = 3600.0


_HYBRID_KEYS = ("master_sae_id", "slave_sae_id", "policy", "rekey_after_bytes", "rekey_after_s")


def parse_hybrid_pairs(entries: Any, saes: Mapping[str, str]) -> tuple[HybridPairConfig, ...]:
    """Validate the ``[[hybrid]]`` tables of a corridor file against its SAEs.

    ``rekey_after_bytes = 0`` or ``rekey_after_s = 0`` turns that limit off. Errors name
    the entry by index: ``hybrid[0].policy = 'x': one of qkd-required, ...``.
    """
    if not isinstance(entries, list):
        raise ParameterError("hybrid", entries, "must be a list of [[hybrid]] tables")
    pairs: list[HybridPairConfig] = []
    seen: set[frozenset[str]] = set()
    for index, raw in enumerate(entries):
        where = f"hybrid[{index}]"
        if not isinstance(raw, Mapping):
            raise ParameterError(where, raw, "must be a TOML table")
        extra = sorted(set(raw) - set(_HYBRID_KEYS))
        if extra:
            raise ParameterError(f"{where}.{extra[0]}", raw[extra[0]],
                                 f"unknown setting; allowed: {', '.join(_HYBRID_KEYS)}")
        ends = []
        for name in ("master_sae_id", "slave_sae_id"):
            sae_id = check_id(f"{where}.{name}", raw.get(name))
            if sae_id not in saes:
                raise ParameterError(f"{where}.{name}", sae_id,
                                     f"one of the [[saes]]: {', '.join(sorted(saes))}")
            ends.append(sae_id)
        if ends[0] == ends[1]:
            raise ParameterError(f"{where}.slave_sae_id", ends[1],
                                 "an SAE other than master_sae_id")
        if frozenset(ends) in seen:
            raise ParameterError(f"{where}.slave_sae_id", ends[1],
                                 f"the pair ({ends[0]!r}, {ends[1]!r}) is already configured; "
                                 "one [[hybrid]] entry per pair")
        seen.add(frozenset(ends))
        policy = raw.get("policy", DEFAULT_HYBRID_POLICY)
        if policy not in HYBRID_POLICY_NAMES:
            raise ParameterError(f"{where}.policy", policy,
                                 f"one of {', '.join(HYBRID_POLICY_NAMES)}")
        after_bytes = raw.get("rekey_after_bytes", 1 << 30)
        if isinstance(after_bytes, bool) or not isinstance(after_bytes, int) or after_bytes < 0:
            raise ParameterError(f"{where}.rekey_after_bytes", after_bytes,
                                 "an integer >= 0 (0: no byte limit)")
        after_s = raw.get("rekey_after_s", 3600.0)
        if isinstance(after_s, bool) or not isinstance(after_s, int | float) \
                or not 0 <= after_s <= 365 * 86_400:
            raise ParameterError(f"{where}.rekey_after_s", after_s,
                                 "a number of seconds in [0, 31536000] (0: no time limit)")
        pairs.append(HybridPairConfig(ends[0], ends[1], str(policy), after_bytes or None,
                                      float(after_s) or None))
    return tuple(pairs)
