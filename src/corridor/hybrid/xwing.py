"""X-Wing: the hybrid KEM of ML-KEM-768 and X25519 (draft-connolly-cfrg-xwing-kem).

This module owns X-Wing key generation, encapsulation and decapsulation in the
draft's version whose secret key is the 32-byte seed (the version of
``tests/hybrid/data/xwing-draft-connolly-cfrg-xwing-kem.json``):

- ``expanded = SHAKE256(sk, 96)``; ML-KEM-768 key pair from ``d || z = expanded[0:64]``;
  X25519 secret ``expanded[64:96]``; ``pk = pk_M (1184) || pk_X (32)``.
- ``ct = ct_M (1088) || ct_X (32)``.
- ``ss = SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)``, the 6-byte label
  ``\\.//^\\`` LAST.

ML-KEM and X25519 come from pyca/cryptography. pyca derives an ML-KEM key from its
seed but does not expose FIPS 203's derandomised encapsulation (``m`` chosen by the
caller): :func:`encapsulate` with ``eseed`` therefore fixes the X25519 half
(``eseed[32:64]``) while ML-KEM always draws ``m`` from OpenSSL's random generator.
:func:`encapsulate_derand` takes the missing piece from its caller; the tests plug in
their own FIPS 203 reference to reproduce the draft's vectors (docs/hybrid.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from corridor.errors import ParameterError

__all__ = [
    "CIPHERTEXT_BYTES",
    "ESEED_BYTES",
    "PUBLIC_KEY_BYTES",
    "SECRET_KEY_BYTES",
    "SEED_BYTES",
    "SHARED_SECRET_BYTES",
    "ExpandedSecretKey",
    "decapsulate",
    "encapsulate",
    "encapsulate_derand",
    "generate_keypair",
]

SEED_BYTES = 32
SECRET_KEY_BYTES = 32  # the secret key is the seed itself
ESEED_BYTES = 64  # ML-KEM's m (32) || X25519 ephemeral secret (32)
MLKEM_PUBLIC_KEY_BYTES = 1184
MLKEM_CIPHERTEXT_BYTES = 1088
X25519_BYTES = 32
PUBLIC_KEY_BYTES = MLKEM_PUBLIC_KEY_BYTES + X25519_BYTES  # 1216
CIPHERTEXT_BYTES = MLKEM_CIPHERTEXT_BYTES + X25519_BYTES  # 1120
SHARED_SECRET_BYTES = 32

XWING_LABEL = b"\\.//^\\"  # 5c 2e 2f 2f 5e 5c

# (pk_M, m) -> (ss_M, ct_M): ML-KEM-768.Encaps_internal of FIPS 203 (algorithm 17).
MLKEMEncapsDerand = Callable[[bytes, bytes], tuple[bytes, bytes]]


def generate_keypair(seed: bytes) -> tuple[bytes, bytes]:
    """``(sk, pk)`` from a 32-byte seed: ``sk`` is the seed, ``pk`` 1216 bytes."""
    _check_bytes("seed", seed, SEED_BYTES)
    sk = bytes(seed)
    return sk, ExpandedSecretKey(sk).public_key


def encapsulate(pk: bytes, eseed: bytes | None = None) -> tuple[bytes, bytes]:
    """``(ss, ct)`` for the public key ``pk``: 32 and 1120 bytes.

    ``eseed`` (64 bytes) fixes the X25519 ephemeral secret (``eseed[32:64]``); ML-KEM's
    ``m`` (``eseed[0:32]``) cannot be handed to pyca, so the ML-KEM half is always
    fresh (see the module docstring). ``None`` draws everything from the OS.
    """
    if eseed is None:
        ephemeral_x = os.urandom(X25519_BYTES)
    else:
        _check_bytes("eseed", eseed, ESEED_BYTES)
        ephemeral_x = bytes(eseed[32:])
    pk_m, pk_x = _split_public_key(pk)
    mlkem_public = _mlkem_public_key(pk_m)
    ss_m, ct_m = mlkem_public.encapsulate()
    return _finish_encapsulation(ss_m, ct_m, pk_x, ephemeral_x)


def encapsulate_derand(pk: bytes, eseed: bytes,
                       mlkem_encaps_derand: MLKEMEncapsDerand) -> tuple[bytes, bytes]:
    """The draft's deterministic ``EncapsulateDerand``: ``(ss, ct)`` fixed by ``eseed``.

    ``mlkem_encaps_derand(pk_M, m)`` must be ML-KEM-768.Encaps_internal (FIPS 203,
    algorithm 17); pyca has none, so the caller brings it (the tests' reference).
    """
    _check_bytes("eseed", eseed, ESEED_BYTES)
    pk_m, pk_x = _split_public_key(pk)
    _mlkem_public_key(pk_m)  # the same modulus check as encapsulate
    ss_m, ct_m = mlkem_encaps_derand(pk_m, bytes(eseed[:32]))
    if len(ss_m) != 32 or len(ct_m) != MLKEM_CIPHERTEXT_BYTES:
        raise ParameterError("mlkem_encaps_derand", f"{len(ss_m)}/{len(ct_m)} bytes",
                             f"a 32-byte secret and a {MLKEM_CIPHERTEXT_BYTES}-byte ciphertext")
    return _finish_encapsulation(ss_m, ct_m, pk_x, bytes(eseed[32:]))


class ExpandedSecretKey:
    """An X-Wing secret key expanded once (its ML-KEM and X25519 keys), for a party that
    decapsulates with the key it just generated: expanding costs about as much as
    decapsulating. The repr names the type only."""

    __slots__ = ("_mlkem", "_pk_x", "_x25519")

    def __init__(self, sk: bytes) -> None:
        _check_bytes("sk", sk, SECRET_KEY_BYTES)
        self._mlkem, self._x25519, self._pk_x = _expand(bytes(sk))

    @property
    def public_key(self) -> bytes:
        """The 1216-byte X-Wing public key of this secret key."""
        return self._mlkem.public_key().public_bytes_raw() + self._pk_x

    def __repr__(self) -> str:
        return "ExpandedSecretKey(<secret>)"


def decapsulate(sk: bytes | ExpandedSecretKey, ct: bytes) -> bytes:
    """The 32-byte shared secret from the secret key ``sk`` (the 32-byte seed, or an
    :class:`ExpandedSecretKey` of it) and the ciphertext ``ct``.

    A tampered ML-KEM part gives a different, pseudorandom secret (FIPS 203 implicit
    rejection), never an exception; only wrong lengths and an X25519 part that is a
    low-order point (public information, independent of ``sk``) raise ParameterError.
    """
    expanded = sk if isinstance(sk, ExpandedSecretKey) else ExpandedSecretKey(sk)
    _check_bytes("ct", ct, CIPHERTEXT_BYTES)
    ct = bytes(ct)
    mlkem_key, x_key, pk_x = expanded._mlkem, expanded._x25519, expanded._pk_x
    ss_m = mlkem_key.decapsulate(ct[:MLKEM_CIPHERTEXT_BYTES])
    ct_x = ct[MLKEM_CIPHERTEXT_BYTES:]
    ss_x = _exchange(x_key, ct_x, "ct")
    return _combine(ss_m, ss_x, ct_x, pk_x)


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    # The label goes LAST (draft section "Combiner"): putting it first gives other keys.
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + XWING_LABEL).digest()


def _expand(sk: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey, bytes]:
    expanded = hashlib.shake_256(sk).digest(96)
    mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
    x_key = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    return mlkem_key, x_key, x_key.public_key().public_bytes_raw()


def _finish_encapsulation(ss_m: bytes, ct_m: bytes, pk_x: bytes,
                          ephemeral_x: bytes) -> tuple[bytes, bytes]:
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(ephemeral_x)
    ct_x = ephemeral.public_key().public_bytes_raw()
    ss_x = _exchange(ephemeral, pk_x, "pk")
    return _combine(ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def _split_public_key(pk: bytes) -> tuple[bytes, bytes]:
    _check_bytes("pk", pk, PUBLIC_KEY_BYTES)
    pk = bytes(pk)
    return pk[:MLKEM_PUBLIC_KEY_BYTES], pk[MLKEM_PUBLIC_KEY_BYTES:]


def _mlkem_public_key(pk_m: bytes) -> mlkem.MLKEM768PublicKey:
    try:
        return mlkem.MLKEM768PublicKey.from_public_bytes(pk_m)
    except ValueError:
        raise ParameterError("pk", f"{PUBLIC_KEY_BYTES} bytes",
                             "an X-Wing public key whose ML-KEM-768 part passes the "
                             "FIPS 203 modulus check") from None


def _exchange(own: x25519.X25519PrivateKey, peer: bytes, field: str) -> bytes:
    try:
        return own.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # pyca refuses an all-zero result: the peer's X25519 part is a low-order point.
        raise ParameterError(field, f"{len(peer)}-byte X25519 part",
                             "a point outside X25519's small subgroup (the shared "
                             "value came out all zero)") from None


def _check_bytes(field: str, value: object, size: int) -> None:
    # Only the type and the length are named: the value may be a secret.
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ParameterError(field, type(value).__name__, f"{size} bytes")
    if len(value) != size:
        raise ParameterError(field, f"{len(value)} bytes", f"exactly {size} bytes")
