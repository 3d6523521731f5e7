"""The dashboard of a running ``corridor up``: operator certificates only, and in a real
browser (Debian's chromium driven by Playwright) the map, the tables and live updates."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

CORRIDOR = [str(Path(sys.executable).parent / "corridor")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    cwd = tmp_path_factory.mktemp("dashboard")
    process = subprocess.Popen([*CORRIDOR, "up", "--embedded", "two-site", "--workdir", "run",
                                "--duration-s", "120", "--no-mobility",
                                "--status-interval-s", "5"], cwd=cwd, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    up_file = cwd / "run" / "corridor-up.json"
    deadline = time.monotonic() + 60
    while not (up_file.is_file() and "dashboard_url" in up_file.read_text()):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no dashboard_url in corridor-up.json"
        time.sleep(0.2)
    up = json.loads(up_file.read_text())
    try:
        yield {"cwd": cwd, "up": up, "url": up["dashboard_url"], "pki": cwd / "run" / "pki"}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
        assert "dashboard (open with the operator certificate" in out


def _client(pki: Path, who: str | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if who is not None:
        context.load_cert_chain(str(pki / who / "cert.pem"), str(pki / who / "key.pem"))
    return httpx.Client(verify=context, timeout=10)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_only_operator_certificates_open_it(running: dict[str, Any]) -> None:
    url, pki = running["url"], running["pki"]
    with _client(pki, "operator/operator") as op:
        snap = op.get(url + "api/snapshot").json()
        assert [s["kme_id"] for s in snap["sites"]] == ["kme-a", "kme-b"]
        assert op.get(url).headers["content-type"].startswith("text/html")
        # Clearing needs a reason; a link with no alarm clears nothing.
        assert op.post(url + "api/alarms/link-ab/clear", json={}).status_code == 400
        assert op.post(url + "api/alarms/nope/clear", json={"reason": "x"}).status_code == 404
    with _client(pki, "sae/sae-a") as sae:
        refused = sae.get(url + "api/snapshot")
        assert refused.status_code == 403 and "sae certificate" in refused.json()["message"]
        assert sae.post(url + "api/alarms/link-ab/clear",
                        json={"reason": "x"}).status_code == 403
    with _client(pki, None) as anonymous:
        assert anonymous.get(url + "api/snapshot").status_code == 401


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_page_shows_every_site_and_link_and_updates_live(running: dict[str, Any]) -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no chromium at {CHROMIUM} under CI=true (scripts/test installs it)")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    url, pki = running["url"], running["pki"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True, client_certificates=[{
                "origin": url.rstrip("/"), "certPath": str(pki / "operator/operator/cert.pem"),
                "keyPath": str(pki / "operator/operator/key.pem")}])
            page = context.new_page()
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
        finally:
            browser.close()
