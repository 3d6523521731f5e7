"""Privacy amplification throughput: Mbit/s of input, one core, every method side by side.

Methods: the plain numpy FFT Toeplitz product (full linear convolution at a power-of-two
length, the baseline), Corridor's ``fft`` method (scipy real FFT, cyclic middle
product at a fast length, rounding guard) and its ``clmul`` method (GF(2) transposed
Karatsuba on carry-less multiplies). All three must return identical bits; the script
checks that before it prints anything.

    .venv/bin/python benchmarks/bench_privacy.py [--sizes 1e5 1e6 1e7] [--repeats 3]
        [--methods baseline fft clmul]

The CPU-time column counts only this process's CPU seconds, so time the core spends on
other jobs does not lower it; busy neighbours still can, through shared caches and, where
virtual CPUs are SMT siblings on the host, a shared carry-less multiply unit. Hence the
load average in the header.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from corridor.distill.privacy import clmul_available, toeplitz_hash

HashMethod = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def numpy_fft_baseline(bits: np.ndarray, seed: np.ndarray, output_bits: int) -> np.ndarray:
    """The textbook implementation: full convolution by numpy FFT, then the middle slice."""
    n = bits.shape[0]
    full = n + seed.shape[0] - 1
    length = 1 << (full - 1).bit_length()
    product = np.fft.irfft(np.fft.rfft(bits.astype(np.float64), length)
                           * np.fft.rfft(seed.astype(np.float64), length), length)
    return (np.rint(product[n - 1:n - 1 + output_bits]).astype(np.int64) & 1).astype(np.uint8)


def _best_seconds(method: HashMethod, bits: np.ndarray, seed: np.ndarray, output_bits: int,
                  repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall and best CPU seconds over ``repeats`` runs, after one warm-up run."""
    result = method(bits, seed, output_bits)  # warm-up: numba loads its cached kernels
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = method(bits, seed, output_bits)
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7],
                        help="input lengths n in bits (output l = n/2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case (best kept)")
    parser.add_argument("--methods", nargs="+", choices=("baseline", "fft", "clmul"),
                        default=["baseline", "fft", "clmul"],
                        help="methods to time (with two or more, their bits are compared)")
    args = parser.parse_args(argv)

    available: dict[str, tuple[str, HashMethod]] = {
        "baseline": ("numpy-fft (baseline)", numpy_fft_baseline),
        "fft": ("fft (scipy, middle product)", partial(toeplitz_hash, method="fft")),
    }
    if clmul_available():
        available["clmul"] = ("clmul (GF(2) Karatsuba)", partial(toeplitz_hash, method="clmul"))
    elif "clmul" in args.methods:
        print("# clmul: this CPU has no carry-less multiply instruction; skipped")
    methods = dict(available[key] for key in args.methods if key in available)
    print(f"# {' '.join([sys.executable, *sys.argv])}")
    print(f"# {datetime.date.today().isoformat()}  {platform.machine()}  "
          f"{platform.processor() or platform.platform()}  one core  "
          f"load average {os.getloadavg()[0]:.2f}")
    print("| n (bits) | l (bits) | method | wall s | Mbit/s (wall) | Mbit/s (CPU time) "
          "| x baseline (wall) |")
    print("|---:|---:|---|---:|---:|---:|---:|")
    rng = np.random.default_rng(20261123)
    for size in args.sizes:
        n = int(size)
        l_bits = n // 2
        bits = rng.integers(0, 2, n, dtype=np.uint8)
        seed = rng.integers(0, 2, n + l_bits - 1, dtype=np.uint8)
        reference: np.ndarray | None = None
        baseline_s = None
        for name, method in methods.items():
            repeats = args.repeats if n <= 2_000_000 else 1
            seconds, cpu_seconds, result = _best_seconds(method, bits, seed, l_bits, repeats)
            if reference is None:
                reference = result
            elif not np.array_equal(reference, result):
                print(f"MISMATCH: {name} differs from {next(iter(methods))} at n = {n}",
                      file=sys.stderr)
                return 1
            if name == available["baseline"][0]:
                baseline_s = seconds
            speedup = f"{baseline_s / seconds:.1f}" if baseline_s else "-"
            print(f"| {n:,} | {l_bits:,} | {name} | {seconds:.4f} | {n / seconds / 1e6:.1f} | "
                  f"{n / max(cpu_seconds, 1e-9) / 1e6:.1f} | {speedup} |",
                  flush=True)
    if len(methods) > 1:
        print("# all methods returned identical bits")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
