"""The WireGuard PSK rotation agent: both ends of a tunnel agree on a fresh PSK every T s.

The design follows AIT's Arnika (a QKD key per interval, the key_ID sent to the peer,
an optional PQC key mixed in, a random PSK when the key is missing), with fixed roles
and Corridor's policy engine deciding every rotation:

1. The **initiator** (the ETSI 014 master SAE) fetches a new QKD key from its KME
   (``enc_keys``), reads its PQC secret file if configured, and asks the policy
   (:func:`corridor.hybrid.policy.decide`) which inputs to use. The decision is
   recorded (audit event ``hybrid_decision`` and ``corridor_hybrid_sessions_total``).
2. It sends the responder an **announce** over TCP: generation, key_ID (or none) and
   the inputs decided, authenticated with HMAC-SHA256 under a channel key both ends
   hold (a ``wg genpsk`` file). The key_ID is public, but it must not be swapped: an
   attacker who replaced it would make the ends disagree or replay an old key.
3. The **responder** checks the MAC (constant time), the two public keys, the clock
   (``max_clock_skew_s``) and that the generation is newer than any it accepted
   (replay), fetches the key with ``dec_keys``, reads its own PQC secret, decides with
   its own policy and sets the PSK only if it can use exactly the announced inputs;
   otherwise it sets a random PSK. It answers with an authenticated **ack** that binds
   the announce's MAC.
4. The initiator sets the same PSK only on a positive ack; on a negative ack, a bad
   one or none, it sets a random PSK: two ends that cannot confirm they agree are
   treated as not agreeing (fail closed).

A refusal never removes the PSK: WireGuard without a PSK still runs, classically, which
would be a silent fallback. A random PSK makes every new handshake fail; the session
keys already in use expire by WireGuard's own timers (at most 180 s, REJECT_AFTER_TIME).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter

from corridor.errors import CorridorError, ParameterError
from corridor.hybrid.policy import PQC, QKD, Decision, DecisionRecorder, Policy, decide
from corridor.kms.client import KmeConnectionError, KmeProtocolError, KmeResponseError
from corridor.kms.interface import DeliveredKey
from corridor.mobility.derive import check_key_id
from corridor.mobility.wireguard import combine_psk, decode_psk, read_pqc_secret

_log = logging.getLogger(__name__)

_MAC_LABEL = b"corridor/wireguard/channel/v1"
MAX_MESSAGE_BYTES = 4096
PQC_NOT_CONFIGURED = "pqc_not_configured"
NOT_ANNOUNCED = "not_announced"


class ChannelError(CorridorError):
    """A channel message was malformed, not authentic, replayed or out of time."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"wireguard rotation channel: {reason}")


class KeyFetcher(Protocol):
    """The part of :class:`corridor.kms.client.SaeClient` the agent uses."""

    def get_key(self, slave_sae_id: str, number: int = 1,
                size: int | None = None) -> list[DeliveredKey]: ...

    def get_key_with_id(self, master_sae_id: str,
                        key_ids: str | Sequence[str]) -> list[DeliveredKey]: ...


class PskSink(Protocol):
    """Where a PSK goes: :class:`corridor.mobility.wireguard.WgPeer`."""

    def apply(self, psk: bytes) -> None: ...

    def invalidate(self) -> None: ...


def load_channel_key(path: str | Path) -> bytes:
    """The 32-byte channel key from a file in ``wg genpsk`` form."""
    try:
        text = Path(path).read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        raise ParameterError("--channel-key", str(path), "a readable file made by "
                             "'wg genpsk'") from None
    return decode_psk(text, "--channel-key")


def _mac(key: bytes, fields: dict[str, Any]) -> str:
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, _MAC_LABEL + body, hashlib.sha256).hexdigest()


def seal(key: bytes, fields: dict[str, Any]) -> bytes:
    """``fields`` as one JSON line with its ``mac``."""
    return json.dumps({**fields, "mac": _mac(key, fields)}, sort_keys=True).encode() + b"\n"


