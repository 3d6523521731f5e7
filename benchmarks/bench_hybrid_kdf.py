"""Hybrid combiner throughput, one core: CatKDF/s, CasKDF stages/s, X-Wing ops/s.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_hybrid_kdf.py [--seconds 2] [--repeats 5] \
        [--core 1] [--format table|json]

Each row runs the operation in a loop for about ``--seconds`` per repeat and prints the
median rate over the repeats, by wall clock and by this process's CPU time (other jobs
on the machine lower the first, not the second). CatKDF runs twice: with short
transcripts (MA, MB of 65 bytes: two uncompressed P-256 points) and with X-Wing-sized
ones (a 1216-byte public key and a 1120-byte ciphertext), since hashing the transcript
is part of the cost, and once more as a hybrid session calls it (64 bytes out: the
session key and the key-confirmation key). ``--core N`` pins the process to core N.
Before timing, the script checks one CatKDF and one CasKDF stage
against the ETSI reference vectors, so it measures code that gives the right bytes.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from corridor.hybrid import kdf, xwing

TARGET_CATKDF_PER_S = 100_000
VECTORS = Path(__file__).parents[1] / "tests" / "hybrid" / "data" / "etsi103744_vectors.json"


def rate(operation: Callable[[], object], seconds: float, repeats: int) -> tuple[float, float]:
    """Median (calls/s by wall clock, calls/s by CPU time) over ``repeats`` runs."""
    batch = 1
    while True:  # size a batch to ~1/20 of the run so the clock is read rarely
        start = time.perf_counter()
        for _ in range(batch):
            operation()
        if time.perf_counter() - start > seconds / 20:
            break
        batch *= 2
    walls, cpus = [], []
    for _ in range(repeats):
        calls = 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < seconds:
            for _ in range(batch):
                operation()
            calls += batch
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        walls.append(calls / wall)
        cpus.append(calls / cpu)
    return statistics.median(walls), statistics.median(cpus)


def check_against_reference() -> None:
    data = json.loads(VECTORS.read_text())
    cat = data["catkdf"][1]
    fields = ("psk", "k1", "k2", "ma", "mb", "info", "label")
    key = kdf.catkdf(**{f: bytes.fromhex(cat[f]) for f in fields}, length=cat["length"],
                     hash=cat["hash"])
    stage = data["caskdf"][0]["stages"][0]
    chain, material = kdf.caskdf_stage(
        previous_chain=b"", **{f: bytes.fromhex(stage[f]) for f in
                               ("k", "ma", "mb", "info", "label")},
        chain_length=data["caskdf"][0]["chain_length"], length=stage["length"],
        hash=data["caskdf"][0]["hash"])
    if key.hex() != cat["key"] or (chain.hex(), material.hex()) != (stage["chain"],
                                                                    stage["key"]):
        raise SystemExit("the combiners disagree with the ETSI reference vectors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--core", type=int, default=None, help="pin this process to one core")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    check_against_reference()

    def header() -> str:
        return (f"# {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC, "
                f"{platform.processor() or platform.machine()}, Python "
                f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}, "
                f"core {args.core}, {args.seconds} s x {args.repeats}")

    qkd_key, ss = os.urandom(32), os.urandom(32)
    sk, pk = xwing.generate_keypair(os.urandom(32))
    _, ct = xwing.encapsulate(pk)
    seed = os.urandom(32)
    rows: list[tuple[str, Callable[[], object]]] = []
    for hash_name in kdf.HASHES:
        for what, ma, mb in (("65 B", os.urandom(65), os.urandom(65)),
                             ("X-Wing pk/ct", pk, ct)):
            rows.append((f"CatKDF {hash_name}, MA/MB {what}, 32 B out", functools.partial(
                kdf.catkdf, psk=b"", k1=qkd_key, k2=ss, ma=ma, mb=mb, info=b"corridor",
                label=b"hybrid", length=32, hash=hash_name)))
        if hash_name == "sha256":  # what a hybrid session derives: session + MAC key
            rows.append(("CatKDF sha256, MA/MB X-Wing pk/ct, 64 B out (a session's keys)",
                         lambda: kdf.catkdf(psk=qkd_key, k1=ss, k2=b"", ma=pk, mb=ct,
                                            info=b"corridor", label=b"hybrid", length=64)))
        rows.append((f"CasKDF stage {hash_name}, MA/MB X-Wing pk/ct, 32+32 B out",
                     functools.partial(
                         kdf.caskdf_stage, previous_chain=qkd_key, k=ss, ma=pk, mb=ct,
                         info=b"corridor", label=b"hybrid", chain_length=32, length=32,
                         hash=hash_name)))
    rows += [
        ("X-Wing keygen (from seed)", lambda: xwing.generate_keypair(seed)),
        ("X-Wing encaps", lambda: xwing.encapsulate(pk)),
        ("X-Wing decaps", lambda: xwing.decapsulate(sk, ct)),
    ]

    if args.format == "table":
        print(header())
        print("| operation | per s (wall) | per s (CPU) | us per call (CPU) |")
        print("|---|---:|---:|---:|")
    results = []
    for name, operation in rows:
        wall, cpu = rate(operation, args.seconds, args.repeats)
        results.append({"operation": name, "per_s_wall": wall, "per_s_cpu": cpu,
                        "us_per_call_cpu": 1e6 / cpu})
        if args.format == "table":
            print(f"| {name} | {wall:,.0f} | {cpu:,.0f} | {1e6 / cpu:.1f} |", flush=True)
    load = os.getloadavg()
    if args.format == "json":
        print(json.dumps({
            "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "load_average": [round(x, 2) for x in load], "pinned_core": args.core,
            "python": platform.python_version(), "seconds": args.seconds,
            "repeats": args.repeats, "rows": results,
            "target_catkdf_per_s": TARGET_CATKDF_PER_S}, indent=2))
    else:
        print(f"# target: CatKDF >= {TARGET_CATKDF_PER_S:,}/s per core; load average at "
              f"the end {load[0]:.2f}")


if __name__ == "__main__":
    main()
