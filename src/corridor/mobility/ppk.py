"""RFC 8784 post-quantum pre-shared keys (PPKs) from QKD keys, and their PPK IDs.

This module owns two small things both ends of a tunnel must compute alike:

- :func:`derive_ppk`: the PPK of one key generation, from the QKD key the KMEs
  delivered (ETSI GS QKD 014) and that key's public ``key_ID``.
- :func:`ppk_id_for` / :func:`key_id_from_ppk_id`: the PPK ID, ``corridor-<key_ID>``.
  RFC 8784 sends the PPK ID in clear in IKE_AUTH, and an ETSI 014 ``key_ID`` is public
  (it travels in clear between SAEs by design), so the PPK ID may carry it: each
  generation has its own ID (a stable ID would race on rotation: two IKE SAs being
  set up with different keys under one name), and either end can tell from an IKE SA
  which QKD key it rests on.

Derivation (HKDF-SHA256, RFC 5869, pyca/cryptography)::

    PPK = HKDF-SHA256(IKM  = k_QKD,
                      salt = "corridor ipsec ppk v1",
                      info = "corridor ipsec ppk v1" || u16(len(key_ID)) || key_ID
                             || u64(generation),
                      L    = 32 bytes)

The QKD key is already uniformly random; the HKDF binds the PPK to its purpose
(label), to the key it came from (``key_ID``) and to the generation, so that a QKD key
can never turn into a PPK for another purpose or generation. When the hybrid combiner
(CatKDF, HYBRID.md) lands, the tunnel can take its PPK from there instead; this
function stays the one place that says how a tunnel's PPK is made.
"""

from __future__ import annotations

import struct
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.errors import ParameterError

PPK_LABEL = b"corridor ipsec ppk v1"
PPK_BYTES = 32
PPK_ID_PREFIX = "corridor-"
MIN_QKD_KEY_BYTES = 16
MAX_GENERATION = 2**64 - 1


def derive_ppk(qkd_key: bytes, key_id: str, generation: int) -> bytes:
    """The 32-byte PPK of ``generation`` from the QKD key ``qkd_key`` with ``key_id``."""
    if not isinstance(qkd_key, bytes | bytearray) or len(qkd_key) < MIN_QKD_KEY_BYTES:
        size = len(qkd_key) if isinstance(qkd_key, bytes | bytearray) else type(qkd_key).__name__
        raise ParameterError("qkd_key", f"({size} bytes, not shown)",
                             f"at least {MIN_QKD_KEY_BYTES} bytes of QKD key")
    key_id_bytes = _check_key_id(key_id).encode()
    if isinstance(generation, bool) or not isinstance(generation, int) \
            or not 0 <= generation <= MAX_GENERATION:
        raise ParameterError("generation", generation, f"an integer 0..{MAX_GENERATION}")
    info = (PPK_LABEL + struct.pack(">H", len(key_id_bytes)) + key_id_bytes
            + struct.pack(">Q", generation))
    return HKDF(algorithm=hashes.SHA256(), length=PPK_BYTES, salt=PPK_LABEL,
                info=info).derive(bytes(qkd_key))


def _check_key_id(key_id: object) -> str:
    """``key_id`` itself when it is a UUID in its 36-character form (kept as given: the
    KME looks it up as it issued it)."""
    if isinstance(key_id, str) and len(key_id) == 36:
        try:
            uuid.UUID(key_id)
            return key_id
        except ValueError:
            pass
    raise ParameterError("key_ID", key_id, "an ETSI GS QKD 014 key_ID (a UUID, 36 characters)")


def ppk_id_for(key_id: str) -> str:
    """The PPK ID of the generation keyed by ``key_id``: ``corridor-<key_ID>``."""
    return PPK_ID_PREFIX + _check_key_id(key_id)


def key_id_from_ppk_id(ppk_id: str) -> str:
    """The ``key_ID`` a Corridor PPK ID carries (ParameterError if it is not one)."""
    if not isinstance(ppk_id, str) or not ppk_id.startswith(PPK_ID_PREFIX):
        raise ParameterError("ppk_id", ppk_id, f"{PPK_ID_PREFIX}<key_ID>")
    return _check_key_id(ppk_id[len(PPK_ID_PREFIX):])
