"""Benchmark of Cascade reconciliation (corridor.distill.cascade).

For each variant and QBER: throughput in sifted bits per second with Alice and Bob
in two threads of one process pinned to one core, over the in-process channel; the
bits each party disclosed (parities of Alice's key she sent, parities of Bob's key his
replies reveal, and their total, which is what privacy amplification subtracts);
efficiency f = total disclosed / (n H2(QBER)) over all frames, and f_A, Alice's part
alone (the one-direction figure that Cascade papers publish); frame error rate (frames
where Bob's corrected bits still differ from Alice's); messages and round trips per
call. Errors are independent Bernoulli(QBER) flips; f uses the nominal QBER.

Two times are printed: wall (what a user waits on an otherwise idle core) and CPU
(the process's CPU time: the same figure with other programs' share of the core taken
out; on a quiet machine the two agree).

Run:  .venv/bin/python benchmarks/bench_cascade.py [--frames 10000] [--call-frames 1000]
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

from corridor.distill.cascade import CASCADE_VARIANTS, reconcile_alice, reconcile_bob
from corridor.distill.channel import in_process_pair
from corridor.link.rates import binary_entropy


@dataclass
class Point:
    """Figures for one (variant, QBER)."""

    variant: str
    qber: float
    bits: int = 0
    frames: int = 0
    failed_frames: int = 0
    alice_bits: int = 0
    bob_bits: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    messages: int = 0
    round_trips: int = 0
    calls: int = 0
    passes_run: int = 0

    @property
    def disclosed_bits(self) -> int:
        return self.alice_bits + self.bob_bits

    @property
    def efficiency(self) -> float:
        """Both directions over the Shannon limit (what the key pays)."""
        return self.disclosed_bits / (self.bits * binary_entropy(self.qber))

    @property
    def alice_efficiency(self) -> float:
        """Alice's parities alone over the Shannon limit (the published figure)."""
        return self.alice_bits / (self.bits * binary_entropy(self.qber))

    @property
    def frame_error_rate(self) -> float:
        return self.failed_frames / self.frames


def reconcile_once(variant: str, qber: float, frames: int, frame_bits: int, seed: int,
                   point: Point) -> None:
    """One call of each party on ``frames`` frames; adds its figures to ``point``."""
    rng = np.random.default_rng(seed)
    n = frames * frame_bits
    alice_bits = rng.integers(0, 2, n, dtype=np.uint8)
    bob_bits = alice_bits ^ (rng.random(n) < qber).astype(np.uint8)
    a_end, b_end = in_process_pair()
    failure: list[BaseException] = []

    def alice() -> None:
        try:
            reconcile_alice(a_end, alice_bits, variant=variant, qber_estimate=qber,
                            shuffle_seed=seed, frame_bits=frame_bits)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)

    thread = threading.Thread(target=alice)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    thread.start()
    result = reconcile_bob(b_end, bob_bits, variant=variant, qber_estimate=qber,
                           shuffle_seed=seed, frame_bits=frame_bits)
    thread.join()
    point.wall_s += time.perf_counter() - wall0
    point.cpu_s += time.process_time() - cpu0
    if failure:
        raise failure[0]
    point.bits += n
    point.frames += frames
    point.failed_frames += int((result.bits != alice_bits).reshape(frames, -1)
                               .any(axis=1).sum())
    if result.disclosed_bits != result.alice_disclosed_bits + result.bob_disclosed_bits:
        raise AssertionError("disclosed_bits is not Alice's plus Bob's")
    point.alice_bits += result.alice_disclosed_bits
    point.bob_bits += result.bob_disclosed_bits
    point.messages += result.messages
    point.round_trips += result.round_trips
    point.passes_run = max(point.passes_run, result.passes_run)
    point.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000,
                        help="frames per (variant, QBER) point")
    parser.add_argument("--frame-bits", type=int, default=10_000)
    parser.add_argument("--call-frames", type=int, default=1_000,
                        help="frames per reconcile call (one pipeline block)")
    parser.add_argument("--variants", default="original,yanetal,biconf,option3")
    parser.add_argument("--qbers", default="0.01,0.02,0.03,0.05")
    parser.add_argument("--cpu", type=int, default=None,
                        help="core to pin to (default: the last one available)")
    args = parser.parse_args()
    available = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else available[-1]
    os.sched_setaffinity(0, {cpu})
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    qbers = [float(q) for q in args.qbers.split(",")]
    for variant in variants:
        if variant not in CASCADE_VARIANTS:
            sys.exit(f"--variants: {variant!r} is not one of {', '.join(CASCADE_VARIANTS)}")

    print(f"# bench_cascade  {datetime.date.today().isoformat()}  "
          f"python {platform.python_version()}"
          f"  {platform.machine()}  pinned to cpu {cpu}")
    print("# command: .venv/bin/python " + " ".join(sys.argv))
    warm = Point("warm-up", 0.02)
    for variant in variants:  # compile (or load) the numba kernels before timing
        reconcile_once(variant, 0.02, 2, args.frame_bits, 0, warm)

    header = (f"{'variant':9s} {'QBER':>5s} {'frames':>6s} {'Mbit/s':>7s} {'Mbit/s':>7s} "
              f"{'alice_bits':>11s} {'bob_bits':>11s} {'total_bits':>11s} {'f':>6s} "
              f"{'f_A':>6s} {'FER':>8s} {'msgs/call':>9s} {'rt/call':>7s} {'passes':>6s}")
    print(header)
    print(f"{'':9s} {'':>5s} {'':>6s} {'wall':>7s} {'cpu':>7s} {'':>11s} {'':>11s} "
          f"{'':>11s} {'total':>6s} {'Alice':>6s}")
    for variant in variants:
        for qber in qbers:
            point = Point(variant, qber)
            remaining, seed = args.frames, 1
            while remaining > 0:
                frames = min(args.call_frames, remaining)
                reconcile_once(variant, qber, frames, args.frame_bits, seed, point)
                remaining -= frames
                seed += 1
            print(f"{variant:9s} {qber:5.3f} {point.frames:6d} "
                  f"{point.bits / point.wall_s / 1e6:7.2f} {point.bits / point.cpu_s / 1e6:7.2f} "
                  f"{point.alice_bits:11d} {point.bob_bits:11d} {point.disclosed_bits:11d} "
                  f"{point.efficiency:6.4f} {point.alice_efficiency:6.4f} "
                  f"{point.frame_error_rate:8.2e} "
                  f"{point.messages / point.calls:9.0f} {point.round_trips / point.calls:7.0f} "
                  f"{point.passes_run:6d}", flush=True)


if __name__ == "__main__":
    main()
