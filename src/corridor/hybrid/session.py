"""A hybrid session between two SAEs: QKD key + X-Wing (or ML-KEM-768 + X25519) -> CatKDF.

This module owns the handshake state machines (:class:`Initiator`, :class:`Responder`),
the key schedule (:func:`session_info`, :func:`derive_keys`, :func:`confirmation_mac`),
the session's public record (:class:`SessionRecord`) and the key handed to the
application (:class:`SessionKey`). The protocol, byte by byte, is in
docs/hybrid-session.md; in short:

1. The initiator (master SAE) gets a fresh QKD key from its KME (``enc_keys``), lets its
   policy decide what to do if there is none, and sends HELLO (MA): SAE IDs, policy,
   key_ID (or the reason there is none), suite, ephemeral KEM public key(s).
2. The responder (slave SAE) refuses a policy other than its own for this pair
   (:class:`~corridor.hybrid.errors.PolicyMismatch`), fetches the same QKD key by ID
   from its KME (``dec_keys``), lets its policy decide, encapsulates, and sends REPLY
   (MB: the key_ID it used, its ciphertexts) and its CONFIRM.
3. Both derive ``CatKDF(psk = QKD key, k1 = post-quantum shared secret, k2 = empty, MA,
   MB, info, label)`` (an input the policy let the session go without is empty) where
   ``info`` is
   ``lp(label) lp(initiator SAE ID) lp(responder SAE ID) lp(key_ID used or empty)
   lp(policy)`` (``lp``: 4-byte big-endian length first); the output is split into the
   session key and a separate key-confirmation key.
4. Each side checks the other's CONFIRM (HMAC-SHA256 under the confirmation key over
   its role and the hashes of MA and MB, compared in constant time) before the key is
   returned; the initiator's CONFIRM ends the handshake.

Both sides record one policy decision per handshake (audit event ``hybrid_decision`` and
``corridor_hybrid_sessions_total``); a handshake that fails after its decision is
audited as ``hybrid_session_failed`` with the reason code. On any failure the derived
keys (``bytearray`` s) are overwritten and nothing is returned; keys, shared secrets and
message bytes never appear in logs, errors or reprs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from corridor.errors import ParameterError
from corridor.hybrid import messages
from corridor.hybrid.errors import (
    ConfirmationFailed,
    HybridSessionError,
    MalformedMessage,
    PolicyMismatch,
    PqcUnavailable,
    QkdKeyUnavailable,
    SessionAborted,
    TransportError,
    UnknownPeer,
)
from corridor.hybrid.kdf import catkdf, hmac_digest
from corridor.hybrid.messages import (
    ROLE_INITIATOR,
    ROLE_RESPONDER,
    SESSION_ID_BYTES,
    Abort,
    Confirm,
    Hello,
    Reply,
    lp,
)
from corridor.hybrid.policy import QKD, Decision, DecisionRecorder, Policy, decide, parse_policy
from corridor.hybrid.qkd import QkdKeyMissing, QkdKeySource
from corridor.hybrid.suites import (
    SUITE_NONE,
    SUITE_XWING,
    SUITES,
    KemSuite,
    parse_suite,
    pqc_unavailable_reason,
)
from corridor.hybrid.transport import ByteTransport
from corridor.kms.config import check_id
from corridor.kms.interface import DeliveredKey
from corridor.log_throttle import WarningThrottle
from corridor.randomness import RandomSource

_log = logging.getLogger(__name__)
# A session retried while a pool fills (often by fresh objects, as an OTA campaign's key
# transfer) would log a warning per try: once a minute per SAE pair and reason.
_WARNINGS = WarningThrottle(_log)

INFO_LABEL = b"corridor hybrid session v1"
"""The first field of ``info``: names this protocol and its version."""
KDF_LABEL = b"corridor-hybrid-catkdf-v1"
"""CatKDF's ``label`` (the HKDF salt)."""
CONFIRMATION_KEY_BYTES = 32
DEFAULT_SESSION_KEY_BYTES = 32