def open_sealed(key: bytes, line: bytes) -> dict[str, Any]:
    """The fields of a sealed line, after checking its MAC in constant time."""
    try:
        message = json.loads(line)
    except ValueError:
        raise ChannelError("malformed") from None
    if not isinstance(message, dict) or not isinstance(message.get("mac"), str):
        raise ChannelError("malformed")
    mac = message.pop("mac")
    if not hmac.compare_digest(mac.encode(), _mac(key, message).encode()):
        raise ChannelError("bad_mac")
    return message


def _qkd_reason(exc: CorridorError) -> str:
    if isinstance(exc, KmeResponseError):
        return "pool_empty" if exc.status_code == 503 else f"kme_status_{exc.status_code}"
    if isinstance(exc, KmeConnectionError):
        return "kme_unreachable"
    if isinstance(exc, KmeProtocolError):
        return "kme_protocol_error"
    return "kme_error"


@dataclass(frozen=True)
class RotationResult:
    """What one rotation did at one end (public fields only)."""

    generation: int
    decision: Decision
    applied: bool
    reason: str | None = None


class _End:
    """What both ends share: policy, PQC file, PSK sink, recording."""

    role = ""

    def __init__(self, *, kme: KeyFetcher, peer: PskSink, channel_key: bytes,
                 own_public_key: str, peer_public_key: str, policy: Policy | str,
                 recorder: DecisionRecorder, pqc_file: str | Path | None = None,
                 pqc_max_age_s: float | None = 300.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.kme = kme
        self.peer = peer
        self._channel_key = channel_key
        self.own_public_key = own_public_key
        self.peer_public_key = peer_public_key
        self.policy = Policy(policy)
        self.recorder = recorder
        self.pqc_file = pqc_file
        self.pqc_max_age_s = pqc_max_age_s
        self.clock = clock
        self.updates = _updates_counter(recorder)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(policy={self.policy.value!r})"

    def _read_pqc(self) -> tuple[bytes | None, str | None]:
        if self.pqc_file is None:
            return None, PQC_NOT_CONFIGURED
        return read_pqc_secret(self.pqc_file, max_age_s=self.pqc_max_age_s, now_s=self.clock())

    def _set(self, generation: int, key_id: str | None, qkd_key: bytes | None,
             pqc_secret: bytes | None) -> None:
        psk = combine_psk(qkd_key=qkd_key, key_id=key_id, pqc_secret=pqc_secret,
                          generation=generation,
                          public_keys=(self.own_public_key, self.peer_public_key))
        self.peer.apply(psk)
        self._emit("wireguard_psk_set", generation=generation, key_id=key_id,
                   inputs="+".join(n for n, v in ((QKD, qkd_key), (PQC, pqc_secret))
                                   if v is not None))
        self.updates.labels(self.role, "set").inc()

    def _invalidate(self, generation: int, reason: str) -> None:
        self.peer.invalidate()
        self._emit("wireguard_psk_invalidated", generation=generation, reason=reason)
        self.updates.labels(self.role, "invalidated").inc()
        _log.warning("wireguard %s: generation %d: random PSK set (%s)", self.role,
                     generation, reason)

    def _emit(self, event: str, **fields: Any) -> None:
        if self.recorder.events is not None:
            self.recorder.events.emit(event, role=self.role, **fields)


def _updates_counter(recorder: DecisionRecorder) -> Counter:
    # One counter per registry, shared by the ends that record into it.
    existing = getattr(recorder, "_wireguard_updates", None)
    if existing is None:
        existing = Counter("corridor_wireguard_psk_updates_total",
                           "WireGuard PSK updates by role (initiator, responder) and result "
                           "(set: a PSK both ends derive; invalidated: a random PSK).",
                           ["role", "result"], registry=recorder.registry)
        recorder._wireguard_updates = existing  # type: ignore[attr-defined]
    return existing


class Initiator(_End):
    """The end that fetches new QKD keys (master SAE) and announces them."""

    role = "initiator"

    def __init__(self, *, slave_sae_id: str, responder_address: tuple[str, int],
                 key_size_bits: int = 256, timeout_s: float = 10.0, **common: Any) -> None:
        super().__init__(**common)
        self.slave_sae_id = slave_sae_id
        self.responder_address = responder_address
        self.key_size_bits = key_size_bits
        self.timeout_s = timeout_s
        self._generation = int(self.clock())  # survives restarts: the responder wants newer

    def _next_generation(self) -> int:
        self._generation = max(self._generation + 1, int(self.clock()))
        return self._generation

    def rotate_once(self) -> RotationResult:
        """One rotation: fetch, decide, announce, and set the PSK or a random one."""
        generation = self._next_generation()
        qkd_key: bytes | None = None
        key_id: str | None = None
        qkd_missing: str | None = None
        try:
            delivered = self.kme.get_key(self.slave_sae_id, number=1, size=self.key_size_bits)
            if len(delivered) != 1:
                raise KmeProtocolError(f"{len(delivered)} keys delivered, 1 asked")
            key_id, qkd_key = delivered[0].key_id, delivered[0].key
        except CorridorError as exc:
            qkd_missing = _qkd_reason(exc)
        pqc_secret, pqc_missing = self._read_pqc()
        decision = decide(self.policy, qkd_missing=qkd_missing, pqc_missing=pqc_missing)
        use_qkd, use_pqc = QKD in decision.inputs, PQC in decision.inputs
        announced_key_id = key_id if use_qkd else None
        self.recorder.record(decision, role=self.role, generation=generation,
                             key_id=announced_key_id)
        announce = {"type": "announce", "initiator": self.own_public_key,
                    "responder": self.peer_public_key, "generation": generation,
                    "key_id": announced_key_id, "inputs": list(decision.inputs),
                    "timestamp_s": int(self.clock())}
        try:
            ack = self._exchange(announce)
            failure = None if ack.get("ok") is True else f"peer_{ack.get('reason', 'refused')}"
        except ChannelError as exc:
            failure = f"peer_{exc.reason}"
        except OSError:
            failure = "peer_unreachable"
        if not decision.proceed:
            self._invalidate(generation, "policy_refused")
            return RotationResult(generation, decision, False, "policy_refused")
        if failure is not None:
            self._invalidate(generation, failure)
            return RotationResult(generation, decision, False, failure)
        self._set(generation, announced_key_id, qkd_key if use_qkd else None,
                  pqc_secret if use_pqc else None)
        return RotationResult(generation, decision, True)

    def _exchange(self, announce: dict[str, Any]) -> dict[str, Any]:
        sealed = seal(self._channel_key, announce)
        with socket.create_connection(self.responder_address, timeout=self.timeout_s) as sock:
            sock.sendall(sealed)
            line = _read_line(sock)
        ack = open_sealed(self._channel_key, line)
        expected_mac = json.loads(sealed)["mac"]
        if ack.get("type") != "ack" or ack.get("generation") != announce["generation"] \
                or not isinstance(ack.get("announce_mac"), str) \
                or not hmac.compare_digest(ack["announce_mac"].encode(), expected_mac.encode()):
            raise ChannelError("ack_mismatch")
        return ack

    def run(self, interval_s: float, stop: threading.Event) -> None:
        """Rotate every ``interval_s`` seconds until ``stop`` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                result = self.rotate_once()
                _log.info("wireguard initiator: generation %d: %s", result.generation,
                          "PSK set" if result.applied else f"random PSK ({result.reason})")
            except CorridorError as exc:  # wg failed: the interface's state is unknown
                _log.error("wireguard initiator: rotation failed: %s", exc)
            stop.wait(max(0.0, interval_s - (time.monotonic() - started)))


def _read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(MAX_MESSAGE_BYTES)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE_BYTES:
            raise ChannelError("too_long")
    return data


class Responder(_End):
    """The end that receives announced key_IDs (slave SAE) and fetches the same keys."""

    role = "responder"

    def __init__(self, *, master_sae_id: str, max_clock_skew_s: float = 60.0,
                 **common: Any) -> None:
        super().__init__(**common)
        self.master_sae_id = master_sae_id
        self.max_clock_skew_s = max_clock_skew_s
        self.last_generation = -1
        self._lock = threading.Lock()

    def handle(self, line: bytes) -> bytes:
        """Check one announce line, act on it and return the sealed ack line.

        Raises :class:`ChannelError` (and changes nothing) for a message that is not an
        authentic, fresh announce for this pair of peers: no ack is sent for it.
        """
        announce = open_sealed(self._channel_key, line)
        generation, key_id, inputs = self._check(announce)
        with self._lock:
            if generation <= self.last_generation:
                raise ChannelError("replayed_generation")
            self.last_generation = generation
            result = self._follow(generation, key_id, inputs)
        ack = {"type": "ack", "generation": generation, "ok": result.applied,
               "reason": result.reason, "announce_mac": json.loads(line)["mac"]}
        return seal(self._channel_key, ack)

    def _check(self, m: dict[str, Any]) -> tuple[int, str | None, tuple[str, ...]]:
        if m.get("type") != "announce":
            raise ChannelError("not_an_announce")
        if m.get("initiator") != self.peer_public_key or m.get("responder") != self.own_public_key:
            raise ChannelError("wrong_peers")
        timestamp, generation = m.get("timestamp_s"), m.get("generation")
        if not isinstance(timestamp, int) or abs(self.clock() - timestamp) > self.max_clock_skew_s:
            raise ChannelError("clock_skew")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise ChannelError("malformed")
        inputs = m.get("inputs")
        if not isinstance(inputs, list) or tuple(inputs) not in {(), (QKD,), (PQC,), (QKD, PQC)}:
            raise ChannelError("malformed")
        key_id = m.get("key_id")
        if (QKD in inputs) != isinstance(key_id, str):
            raise ChannelError("malformed")
        if key_id is not None:
            try:
                check_key_id(key_id)
            except ParameterError:
                raise ChannelError("malformed") from None
        return generation, key_id, tuple(inputs)

    def _follow(self, generation: int, key_id: str | None,
                inputs: tuple[str, ...]) -> RotationResult:
        qkd_key: bytes | None = None
        qkd_missing: str | None = NOT_ANNOUNCED
        if key_id is not None:
            try:
                delivered = self.kme.get_key_with_id(self.master_sae_id, key_id)
                if len(delivered) != 1 or delivered[0].key_id != key_id:
                    raise KmeProtocolError("dec_keys answered another key")
                qkd_key, qkd_missing = delivered[0].key, None
            except CorridorError as exc:
                qkd_missing = _qkd_reason(exc)
        pqc_secret, pqc_missing = (self._read_pqc() if PQC in inputs
                                   else (None, NOT_ANNOUNCED))
        decision = decide(self.policy, qkd_missing=qkd_missing, pqc_missing=pqc_missing)
        self.recorder.record(decision, role=self.role, generation=generation, key_id=key_id)
        if not decision.proceed:
            reason = "policy_refused"
        elif decision.inputs != inputs:
            reason = "inputs_mismatch"  # cannot derive the PSK the initiator derives
        else:
            self._set(generation, key_id, qkd_key, pqc_secret)
            return RotationResult(generation, decision, True)
        self._invalidate(generation, reason)
        return RotationResult(generation, decision, False, reason)

    def serve(self, host: str, port: int, stop: threading.Event,
              ready: threading.Event | None = None, timeout_s: float = 10.0) -> None:
        """Answer announces on ``host:port`` until ``stop`` is set, one at a time."""
        with socket.create_server((host, port)) as server:
            server.settimeout(0.2)
            self.bound_port = server.getsockname()[1]
            if ready is not None:
                ready.set()
            while not stop.is_set():
                try:
                    conn, address = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.settimeout(timeout_s)
                    try:
                        conn.sendall(self.handle(_read_line(conn)))
                    except ChannelError as exc:
                        _log.warning("wireguard responder: refused a message from %s: %s",
                                     address[0], exc.reason)
                        self._emit("wireguard_channel_refused", peer=address[0],
                                   reason=exc.reason)
                    except CorridorError as exc:
                        _log.error("wireguard responder: %s", exc)
                    except OSError as exc:
                        _log.warning("wireguard responder: connection from %s: %s",
                                     address[0], type(exc).__name__)
