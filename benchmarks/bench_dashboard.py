"""The dashboard under N open pages: page load time and live-update delay.

Starts ``corridor up --no-mobility`` in a temporary directory, waits for its dashboard,
then opens ``--sessions`` event streams at once (each a page: ``/``, ``/dashboard.js``,
``/api/history``, then ``/api/events``), each with the operator certificate, and for
``--seconds`` records, per received snapshot, the delay from the snapshot's time stamp
to its arrival. Prints one JSON object: page-load times (p50, max), update delays (p50,
p99, max), snapshots received per session, and the corridor process's CPU share.

    .venv/bin/python benchmarks/bench_dashboard.py [--sessions 20] [--seconds 20]
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

import httpx


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    corridor = str(Path(sys.executable).parent / "corridor")
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen([corridor, "up", "--workdir", "run", "--no-mobility",
                                    "--duration-s", str(args.seconds + 60)], cwd=tmp,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        up_file = Path(tmp) / "run" / "corridor-up.json"
        while not (up_file.is_file() and "dashboard_url" in up_file.read_text()):
            time.sleep(0.2)
        url = json.loads(up_file.read_text())["dashboard_url"]
        pki = Path(tmp) / "run" / "pki"
        context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        context.load_cert_chain(str(pki / "operator/operator/cert.pem"),
                                str(pki / "operator/operator/key.pem"))
        loads: list[float] = []
        delays: list[float] = []
        received: list[int] = []
        lock = threading.Lock()
        stop = time.monotonic() + args.seconds

        def session() -> None:
            count = 0
            with httpx.Client(verify=context, timeout=10) as client:
                began = time.perf_counter()
                for path in ("", "dashboard.js", "dashboard.css", "api/history"):
                    client.get(url + path).raise_for_status()
                with lock:
                    loads.append(time.perf_counter() - began)
                with client.stream("GET", url + "api/events") as stream:
                    for line in stream.iter_lines():
                        if line.startswith("data: "):
                            snap = json.loads(line[6:])
                            with lock:
                                delays.append(time.time() - snap["time"])
                            count += 1
                        if time.monotonic() > stop:
                            break
            with lock:
                received.append(count)

        cpu0 = _cpu(process.pid)
        threads = [threading.Thread(target=session) for _ in range(args.sessions)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu = _cpu(process.pid) - cpu0
        process.send_signal(signal.SIGINT)
        process.wait(60)
    print(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(), "sessions": args.sessions, "seconds": args.seconds,
        "page_load_s": {"p50": statistics.median(loads), "max": max(loads)},
        "update_delay_s": {"p50": _percentile(delays, 50), "p99": _percentile(delays, 99),
                           "max": max(delays)},
        "snapshots_per_session": {"min": min(received), "max": max(received)},
        "corridor_cpu_s": cpu}, indent=1))


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