def session_info(initiator_sae_id: str, responder_sae_id: str, key_id: str,
                 policy: str) -> bytes:
    """CatKDF's ``info``: label, both SAE IDs, the QKD key_ID used (empty when none) and
    the policy, each length-prefixed, in that fixed order."""
    return b"".join(lp(part) for part in (INFO_LABEL, initiator_sae_id.encode(),
                                          responder_sae_id.encode(), key_id.encode(),
                                          policy.encode()))


def derive_keys(*, pqc_secret: bytes, qkd_key: bytes, ma: bytes, mb: bytes, info: bytes,
                session_key_bytes: int) -> tuple[bytearray, bytearray]:
    """``(session key, confirmation key)``: one CatKDF output split in two independent
    parts (HKDF output blocks), so that the MAC key is never the session key.

    The QKD key goes in CatKDF's ``psk`` slot and the post-quantum secret (X-Wing's, or
    ML-KEM-768's and X25519's concatenated) in ``k1``; ``k2`` stays empty. A missing
    input leaves its slot empty: which one was missing is bound through ``info`` (empty
    key_ID) and MA/MB (suite ``none``), and the KDF refuses when both are.
    """
    if not pqc_secret and not qkd_key:
        raise HybridSessionError("no input to derive a session key from", "no_inputs")
    okm = bytearray(catkdf(psk=qkd_key, k1=pqc_secret, k2=b"", ma=ma, mb=mb, info=info,
                           label=KDF_LABEL,
                           length=session_key_bytes + CONFIRMATION_KEY_BYTES))
    try:
        return okm[:session_key_bytes], okm[session_key_bytes:]
    finally:
        wipe(okm)


def confirmation_mac(confirmation_key: bytes | bytearray, role: str, ma: bytes,
                     mb: bytes) -> bytes:
    """HMAC-SHA256 under the confirmation key over the role (so that a side's MAC can
    never be reflected back as the other's) and the hashes of MA and MB."""
    return _role_mac(confirmation_key, role, _transcript_hashes(ma, mb))


def _transcript_hashes(ma: bytes, mb: bytes) -> bytes:
    """``lp(SHA-256(MA)) lp(SHA-256(MB))``: what both of a side's MACs cover, hashed once."""
    return lp(hashlib.sha256(ma).digest()) + lp(hashlib.sha256(mb).digest())


def _role_mac(confirmation_key: bytes | bytearray, role: str, transcript: bytes) -> bytes:
    return hmac_digest(bytes(confirmation_key), lp(role.encode()) + transcript)


def wipe(buffer: bytearray | None) -> None:
    """Overwrite a key buffer with zeros (what Python lets us clear)."""
    if buffer is not None:
        buffer[:] = bytes(len(buffer))


@dataclass(frozen=True)
class SessionRecord:
    """What a session used and decided: public fields only (no key, no secret)."""

    session_id: str
    role: str
    initiator_sae_id: str
    responder_sae_id: str
    policy: str
    suite: str
    inputs: tuple[str, ...]
    outcome: str
    missing: tuple[str, ...]
    key_id: str | None
    generation: int
    established_at: str

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        data = asdict(self)
        data["inputs"] = list(self.inputs)
        data["missing"] = list(self.missing)
        return data


