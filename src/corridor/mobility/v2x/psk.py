"""QKD-keyed roadside encryption: 1609.2 ``EncryptedData`` with a pre-shared-key recipient.

This module owns the traffic-centre-to-RSU leg where fibre reaches the cabinet: both ends
hold QKD keys from the corridor (same ETSI 014 ``key_ID``), derive an AES-128 key from one
per generation, and the centre's messages (signal phase and timing, emergency-vehicle
priority, lane closures) travel as ``EncryptedData`` whose only recipient is a
``pskRecipInfo`` and whose ciphertext is ``aes128ccm`` (pyca/cryptography AESCCM, 16-byte
tag, 12-byte random nonce), as IEEE 1609.2 defines them.

Key per generation: HKDF-SHA256 over the QKD key (:func:`corridor.mobility.derive.
hkdf_sha256`, label :data:`PSK_LABEL`, the QKD ``key_ID`` and the generation number).
Its identifier is 1609.2's ``pskRecipInfo``: the ``HashedId8`` of the OER
``SymmetricEncryptionKey`` holding it, so it names one key of one generation and says
nothing about the key. Rotation by policy (:class:`RotationPolicy`): a new generation every
``interval_s``; the receiver still accepts the previous one for ``grace_s`` after the new
one is installed (messages in flight), and never an older one.

The plaintext is an ``Ieee1609Dot2Data`` (``unsecuredData`` with the application payload);
the payloads in :data:`CENTRE_MESSAGES` are opaque bytes of realistic sizes, not encoded
SPaT/SREM/IVIM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from corridor.errors import ParameterError
from corridor.mobility.derive import check_generation, hkdf_sha256
from corridor.mobility.v2x.certificates import hashed_id8
from corridor.mobility.v2x.encoding import (
    EncodingError,
    decode_data,
    encode_data,
    encode_symmetric_key,
)
from corridor.mobility.v2x.messages import unsecured
from corridor.mobility.v2x.verifier import Refused

PSK_LABEL = b"corridor v2x 1609.2 psk aes-128-ccm"
AES_KEY_BYTES = 16
CCM_NONCE_BYTES = 12
CCM_TAG_BYTES = 16
MIN_QKD_KEY_BYTES = 16

# Messages the traffic centre sends through the RSU: (psid, payload bytes). Sizes are
# typical UPER encodings: a SPATEM for a four-arm intersection with 8 signal groups, an
# SREM asking priority for one emergency vehicle, an IVIM closing one lane on a stretch.
CENTRE_MESSAGES: dict[str, tuple[int, int]] = {
    "spat": (137, 240),
    "ev-priority": (140, 72),
    "lane-closure": (139, 180),
}


@dataclass(frozen=True)
class RotationPolicy:
    """A new key generation every ``interval_s``; the previous one is still accepted for
    ``grace_s`` after the next is installed."""

    interval_s: float = 300.0
    grace_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ParameterError("interval_s", self.interval_s, "a number of seconds > 0")
        if not 0 <= self.grace_s < self.interval_s:
            raise ParameterError("grace_s", self.grace_s,
                                 "a number of seconds from 0 to below interval_s")


@dataclass
class _Generation:
    number: int
    aead: AESCCM
    recipient_id: bytes
    installed_unix_s: float

    def __repr__(self) -> str:
        return f"_Generation({self.number}, id={self.recipient_id.hex()})"


def derive_psk(qkd_key: bytes, *, key_id: str, generation: int) -> bytes:
    """The AES-128 key of ``generation`` from a QKD key (never logged or shown)."""
    if not isinstance(qkd_key, bytes) or len(qkd_key) < MIN_QKD_KEY_BYTES:
        raise ParameterError("qkd_key", f"{len(qkd_key) if isinstance(qkd_key, bytes) else '?'}"
                             " bytes", f"at least {MIN_QKD_KEY_BYTES} bytes of QKD key")
    return hkdf_sha256(qkd_key, label=PSK_LABEL, key_id=key_id, generation=generation,
                       length=AES_KEY_BYTES)


def psk_recipient_id(key: bytes) -> bytes:
    """1609.2 ``pskRecipInfo``: HashedId8 of the OER ``SymmetricEncryptionKey``."""
    return hashed_id8(encode_symmetric_key(key))


@dataclass
class PskKeyring:
    """One end's PSK generations under a :class:`RotationPolicy` (centre or RSU alike)."""

    policy: RotationPolicy = field(default_factory=RotationPolicy)
    counts: dict[str, int] = field(default_factory=dict)
    _generations: list[_Generation] = field(default_factory=list)

    def __repr__(self) -> str:
        return f"PskKeyring(generations={[g.number for g in self._generations]})"

    def install(self, qkd_key: bytes, *, key_id: str, generation: int,
                now_unix_s: float) -> bytes:
        """Derive and install ``generation``; returns its ``pskRecipInfo``. Generations
        only go forward."""
        check_generation(generation)
        if self._generations and generation <= self._generations[-1].number:
            raise ParameterError("generation", generation,
                                 f"greater than {self._generations[-1].number}")
        key = derive_psk(qkd_key, key_id=key_id, generation=generation)
        recipient_id = psk_recipient_id(key)
        self._generations.append(_Generation(generation, AESCCM(key, CCM_TAG_BYTES),
                                             recipient_id, now_unix_s))
        del self._generations[:-2]  # the newest and the one in its grace window
        return recipient_id

    def due(self, now_unix_s: float) -> bool:
        """Whether the policy asks for a new generation now."""
        return not self._generations or \
            now_unix_s - self._generations[-1].installed_unix_s >= self.policy.interval_s

    @property
    def current_generation(self) -> int | None:
        """The newest generation installed, if any."""
        return self._generations[-1].number if self._generations else None

    def encrypt(self, payload: bytes, *, nonce: bytes | None = None) -> bytes:
        """``Ieee1609Dot2Data`` / ``EncryptedData`` of ``payload`` under the newest key."""
        if not self._generations:
            raise ParameterError("keyring", "empty", "a generation installed before sending")
        current = self._generations[-1]
        nonce = os.urandom(CCM_NONCE_BYTES) if nonce is None else nonce
        plaintext = encode_data(unsecured(payload))
        return encode_data({"protocolVersion": 3, "content": ("encryptedData", {
            "recipients": [("pskRecipInfo", current.recipient_id)],
            "ciphertext": ("aes128ccm", {"nonce": nonce,
                                         "ccmCiphertext": current.aead.encrypt(
                                             nonce, plaintext, None)})})})

    def decrypt(self, data: bytes, *, now_unix_s: float) -> bytes:
        """The payload of an ``EncryptedData`` for one of our generations; :class:`Refused`
        (``psk_unknown``, ``psk_retired``, ``psk_auth_failed``, ``malformed``) otherwise."""
        try:
            payload = self._decrypt(data, now_unix_s)
        except Refused as exc:
            self.counts[exc.reason] = self.counts.get(exc.reason, 0) + 1
            raise
        self.counts["accepted"] = self.counts.get("accepted", 0) + 1
        return payload

    def _decrypt(self, data: bytes, now: float) -> bytes:
        try:
            value = decode_data(data)
        except EncodingError as exc:
            raise Refused("malformed", str(exc)) from None
        kind, content = value["content"]
        if kind != "encryptedData":
            raise Refused("malformed", f"content {kind}, not encryptedData")
        ids = [r[1] for r in content["recipients"] if r[0] == "pskRecipInfo"]
        generation = next((g for g in reversed(self._generations) if g.recipient_id in ids),
                          None)
        if generation is None:
            raise Refused("psk_unknown", "no pskRecipInfo names a key of ours")
        newest = self._generations[-1]
        if generation is not newest and now - newest.installed_unix_s > self.policy.grace_s:
            raise Refused("psk_retired", f"generation {generation.number} past its grace")
        _cipher_kind, ccm = content["ciphertext"]
        try:
            plaintext = generation.aead.decrypt(ccm["nonce"], ccm["ccmCiphertext"], None)
        except InvalidTag:
            raise Refused("psk_auth_failed", "AES-CCM tag does not verify") from None
        inner: dict[str, Any]
        try:
            inner = decode_data(plaintext)
        except EncodingError as exc:
            raise Refused("malformed", "plaintext: " + str(exc)) from None
        if inner["content"][0] != "unsecuredData":
            raise Refused("malformed", "plaintext is not unsecuredData")
        return bytes(inner["content"][1])
