"""Key derivation shared by the tunnel exports: HKDF-SHA256 with a length-prefixed context.

Every exported key (MACsec CAK and SAK, WireGuard PSK) is HKDF-SHA256 (RFC 5869, from
pyca/cryptography) over the QKD key, with an ``info`` that binds, in a fixed order and
each preceded by its 4-byte big-endian length, a label naming the use, the QKD
``key_ID`` and the generation (the rotation counter). Length prefixes make the encoding
injective: no two different tuples of parts give the same ``info``, so keys for
different uses, key IDs or generations are independent outputs of the KDF.
"""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.errors import ParameterError

MAX_GENERATION = 2**32 - 1


def encode_parts(*parts: bytes) -> bytes:
    """``len(p) || p`` for each part, lengths as 4-byte big-endian integers."""
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def check_key_id(key_id: str, field: str = "key_id") -> uuid.UUID:
    """The UUID of an ETSI GS QKD 014 ``key_ID``; :class:`ParameterError` otherwise."""
    try:
        return uuid.UUID(key_id)
    except (ValueError, TypeError, AttributeError):
        raise ParameterError(field, key_id, "an ETSI 014 key_ID (a UUID)") from None


def check_generation(generation: int, field: str = "generation") -> int:
    """``generation`` if it is an integer in 0..2**32-1."""
    if isinstance(generation, bool) or not isinstance(generation, int) \
            or not 0 <= generation <= MAX_GENERATION:
        raise ParameterError(field, generation, f"an integer from 0 to {MAX_GENERATION}")
    return generation


def hkdf_sha256(ikm: bytes, *, label: bytes, key_id: str | None, generation: int,
                extra: tuple[bytes, ...] = (), length: int) -> bytes:
    """HKDF-SHA256(ikm, salt = none, info = encode_parts(label, key_id, generation, *extra)).

    ``key_id`` is the canonical lower-case UUID text, or empty when no QKD key is used.
    """
    key_id_text = str(check_key_id(key_id)).encode() if key_id is not None else b""
    info = encode_parts(label, key_id_text, check_generation(generation).to_bytes(4, "big"),
                        *extra)
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)
