"""QKD keys into IKEv2 tunnels: RFC 8784 PPKs loaded into strongSwan charon, rotated.

This module owns the key life of one IPsec tunnel between two sites, one controller
per site next to its charon:

- :class:`IpsecInitiator` (the ETSI 014 master SAE, and the IKE initiator) asks its KME
  for a QKD key (``enc_keys``), tells the responder's controller the generation and the
  ``key_ID`` (a :class:`ResponderLink`), loads the PPK and a connection for that
  generation into its charon, starts a fresh IKE SA, and closes the previous one
  (make-before-break).
- :class:`IpsecResponder` (the slave SAE) fetches the same key by ``key_ID``
  (``dec_keys``), loads the PPK and the connection for that generation, and unloads
  them when the initiator retires the generation.

Why a connection per generation: charon keeps an IKE SA's PPK ID across
reauthentication (strongSwan 5.9.8, checked), and a stable PPK ID would race on
rotation, so each generation has its own PPK ID (``corridor-<key_ID>``,
:mod:`corridor.mobility.ppk`). The initiator loads a connection per generation,
``<name>-g<generation>``, so that it can start the new IKE SA while the old one runs;
the responder replaces its one connection ``<name>`` (a responder picks the first
connection that matches the peer and insists on its ``ppk_id``, so side-by-side
generations would refuse the new IKE SA; an established IKE SA keeps the connection
it was made with). The responder is always ready before the initiator starts. Every connection
has ``ppk_required = yes``: charon never runs the tunnel without the PPK.

When the QKD key is missing (KME unreachable, pool empty, the responder's KME could not
deliver), the tunnel's policy (:mod:`corridor.hybrid.policy`) decides, and the decision
is audited and counted (:class:`~corridor.hybrid.policy.DecisionRecorder`):

- refused (``qkd-required``, ``both-required``): the tunnel is torn down (fail closed);
  the controller keeps trying and brings it back with the next QKD key.
- degraded (``pqc-required``, ``any``): the current IKE SA stays up and keeps
  re-keying from its key material, which still rests on the last PPK; no new
  generation starts until a QKD key arrives. A tunnel that has no IKE SA yet cannot
  start without a PPK (``ppk_required``): that is refused whatever the policy.

PQC input: RFC 9370 additional key exchanges (ML-KEM) exist in strongSwan 6.0 and
later only; :attr:`TunnelSpec.pqc_missing` is ``None`` only when an IKE proposal names
an ML-KEM key exchange, so a strongSwan 5.9 tunnel is honestly recorded without PQC.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from corridor.errors import CorridorError, ParameterError
from corridor.hybrid.policy import (
    QKD,
    REFUSED,
    Decision,
    DecisionRecorder,
    Policy,
    decide,
    parse_policy,
)
from corridor.kms.client import KmeConnectionError, KmeProtocolError, KmeResponseError
from corridor.kms.interface import DeliveredKey
from corridor.mobility.charon import Charon
from corridor.mobility.ppk import derive_ppk, key_id_from_ppk_id, ppk_id_for

_log = logging.getLogger(__name__)

DEFAULT_IKE_PROPOSALS = ("aes256-sha256-modp3072",)
# kernel-libipsec has no AES-GCM without the openssl/gcm plugins: CBC + HMAC.
DEFAULT_ESP_PROPOSALS = ("aes256-sha256",)
DEFAULT_KEY_SIZE_BITS = 256
# Not a reason code (those are snake_case): "take pqc_missing from the TunnelSpec".
FROM_SPEC = "from-spec"


class IpsecRotationError(CorridorError):
    """A generation could not be brought up (charon refused, the peer was not ready)."""


class InitiatorKeys(Protocol):
    """The initiator's KME (ETSI 014 master side): :class:`corridor.kms.client.SaeClient`."""

    def get_key(self, slave_sae_id: str, number: int = 1,
                size: int | None = None) -> list[DeliveredKey]: ...


class ResponderKeys(Protocol):
    """The responder's KME (ETSI 014 slave side): :class:`corridor.kms.client.SaeClient`."""

    def get_key_with_id(self, master_sae_id: str, key_ids: str) -> list[DeliveredKey]: ...


