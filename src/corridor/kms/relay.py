"""Trusted-node key relay between KMEs that share no QKD link.

This module owns the relay protocol: the :class:`RelayHop` message that travels from
KME to KME, the master KME's side (:meth:`RelayEngine.enc_keys`: choose paths, cut the
first hop, wait for the far end, deliver or void), a trusted node's and the slave
KME's side (:meth:`RelayEngine.accept_hop`), withdrawal (:meth:`RelayEngine.accept_void`),
the relay policy of each SAE pair, and the record of relays in flight for status
displays. Paths come from :mod:`corridor.kms.routing` (pure functions of a
:class:`~corridor.kms.routing.NetworkSnapshot` that a provider builds at run time).
docs/relay.md has the protocol, its security argument and where it differs from
ETSI GS QKD 020.

One relay of ``n`` keys from the master KME ``M = K0`` (its SAE ``a``) to the slave KME
``S = Kh`` (SAE ``b``) over the path ``K0, K1, ..., Kh``:

1. ``M`` writes its intent (``keys_reserving`` with the relay ID and path), cuts ``n``
   keys from the front of its pool ``K0 -> K1`` under the final key IDs (one durable
   transaction, the reserve pointer never moves back) and keeps them in memory: the
   relayed key ``K`` *is* that first hop's QKD key, so no key ever comes from anything
   but QKD.
2. It sends ``ext_keys`` to ``K1``: the relay ID, the path, the SAEs and the byte ranges
   of pool ``K0 -> K1`` under the key IDs (no key material on this hop).
3. A trusted node ``Ki`` takes the ranges from its copy of the pool ``K(i-1) -> Ki``
   (durable, burned), recovers ``K = pad_in xor c_in`` (``c_in`` is absent on the first
   hop), cuts ``n`` keys from its pool ``Ki -> K(i+1)`` and sends
   ``c_i = K xor k_(i,i+1)`` with those ranges to ``K(i+1)``; it answers its caller only
   after ``K(i+1)`` answered, and overwrites ``K`` and the pads once the call returns.
4. ``S`` takes its ranges and stores ``K = pad xor c`` as slave rows for ``b`` in the same
   durable transaction, then answers.
5. ``M`` hands the keys to ``a`` only after ``K1``'s answer, which exists only once ``S``
   stored them: never a key that only one end holds.

Every hop is a mutual-TLS call between two KMEs that share the link (the server checks
the caller's KME certificate, the caller the server's) and is audited with the key IDs,
the link and the byte offsets it used (never a key or a pad).

A failure anywhere fails the relay closed: the node that saw it answers 503 naming the
KME that did not answer (``failed_kme_id``); every cut already made is burned (its pool
pointer moved); each node that forwarded asks its next node to withdraw the key IDs
(the KME-to-KME sync withdraws them at the slave KME once it answers again); and the
master, when its own call went unanswered, sends ``void`` down the path. The master
then retries on another path that avoids the failed KME, with fresh key IDs, up to
``max_attempts`` times.

``disjoint-paths``: the master relays ``k`` XOR shares over ``k`` node-disjoint paths;
share ``j`` is path ``j``'s first-hop key and ``K = S_1 xor ... xor S_k``. The slave KME
holds shares ``1..k-1`` in memory (bounded count, a deadline) until share ``k`` arrives
with the instruction to combine; then it stores ``K``. No single trusted node sees ``K``.
Cost: every hop of every path consumes ``n`` keys of its pool (``k`` paths of ``h_j``
hops consume ``sum h_j`` keys per relayed key).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from corridor.errors import CorridorError, ParameterError
from corridor.kms.interface import (
    DeliveredKey,
    KeyRequestError,
    KeysUnavailableError,
    Reservation,
)
from corridor.kms.routing import LinkState, NetworkSnapshot, Route, disjoint_paths, key_aware_path
from corridor.kms.store import InvalidReservationError, is_uuid, new_key_ids

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from corridor.kms.config import KmeConfig, SaeDirectory
    from corridor.kms.quota import SaeQuotas
    from corridor.kms.store import KeyStore

_log = logging.getLogger(__name__)

POLICY_SINGLE_PATH = "single-path"
POLICY_DISJOINT_PATHS = "disjoint-paths"
RELAY_POLICIES = (POLICY_SINGLE_PATH, POLICY_DISJOINT_PATHS)

#: Longest path a relay takes (hops); the planner's networks are far below it.
MAX_HOPS = 16
#: Shares the slave KME holds in memory while waiting for the last share of a relay.
MAX_HELD_SHARE_KEYS = 20_000
#: How long the slave KME holds a share before dropping it (s).
SHARE_HOLD_S = 30.0
#: How long a KME that failed a relay is kept out of the routes (s).
SUSPECT_S = 10.0
#: Relays remembered for the status display after they ended.
RECENT_RELAYS = 32


class RelayError(KeysUnavailableError):
    """A relay failed (a 503); ``failed_kme_id`` names the KME that did not answer or
    refused, when known."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None,
                 failed_kme_id: str | None = None) -> None:
        super().__init__(message, details)
        self.failed_kme_id = failed_kme_id


