"""The dashboard under N open pages: page load time, live-update delay, and what the
pages cost the KMEs' key delivery.

Starts ``corridor up --embedded city --no-mobility`` (the eight-site city corridor;
``--embedded two-site`` the small one) in a temporary directory, waits ``--fill-s`` for
the pools to fill, then runs three phases of ``--phase-s`` seconds each, every one with
the compiled mutual-TLS load generator (../shared/tools/tlsload.c, built into the
temporary directory, never copied here) fetching single keys over 16 connections,
closed loop (city: SAE ``tmc-ops`` for ``rsu-ring`` from ``kme-tmc``; two-site: ``sae-a``
for ``sae-b`` from ``kme-a``):

1. no page open;
2. ``--sessions`` pages open: each loads what a browser loads (``/``, the script, the
   style, ``/api/history``) with the operator certificate, then follows
   ``/api/events``; per received snapshot the delay from its time stamp to its arrival
   is recorded;
3. no page open again (so a drift of the machine shows as a difference of 1 and 3).

Prints one JSON object: per phase tlsload's figures (answers/s, 200s/s, p50/p99) and the
corridor process's CPU seconds; page-load times (p50, max), update delays (p50, p99,
max), snapshots per session; and the delivery-rate ratio with pages / without (the mean
of phases 1 and 3). ``--screenshot PATH`` afterwards saves a full-page screenshot of the
dashboard in Chromium (Playwright, /usr/bin/chromium), as docs/dashboard.md shows it.

    .venv/bin/python benchmarks/bench_dashboard.py [--embedded city|two-site] \\
        [--sessions 20] [--phase-s 8] [--fill-s 60] [--screenshot docs/img/dashboard.png]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

TOOLS = Path(__file__).resolve().parents[2] / "shared" / "tools"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


#: (KME, master SAE, slave SAE) whose deliveries are measured, per embedded corridor.
PAIRS = {"city": ("kme-tmc", "tmc-ops", "rsu-ring"), "two-site": ("kme-a", "sae-a", "sae-b")}


def _tlsload(binary: Path, run: Path, up: dict[str, Any], seconds: float,
             corridor: str) -> dict[str, Any]:
    kme, master, slave = PAIRS[corridor]
    port = next(k["base_url"] for k in up["kmes"] if k["kme_id"] == kme).rsplit(":", 1)[1]
    sae = run / "pki" / "sae" / master
    out = subprocess.run([str(binary), "-p", port, "-u", f"/api/v1/keys/{slave}/enc_keys",
                          "-c", "16", "-d", str(seconds), "-w", "1",
                          "--cert", str(sae / "cert.pem"), "--key", str(sae / "key.pem"),
                          "--ca", str(run / "pki" / "ca.pem")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _screenshot(url: str, pki: Path, path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            context = browser.new_context(ignore_https_errors=True, client_certificates=[{
                "origin": url.rstrip("/"), "certPath": str(pki / "operator/operator/cert.pem"),
                "keyPath": str(pki / "operator/operator/key.pem")}],
                viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.goto(url)
            page.wait_for_selector("#pairs tbody tr", timeout=60_000)
            page.wait_for_timeout(5_000)  # a few seconds of chart
            page.screenshot(path=str(path), full_page=True)
        finally:
            browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--phase-s", type=float, default=8.0)
    parser.add_argument("--fill-s", type=float, default=60.0)
    parser.add_argument("--screenshot", type=Path)
    parser.add_argument("--embedded", choices=sorted(PAIRS), default="city")
    args = parser.parse_args()
    corridor = str(Path(sys.executable).parent / "corridor")
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "tlsload"
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(TOOLS / "tlsload.c"), "-lssl",
                        "-lcrypto"], check=True)
        process = subprocess.Popen([corridor, "up", "--embedded", args.embedded,
                                    "--workdir", "run", "--no-mobility",
                                    "--status-interval-s", "600",
                                    "--duration-s", str(args.fill_s + 6 * args.phase_s + 120)],
                                   cwd=tmp, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        run = Path(tmp) / "run"
        up_file = run / "corridor-up.json"
        while not (up_file.is_file() and "dashboard_url" in up_file.read_text()):
            time.sleep(0.2)
        up = json.loads(up_file.read_text())
        url = up["dashboard_url"]
        pki = run / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(str(pki / "operator/operator/cert.pem"),
                                str(pki / "operator/operator/key.pem"))
        time.sleep(args.fill_s)
        phases: dict[str, Any] = {}

        def phase(name: str) -> None:
            cpu0 = _cpu(process.pid)
            result = _tlsload(binary, run, up, args.phase_s, args.embedded)
            phases[name] = {"tlsload": result, "corridor_cpu_s": _cpu(process.pid) - cpu0}

        phase("1_no_pages")
        loads: list[float] = []
        delays: list[float] = []
        received: list[int] = []
        lock = threading.Lock()
        loaded = threading.Barrier(args.sessions + 1)
        stop = threading.Event()

        def session() -> None:
            count = 0
            with httpx.Client(verify=context, timeout=30) as client:
                began = time.perf_counter()
                for path in ("", "dashboard.js", "dashboard.css", "api/history"):
                    client.get(url + path).raise_for_status()
                with lock:
                    loads.append(time.perf_counter() - began)
                loaded.wait()
                with client.stream("GET", url + "api/events") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("data: "):
                            snap = json.loads(line[6:])
                            with lock:
                                delays.append(time.time() - snap["time"])
                            count += 1
                        if stop.is_set():
                            break
            with lock:
                received.append(count)

        threads = [threading.Thread(target=session) for _ in range(args.sessions)]
        for thread in threads:
            thread.start()
        loaded.wait()
        phase("2_with_pages")
        stop.set()
        for thread in threads:
            thread.join()
        phase("3_no_pages")
        if args.screenshot is not None:
            _screenshot(url, pki, args.screenshot.resolve())
        process.send_signal(signal.SIGINT)
        process.wait(60)

    def ok_rate(name: str) -> float:
        figures = phases[name]["tlsload"]
        return float(figures.get("rps", 0.0)) * (1 - float(figures.get("non200", 0)) /
                                                   max(1.0, float(figures.get("requests", 1))))

    without = (ok_rate("1_no_pages") + ok_rate("3_no_pages")) / 2
    print(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(), "corridor": args.embedded, "sessions": args.sessions,
        "phase_s": args.phase_s, "fill_s": args.fill_s, "phases": phases,
        "page_load_s": {"p50": statistics.median(loads), "max": max(loads)},
        "update_delay_s": {"p50": _percentile(delays, 50), "p99": _percentile(delays, 99),
                           "max": max(delays)},
        "snapshots_per_session": {"min": min(received), "max": max(received)},
        "delivery_ratio_with_pages": ok_rate("2_with_pages") / without if without else None},
        indent=1))


if __name__ == "__main__":
    main()
