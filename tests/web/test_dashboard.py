"""The dashboard of a running ``corridor up``: operator certificates only, and in a real
browser (Debian's chromium driven by Playwright) the map, the tables and live updates."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.web.up_harness import client, operator_page, running_up


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with running_up(tmp_path_factory.mktemp("dashboard"), "--embedded", "two-site",
                    "--duration-s", "120") as up:
        yield up


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_only_operator_certificates_open_it(running: dict[str, Any]) -> None:
    url, pki = running["url"], running["pki"]
    with client(pki, "operator/operator") as op:
        snap = op.get(url + "api/snapshot").json()
        assert [s["kme_id"] for s in snap["sites"]] == ["kme-a", "kme-b"]
        assert op.get(url).headers["content-type"].startswith("text/html")
        # Clearing needs a reason; a link with no alarm clears nothing.
        assert op.post(url + "api/alarms/link-ab/clear", json={}).status_code == 400
        assert op.post(url + "api/alarms/nope/clear", json={"reason": "x"}).status_code == 404
    with client(pki, "sae/sae-a") as sae:
        refused = sae.get(url + "api/snapshot")
        assert refused.status_code == 403 and "sae certificate" in refused.json()["message"]
        assert sae.post(url + "api/alarms/link-ab/clear",
                        json={"reason": "x"}).status_code == 403
    with client(pki, None) as anonymous:
        assert anonymous.get(url + "api/snapshot").status_code == 401


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_page_shows_every_site_and_link_and_updates_live(running: dict[str, Any]) -> None:
    url, pki = running["url"], running["pki"]
    with operator_page(url, pki) as page:
        page.goto(url)
        page.wait_for_selector("#map line[data-link]", state="attached", timeout=10_000)
        assert page.locator("#map .site").count() == 2
        assert page.locator("#map line[data-link='link-ab']").count() == 1
        assert page.locator("#links tbody tr[data-link='link-ab']").count() == 1
        first = float(page.locator("#live").get_attribute("data-time") or 0)
        page.wait_for_function(
            f"Number(document.getElementById('live').dataset.time) > {first}",
            timeout=3_000)  # a new snapshot within 3 s, no reload
        page.wait_for_function("document.querySelector('#links tbody td.ok, "
                               "#links tbody td.warn, #links tbody td.alarm') !== null",
                               timeout=30_000)
        state = page.locator("#links tbody tr[data-link='link-ab'] td").nth(1).inner_text()
        assert "QBER" in state and "%" in state  # the colour's meaning in words
        # The selected link's chart grows by a sample with each snapshot, no reload.
        points = page.locator("#chart polyline.qber").get_attribute("points") or ""
        page.wait_for_function(
            "(before) => (document.querySelector('#chart polyline.qber')"
            ".getAttribute('points') || '').split(' ').length > before",
            arg=len(points.split(" ")), timeout=5_000)
        # Links coloured by key rate instead: the tooltip says it in words.
        page.select_option("#colour-by", "rate")
        title = page.locator("#map line[data-link='link-ab'] title").text_content() or ""
        assert "key rate" in title and "% of the best link" in title
        assert "alarm level" in page.locator("#chart-desc").inner_text()
        page.keyboard.press("Tab")  # keyboard reaches a control
        shots = os.environ.get("CORRIDOR_DASHBOARD_SCREENSHOT")
        if shots:
            page.wait_for_timeout(3_000)
            page.screenshot(path=shots, full_page=True)
