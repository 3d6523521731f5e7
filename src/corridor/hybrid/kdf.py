"""ETSI TS 103 744 hybrid key derivation: CatKDF and CasKDF with HKDF-SHA256/384.

This module owns the two combiners of ETSI TS 103 744 (sections 8.2 and 8.3) in their
HKDF flavour, byte for byte as the TS's informative reference implementation
(etsi-forge/cyber.103744_QHKEX, ``qshkex.c``) computes them. That code writes each
argument's 4-byte big-endian length BEFORE the argument (its comments say
"arg || length"); we follow the code, and ``tests/hybrid/data/etsi103744_vectors.json``
was produced by running it.

- CatKDF: ``context = H(len(info) info len(MA) MA len(MB) MB)``;
  ``key = HKDF(IKM = psk || k1 || k2, salt = label, info = context)``.
- CasKDF stage i: ``rsecret = HMAC(previous_chain, H(len(k) k len(MA) MA len(MB) MB))``;
  ``HKDF(IKM = rsecret, salt = label, info = info)`` gives ``chain_length`` bytes of
  next chain secret followed by ``length`` bytes of key material.

The KMAC flavours (KMAC128/256 via SSKDF) are not offered: pyca/cryptography has no
KMAC or cSHAKE, and we do not hand-write Keccak. See docs/hybrid.md.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.errors import ParameterError

__all__ = ["HASHES", "caskdf_stage", "catkdf", "max_output_bytes"]

# hash name -> (pyca algorithm class, digest size in bytes)
_HASHES: dict[str, tuple[type[hashes.HashAlgorithm], int]] = {
    "sha256": (hashes.SHA256, 32),
    "sha384": (hashes.SHA384, 48),
}
HASHES: tuple[str, ...] = tuple(_HASHES)
# hashlib's named constructors skip hashlib.new's lookup by name.
_HASH_CONSTRUCTORS = {"sha256": hashlib.sha256, "sha384": hashlib.sha384}

# ETSI's length prefixes are 32-bit: longer arguments cannot be encoded.
_MAX_ARGUMENT_BYTES = 2**32 - 1


def max_output_bytes(hash: str = "sha256") -> int:
    """The most bytes HKDF can give with ``hash`` (255 blocks, RFC 5869)."""
    return 255 * _digest(hash)[1]


def catkdf(*, psk: bytes, k1: bytes, k2: bytes, ma: bytes, mb: bytes, info: bytes,
           label: bytes, length: int, hash: str = "sha256") -> bytes:
    """CatKDF (ETSI TS 103 744, 8.2) with HKDF: ``length`` bytes of key material.

    ``psk`` is the pre-shared key (Corridor puts the QKD key there), ``k1`` and ``k2``
    the two shared secrets (for example ML-KEM's and X25519's), ``ma``/``mb`` the
    messages each party sent (public keys, ciphertexts), ``info`` and ``label`` the
    application's context and its salt. Any of ``psk``, ``k1``, ``k2`` may be empty (an
    input a policy let a session go without, or X-Wing's single secret in ``k1``), but
    not all three: a key derived from public values alone is refused.
    """
    algorithm, _ = _digest(hash)
    _check_length("length", length, hash)
    _check_arguments(psk=psk, k1=k1, k2=k2, ma=ma, mb=mb, info=info, label=label)
    if not (psk or k1 or k2):
        raise ParameterError("psk + k1 + k2", "0 bytes",
                             "at least one non-empty secret")
    context = _length_prefixed_hash(hash, info, ma, mb)
    return HKDF(algorithm(), length, bytes(label), context).derive(b"".join((psk, k1, k2)))


def caskdf_stage(*, previous_chain: bytes, k: bytes, ma: bytes, mb: bytes, info: bytes,
                 label: bytes, chain_length: int, length: int,
                 hash: str = "sha256") -> tuple[bytes, bytes]:
    """One CasKDF stage (ETSI TS 103 744, 8.3) with HMAC and HKDF.

    ``previous_chain`` is the chain secret the previous stage returned (empty for the
    first stage). Returns ``(next chain secret, key material)`` of ``chain_length`` and
    ``length`` bytes.
    """
    algorithm, _ = _digest(hash)
    if isinstance(chain_length, bool) or not isinstance(chain_length, int) \
            or not 1 <= chain_length <= 255:
        # 255: the reference passes the previous chain's length to HMAC as a uint8_t.
        raise ParameterError("chain_length", chain_length, "an integer from 1 to 255")
    _check_length("length", length, hash)
    _check_length("chain_length + length", chain_length + length, hash)
    _check_arguments(previous_chain=previous_chain, k=k, ma=ma, mb=mb, info=info,
                     label=label)
    if len(previous_chain) > 255:
        raise ParameterError("previous_chain", f"{len(previous_chain)} bytes",
                             "at most 255 bytes (a chain secret of an earlier stage)")
    if not k:
        raise ParameterError("k", "0 bytes", "a non-empty shared secret")
    rsecret = hmac.digest(bytes(previous_chain), _length_prefixed_hash(hash, k, ma, mb),
                          hash)
    output = HKDF(algorithm(), chain_length + length, bytes(label), bytes(info)).derive(rsecret)
    return output[:chain_length], output[chain_length:]


def _digest(name: object) -> tuple[type[hashes.HashAlgorithm], int]:
    if not isinstance(name, str) or name not in _HASHES:
        raise ParameterError("hash", name, f"one of {', '.join(HASHES)}")
    return _HASHES[name]


def _check_length(field: str, value: object, hash_name: str) -> None:
    most = max_output_bytes(hash_name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ParameterError(field, value, f"an integer from 1 to {most} (HKDF-{hash_name} "
                             "gives at most 255 hash blocks)")


def _check_arguments(**arguments: bytes) -> None:
    # Only the type and the length are ever named: the values may be secrets.
    for field, value in arguments.items():
        if type(value) is bytes and len(value) <= _MAX_ARGUMENT_BYTES:
            continue  # the common case, without the isinstance chain (on every handshake)
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ParameterError(field, type(value).__name__, "bytes")
        if len(value) > _MAX_ARGUMENT_BYTES:
            raise ParameterError(field, f"{len(value)} bytes", "at most 2**32 - 1 bytes")


def _length_prefixed_hash(hash_name: str, *arguments: bytes) -> bytes:
    """H(len(a1) a1 len(a2) a2 ...), each length 4 bytes big-endian and BEFORE its
    argument, as qshkex.c's cahb_f writes it."""
    digest = _HASH_CONSTRUCTORS[hash_name]()
    for argument in arguments:
        digest.update(len(argument).to_bytes(4, "big"))
        digest.update(argument)
    return digest.digest()
