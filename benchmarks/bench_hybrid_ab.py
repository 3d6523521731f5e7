"""Before/after comparison of corridor.hybrid on a shared machine: handshakes and CatKDF
of two source trees, measured in alternation on one core.

On a machine where other jobs come and go, two benchmark runs minutes apart differ by
more than most changes do. This script starts one worker process per source tree (its
``PYTHONPATH``), both pinned to the same core, and asks them in turn for short rounds of
the same work; each figure is the best round of its tree, so both trees get the same
chances at a quiet core.

Work (``--modes``):
- ``prefetched``: handshakes with a QKD key that both sides already hold (what keys
  fetched ahead in batches give; the fetch itself is in bench_hybrid_session.py);
- ``no_qkd``: handshakes under policy ``any`` with no KME (X-Wing + CatKDF alone);
- ``catkdf``: CatKDF-SHA256 with 65-byte MA/MB, 32 bytes out (bench_hybrid_kdf.py's
  first row); ``catkdf_session``: with X-Wing-sized MA/MB and 64 bytes out, as a
  session calls it.

Only the API that both trees have is used (Initiator, Responder, memory_pair, catkdf).

    mkdir /tmp/before && git archive <commit> src | tar -x -C /tmp/before
    PYTHONPATH=src .venv/bin/python benchmarks/bench_hybrid_ab.py --before /tmp/before/src \\
        [--after src] [--core 1] [--rounds 15] [--round-seconds 0.4] [--format table|json]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

MODES = ("prefetched", "no_qkd", "catkdf", "catkdf_session")


def worker() -> None:
    """Answer "mode seconds" lines with one JSON line of measurements each."""
    from corridor.hybrid.kdf import catkdf
    from corridor.hybrid.session import Initiator, Responder
    from corridor.hybrid.transport import memory_pair
    from corridor.kms.interface import DeliveredKey

    logging.disable(logging.WARNING)  # policy "any" without a KME warns every handshake

    class HeldKeys:
        """QKD keys both sides already hold, by ID (a prefetched batch)."""

        key_size_bits = 256

        def __init__(self) -> None:
            self.queue: collections.deque[DeliveredKey] = collections.deque()
            self.by_id: dict[str, DeliveredKey] = {}

        def fill(self, count: int) -> None:
            for _ in range(count):
                key = DeliveredKey(str(uuid.uuid4()), os.urandom(32))
                self.queue.append(key)
                self.by_id[key.key_id] = key

        def new_key(self, slave_sae_id: str) -> DeliveredKey:
            return self.queue.popleft()

        def key_by_id(self, master_sae_id: str, key_id: str) -> DeliveredKey:
            return self.by_id.pop(key_id)

    held = HeldKeys()
    sessions = {
        "prefetched": (Initiator("sae-a", "sae-b", "both-required", qkd=held),
                       Responder("sae-b", {"sae-a": "both-required"}, qkd=held)),
        "no_qkd": (Initiator("sae-a", "sae-b", "any", qkd=None),
                   Responder("sae-b", {"sae-a": "any"}, qkd=None)),
    }
    ends: dict[str, tuple[Any, Any, int]] = {}
    for name, (initiator, responder) in sessions.items():
        a, b = memory_pair(timeout_s=30.0)
        thread = threading.Thread(
            target=lambda r=responder, t=b: r.serve(t, lambda key: key.wipe(),
                                                    stop_on_error=True), daemon=True)
        thread.start()
        assert thread.ident is not None
        ends[name] = (initiator, a, time.pthread_getcpuclockid(thread.ident))
    secret, ma65, mb65 = os.urandom(32), os.urandom(65), os.urandom(65)
    ma, mb = os.urandom(1216 + 200), os.urandom(1120 + 60)  # HELLO and REPLY sizes
    kdfs = {
        "catkdf": lambda: catkdf(psk=b"", k1=secret, k2=secret, ma=ma65, mb=mb65,
                                 info=b"corridor", label=b"hybrid", length=32),
        "catkdf_session": lambda: catkdf(psk=secret, k1=secret, k2=b"", ma=ma, mb=mb,
                                         info=b"corridor", label=b"hybrid", length=64),
    }
    for line in sys.stdin:
        mode, seconds_text = line.split()
        seconds = float(seconds_text)
        if mode in kdfs:
            work, calls = kdfs[mode], 0
            cpu0 = time.thread_time()
            while (spent := time.thread_time() - cpu0) < seconds:
                for _ in range(200):
                    work()
                calls += 200
            print(json.dumps({"per_s": calls / spent, "cpu_us": 1e6 * spent / calls}),
                  flush=True)
            continue
        initiator, transport, responder_clock = ends[mode]
        held.fill(int(seconds * 20_000) if mode == "prefetched" else 0)
        for _ in range(5):
            initiator.handshake(transport).wipe()
        count = 0
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        responder0, process0 = time.clock_gettime(responder_clock), time.process_time()
        while (elapsed := time.perf_counter() - wall0) < seconds:
            initiator.handshake(transport).wipe()
            count += 1
        print(json.dumps({
            "per_s": count / elapsed,
            "initiator_cpu_us": 1e6 * (time.thread_time() - cpu0) / count,
            "responder_cpu_us": 1e6 * (time.clock_gettime(responder_clock) - responder0)
            / count,
            "process_cpu_us": 1e6 * (time.process_time() - process0) / count}), flush=True)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    trees = {"before": str(Path(args.before).resolve()),
             "after": str(Path(args.after).resolve())}
    pin = ["taskset", "-c", str(args.core)] if args.core is not None else []
    workers = {
        name: subprocess.Popen([*pin, sys.executable, __file__, "--worker"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": tree})
        for name, tree in trees.items()}
    best: dict[str, dict[str, dict[str, float]]] = {mode: {} for mode in args.modes}
    try:
        for _ in range(args.rounds):
            for mode in args.modes:
                for name, process in workers.items():
                    assert process.stdin is not None and process.stdout is not None
                    process.stdin.write(f"{mode} {args.round_seconds}\n")
                    process.stdin.flush()
                    result = json.loads(process.stdout.readline())
                    if result["per_s"] > best[mode].get(name, {"per_s": 0.0})["per_s"]:
                        best[mode][name] = result
    finally:
        for process in workers.values():
            assert process.stdin is not None
            process.stdin.close()
            process.wait(timeout=30)
    return {"date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "pinned_core": args.core, "rounds": args.rounds,
            "round_seconds": args.round_seconds, "trees": trees, "best": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--before", help="the src/ directory of the earlier tree")
    parser.add_argument("--after", default=str(Path(__file__).parents[1] / "src"))
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--round-seconds", type=float, default=0.4)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    if args.worker:
        worker()
        return
    if args.before is None:
        parser.error("--before is required")
    result = compare(args)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return
    print(f"# {result['date_utc']}, load average {result['load_average']} (at the end), "
          f"core {args.core}, best of {args.rounds} rounds of {args.round_seconds} s each")
    print("| work | before | after | after / before |")
    print("|---|---:|---:|---:|")
    for mode, by_tree in result["best"].items():
        before, after = by_tree["before"], by_tree["after"]
        unit = "handshakes/s (pair)" if "process_cpu_us" in before else "calls/s"
        print(f"| {mode}: {unit} | {before['per_s']:,.0f} | {after['per_s']:,.0f} | "
              f"{after['per_s'] / before['per_s']:.2f} |")
        for side in ("initiator_cpu_us", "responder_cpu_us", "process_cpu_us"):
            if side in before:
                print(f"| {mode}: {side.replace('_', ' ')} | {before[side]:.0f} | "
                      f"{after[side]:.0f} | {after[side] / before[side]:.2f} |")


if __name__ == "__main__":
    main()
