"""Verification at the roadside unit: every check a received V2X message must pass.

This module owns :class:`RsuVerifier`: size, decoding, signer resolution (certificate or
digest of a certificate seen before), certificate issuer and validity, the PSID the
certificate permits, the generation-time window and the duplicate cache (replay), and the
signature. Each refusal raises :class:`Refused` with a named ``reason`` and is counted in
``counts`` (accepted messages too), which ``corridor v2x attacks`` shows.

The certificate cache keeps certificates whose issuer signature has been checked, keyed
by their ``HashedId8``: a repeated certificate costs one hash and a lookup instead of an
issuer-signature verification, and a later message that names its signer by digest is
resolved from it (as 1609.2 receivers do).
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any

from corridor.errors import CorridorError, ParameterError
from corridor.mobility.v2x.certificates import (
    hashed_id8,
    unix_from_time32,
    unix_from_time64,
)
from corridor.mobility.v2x.encoding import (
    EncodingError,
    decode_certificate,
    decode_data,
    encode_certificate,
    encode_tbs_certificate,
    encode_tbs_data,
)
from corridor.mobility.v2x.signing import VerificationKey, signature_input

FRAME_CEILING_BYTES = 1400
DEFAULT_WINDOW_S = 2.0  # generation time must be within this of the receiver's clock
DEFAULT_CACHE_CERTIFICATES = 4096

# Every reason a message can be refused for; ``counts`` uses these names.
REASONS = ("oversize", "malformed", "unsupported", "unknown_signer", "wrong_certificate",
           "expired_certificate", "not_permitted", "replay_stale", "replay_duplicate",
           "bad_signature")

_DURATION_S = {"microseconds": 1e-6, "milliseconds": 1e-3, "seconds": 1.0, "minutes": 60.0,
               "hours": 3600.0, "sixtyHours": 216000.0, "years": 31556952.0}


class Refused(CorridorError):
    """A received message failed a check; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Accepted:
    """What a verified message says: its PSID, payload, signer digest and time."""

    psid: int
    payload: bytes
    signer_digest: bytes
    generation_unix_s: float


@dataclass(frozen=True)
class _Known:
    key: VerificationKey
    start_unix_s: float
    end_unix_s: float
    psids: frozenset[int]