@dataclass(frozen=True)
class RelayPolicy:
    """How keys for one SAE pair are relayed: ``single-path`` or ``disjoint-paths``
    (``paths`` node-disjoint paths, at least 2)."""

    policy: str = POLICY_SINGLE_PATH
    paths: int = 2

    def __post_init__(self) -> None:
        if self.policy not in RELAY_POLICIES:
            raise ParameterError("relay.policy", self.policy, f"one of {list(RELAY_POLICIES)}")
        if isinstance(self.paths, bool) or not isinstance(self.paths, int) \
                or not 2 <= self.paths <= 8:
            raise ParameterError("relay.paths", self.paths, "an integer from 2 to 8")

    @property
    def path_count(self) -> int:
        """How many paths one relay uses."""
        return self.paths if self.policy == POLICY_DISJOINT_PATHS else 1


@dataclass(frozen=True)
class RelayHop:
    """One ``ext_keys`` message: what a KME sends to the next KME on a relay path.

    ``reservations`` are byte ranges of the pool ``sender -> receiver`` under the key
    IDs (the final key IDs on every hop of a single-path relay); ``pads`` are
    ``K xor k`` per key (absent on the first hop). ``share_index`` of ``share_count``
    says which XOR share this path carries (1 of 1 for a single path). ``pads`` is
    secret and never shown by ``repr``.
    """

    relay_id: str
    path: tuple[str, ...]
    master_sae_id: str
    slave_sae_ids: tuple[str, ...]
    reservations: tuple[Reservation, ...]
    pads: tuple[bytes, ...] | None = field(default=None, repr=False)
    share_index: int = 1
    share_count: int = 1

    @property
    def key_ids(self) -> list[str]:
        return [res.key_id for res in self.reservations]

    def to_json(self) -> dict[str, Any]:
        """The JSON body of the KME-to-KME call."""
        first = self.reservations[0]
        return {"relay_id": self.relay_id, "path": list(self.path),
                "master_SAE_ID": self.master_sae_id,
                "slave_SAE_IDs": list(self.slave_sae_ids),
                "link_id": first.link_id, "direction": first.direction,
                "key_size": first.length_bytes * 8,
                "keys": [{"key_ID": res.key_id, "byte_offset": res.byte_offset}
                         for res in self.reservations],
                "pads": None if self.pads is None else [pad.hex() for pad in self.pads],
                "share_index": self.share_index, "share_count": self.share_count}

    @classmethod
    def from_json(cls, data: Any) -> RelayHop:
        """Parse and check a hop message; :class:`InvalidReservationError` names what is
        wrong."""
        if not isinstance(data, dict):
            raise InvalidReservationError("ext_keys: the body must be a JSON object")

        def text(name: str) -> str:
            value = data.get(name)
            if not isinstance(value, str) or not value or len(value) > 128:
                raise InvalidReservationError(f"ext_keys: {name} must be a non-empty string")
            return value

        def strings(name: str) -> tuple[str, ...]:
            value = data.get(name)
            if not isinstance(value, list) or not value or len(value) > 64 or not all(
                    isinstance(item, str) and item for item in value):
                raise InvalidReservationError(f"ext_keys: {name} must be a list of IDs")
            return tuple(value)

        def integer(name: str, low: int, high: int) -> int:
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not low <= value <= high:
                raise InvalidReservationError(
                    f"ext_keys: {name} = {value!r} must be an integer from {low} to {high}")
            return value

        relay_id = text("relay_id")
        if not is_uuid(relay_id):
            raise InvalidReservationError("ext_keys: relay_id must be a UUID")
        path = strings("path")
        if len(path) > MAX_HOPS + 1 or len(set(path)) != len(path) or len(path) < 3:
            raise InvalidReservationError(
                f"ext_keys: path must name 3 to {MAX_HOPS + 1} distinct KMEs")
        size_bits = integer("key_size", 8, 1 << 20)
        if size_bits % 8:
            raise InvalidReservationError("ext_keys: key_size must be a multiple of 8")
        keys = data.get("keys")
        if not isinstance(keys, list) or not 1 <= len(keys) <= 4096:
            raise InvalidReservationError("ext_keys: keys must list 1 to 4096 keys")
        master, slaves = text("master_SAE_ID"), strings("slave_SAE_IDs")
        link_id, direction = text("link_id"), text("direction")
        reservations = []
        for item in keys:
            if not isinstance(item, dict) or not is_uuid(item.get("key_ID")) \
                    or isinstance(item.get("byte_offset"), bool) \
                    or not isinstance(item.get("byte_offset"), int) or item["byte_offset"] < 0:
                raise InvalidReservationError(
                    "ext_keys: each key needs a UUID key_ID and a byte_offset >= 0")
            reservations.append(Reservation(
                key_id=item["key_ID"], link_id=link_id, direction=direction,
                byte_offset=item["byte_offset"], length_bytes=size_bits // 8,
                master_sae_id=master, slave_sae_ids=slaves))
        raw_pads = data.get("pads")
        pads: tuple[bytes, ...] | None = None
        if raw_pads is not None:
            if not isinstance(raw_pads, list) or len(raw_pads) != len(reservations):
                raise InvalidReservationError("ext_keys: pads must give one value per key")
            try:
                pads = tuple(bytes.fromhex(pad) for pad in raw_pads)
            except (TypeError, ValueError):
                raise InvalidReservationError("ext_keys: pads must be hexadecimal") from None
            if any(len(pad) != size_bits // 8 for pad in pads):
                raise InvalidReservationError("ext_keys: every pad must be key_size bits")
        count = integer("share_count", 1, 8)
        index = integer("share_index", 1, count)
        return cls(relay_id, path, master, slaves, tuple(reservations), pads, index, count)


class KeyOrderLike(Protocol):
    """An enc_keys request (:class:`corridor.kms.manager.KeyOrder`)."""

    @property
    def master_sae_id(self) -> str: ...
    @property
    def slave_sae_id(self) -> str: ...
    @property
    def number(self) -> Any: ...
    @property
    def size_bits(self) -> Any: ...
    @property
    def additional_slave_sae_ids(self) -> Any: ...
    @property
    def extension_mandatory(self) -> Any: ...
    @property
    def extension_optional(self) -> Any: ...


class RelayHost(Protocol):
    """What the relay uses of its KME (:class:`corridor.kms.manager.KeyManager`): the
    store, the directory, the request checks, the audit with its storage alarm, and the
    connections to neighbours. A protocol, so that this module does not import the
    manager that calls it."""

    kme_id: str
    config: KmeConfig
    directory: SaeDirectory
    store: KeyStore
    quotas: SaeQuotas | None

    def _check_request(self, master_sae_id: str, slave_sae_id: str, number: Any,
                       size_bits: Any, additional: Any, extension_mandatory: Any,
                       extension_optional: Any) -> tuple[int, int, tuple[str, ...]]: ...

    def _reject(self, endpoint: str, sae_id: str, reason: str, status_code: int,
                **extra: Any) -> None: ...

    def _record(self, event: str, **fields: Any) -> None: ...

    def _record_after(self, event: str, **fields: Any) -> bool: ...

    def _raise_storage_alarm(self, where: str, exc: BaseException) -> None: ...

    def peer_outage(self, kme_id: str) -> Any: ...

    def relay_peer(self, kme_id: str) -> Any: ...

    def note_peer_failure(self, kme_id: str, exc: BaseException) -> None: ...

    def queue_withdrawal(self, kme_id: str, key_ids: Sequence[str]) -> None: ...

    def cut_in_flight(self, link_id: str, direction: str) -> AbstractContextManager[None]: ...


class RelayPeer(Protocol):
    """What the relay needs of a KME-to-KME connection (HTTPS or in-process)."""

    def relay(self, hop: RelayHop, timeout_s: float) -> None:
        """Deliver ``hop`` to the next KME; return once it (and every KME after it)
        accepted; raise :class:`RelayError` otherwise."""
        ...

    def void(self, relay_id: str, path: Sequence[str], key_ids: Sequence[str]) -> None:
        """Ask the next KME to withdraw the relay's key IDs down the path."""
        ...


SnapshotProvider = Callable[[], NetworkSnapshot]


def xor_bytes(left: bytes | bytearray, right: bytes | bytearray) -> bytearray:
    """Byte-wise XOR of two equal-length strings (the one-time pad)."""
    if len(left) != len(right):
        raise ParameterError("pad", f"{len(left)} and {len(right)} bytes", "equal lengths")
    return bytearray((int.from_bytes(left, "big") ^ int.from_bytes(right, "big"))
                     .to_bytes(len(left), "big"))


def _wipe(buffers: Sequence[bytearray]) -> None:
    """Overwrite key buffers once they are used (best effort in Python: an immutable
    ``bytes`` copy made on the way, e.g. by a JSON encoder, is not reachable here)."""
    for buf in buffers:
        buf[:] = bytes(len(buf))


@dataclass
class _Flight:
    relay_id: str
    role: str
    paths: list[list[str]]
    master_sae_id: str
    slave_sae_ids: list[str]
    count: int
    size_bits: int
    started: float
    state: str = "in_flight"
    ended: float | None = None
    reason: str | None = None
    attempt: int = 1

    def public(self) -> dict[str, Any]:
        now = time.time()
        return {"relay_id": self.relay_id, "role": self.role, "paths": self.paths,
                "master_SAE_ID": self.master_sae_id, "slave_SAE_IDs": self.slave_sae_ids,
                "count": self.count, "size_bits": self.size_bits, "state": self.state,
                "attempt": self.attempt, "reason": self.reason,
                "age_s": round((self.ended or now) - self.started, 3)}


@dataclass
class _HeldShares:
    deadline: float
    master_sae_id: str
    slave_sae_ids: tuple[str, ...]
    shares: dict[int, list[bytearray]] = field(default_factory=dict)
    key_ids: list[str] | None = None


class RelayEngine:
    """The relay at one KME: its master side, its hop handler, its voids.

    Args:
        manager: this KME's KeyManager (store, audit, peers, request checks).
        snapshot: returns the network as this KME knows it now (live pools where it
            can see them); called once per relay attempt.
        policies: relay policy per (master SAE, slave SAE); others are single-path.
        hop_timeout_s: time one hop may take; a call over ``h`` remaining hops waits
            ``h`` times as long, so the nearest failure is reported before its caller
            gives up.
        max_attempts: paths tried per request before it fails with 503.
    """

    def __init__(self, manager: RelayHost, snapshot: SnapshotProvider,
                 policies: Mapping[tuple[str, str], RelayPolicy] | None = None, *,
                 hop_timeout_s: float = 5.0, max_attempts: int = 3) -> None:
        self.manager = manager
        self.kme_id = manager.kme_id
        self.snapshot = snapshot
        self.policies = dict(policies or {})
        self.hop_timeout_s = hop_timeout_s
        self.max_attempts = max_attempts
        self._lock = threading.Lock()
        self._flights: OrderedDict[str, _Flight] = OrderedDict()
        self._suspects: dict[str, float] = {}
        self._shares: dict[str, _HeldShares] = {}
        self._pending_voids: list[tuple[str, tuple[str, ...], list[str]]] = []

    def __repr__(self) -> str:
        return f"RelayEngine(kme_id={self.kme_id!r})"

    # -- which requests are relayed ------------------------------------------------

    def handles(self, master_sae_id: str, slave_sae_id: str) -> bool:
        """True when this KME must relay: the master SAE is ours, the slave SAE sits at
        another KME that shares no link with this one."""
        directory = self.manager.directory
        slave_kme = directory.kme_of(slave_sae_id)
        return (directory.kme_of(master_sae_id) == self.kme_id and slave_kme is not None
                and slave_kme != self.kme_id
                and directory.link_between(self.kme_id, slave_kme) is None)

    def policy_for(self, master_sae_id: str, slave_sae_id: str) -> RelayPolicy:
        return self.policies.get((master_sae_id, slave_sae_id), RelayPolicy())

    # -- routing --------------------------------------------------------------------

    def _usable_snapshot(self) -> NetworkSnapshot:
        """The provider's snapshot with the links of suspect or unreachable KMEs marked
        out of service."""
        snap = self.snapshot()
        now = time.monotonic()
        with self._lock:
            for kme, until in list(self._suspects.items()):
                if until <= now:
                    del self._suspects[kme]
            out = set(self._suspects)
        out.update(kme for kme in snap.kmes if self.manager.peer_outage(kme) is not None)
        if not out:
            return snap
        return NetworkSnapshot(snap.kmes, tuple(
            replace(link, quarantined=True) if {link.kme_a, link.kme_b} & out else link
            for link in snap.links))

    def routes(self, master_sae_id: str, slave_sae_id: str, key_bits: int) -> list[Route]:
        """The paths a relay of ``key_bits`` would take now (empty: none)."""
        slave_kme = self.manager.directory.kme_of(slave_sae_id)
        if slave_kme is None:
            return []
        snap = self._usable_snapshot()
        if slave_kme not in snap.kmes or self.kme_id not in snap.kmes:
            return []
        policy = self.policy_for(master_sae_id, slave_sae_id)
        if policy.path_count == 1:
            route = key_aware_path(snap, self.kme_id, slave_kme, key_bits)
            found = [route] if route is not None else []
        else:
            found = disjoint_paths(snap, self.kme_id, slave_kme, policy.path_count, key_bits)
        if len(found) < policy.path_count or any(r.hops > MAX_HOPS for r in found):
            return []
        # A pool the snapshot shows short would fail the relay after the first hop's key
        # was cut (and burned): refuse now instead, nothing cut.
        states = {link.link_id: link for link in snap.links}
        if any(states[link_id].pool_bits(kme) < key_bits for route in found
               for kme, link_id in zip(route.kmes, route.links, strict=False)):
            return []
        return found

    def stored_key_count(self, master_sae_id: str, slave_sae_id: str, size_bits: int) -> int:
        """Keys a relay could deliver now: the fewest keys in any pool on its paths."""
        routes = self.routes(master_sae_id, slave_sae_id, size_bits)
        if not routes:
            return 0
        snap = self.snapshot()
        states = {link.link_id: link for link in snap.links}
        fewest = min(states[link_id].pool_bits(kmes_from) // size_bits
                     for route in routes
                     for kmes_from, link_id in zip(route.kmes, route.links, strict=False))
        return int(min(fewest, self.manager.config.max_key_count))

    def _suspect(self, kme_id: str | None) -> None:
        if kme_id and kme_id != self.kme_id:
            with self._lock:
                self._suspects[kme_id] = time.monotonic() + SUSPECT_S

    # -- master side ------------------------------------------------------------------

    def enc_keys(self, order: KeyOrderLike) -> list[DeliveredKey]:
        """Serve one enc_keys request whose slave SAE is not at a neighbouring KME."""
        mgr = self.manager
        master, slave = order.master_sae_id, order.slave_sae_id
        try:
            count, size, slaves = mgr._check_request(
                master, slave, order.number, order.size_bits, order.additional_slave_sae_ids,
                order.extension_mandatory, order.extension_optional)
        except KeyRequestError:
            mgr._reject("enc_keys", master, "invalid_request", 400)
            raise
        if len(slaves) > 1:
            mgr._reject("enc_keys", master, "invalid_request", 400)
            raise KeyRequestError("additional_slave_SAE_IDs: a relayed key goes to one slave "
                                  "SAE only", [{"additional_slave_SAE_IDs": "unsupported"}])
        refusal = mgr.quotas.take(master, slave, count) if mgr.quotas is not None else None
        if refusal is not None:
            status = 503 if refusal.retry_after_s is not None else 400
            mgr._reject("enc_keys", master, "quota_exceeded", status, quota=refusal.quota)
            error = KeysUnavailableError if status == 503 else KeyRequestError
            raise error(f"quota exceeded: {refusal.message}", refusal.details())
        last: RelayError | None = None
        for attempt in range(1, self.max_attempts + 1):
            routes = self.routes(master, slave, count * size)
            if not routes:
                break
            try:
                return self._relay_once(routes, master, slaves, count, size, attempt)
            except RelayError as exc:
                last = exc
                self._suspect(exc.failed_kme_id)
                continue
        slave_kme = mgr.directory.kme_of(slave)
        reason = "relay_failed" if last is not None else "no_relay_path"
        mgr._reject("enc_keys", master, reason, 503)
        if last is not None:
            raise KeysUnavailableError(
                f"the key could not be relayed to KME {slave_kme!r}: {last.message}; "
                "nothing was delivered", last.details)
        raise KeysUnavailableError(
            f"no usable relay path from KME {self.kme_id!r} to KME {slave_kme!r} now "
            "(links quarantined, KMEs unreachable, a pool on the path short of key, or "
            "too few disjoint paths for the pair's policy); nothing was reserved",
            [{"slave_SAE_ID": slave}])

    def _relay_once(self, routes: list[Route], master: str, slaves: tuple[str, ...],
                    count: int, size: int, attempt: int) -> list[DeliveredKey]:
        mgr = self.manager
        relay_id = str(uuid.uuid4())
        delivery_id = uuid.uuid4().hex
        key_ids = new_key_ids(count)
        paths = [list(route.kmes) for route in routes]
        flight = _Flight(relay_id, "master", paths, master, list(slaves), count, size,
                         time.time(), attempt=attempt)
        self._track(flight)
        first_link = mgr.directory.link_between(self.kme_id, routes[0].kmes[1])
        assert first_link is not None
        mgr._record("keys_reserving", kme_id=self.kme_id, delivery_id=delivery_id,
                    link_id=first_link.link_id,
                    direction=first_link.direction_from(self.kme_id),
                    master_sae_id=master, slave_sae_ids=list(slaves), key_ids=key_ids,
                    count=count, size_bits=size, relay_id=relay_id, relay_paths=paths)
        shares: list[list[bytearray]] = []
        sent: list[Route] = []
        try:
            for index, route in enumerate(routes, start=1):
                # Paths 1..k-1 carry shares under their own IDs; the last one the final IDs.
                ids = key_ids if index == len(routes) else new_key_ids(count)
                cut = self._cut_next_hop(route.kmes[1], ids, size, master, slaves,
                                         delivery_id=delivery_id, relay_id=relay_id)
                shares.append([bytearray(key) for _, key in cut])
                hop = RelayHop(relay_id, route.kmes, master, slaves,
                               tuple(res for res, _ in cut), None, index, len(routes))
                sent.append(route)
                self._send(route.kmes[1], hop, hops_left=route.hops)
        except KeysUnavailableError as exc:  # RelayError, or the audit trail failing
            error = exc if isinstance(exc, RelayError) else RelayError(exc.message, exc.details)
            for keys in shares:
                _wipe(keys)
            self._void_paths(relay_id, sent, key_ids)
            mgr._record_after("reservations_discarded", kme_id=self.kme_id,
                              delivery_id=delivery_id, key_ids=key_ids, count=count,
                              reason="relay_failed", relay_id=relay_id,
                              failed_kme_id=error.failed_kme_id)
            self._finish(flight, "failed", error.failed_kme_id or "refused")
            raise error from None
        keys = shares[0]
        for other in shares[1:]:
            keys = [xor_bytes(mine, theirs) for mine, theirs in zip(keys, other, strict=True)]
        delivered = [DeliveredKey(key_id, bytes(key)) for key_id, key in zip(key_ids, keys,
                                                                              strict=True)]
        for buffers in [*shares, keys]:
            _wipe(buffers)
        mgr._record_after("keys_delivered", kme_id=self.kme_id, delivery_id=delivery_id,
                          sae_id=master, role="master", master_sae_id=master,
                          key_ids=key_ids, count=count, size_bits=size, relay_id=relay_id,
                          relay_paths=paths)
        self._finish(flight, "delivered", None)
        return delivered

    def _cut_next_hop(self, next_kme: str, key_ids: list[str], size: int, master: str,
                      slaves: tuple[str, ...], *, delivery_id: str | None,
                      relay_id: str) -> list[tuple[Reservation, bytes]]:
        """Cut ``key_ids`` from this KME's pool towards ``next_kme`` (durable) and audit
        the cut (``keys_reserved``: the anti-rollback marks read it)."""
        mgr = self.manager
        link = mgr.directory.link_between(self.kme_id, next_kme)
        if link is None:
            raise RelayError(f"KME {self.kme_id!r} shares no link with {next_kme!r}",
                             failed_kme_id=next_kme)
        direction = link.direction_from(self.kme_id)
        with mgr.cut_in_flight(link.link_id, direction):
            try:
                cut = mgr.store.cut_front(link.link_id, direction, key_ids=key_ids,
                                          length_bytes=size // 8, master_sae_id=master,
                                          slave_sae_ids=slaves)
            except KeysUnavailableError as exc:
                raise RelayError(f"pool {link.link_id} at KME {self.kme_id!r}: "
                                 f"{exc.message}", failed_kme_id=None) from None
            except OSError as exc:
                mgr._raise_storage_alarm("key store write", exc)
                raise RelayError("the key store cannot be written now",
                                 failed_kme_id=self.kme_id) from None
            fields: dict[str, Any] = {"delivery_id": delivery_id} if delivery_id else {}
            mgr._record("keys_reserved", kme_id=self.kme_id, link_id=link.link_id,
                        direction=direction, master_sae_id=master,
                        slave_sae_ids=list(slaves), key_ids=key_ids, count=len(key_ids),
                        size_bits=size, byte_offsets=[res.byte_offset for res, _ in cut],
                        relay_id=relay_id, next_kme_id=next_kme, **fields)
        return cut

    def _peer(self, kme_id: str) -> RelayPeer:
        peer = self.manager.relay_peer(kme_id)
        if peer is None:
            raise RelayError(f"no connection from KME {self.kme_id!r} to {kme_id!r}",
                             failed_kme_id=kme_id)
        return peer

    def _send(self, next_kme: str, hop: RelayHop, hops_left: int) -> None:
        """Send ``hop`` and wait for the far end; a call that gets no answer makes the
        next KME a suspect and a known outage."""
        peer = self._peer(next_kme)
        try:
            peer.relay(hop, timeout_s=self.hop_timeout_s * max(1, hops_left) + 1.0)
        except RelayError:
            raise
        except KeysUnavailableError as exc:  # unreachable: from the transport
            self.manager.note_peer_failure(next_kme, exc)
            reason = next((str(item["reason"]) for item in exc.details
                           if isinstance(item, dict) and "reason" in item), exc.message)
            raise RelayError(f"KME {next_kme!r} did not answer ({reason})", exc.details,
                             failed_kme_id=next_kme) from None

    def _void_paths(self, relay_id: str, routes: Sequence[Route], key_ids: list[str]) -> None:
        """Withdraw a failed relay down every path it was sent on (best effort now; a
        void that cannot be sent is retried by :meth:`retry_voids`)."""
        for route in routes:
            self._void_next(relay_id, route.kmes, key_ids)

    def _void_next(self, relay_id: str, path: Sequence[str], key_ids: list[str]) -> None:
        position = list(path).index(self.kme_id)
        if position + 1 >= len(path):
            return
        next_kme = path[position + 1]
        try:
            self._peer(next_kme).void(relay_id, list(path), key_ids)
        except (CorridorError, OSError):
            with self._lock:
                self._pending_voids.append((relay_id, tuple(path), list(key_ids)))

    def retry_voids(self) -> int:
        """Send the voids that could not be sent before (housekeeping); returns how many
        went out."""
        with self._lock:
            pending, self._pending_voids = self._pending_voids, []
        for relay_id, path, key_ids in pending:
            self._void_next(relay_id, path, key_ids)
        with self._lock:
            return len(pending) - len(self._pending_voids)

    # -- trusted node and slave side -----------------------------------------------

    def accept_hop(self, from_kme_id: str, hop: RelayHop) -> int:
        """Handle an ``ext_keys`` call from ``from_kme_id``: forward (trusted node) or
        store (slave KME). Returns how many keys the far end stored. Raises
        :class:`InvalidReservationError` (400) for a malformed or foreign hop,
        :class:`RelayError` / :class:`KeysUnavailableError` (503) when it fails."""
        self._check_hop(from_kme_id, hop)
        position = hop.path.index(self.kme_id)
        last = position == len(hop.path) - 1
        flight = _Flight(hop.relay_id, "slave" if last else "trusted-node", [list(hop.path)],
                         hop.master_sae_id, list(hop.slave_sae_ids), len(hop.reservations),
                         hop.reservations[0].length_bytes * 8, time.time())
        self._track(flight)
        try:
            if last:
                stored = self._store_at_slave(from_kme_id, hop)
            else:
                self._forward(from_kme_id, hop, hop.path[position + 1],
                              hops_left=len(hop.path) - 1 - position)
                stored = len(hop.reservations)
        except CorridorError as exc:
            self._finish(flight, "failed", type(exc).__name__)
            raise
        self._finish(flight, "stored" if last else "forwarded", None)
        return stored

    def _check_hop(self, from_kme_id: str, hop: RelayHop) -> None:
        directory = self.manager.directory
        path = hop.path
        if self.kme_id not in path or path.index(self.kme_id) == 0:
            raise InvalidReservationError(f"ext_keys: KME {self.kme_id!r} is not a hop of "
                                          "this path")
        position = path.index(self.kme_id)
        if path[position - 1] != from_kme_id:
            raise InvalidReservationError(
                f"ext_keys: the path says the previous hop is {path[position - 1]!r}, but "
                f"KME {from_kme_id!r} called")
        for a, b in itertools.pairwise(path):
            if directory.link_between(a, b) is None:
                raise InvalidReservationError(f"ext_keys: KMEs {a!r} and {b!r} share no link")
        link = directory.link_between(from_kme_id, self.kme_id)
        assert link is not None
        first = hop.reservations[0]
        if (first.link_id, first.direction) != (link.link_id, link.direction_from(from_kme_id)):
            raise InvalidReservationError(
                f"ext_keys: the ranges must lie in pool {link.link_id} "
                f"{link.direction_from(from_kme_id)}")
        if directory.kme_of(hop.master_sae_id) != path[0]:
            raise InvalidReservationError(
                f"ext_keys: master SAE {hop.master_sae_id!r} is not attached to {path[0]!r}")
        if any(directory.kme_of(sae) != path[-1] for sae in hop.slave_sae_ids):
            raise InvalidReservationError(
                f"ext_keys: every slave SAE must be attached to {path[-1]!r}")
        if (hop.pads is None) != (position == 1):
            raise InvalidReservationError(
                "ext_keys: pads are absent on the first hop and present on every other")

    def _take_pads(self, hop: RelayHop) -> list[bytearray]:
        """Cut this hop's ranges from our copy of the pool and recover the key
        (``pad`` on the first hop, ``pad xor c`` after it)."""
        try:
            raw = self.manager.store.take_ranges(list(hop.reservations))
        except OSError as exc:
            self.manager._raise_storage_alarm("key store write", exc)
            raise RelayError("the key store cannot be written now",
                             failed_kme_id=self.kme_id) from None
        if hop.pads is None:
            return [bytearray(pad) for pad in raw]
        return [xor_bytes(pad, c) for pad, c in zip(raw, hop.pads, strict=True)]

    def _forward(self, from_kme_id: str, hop: RelayHop, next_kme: str, hops_left: int) -> None:
        mgr = self.manager
        keys = self._take_pads(hop)
        try:
            cut = self._cut_next_hop(next_kme, hop.key_ids, len(keys[0]) * 8,
                                     hop.master_sae_id, hop.slave_sae_ids,
                                     delivery_id=None, relay_id=hop.relay_id)
            pads = [xor_bytes(key, out) for key, (_, out) in zip(keys, cut, strict=True)]
            onward = RelayHop(hop.relay_id, hop.path, hop.master_sae_id, hop.slave_sae_ids,
                              tuple(res for res, _ in cut), tuple(bytes(p) for p in pads),
                              hop.share_index, hop.share_count)
            _wipe(pads)
        finally:
            _wipe(keys)
        mgr._record_after(
            "relay_forwarded", kme_id=self.kme_id, relay_id=hop.relay_id,
            path=list(hop.path), from_kme_id=from_kme_id, next_kme_id=next_kme,
            key_ids=hop.key_ids, count=len(hop.key_ids),
            size_bits=hop.reservations[0].length_bytes * 8,
            in_link_id=hop.reservations[0].link_id,
            in_direction=hop.reservations[0].direction,
            in_byte_offsets=[res.byte_offset for res in hop.reservations],
            out_link_id=cut[0][0].link_id, out_direction=cut[0][0].direction,
            out_byte_offsets=[res.byte_offset for res, _ in cut],
            share_index=hop.share_index, share_count=hop.share_count)
        try:
            self._send(next_kme, onward, hops_left=hops_left)
        except RelayError:
            # What the next KME may hold under these IDs is withdrawn when it answers.
            mgr.queue_withdrawal(next_kme, hop.key_ids)
            raise

    def _store_at_slave(self, from_kme_id: str, hop: RelayHop) -> int:
        mgr = self.manager
        if hop.share_index < hop.share_count:
            keys = self._take_pads(hop)
            self._hold_share(hop, keys)
            mgr._record_after("relay_share_held", kme_id=self.kme_id, relay_id=hop.relay_id,
                              from_kme_id=from_kme_id, key_ids=hop.key_ids,
                              count=len(hop.key_ids), share_index=hop.share_index,
                              share_count=hop.share_count,
                              size_bits=hop.reservations[0].length_bytes * 8,
                              link_id=hop.reservations[0].link_id,
                              direction=hop.reservations[0].direction,
                              byte_offsets=[res.byte_offset for res in hop.reservations])
            return len(keys)
        earlier = self._release_shares(hop) if hop.share_count > 1 else []

        def unpad(raw: list[bytes]) -> list[bytes]:
            out = []
            for index, pad in enumerate(raw):
                key = bytearray(pad) if hop.pads is None else xor_bytes(pad, hop.pads[index])
                for share in earlier:
                    key = xor_bytes(key, share[index])
                out.append(bytes(key))
                _wipe([key])
            return out

        try:
            recorded = mgr.store.record_relayed_keys(list(hop.reservations), unpad)
        except OSError as exc:
            mgr._raise_storage_alarm("key store write", exc)
            raise RelayError("the key store cannot be written now",
                             failed_kme_id=self.kme_id) from None
        finally:
            for share in earlier:
                _wipe(share)
        if recorded:
            mgr._record_after(
                "relay_stored", kme_id=self.kme_id, relay_id=hop.relay_id,
                path=list(hop.path), from_kme_id=from_kme_id,
                master_sae_id=hop.master_sae_id, slave_sae_ids=list(hop.slave_sae_ids),
                key_ids=hop.key_ids, count=len(hop.key_ids),
                size_bits=hop.reservations[0].length_bytes * 8,
                link_id=hop.reservations[0].link_id, direction=hop.reservations[0].direction,
                byte_offsets=[res.byte_offset for res in hop.reservations],
                share_count=hop.share_count)
        return len(hop.reservations)

    def _hold_share(self, hop: RelayHop, keys: list[bytearray]) -> None:
        now = time.monotonic()
        with self._lock:
            for relay_id, held in list(self._shares.items()):
                if held.deadline <= now:
                    for share in held.shares.values():
                        _wipe(share)
                    del self._shares[relay_id]
            total = sum(len(s) for h in self._shares.values() for s in h.shares.values())
            if total + len(keys) > MAX_HELD_SHARE_KEYS:
                _wipe(keys)
                raise RelayError(f"KME {self.kme_id!r} holds too many relay shares now",
                                 failed_kme_id=self.kme_id)
            held = self._shares.setdefault(hop.relay_id, _HeldShares(
                now + SHARE_HOLD_S, hop.master_sae_id, hop.slave_sae_ids))
            if (held.master_sae_id, held.slave_sae_ids) != (hop.master_sae_id,
                                                             hop.slave_sae_ids) \
                    or hop.share_index in held.shares:
                _wipe(keys)
                raise InvalidReservationError("ext_keys: a share does not match its relay")
            held.shares[hop.share_index] = keys

    def _release_shares(self, hop: RelayHop) -> list[list[bytearray]]:
        with self._lock:
            held = self._shares.pop(hop.relay_id, None)
        wanted = set(range(1, hop.share_count))
        if held is None or set(held.shares) != wanted or held.deadline <= time.monotonic() \
                or (held.master_sae_id, held.slave_sae_ids) != (hop.master_sae_id,
                                                                 hop.slave_sae_ids) \
                or any(len(s) != len(hop.reservations) for s in held.shares.values()):
            if held is not None:
                for share in held.shares.values():
                    _wipe(share)
            raise RelayError(f"KME {self.kme_id!r} does not hold the other shares of relay "
                             f"{hop.relay_id}", failed_kme_id=self.kme_id)
        return [held.shares[index] for index in sorted(held.shares)]

    def accept_void(self, from_kme_id: str, relay_id: str, path: Sequence[str],
                    key_ids: Sequence[str]) -> int:
        """Withdraw a failed relay: the slave KME discards what it stored under the key
        IDs (only keys whose master SAE sits at the path's first KME) and drops held
        shares; a trusted node passes the void on. Returns keys discarded here."""
        path = list(path)
        if not is_uuid(relay_id) or not all(is_uuid(k) for k in key_ids) \
                or len(key_ids) > 4096 or self.kme_id not in path[1:] \
                or path[path.index(self.kme_id) - 1] != from_kme_id:
            raise InvalidReservationError("void: relay_id, path or key IDs are not valid here")
        with self._lock:
            held = self._shares.pop(relay_id, None)
        if held is not None:
            for share in held.shares.values():
                _wipe(share)
        if path[-1] != self.kme_id:
            self._void_next(relay_id, path, list(key_ids))
            return 0
        mgr = self.manager
        masters = set(mgr.directory.saes_of(path[0]))
        mine = [key_id for key_id, master in
                mgr.store.slave_key_masters(list(key_ids)).items() if master in masters]
        discarded = mgr.store.discard_keys(sorted(mine)) if mine else 0
        mgr._record_after("relay_voided", kme_id=self.kme_id, relay_id=relay_id,
                          from_kme_id=from_kme_id, path=path, key_ids=sorted(mine),
                          count=discarded)
        return discarded

    # -- status -----------------------------------------------------------------------

    def _track(self, flight: _Flight) -> None:
        with self._lock:
            self._flights[f"{flight.relay_id}/{flight.role}/{id(flight)}"] = flight

    def _finish(self, flight: _Flight, state: str, reason: str | None) -> None:
        with self._lock:
            flight.state, flight.reason, flight.ended = state, reason, time.time()
            ended = [key for key, f in self._flights.items() if f.ended is not None]
            for key in ended[:max(0, len(ended) - RECENT_RELAYS)]:
                del self._flights[key]

    def relays(self) -> list[dict[str, Any]]:
        """Relays in flight and the most recent ones that ended (public fields only)."""
        with self._lock:
            return [flight.public() for flight in self._flights.values()]


def snapshot_from_pools(kmes: Sequence[str], links: Sequence[tuple[str, str, str]],
                        pool_bits: Callable[[str, str], float | None],
                        quarantined: Callable[[str], bool] = lambda _link: False
                        ) -> NetworkSnapshot:
    """A snapshot from ``(link_id, kme_a, kme_b)`` triples and a reader of pool levels:
    ``pool_bits(link_id, from_kme)`` gives the bits a relay leaving ``from_kme`` could
    use, or None where this KME cannot see them (counted as full, so that an unseen
    pool costs one hop). Refill rates are not counted at run time (0)."""
    unseen = float(1 << 40)
    states = []
    for link_id, kme_a, kme_b in links:
        ab, ba = pool_bits(link_id, kme_a), pool_bits(link_id, kme_b)
        states.append(LinkState(link_id, kme_a, kme_b,
                                pool_bits_ab=unseen if ab is None else float(ab),
                                pool_bits_ba=unseen if ba is None else float(ba),
                                quarantined=quarantined(link_id)))
    return NetworkSnapshot.of(kmes, states)


def local_snapshot(managers: Mapping[str, RelayHost],
                   quarantined: Callable[[str], bool] = lambda _link: False
                   ) -> SnapshotProvider:
    """A provider for KMEs that run in one process (``corridor up``): live pool levels
    read from each pool's master KME."""
    first = next(iter(managers.values()))
    directory = first.directory
    kmes = sorted({kme for m in managers.values() for link in directory.links_of(m.kme_id)
                   for kme in (link.kme_a, link.kme_b)} | set(managers))
    links = sorted({(link.link_id, link.kme_a, link.kme_b) for kme in kmes
                    for link in directory.links_of(kme)})

    def pool_bits(link_id: str, from_kme: str) -> float | None:
        manager = managers.get(from_kme)
        spec = directory.link(link_id)
        if manager is None or spec is None:
            return None
        return 8.0 * manager.store.pool_state(link_id,
                                              spec.direction_from(from_kme)).available_bytes

    def provide() -> NetworkSnapshot:
        return snapshot_from_pools(kmes, links, pool_bits, quarantined)

    return provide


__all__ = ["POLICY_DISJOINT_PATHS", "POLICY_SINGLE_PATH", "RELAY_POLICIES", "RelayEngine",
           "RelayError", "RelayHop", "RelayPeer", "RelayPolicy", "SnapshotProvider",
           "local_snapshot", "snapshot_from_pools", "xor_bytes"]
