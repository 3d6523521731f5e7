"""A connection flood against one KME of `corridor up`, at a 1,024 open-file limit.

The scenario of issue 7: both KMEs of the embedded corridor in one child process whose
open-file limit (soft and hard) is 1,024; this process opens ``--sockets`` idle TCP
connections (default 1,100) to ``kme-a`` and holds them for ``--hold-s`` seconds,
then closes them. Meanwhile, every ``--probe-interval-s``, an SAE of each KME asks its
KME for one key over a fresh mutual-TLS connection (10 s timeout). It prints how many
flood sockets the server reset at once or closed later, and each KME's probe
latencies (or failures) before, during and after the flood.

It only uses ``Corridor``, ``parse_corridor`` and ``SaeClient`` with default settings,
so the same script measures a tree without connection limits (``PYTHONPATH`` of that
tree) for comparison.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_flood.py [--sockets 1100] [--hold-s 12]

Load is bounded (the sockets, one probe per KME per interval) and goes only to
127.0.0.1. Timings depend on the machine; print ``uptime`` next to them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _corridor_child(workdir: str, keys_dir: str, file_limit: int, stop: Any) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))
    from corridor.kms.node import Corridor, parse_corridor

    spec = parse_corridor({
        "name": "flood",
        "kme": {"max_key_count": 100_000},
        "kmes": [{"id": "kme-a"}, {"id": "kme-b"}],
        "links": [{"id": "link-ab", "alice_kme": "kme-a", "bob_kme": "kme-b",
                   "source": "recorded", "keys_dir": keys_dir, "block_bytes": 4096}],
        "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}]})
    with Corridor(spec, Path(workdir), host="127.0.0.1"):
        stop.wait(600)


def _probe(up: dict[str, Any], workdir: Path, sae: str, kme: str, slave: str
           ) -> tuple[float | None, str]:
    from corridor.kms.client import SaeClient

    entry = next(s for s in up["saes"] if s["sae_id"] == sae)
    url = next(k["base_url"] for k in up["kmes"] if k["kme_id"] == kme)
    start = time.monotonic()
    try:
        with SaeClient(url, workdir / entry["cert"], workdir / entry["key"],
                       workdir / entry["ca_cert"], expected_kme_id=kme,
                       timeout_s=10.0) as client:
            client.get_key(slave, number=1)
    except Exception as exc:
        return None, type(exc).__name__
    return time.monotonic() - start, "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sockets", type=int, default=1100)
    parser.add_argument("--hold-s", type=float, default=12.0)
    parser.add_argument("--probe-interval-s", type=float, default=1.0)
    parser.add_argument("--file-limit", type=int, default=1024)
    args = parser.parse_args()
    if not 1 <= args.sockets <= 5000:
        parser.error("--sockets must be in [1, 5000]")
    print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        keys = root / "keys"
        keys.mkdir()
        data = os.urandom(1 << 20)
        (keys / "alice.bin").write_bytes(data)
        (keys / "bob.bin").write_bytes(data)
        ctx = mp.get_context("spawn")
        stop = ctx.Event()
        child = ctx.Process(target=_corridor_child,
                            args=(str(root / "run"), str(keys), args.file_limit, stop))
        child.start()
        up_file = root / "run" / "corridor-up.json"
        deadline = time.monotonic() + 60
        while not up_file.exists():
            if time.monotonic() > deadline or not child.is_alive():
                raise SystemExit("the corridor did not start")
            time.sleep(0.1)
        up = json.loads(up_file.read_text())
        workdir = root / "run"
        url_a = next(k["base_url"] for k in up["kmes"] if k["kme_id"] == "kme-a")
        host, port = url_a.removeprefix("https://").rsplit(":", 1)
        results: list[tuple[float, str, float | None, str]] = []
        probing = threading.Event()
        t0 = time.monotonic()

        def probes() -> None:
            while not probing.is_set():
                for sae, kme, slave in (("sae-a", "kme-a", "sae-b"),
                                        ("sae-b", "kme-b", "sae-a")):
                    latency, outcome = _probe(up, workdir, sae, kme, slave)
                    results.append((time.monotonic() - t0, kme, latency, outcome))
                probing.wait(args.probe_interval_s)

        time.sleep(3.0)  # keys reach the pools
        prober = threading.Thread(target=probes, daemon=True)
        prober.start()
        time.sleep(2.0)
        flood_start = time.monotonic() - t0
        sockets: list[socket.socket] = []
        connect_failed = 0
        for _ in range(args.sockets):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(2.0)
            try:
                sock.connect((host, int(port)))
            except OSError:
                connect_failed += 1
                sock.close()
                continue
            sockets.append(sock)
        opened_s = time.monotonic() - t0 - flood_start
        time.sleep(args.hold_s)
        closed_by_server = 0
        for sock in sockets:
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed_by_server += 1
            except BlockingIOError:
                pass
            except OSError:
                closed_by_server += 1
        for sock in sockets:
            sock.close()
        flood_end = time.monotonic() - t0
        time.sleep(5.0)
        probing.set()
        prober.join(30)
        stop.set()
        child.join(60)
        print(f"flood: {args.sockets} sockets to kme-a ({len(sockets)} connected, "
              f"{connect_failed} failed to connect, opened in {opened_s:.2f} s), held "
              f"{args.hold_s:g} s; {closed_by_server} closed or reset by the server by then; "
              f"child open-file limit {args.file_limit}")
        for phase, low, high in (("before", 0.0, flood_start),
                                 ("during", flood_start, flood_end),
                                 ("after", flood_end, float("inf"))):
            for kme in ("kme-a", "kme-b"):
                rows = [r for r in results if r[1] == kme and low <= r[0] < high]
                ok = sorted(r[2] for r in rows if r[2] is not None)
                failed = [r[3] for r in rows if r[2] is None]
                worst = f"{ok[-1]:.3f}" if ok else "-"
                median = f"{ok[len(ok) // 2]:.3f}" if ok else "-"
                print(f"  {phase:6s} {kme}: {len(ok)}/{len(rows)} probes served, median "
                      f"{median} s, worst {worst} s"
                      + (f", failures {sorted(set(failed))}" if failed else ""))


if __name__ == "__main__":
    main()