class RsuVerifier:
    """The checks of one RSU, with its trust anchors, caches and counts.

    ``authorities`` are the encoded certificates of the issuers it trusts.
    ``use_certificate_cache=False`` re-verifies every certificate (the benchmark's
    baseline); digest signers then still resolve from the certificates seen."""

    def __init__(self, authorities: list[bytes], *, max_message_bytes: int = FRAME_CEILING_BYTES,
                 window_s: float = DEFAULT_WINDOW_S, use_certificate_cache: bool = True,
                 cache_certificates: int = DEFAULT_CACHE_CERTIFICATES) -> None:
        if max_message_bytes < 1:
            raise ParameterError("max_message_bytes", max_message_bytes, "an integer >= 1")
        if not window_s > 0:
            raise ParameterError("window_s", window_s, "a number of seconds > 0")
        self.max_message_bytes = max_message_bytes
        self.window_s = window_s
        self.use_certificate_cache = use_certificate_cache
        self.cache_certificates = cache_certificates
        self.counts: Counter[str] = Counter()
        self.cache_hits = 0
        self._anchors: dict[bytes, tuple[bytes, _Known]] = {}
        # HashedId8 -> (encoding, what it says), least recently used first
        self._certificates: OrderedDict[bytes, tuple[bytes, _Known]] = OrderedDict()
        self._by_value: dict[bytes, bytes] = {}  # SHA-256 of a decoded value -> HashedId8
        self._seen: OrderedDict[bytes, float] = OrderedDict()
        for encoded in authorities:
            self._anchors[hashed_id8(encoded)] = (encoded, self._anchor(encoded))

    # -- certificates ---------------------------------------------------------------

    @staticmethod
    def _known(tbs: dict[str, Any]) -> _Known:
        kind, key_value = tbs["verifyKeyIndicator"]
        if kind != "verificationKey":
            raise Refused("unsupported", "implicit certificates")
        try:
            key = VerificationKey.from_asn1(key_value)
        except ValueError as exc:
            raise Refused("unsupported", str(exc)) from None
        period = tbs["validityPeriod"]
        unit, count = period["duration"]
        start = unix_from_time32(period["start"])
        psids = frozenset(item["psid"] for item in tbs.get("appPermissions", []))
        return _Known(key, start, start + count * _DURATION_S[unit], psids)

    def _anchor(self, encoded: bytes) -> _Known:
        try:
            cert = decode_certificate(encoded)
        except EncodingError:
            raise ParameterError("authorities", hashed_id8(encoded).hex(),
                                 "encoded 1609.2 certificates") from None
        known = self._known(cert["toBeSigned"])
        message = signature_input(encode_tbs_certificate(cert["toBeSigned"]), b"")
        if "signature" not in cert or not known.key.verify(cert["signature"], message):
            raise ParameterError("authorities", hashed_id8(encoded).hex(),
                                 "self-signed authority certificates whose signature verifies")
        return known

    def _certificate(self, cert: dict[str, Any]) -> tuple[bytes, bytes, _Known]:
        # The cache is keyed by the decoded value: canonical OER maps one value to one
        # encoding, so an equal value is the same certificate, and a hit costs a repr and
        # a hash instead of re-encoding the certificate and checking its issuer signature.
        value_key = hashlib.sha256(repr(cert).encode()).digest()
        if self.use_certificate_cache:
            hit = self._by_value.get(value_key)
            if hit is not None and hit in self._certificates:
                self.cache_hits += 1
                self._certificates.move_to_end(hit)
                encoded, known = self._certificates[hit]
                return encoded, hit, known
        encoded = encode_certificate(cert)
        digest = hashed_id8(encoded)
        kind, issuer_digest = cert["issuer"]
        issuer = self._anchors.get(issuer_digest) if kind == "sha256AndDigest" else None
        if issuer is None:
            raise Refused("wrong_certificate", "issuer is not a trusted authority")
        issuer_encoded, issuer_known = issuer
        message = signature_input(encode_tbs_certificate(cert["toBeSigned"]), issuer_encoded)
        if "signature" not in cert or not issuer_known.key.verify(cert["signature"], message):
            raise Refused("wrong_certificate", "issuer signature does not verify")
        own = self._known(cert["toBeSigned"])
        # a ticket is only as valid as its issuer: its period is clipped to the issuer's
        known = _Known(own.key, max(own.start_unix_s, issuer_known.start_unix_s),
                       min(own.end_unix_s, issuer_known.end_unix_s), own.psids)
        self._certificates[digest] = (encoded, known)
        self._certificates.move_to_end(digest)
        self._by_value[value_key] = digest
        while len(self._certificates) > self.cache_certificates:
            self._certificates.popitem(last=False)
        if len(self._by_value) > 2 * self.cache_certificates:
            self._by_value = {k: d for k, d in self._by_value.items() if d in self._certificates}
        return encoded, digest, known

    # -- messages -------------------------------------------------------------------

    def verify(self, data: bytes, *, now_unix_s: float) -> Accepted:
        """The content of ``data`` if every check passes; :class:`Refused` otherwise."""
        try:
            accepted = self._verify(data, now_unix_s)
        except Refused as exc:
            self.counts[exc.reason] += 1
            raise
        self.counts["accepted"] += 1
        return accepted

    def _verify(self, data: bytes, now: float) -> Accepted:
        if len(data) > self.max_message_bytes:
            raise Refused("oversize", f"{len(data)} bytes > {self.max_message_bytes}")
        try:
            value = decode_data(data, check_canonical=False)
        except EncodingError as exc:
            raise Refused("malformed", str(exc)) from None
        kind, signed = value["content"]
        if kind != "signedData" or signed["hashId"] != "sha256":
            raise Refused("unsupported", f"content {kind}, not signedData with SHA-256")
        tbs = signed["tbsData"]
        inner = tbs["payload"].get("data")
        if inner is None or inner["content"][0] != "unsecuredData":
            raise Refused("unsupported", "payload other than unsecuredData")
        header = tbs["headerInfo"]
        signer_kind, signer = signed["signer"]
        if signer_kind == "certificate":
            if len(signer) != 1:
                raise Refused("unsupported", "certificate chains in the message")
            encoded, digest, known = self._certificate(signer[0])
        elif signer_kind == "digest":
            digest = signer
            cached = self._certificates.get(digest)
            if cached is None:
                raise Refused("unknown_signer", f"digest {digest.hex()} not seen")
            encoded, known = cached
        else:
            raise Refused("unsupported", f"signer {signer_kind}")
        if not known.start_unix_s <= now <= known.end_unix_s:
            raise Refused("expired_certificate", "outside the certificate's validity period")
        psid = header["psid"]
        if psid not in known.psids:
            raise Refused("not_permitted", f"psid {psid} not in the certificate")
        if "generationTime" not in header:
            raise Refused("replay_stale", "no generation time")
        generated = unix_from_time64(header["generationTime"])
        if abs(now - generated) > self.window_s:
            raise Refused("replay_stale", f"generated {now - generated:+.3f} s from now")
        tbs_encoded = encode_tbs_data(tbs)
        replay_key = hashlib.sha256(digest + tbs_encoded).digest()
        self._forget_before(now - self.window_s)
        if replay_key in self._seen:
            raise Refused("replay_duplicate", "same signer and content seen in the window")
        if not known.key.verify(signed["signature"], signature_input(tbs_encoded, encoded)):
            raise Refused("bad_signature", "signature does not verify")
        self._seen[replay_key] = generated
        return Accepted(psid, inner["content"][1], digest, generated)

    def _forget_before(self, oldest_unix_s: float) -> None:
        # Entries are kept in arrival order, which is close to generation order; an entry
        # older than the window can go because such a message is refused as stale anyway.
        while self._seen:
            _key, generated = next(iter(self._seen.items()))
            if generated >= oldest_unix_s:
                break
            self._seen.popitem(last=False)