class ResponderLink(Protocol):
    """How the initiator's controller reaches the responder's: an :class:`IpsecResponder`
    in the same process, or :class:`corridor.mobility.ipsec_link.HttpsResponderLink`."""

    def prepare(self, generation: int, key_id: str) -> None:
        """Fetch key ``key_id`` and load generation ``generation``; raise if it cannot."""
        ...

    def retire(self, generation: int) -> None:
        """Unload generation ``generation`` (its IKE SA is closed or being closed)."""
        ...


@dataclass(frozen=True)
class TunnelSpec:
    """One side's view of the tunnel: what goes into charon's connection.

    Attributes:
        name: the connection's base name; generation N is ``<name>-g<N>``.
        local_addr / remote_addr: the outer (IKE, ESP-in-UDP) addresses.
        local_ts / remote_ts: traffic selectors (CIDR) carried by the tunnel.
        local_id / remote_id: IKE identities (default: the addresses).
        child: the CHILD SA's name.
        ike_proposals / esp_proposals: charon proposal strings.
        encap: force UDP encapsulation (port 4500); kernel-libipsec needs it.
    """

    name: str
    local_addr: str
    remote_addr: str
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    local_id: str | None = None
    remote_id: str | None = None
    child: str = "net"
    ike_proposals: tuple[str, ...] = DEFAULT_IKE_PROPOSALS
    esp_proposals: tuple[str, ...] = DEFAULT_ESP_PROPOSALS
    encap: bool = True

    def __post_init__(self) -> None:
        for attr in ("name", "child"):
            value = getattr(self, attr)
            if not isinstance(value, str) or not value or not value.replace("-", "").replace(
                    "_", "").isalnum():
                raise ParameterError(attr, value, "letters, digits, - and _ (a charon name)")
        for attr in ("local_ts", "remote_ts", "ike_proposals", "esp_proposals"):
            if not getattr(self, attr):
                raise ParameterError(attr, getattr(self, attr), "at least one entry")

    @property
    def ids(self) -> tuple[str, str]:
        """The local and remote IKE identities."""
        return self.local_id or self.local_addr, self.remote_id or self.remote_addr

    @property
    def pqc_missing(self) -> str | None:
        """``None`` when an IKE proposal carries ML-KEM (RFC 9370, strongSwan >= 6.0),
        else the reason code recorded with every decision."""
        if any("mlkem" in proposal for proposal in self.ike_proposals):
            return None
        return "ike_without_mlkem"

    def conn_name(self, generation: int) -> str:
        return f"{self.name}-g{generation}"

    def connection(self, generation: int, ppk_id: str) -> dict[str, Any]:
        """The VICI ``load-conn`` body of ``generation`` (swanctl.conf syntax)."""
        local_id, remote_id = self.ids
        return {
            "version": "2",
            "local_addrs": [self.local_addr],
            "remote_addrs": [self.remote_addr],
            "encap": "yes" if self.encap else "no",
            "proposals": list(self.ike_proposals),
            "ppk_id": ppk_id,
            "ppk_required": "yes",
            # never: a new generation's IKE SA must not replace the old one (which it
            # would on INITIAL_CONTACT) before the controller closes the old one itself.
            "unique": "never",
            "dpd_delay": "10s",
            "local": {"auth": "psk", "id": local_id},
            "remote": {"auth": "psk", "id": remote_id},
            "children": {self.child: {
                "local_ts": list(self.local_ts),
                "remote_ts": list(self.remote_ts),
                "esp_proposals": list(self.esp_proposals),
                "dpd_action": "clear",
            }},
        }


@dataclass
class Generation:
    """A loaded generation: public facts only (the PPK went to charon)."""

    number: int
    key_id: str
    ppk_id: str
    started_s: float = field(default_factory=time.monotonic)


