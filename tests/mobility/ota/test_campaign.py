"""The background campaign ``corridor up`` runs: every vehicle reaches the new version,
the key over QKD + PQC, a status row per vehicle."""

from __future__ import annotations

import time
from pathlib import Path

from corridor.mobility.ota.campaign import OtaCampaign
from tests.hybrid.session_helpers import FakeQkd, SharedPool


def test_campaign_reaches_every_vehicle_and_reports_status(tmp_path: Path) -> None:
    pool = SharedPool()
    campaign = OtaCampaign(tmp_path / "ota", oem_sae_id="oem", regional_sae_id="regional",
                           oem_qkd=FakeQkd(pool), regional_qkd=FakeQkd(pool), vehicle_count=2)
    campaign.start()
    try:
        assert campaign.wait_first(60)
        status = campaign.status()
        assert status["state"] == "idle", status["last_error"]
        assert status["session_inputs"] == ["qkd", "pqc"]
        assert status["server"]["bytes_served"] > 0
        assert [(v["vehicle_id"], v["state"], v["installed_version"], v["last_error"])
                for v in status["vehicles"]] == [("v-001", "installed", 2, None),
                                                 ("v-002", "installed", 2, None)]
        assert (tmp_path / "ota" / "audit" / "hybrid.jsonl").exists()
    finally:
        campaign.close()
    assert campaign.status()["state"] == "stopped"


def test_refused_session_is_shown_not_raised(tmp_path: Path) -> None:
    campaign = OtaCampaign(tmp_path / "ota", oem_sae_id="oem", regional_sae_id="regional",
                           oem_qkd=None, regional_qkd=None, vehicle_count=1)
    campaign.start()
    try:
        assert campaign.wait_first(60)
        status = campaign.status()
        assert status["last_error"] and "qkd" in status["last_error"].lower()
        assert [v["state"] for v in status["vehicles"]] == ["idle"]
    finally:
        campaign.close()


def test_campaign_retries_the_same_release_until_the_key_crosses(tmp_path: Path) -> None:
    pool = SharedPool()
    oem, regional = FakeQkd(pool, "pool_empty"), FakeQkd(pool, "pool_empty")
    campaign = OtaCampaign(tmp_path / "ota", oem_sae_id="oem", regional_sae_id="regional",
                           oem_qkd=oem, regional_qkd=regional, vehicle_count=1,
                           retry_interval_s=0.2)
    campaign.start()
    try:
        assert campaign.wait_first(60)
        assert "pool_empty" in (campaign.status()["last_error"] or "")
        oem.fail = regional.fail = None  # the link has produced key
        deadline = time.monotonic() + 30
        while campaign.status()["vehicles"][0]["state"] != "installed":
            assert time.monotonic() < deadline, campaign.status()
            time.sleep(0.1)
        status = campaign.status()
        assert status["version"] == 2 and status["last_error"] is None
        assert status["vehicles"][0]["installed_version"] == 2
    finally:
        campaign.close()