class SessionKey:
    """An established session key and its record; ``repr`` shows IDs and generation only.

    Use :attr:`key` while the key is current; :meth:`wipe` (or leaving a ``with`` block)
    overwrites it.
    """

    def __init__(self, record: SessionRecord, key: bytearray) -> None:
        self.record = record
        self._key: bytearray | None = key

    @property
    def key(self) -> bytes:
        """The session key's bytes; :class:`HybridSessionError` after :meth:`wipe`."""
        if self._key is None:
            raise HybridSessionError(f"session key of {self.record.session_id} generation "
                                     f"{self.record.generation} was wiped", "key_wiped")
        return bytes(self._key)

    @property
    def wiped(self) -> bool:
        return self._key is None

    def wipe(self) -> None:
        """Overwrite the key; it cannot be used any more."""
        wipe(self._key)
        self._key = None

    def __enter__(self) -> SessionKey:
        return self

    def __exit__(self, *exc: object) -> None:
        self.wipe()

    def __repr__(self) -> str:
        r = self.record
        return (f"SessionKey(session_id={r.session_id!r}, generation={r.generation}, "
                f"key_id={r.key_id!r}, inputs={'+'.join(r.inputs)!r}"
                f"{', wiped' if self._key is None else ''})")


def _refusal(decision: Decision) -> HybridSessionError:
    missing = dict(decision.missing)
    if QKD in missing:
        return QkdKeyUnavailable(decision.policy.value, missing[QKD])
    return PqcUnavailable(decision.policy.value, missing.get("pqc", "unknown"))


def _peer_reason(role: str, reason: str) -> str:
    """A reason the peer gave, marked with the peer's role (``responder_pool_empty``),
    kept a valid reason code. The role, not ``peer_``: the KME's own reasons already
    speak of peers (``peer_kme_unreachable`` reached the initiator as
    ``peer_peer_kme_unreachable``; now ``responder_peer_kme_unreachable``)."""
    return f"{role}_{reason}"[:64]


def _check_kem_lengths(message_type: str, names: tuple[str, str], values: tuple[bytes, bytes],
                       expected: tuple[int, int], suite: str) -> None:
    for name, value, length in zip(names, values, expected, strict=True):
        if len(value) != length:
            raise MalformedMessage(message_type, name, len(value),
                                   f"must be {length} bytes for suite {suite}")


