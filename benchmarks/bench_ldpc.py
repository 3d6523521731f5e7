"""Benchmark of LDPC reconciliation (corridor.distill.ldpc), Cascade biconf beside it.

For each QBER, the same seeded key pairs (independent Bernoulli(QBER) errors) are
reconciled by LDPC and by Cascade "biconf", Alice and Bob in two threads of one
process pinned to one core, over the in-process channel. Printed per method:

- f = disclosed / (n H2(QBER)) over all key bits (nominal QBER), with every counted
  bit: syndromes less the punctured credit, revealed bits and Bob's flags for LDPC;
  parities for Cascade;
- FER: LDPC frames that did not decode from the syndrome alone ("first"), frames
  dropped after the blind retries ("after"), and frames kept but still different
  from Alice's ("resid", what verification must catch); for Cascade frames that
  differ after it finished;
- Mbit/s of sifted key per core, from the process CPU time of both parties
  (encode + decode + protocol; on a quiet machine wall and CPU agree), and wall;
- messages and round trips per call;
- LDPC: Bob's decoder sweeps per frame (all rounds; a count, the same on any machine)
  and CPU nanoseconds per edge per sweep (the cost of one sweep, what load inflates).

Code construction is not timed (it is cached on disk; its time is printed once).

With ``--decoders fast,reference`` both of Bob's decoders run on the same key pairs in
the same process (ratios between them survive a loaded machine better than absolute
figures); ``--targeted 0,16`` likewise runs blind retries only beside targeted ones.
Variants are labelled decoder and targeted_max_checks ("fas-t16").

Run:  .venv/bin/python benchmarks/bench_ldpc.py [--bits 4000000] [--call-bits 4000000]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from corridor.distill import cascade, ldpc
from corridor.distill.channel import in_process_pair
from corridor.distill.ldpc_codes import get_code
from corridor.link.rates import binary_entropy
from corridor.randomness import RandomSource

#: A loaded machine can take minutes for one decoding round; the default channel
#: timeout (120 s) would end the run.
TIMEOUT_S = 3600.0


@dataclass
class Point:
    """Figures of one (method, QBER)."""

    method: str
    qber: float
    bits: int = 0
    frames: int = 0
    first_failures: int = 0
    dropped: int = 0
    residual: int = 0
    disclosed_bits: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    messages: int = 0
    round_trips: int = 0
    calls: int = 0
    sweeps: int = 0
    edges: int = 0
    detail: str = ""

    @property
    def efficiency(self) -> float:
        return self.disclosed_bits / (self.bits * binary_entropy(self.qber))


def key_pair(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    alice = rng.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (rng.random(n) < qber).astype(np.uint8)


def run_pair(alice_call: object, bob_call: object) -> tuple[object, object, float, float]:
    """Run the two parties in two threads; (alice result, bob result, wall s, cpu s)."""
    out: dict[str, object] = {}
    failure: list[BaseException] = []

    def alice() -> None:
        try:
            out["alice"] = alice_call()  # type: ignore[operator]
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=alice)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    thread.start()
    bob = bob_call()  # type: ignore[operator]
    thread.join()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if failure:
        raise failure[0]
    return out["alice"], bob, wall, cpu


def ldpc_once(a: np.ndarray, b: np.ndarray, qber: float, settings: ldpc.LdpcSettings,
              seed: int, point: Point) -> None:
    a_end, b_end = in_process_pair()
    ra, rb, wall, cpu = run_pair(
        lambda: ldpc.reconcile_alice(a_end, a, qber_estimate=qber,
                                     rng=RandomSource.seeded(seed), settings=settings,
                                     timeout_s=TIMEOUT_S),
        lambda: ldpc.reconcile_bob(b_end, b, qber_estimate=qber, settings=settings,
                                   timeout_s=TIMEOUT_S))
    assert isinstance(ra, ldpc.LdpcReconciliationResult)
    assert isinstance(rb, ldpc.LdpcReconciliationResult)
    point.bits += a.size
    point.frames += rb.frames
    point.first_failures += rb.first_round_failures
    point.dropped += rb.dropped_frames
    if ra.bits.size == rb.bits.size:
        k = rb.frame_bits
        diff = ra.bits != rb.bits
        point.residual += int(np.count_nonzero(
            [diff[i:i + k].any() for i in range(0, diff.size, max(k, 1))]))
    else:
        raise AssertionError("parties kept different lengths")
    point.disclosed_bits += rb.disclosed_bits
    point.wall_s += wall
    point.cpu_s += cpu
    point.messages += rb.messages
    point.round_trips += rb.round_trips
    point.calls += 1
    point.sweeps += rb.decoder_sweeps
    point.edges = get_code(rb.distribution, rb.code_bits, settings.code_seed).edges
    point.detail = (f"{rb.distribution} n={rb.code_bits} K={rb.frame_bits} "
                    f"p={rb.punctured_bits} s={rb.shortened_bits}")


def cascade_once(a: np.ndarray, b: np.ndarray, qber: float, frame_bits: int, seed: int,
                 point: Point) -> None:
    a_end, b_end = in_process_pair()
    _, rb, wall, cpu = run_pair(
        lambda: cascade.reconcile_alice(a_end, a, variant="biconf", qber_estimate=qber,
                                        shuffle_seed=seed, frame_bits=frame_bits),
        lambda: cascade.reconcile_bob(b_end, b, variant="biconf", qber_estimate=qber,
                                      shuffle_seed=seed, frame_bits=frame_bits))
    assert isinstance(rb, cascade.ReconciliationResult)
    point.bits += a.size
    point.frames += rb.frames
    diff = (rb.bits != a)
    point.residual += int(np.count_nonzero(
        [diff[i:i + rb.frame_bits].any() for i in range(0, diff.size, rb.frame_bits)]))
    point.disclosed_bits += rb.disclosed_bits
    point.wall_s += wall
    point.cpu_s += cpu
    point.messages += rb.messages
    point.round_trips += rb.round_trips
    point.calls += 1
    point.detail = f"frame {rb.frame_bits}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bits", type=int, default=4_000_000, help="key bits per QBER")
    parser.add_argument("--call-bits", type=int, default=4_000_000,
                        help="key bits per reconcile call (one pipeline block)")
    parser.add_argument("--qbers", default="0.01,0.02,0.03,0.04,0.05")
    parser.add_argument("--code-bits", type=int, default=ldpc.LdpcSettings().code_bits)
    parser.add_argument("--efficiency", type=float, default=ldpc.LdpcSettings().efficiency)
    parser.add_argument("--no-threshold-floor", action="store_true",
                        help="aim the first try at --efficiency even below the code's "
                             "threshold efficiency (LdpcSettings.threshold_floor off)")
    parser.add_argument("--retries", type=int, default=ldpc.LdpcSettings().max_retries)
    parser.add_argument("--retry-step", type=float, default=ldpc.LdpcSettings().retry_step,
                        help="f added to a failed frame by each blind retry")
    parser.add_argument("--decoders", default="fast",
                        help="comma-separated Bob decoders to run on the same key pairs "
                             "(fast, reference)")
    parser.add_argument("--stall-sweeps", type=int, default=ldpc.LdpcSettings().stall_sweeps)
    parser.add_argument("--targeted", default=str(ldpc.LdpcSettings().targeted_max_checks),
                        help="comma-separated targeted_max_checks values to run on the same "
                             "key pairs (0: blind retries only)")
    parser.add_argument("--max-iterations", type=int,
                        default=ldpc.LdpcSettings().max_iterations)
    parser.add_argument("--cascade-frame-bits", type=int, default=10_000)
    parser.add_argument("--no-cascade", action="store_true")
    parser.add_argument("--first-seed", type=int, default=1,
                        help="seed of the first key pair (calls use consecutive seeds: runs "
                             "with disjoint ranges can share the work out over cores)")
    parser.add_argument("--cpu", type=int, default=None,
                        help="core to pin to (default: the last one available)")
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else available[-1]
    os.sched_setaffinity(0, {cpu})
    qbers = [float(q) for q in args.qbers.split(",")]
    # One variant per (decoder, targeted_max_checks), labelled e.g. "fas-t16".
    variants = {f"{d[:3]}-t{t}": ldpc.LdpcSettings(
        code_bits=args.code_bits, efficiency=args.efficiency, max_retries=args.retries,
        retry_step=args.retry_step,
        threshold_floor=not args.no_threshold_floor, decoder=d,
        stall_sweeps=args.stall_sweeps, max_iterations=args.max_iterations,
        targeted_max_checks=int(t))
        for d in args.decoders.split(",") for t in args.targeted.split(",")}
    decoders = list(variants)   # variant labels
    all_settings = variants
    settings = all_settings[decoders[0]]

    print(f"# bench_ldpc  {datetime.datetime.now().isoformat(timespec='minutes')}  "
          f"python {platform.python_version()}  {platform.machine()}  pinned to cpu {cpu}  "
          f"load {os.getloadavg()[0]:.2f}")
    print("# command: .venv/bin/python " + " ".join(sys.argv))
    for d in decoders:
        print(f"# LDPC settings: {all_settings[d]}")
    for qber in qbers:   # build (or load) the codes and compile the kernels before timing
        began = time.perf_counter()
        pl = ldpc.plan(args.call_bits, qber, settings)
        code = get_code(pl.code.distribution, settings.code_bits, settings.code_seed)
        print(f"# QBER {qber:.3f}: {code.distribution} n={code.n} m={code.checks} "
              f"edges={code.edges} max punctured={code.max_punctured} "
              f"ready in {time.perf_counter() - began:.1f} s")
    a, b = key_pair(50_000, 0.02, 0)
    for d in decoders:
        ldpc_once(a, b, 0.02, all_settings[d], 0, Point("warm-up", 0.02))
    cascade_once(a, b, 0.02, args.cascade_frame_bits, 0, Point("warm-up", 0.02))

    print(f"{'method':8s} {'QBER':>5s} {'frames':>6s} {'f':>6s} {'FER':>8s} {'FER':>8s} "
          f"{'FER':>8s} {'Mbit/s':>7s} {'Mbit/s':>7s} {'msgs':>5s} {'rt':>4s} {'sweeps':>6s} "
          f"{'ns/edge':>7s}  detail")
    print(f"{'':8s} {'':>5s} {'':>6s} {'':>6s} {'first':>8s} {'after':>8s} {'resid':>8s} "
          f"{'cpu':>7s} {'wall':>7s} {'/call':>5s} {'/call':>4s} {'/frame':>6s} {'sweep':>7s}")
    for qber in qbers:
        points = [Point(d, qber) for d in decoders] \
            + ([] if args.no_cascade else [Point("cascade", qber)])
        done, seed = 0, args.first_seed
        while done < args.bits:
            n = min(args.call_bits, args.bits - done)
            a, b = key_pair(n, qber, seed)
            for d, point in zip(decoders, points, strict=False):
                ldpc_once(a, b, qber, all_settings[d], seed, point)
            if not args.no_cascade:
                cascade_once(a, b, qber, args.cascade_frame_bits, seed, points[-1])
            done += n
            seed += 1
        for p in points:
            is_ldpc = p.method != "cascade"
            # Decoding work (load-independent) and CPU per edge per sweep (both parties'
            # CPU, of which Bob's decoder is nearly all).
            sweeps = f"{p.sweeps / p.frames:6.1f}" if is_ldpc else f"{'-':>6s}"
            per_edge = (f"{p.cpu_s / (p.sweeps * p.edges) * 1e9:7.2f}" if is_ldpc and p.sweeps
                        else f"{'-':>7s}")
            first = f"{p.first_failures / p.frames:8.2e}" if is_ldpc else f"{'-':>8s}"
            after = f"{p.dropped / p.frames:8.2e}" if is_ldpc else f"{'-':>8s}"
            print(f"{p.method:8s} {qber:5.3f} {p.frames:6d} {p.efficiency:6.4f} {first} {after} "
                  f"{p.residual / p.frames:8.2e} {p.bits / p.cpu_s / 1e6:7.2f} "
                  f"{p.bits / p.wall_s / 1e6:7.2f} {p.messages / p.calls:5.0f} "
                  f"{p.round_trips / p.calls:4.0f} {sweeps} {per_edge}  {p.detail}", flush=True)


if __name__ == "__main__":
    main()
