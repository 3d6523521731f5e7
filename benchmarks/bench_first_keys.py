"""How soon `corridor up` with no arguments (the embedded city corridor) has keys.

Starts ``corridor up`` (mobility on, as the main job runs) in a temporary directory for
``--seconds``, notes when its banner ends (the line "stop with Ctrl-C"), stops it, then
reads every KME's verified audit trail and prints one JSON object: seconds from the
banner to the first block stored in a pool (``block_ingested``), to the first key
delivered to an SAE (``keys_delivered``), to the first hybrid session established, and
per link to its first stored block; with the corridor process's peak resident memory.

    .venv/bin/python benchmarks/bench_first_keys.py [--seconds 40] [--embedded city]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from corridor.kms.audit import verify_audit_log
from corridor.kms.crypto import load_kek


def _when(entry: dict) -> float:
    return dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--embedded", default="city")
    args = parser.parse_args()
    corridor = str(Path(sys.executable).parent / "corridor")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.time()
        process = subprocess.Popen([corridor, "up", "--embedded", args.embedded, "--workdir",
                                    "run", "--status-interval-s", "600"], cwd=tmp,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   env={**os.environ, "COLUMNS": "200"})
        banner: list[float] = []
        peak_kb = [0]

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if line.startswith("stop with Ctrl-C") and not banner:
                    banner.append(time.time())

        def watch_memory() -> None:
            while process.poll() is None:
                try:
                    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
                except OSError:
                    break
                time.sleep(0.5)

        threads = [threading.Thread(target=read, daemon=True),
                   threading.Thread(target=watch_memory, daemon=True)]
        for thread in threads:
            thread.start()
        time.sleep(args.seconds)
        process.send_signal(signal.SIGINT)
        process.wait(120)
        run = Path(tmp) / "run"
        up = json.loads((run / "corridor-up.json").read_text())
        entries = []
        for kme in up["kmes"]:
            kek = load_kek(run / kme["kek_file"])
            result = verify_audit_log(run / kme["audit_log"], kek, on_entry=entries.append)
            assert result.ok, result.reason
        hybrid = []
        for session in up.get("hybrid_sessions") or []:
            for side in session["sides"]:
                if side.get("role") == "initiator":
                    path = run / side["audit_log"]
                    if path.is_file():
                        verify_audit_log(path, load_kek(run / side["kek_file"]),
                                         on_entry=hybrid.append)
    origin = banner[0] if banner else started

    def first(items: list[dict], test) -> float | None:
        times = [_when(e) for e in items if test(e)]
        return round(min(times) - origin, 2) if times else None

    links = sorted({e["fields"]["link_id"] for e in entries if e["event"] == "block_ingested"})
    print(json.dumps({
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(), "corridor": args.embedded, "seconds": args.seconds,
        "banner_after_start_s": round(origin - started, 2) if banner else None,
        "first_block_stored_s": first(entries, lambda e: e["event"] == "block_ingested"),
        "first_key_delivered_s": first(entries, lambda e: e["event"] == "keys_delivered"),
        "first_hybrid_established_s": first(
            hybrid, lambda e: e["event"] == "hybrid_decision"
            and e["fields"].get("outcome") == "established"),
        "first_block_per_link_s": {
            link: first(entries, lambda e, link=link: e["event"] == "block_ingested"
                        and e["fields"].get("link_id") == link) for link in links},
        "peak_resident_mb": round(peak_kb[0] / 1024)}, indent=1))


if __name__ == "__main__":
    main()