class _Handshake:
    """What both roles share: settings, recording, failure handling."""

    role = ""

    def __init__(self, sae_id: str, recorder: DecisionRecorder | None,
                 session_key_bytes: int, rng: RandomSource | None) -> None:
        check_id("sae_id", sae_id)
        if rng is not None and not rng.cryptographic:
            raise ParameterError("rng", repr(rng), "a cryptographic RandomSource (the OS "
                                 "CSPRNG, or a QRNG mixed with it): KEM seeds become keys")
        # KEM seeds, ephemeral secrets and session IDs: the OS CSPRNG unless the caller
        # hands a QRNG-fed source (corridor.entropy.open_qrng_source).
        self.rng = rng if rng is not None else RandomSource.system()
        if isinstance(session_key_bytes, bool) or not isinstance(session_key_bytes, int) \
                or not 16 <= session_key_bytes <= 64:
            raise ParameterError("session_key_bytes", session_key_bytes,
                                 "an integer from 16 to 64")
        self.sae_id = sae_id
        self.recorder = recorder
        self.session_key_bytes = session_key_bytes

    def _record(self, decision: Decision, context: Mapping[str, Any],
                key_id: str | None) -> None:
        if self.recorder is not None:
            # key_id only when there is one: the public field rule takes IDs as strings.
            extra = {"key_id": key_id} if key_id else {}
            self.recorder.record(decision, **context, **extra)

    def _fail(self, transport: ByteTransport, exc: HybridSessionError, session_id: bytes,
              generation: int, context: Mapping[str, Any]) -> None:
        """Tell the peer (unless it told us, or the transport is gone), audit, log."""
        if not isinstance(exc, SessionAborted | TransportError):
            with contextlib.suppress(HybridSessionError):
                transport.send(Abort(session_id, generation, exc.reason).encode())
        _WARNINGS.warning(("failed", self.role, self.sae_id, context.get("peer_sae_id"),
                           type(exc).__name__, exc.reason),
                          "hybrid handshake failed (%s %s, session %s, generation %s): %s",
                          self.role, self.sae_id, context.get("session_id"), generation,
                          str(exc))
        events = self.recorder.events if self.recorder is not None else None
        # A refusal is already in the trail as its decision; anything else is a failure.
        if events is not None and not isinstance(exc, QkdKeyUnavailable | PqcUnavailable):
            events.emit("hybrid_session_failed", **context, reason=exc.reason)

    def _record_of(self, hello: Hello, decision: Decision, key_id: str) -> SessionRecord:
        return SessionRecord(
            session_id=hello.session_id.hex(), role=self.role,
            initiator_sae_id=hello.initiator_sae_id, responder_sae_id=hello.responder_sae_id,
            policy=hello.policy, suite=hello.suite, inputs=decision.inputs,
            outcome=decision.outcome,
            missing=tuple(f"{name}:{reason}" for name, reason in decision.missing),
            key_id=key_id or None, generation=hello.generation,
            established_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def _expect_confirm(data: bytes, session_id: bytes, generation: int, role: str) -> Confirm:
    message = messages.decode(data)
    if isinstance(message, Abort):
        raise SessionAborted(message.reason)
    if not isinstance(message, Confirm):
        raise MalformedMessage("message", "type", 1, "expected CONFIRM")
    _same_session("CONFIRM", message.session_id, message.generation, session_id, generation)
    if message.role != role:
        raise MalformedMessage("CONFIRM", "role", len(message.role), f"must be {role}")
    return message


def _same_session(message_type: str, got_id: bytes, got_generation: int, session_id: bytes,
                  generation: int) -> None:
    if got_id != session_id:
        raise MalformedMessage(message_type, "session_id", len(got_id),
                               "must be this session's ID")
    if got_generation != generation:
        raise MalformedMessage(message_type, "generation", 4,
                               f"must be this handshake's generation {generation}")


class Initiator(_Handshake):
    """The master SAE's side: fetches the QKD key, sends HELLO, checks the reply.

    Args:
        sae_id: this SAE (the master of the QKD key).
        peer_sae_id: the responder (the slave).
        policy: the pair's policy (the corridor file's ``[[hybrid]]`` entry).
        qkd: where QKD keys come from (None: no KME, the QKD input is always missing
            with reason ``no_kme_configured``).
        recorder: records every decision (audit + metric); None records nothing (tests).
        suite: ``xwing`` (default), ``mlkem768-x25519`` or ``none`` (no PQC).
        session_key_bytes: length of the session key (16 to 64).
    """

    role = ROLE_INITIATOR

    def __init__(self, sae_id: str, peer_sae_id: str, policy: Policy | str, *,
                 qkd: QkdKeySource | None, recorder: DecisionRecorder | None = None,
                 suite: KemSuite | str = SUITE_XWING,
                 session_key_bytes: int = DEFAULT_SESSION_KEY_BYTES,
                 rng: RandomSource | None = None) -> None:
        super().__init__(sae_id, recorder, session_key_bytes, rng)
        self.peer_sae_id = check_id("peer_sae_id", peer_sae_id)
        self.policy = parse_policy(policy)
        self.qkd = qkd
        self.suite = parse_suite(suite)
        self.pqc_missing = pqc_unavailable_reason(self.suite)

    def __repr__(self) -> str:
        return (f"Initiator(sae_id={self.sae_id!r}, peer_sae_id={self.peer_sae_id!r}, "
                f"policy={self.policy.value!r}, suite={self.suite.name!r})")

    def _new_qkd_key(self) -> DeliveredKey:
        if self.qkd is None:
            raise QkdKeyMissing("no_kme_configured")
        return self.qkd.new_key(self.peer_sae_id)

    def handshake(self, transport: ByteTransport, *, generation: int = 0,
                  session_id: bytes | None = None) -> SessionKey:
        """Run one handshake (``generation`` 0 establishes, later ones re-key)."""
        sid = session_id if session_id is not None else self.rng.bytes(SESSION_ID_BYTES)
        if len(sid) != SESSION_ID_BYTES:
            raise ParameterError("session_id", f"{len(sid)} bytes", f"{SESSION_ID_BYTES} bytes")
        context: dict[str, Any] = {"session_id": sid.hex(), "generation": generation,
                                   "role": self.role, "sae_id": self.sae_id,
                                   "peer_sae_id": self.peer_sae_id}
        keys: list[bytearray] = []
        try:
            return self._run(transport, sid, generation, context, keys)
        except HybridSessionError as exc:
            for buffer in keys:
                wipe(buffer)
            self._fail(transport, exc, sid, generation, context)
            raise
        except BaseException:
            for buffer in keys:
                wipe(buffer)
            raise

    def _run(self, transport: ByteTransport, sid: bytes, generation: int,
             context: dict[str, Any], keys: list[bytearray]) -> SessionKey:
        qkd_key: DeliveredKey | None = None
        qkd_missing: str | None = None
        try:
            qkd_key = self._new_qkd_key()
        except QkdKeyMissing as exc:
            qkd_missing = exc.reason
            _WARNINGS.warning(("no_qkd_key", self.sae_id, self.peer_sae_id, exc.reason),
                              "no QKD key for hybrid session %s -> %s: %s", self.sae_id,
                              self.peer_sae_id, exc.reason)
        first = decide(self.policy, qkd_missing=qkd_missing, pqc_missing=self.pqc_missing)
        if not first.proceed:
            self._record(first, context, None)
            raise _refusal(first)
        suite = self.suite if self.pqc_missing is None else SUITES[SUITE_NONE]
        private, pk1, pk2 = suite.keygen(self.rng)
        hello = Hello(sid, generation, self.sae_id, self.peer_sae_id, self.policy.value,
                      suite.name, qkd_key.key_id if qkd_key else "", qkd_missing or "",
                      pk1, pk2)
        ma = hello.encode()
        transport.send(ma)
        mb = transport.recv()
        reply = messages.decode(mb)
        if isinstance(reply, Abort):
            raise SessionAborted(reply.reason)
        if not isinstance(reply, Reply):
            raise MalformedMessage("message", "type", 1, "expected REPLY")
        _same_session("REPLY", reply.session_id, reply.generation, sid, generation)
        if reply.key_id and reply.key_id != hello.key_id:
            raise MalformedMessage("REPLY", "key_id", len(reply.key_id),
                                   "must be the HELLO's key_id or empty")
        if hello.key_id and not reply.key_id:
            # The responder could not get the same key: QKD is missing for this session.
            qkd_key, qkd_missing = None, _peer_reason(ROLE_RESPONDER, reply.qkd_missing)
        _check_kem_lengths("REPLY", ("ct1", "ct2"), (reply.ct1, reply.ct2),
                           suite.ciphertext_bytes, suite.name)
        decision = decide(self.policy, qkd_missing=qkd_missing, pqc_missing=self.pqc_missing)
        self._record(decision, context, reply.key_id or None)
        if not decision.proceed:
            raise _refusal(decision)
        try:
            pqc_secret = suite.decapsulate(private, reply.ct1, reply.ct2)
        except ValueError:
            # Only the X25519 part can be refused (a low-order point); ML-KEM never is.
            raise MalformedMessage("REPLY", "ct1" if suite.name == SUITE_XWING else "ct2",
                                   len(reply.ct1 if suite.name == SUITE_XWING else reply.ct2),
                                   "must hold a valid X25519 public key") from None
        session_key, confirm_key = derive_keys(
            pqc_secret=pqc_secret, qkd_key=qkd_key.key if qkd_key else b"", ma=ma, mb=mb,
            info=session_info(self.sae_id, self.peer_sae_id, reply.key_id, self.policy.value),
            session_key_bytes=self.session_key_bytes)
        keys += (session_key, confirm_key)
        del pqc_secret, qkd_key
        theirs = _expect_confirm(transport.recv(), sid, generation, ROLE_RESPONDER)
        transcript = _transcript_hashes(ma, mb)
        expected = _role_mac(confirm_key, ROLE_RESPONDER, transcript)
        if not hmac.compare_digest(theirs.mac, expected):
            raise ConfirmationFailed(ROLE_RESPONDER, sid.hex(), generation)
        transport.send(Confirm(sid, generation, ROLE_INITIATOR,
                               _role_mac(confirm_key, ROLE_INITIATOR, transcript)).encode())
        wipe(confirm_key)
        keys.remove(session_key)
        return SessionKey(self._record_of(hello, decision, reply.key_id), session_key)


class Responder(_Handshake):
    """The slave SAE's side: checks HELLO against its own policy, fetches the QKD key by
    ID, encapsulates, confirms.

    Args:
        sae_id: this SAE (the slave of the QKD key).
        policies: the policy of each initiator SAE this side accepts (the corridor file's
            ``[[hybrid]]`` entries with this SAE as slave); any other is refused.
        qkd: where QKD keys come from by ID (None: always missing, ``no_kme_configured``).
        recorder, session_key_bytes: as for :class:`Initiator`.
    """

    role = ROLE_RESPONDER

    def __init__(self, sae_id: str, policies: Mapping[str, Policy | str], *,
                 qkd: QkdKeySource | None, recorder: DecisionRecorder | None = None,
                 session_key_bytes: int = DEFAULT_SESSION_KEY_BYTES,
                 rng: RandomSource | None = None) -> None:
        super().__init__(sae_id, recorder, session_key_bytes, rng)
        self.policies = {check_id("peer_sae_id", peer): parse_policy(policy, f"policy[{peer}]")
                         for peer, policy in policies.items()}
        self.qkd = qkd

    def __repr__(self) -> str:
        return f"Responder(sae_id={self.sae_id!r}, peers={sorted(self.policies)})"

    def handshake(self, transport: ByteTransport, first: bytes | None = None) -> SessionKey:
        """Answer one handshake; ``first`` is a HELLO already received (re-keys)."""
        ma = first if first is not None else transport.recv()
        context: dict[str, Any] = {"role": self.role, "sae_id": self.sae_id}
        sid, generation = bytes(SESSION_ID_BYTES), 0
        keys: list[bytearray] = []
        try:
            hello = messages.decode(ma)
            if isinstance(hello, Abort):
                raise SessionAborted(hello.reason)
            if not isinstance(hello, Hello):
                raise MalformedMessage("message", "type", 1, "expected HELLO")
            sid, generation = hello.session_id, hello.generation
            context.update(session_id=sid.hex(), generation=generation,
                           peer_sae_id=hello.initiator_sae_id)
            return self._run(transport, hello, ma, context, keys)
        except HybridSessionError as exc:
            for buffer in keys:
                wipe(buffer)
            self._fail(transport, exc, sid, generation, context)
            raise
        except BaseException:
            for buffer in keys:
                wipe(buffer)
            raise

    def _run(self, transport: ByteTransport, hello: Hello, ma: bytes,
             context: dict[str, Any], keys: list[bytearray]) -> SessionKey:
        if hello.responder_sae_id != self.sae_id:
            raise UnknownPeer(f"HELLO is addressed to SAE {hello.responder_sae_id!r}, this "
                              f"is {self.sae_id!r}")
        policy = self.policies.get(hello.initiator_sae_id)
        if policy is None:
            raise UnknownPeer(f"SAE {hello.initiator_sae_id!r} has no hybrid policy with "
                              f"{self.sae_id!r} in this side's corridor file "
                              f"(known: {sorted(self.policies)})")
        if hello.policy != policy.value:
            raise PolicyMismatch(hello.initiator_sae_id, self.sae_id, hello.policy,
                                 policy.value)
        suite = SUITES.get(hello.suite)
        if suite is None:
            raise MalformedMessage("HELLO", "suite", len(hello.suite),
                                   f"must be one of {', '.join(SUITES)}")
        _check_kem_lengths("HELLO", ("pk1", "pk2"), (hello.pk1, hello.pk2),
                           suite.public_key_bytes, suite.name)
        qkd_key: DeliveredKey | None = None
        qkd_missing: str | None = None
        if hello.key_id:
            try:
                if self.qkd is None:
                    raise QkdKeyMissing("no_kme_configured")
                qkd_key = self.qkd.key_by_id(hello.initiator_sae_id, hello.key_id)
            except QkdKeyMissing as exc:
                qkd_missing = exc.reason
                _log.warning("QKD key %s for hybrid session %s -> %s not available: %s",
                             hello.key_id, hello.initiator_sae_id, self.sae_id, exc.reason)
        else:
            qkd_missing = _peer_reason(ROLE_INITIATOR, hello.qkd_missing)
        pqc_missing = None if suite.post_quantum else _peer_reason(ROLE_INITIATOR,
                                                                          "pqc_disabled")
        decision = decide(policy, qkd_missing=qkd_missing, pqc_missing=pqc_missing)
        key_id = qkd_key.key_id if qkd_key else ""
        self._record(decision, context, key_id or None)
        if not decision.proceed:
            raise _refusal(decision)
        try:
            pqc_secret, ct1, ct2 = suite.encapsulate(hello.pk1, hello.pk2, self.rng)
        except ValueError:
            raise MalformedMessage("HELLO", "pk1", len(hello.pk1),
                                   f"must be a valid public key for suite {suite.name}") \
                from None
        reply = Reply(hello.session_id, hello.generation, key_id,
                      "" if qkd_key else (qkd_missing or "qkd_missing"), ct1, ct2)
        mb = reply.encode()
        session_key, confirm_key = derive_keys(
            pqc_secret=pqc_secret, qkd_key=qkd_key.key if qkd_key else b"", ma=ma, mb=mb,
            info=session_info(hello.initiator_sae_id, self.sae_id, key_id, policy.value),
            session_key_bytes=self.session_key_bytes)
        keys += (session_key, confirm_key)
        del pqc_secret, qkd_key
        transport.send(mb)
        transcript = _transcript_hashes(ma, mb)
        transport.send(Confirm(hello.session_id, hello.generation, ROLE_RESPONDER,
                               _role_mac(confirm_key, ROLE_RESPONDER, transcript)).encode())
        theirs = _expect_confirm(transport.recv(), hello.session_id, hello.generation,
                                 ROLE_INITIATOR)
        if not hmac.compare_digest(theirs.mac,
                                   _role_mac(confirm_key, ROLE_INITIATOR, transcript)):
            raise ConfirmationFailed(ROLE_INITIATOR, hello.session_id.hex(), hello.generation)
        wipe(confirm_key)
        keys.remove(session_key)
        return SessionKey(self._record_of(hello, decision, key_id), session_key)

    def serve(self, transport: ByteTransport, on_key: Callable[[SessionKey], None],
              *, stop_on_error: bool = False) -> None:
        """Answer handshakes (the first and every re-key) until the transport closes;
        each established key goes to ``on_key``. A failed handshake is audited and, unless
        ``stop_on_error``, the next one is awaited."""
        while True:
            try:
                first = transport.recv()
            except TransportError:
                return
            try:
                on_key(self.handshake(transport, first))
            except TransportError:
                return
            except HybridSessionError:
                if stop_on_error:
                    raise


__all__ = ["CONFIRMATION_KEY_BYTES", "DEFAULT_SESSION_KEY_BYTES", "INFO_LABEL", "KDF_LABEL",
           "Initiator", "Responder", "SessionKey", "SessionRecord", "confirmation_mac",
           "derive_keys", "session_info", "wipe"]