class _Side:
    """What both controllers do to their charon."""

    role = ""

    def __init__(self, charon: Charon, spec: TunnelSpec, *, local_sae_id: str,
                 peer_sae_id: str, policy: Policy | str,
                 recorder: DecisionRecorder | None = None, events: Any = None) -> None:
        self.charon = charon
        self.spec = spec
        self.local_sae_id = local_sae_id
        self.peer_sae_id = peer_sae_id
        self.policy = parse_policy(policy)
        self.events = events
        self.recorder = recorder if recorder is not None else DecisionRecorder(events)
        self.generations: dict[int, Generation] = {}
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(connection={self.spec.name!r}, "
                f"policy={self.policy.value!r}, generations={sorted(self.generations)})")

    def install_ike_psk(self, psk: bytes) -> None:
        """Load the IKE authentication pre-shared key (classical; the PPK adds the QKD
        key on top of it)."""
        if not isinstance(psk, bytes) or len(psk) < 16:
            raise ParameterError("ike_psk", "(not shown)", "at least 16 bytes")
        self.charon.load_shared(f"{self.spec.name}-ike", "IKE", psk, list(self.spec.ids))

    def _emit(self, event: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(event, role=self.role, connection=self.spec.name, **fields)

    def _context(self, generation: int | None, key_id: str | None) -> dict[str, Any]:
        context: dict[str, Any] = {
            "role": self.role, "connection": self.spec.name, "generation": generation,
            "local_SAE_ID": self.local_sae_id, "peer_SAE_ID": self.peer_sae_id,
            "export": "ipsec_ppk"}
        if key_id is not None:
            context["key_ID"] = key_id
        return context

    def _load(self, generation: int, key: DeliveredKey) -> Generation:
        ppk_id = ppk_id_for(key.key_id)
        ppk = derive_ppk(key.key, key.key_id, generation)
        # The PPK's owner is its PPK ID: charon looks it up by the ID in IKE_AUTH.
        self.charon.load_shared(self._ppk_secret(generation), "PPK", ppk, [ppk_id])
        del ppk
        self.charon.load_conn(self._conn_for(generation),
                              self.spec.connection(generation, ppk_id))
        loaded = Generation(generation, key.key_id, ppk_id)
        self.generations[generation] = loaded
        return loaded

    def _ppk_secret(self, generation: int) -> str:
        return f"{self.spec.name}-ppk-g{generation}"

    def _conn_for(self, generation: int) -> str:
        return self.spec.conn_name(generation)

    def _unload(self, generation: int) -> None:
        """Unload the connection and PPK of ``generation`` (whatever of them is loaded)."""
        self.generations.pop(generation, None)
        name = self._conn_for(generation)
        if name in self.charon.conn_names() and self._conn_unused(name):
            self.charon.unload_conn(name)
        if self._ppk_secret(generation) in self.charon.shared_ids():
            self.charon.unload_shared(self._ppk_secret(generation))

    def _conn_unused(self, name: str) -> bool:
        return all(self._conn_for(g) != name for g in self.generations)


def _qkd_missing_reason(exc: Exception) -> str:
    if isinstance(exc, KmeConnectionError):
        return "kme_unreachable"
    if isinstance(exc, KmeResponseError):
        return "pool_empty" if exc.status_code == 503 else f"kme_refused_{exc.status_code}"
    if isinstance(exc, KmeProtocolError):
        return "kme_protocol_error"
    return "kme_error"


class IpsecResponder(_Side):
    """The responder's controller (ETSI 014 slave SAE); also a :class:`ResponderLink`.

    Args:
        charon: the responder's charon.
        spec: the tunnel from the responder's side.
        kme: its KME client (``dec_keys``).
        local_sae_id / peer_sae_id: this SAE and the initiator's (the master SAE).
        policy, recorder, events: as for :class:`IpsecInitiator`.
    """

    role = "responder"

    def _conn_for(self, generation: int) -> str:
        # One connection, replaced by each generation: charon's responder picks the
        # first connection that matches the peer and then insists on that connection's
        # ppk_id, so two generations' connections side by side would refuse the new
        # IKE SA. An IKE SA keeps the connection it was set up with when it is replaced.
        return self.spec.name

    def __init__(self, charon: Charon, spec: TunnelSpec, kme: ResponderKeys, *,
                 local_sae_id: str, peer_sae_id: str, policy: Policy | str,
                 recorder: DecisionRecorder | None = None, events: Any = None) -> None:
        super().__init__(charon, spec, local_sae_id=local_sae_id, peer_sae_id=peer_sae_id,
                         policy=policy, recorder=recorder, events=events)
        self.kme = kme

    def prepare(self, generation: int, key_id: str) -> None:
        """Fetch QKD key ``key_id`` and load generation ``generation``.

        Raises :class:`IpsecRotationError` when the key cannot be had (the refusal is
        audited): the initiator then treats the QKD key as missing."""
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise ParameterError("generation", generation, "an integer >= 1")
        key_id_from_ppk_id(ppk_id_for(key_id))  # validates key_id
        with self._lock:
            try:
                (key,) = self.kme.get_key_with_id(self.peer_sae_id, key_id)
            except (CorridorError, ValueError) as exc:
                reason = _qkd_missing_reason(exc)
                decision = decide(self.policy, qkd_missing=reason,
                                  pqc_missing=self.spec.pqc_missing)
                self.recorder.record(decision, action="prepare",
                                     **self._context(generation, key_id))
                raise IpsecRotationError(
                    f"responder cannot load generation {generation}: key {key_id} not "
                    f"delivered by its KME ({reason}): {exc}") from None
            if generation in self.generations:
                self._unload(generation)
            self._load(generation, key)
            decision = decide(self.policy, pqc_missing=self.spec.pqc_missing)
            self.recorder.record(decision, action="prepare", **self._context(generation, key_id))

    def retire(self, generation: int) -> None:
        """Unload generation ``generation``; if it was the newest (a generation that did
        not come up), the connection goes back to the newest one left."""
        with self._lock:
            newest = max(self.generations, default=None)
            self._unload(generation)
            if generation == newest and self.generations:
                previous = self.generations[max(self.generations)]
                self.charon.load_conn(self.spec.name,
                                      self.spec.connection(previous.number, previous.ppk_id))
            self._emit("ipsec_generation_retired", generation=generation)


class IpsecInitiator(_Side):
    """The initiator's controller (ETSI 014 master SAE, IKE initiator).

    Args:
        charon: the initiator's charon.
        spec: the tunnel from the initiator's side.
        kme: its KME client (``enc_keys``).
        responder: the responder's controller (:class:`ResponderLink`).
        local_sae_id / peer_sae_id: this SAE and the responder's (the slave SAE).
        policy: the tunnel's policy (HYBRID.md).
        recorder: records every decision (audit + ``corridor_hybrid_sessions_total``).
        events: an ``EventSink`` for the rotation events (``ipsec_rotated``,
            ``ipsec_torn_down``, ``ipsec_kept``), usually the recorder's sink.
        key_size_bits: the QKD key size asked for.
        pqc_missing: override of :attr:`TunnelSpec.pqc_missing` (``None``: PQC
            present); the default takes the spec's, which reads the IKE proposals.
    """

    role = "initiator"

    def __init__(self, charon: Charon, spec: TunnelSpec, kme: InitiatorKeys,
                 responder: ResponderLink, *, local_sae_id: str, peer_sae_id: str,
                 policy: Policy | str, recorder: DecisionRecorder | None = None,
                 events: Any = None, key_size_bits: int = DEFAULT_KEY_SIZE_BITS,
                 pqc_missing: str | None = FROM_SPEC) -> None:
        super().__init__(charon, spec, local_sae_id=local_sae_id, peer_sae_id=peer_sae_id,
                         policy=policy, recorder=recorder, events=events)
        self.kme = kme
        self.responder = responder
        self.key_size_bits = key_size_bits
        self.pqc_missing = spec.pqc_missing if pqc_missing == FROM_SPEC else pqc_missing
        self.current: Generation | None = None
        self._next = 1

    def rotate(self) -> Decision:
        """Start the next generation (or, without a QKD key, do what the policy says).

        Returns the recorded decision. Raises :class:`IpsecRotationError` when the
        policy allowed the new generation but charon could not establish it (the
        previous generation, if any, then stays up)."""
        with self._lock:
            generation = self._next
            key: DeliveredKey | None = None
            qkd_missing: str | None = None
            try:
                (key,) = self.kme.get_key(self.peer_sae_id, 1, self.key_size_bits)
            except (CorridorError, ValueError) as exc:
                qkd_missing = _qkd_missing_reason(exc)
                _log.warning("no QKD key for %s generation %d: %s", self.spec.name,
                             generation, exc)
            if key is not None:
                try:
                    self.responder.prepare(generation, key.key_id)
                except CorridorError as exc:
                    qkd_missing = "peer_not_prepared"
                    _log.warning("responder not ready for %s generation %d: %s",
                                 self.spec.name, generation, exc)
            if qkd_missing is not None and self.current is None:
                # Nothing to keep, and charon cannot start without a PPK (ppk_required).
                decision = Decision(self.policy, (), REFUSED, ((QKD, qkd_missing),))
            else:
                decision = decide(self.policy, qkd_missing=qkd_missing,
                                  pqc_missing=self.pqc_missing)
            key_id = key.key_id if key is not None and qkd_missing is None else None
            action = "rotate" if qkd_missing is None else (
                "keep" if decision.proceed else "tear_down")
            self.recorder.record(decision, action=action,
                                 **self._context(generation if key_id else None, key_id))
            if not decision.proceed:
                if key is not None:
                    self._retire_at_responder(generation)
                self.tear_down(qkd_missing or "refused")
                return decision
            if qkd_missing is not None:
                current = self.current
                assert current is not None
                self._emit("ipsec_kept", generation=current.number, key_ID=current.key_id,
                           missing=qkd_missing)
                return decision
            assert key is not None
            self._next = generation + 1
            self._make_before_break(generation, key)
            return decision

    def _make_before_break(self, generation: int, key: DeliveredKey) -> None:
        name = self.spec.conn_name(generation)
        try:
            loaded = self._load(generation, key)
            self.charon.initiate(self.spec.child, name)
        except CorridorError as exc:
            self._unload(generation)
            self._retire_at_responder(generation)
            self._emit("ipsec_rotation_failed", generation=generation, key_ID=key.key_id)
            raise IpsecRotationError(
                f"generation {generation} of {self.spec.name} did not come up: {exc}") from None
        previous, self.current = self.current, loaded
        if previous is not None:
            self._close(previous.number)
        self._emit("ipsec_rotated", generation=generation, key_ID=key.key_id,
                   ppk_id=loaded.ppk_id,
                   previous_generation=previous.number if previous else None)

    def _close(self, generation: int) -> None:
        """Close the IKE SAs of ``generation`` and unload it on both sides."""
        for sa in self.charon.ike_sas(self.spec.conn_name(generation)):
            try:
                self.charon.terminate(sa.unique_id)
            except CorridorError as exc:  # gone already, or the peer did not answer
                _log.warning("closing IKE SA %d of %s: %s", sa.unique_id,
                             self.spec.conn_name(generation), exc)
        self._unload(generation)
        self._retire_at_responder(generation)

    def _retire_at_responder(self, generation: int) -> None:
        try:
            self.responder.retire(generation)
        except CorridorError as exc:
            # The responder unloads leftovers when it next hears from us; the IKE SA is
            # closed either way.
            _log.warning("responder did not retire generation %d: %s", generation, exc)

    def tear_down(self, reason: str) -> None:
        """Close every generation's IKE SA and unload them (fail closed)."""
        with self._lock:
            closed = sorted(self.generations)
            for generation in closed:
                self._close(generation)
            self.current = None
            self._emit("ipsec_torn_down", reason=reason, generations=closed)

    def due(self, *, interval_s: float, rotate_bytes: int | None = None) -> bool:
        """Whether the current generation should be replaced: none is up, it is older
        than ``interval_s``, or its CHILD SAs carried ``rotate_bytes`` or more."""
        current = self.current
        if current is None:
            return True
        if time.monotonic() - current.started_s >= interval_s:
            return True
        if rotate_bytes is not None:
            sas = self.charon.ike_sas(self.spec.conn_name(current.number))
            if not sas:
                return True
            return sum(sa.bytes_total for sa in sas) >= rotate_bytes
        return False

    def run(self, stop: threading.Event, *, interval_s: float,
            rotate_bytes: int | None = None, poll_s: float = 1.0) -> None:
        """Rotate whenever :meth:`due` until ``stop`` is set; after a missing key or a
        failed generation, try again every ``poll_s``."""
        if not interval_s > 0 or not poll_s > 0:
            raise ParameterError("interval_s", interval_s, "a positive number of seconds")
        retry_at = 0.0
        while not stop.is_set():
            # due() is true again while a kept generation is past its time: the next
            # attempt then waits for retry_at.
            if time.monotonic() >= retry_at and self.due(interval_s=interval_s,
                                                         rotate_bytes=rotate_bytes):
                try:
                    decision = self.rotate()
                    fresh = all(name != QKD for name, _ in decision.missing)
                except IpsecRotationError as exc:
                    _log.error("%s", exc)
                    fresh = False
                retry_at = 0.0 if fresh else time.monotonic() + poll_s
            stop.wait(min(poll_s, interval_s))
