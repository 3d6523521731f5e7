"""Image encryption: one AES-256-GCM key per campaign, wrapped to each vehicle by ML-KEM-768.

This module owns the bytes of an encrypted image and of a wrapped campaign key:

- an image is ``nonce (12 bytes) || AES-256-GCM(campaign key, firmware)``, the associated
  data ``corridor ota image v1 || lp(target path) || lp(campaign ID)``, so that a blob
  moved to another path or campaign does not decrypt; the repositories sign the
  *encrypted* bytes (a mirror and an eavesdropper only ever see those);
- a campaign key travels to a vehicle as ``{kem_ciphertext, nonce, wrapped}``: one
  ML-KEM-768 encapsulation to the vehicle's public key, HKDF-SHA256 of the shared secret
  (info ``corridor ota campaign key v1 || lp(vehicle) || lp(campaign) ||
  SHA-256(KEM ciphertext)``) keys AES-256-GCM over the campaign key. The director signs
  this record into the vehicle's targets metadata (:mod:`.backend`).

Failures are :class:`~corridor.mobility.ota.errors.OtaRefusal` (``decrypt_failed``,
``key_unwrap_failed``) naming paths and IDs only. Keys are ``bytearray`` s the callers
wipe (:func:`corridor.mobility.fleet.sealing.wipe`).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.mobility.fleet.sealing import AES_KEY_BYTES, VehicleKemKey, encapsulate, wipe
from corridor.mobility.fleet.wire import lp
from corridor.mobility.ota.errors import DECRYPT_FAILED, KEY_UNWRAP_FAILED, OtaRefusal

NONCE_BYTES = 12
IMAGE_INFO = b"corridor ota image v1"
WRAP_INFO = b"corridor ota campaign key v1"


def new_campaign_key() -> bytearray:
    """32 bytes from the OS CSPRNG."""
    return bytearray(os.urandom(AES_KEY_BYTES))


def _image_aad(target_path: str, campaign_id: str) -> bytes:
    return IMAGE_INFO + lp(target_path.encode()) + lp(campaign_id.encode())


def encrypt_image(key: bytes | bytearray, firmware: bytes, target_path: str,
                  campaign_id: str) -> bytes:
    """The encrypted image (module docstring)."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(bytes(key)).encrypt(nonce, firmware,
                                              _image_aad(target_path, campaign_id))


def decrypt_image(key: bytes | bytearray, blob: bytes, target_path: str, campaign_id: str,
                  plaintext_sha256: str | None = None) -> bytes:
    """The firmware, checked against ``plaintext_sha256`` when given."""
    try:
        firmware = AESGCM(bytes(key)).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:],
                                              _image_aad(target_path, campaign_id))
    except (InvalidTag, ValueError):
        raise OtaRefusal(DECRYPT_FAILED, f"{target_path}: AES-256-GCM tag does not verify "
                         f"under campaign {campaign_id}'s key") from None
    if plaintext_sha256 is not None and hashlib.sha256(firmware).hexdigest() != plaintext_sha256:
        raise OtaRefusal(DECRYPT_FAILED, f"{target_path}: firmware SHA-256 differs from the "
                         "image repository's")
    return firmware


def _wrap_key(shared_secret: bytes, vehicle_id: str, campaign_id: str,
              kem_ciphertext: bytes) -> bytearray:
    info = WRAP_INFO + lp(vehicle_id.encode()) + lp(campaign_id.encode()) + hashlib.sha256(
        kem_ciphertext).digest()
    return bytearray(HKDF(algorithm=hashes.SHA256(), length=AES_KEY_BYTES, salt=None,
                          info=info).derive(shared_secret))


def wrap_for_vehicle(key: bytes | bytearray, vehicle_kem_public: bytes, vehicle_id: str,
                     campaign_id: str) -> dict[str, str]:
    """The campaign key wrapped to one vehicle (hex fields, public)."""
    shared, kem_ciphertext = encapsulate(vehicle_kem_public)
    wrap_key = _wrap_key(shared, vehicle_id, campaign_id, kem_ciphertext)
    nonce = os.urandom(NONCE_BYTES)
    try:
        wrapped = AESGCM(bytes(wrap_key)).encrypt(nonce, bytes(key), lp(campaign_id.encode()))
    finally:
        wipe(wrap_key)
    return {"kem_ciphertext": kem_ciphertext.hex(), "nonce": nonce.hex(),
            "wrapped": wrapped.hex()}


def unwrap_for_vehicle(kem_key: VehicleKemKey, record: Any, vehicle_id: str,
                       campaign_id: str) -> bytearray:
    """The campaign key, or ``key_unwrap_failed``."""
    try:
        kem_ciphertext = bytes.fromhex(record["kem_ciphertext"])
        nonce = bytes.fromhex(record["nonce"])
        wrapped = bytes.fromhex(record["wrapped"])
        shared = kem_key.decapsulate(kem_ciphertext)
    except (KeyError, TypeError, ValueError):
        raise OtaRefusal(KEY_UNWRAP_FAILED, f"campaign {campaign_id}: no well-formed wrapped "
                         f"key for {vehicle_id}") from None
    wrap_key = _wrap_key(shared, vehicle_id, campaign_id, kem_ciphertext)
    try:
        return bytearray(AESGCM(bytes(wrap_key)).decrypt(nonce, wrapped,
                                                         lp(campaign_id.encode())))
    except (InvalidTag, ValueError):
        raise OtaRefusal(KEY_UNWRAP_FAILED, f"campaign {campaign_id}: the key does not "
                         f"unwrap under {vehicle_id}'s ML-KEM-768 key") from None
    finally:
        wipe(wrap_key)


__all__ = ["decrypt_image", "encrypt_image", "new_campaign_key", "unwrap_for_vehicle",
           "wrap_for_vehicle"]
