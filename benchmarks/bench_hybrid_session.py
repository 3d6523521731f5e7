"""Hybrid handshakes per second (QKD key + X-Wing, CatKDF, key confirmation) and where
the time of one handshake goes (ML-KEM, X25519, KDF, confirmation MAC, message coding,
fetch).

Two KMEs on 127.0.0.1 over mutual TLS (tests/kms/mtls_harness.py, SQLite stores), both
SAEs of the session in this process (two threads joined by an in-memory transport), so
one handshake costs both sides' work. ``--core N`` pins the whole process (both SAEs and
both KME servers) to core N: the "handshakes/s" column is then the pair's rate on one
core. Each SAE's own CPU time per handshake (its thread's, ``time.thread_time``) is
measured too: in a deployment the two SAEs run on different hosts, so ``1e6 / cpu_us``
of one side is what one core of that side sustains.

Modes:
- ``fetch``: every handshake fetches its QKD key over mutual TLS, ``enc_keys`` (1 key)
  at the master's KME and ``dec_keys`` (1 ID) at the slave's (the fetch's share: this
  mode's CPU and wall time per handshake minus ``held``'s; one fetch timed on its own is
  printed too);
- ``batched``: keys fetched ahead in batches of ``--batch`` (one ``enc_keys`` with
  number=N at the master, one ``dec_keys`` with those N IDs at the slave), the fetch
  counted in the time and reported per handshake;
- ``held``: a QKD key that both sides already hold (the handshake alone with all its
  inputs: what ``batched`` costs without its fetch);
- ``no_qkd``: policy ``any`` with no KME (X-Wing + CatKDF, no QKD key).

``held`` and ``no_qkd`` run first, before the KMEs start in this process.

The cost split times each piece of a handshake on its own with the handshake's inputs
(both sides' share: one X-Wing keygen, encaps and decaps; two CatKDFs; two transcript
hashes and four MACs; each message encoded once and decoded once) and compares the sum
with the measured CPU time of the pair; ``other`` is the rest (policy decisions, session
records, the transport and the thread hand-offs).

    PYTHONPATH=src:. .venv/bin/python benchmarks/bench_hybrid_session.py \\
        [--seconds 3] [--rounds 5] [--batch 128] [--core 1] [--format table|json]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cryptography
from cryptography.hazmat.backends.openssl.backend import backend as openssl_backend
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from tests.kms.mtls_harness import two_kme_deployment

from corridor.hybrid import messages, session
from corridor.hybrid.qkd import KmeQkdKeys
from corridor.hybrid.session import Initiator, Responder, derive_keys, session_info
from corridor.hybrid.suites import SUITE_XWING, SUITES
from corridor.hybrid.transport import memory_pair
from corridor.kms.client import SaeClient
from corridor.kms.interface import DeliveredKey
from corridor.randomness import RandomSource

A, B = "sae-a", "sae-b"
TARGET_PREFETCHED_PER_S = 5_000
TARGET_FETCH_PER_S = 1_000


class PrefetchedKeys:
    """The master's QKD keys fetched ahead: one ``enc_keys`` of ``batch`` keys at A's
    KME, then one ``dec_keys`` of their IDs at B's (``slave.prefetch_ids``), so both
    sides hold the same keys; the time spent refilling is kept for the cost split."""

    key_size_bits = 256

    def __init__(self, master: SaeClient, slave: KmeQkdKeys, batch: int) -> None:
        self.master, self.slave, self.batch = master, slave, batch
        self.keys: collections.deque[DeliveredKey] = collections.deque()
        self.refill_wall_s = 0.0
        self.refill_cpu_s = 0.0

    def new_key(self, slave_sae_id: str) -> DeliveredKey:
        if not self.keys:
            wall, cpu = time.perf_counter(), time.process_time()
            keys = self.master.get_key(slave_sae_id, number=self.batch, size=256)
            self.slave.prefetch_ids(A, [key.key_id for key in keys])
            self.keys.extend(keys)
            self.refill_wall_s += time.perf_counter() - wall
            # process CPU: the client's work and both KME servers' (threads here)
            self.refill_cpu_s += time.process_time() - cpu
        return self.keys.popleft()

    def key_by_id(self, master_sae_id: str, key_id: str) -> DeliveredKey:
        raise NotImplementedError("the master side never looks keys up by ID")


class HeldKeys:
    """QKD keys that both sides already hold, by ID (what a prefetched batch gives),
    without a KME: the handshake's own cost with a QKD key."""

    key_size_bits = 256

    def __init__(self) -> None:
        self.queue: collections.deque[DeliveredKey] = collections.deque()
        self.by_id: dict[str, DeliveredKey] = {}

    def fill(self, count: int) -> None:
        """Hold at least ``count`` keys."""
        for _ in range(count - len(self.queue)):
            key = DeliveredKey(str(uuid.uuid4()), os.urandom(32))
            self.queue.append(key)
            self.by_id[key.key_id] = key

    def new_key(self, slave_sae_id: str) -> DeliveredKey:
        return self.queue.popleft()

    def key_by_id(self, master_sae_id: str, key_id: str) -> DeliveredKey:
        return self.by_id.pop(key_id)


