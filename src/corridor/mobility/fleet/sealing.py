"""Encryption of both legs: AES-256-GCM under the hybrid session key or an ML-KEM-768 key.

This module owns the keys each leg seals with and the seal/open operations:

- Back end <-> depot: the hybrid session's key (QKD + X-Wing through CatKDF,
  :mod:`corridor.hybrid.session`) is split by HKDF-SHA256 into one AES-256 key per
  direction (info ``corridor fleet backend leg v1`` || direction || session_id ||
  generation), so the two directions never share a (key, nonce) space.
- Depot -> vehicle: **one ML-KEM-768 encapsulation per command** to the vehicle's public
  key; HKDF-SHA256 of the shared secret (info ``corridor fleet vehicle leg v1`` || depot
  || vehicle || SHA-256(KEM ciphertext)) gives a command key, a separate key for the
  vehicle's acknowledgement of that command, and a 16-byte ack handle that names the
  command in the ack envelope (the broker never sees the command ID). A key seals one
  message each way, so one command's key exposes no other command, and no per-vehicle
  session state has to survive a vehicle that sleeps for weeks.

Nonces are 12 random bytes from the OS CSPRNG; the envelope header (every field before
the ciphertext) is the associated data. A failed tag is
:class:`~corridor.mobility.fleet.errors.FleetRefusal` with reason ``tampered``.
Derived keys are ``bytearray`` s that callers wipe when done with them.
"""

from __future__ import annotations

import hashlib
import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.mobility.fleet.errors import TAMPERED, FleetRefusal
from corridor.mobility.fleet.wire import ACK_HANDLE_BYTES, NONCE_BYTES, lp

AES_KEY_BYTES = 32
BACKEND_LEG_INFO = b"corridor fleet backend leg v1"
VEHICLE_LEG_INFO = b"corridor fleet vehicle leg v1"


def wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def backend_leg_key(session_key: bytes, direction: str, session_id: bytes,
                    generation: int) -> bytearray:
    """The AES-256 key of one direction (``b2d`` or ``d2b``) of a hybrid session."""
    info = BACKEND_LEG_INFO + lp(direction.encode()) + lp(session_id) + struct.pack(
        ">I", generation)
    return bytearray(HKDF(algorithm=hashes.SHA256(), length=AES_KEY_BYTES, salt=None,
                          info=info).derive(session_key))


def vehicle_leg_keys(shared_secret: bytes, depot_id: str, vehicle_id: str,
                     kem_ciphertext: bytes) -> tuple[bytearray, bytearray, bytes]:
    """``(command key, acknowledgement key, ack handle)`` from one ML-KEM-768 shared
    secret. The 16-byte handle names the command in the acknowledgement's envelope
    without revealing its command ID to the broker (nor linking it to anything else)."""
    info = VEHICLE_LEG_INFO + lp(depot_id.encode()) + lp(vehicle_id.encode()) + lp(
        hashlib.sha256(kem_ciphertext).digest())
    okm = bytearray(HKDF(algorithm=hashes.SHA256(), length=2 * AES_KEY_BYTES + ACK_HANDLE_BYTES,
                         salt=None, info=info).derive(shared_secret))
    try:
        return (okm[:AES_KEY_BYTES], okm[AES_KEY_BYTES:2 * AES_KEY_BYTES],
                bytes(okm[2 * AES_KEY_BYTES:]))
    finally:
        wipe(okm)


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def seal(key: bytes | bytearray, nonce: bytes, plaintext: bytes, header: bytes) -> bytes:
    """AES-256-GCM ciphertext and tag of ``plaintext``, ``header`` as associated data."""
    return AESGCM(bytes(key)).encrypt(nonce, plaintext, header)


def open_sealed(key: bytes | bytearray, nonce: bytes, ciphertext: bytes, header: bytes,
                what: str) -> bytes:
    """The plaintext, or :class:`FleetRefusal` (tampered) when the tag does not verify."""
    try:
        return AESGCM(bytes(key)).decrypt(nonce, ciphertext, header)
    except InvalidTag:
        raise FleetRefusal(TAMPERED, f"{what}: AES-256-GCM tag does not verify") from None


class VehicleKemKey:
    """A vehicle's ML-KEM-768 decapsulation key (from a 64-byte seed); repr shows nothing."""

    def __init__(self, seed: bytes) -> None:
        self._key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
        self.public_bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> VehicleKemKey:
        return cls(os.urandom(64))

    def seed(self) -> bytes:
        return self._key.private_bytes_raw()

    def decapsulate(self, kem_ciphertext: bytes) -> bytes:
        return self._key.decapsulate(kem_ciphertext)

    def __repr__(self) -> str:
        return "VehicleKemKey(ML-KEM-768, not shown)"


def encapsulate(vehicle_public: bytes) -> tuple[bytes, bytes]:
    """``(shared secret, KEM ciphertext)`` for the vehicle's ML-KEM-768 public key."""
    public = mlkem.MLKEM768PublicKey.from_public_bytes(vehicle_public)
    return public.encapsulate()


__all__ = ["AES_KEY_BYTES", "VehicleKemKey", "backend_leg_key", "encapsulate", "new_nonce",
           "open_sealed", "seal", "vehicle_leg_keys", "wipe"]
