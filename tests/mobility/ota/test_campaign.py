"""The background campaign ``corridor up`` runs: every vehicle reaches the new version,
the key over QKD + PQC, a status row per vehicle."""

from __future__ import annotations

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
