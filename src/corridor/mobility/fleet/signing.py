"""Hybrid signatures of fleet commands and acknowledgements: ML-DSA-44 and Ed25519, both.

This module owns signing and verifying. A signer holds an ML-DSA-44 key (FIPS 204, pyca
``cryptography``) and an Ed25519 key; a signature is the pair, and a verifier accepts only
when *both* verify, so a forger must break both schemes (the post-quantum one protects
against a future quantum adversary, the classical one against a flaw in the young one).

Domain separation: ML-DSA-44 signs the body with a FIPS 204 context string
(``corridor-fleet-command-v1`` or ``corridor-fleet-ack-v1``); Ed25519, which has no
context, signs ``context || 0x00 || body``. A command signature therefore never verifies
as an acknowledgement, nor the reverse. A failure names which scheme failed, never the
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa

from corridor.mobility.fleet.errors import BAD_SIGNATURE, FleetRefusal
from corridor.mobility.fleet.wire import Signed

CONTEXT_COMMAND = b"corridor-fleet-command-v1"
CONTEXT_ACK = b"corridor-fleet-ack-v1"
SEED_BYTES = 32
MLDSA44_PUBLIC_BYTES = 1312
ED25519_PUBLIC_BYTES = 32


def _ed_message(context: bytes, body: bytes) -> bytes:
    return context + b"\x00" + body


@dataclass(frozen=True)
class VerifyKey:
    """The public half: ML-DSA-44 and Ed25519 public keys (raw bytes)."""

    mldsa_public: bytes
    ed25519_public: bytes

    def __post_init__(self) -> None:
        # Parse once: a malformed key is found when it is loaded, not at first use.
        object.__setattr__(self, "_mldsa", mldsa.MLDSA44PublicKey.from_public_bytes(
            self.mldsa_public))
        object.__setattr__(self, "_ed", ed25519.Ed25519PublicKey.from_public_bytes(
            self.ed25519_public))

    def verify(self, signed: Signed, context: bytes, who: str) -> None:
        """Both signatures over ``signed.body``, or :class:`FleetRefusal` (bad_signature)."""
        failed = []
        try:
            self._mldsa.verify(signed.mldsa_signature, signed.body, context)  # type: ignore[attr-defined]
        except InvalidSignature:
            failed.append("ML-DSA-44")
        try:
            self._ed.verify(signed.ed25519_signature,  # type: ignore[attr-defined]
                            _ed_message(context, signed.body))
        except InvalidSignature:
            failed.append("Ed25519")
        if failed:
            raise FleetRefusal(BAD_SIGNATURE, f"{' and '.join(failed)} signature of {who} "
                               "does not verify (both must)")

    def as_dict(self) -> dict[str, str]:
        return {"mldsa44": self.mldsa_public.hex(), "ed25519": self.ed25519_public.hex()}


class SigningKey:
    """The private half, made from two 32-byte seeds; ``repr`` shows nothing secret."""

    def __init__(self, mldsa_seed: bytes, ed25519_seed: bytes) -> None:
        if len(mldsa_seed) != SEED_BYTES or len(ed25519_seed) != SEED_BYTES:
            raise ValueError("signing seeds must be 32 bytes each")
        self._mldsa = mldsa.MLDSA44PrivateKey.from_seed_bytes(mldsa_seed)
        self._ed = ed25519.Ed25519PrivateKey.from_private_bytes(ed25519_seed)
        self.verify_key = VerifyKey(self._mldsa.public_key().public_bytes_raw(),
                                    self._ed.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> SigningKey:
        import os

        return cls(os.urandom(SEED_BYTES), os.urandom(SEED_BYTES))

    def seeds(self) -> tuple[bytes, bytes]:
        """The two seeds (for the owner's key file only)."""
        from cryptography.hazmat.primitives import serialization

        ed = self._ed.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
        return self._mldsa.private_bytes_raw(), ed

    def sign(self, body: bytes, context: bytes) -> Signed:
        return Signed(body, self._mldsa.sign(body, context),
                      self._ed.sign(_ed_message(context, body)))

    def __repr__(self) -> str:
        return "SigningKey(ML-DSA-44 + Ed25519, not shown)"


__all__ = ["CONTEXT_ACK", "CONTEXT_COMMAND", "SigningKey", "VerifyKey"]
