"""RsuStream: the centre and the RSU share PSK generations from QKD keys; fail closed
without one; rotation on schedule; nothing secret in the status."""

from __future__ import annotations

import os
from typing import Any

from corridor.kms.interface import DeliveredKey, KeysUnavailableError
from corridor.mobility.v2x.psk import RotationPolicy
from corridor.mobility.v2x.rsu_stream import RsuStream


class Kme:
    """Both SAEs' view of one pair of KMEs: enc_keys hands out, dec_keys gives by ID."""

    def __init__(self) -> None:
        self.keys: dict[str, bytes] = {}
        self.issued: list[bytes] = []
        self.down = False
        self.count = 0

    def get_key(self, slave_sae_id: str) -> list[DeliveredKey]:
        if self.down:
            raise KeysUnavailableError("pool empty")
        self.count += 1
        key_id = f"00000000-0000-4000-8000-{self.count:012d}"
        self.keys[key_id] = os.urandom(32)
        self.issued.append(self.keys[key_id])
        return [DeliveredKey(key_id, self.keys[key_id])]

    def get_key_with_id(self, master_sae_id: str, key_ids: list[str]) -> list[DeliveredKey]:
        return [DeliveredKey(k, self.keys.pop(k)) for k in key_ids]


def stream(kme: Any) -> RsuStream:
    return RsuStream(kme, kme, "centre", "rsu",
                     policy=RotationPolicy(interval_s=10.0, grace_s=2.0))


def test_messages_flow_under_qkd_keyed_psk_and_rotate() -> None:
    kme = Kme()
    s = stream(kme)
    for tick in range(30):
        s.step(now=1000.0 + tick)
    status = s.status()
    assert status["sent"] == 30 and status["received"] == {"accepted": 30}
    assert status["rotations"] == 3 and status["generation"] == 3   # at 0, 10 and 20 s
    assert status["key_id"] == "00000000-0000-4000-8000-000000000003"
    assert not kme.keys   # the RSU fetched every key the centre got


def test_no_key_no_message_and_a_failed_rotation_is_counted() -> None:
    kme = Kme()
    kme.down = True
    s = stream(kme)
    s.step(now=0.0)
    assert s.status()["sent"] == 0 and s.status()["waiting_for_key"] == 1
    assert s.status()["key_failures"] == 1
    kme.down = False
    s.step(now=1.0)
    kme.down = True
    for tick in range(2, 15):
        s.step(now=float(tick))
    status = s.status()
    assert status["generation"] == 1 and status["key_failures"] >= 4
    assert status["received"] == {"accepted": status["sent"]}


def test_the_status_holds_no_key_material() -> None:
    kme = Kme()
    s = stream(kme)
    s.step(now=0.0)
    text = repr(s.status()) + repr(s) + repr(s.centre_ring) + repr(s.rsu_ring)
    assert kme.issued and all(key.hex() not in text for key in kme.issued)
