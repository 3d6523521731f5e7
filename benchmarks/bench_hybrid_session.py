"""Hybrid handshakes per second (QKD key + X-Wing, CatKDF, key confirmation), and the
cost split (ML-KEM, X25519, KDF, fetch).

Two KMEs on 127.0.0.1 over mutual TLS (tests/kms/mtls_harness.py, SQLite stores), both
SAEs of the session in this process (two threads joined by an in-memory transport), so
one handshake costs both sides' work: the figures are handshakes per second for the
pair, on the cores this process gets (pin it with taskset for "per core").

Modes:
- ``fetch``: every handshake fetches its QKD key over mutual TLS, ``enc_keys`` (1 key)
  at the master's KME and ``dec_keys`` (1 ID) at the slave's;
- ``batched``: keys fetched ahead in batches of ``--batch`` (one ``enc_keys`` with
  number=N at the master, one ``dec_keys`` with those N IDs at the slave, both counted
  in the time).

Run: PYTHONPATH=src:. python benchmarks/bench_hybrid_session.py [--seconds 5] [--batch 128]
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from tests.kms.mtls_harness import two_kme_deployment

from corridor.hybrid import xwing
from corridor.hybrid.qkd import KmeQkdKeys
from corridor.hybrid.session import Initiator, Responder, derive_keys, session_info
from corridor.hybrid.transport import memory_pair

A, B = "sae-a", "sae-b"


def rate(work: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``work`` over about ``seconds``."""
    work()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        work()
        count += 1
    return count / elapsed


def handshakes(initiator: Initiator, responder: Responder, seconds: float,
               before: Callable[[], None] | None = None) -> tuple[int, float]:
    a, b = memory_pair(timeout_s=30.0)
    done = threading.Event()

    def serve() -> None:
        responder.serve(b, lambda key: key.wipe(), stop_on_error=True)
        done.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        if before is not None:
            before()
        initiator.handshake(a).wipe()
        count += 1
    a.close()
    thread.join(timeout=10)
    return count, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the pqc-only run warns once per handshake
    print(f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}, load average "
          f"{os.getloadavg()[0]:.2f}, cpus available {len(os.sched_getaffinity(0))}")
    with tempfile.TemporaryDirectory() as root, two_kme_deployment(Path(root)) as deployment:
        for _ in range(40):
            deployment.ingest(1 << 20)  # 1 MiB blocks: ~80k keys of 256 bits per side
        with deployment.client(A) as client_a, deployment.client(B) as client_b:
            qkd_a, qkd_b = KmeQkdKeys(client_a), KmeQkdKeys(client_b)
            initiator = Initiator(A, B, "both-required", qkd=qkd_a)
            responder = Responder(B, {A: "both-required"}, qkd=qkd_b)
            count, elapsed = handshakes(initiator, responder, args.seconds)
            print(f"fetch over mutual TLS (1 enc_keys + 1 dec_keys per handshake): "
                  f"{count / elapsed:,.0f} handshakes/s ({count} in {elapsed:.1f} s)")

            batched_a = KmeQkdKeys(client_a, batch_size=args.batch)

            def prefetch() -> None:
                # Refill both sides together: the master's batch, then the slave's by ID.
                if batched_a.held_keys == 0:
                    keys = [batched_a.new_key(B)]
                    keys += [batched_a.new_key(B) for _ in range(batched_a.held_keys)]
                    qkd_b.prefetch_ids(A, [k.key_id for k in keys])
                    batched_a._ahead[B].extend(keys)  # hand them out again, in order

            batched = Initiator(A, B, "both-required", qkd=batched_a)
            count, elapsed = handshakes(batched, responder, args.seconds, prefetch)
            print(f"keys fetched ahead in batches of {args.batch}: "
                  f"{count / elapsed:,.0f} handshakes/s ({count} in {elapsed:.1f} s)")
            print("without QKD (pqc-only, the handshake alone): ", end="")
            pqc_i = Initiator(A, B, "any", qkd=None)
            pqc_r = Responder(B, {A: "any"}, qkd=None)
            count, elapsed = handshakes(pqc_i, pqc_r, args.seconds)
            print(f"{count / elapsed:,.0f} handshakes/s")

            fetch_rate = rate(lambda: qkd_b.key_by_id(A, qkd_a.new_key(B).key_id),
                              args.seconds)
        # Cost split per handshake (both sides' work).
        seconds = args.seconds / 2
        mlkem_keygen = rate(mlkem.MLKEM768PrivateKey.generate, seconds)
        sk = mlkem.MLKEM768PrivateKey.generate()
        pk = sk.public_key()
        mlkem_encaps = rate(pk.encapsulate, seconds)
        _, ct = pk.encapsulate()
        mlkem_decaps = rate(lambda: sk.decapsulate(ct), seconds)
        x_gen = rate(x25519.X25519PrivateKey.generate, seconds)
        xa, xb = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
        xb_pub = xb.public_key()
        x_dh = rate(lambda: xa.exchange(xb_pub), seconds)
        seed = os.urandom(32)
        xw_keygen = rate(lambda: xwing.generate_keypair(os.urandom(32)), seconds)
        xsk, xpk = xwing.generate_keypair(seed)
        xw_encaps = rate(lambda: xwing.encapsulate(xpk), seconds)
        _, xct = xwing.encapsulate(xpk)
        xw_decaps = rate(lambda: xwing.decapsulate(xsk, xct), seconds)
        info = session_info(A, B, "0" * 36, "both-required")
        ma, mb = os.urandom(1300), os.urandom(1200)
        kdf = rate(lambda: derive_keys(pqc_secret=os.urandom(32), qkd_key=os.urandom(32),
                                       ma=ma, mb=mb, info=info, session_key_bytes=32), seconds)

        def us(per_second: float) -> float:
            return 1e6 / per_second

        # X-Wing = ML-KEM-768 + X25519: its keygen expands the seed and derives both key
        # pairs, encaps runs ML-KEM encaps + one X25519 keygen + 2 exchanges' worth, decaps
        # re-expands the seed (ML-KEM keygen + X25519 keygen) then decapsulates.
        mlkem_us = us(mlkem_keygen) + us(mlkem_encaps) + us(mlkem_decaps)
        x25519_us = 2 * us(x_gen) + 2 * us(x_dh)
        print("cost split per handshake (microseconds, this process):")
        print(f"  X-Wing keygen {us(xw_keygen):.0f}, encaps {us(xw_encaps):.0f}, decaps "
              f"{us(xw_decaps):.0f}: total {us(xw_keygen) + us(xw_encaps) + us(xw_decaps):.0f}")
        print(f"  of which ML-KEM-768 (keygen+encaps+decaps, pyca) ~{mlkem_us:.0f}, X25519 "
              f"(2 keygen + 2 exchanges) ~{x25519_us:.0f}")
        print(f"  CatKDF + split (both sides: x2) {2 * us(kdf):.0f}")
        print(f"  QKD key fetch over mutual TLS (enc_keys + dec_keys) {us(fetch_rate):.0f}")


if __name__ == "__main__":
    main()
