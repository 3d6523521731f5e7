"""The key-exchange suites a hybrid session can run, as data plus three operations.

A suite says what the initiator's hello carries (``pk1``, ``pk2``), what the responder's
reply carries (``ct1``, ``ct2``) with their exact lengths, and the post-quantum
shared secret it yields (CatKDF's ``k1``, corridor.hybrid.session):

=====================  =======================  ========================  =================
suite                  hello (pk1, pk2)         reply (ct1, ct2)          PQC secret
=====================  =======================  ========================  =================
``xwing``              X-Wing pk (1216), -      X-Wing ct (1120), -       X-Wing ss (32)
``mlkem768-x25519``    ML-KEM-768 pk (1184),    ML-KEM-768 ct (1088),     ML-KEM ss ||
                       X25519 pk (32)           X25519 ephemeral pk (32)  X25519 ss (64)
``none``               -, -                     -, -                      none
=====================  =======================  ========================  =================

``none`` is a session without post-quantum key exchange (QKD key only): only a policy
that allows proceeding without PQC (``qkd-required``, ``any``) accepts it, and the
decision is recorded like any other fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

import corridor.hybrid.xwing as xwing
from corridor.errors import ParameterError
from corridor.randomness import RandomSource

SUITE_XWING = "xwing"
SUITE_MLKEM_X25519 = "mlkem768-x25519"
SUITE_NONE = "none"

MLKEM768_PUBLIC_KEY_BYTES = 1184
MLKEM768_CIPHERTEXT_BYTES = 1088
X25519_KEY_BYTES = 32
MLKEM768_SEED_BYTES = 64  # d || z (FIPS 203 ML-KEM.KeyGen_internal)


@dataclass(frozen=True)
class KemSuite:
    """One suite: its name, the lengths of what it sends, and its three operations."""

    name: str
    public_key_bytes: tuple[int, int]
    ciphertext_bytes: tuple[int, int]
    _keygen: Callable[[RandomSource], tuple[Any, bytes, bytes]]
    _encapsulate: Callable[[bytes, bytes, RandomSource], tuple[bytes, bytes, bytes]]
    _decapsulate: Callable[[Any, bytes, bytes], bytes]

    @property
    def post_quantum(self) -> bool:
        """Whether this suite runs a post-quantum KEM at all."""
        return self.name != SUITE_NONE

    def keygen(self, rng: RandomSource) -> tuple[Any, bytes, bytes]:
        """A fresh ephemeral key pair ``(private, pk1, pk2)`` from ``rng``'s seeds."""
        return self._keygen(rng)

    def encapsulate(self, pk1: bytes, pk2: bytes, rng: RandomSource
                    ) -> tuple[bytes, bytes, bytes]:
        """``(secret, ct1, ct2)`` for the initiator's public keys; the X25519 ephemeral
        secret comes from ``rng``, ML-KEM's encapsulation randomness from OpenSSL (pyca
        takes none from the caller)."""
        return self._encapsulate(pk1, pk2, rng)

    def decapsulate(self, private: Any, ct1: bytes, ct2: bytes) -> bytes:
        """The shared secret from the responder's ciphertexts."""
        return self._decapsulate(private, ct1, ct2)

    def __repr__(self) -> str:
        return f"KemSuite({self.name!r})"


def _xwing_keygen(rng: RandomSource) -> tuple[Any, bytes, bytes]:
    # Expanded once: the same key decapsulates the reply (expanding costs ~ a decaps).
    secret = xwing.ExpandedSecretKey(rng.bytes(xwing.SEED_BYTES))
    return secret, secret.public_key, b""


def _xwing_encapsulate(pk1: bytes, pk2: bytes, rng: RandomSource
                       ) -> tuple[bytes, bytes, bytes]:
    ss, ct = xwing.encapsulate(pk1, rng.bytes(xwing.ESEED_BYTES))
    return ss, ct, b""


def _xwing_decapsulate(private: Any, ct1: bytes, ct2: bytes) -> bytes:
    return xwing.decapsulate(private, ct1)


def _separate_keygen(rng: RandomSource) -> tuple[Any, bytes, bytes]:
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(rng.bytes(MLKEM768_SEED_BYTES))
    dh = x25519.X25519PrivateKey.from_private_bytes(rng.bytes(X25519_KEY_BYTES))
    return ((kem, dh), kem.public_key().public_bytes_raw(),
            dh.public_key().public_bytes_raw())


def _separate_encapsulate(pk1: bytes, pk2: bytes, rng: RandomSource
                          ) -> tuple[bytes, bytes, bytes]:
    ss_kem, ct_kem = mlkem.MLKEM768PublicKey.from_public_bytes(pk1).encapsulate()
    ephemeral = x25519.X25519PrivateKey.from_private_bytes(rng.bytes(X25519_KEY_BYTES))
    ss_dh = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(pk2))
    # Fixed lengths (32 + 32), ML-KEM first: the order of TLS's X25519MLKEM768.
    return ss_kem + ss_dh, ct_kem, ephemeral.public_key().public_bytes_raw()


def _separate_decapsulate(private: Any, ct1: bytes, ct2: bytes) -> bytes:
    kem, dh = private
    return kem.decapsulate(ct1) + dh.exchange(x25519.X25519PublicKey.from_public_bytes(ct2))


def _none_keygen(rng: RandomSource) -> tuple[Any, bytes, bytes]:
    return None, b"", b""


def _none_encapsulate(pk1: bytes, pk2: bytes, rng: RandomSource
                      ) -> tuple[bytes, bytes, bytes]:
    return b"", b"", b""


def _none_decapsulate(private: Any, ct1: bytes, ct2: bytes) -> bytes:
    return b""


SUITES: dict[str, KemSuite] = {
    SUITE_XWING: KemSuite(SUITE_XWING, (xwing.PUBLIC_KEY_BYTES, 0), (xwing.CIPHERTEXT_BYTES, 0),
                          _xwing_keygen, _xwing_encapsulate, _xwing_decapsulate),
    SUITE_MLKEM_X25519: KemSuite(
        SUITE_MLKEM_X25519, (MLKEM768_PUBLIC_KEY_BYTES, X25519_KEY_BYTES),
        (MLKEM768_CIPHERTEXT_BYTES, X25519_KEY_BYTES),
        _separate_keygen, _separate_encapsulate, _separate_decapsulate),
    SUITE_NONE: KemSuite(SUITE_NONE, (0, 0), (0, 0), _none_keygen, _none_encapsulate,
                         _none_decapsulate),
}


def parse_suite(value: Any, field: str = "suite") -> KemSuite:
    """The suite named ``value``; :class:`ParameterError` naming ``field`` otherwise."""
    if isinstance(value, KemSuite):
        return value
    suite = SUITES.get(value) if isinstance(value, str) else None
    if suite is None:
        raise ParameterError(field, value, f"one of {', '.join(SUITES)}")
    return suite


def pqc_unavailable_reason(suite: KemSuite) -> str | None:
    """Why ``suite`` cannot provide post-quantum key exchange here, or None if it can:
    ``pqc_disabled`` for ``none``, ``mlkem_unsupported`` when the cryptography backend
    has no ML-KEM (an OpenSSL without it)."""
    if not suite.post_quantum:
        return "pqc_disabled"
    try:
        mlkem.MLKEM768PrivateKey.generate()
    except UnsupportedAlgorithm:
        return "mlkem_unsupported"
    return None


__all__ = ["SUITES", "SUITE_MLKEM_X25519", "SUITE_NONE", "SUITE_XWING", "KemSuite",
           "parse_suite", "pqc_unavailable_reason"]
