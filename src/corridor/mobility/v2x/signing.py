"""Signature schemes of Corridor's V2X messages: ECDSA P-256, ML-DSA-44 and the hybrid.

This module owns the keys and the arithmetic: a :class:`SigningKey` per scheme, the
1609.2 signature input, and the ``Signature`` / ``PublicVerificationKey`` values they
make. It knows nothing of messages or certificates (see :mod:`.certificates` and
:mod:`.messages`).

IEEE 1609.2 (5.3.1) signs ``Hash(Hash(data input) || Hash(signer identifier input))``
with SHA-256, where the data input is the OER of ``ToBeSignedData`` (or of
``ToBeSignedCertificate``) and the signer identifier input is the OER of the signer's
certificate (empty for a self-signed structure). ECDSA P-256 signs those 64 bytes with
SHA-256 as the standard does (``r`` carried ``x-only``); ML-DSA-44 (FIPS 204, pyca/
cryptography) signs the same 64 bytes. In the hybrid both sign them, with the ML-DSA-44
context string ``HYBRID_CONTEXT`` so that the post-quantum half of a hybrid signature
cannot be lifted out and presented as a plain ML-DSA-44 signature; both must verify.

FN-DSA (Falcon-512) is absent: no maintained PyPI package installs here (docs/v2x.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from corridor.errors import ParameterError

HYBRID_CONTEXT = b"corridor-1609.2-hybrid-ecdsa-p256"
PURE_CONTEXT = b""


class Scheme(StrEnum):
    """The signature schemes a V2X message or certificate can use."""

    ecdsa = "ecdsa-p256"
    ml_dsa_44 = "ml-dsa-44"
    hybrid = "hybrid"  # ECDSA P-256 + ML-DSA-44, both must verify


def parse_scheme(value: str, field: str = "scheme") -> Scheme:
    """``value`` as a :class:`Scheme`, or a :class:`ParameterError` naming the choices."""
    try:
        return Scheme(value)
    except ValueError:
        raise ParameterError(field, value, "one of " + ", ".join(s.value for s in Scheme)) \
            from None


def signature_input(data_input: bytes, signer_input: bytes) -> bytes:
    """``SHA-256(data input) || SHA-256(signer identifier input)`` (1609.2 5.3.1)."""
    return hashlib.sha256(data_input).digest() + hashlib.sha256(signer_input).digest()


def _point(public: ec.EllipticCurvePublicKey) -> tuple[str, bytes]:
    """The compressed ``EccP256CurvePoint`` of a P-256 public key."""
    numbers = public.public_numbers()
    x = numbers.x.to_bytes(32, "big")
    return ("compressed-y-1" if numbers.y & 1 else "compressed-y-0"), x


def _public_from_point(point: tuple[str, Any]) -> ec.EllipticCurvePublicKey:
    kind, value = point
    prefix = {"compressed-y-0": b"\x02", "compressed-y-1": b"\x03"}.get(kind)
    if prefix is not None:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), prefix + value)
    if kind == "uncompressedP256":
        return ec.EllipticCurvePublicKey.from_encoded_point(
            ec.SECP256R1(), b"\x04" + value["x"] + value["y"])
    raise ValueError(f"an ECDSA verification key cannot be {kind}")


def _ecdsa_sign(key: ec.EllipticCurvePrivateKey, message: bytes) -> dict[str, Any]:
    r, s = decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return {"rSig": ("x-only", r.to_bytes(32, "big")), "sSig": s.to_bytes(32, "big")}


def _ecdsa_verify(public: ec.EllipticCurvePublicKey, signature: dict[str, Any],
                  message: bytes) -> bool:
    kind, r_value = signature["rSig"]
    if kind != "x-only":  # the other forms carry R, which Corridor never sends
        return False
    der = encode_dss_signature(int.from_bytes(r_value, "big"),
                               int.from_bytes(signature["sSig"], "big"))
    try:
        public.verify(der, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _mldsa_verify(public: mldsa.MLDSA44PublicKey, signature: bytes, message: bytes,
                  context: bytes) -> bool:
    try:
        public.verify(signature, message, context or None)
    except InvalidSignature:
        return False
    return True


@dataclass(frozen=True)
class VerificationKey:
    """A public key of one scheme, as a certificate carries it."""

    scheme: Scheme
    ecdsa: ec.EllipticCurvePublicKey | None = None
    mldsa: mldsa.MLDSA44PublicKey | None = None

    def to_asn1(self) -> tuple[str, Any]:
        """The ``PublicVerificationKey`` value (the PQ ones are Corridor extensions)."""
        if self.scheme is Scheme.ecdsa:
            assert self.ecdsa is not None
            return "ecdsaNistP256", _point(self.ecdsa)
        assert self.mldsa is not None
        if self.scheme is Scheme.ml_dsa_44:
            return "mlDsa44", self.mldsa.public_bytes_raw()
        assert self.ecdsa is not None
        return "ecdsaNistP256WithMlDsa44", {"ecdsaNistP256": _point(self.ecdsa),
                                            "altVerificationKey": self.mldsa.public_bytes_raw()}

    @classmethod
    def from_asn1(cls, value: tuple[str, Any]) -> VerificationKey:
        """The key in a ``PublicVerificationKey``; ``ValueError`` for other kinds."""
        kind, content = value
        if kind == "ecdsaNistP256":
            return cls(Scheme.ecdsa, ecdsa=_public_from_point(content))
        if kind == "mlDsa44":
            return cls(Scheme.ml_dsa_44, mldsa=mldsa.MLDSA44PublicKey.from_public_bytes(content))
        if kind == "ecdsaNistP256WithMlDsa44":
            return cls(Scheme.hybrid, ecdsa=_public_from_point(content["ecdsaNistP256"]),
                       mldsa=mldsa.MLDSA44PublicKey.from_public_bytes(
                           content["altVerificationKey"]))
        raise ValueError(f"unsupported verification key {kind}")

    def verify(self, signature: tuple[str, Any], message: bytes) -> bool:
        """Whether ``signature`` (a ``Signature`` value) is valid for ``message`` under
        this key. The signature's kind must match the key's scheme; in the hybrid both
        halves must verify."""
        kind, value = signature
        if self.scheme is Scheme.ecdsa:
            assert self.ecdsa is not None
            return kind == "ecdsaNistP256Signature" and _ecdsa_verify(self.ecdsa, value, message)
        assert self.mldsa is not None
        if self.scheme is Scheme.ml_dsa_44:
            return kind == "mlDsa44Signature" and _mldsa_verify(self.mldsa, value, message,
                                                                PURE_CONTEXT)
        assert self.ecdsa is not None
        if kind != "ecdsaNistP256WithMlDsa44Signature":
            return False
        # Both halves are always checked, so the time taken does not say which one failed.
        classical = _ecdsa_verify(self.ecdsa, value["ecdsaNistP256Signature"], message)
        quantum = _mldsa_verify(self.mldsa, value["altSignatureValue"], message, HYBRID_CONTEXT)
        return classical and quantum


class SigningKey:
    """A private key of one scheme. Its ``repr`` never shows key material."""

    def __init__(self, scheme: Scheme, ecdsa_key: ec.EllipticCurvePrivateKey | None = None,
                 mldsa_key: mldsa.MLDSA44PrivateKey | None = None) -> None:
        self.scheme = scheme
        self._ecdsa = ecdsa_key
        self._mldsa = mldsa_key

    @classmethod
    def generate(cls, scheme: Scheme) -> SigningKey:
        """A fresh key pair from the OS CSPRNG (pyca/cryptography)."""
        ecdsa_key = ec.generate_private_key(ec.SECP256R1()) \
            if scheme in (Scheme.ecdsa, Scheme.hybrid) else None
        mldsa_key = mldsa.MLDSA44PrivateKey.generate() \
            if scheme in (Scheme.ml_dsa_44, Scheme.hybrid) else None
        return cls(scheme, ecdsa_key, mldsa_key)

    def __repr__(self) -> str:
        return f"SigningKey(scheme={self.scheme.value})"

    def public(self) -> VerificationKey:
        """The matching :class:`VerificationKey`."""
        return VerificationKey(self.scheme,
                               self._ecdsa.public_key() if self._ecdsa else None,
                               self._mldsa.public_key() if self._mldsa else None)

    def sign(self, message: bytes) -> tuple[str, Any]:
        """The ``Signature`` value over ``message`` (the 1609.2 signature input)."""
        if self.scheme is Scheme.ecdsa:
            assert self._ecdsa is not None
            return "ecdsaNistP256Signature", _ecdsa_sign(self._ecdsa, message)
        assert self._mldsa is not None
        if self.scheme is Scheme.ml_dsa_44:
            return "mlDsa44Signature", self._mldsa.sign(message)
        assert self._ecdsa is not None
        return "ecdsaNistP256WithMlDsa44Signature", {
            "ecdsaNistP256Signature": _ecdsa_sign(self._ecdsa, message),
            "altSignatureValue": self._mldsa.sign(message, HYBRID_CONTEXT)}
