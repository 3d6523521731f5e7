"""One KME's key delivery logic: validation, reservation, agreement with the peer KME.

:class:`KeyManager` implements :class:`~corridor.kms.interface.KeyDeliveryService` (what
the ETSI GS QKD 014 REST layer calls) on a :class:`~corridor.kms.store.KeyStore`. The
agreement between the two KMEs of a link (ETSI014.md, "Known trouble") is:

1. Both KMEs ingest the same blocks in block order; each block's first half goes to
   pool ``A->B`` and its second half to ``B->A`` (:func:`corridor.kms.config.split_block`).
2. Only the master KME of a direction reserves from its pool, from the front, in one
   durable transaction (:meth:`~corridor.kms.store.KeyStore.cut_front`: the reserve
   pointer never moves back; the keys stay in memory, never at rest at the master).
3. It announces the reservations through a :class:`~corridor.kms.interface.PeerLink`
   (wrapped in a :class:`CoalescingPeerLink`, so concurrent requests share one call); the
   slave KME cuts the same byte ranges by offset into its own rows and commits before
   answering (:meth:`KeyManager.accept_reservations`, idempotent).
4. Only then does the master deliver. If the announcement fails in any way the keys are
   dropped: the bytes are burned, never reused under another key ID and never delivered
   (fail closed); the master SAE gets a 503.

A crash leaves nothing pending at the master (the cut bytes are simply burned);
:meth:`KeyManager.resolve_pending` still discards pending master rows made through
:meth:`~corridor.kms.store.KeyStore.reserve_front`. docs/kms-store.md gives the full
argument.

Write-ahead audit (every delivery is accounted for after any crash). Before a delivery
changes the store, an *intent* entry with a fresh ``delivery_id`` and the key IDs is
written to the audit trail (``keys_reserving`` at the master, ``keys_delivering`` at the
slave) and must be durable, or nothing is cut and the SAE gets a 503. Every outcome
entry of that delivery (``keys_reserved``, ``keys_delivered``,
``reservations_discarded``, ``request_rejected``) carries the same ``delivery_id``. At
start, :meth:`KeyManager.resolve_unfinished` closes every intent that has no outcome
(the process died, or the audit volume filled, in between) with a
``delivery_resolved`` entry that says, from the store, which keys are still fetchable
and which were delivered. A storage failure (audit or store) answers 503, raises the
KME's storage alarm (log line at error level, ``corridor_storage_alarm`` = 1) and never
escapes as a 500. Once the store has committed a delivery, a failing outcome entry no
longer stops it: the key is handed over (its intent is on record) and the alarm rises.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corridor.errors import CorridorError, ParameterError
from corridor.kms.audit import AuditLogError, HighWaterMarks
from corridor.kms.config import DIRECTIONS, KmeConfig, LinkSpec, SaeDirectory, split_block
from corridor.kms.crypto import AtRestDecryptionError
from corridor.kms.interface import (
    MSG_EXTENSION_NOT_SUPPORTED,
    MSG_EXTENSION_OPTIONS_UNMET,
    MSG_KEYS_NOT_FOUND,
    MSG_SIZE_MULTIPLE_OF_8,
    DeliveredKey,
    EventSink,
    KeyRequestError,
    KeysUnavailableError,
    KmeStatus,
    NullEventSink,
    PeerLink,
    Reservation,
    UnauthorizedError,
    delivered_keys,
)
from corridor.kms.quota import SaeQuotas
from corridor.kms.store import (
    ROLE_MASTER,
    ROLE_SLAVE,
    InvalidReservationError,
    KeyStore,
    PoolExhaustedError,
    PoolState,
    ReservationRefusedError,
    StoreWriteError,
    all_uuids,
    is_uuid,
    new_key_ids,
)

if TYPE_CHECKING:
    from corridor.kms.relay import RelayEngine, RelayHop

_log = logging.getLogger(__name__)

#: Audit events written before a delivery touches the store (see the module docstring).
INTENT_EVENTS = ("keys_reserving", "keys_delivering")

# An announcement carries the reservations of several coalesced enc_keys requests; this
# bounds its JSON body (about 260 bytes per reservation) well inside the API's 1 MiB.
MAX_ANNOUNCEMENT_RESERVATIONS = 2048


# The key ID of a Reservation, the bytes of a (reservation, key) pair.
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)
# Fields of a Reservation: byte_offset, slave_sae_ids, and what one reservation_accepted
# entry shares (link_id, direction, master_sae_id, slave_sae_ids, length_bytes).
_BYTE_OFFSET = operator.itemgetter(3)
_SLAVES = operator.itemgetter(6)
_ACCEPTED_GROUP = operator.itemgetter(1, 2, 5, 6, 4)
# The fields checked once per combination: link_id, direction, master and slave SAEs.
_SHARED_FIELDS = operator.itemgetter(1, 2, 5, 6)


class PeerUnreachableError(KeysUnavailableError):
    """The peer KME could not be reached or did not answer in time (a 503)."""


_ROLLBACK_ADVICE = ("Put back the newest copy of the store; if there is none, the link's "
                    "key material is lost and both of its KMEs must start again on new "
                    "stores and audit logs")


class StoreRollbackError(CorridorError):
    """The key store is behind what the audit trail recorded (restored from an older
    copy): serving from it would issue the same key bytes again under new key IDs."""


class StorageFailureError(KeysUnavailableError):
    """The audit trail or the key store could not be written (full disk, I/O error): the
    request fails closed with a 503 and the storage alarm is raised."""


#: What a failing store write raises (the stores map their database's write failures
#: to StoreWriteError); the audit log raises OSError or its own AuditLogError
#: (key-material refusals are programming errors and are not caught).
_STORAGE_ERRORS: tuple[type[BaseException], ...] = (OSError, StoreWriteError)
_AUDIT_ERRORS: tuple[type[BaseException], ...] = (OSError, AuditLogError)


#: Key IDs withdrawn per KME-to-KME sync call: about 37 bytes each in JSON, so one call
#: stays near 0.4 MB, well inside the peer's 1 MiB body limit.
SYNC_MAX_WITHDRAWN = 10_000

#: Back-off after the peer KME was found unreachable: first retry, and the longest wait.
PEER_RETRY_MIN_S = 0.5
PEER_RETRY_MAX_S = 30.0


@dataclass
class PeerOutage:
    """What this KME knows of a peer KME it cannot reach (public figures only)."""

    since: float
    failures: int
    retry_at: float
    reason: str


def _unreachable_cause(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s cause chain that says no answer came (as opposed to a
    refusal), or None."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, PeerUnreachableError | OSError):
            return exc
        exc, seen = exc.__cause__, seen + 1
    return None


def _refusal_reason(exc: BaseException) -> str:
    """Why the peer KME refused an announcement: its own message (carried in the
    details over HTTPS), at most 200 characters; public text, never key bytes."""
    why = type(exc).__name__
    if isinstance(exc, KeysUnavailableError):
        why = exc.message
        for item in exc.details:
            if isinstance(item, dict) and item.get("message"):
                why = str(item["message"])
                break
    elif isinstance(exc, CorridorError):
        why = str(exc)
    return why[:200]


def _is_unreachable(exc: BaseException | None) -> bool:
    return _unreachable_cause(exc) is not None


def _new_delivery_id() -> str:
    return uuid.uuid4().hex


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class KeyOrder:
    """One enc_keys request, as :meth:`KeyManager.enc_keys` takes it (for
    :meth:`KeyManager.enc_keys_batch`)."""

    master_sae_id: str
    slave_sae_id: str
    number: Any = None
    size_bits: Any = None
    additional_slave_sae_ids: Any = None
    extension_mandatory: Any = None
    extension_optional: Any = None


@dataclass(frozen=True)
class _Admitted:
    """An enc_keys request that passed its checks, its quota taken."""

    link: LinkSpec
    direction: str
    slave_kme: str
    peer: PeerLink
    master_sae_id: str
    slaves: tuple[str, ...]
    count: int
    size: int

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one delivery."""
        return (self.link.link_id, self.direction, self.master_sae_id, self.slaves,
                self.size, id(self.peer))


