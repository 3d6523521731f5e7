"""Trusted-node relay over mutual TLS: latency per request and keys per second, 1 to 5
hops (issue 10, "Performance").

A line of KMEs k0 - k1 - ... - k5 on 127.0.0.1, each with its SQLite store, audit log
(fsync'ed) and metrics, started in this process by :class:`corridor.kms.node.Corridor`
(what ``corridor up`` runs), each link fed from recorded key files (so that no link
simulation competes for the cores). SAE s0 at k0 asks for keys for SAE s<h> at k<h>:
h = 1 is a direct delivery (the baseline), h >= 2 a relay over h - 1 trusted nodes. Every
KME runs in this process: the figures are what this machine does with all of them on its
cores, not one KME's share.

For each h: the median and 90th percentile latency of ``enc_keys`` for one 256-bit key
(sequential requests), and keys per second with ``number = 128`` (sequential requests).
Prints one JSON object.

    .venv/bin/python benchmarks/bench_relay.py [--requests 100] [--seconds 3]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from corridor.kms.client import SaeClient
from corridor.kms.node import Corridor, load_corridor

HOPS = 5


def _write_line(root: Path) -> Path:
    lines = ['name = "relay-line"', "", "[kme]", "max_key_count = 1000000",
             "max_key_per_request = 128", ""]
    for index in range(HOPS + 1):
        lines += ["[[kmes]]", f'id = "k{index}"', 'host = "127.0.0.1"', "port = 0", ""]
    for index in range(HOPS):
        keys = root / "keys" / f"l{index}"
        keys.mkdir(parents=True)
        data = os.urandom(8 << 20)
        (keys / "alice.bin").write_bytes(data)
        (keys / "bob.bin").write_bytes(data)
        lines += ["[[links]]", f'id = "l{index}"', f'alice_kme = "k{index}"',
                  f'bob_kme = "k{index + 1}"', 'source = "recorded"', f'keys_dir = "{keys}"',
                  "block_bytes = 65536", ""]
    for index in range(HOPS + 1):
        lines += ["[[saes]]", f'id = "s{index}"', f'kme = "k{index}"', ""]
    path = root / "line.toml"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corridor = Corridor(load_corridor(_write_line(root)), root / "run")
        corridor.start()
        try:
            pki = corridor.pki
            assert pki is not None
            node = corridor.nodes["k0"]
            deadline = time.monotonic() + 120
            while min(p["available_bytes"] for n in corridor.nodes.values()
                      for p in n.pools()) < (4 << 20):
                if time.monotonic() > deadline:
                    raise SystemExit("the recorded links did not fill the pools in 120 s")
                time.sleep(0.5)
            results = []
            with SaeClient(node.url or "", pki.saes["s0"].cert, pki.saes["s0"].key,
                           pki.ca_cert, expected_kme_id="k0", timeout_s=60.0) as s0:
                for hops in range(1, HOPS + 1):
                    slave = f"s{hops}"
                    for _ in range(5):  # warm the connections of every hop
                        s0.get_key(slave)
                    latencies = []
                    for _ in range(args.requests):
                        start = time.perf_counter()
                        s0.get_key(slave)
                        latencies.append(time.perf_counter() - start)
                    latencies.sort()
                    keys, start = 0, time.perf_counter()
                    while (elapsed := time.perf_counter() - start) < args.seconds:
                        keys += len(s0.get_key(slave, number=128))
                    results.append({
                        "hops": hops, "trusted_nodes": hops - 1,
                        "latency_ms_p50": round(1e3 * statistics.median(latencies), 2),
                        "latency_ms_p90": round(1e3 * latencies[int(0.9 * len(latencies))],
                                                2),
                        "keys_per_s_number_128": round(keys / elapsed, 1)})
        finally:
            corridor.close()
    base = results[0]["latency_ms_p50"]
    per_hop = [(r["latency_ms_p50"] - base) / (r["hops"] - 1) for r in results[1:]]
    print(json.dumps({
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "benchmarks/bench_relay.py " + f"--requests {args.requests} "
                   f"--seconds {args.seconds}",
        "cpus": os.cpu_count(), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "results": results,
        "added_latency_ms_per_hop_p50": round(statistics.mean(per_hop), 2)}, indent=2))


if __name__ == "__main__":
    main()
