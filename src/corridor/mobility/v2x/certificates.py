"""1609.2 explicit certificates for V2X signers: authorities, tickets, digests, time.

This module owns the certificate side of the envelope: an :class:`Authority` (a
self-signed authorization authority standing in for the ETSI TS 102 941 chain) issues
authorization tickets (:class:`Ticket`: certificate + signing key) whose
``appPermissions`` list the PSIDs they may sign; ``hashed_id8`` names a certificate the
way 1609.2 does (the low-order 8 bytes of its SHA-256); ``its_time32``/``its_time64``
convert Unix time to 1609.2 time (TAI since 2004-01-01, counting the 5 leap seconds
since then).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from corridor.mobility.v2x.encoding import encode_certificate, encode_tbs_certificate
from corridor.mobility.v2x.signing import Scheme, SigningKey, VerificationKey, signature_input

ITS_EPOCH_UNIX_S = 1072915200  # 2004-01-01T00:00:00Z
LEAP_SECONDS_SINCE_2004 = 5  # 2005, 2008, 2012, 2015, 2016
PSID_CAM = 36
PSID_DENM = 37
PSID_SPAT = 137  # ETSI ITS-AID for TLM (SPATEM)
PSID_MAP = 138
PSID_SREM = 140  # signal request (emergency-vehicle priority)
PSID_IVIM = 139  # infrastructure-to-vehicle information (lane closure)
DEFAULT_VALIDITY_HOURS = 168  # one week, as ETSI authorization tickets commonly run


def its_time32(unix_s: float) -> int:
    """1609.2 ``Time32``: whole TAI seconds since 2004-01-01."""
    return int(unix_s) - ITS_EPOCH_UNIX_S + LEAP_SECONDS_SINCE_2004


def its_time64(unix_s: float) -> int:
    """1609.2 ``Time64``: TAI microseconds since 2004-01-01."""
    return round((unix_s - ITS_EPOCH_UNIX_S + LEAP_SECONDS_SINCE_2004) * 1_000_000)


def unix_from_time64(time64_us: int) -> float:
    """The Unix time of a 1609.2 ``Time64``."""
    return time64_us / 1_000_000 + ITS_EPOCH_UNIX_S - LEAP_SECONDS_SINCE_2004


def unix_from_time32(time32_s: int) -> float:
    """The Unix time of a 1609.2 ``Time32``."""
    return float(time32_s + ITS_EPOCH_UNIX_S - LEAP_SECONDS_SINCE_2004)


def hashed_id8(encoded: bytes) -> bytes:
    """1609.2 ``HashedId8``: the low-order (last) 8 bytes of SHA-256 of the encoding."""
    return hashlib.sha256(encoded).digest()[-8:]


def _tbs(name: str | None, key: VerificationKey, psids: tuple[int, ...], start_unix_s: float,
         validity_hours: int) -> dict[str, Any]:
    tbs: dict[str, Any] = {
        "id": ("name", name) if name is not None else ("none", 0),
        "cracaId": b"\x00\x00\x00",
        "crlSeries": 0,
        "validityPeriod": {"start": its_time32(start_unix_s),
                           "duration": ("hours", validity_hours)},
        "assuranceLevel": b"\xe0",
        "verifyKeyIndicator": ("verificationKey", key.to_asn1()),
    }
    if psids:
        tbs["appPermissions"] = [{"psid": psid, "ssp": ("opaque", b"\x01")} for psid in psids]
    return tbs


@dataclass(frozen=True)
class Ticket:
    """An authorization ticket: the encoded certificate, its value, its digest and the
    signing key that goes with it (the key stays out of ``repr``)."""

    encoded: bytes
    value: dict[str, Any]
    key: SigningKey
    digest: bytes

    def __repr__(self) -> str:
        return f"Ticket(digest={self.digest.hex()}, scheme={self.key.scheme.value})"


class Authority:
    """A self-signed authorization authority (AA) that issues tickets of one scheme."""

    def __init__(self, scheme: Scheme, *, name: str = "corridor-aa", start_unix_s: float,
                 validity_hours: int = 24 * 365) -> None:
        self.key = SigningKey.generate(scheme)
        tbs = _tbs(name, self.key.public(), (), start_unix_s, validity_hours)
        self.certificate = self._sign({"version": 3, "type": "explicit",
                                       "issuer": ("self", "sha256"), "toBeSigned": tbs},
                                      issuer_encoded=b"")
        self.encoded = encode_certificate(self.certificate)
        self.digest = hashed_id8(self.encoded)

    def __repr__(self) -> str:
        return f"Authority(digest={self.digest.hex()}, scheme={self.key.scheme.value})"

    def _sign(self, cert: dict[str, Any], issuer_encoded: bytes) -> dict[str, Any]:
        message = signature_input(encode_tbs_certificate(cert["toBeSigned"]), issuer_encoded)
        return {**cert, "signature": self.key.sign(message)}

    def issue(self, scheme: Scheme, *, psids: tuple[int, ...], start_unix_s: float,
              validity_hours: int = DEFAULT_VALIDITY_HOURS,
              key: SigningKey | None = None) -> Ticket:
        """A ticket with a fresh key of ``scheme`` (or ``key``) for ``psids``."""
        key = key or SigningKey.generate(scheme)
        cert = self._sign({"version": 3, "type": "explicit",
                           "issuer": ("sha256AndDigest", self.digest),
                           "toBeSigned": _tbs(None, key.public(), psids, start_unix_s,
                                              validity_hours)},
                          issuer_encoded=self.encoded)
        encoded = encode_certificate(cert)
        return Ticket(encoded, cert, key, hashed_id8(encoded))
