"""The campaign key's hybrid leg: QKD + ML-KEM when the corridor has key, the pair's policy
deciding when it has not."""

from __future__ import annotations

import pytest

from corridor.hybrid.errors import HybridSessionError
from corridor.mobility.ota.images import new_campaign_key
from corridor.mobility.ota.regional import transfer_campaign_key
from tests.hybrid.session_helpers import FakeQkd, SharedPool


def test_key_arrives_under_qkd_and_pqc() -> None:
    pool, key = SharedPool(), new_campaign_key()
    received, record = transfer_campaign_key(
        "c-1", key, oem_sae_id="oem", regional_sae_id="regional", policy="both-required",
        oem_qkd=FakeQkd(pool), regional_qkd=FakeQkd(pool))
    assert received == key and record.inputs == ("qkd", "pqc")
    assert record.key_id == pool.issued[0]
    assert bytes(key).hex() not in repr(record)


def test_both_required_refuses_without_qkd_and_pqc_required_goes_on() -> None:
    key = new_campaign_key()
    with pytest.raises(HybridSessionError):
        transfer_campaign_key("c-1", key, oem_sae_id="oem", regional_sae_id="regional",
                              policy="both-required", oem_qkd=FakeQkd(SharedPool(), "pool_empty"),
                              regional_qkd=FakeQkd(SharedPool(), "pool_empty"), timeout_s=5)
    received, record = transfer_campaign_key(
        "c-1", key, oem_sae_id="oem", regional_sae_id="regional", policy="pqc-required",
        oem_qkd=None, regional_qkd=None)
    assert received == key and record.inputs == ("pqc",)