def run_handshakes(initiator: Initiator, responder: Responder, seconds: float,
                   rounds: int,
                   before_round: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Handshakes for about ``seconds`` in ``rounds`` rounds: the pair's rate, each
    side's CPU per handshake (its thread's clock) and the process's (which includes the
    KME servers when they run here). The figures are those of the best round (the least
    disturbed by other jobs on the core); ``rounds`` keeps them all. ``before_round(n)``
    prepares for up to ``n`` handshakes, outside the clocks."""
    a, b = memory_pair(timeout_s=30.0)
    thread = threading.Thread(
        target=lambda: responder.serve(b, lambda key: key.wipe(), stop_on_error=True),
        daemon=True)
    thread.start()
    most = int(20_000 * seconds / rounds) + 20  # more handshakes than a round can run
    if before_round is not None:
        before_round(most)
    for _ in range(20):  # warm-up, outside the clocks
        initiator.handshake(a).wipe()
    assert thread.ident is not None
    responder_clock = time.pthread_getcpuclockid(thread.ident)
    results = []
    for _ in range(rounds):
        if before_round is not None:
            before_round(most)
        count = 0
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        responder0, process0 = time.clock_gettime(responder_clock), time.process_time()
        while (elapsed := time.perf_counter() - wall0) < seconds / rounds:
            initiator.handshake(a).wipe()
            count += 1
        # The responder has answered the last CONFIRM before the initiator returns.
        results.append({
            "handshakes": count, "seconds": elapsed, "per_s": count / elapsed,
            "initiator_cpu_us": 1e6 * (time.thread_time() - cpu0) / count,
            "responder_cpu_us": 1e6 * (time.clock_gettime(responder_clock) - responder0)
            / count,
            "process_cpu_us": 1e6 * (time.process_time() - process0) / count})
    a.close()
    thread.join(timeout=10)
    best = max(results, key=lambda r: r["per_s"])
    return {**best, "median_per_s": statistics.median(r["per_s"] for r in results),
            "rounds": results}


def per_call_us(work: Callable[[], object], seconds: float, repeats: int = 9) -> float:
    """CPU microseconds per call of ``work`` (this thread's CPU time), the best of
    ``repeats`` runs, as for the handshakes."""
    batch = 1
    while True:
        start = time.thread_time()
        for _ in range(batch):
            work()
        if time.thread_time() - start > seconds / repeats / 10:
            break
        batch *= 2
    samples = []
    for _ in range(repeats):
        calls, start = 0, time.thread_time()
        while (spent := time.thread_time() - start) < seconds / repeats:
            for _ in range(batch):
                work()
            calls += batch
        samples.append(1e6 * spent / calls)
    return min(samples)


def cost_split(seconds: float) -> dict[str, float]:
    """Microseconds per handshake (both sides) of each piece, timed on its own."""
    rng = RandomSource.system()
    suite = SUITES[SUITE_XWING]
    seed = os.urandom(64)
    kem = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)
    kem_pk_bytes = kem.public_key().public_bytes_raw()
    kem_pk = mlkem.MLKEM768PublicKey.from_public_bytes(kem_pk_bytes)
    _, kem_ct = kem_pk.encapsulate()
    x_secret = os.urandom(32)
    x_key = x25519.X25519PrivateKey.from_private_bytes(x_secret)
    x_pk_bytes = x_key.public_key().public_bytes_raw()
    x_pk = x25519.X25519PublicKey.from_public_bytes(x_pk_bytes)
    private, pk1, pk2 = suite.keygen(rng)
    secret, ct1, ct2 = suite.encapsulate(pk1, pk2, rng)
    key_id = "5f8c3a1e-6c1b-4f53-9d8e-0123456789ab"
    hello = messages.Hello(os.urandom(16), 0, A, B, "both-required", SUITE_XWING, key_id, "",
                           pk1, pk2)
    reply = messages.Reply(hello.session_id, 0, key_id, "", ct1, ct2)
    confirm = messages.Confirm(hello.session_id, 0, "initiator", os.urandom(32))
    ma, mb, mc = hello.encode(), reply.encode(), confirm.encode()
    qkd_key, confirm_key = os.urandom(32), os.urandom(32)
    transcript = session._transcript_hashes(ma, mb)

    def kdf() -> None:
        derive_keys(pqc_secret=secret, qkd_key=qkd_key, ma=ma, mb=mb,
                    info=session_info(A, B, key_id, "both-required"), session_key_bytes=32)

    def t(work: Callable[[], object]) -> float:
        return per_call_us(work, seconds)

    mlkem_us = (t(lambda: mlkem.MLKEM768PrivateKey.from_seed_bytes(seed))  # keygen
                + t(lambda: kem.public_key().public_bytes_raw())  # its public key
                + t(lambda: mlkem.MLKEM768PublicKey.from_public_bytes(kem_pk_bytes))
                + t(kem_pk.encapsulate) + t(lambda: kem.decapsulate(kem_ct)))
    x25519_us = 2 * (t(lambda: x25519.X25519PrivateKey.from_private_bytes(x_secret))
                     + t(lambda: x_key.public_key().public_bytes_raw())
                     + t(lambda: x25519.X25519PublicKey.from_public_bytes(x_pk_bytes))
                     + t(lambda: x_key.exchange(x_pk)))
    xwing_us = (t(lambda: suite.keygen(rng)) + t(lambda: suite.encapsulate(pk1, pk2, rng))
                + t(lambda: suite.decapsulate(private, ct1, ct2)))
    return {
        "mlkem768": mlkem_us,
        "x25519": x25519_us,
        # SHAKE256 seed expansion, the SHA3-256 combiner, splitting, checks
        "xwing_glue": xwing_us - mlkem_us - x25519_us,
        "kdf": 2 * t(kdf),
        # each side hashes the transcript once and computes two MACs (its own, the peer's)
        "confirmation_mac": 2 * t(lambda: session._transcript_hashes(ma, mb))
        + 4 * t(lambda: session._role_mac(confirm_key, "initiator", transcript)),
        "message_coding": (t(hello.encode) + t(lambda: messages.decode(ma))
                           + t(reply.encode) + t(lambda: messages.decode(mb))
                           + 2 * (t(confirm.encode) + t(lambda: messages.decode(mc)))),
    }


@contextmanager
def kmes(root: Path) -> Iterator[tuple[SaeClient, SaeClient]]:
    with two_kme_deployment(root) as deployment:
        for _ in range(40):
            deployment.ingest(1 << 20)  # 1 MiB blocks: ~80k keys of 256 bits per side
        with deployment.client(A) as client_a, deployment.client(B) as client_b:
            yield client_a, client_b


def measure(args: argparse.Namespace) -> dict[str, Any]:
    modes: dict[str, dict[str, Any]] = {}
    # First the handshake alone, in a process that holds nothing else: once the KMEs run
    # here, their threads and their heap (which every garbage collection walks) weigh
    # on the SAEs too, which a deployment (KMEs in their own processes) does not have.
    held = HeldKeys()
    modes["held"] = run_handshakes(Initiator(A, B, "both-required", qkd=held),
                                   Responder(B, {A: "both-required"}, qkd=held),
                                   args.seconds, args.rounds, before_round=held.fill)
    logging.disable(logging.WARNING)  # policy "any" without a KME warns every handshake
    modes["no_qkd"] = run_handshakes(Initiator(A, B, "any", qkd=None),
                                     Responder(B, {A: "any"}, qkd=None), args.seconds,
                                     args.rounds)
    logging.disable(logging.NOTSET)
    split = cost_split(args.seconds / 2)
    split["crypto_and_coding"] = sum(split.values())

    with tempfile.TemporaryDirectory() as root, kmes(Path(root)) as (client_a, client_b):
        qkd_b = KmeQkdKeys(client_b)
        responder = Responder(B, {A: "both-required"}, qkd=qkd_b)
        initiator = Initiator(A, B, "both-required", qkd=KmeQkdKeys(client_a))
        fetch = run_handshakes(initiator, responder, args.seconds, args.rounds)
        # One fetch on its own (enc_keys at A's KME, then dec_keys at B's), in sequence.
        qkd_a, count = KmeQkdKeys(client_a), 0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        while time.perf_counter() - wall0 < args.seconds / 2 or count < 10:
            qkd_b.key_by_id(A, qkd_a.new_key(B).key_id)
            count += 1
        fetch["alone_fetch_wall_us"] = 1e6 * (time.perf_counter() - wall0) / count
        fetch["alone_fetch_cpu_us"] = 1e6 * (time.process_time() - cpu0) / count
        # What the fetch adds to a handshake: this mode against the same handshake with
        # the key already held.
        fetch["fetch_cpu_us"] = fetch["process_cpu_us"] - modes["held"]["process_cpu_us"]
        fetch["fetch_wall_us"] = 1e6 / fetch["per_s"] - 1e6 / modes["held"]["per_s"]
        modes["fetch"] = fetch

        ahead = PrefetchedKeys(client_a, qkd_b, args.batch)
        batched = run_handshakes(Initiator(A, B, "both-required", qkd=ahead), responder,
                                 args.seconds, args.rounds)
        used = sum(r["handshakes"] for r in batched["rounds"]) + 20  # with the warm-up's
        batched["fetch_wall_us"] = 1e6 * ahead.refill_wall_s / used
        batched["fetch_cpu_us"] = 1e6 * ahead.refill_cpu_s / used
        modes["batched"] = batched
    load = os.getloadavg()
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
        "load_average": [round(x, 2) for x in load],
        "cores_available": len(os.sched_getaffinity(0)),
        "pinned_core": args.core,
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "openssl": openssl_backend.openssl_version_text(),
        "seconds_per_mode": args.seconds,
        "rounds": args.rounds,
        "batch": args.batch,
        "modes": modes,
        "split_us_per_handshake": split,
        "targets_per_s": {"batched": TARGET_PREFETCHED_PER_S, "fetch": TARGET_FETCH_PER_S},
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"# {result['date_utc']}, load average {result['load_average']}, "
          f"core {result['pinned_core']}, Python {result['python']}, cryptography "
          f"{result['cryptography']} ({result['openssl']}), {result['seconds_per_mode']} s "
          f"per mode in {result['rounds']} rounds (best round shown), batch {result['batch']}")
    print("| mode | handshakes/s (pair, wall) | initiator CPU us | responder CPU us "
          "| process CPU us | target |")
    print("|---|---:|---:|---:|---:|---:|")
    targets, modes = result["targets_per_s"], result["modes"]
    for name, mode in modes.items():
        target = f">= {targets[name]:,}" if name in targets else "-"
        print(f"| {name} | {mode['per_s']:,.0f} | {mode['initiator_cpu_us']:.0f} | "
              f"{mode['responder_cpu_us']:.0f} | {mode['process_cpu_us']:.0f} | {target} |")
    split = result["split_us_per_handshake"]
    print("\nCost split per handshake, both sides (CPU microseconds, each piece timed on "
          "its own):")
    print("| piece | us |")
    print("|---|---:|")
    for name, us in split.items():
        print(f"| {name} | {us:.1f} |")
    print("\nPer mode (microseconds per handshake; fetch CPU: the client's and both KME "
          "servers', all in this process):")
    print("| mode | measured (process CPU) | pieces above | fetch (CPU) | fetch (wall) "
          "| other (measured - pieces - fetch) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, mode in modes.items():
        fetch_cpu = mode.get("fetch_cpu_us", 0.0)
        other = mode["process_cpu_us"] - split["crypto_and_coding"] - fetch_cpu
        print(f"| {name} | {mode['process_cpu_us']:.0f} | {split['crypto_and_coding']:.0f} "
              f"| {fetch_cpu:.0f} | {mode.get('fetch_wall_us', 0.0):.0f} | {other:.0f} |")
    fetch = modes["fetch"]
    print(f"\nfetch: what it adds to a handshake against held (above); one fetch timed on "
          f"its own (enc_keys, then dec_keys): {fetch['alone_fetch_wall_us']:.0f} us wall, "
          f"{fetch['alone_fetch_cpu_us']:.0f} us CPU. batched: the refills timed as they "
          f"happen, per handshake.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds per mode; the best one is reported")
    parser.add_argument("--core", type=int, default=None,
                        help="pin this process (SAEs and KMEs) to one core")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    args = parser.parse_args()
    if args.core is not None:
        os.sched_setaffinity(0, {args.core})
    result = measure(args)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
