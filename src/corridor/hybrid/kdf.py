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

HMAC (RFC 2104) and HKDF (RFC 5869) are written here over hashlib's OpenSSL hash
objects: one CatKDF is then a handful of C hash calls, where pyca's ``HKDF`` object (and
``hmac.digest``, which makes OpenSSL 3.0 fetch the algorithm on every call) cost two to
three times as much (docs/benchmarks.md, "Hybrid combiners"). The ETSI vectors, RFC
5869's and a comparison with pyca's HKDF over random inputs (tests/hybrid/test_kdf.py)
hold them to the same bytes.

The KMAC flavours (KMAC128/256 via SSKDF) are not offered: pyca/cryptography has no
KMAC or cSHAKE, and we do not hand-write Keccak. See docs/hybrid.md.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

from corridor.errors import ParameterError

__all__ = ["HASHES", "caskdf_stage", "catkdf", "hkdf", "hmac_digest", "max_output_bytes"]

# hash name -> (hashlib constructor, digest size, block size), in bytes. The named
# constructors skip hashlib.new's lookup by name.
_HASHES: dict[str, tuple[Callable[..., Any], int, int]] = {
    "sha256": (hashlib.sha256, 32, 64),
    "sha384": (hashlib.sha384, 48, 128),
}
HASHES: tuple[str, ...] = tuple(_HASHES)

# ETSI's length prefixes are 32-bit: longer arguments cannot be encoded.
_MAX_ARGUMENT_BYTES = 2**32 - 1

# RFC 2104's inner and outer pads as translation tables: key.translate(_IPAD) is the
# key XOR 0x36 in every byte (what the standard library's own hmac fallback does).
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
# HKDF's block counters 1..255, each one byte.
_COUNTERS = tuple(bytes((i,)) for i in range(256))


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
    algorithm = _digest(hash)
    _check_length("length", length, hash)
    if not _all_plain_bytes(psk, k1, k2, ma, mb, info, label):
        _check_arguments(psk=psk, k1=k1, k2=k2, ma=ma, mb=mb, info=info, label=label)
    if not (psk or k1 or k2):
        raise ParameterError("psk + k1 + k2", "0 bytes",
                             "at least one non-empty secret")
    context = _length_prefixed_hash(algorithm[0], info, ma, mb)
    return _hkdf(algorithm, _label_keyed(hash, bytes(label)), b"".join((psk, k1, k2)),
                 context, length)


def caskdf_stage(*, previous_chain: bytes, k: bytes, ma: bytes, mb: bytes, info: bytes,
                 label: bytes, chain_length: int, length: int,
                 hash: str = "sha256") -> tuple[bytes, bytes]:
    """One CasKDF stage (ETSI TS 103 744, 8.3) with HMAC and HKDF.

    ``previous_chain`` is the chain secret the previous stage returned (empty for the
    first stage). Returns ``(next chain secret, key material)`` of ``chain_length`` and
    ``length`` bytes.
    """
    algorithm = _digest(hash)
    if isinstance(chain_length, bool) or not isinstance(chain_length, int) \
            or not 1 <= chain_length <= 255:
        # 255: the reference passes the previous chain's length to HMAC as a uint8_t.
        raise ParameterError("chain_length", chain_length, "an integer from 1 to 255")
    _check_length("length", length, hash)
    _check_length("chain_length + length", chain_length + length, hash)
    if not _all_plain_bytes(previous_chain, k, ma, mb, info, label):
        _check_arguments(previous_chain=previous_chain, k=k, ma=ma, mb=mb, info=info,
                         label=label)
    if len(previous_chain) > 255:
        raise ParameterError("previous_chain", f"{len(previous_chain)} bytes",
                             "at most 255 bytes (a chain secret of an earlier stage)")
    if not k:
        raise ParameterError("k", "0 bytes", "a non-empty shared secret")
    rsecret = _hmac(algorithm, bytes(previous_chain),
                    _length_prefixed_hash(algorithm[0], k, ma, mb))
    output = _hkdf(algorithm, _label_keyed(hash, bytes(label)), rsecret, bytes(info),
                   chain_length + length)
    return output[:chain_length], output[chain_length:]


def hmac_digest(key: bytes, message: bytes, hash: str = "sha256") -> bytes:
    """HMAC (RFC 2104) of ``message`` under ``key``: the same bytes as
    ``hmac.digest(key, message, hash)``, at a fraction of its cost per call."""
    return _hmac(_digest(hash), bytes(key), bytes(message))


