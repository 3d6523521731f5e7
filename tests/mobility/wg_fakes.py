"""Test doubles for the WireGuard agent: a pair of KMEs sharing keys, a PSK sink."""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Sequence

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from corridor.kms.client import KmeConnectionError, KmeResponseError
from corridor.kms.interface import DeliveredKey


def public_key() -> str:
    raw = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class FakeKmePair:
    """Two KMEs' view of one pool: enc_keys at the master, dec_keys (once) at the slave."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.empty = False
        self.down = False

    def get_key(self, slave_sae_id: str, number: int = 1,
                size: int | None = None) -> list[DeliveredKey]:
        if self.down:
            raise KmeConnectionError("cannot reach KME")
        if self.empty:
            raise KmeResponseError(503, "no key")
        key_id, key = str(uuid.uuid4()), os.urandom((size or 256) // 8)
        self.keys[key_id] = key
        return [DeliveredKey(key_id, key)]

    def get_key_with_id(self, master_sae_id: str,
                        key_ids: str | Sequence[str]) -> list[DeliveredKey]:
        key_id = key_ids if isinstance(key_ids, str) else key_ids[0]
        if key_id not in self.keys:
            raise KmeResponseError(400, "unknown key_ID")
        return [DeliveredKey(key_id, self.keys.pop(key_id))]


class RecordingPeer:
    """A PSK sink that remembers what was set (``None`` for a random PSK)."""

    def __init__(self) -> None:
        self.history: list[bytes | None] = []

    def apply(self, psk: bytes) -> None:
        self.history.append(psk)

    def invalidate(self) -> None:
        self.history.append(None)


class ListSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, event: str, **fields: object) -> None:
        self.events.append((event, fields))