class KeyManager:
    """One KME: serves its master SAEs from its pools and its slave SAEs by key ID.

    Args:
        config: this KME's limits; ``config.kme_id`` is its identity.
        directory: every SAE with its KME, and the links.
        store: this KME's own store (never shared with another KME).
        peers: ``{kme_id: PeerLink}`` for the KMEs it shares links with; may be added
            later with :meth:`set_peer`.
        events: where public events go (audit, metrics).
        coalesce_announcements: wrap every peer in a :class:`CoalescingPeerLink`, so that
            concurrent enc_keys requests share one KME-to-KME call (and one durable
            commit at the slave).

    Thread-safe: the store serialises what must be serialised, and the manager keeps no
    other mutable state than the peer table.
    """

    def __init__(self, config: KmeConfig, directory: SaeDirectory, store: KeyStore,
                 peers: Mapping[str, PeerLink] | None = None,
                 events: EventSink | None = None, *,
                 coalesce_announcements: bool = True,
                 quotas: SaeQuotas | None = None) -> None:
        if store.kme_id != config.kme_id:
            raise ParameterError("store.kme_id", store.kme_id,
                                 f"must be this KME's ID {config.kme_id!r}")
        self.kme_id = config.kme_id
        self.config = config
        self.directory = directory
        self.store = store
        self.events: EventSink = events if events is not None else NullEventSink()
        self._coalesce = coalesce_announcements
        self._peers: dict[str, PeerLink] = {kme: self._wrap(peer)
                                            for kme, peer in (peers or {}).items()}
        self._peers_lock = threading.Lock()
        # The storage alarm per part that failed ("audit", "store"): a write of one part
        # that succeeds clears that part's alarm only, never the other's.
        self._storage_alarms: dict[str, str] = {}
        self._storage_alarm_since = 0.0
        self.quotas = quotas
        # Peer outages, cuts whose announcement has not finished, and key IDs to
        # withdraw at the peer once it answers again (see sync_peer).
        self._flight_lock = threading.Lock()
        self._outages: dict[str, PeerOutage] = {}
        self._cuts_in_flight: dict[tuple[str, str], int] = {}
        self._withdrawals: dict[str, list[str]] = {}
        self._sync_locks: dict[str, threading.Lock] = {}
        #: Trusted-node relay to KMEs this one shares no link with
        #: (:class:`corridor.kms.relay.RelayEngine`); None: such requests get 400.
        self.relay: RelayEngine | None = None

    def _wrap(self, peer: PeerLink) -> PeerLink:
        if self._coalesce and not isinstance(peer, CoalescingPeerLink):
            return CoalescingPeerLink(peer)
        return peer

    def set_peer(self, kme_id: str, peer: PeerLink) -> None:
        """Use ``peer`` to announce reservations to KME ``kme_id``."""
        if self.directory.link_between(self.kme_id, kme_id) is None:
            raise ParameterError("peer kme_id", kme_id,
                                 f"shares no link with KME {self.kme_id!r}")
        with self._peers_lock:
            self._peers[kme_id] = self._wrap(peer)
        with self._flight_lock:  # a new link to the peer: what was known of the old is void
            self._outages.pop(kme_id, None)

    # -- audit and the storage alarm ---------------------------------------------------

    @property
    def storage_alarm(self) -> str | None:
        """Why the last audit or store write failed, while no later one succeeded."""
        return "; ".join(self._storage_alarms.values()) or None

    def _raise_storage_alarm(self, where: str, exc: BaseException) -> None:
        reason = f"{where}: {type(exc).__name__}" + (
            f" ({os.strerror(exc.errno)})" if isinstance(exc, OSError) and exc.errno else "")
        first = not self._storage_alarms
        self._storage_alarms["audit" if where.startswith("audit") else "store"] = reason
        self._storage_alarm_since = time.time()
        _log.error("storage alarm at KME %s: %s; requests answer 503 until it clears",
                   self.kme_id, reason)
        if first:
            # Reaches the metrics even when the audit trail is what failed
            # (FanOutEventSink tries every sink); it must not mask the first failure.
            with contextlib.suppress(Exception):
                self.events.emit("storage_alarm_raised", kme_id=self.kme_id, reason=reason)

    def _storage_ok(self, part: str = "audit") -> None:
        """A write of ``part`` ("audit" or "store") succeeded: clear its alarm; the
        alarm ends when no part is failing."""
        reason = self._storage_alarms.pop(part, None)
        if reason is None:
            return
        if self._storage_alarms:
            _log.warning("storage alarm at KME %s: %s works again (was: %s); still failing: "
                         "%s", self.kme_id, part, reason, self.storage_alarm)
            return
        _log.warning("storage alarm at KME %s cleared (was: %s)", self.kme_id, reason)
        self.events.emit("storage_alarm_cleared", kme_id=self.kme_id, reason=reason)

    def _record(self, event: str, **fields: Any) -> None:
        """Write an audit event that must be durable before the step it guards; on a
        storage failure raise :class:`StorageFailureError` (a 503) with the alarm."""
        try:
            self.events.emit(event, **fields)
        except _AUDIT_ERRORS as exc:
            self._raise_storage_alarm(f"audit write of {event}", exc)
            raise StorageFailureError(
                "the KME cannot write its audit trail now; nothing was delivered") from exc
        self._storage_ok()

    def _record_after(self, event: str, **fields: Any) -> bool:
        """Write an outcome entry after the store committed; a failure raises the alarm
        but does not undo the delivery (its intent entry is on record)."""
        try:
            self.events.emit(event, **fields)
        except _AUDIT_ERRORS as exc:
            self._raise_storage_alarm(f"audit write of {event}", exc)
            return False
        return True

    def _reject(self, endpoint: str, sae_id: str, reason: str, status_code: int,
                **extra: Any) -> None:
        """Record a refused request; if even that cannot be written, the caller's answer
        becomes a 503 (:class:`StorageFailureError`)."""
        self._record("request_rejected", kme_id=self.kme_id, endpoint=endpoint,
                     sae_id=sae_id, reason=reason, status_code=status_code, **extra)

    def _admit(self, master_sae_id: str, slave_sae_id: str, link_id: str, direction: str,
               count: int, size_bits: int) -> None:
        """Refuse, before any audit intent or store write, a request the pool cannot
        serve now or the pair's quota (corridor.kms.quota) does not allow; a quota is
        taken only from a request the pool can serve."""
        state = self.store.pool_state(link_id, direction)
        if state.available_bytes < count * (size_bits // 8):
            self._reject("enc_keys", master_sae_id, "pool_exhausted", 503)
            raise KeysUnavailableError(
                f"not enough key material for {count} keys of {size_bits} bits to "
                f"{slave_sae_id!r}; try fewer or smaller keys, or later",
                [{"stored_key_count": min(state.available_bytes // (size_bits // 8),
                                          self.config.max_key_count)}])
        refusal = self.quotas.take(master_sae_id, slave_sae_id, count) \
            if self.quotas is not None else None
        if refusal is None:
            return
        status = 503 if refusal.retry_after_s is not None else 400
        self._reject("enc_keys", master_sae_id, "quota_exceeded", status, quota=refusal.quota)
        error = KeysUnavailableError if status == 503 else KeyRequestError
        raise error(f"quota exceeded: {refusal.message}", refusal.details())

    # -- routing ----------------------------------------------------------------------

    def _route(self, endpoint: str, master_sae_id: str, slave_sae_id: str) -> LinkSpec:
        """Check the caller is a master SAE of this KME and find the link to the slave."""
        if self.directory.kme_of(master_sae_id) != self.kme_id:
            self._reject(endpoint, master_sae_id, "caller_not_attached", 401)
            raise UnauthorizedError("caller is not an SAE of this KME")
        slave_kme = self.directory.kme_of(slave_sae_id)
        if slave_kme is None:
            self._reject(endpoint, master_sae_id, "unknown_slave_sae", 400)
            raise KeyRequestError(f"slave_SAE_ID {slave_sae_id!r} is not known to this KME",
                                  [{"slave_SAE_ID": slave_sae_id}])
        if slave_sae_id == master_sae_id:
            self._reject(endpoint, master_sae_id, "slave_is_master", 400)
            raise KeyRequestError("slave_SAE_ID must differ from the calling master SAE",
                                  [{"slave_SAE_ID": slave_sae_id}])
        link = self.directory.link_between(self.kme_id, slave_kme) \
            if slave_kme != self.kme_id else None
        if link is None:
            self._reject(endpoint, master_sae_id, "no_link_to_slave", 400)
            raise KeyRequestError(
                f"slave_SAE_ID {slave_sae_id!r} is attached to KME {slave_kme!r}, which shares "
                f"no QKD link with this KME {self.kme_id!r}", [{"slave_SAE_ID": slave_sae_id}])
        return link

    def _stored_key_count(self, link: LinkSpec, key_size_bits: int) -> int:
        """Keys this KME can deliver now: none while the slave's KME is known to be
        unreachable (the pool's bytes are still there, but no key can be agreed)."""
        if self.peer_outage(link.other(self.kme_id)) is not None:
            return 0
        state = self.store.pool_state(link.link_id, link.direction_from(self.kme_id))
        return min(state.available_bytes // (key_size_bits // 8), self.config.max_key_count)

    # -- KeyDeliveryService -----------------------------------------------------------

    def status(self, master_sae_id: str, slave_sae_id: str) -> KmeStatus:
        """ETSI 014 Status of the pool that serves ``master_sae_id`` -> ``slave_sae_id``
        (for a relayed pair: the fewest keys in any pool on the paths a relay would take
        now, ``status_extension.relay`` naming them)."""
        cfg = self.config
        if self.relay is not None and self.relay.handles(master_sae_id, slave_sae_id):
            routes = self.relay.routes(master_sae_id, slave_sae_id, cfg.key_size_bits)
            return KmeStatus(
                source_KME_ID=self.kme_id,
                target_KME_ID=str(self.directory.kme_of(slave_sae_id)),
                master_SAE_ID=master_sae_id, slave_SAE_ID=slave_sae_id,
                key_size=cfg.key_size_bits,
                stored_key_count=self.relay.stored_key_count(master_sae_id, slave_sae_id,
                                                             cfg.key_size_bits),
                max_key_count=cfg.max_key_count, max_key_per_request=cfg.max_key_per_request,
                max_key_size=cfg.max_key_size_bits, min_key_size=cfg.min_key_size_bits,
                max_SAE_ID_count=0,
                status_extension={"relay": {
                    "policy": self.relay.policy_for(master_sae_id, slave_sae_id).policy,
                    "paths": [list(route.kmes) for route in routes]}})
        link = self._route("status", master_sae_id, slave_sae_id)
        return KmeStatus(
            source_KME_ID=self.kme_id, target_KME_ID=link.other(self.kme_id),
            master_SAE_ID=master_sae_id, slave_SAE_ID=slave_sae_id,
            key_size=cfg.key_size_bits,
            stored_key_count=self._stored_key_count(link, cfg.key_size_bits),
            max_key_count=cfg.max_key_count, max_key_per_request=cfg.max_key_per_request,
            max_key_size=cfg.max_key_size_bits, min_key_size=cfg.min_key_size_bits,
            max_SAE_ID_count=cfg.max_sae_id_count)

    def _check_request(self, master_sae_id: str, slave_sae_id: str, number: Any, size_bits: Any,
                       additional: Any, extension_mandatory: Any,
                       extension_optional: Any) -> tuple[int, int, tuple[str, ...]]:
        cfg = self.config
        number = 1 if number is None else number
        if not _is_int(number) or not 1 <= number <= cfg.max_key_per_request:
            raise KeyRequestError(
                f"number = {number!r}: must be an integer from 1 to max_key_per_request = "
                f"{cfg.max_key_per_request}", [{"number": number}])
        size_bits = cfg.key_size_bits if size_bits is None else size_bits
        if not _is_int(size_bits):
            raise KeyRequestError(f"size = {size_bits!r}: must be an integer number of bits",
                                  [{"size": size_bits}])
        if size_bits % 8:
            raise KeyRequestError(MSG_SIZE_MULTIPLE_OF_8, [{"size": size_bits}])
        if not cfg.min_key_size_bits <= size_bits <= cfg.max_key_size_bits:
            raise KeyRequestError(
                f"size = {size_bits}: must lie in [min_key_size, max_key_size] = "
                f"[{cfg.min_key_size_bits}, {cfg.max_key_size_bits}] bits", [{"size": size_bits}])
        slaves = self._check_additional(master_sae_id, slave_sae_id, additional)
        for name, value in (("extension_mandatory", extension_mandatory),
                            ("extension_optional", extension_optional)):
            if value is not None and (not isinstance(value, list)
                                      or not all(isinstance(item, dict) for item in value)):
                raise KeyRequestError(f"{name} must be a list of objects", [{name: "invalid"}])
        # extension_optional may be ignored (ETSI GS QKD 014, 6.2); mandatory ones may not.
        unsupported: list[str] = []
        unmet: list[str] = []
        for item in extension_mandatory or []:
            for name, option in item.items():
                if name not in cfg.supported_extensions:
                    unsupported.append(str(name))
                elif option not in cfg.supported_extensions[name]:
                    unmet.append(str(name))
        if unsupported:
            raise KeyRequestError(MSG_EXTENSION_NOT_SUPPORTED,
                                  [{"extension_mandatory_unsupported": unsupported}])
        if unmet:
            raise KeyRequestError(MSG_EXTENSION_OPTIONS_UNMET,
                                  [{"extension_mandatory_unmet": unmet}])
        return number, size_bits, slaves

    def _check_additional(self, master_sae_id: str, slave_sae_id: str,
                          additional: Any) -> tuple[str, ...]:
        if additional is None or additional == []:
            return (slave_sae_id,)
        cfg = self.config
        if not isinstance(additional, list) or not all(isinstance(s, str) for s in additional):
            raise KeyRequestError("additional_slave_SAE_IDs must be a list of SAE ID strings",
                                  [{"additional_slave_SAE_IDs": "invalid"}])
        if cfg.max_sae_id_count == 0:
            raise KeyRequestError("additional_slave_SAE_IDs: multicast is disabled on this KME "
                                  "(max_SAE_ID_count = 0)",
                                  [{"max_SAE_ID_count": 0}])
        if len(additional) > cfg.max_sae_id_count:
            raise KeyRequestError(
                f"additional_slave_SAE_IDs names {len(additional)} SAEs; at most "
                f"max_SAE_ID_count = {cfg.max_sae_id_count}",
                [{"max_SAE_ID_count": cfg.max_sae_id_count}])
        slaves = (slave_sae_id, *additional)
        if len(set(slaves)) != len(slaves) or master_sae_id in slaves:
            raise KeyRequestError("additional_slave_SAE_IDs must not repeat an SAE, the slave "
                                  "SAE or the master SAE",
                                  [{"additional_slave_SAE_IDs": list(additional)}])
        slave_kme = self.directory.kme_of(slave_sae_id)
        elsewhere = [sae for sae in additional if self.directory.kme_of(sae) != slave_kme]
        if elsewhere:
            # One reservation is cut from one link's pool, which only the slave's KME holds.
            raise KeyRequestError(
                "every additional slave SAE must be attached to the slave SAE's KME "
                f"{slave_kme!r}", [{"additional_slave_SAE_IDs": elsewhere}])
        return slaves

    def _peer(self, kme_id: str) -> PeerLink | None:
        with self._peers_lock:
            return self._peers.get(kme_id)

    # -- what the relay (corridor.kms.relay) uses ---------------------------------------

    def relay_peer(self, kme_id: str) -> Any:
        """The connection to neighbour ``kme_id`` that carries relay hops (the link under
        any coalescing wrapper), or None."""
        peer = self._peer(kme_id)
        peer = peer.peer if isinstance(peer, CoalescingPeerLink) else peer
        return peer if hasattr(peer, "relay") else None

    def note_peer_failure(self, kme_id: str, exc: BaseException) -> None:
        """Record that neighbour ``kme_id`` did not answer (a known outage, probed)."""
        if _is_unreachable(exc):
            self._peer_failed(kme_id, exc)

    def queue_withdrawal(self, kme_id: str, key_ids: Sequence[str]) -> None:
        """Have neighbour ``kme_id`` withdraw ``key_ids`` at the next sync."""
        with self._flight_lock:
            self._withdrawals.setdefault(kme_id, []).extend(key_ids)

    @contextlib.contextmanager
    def cut_in_flight(self, link_id: str, direction: str) -> Iterator[None]:
        """Mark a cut of a pool this KME masters as in flight (no watermark is sent for
        that pool meanwhile, see :meth:`_watermarks`)."""
        pool_key = (link_id, direction)
        with self._flight_lock:
            self._cuts_in_flight[pool_key] = self._cuts_in_flight.get(pool_key, 0) + 1
        try:
            yield
        finally:
            with self._flight_lock:
                self._cuts_in_flight[pool_key] -= 1

    def enc_keys(self, master_sae_id: str, slave_sae_id: str, *, number: int | None = None,
                 size_bits: int | None = None,
                 additional_slave_sae_ids: list[str] | None = None,
                 extension_mandatory: list[dict[str, Any]] | None = None,
                 extension_optional: list[dict[str, Any]] | None = None) -> list[DeliveredKey]:
        """Reserve ``number`` keys of ``size_bits``, have the slave's KME accept them, and
        deliver them to the master SAE (ETSI 014 "Get key")."""
        result = self.enc_keys_batch([KeyOrder(
            master_sae_id, slave_sae_id, number=number, size_bits=size_bits,
            additional_slave_sae_ids=additional_slave_sae_ids,
            extension_mandatory=extension_mandatory,
            extension_optional=extension_optional)])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def enc_keys_batch(self, orders: Sequence[KeyOrder]
                       ) -> list[list[DeliveredKey] | Exception]:
        """Serve several enc_keys requests together; each gets its keys or the error
        :meth:`enc_keys` would have raised for it (returned, not raised).

        Each request is checked and admitted on its own (routing, limits, peer outage,
        pool, quota: its rejection is its own). The admitted ones that share a pool, a
        master SAE, slave SAEs and a key size form one delivery: one ``delivery_id``,
        one intent entry, one cut, one ``keys_reserved``, one announcement and one
        ``keys_delivered``, all carrying every key ID of the group (``requests`` says how
        many requests it served when more than one). A group either delivers to all of
        its requests or fails all of them closed, as one request would."""
        results: list[list[DeliveredKey] | Exception | None] = [None] * len(orders)
        groups: dict[tuple[Any, ...], list[tuple[int, _Admitted]]] = {}
        for index, order in enumerate(orders):
            if self.relay is not None and self.relay.handles(order.master_sae_id,
                                                             order.slave_sae_id):
                try:
                    results[index] = self.relay.enc_keys(order)
                except (KeyRequestError, UnauthorizedError, KeysUnavailableError,
                        ParameterError) as exc:
                    results[index] = exc
                continue
            try:
                admitted = self._admit_order(order)
            except (KeyRequestError, UnauthorizedError, KeysUnavailableError,
                    ParameterError) as exc:
                results[index] = exc
                continue
            groups.setdefault(admitted.group_key, []).append((index, admitted))
        for group in groups.values():
            if len(group) > 1:
                # Serve the group together only if the pool holds all of it now; else
                # each request on its own, so that those that fit are served.
                first = group[0][1]
                state = self.store.pool_state(first.link.link_id, first.direction)
                need = sum(item.count for _, item in group) * (first.size // 8)
                if state.available_bytes < need:
                    for index, item in group:
                        results[index] = self._deliver_group([item])[0]
                    continue
            for (index, _), result in zip(group, self._deliver_group(
                    [item for _, item in group]), strict=True):
                results[index] = result
        return [r if r is not None else KeysUnavailableError("request not served")
                for r in results]

    def _admit_order(self, order: KeyOrder) -> _Admitted:
        """Route, check and admit one enc_keys request (quota taken); raise its error."""
        master_sae_id, slave_sae_id = order.master_sae_id, order.slave_sae_id
        link = self._route("enc_keys", master_sae_id, slave_sae_id)
        try:
            count, size, slaves = self._check_request(
                master_sae_id, slave_sae_id, order.number, order.size_bits,
                order.additional_slave_sae_ids, order.extension_mandatory,
                order.extension_optional)
        except KeyRequestError:
            self._reject("enc_keys", master_sae_id, "invalid_request", 400)
            raise
        slave_kme = link.other(self.kme_id)
        peer = self._peer(slave_kme)
        if peer is None:
            self._reject("enc_keys", master_sae_id, "no_peer_link", 503)
            raise KeysUnavailableError(f"no connection to the slave's KME {slave_kme!r}")
        if not self._peer_available(slave_kme):
            outage = self._outages.get(slave_kme)
            wait_s = max(0.0, outage.retry_at - time.monotonic()) if outage else 0.0
            self._reject("enc_keys", master_sae_id, "peer_unreachable", 503)
            raise PeerUnreachableError(
                f"the slave's KME {slave_kme!r} is unreachable; nothing was reserved; "
                f"retry in {wait_s:.1f} s", [{"peer_kme_id": slave_kme}])
        direction = link.direction_from(self.kme_id)
        self._admit(master_sae_id, slave_sae_id, link.link_id, direction, count, size)
        return _Admitted(link, direction, slave_kme, peer, master_sae_id, slaves, count, size)

    def _deliver_group(self, group: Sequence[_Admitted]) -> list[list[DeliveredKey] | Exception]:
        """One delivery for admitted requests of one group (see :meth:`enc_keys_batch`)."""
        first = group[0]
        link, direction, master_sae_id, slaves = (first.link, first.direction,
                                                  first.master_sae_id, first.slaves)
        count, size = sum(item.count for item in group), first.size
        key_ids = new_key_ids(count)
        delivery_id = _new_delivery_id()
        batch = {"requests": len(group)} if len(group) > 1 else {}
        try:
            self._record("keys_reserving", kme_id=self.kme_id, delivery_id=delivery_id,
                         link_id=link.link_id, direction=direction,
                         master_sae_id=master_sae_id, slave_sae_ids=list(slaves),
                         key_ids=key_ids, count=count, size_bits=size, **batch)
        except StorageFailureError as exc:
            return [exc] * len(group)
        pool_key = (link.link_id, direction)
        with self._flight_lock:
            self._cuts_in_flight[pool_key] = self._cuts_in_flight.get(pool_key, 0) + 1
        try:
            keys = self._cut_and_announce(group, key_ids, delivery_id, batch)
        except (KeyRequestError, UnauthorizedError, KeysUnavailableError,
                ParameterError) as exc:
            return [exc] * len(group)
        finally:
            with self._flight_lock:
                self._cuts_in_flight[pool_key] -= 1
        results: list[list[DeliveredKey] | Exception] = []
        start = 0
        for item in group:
            results.append(keys[start:start + item.count])
            start += item.count
        return results

    def _cut_and_announce(self, group: Sequence[_Admitted], key_ids: list[str],
                          delivery_id: str, batch: Mapping[str, int]) -> list[DeliveredKey]:
        first = group[0]
        link, direction, slave_kme, peer = first.link, first.direction, first.slave_kme, \
            first.peer
        master_sae_id, slaves, size = first.master_sae_id, first.slaves, first.size
        count = len(key_ids)

        def reject(reason: str) -> None:
            # One rejection per request (metrics count each); the first closes the intent.
            for index in range(len(group)):
                extra = {"delivery_id": delivery_id} if index == 0 else {}
                self._reject("enc_keys", master_sae_id, reason, 503, **extra)

        try:
            # One durable transaction: the bytes leave the pool and the reserve pointer
            # moves past them; the keys stay in this process's memory until the peer
            # accepted, so there are no master rows to write, seal, open and delete.
            cut = self.store.cut_front(
                link.link_id, direction, key_ids=key_ids, length_bytes=size // 8,
                master_sae_id=master_sae_id, slave_sae_ids=slaves)
        except PoolExhaustedError as exc:
            reject("pool_exhausted")
            wanted = first.count if len(group) == 1 else count
            raise KeysUnavailableError(
                f"not enough key material for {wanted} keys of {size} bits to "
                f"{slaves[0]!r}; try fewer or smaller keys, or later",
                [{"stored_key_count": self._stored_key_count(link, size)}]) from exc
        except AtRestDecryptionError as exc:
            reject("store_integrity")
            raise KeysUnavailableError("key store integrity check failed") from exc
        except _STORAGE_ERRORS as exc:
            self._raise_storage_alarm("key store write", exc)
            reject("store_unavailable")
            raise StorageFailureError("the key store cannot be written now") from exc
        except KeysUnavailableError:
            reject("store_unavailable")
            raise
        self._storage_ok("store")
        reservations = [res for res, _ in cut]
        # The bytes are cut (the pointer never moves back); from here a failure of the
        # audit trail fails the request closed, and the intent entry covers the bytes.
        self._record("keys_reserved", kme_id=self.kme_id, delivery_id=delivery_id,
                     link_id=link.link_id, direction=direction, master_sae_id=master_sae_id,
                     slave_sae_ids=list(slaves), key_ids=key_ids, count=count,
                     size_bits=size, byte_offsets=[r.byte_offset for r in reservations],
                     **batch)
        try:
            peer.announce(reservations)
        except Exception as exc:
            # Fail closed: the slave may or may not hold these ranges; either way they
            # are never delivered here (the keys are dropped from memory), and the
            # pointer never moves back over them. The slave is asked to withdraw them
            # (and to trim the skipped bytes) once it answers again.
            del cut
            with self._flight_lock:
                self._withdrawals.setdefault(slave_kme, []).extend(key_ids)
            unreachable = _is_unreachable(exc)
            if unreachable:
                self._peer_failed(slave_kme, exc)
            reason = "peer_unreachable" if unreachable else "peer_refused"
            self._record_after("reservations_discarded", kme_id=self.kme_id,
                               delivery_id=delivery_id, link_id=link.link_id,
                               direction=direction, key_ids=key_ids, count=count,
                               reason=reason, **batch)
            for _ in group:
                self._reject("enc_keys", master_sae_id, reason, 503)
            if unreachable:
                raise PeerUnreachableError(
                    f"the slave's KME {slave_kme!r} is unreachable: the reservation was not "
                    "accepted; nothing was delivered") from exc
            # Refused, not unreachable (at start-up: the slave has not stored the block
            # yet); its reason is public text (pool offsets, never key bytes).
            why = _refusal_reason(exc)
            raise KeysUnavailableError(
                f"the slave's KME {slave_kme!r} refused the reservation ({why}); nothing "
                "was delivered") from exc
        self._record_after("keys_delivered", kme_id=self.kme_id, delivery_id=delivery_id,
                           sae_id=master_sae_id, role="master", master_sae_id=master_sae_id,
                           key_ids=key_ids, count=count, size_bits=size, **batch)
        return delivered_keys(map(_FIRST, reservations), map(_SECOND, cut))

    def dec_keys(self, slave_sae_id: str, master_sae_id: str,
                 key_ids: list[str]) -> list[DeliveredKey]:
        """Deliver keys by ID to ``slave_sae_id``, all or none (ETSI 014 "Get key with key
        IDs"): 401 if it was not named on a key, 400 if a key is unknown or already
        delivered to it."""
        if self.directory.kme_of(slave_sae_id) != self.kme_id:
            self._reject("dec_keys", slave_sae_id, "caller_not_attached", 401)
            raise UnauthorizedError("caller is not an SAE of this KME")
        if not isinstance(key_ids, list) or not key_ids:
            self._reject("dec_keys", slave_sae_id, "invalid_request", 400)
            raise KeyRequestError("key_IDs must list at least one key ID",
                                  [{"key_IDs": "empty"}])
        if len(key_ids) > self.config.max_key_per_request:
            self._reject("dec_keys", slave_sae_id, "invalid_request", 400)
            raise KeyRequestError(
                f"key_IDs lists {len(key_ids)} keys; at most max_key_per_request = "
                f"{self.config.max_key_per_request}")
        malformed = [] if set(map(type, key_ids)) == {str} and all_uuids(key_ids) else [
            k for k in key_ids if not is_uuid(k)]
        if malformed:
            self._reject("dec_keys", slave_sae_id, "keys_not_found", 400)
            raise KeyRequestError(MSG_KEYS_NOT_FOUND,
                                  [{"key_IDs_not_found": [str(k)[:64] for k in malformed]}])
        delivery_id = _new_delivery_id()
        self._record("keys_delivering", kme_id=self.kme_id, delivery_id=delivery_id,
                     sae_id=slave_sae_id, role="slave", master_sae_id=master_sae_id,
                     key_ids=list(key_ids), count=len(key_ids))
        try:
            keys = self.store.take_slave_keys(slave_sae_id, master_sae_id, key_ids)
        except UnauthorizedError:
            self._reject("dec_keys", slave_sae_id, "not_named_on_key", 401,
                         delivery_id=delivery_id)
            raise
        except KeyRequestError:
            self._reject("dec_keys", slave_sae_id, "keys_not_found", 400,
                         delivery_id=delivery_id)
            raise
        except AtRestDecryptionError as exc:
            self._reject("dec_keys", slave_sae_id, "store_integrity", 503,
                         delivery_id=delivery_id)
            raise KeysUnavailableError("key store integrity check failed") from exc
        except _STORAGE_ERRORS as exc:
            self._raise_storage_alarm("key store write", exc)
            self._reject("dec_keys", slave_sae_id, "store_unavailable", 503,
                         delivery_id=delivery_id)
            raise StorageFailureError("the key store cannot be written now") from exc
        except KeysUnavailableError:
            self._reject("dec_keys", slave_sae_id, "store_unavailable", 503,
                         delivery_id=delivery_id)
            raise
        self._storage_ok("store")
        by_size: dict[int, list[str]] = {}
        for key in keys:
            by_size.setdefault(len(key.key) * 8, []).append(key.key_id)
        for size, ids in by_size.items():
            self._record_after("keys_delivered", kme_id=self.kme_id, delivery_id=delivery_id,
                               sae_id=slave_sae_id, role="slave", master_sae_id=master_sae_id,
                               key_ids=ids, count=len(ids), size_bits=size)
        return keys

    # -- feeding ----------------------------------------------------------------------

    def ingest_block(self, link_id: str, block_id: int, key: bytes,
                     meta: Mapping[str, Any] | None = None) -> int:
        """Add a distilled block of ``link_id`` (identical at both KMEs) to the two pools.

        Returns the bytes stored. A half that does not fit its pool's capacity is
        dropped, but its stream position is used up all the same, so both KMEs keep
        identical offsets whatever each decided; the master skips the hole, and a
        reservation over bytes only one side holds is refused (fail closed).
        """
        link = self.directory.link(link_id)
        if link is None or self.kme_id not in (link.kme_a, link.kme_b):
            known = [spec.link_id for spec in self.directory.links_of(self.kme_id)]
            raise ParameterError("link_id", link_id,
                                 f"is not a link of KME {self.kme_id!r}; known: {known}")
        if not isinstance(key, bytes | bytearray) or not key:
            raise ParameterError("key", f"({type(key).__name__}, not shown)",
                                 "must be non-empty bytes")
        try:
            result = self.store.append_block(link_id, block_id, split_block(bytes(key)),
                                             self.config.pool_capacity_bytes)
        except _STORAGE_ERRORS as exc:
            self._raise_storage_alarm("key store write", exc)
            raise StorageFailureError("the key store cannot be written now") from exc
        self._storage_ok("store")
        public_meta = {name: value for name, value in (meta or {}).items()
                       if isinstance(value, int | float) and name not in ("kme_id", "link_id",
                                                                           "block_id")}
        self.events.emit("block_ingested", kme_id=self.kme_id, link_id=link_id,
                         block_id=block_id, length_bytes=len(key),
                         accepted_bytes=result.accepted_bytes, **public_meta)
        for direction in DIRECTIONS:
            if result.dropped_bytes[direction]:
                self.events.emit("pool_full", kme_id=self.kme_id, link_id=link_id,
                                 direction=direction, block_id=block_id,
                                 dropped_bytes=result.dropped_bytes[direction])
        return result.accepted_bytes

    def pool_state(self, link_id: str, direction: str) -> PoolState:
        """Public figures of one pool of this KME."""
        return self.store.pool_state(link_id, direction)

    def pool_states(self) -> list[PoolState]:
        """Both pools of every link of this KME (for metrics and status displays);
        ``stored_key_count`` of a pool is ``available_bytes // config.key_size_bytes``."""
        return [self.store.pool_state(link.link_id, direction)
                for link in self.directory.links_of(self.kme_id) for direction in DIRECTIONS]

    # -- the slave side ---------------------------------------------------------------

    def accept_reservations(self, from_kme_id: str, reservations: Sequence[Reservation]) -> None:
        """Record reservations announced by ``from_kme_id`` (its master SAEs' keys for our
        slave SAEs), durably and all or none; a repeat is accepted without effect.
        Raises :class:`~corridor.kms.store.ReservationRefusedError` (a 503) otherwise."""
        try:
            if not (set(map(type, reservations)) == {Reservation}
                    and set(map(type, map(_SLAVES, reservations))) == {tuple}):
                reservations = [r._replace(slave_sae_ids=tuple(r.slave_sae_ids))
                                if isinstance(r, Reservation)
                                and isinstance(r.slave_sae_ids, list) else r
                                for r in reservations]
            self._check_reservations(from_kme_id, reservations)
            recorded = self.store.record_peer_reservations(reservations)
        except _STORAGE_ERRORS as exc:
            self._raise_storage_alarm("key store write", exc)
            self._reject("accept_reservations", from_kme_id, "store_unavailable", 503)
            raise StorageFailureError("the key store cannot be written now") from exc
        except InvalidReservationError:
            self._reject("accept_reservations", from_kme_id, "invalid_reservation", 400)
            raise
        except ReservationRefusedError:
            self._reject("accept_reservations", from_kme_id, "bytes_not_held", 503)
            raise
        except AtRestDecryptionError as exc:
            self._reject("accept_reservations", from_kme_id, "store_integrity", 503)
            raise ReservationRefusedError("key store integrity check failed") from exc
        self._storage_ok("store")
        groups: dict[tuple[str, str, str, tuple[str, ...], int], list[Reservation]] = {}
        if recorded and len(set(map(_ACCEPTED_GROUP, recorded))) == 1:
            groups[_ACCEPTED_GROUP(recorded[0])] = list(recorded)  # one delivery, one entry
        else:
            for res in recorded:
                groups.setdefault(_ACCEPTED_GROUP(res), []).append(res)
        for (link_id, direction, master, slaves, length), group in groups.items():
            self.events.emit("reservation_accepted", kme_id=self.kme_id,
                             from_kme_id=from_kme_id, link_id=link_id, direction=direction,
                             master_sae_id=master, slave_sae_ids=list(slaves),
                             key_ids=list(map(_FIRST, group)), count=len(group),
                             size_bits=length * 8,
                             byte_offsets=list(map(_BYTE_OFFSET, group)))

    def _check_reservations(self, from_kme_id: str, reservations: Sequence[Reservation]) -> None:
        if not reservations:
            raise InvalidReservationError("an announcement must carry at least one reservation")
        limit = max(self.config.max_key_per_request, MAX_ANNOUNCEMENT_RESERVATIONS)
        if len(reservations) > limit:
            raise InvalidReservationError(
                f"an announcement carries at most {limit} reservations")
        max_length = self.config.max_key_size_bits // 8
        if self._plainly_well_formed(reservations, max_length):
            # Column checks passed for every reservation at once; what is left is the
            # link, direction and SAE check per combination of those fields, in the
            # order they first appear.
            first: dict[tuple[Any, ...], Reservation] = {}
            hashable = True
            try:
                if len(set(map(_SHARED_FIELDS, reservations))) == 1:
                    first[_SHARED_FIELDS(reservations[0])] = reservations[0]
                else:
                    for r in reservations:
                        first.setdefault(_SHARED_FIELDS(r), r)
            except TypeError:  # an unhashable field: the per-key checks refuse it
                hashable = False
            if hashable:
                for res in first.values():
                    self._check_shared_fields(from_kme_id, res)
                return
        # The link, direction and SAE checks depend only on these fields, which all
        # reservations of one request share: check each combination once.
        checked: set[tuple[Any, ...]] = set()
        for res in reservations:
            if not isinstance(res, Reservation):
                raise InvalidReservationError("an announcement must carry Reservation objects")
            if not is_uuid(res.key_id):
                raise InvalidReservationError("every key ID must be a canonical UUID")
            if not (_is_int(res.byte_offset) and res.byte_offset >= 0 and _is_int(res.length_bytes)
                    and 1 <= res.length_bytes <= max_length):
                raise InvalidReservationError(
                    f"reservation {res.key_id}: byte range out of bounds")
            shared = (res.link_id, res.direction, res.master_sae_id, res.slave_sae_ids)
            try:
                if shared in checked:
                    continue
            except TypeError:  # an unhashable field: malformed, refused below
                pass
            self._check_shared_fields(from_kme_id, res)
            checked.add(shared)

    @staticmethod
    def _plainly_well_formed(reservations: Sequence[Reservation], max_length: int) -> bool:
        """True when every reservation passes the per-key checks of
        :meth:`_check_reservations` (type, canonical key ID, byte range), tested column
        by column in C instead of key by key; False sends the caller to the per-key
        checks, which name the first offender."""
        if set(map(type, reservations)) != {Reservation}:
            return False
        key_ids, _, _, offsets, lengths, _, slaves = zip(*reservations, strict=True)
        return (set(map(type, key_ids)) == {str}
                and all_uuids(key_ids)
                and set(map(type, offsets)) == {int} and min(offsets) >= 0
                and set(map(type, lengths)) == {int}
                and min(lengths) >= 1 and max(lengths) <= max_length
                and set(map(type, slaves)) == {tuple})

    def _check_shared_fields(self, from_kme_id: str, res: Reservation) -> None:
        link = self.directory.link(res.link_id)
        if link is None or {link.kme_a, link.kme_b} != {self.kme_id, from_kme_id}:
            raise InvalidReservationError(
                f"link {res.link_id!r} does not join KME {from_kme_id!r} to KME "
                f"{self.kme_id!r}")
        if res.direction not in DIRECTIONS or link.master_kme(res.direction) != from_kme_id:
            raise InvalidReservationError(
                f"KME {from_kme_id!r} may only reserve from its own direction of link "
                f"{res.link_id!r}, not {res.direction!r}")
        if self.directory.kme_of(res.master_sae_id) != from_kme_id:
            raise InvalidReservationError(
                f"master SAE {res.master_sae_id!r} is not attached to KME {from_kme_id!r}")
        if (not isinstance(res.slave_sae_ids, tuple) or not res.slave_sae_ids
                or not all(isinstance(s, str) for s in res.slave_sae_ids)
                or len(res.slave_sae_ids) > 1 + self.config.max_sae_id_count
                or len(set(res.slave_sae_ids)) != len(res.slave_sae_ids)
                or any(self.directory.kme_of(s) != self.kme_id for s in res.slave_sae_ids)):
            raise InvalidReservationError(
                f"reservation {res.key_id}: slave SAEs must be distinct SAEs of KME "
                f"{self.kme_id!r}, at most 1 + max_SAE_ID_count")

    # -- peer outages, withdrawal and trimming ------------------------------------------

    def peer_outage(self, kme_id: str) -> PeerOutage | None:
        """The known outage of peer KME ``kme_id``, or None while it answers."""
        return self._outages.get(kme_id)

    def _peer_failed(self, kme_id: str, exc: BaseException) -> None:
        now = time.monotonic()
        with self._flight_lock:
            outage = self._outages.get(kme_id)
            failures = outage.failures + 1 if outage else 1
            wait_s = min(PEER_RETRY_MAX_S, PEER_RETRY_MIN_S * 2 ** (failures - 1))
            reason = type(_unreachable_cause(exc) or exc).__name__
            self._outages[kme_id] = PeerOutage(since=outage.since if outage else time.time(),
                                               failures=failures, retry_at=now + wait_s,
                                               reason=reason)
        if outage is None:
            _log.warning("peer KME %s unreachable from %s (%s): enc_keys answers 503 without "
                         "reserving until it answers again", kme_id, self.kme_id, reason)
            self._record_after("peer_unreachable", kme_id=self.kme_id, peer_kme_id=kme_id,
                               reason=reason)

    def _peer_available(self, kme_id: str) -> bool:
        """False while an outage of ``kme_id`` is known and its retry time has not come;
        when it has, one caller probes the peer with :meth:`sync_peer` (which reserves
        nothing) and the others keep waiting."""
        with self._flight_lock:
            outage = self._outages.get(kme_id)
            if outage is None:
                return True
            now = time.monotonic()
            if now < outage.retry_at:
                return False
            outage.retry_at = now + PEER_RETRY_MAX_S  # this caller probes; others wait
        try:
            self.sync_peer(kme_id)
        except Exception as exc:
            self._peer_failed(kme_id, exc)
            return False
        return True

    def _watermarks(self, kme_id: str) -> list[tuple[str, str, int]]:
        """(link, direction, offset) of each pool this KME masters towards ``kme_id`` with
        no cut in flight: every byte below ``offset`` was cut here, so what the peer
        still holds below it as pool bytes was skipped and can never be announced."""
        marks = []
        with self._flight_lock:  # no cut can start while the offsets are read
            for link in self.directory.links_of(self.kme_id):
                if link.other(self.kme_id) != kme_id:
                    continue
                direction = link.direction_from(self.kme_id)
                if self._cuts_in_flight.get((link.link_id, direction), 0):
                    continue
                offset = self.store.pool_state(link.link_id, direction).reserve_offset
                if offset > 0:
                    marks.append((link.link_id, direction, offset))
        return marks

    def sync_peer(self, kme_id: str) -> None:
        """Tell peer KME ``kme_id`` which announced keys to withdraw (their announcement
        failed here, so no SAE holds their IDs) and up to where its pools hold only
        skipped bytes; raises if the peer does not answer. Clears a known outage.

        One sync at a time per peer (a probe and the housekeeping round may meet), and
        at most ``SYNC_MAX_WITHDRAWN`` key IDs per call, so the request stays far below
        the peer's body limit however long the peer was away; a backlog is sent in
        several calls."""
        peer = self._peer(kme_id)
        if peer is None:
            raise KeysUnavailableError(f"no connection to KME {kme_id!r}")
        with self._flight_lock:
            lock = self._sync_locks.setdefault(kme_id, threading.Lock())
        sent = 0
        with lock:
            sync = getattr(peer, "sync", None)
            while True:
                with self._flight_lock:
                    withdrawn = list(self._withdrawals.get(kme_id, [])[:SYNC_MAX_WITHDRAWN])
                watermarks = self._watermarks(kme_id)
                if sync is not None:
                    sync(withdrawn, watermarks)
                with self._flight_lock:
                    # Only this thread removes from the list (under ``lock``), and others
                    # only append: the first len(withdrawn) IDs are the ones just sent.
                    del self._withdrawals.get(kme_id, [])[:len(withdrawn)]
                    more = bool(self._withdrawals.get(kme_id))
                sent += len(withdrawn)
                if not more or sync is None:
                    break
        with self._flight_lock:
            outage = self._outages.pop(kme_id, None)
        if outage is not None:
            _log.warning("peer KME %s answers %s again after %.1f s", kme_id, self.kme_id,
                         time.time() - outage.since)
            self._record_after("peer_reachable", kme_id=self.kme_id, peer_kme_id=kme_id,
                               outage_s=round(time.time() - outage.since, 3),
                               withdrawn_count=sent)

    def probe_peers(self) -> None:
        """Probe every peer whose outage has reached its retry time (housekeeping, so
        that an outage ends without waiting for a request)."""
        with self._flight_lock:
            due = [kme for kme, outage in self._outages.items()
                   if time.monotonic() >= outage.retry_at]
        for kme_id in due:
            self._peer_available(kme_id)

    def next_probe_in_s(self) -> float | None:
        """Seconds until the next peer probe is due, or None with no known outage."""
        with self._flight_lock:
            if not self._outages:
                return None
            return max(0.0, min(o.retry_at for o in self._outages.values())
                       - time.monotonic())

    def sync_peers(self) -> None:
        """Best effort :meth:`sync_peer` with every peer (housekeeping): trims what a
        crash skipped, withdraws what failed; an unreachable peer becomes a known
        outage."""
        with self._peers_lock:
            peers = list(self._peers)
        for kme_id in peers:
            try:
                self.sync_peer(kme_id)
            except CorridorError as exc:
                if _is_unreachable(exc):
                    self._peer_failed(kme_id, exc)
                    continue
                _log.warning("sync with peer KME %s from %s refused: %s", kme_id,
                             self.kme_id, type(exc).__name__)

    def accept_sync(self, from_kme_id: str, withdrawn_key_ids: Sequence[str],
                    watermarks: Sequence[tuple[str, str, int]]) -> tuple[int, int]:
        """The slave's side of :meth:`sync_peer`: discard the withdrawn keys that the
        peer announced here (and no SAE fetched), trim each pool it masters below its
        watermark; returns (keys withdrawn, bytes trimmed). Audited."""
        if len(withdrawn_key_ids) > 100_000 or not all(is_uuid(k) for k in withdrawn_key_ids):
            raise InvalidReservationError("withdrawn_key_ids must be at most 100000 UUIDs")
        mastered = {(link.link_id, link.direction_from(from_kme_id))
                    for link in self.directory.links_of(self.kme_id)
                    if link.other(self.kme_id) == from_kme_id}
        if not mastered:
            raise InvalidReservationError(f"KME {from_kme_id!r} shares no link with this KME")
        for link_id, direction, offset in watermarks:
            if (link_id, direction) not in mastered:
                raise InvalidReservationError(
                    f"KME {from_kme_id!r} is not the master of {link_id} {direction}")
            if not _is_int(offset) or offset < 0:
                raise InvalidReservationError("a watermark offset must be an integer >= 0")
        try:
            routes = self.store.slave_key_links(list(withdrawn_key_ids))
            mine = sorted(k for k, route in routes.items() if route in mastered)
            withdrawn = self.store.discard_keys(mine) if mine else 0
            if withdrawn:
                self._record_after("reservations_withdrawn", kme_id=self.kme_id,
                                   from_kme_id=from_kme_id, key_ids=mine, count=withdrawn)
            trimmed_total = 0
            for link_id, direction, offset in watermarks:
                trimmed = self.store.trim_pool(link_id, direction, int(offset))
                if trimmed:
                    trimmed_total += trimmed
                    self._record_after("pool_trimmed", kme_id=self.kme_id, link_id=link_id,
                                       direction=direction, below_offset=int(offset),
                                       trimmed_bytes=trimmed)
        except _STORAGE_ERRORS as exc:
            self._raise_storage_alarm("key store write", exc)
            raise StorageFailureError("the key store cannot be written now") from exc
        except AtRestDecryptionError as exc:  # our store's fault, not the peer's: a 503
            raise KeysUnavailableError("key store integrity check failed") from exc
        return withdrawn, trimmed_total

    # -- recovery ---------------------------------------------------------------------

    def resolve_pending(self, older_than_s: float = 0.0) -> int:
        """Discard master reservations never delivered (call on startup); returns how many.

        Their key IDs were never returned to a master SAE (a key is returned only after
        its row is deleted in the delivering transaction), so nobody can ask for them:
        deleting them loses no delivered key, and since the reserve pointer never moves
        back, their bytes are never handed out again. With several workers sharing a
        PostgreSQL store, pass ``older_than_s`` above the longest request so a restarting
        worker leaves the others' in-flight reservations alone.
        """
        pending = self.store.pending_reservations(older_than_s)
        if not pending:
            return 0
        discarded = self.store.discard_keys([res.key_id for res in pending])
        self.events.emit("reservations_discarded", kme_id=self.kme_id,
                         key_ids=[res.key_id for res in pending], count=discarded,
                         reason="pending_at_startup")
        return discarded

    def check_store_against(self, marks: HighWaterMarks) -> None:
        """Refuse a store that is behind the audit trail's high-water marks (anti-rollback,
        at start): a link whose last stored block is older than the last block the
        trail saw ingested, a key the trail saw delivered to a slave SAE that the store
        holds for it again, or a pool this KME masters whose reserve pointer is before
        the end of a range the trail saw cut."""
        for link_id, block_id in sorted(marks.last_block_id.items()):
            stored = self.store.last_block_id(link_id)
            if stored is None or stored < block_id:
                raise StoreRollbackError(
                    f"key store of KME {self.kme_id} is older than its audit trail: link "
                    f"{link_id} ends at block {stored} in the store but block {block_id} "
                    f"was ingested (audit seq {marks.seq_of.get((link_id,))}); a restored "
                    f"copy would re-issue delivered key bytes under new IDs. {_ROLLBACK_ADVICE}")
        by_sae: dict[str, list[tuple[str, int]]] = {}
        for sae_id, key_id, seq in marks.delivered:
            by_sae.setdefault(sae_id, []).append((key_id, seq))
        for sae_id, delivered in sorted(by_sae.items()):
            for start in range(0, len(delivered), 500):
                chunk = delivered[start:start + 500]
                back = self.store.undelivered_slave_keys(sae_id, [k for k, _ in chunk])
                if back:
                    seq = min(s for k, s in chunk if k in back)
                    raise StoreRollbackError(
                        f"key store of KME {self.kme_id} is older than its audit trail: "
                        f"{len(back)} key(s) it delivered to SAE {sae_id!r} (audit seq {seq}) "
                        f"are in the store again; serving from it would deliver them twice. "
                        f"{_ROLLBACK_ADVICE}")
        for (link_id, direction), end in sorted(marks.cut_end.items()):
            pointer = self.store.pool_state(link_id, direction).reserve_offset
            if pointer < end:
                raise StoreRollbackError(
                    f"key store of KME {self.kme_id} is older than its audit trail: pool "
                    f"{link_id} {direction} reserves from byte {pointer} but bytes up to "
                    f"{end} were already cut (audit seq "
                    f"{marks.seq_of.get((link_id, direction))}); a restored copy would "
                    f"re-issue delivered key bytes under new IDs. {_ROLLBACK_ADVICE}")

    def resolve_unfinished(self, intents: Sequence[Mapping[str, Any]]) -> int:
        """Close every delivery whose intent entry has no outcome (call at start with
        :meth:`corridor.kms.audit.DeliveryJournal.unfinished`); returns how many.

        At the slave the store tells which keys the SAE can still fetch (the crash came
        before the commit: ``not_delivered``) and which it cannot (after it:
        ``delivered``, the answer may not have reached the SAE). At the master the keys
        lived in memory only: with no ``keys_reserved`` the bytes may have been cut and
        are burned (``not_delivered``); after it the slave may hold them and the master
        SAE may or may not have received them (``unconfirmed``). Either way no byte is
        ever handed out again under another key ID.
        """
        for intent in intents:
            fields = dict(intent.get("fields", {}))
            key_ids = [str(k) for k in fields.get("key_ids", [])]
            base = {"kme_id": self.kme_id, "delivery_id": str(fields.get("delivery_id", "")),
                    "intent_seq": int(intent.get("seq", 0)), "reason": "kme_restarted"}
            if intent.get("event") == "keys_delivering":
                still = self.store.undelivered_slave_keys(str(fields.get("sae_id", "")),
                                                          key_ids)
                delivered = [k for k in key_ids if k not in still]
                outcome = ("delivered" if not still else
                           "not_delivered" if not delivered else "partly_delivered")
                self._record("delivery_resolved", **base, role="slave", outcome=outcome,
                             delivered_key_ids=delivered,
                             fetchable_key_ids=[k for k in key_ids if k in still])
            else:
                outcome = "unconfirmed" if intent.get("reserved") else "not_delivered"
                self._record("delivery_resolved", **base, role="master", outcome=outcome,
                             key_ids=key_ids)
        return len(intents)

    def expire_undelivered(self) -> int:
        """Discard keys reserved longer than ``undelivered_key_lifetime_s`` ago and never
        fetched (slave rows; pending master rows of the reserve path), audited as
        ``keys_expired``; returns how many. Their IDs may be known to a master SAE, which
        then gets 400 (not found) at the slave, as for a delivered key."""
        lifetime = float(self.config.undelivered_key_lifetime_s)
        total = 0
        for role in (ROLE_SLAVE, ROLE_MASTER):
            while True:
                try:
                    expired = self.store.expire_keys(role, lifetime)
                except _STORAGE_ERRORS as exc:
                    self._raise_storage_alarm("key store write", exc)
                    return total
                if not expired:
                    break
                total += len(expired)
                self._record_after("keys_expired", kme_id=self.kme_id, role=role,
                                   key_ids=expired, count=len(expired), lifetime_s=lifetime)
        return total

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def __repr__(self) -> str:
        return f"KeyManager(kme_id={self.kme_id!r}, store={self.store!r})"


class LocalPeerLink:
    """A :class:`~corridor.kms.interface.PeerLink` to a KeyManager in the same process.

    Any refusal by the far side reaches the caller as
    :class:`~corridor.kms.interface.KeysUnavailableError`, as over HTTPS.
    """

    def __init__(self, other: KeyManager, from_kme_id: str) -> None:
        self.other = other
        self.from_kme_id = from_kme_id

    def announce(self, reservations: list[Reservation]) -> None:
        """Have the other KME accept ``reservations`` durably, or raise."""
        try:
            self.other.accept_reservations(self.from_kme_id, reservations)
        except KeysUnavailableError:
            raise
        except CorridorError as exc:
            raise KeysUnavailableError(f"peer KME refused: {exc}") from None

    def sync(self, withdrawn_key_ids: list[str],
             watermarks: list[tuple[str, str, int]]) -> None:
        """Have the other KME withdraw keys and trim skipped pool bytes, or raise."""
        try:
            self.other.accept_sync(self.from_kme_id, withdrawn_key_ids, watermarks)
        except KeysUnavailableError:
            raise
        except CorridorError as exc:
            raise KeysUnavailableError(f"peer KME refused: {exc}") from None

    def relay(self, hop: RelayHop, timeout_s: float) -> None:
        """Hand a relay hop to the other KME (through its wire form, as over HTTPS);
        raise :class:`~corridor.kms.relay.RelayError` unless it and every KME after it
        accepted."""
        from corridor.kms.relay import RelayError, RelayHop

        engine = self.other.relay
        if engine is None:
            raise RelayError(f"KME {self.other.kme_id!r} does not relay")
        try:
            engine.accept_hop(self.from_kme_id, RelayHop.from_json(hop.to_json()))
        except RelayError:
            raise
        except KeysUnavailableError as exc:
            raise RelayError(exc.message, exc.details, failed_kme_id=self.other.kme_id) \
                from None
        except CorridorError as exc:
            raise RelayError(f"KME {self.other.kme_id!r} refused the relay: {exc}") from None

    def void(self, relay_id: str, path: Sequence[str], key_ids: Sequence[str]) -> None:
        """Withdraw a relay at the other KME (and down the path from there)."""
        if self.other.relay is None:
            raise KeysUnavailableError(f"KME {self.other.kme_id!r} does not relay")
        self.other.relay.accept_void(self.from_kme_id, relay_id, path, key_ids)

    def __repr__(self) -> str:
        return f"LocalPeerLink({self.from_kme_id!r} -> {self.other.kme_id!r})"


class _Announcement:
    """One caller's reservations waiting in a :class:`CoalescingPeerLink`."""

    __slots__ = ("accepted", "done", "error", "reservations")

    def __init__(self, reservations: list[Reservation]) -> None:
        self.reservations = reservations
        self.done = False
        self.accepted = False
        self.error: BaseException | None = None


class CoalescingPeerLink:
    """Group commit for announcements: concurrent callers share one peer call.

    While one announcement is in flight, others queue; when it returns, one waiting
    caller sends everything queued (up to ``max_reservations``) in one call, so under
    load the slave KME runs one HTTPS request and one durable transaction for many
    enc_keys requests, and at low load nobody waits for a timer. Fail closed is kept
    per caller: a caller returns only once the peer accepted an announcement that
    contained all of its reservations. If a shared call is refused, each caller's
    reservations are announced again on their own (a refused announcement recorded
    nothing, and a repeat of an accepted one is accepted without effect), so one bad
    request does not fail the others; if the peer was unreachable, all of them fail.
    """

    def __init__(self, peer: PeerLink, *,
                 max_reservations: int = MAX_ANNOUNCEMENT_RESERVATIONS) -> None:
        if not _is_int(max_reservations) or max_reservations < 1:
            raise ParameterError("max_reservations", max_reservations, "an integer >= 1")
        self.peer = peer
        self.max_reservations = max_reservations
        self._cond = threading.Condition()
        self._queue: list[_Announcement] = []
        self._sending = False

    def announce(self, reservations: list[Reservation]) -> None:
        """Return once the peer durably accepted ``reservations``, or raise."""
        mine = _Announcement(list(reservations))
        with self._cond:
            self._queue.append(mine)
            while self._sending and not mine.done:
                self._cond.wait()
            leader = not mine.done
            if leader:
                self._sending = True
        if leader:
            try:
                while not mine.done:
                    with self._cond:
                        batch = self._next_batch()
                    try:
                        self._send(batch)
                    finally:
                        with self._cond:
                            for item in batch:
                                if not item.accepted and item.error is None:
                                    # _send was interrupted: never report success.
                                    item.error = KeysUnavailableError(
                                        "announcement interrupted")
                                item.done = True
                            self._cond.notify_all()
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()
        if not mine.accepted:
            if mine.error is None:
                raise KeysUnavailableError("peer KME did not accept the reservation")
            if isinstance(mine.error, KeysUnavailableError):
                raise KeysUnavailableError(mine.error.message,
                                           mine.error.details) from mine.error
            raise KeysUnavailableError("peer KME did not accept the reservation") \
                from mine.error

    def _next_batch(self) -> list[_Announcement]:
        """Take queued announcements (at least one) up to ``max_reservations``."""
        batch = [self._queue.pop(0)]
        total = len(batch[0].reservations)
        while self._queue and total + len(self._queue[0].reservations) <= \
                self.max_reservations:
            item = self._queue.pop(0)
            total += len(item.reservations)
            batch.append(item)
        return batch

    def _send(self, batch: list[_Announcement]) -> None:
        try:
            self.peer.announce([res for item in batch for res in item.reservations])
        except Exception as exc:  # handed to each caller below
            if len(batch) == 1 or isinstance(exc, PeerUnreachableError | OSError):
                for item in batch:
                    item.error = exc
                return
        else:
            for item in batch:
                item.accepted = True
            return
        for item in batch:
            try:
                self.peer.announce(item.reservations)
            except Exception as exc:  # this caller fails closed, the others go on
                item.error = exc
            else:
                item.accepted = True

    def sync(self, withdrawn_key_ids: list[str],
             watermarks: list[tuple[str, str, int]]) -> None:
        """Pass a sync through to the wrapped link (when it has one)."""
        sync = getattr(self.peer, "sync", None)
        if sync is not None:
            sync(withdrawn_key_ids, watermarks)

    def __repr__(self) -> str:
        return f"CoalescingPeerLink({self.peer!r})"


def connect_local(first: KeyManager, second: KeyManager) -> None:
    """Join two in-process KeyManagers with a LocalPeerLink each way."""
    first.set_peer(second.kme_id, LocalPeerLink(second, first.kme_id))
    second.set_peer(first.kme_id, LocalPeerLink(first, second.kme_id))