def hkdf(*, ikm: bytes, salt: bytes, info: bytes, length: int,
         hash: str = "sha256") -> bytes:
    """HKDF (RFC 5869, extract then expand): ``length`` bytes, the same as pyca's
    ``HKDF(algorithm, length, salt, info).derive(ikm)``. An empty ``salt`` is RFC 5869's
    default salt (HMAC pads both to the same key)."""
    _check_length("length", length, hash)
    algorithm = _digest(hash)
    return _hkdf(algorithm, _keyed(algorithm, bytes(salt)), bytes(ikm), bytes(info), length)


def _digest(name: object) -> tuple[Callable[..., Any], int, int]:
    if not isinstance(name, str) or name not in _HASHES:
        raise ParameterError("hash", name, f"one of {', '.join(HASHES)}")
    return _HASHES[name]


def _keyed(algorithm: tuple[Callable[..., Any], int, int], key: bytes) -> tuple[Any, Any]:
    """HMAC's inner and outer hash states after the padded key (RFC 2104, steps 1-3)."""
    new, _, block_size = algorithm
    if len(key) > block_size:
        key = new(key).digest()
    key = key.ljust(block_size, b"\0")
    return new(key.translate(_IPAD)), new(key.translate(_OPAD))


def _hmac(algorithm: tuple[Callable[..., Any], int, int], key: bytes, message: bytes) -> bytes:
    inner, outer = _keyed(algorithm, key)
    inner.update(message)
    outer.update(inner.digest())
    return bytes(outer.digest())


def _hkdf(algorithm: tuple[Callable[..., Any], int, int], salt_keyed: tuple[Any, Any],
          ikm: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869: PRK = HMAC(salt, IKM); T(i) = HMAC(PRK, T(i-1) || info || i).
    ``salt_keyed`` is :func:`_keyed` of the salt (copied here, never changed)."""
    inner, outer = salt_keyed[0].copy(), salt_keyed[1].copy()
    inner.update(ikm)
    outer.update(inner.digest())
    inner, outer = _keyed(algorithm, outer.digest())  # keyed with PRK
    blocks: list[bytes] = []
    previous = b""
    last = -(-length // algorithm[1])
    for counter in range(1, last + 1):
        # Each block starts from the PRK-keyed states; the last one may use them up.
        block_inner = inner if counter == last else inner.copy()
        block_inner.update(previous + info + _COUNTERS[counter])
        block_outer = outer if counter == last else outer.copy()
        block_outer.update(block_inner.digest())
        previous = block_outer.digest()
        blocks.append(previous)
    return b"".join(blocks)[:length]


@functools.lru_cache(maxsize=32)
def _label_keyed(hash_name: str, label: bytes) -> tuple[Any, Any]:
    """:func:`_keyed` of a combiner's label (public, and the same on every call of an
    application): computed once per label. Callers copy the states, never update them."""
    return _keyed(_HASHES[hash_name], label)


def _check_length(field: str, value: object, hash_name: str) -> None:
    most = max_output_bytes(hash_name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ParameterError(field, value, f"an integer from 1 to {most} (HKDF-{hash_name} "
                             "gives at most 255 hash blocks)")


def _all_plain_bytes(*arguments: object) -> bool:
    """The common case, checked at little cost: all ``bytes``, none too long to encode."""
    total = 0
    for argument in arguments:
        if type(argument) is not bytes:
            return False
        total += len(argument)
    return total <= _MAX_ARGUMENT_BYTES


def _check_arguments(**arguments: bytes) -> None:
    # Only the type and the length are ever named: the values may be secrets.
    for field, value in arguments.items():
        if not isinstance(value, bytes | bytearray | memoryview):
            raise ParameterError(field, type(value).__name__, "bytes")
        if len(value) > _MAX_ARGUMENT_BYTES:
            raise ParameterError(field, f"{len(value)} bytes", "at most 2**32 - 1 bytes")


def _length_prefixed_hash(new: Callable[..., Any], *arguments: bytes) -> bytes:
    """H(len(a1) a1 len(a2) a2 ...), each length 4 bytes big-endian and BEFORE its
    argument, as qshkex.c's cahb_f writes it."""
    parts: list[bytes] = []
    for argument in arguments:
        parts += (len(argument).to_bytes(4, "big"), argument)
    return bytes(new(b"".join(parts)).digest())
