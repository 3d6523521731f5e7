"""A ``corridor up`` with its dashboard, for the browser tests: start it, wait for its
``dashboard_url``, stop it cleanly; clients with a certificate of its PKI."""

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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CORRIDOR = [str(Path(sys.executable).parent / "corridor")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def running_up(cwd: Path, *args: str) -> Iterator[dict[str, Any]]:
    """``corridor up --workdir run --no-mobility ARGS`` in ``cwd`` until the block ends;
    yields cwd, the corridor-up.json contents, the dashboard's URL, the PKI directory and
    the up file; the stop must be clean (exit 0)."""
    process = subprocess.Popen([*CORRIDOR, "up", "--workdir", "run", "--no-mobility",
                                "--status-interval-s", "5", *args], cwd=cwd, env=ENV,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    up_file = cwd / "run" / "corridor-up.json"
    deadline = time.monotonic() + 60
    while not (up_file.is_file() and "dashboard_url" in up_file.read_text()):
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no dashboard_url in corridor-up.json"
        time.sleep(0.1)
    up = json.loads(up_file.read_text())
    try:
        yield {"cwd": cwd, "up": up, "url": up["dashboard_url"], "pki": cwd / "run" / "pki",
               "up_file": up_file}
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err[-2000:]
        assert "dashboard (open with the operator certificate" in out


def client(pki: Path, who: str | None) -> httpx.Client:
    """An HTTPS client trusting the PKI's CA, presenting ``who``'s certificate
    (``operator/operator``, ``sae/sae-a``, ...) or none."""
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if who is not None:
        context.load_cert_chain(str(pki / who / "cert.pem"), str(pki / who / "key.pem"))
    return httpx.Client(verify=context, timeout=10)


def need_chromium() -> None:
    """Skip without a browser, except under CI=true, where it is a failure."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"no chromium at {CHROMIUM} under CI=true (scripts/test installs it)")
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)")


@contextmanager
def operator_page(url: str, pki: Path) -> Iterator[Any]:
    """A Chromium page (Playwright) that presents the operator's certificate to ``url``."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True, client_certificates=[{
                "origin": url.rstrip("/"), "certPath": str(pki / "operator/operator/cert.pem"),
                "keyPath": str(pki / "operator/operator/key.pem")}])
            yield context.new_page()
        finally:
            browser.close()


@contextmanager
def running_web(cwd: Path, *args: str) -> Iterator[str]:
    """``corridor web ARGS --format json`` in ``cwd`` until the block ends; yields its
    dashboard URL; stopped with SIGINT, which must end it cleanly (exit 0)."""
    web = subprocess.Popen([*CORRIDOR, "web", *args, "--format", "json"], cwd=cwd, env=ENV,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert web.stdout is not None
        text = ""
        while not text.startswith("{") or not text.rstrip().endswith("}"):
            line = web.stdout.readline()
            assert line, web.communicate()[1][-2000:]
            text += line
        yield str(json.loads(text)["dashboard_url"])
    finally:
        if web.poll() is None:
            web.send_signal(signal.SIGINT)
        _, err = web.communicate(timeout=30)
    assert web.returncode == 0, err[-2000:]
