"""Benchmark of the Monte Carlo link simulator (issue 2, "Performance").

Measures, on one core, detection records generated per second and effective pulses
per second at 10, 50 and 100 km of the ``modern-snspd`` link (1 GHz clock), streamed
in blocks so that memory stays bounded. Optionally runs SeQUeNCe (PyPI ``sequence``)
photon by photon in the same run and prints the ratio.

Run::

    .venv/bin/python benchmarks/bench_link_simulator.py
    .venv/bin/python benchmarks/bench_link_simulator.py --sequence-python /tmp/seqvenv/bin/python

Targets (issue 2): >= 5e7 detection records/s per core; 50 km at least real time
(>= 1e9 pulses/s); 100 km >= 1e10 effective pulses/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from datetime import date

from corridor.link.params import preset
from corridor.link.simulator import SimulationSummary, class_statistics, simulate_stream
from corridor.randomness import RandomSource

DISTANCES_KM = (10.0, 50.0, 100.0)
#: Records per block: keeps each block near 30 MB whatever the distance.
RECORDS_PER_BLOCK = 2_000_000
TARGET_RECORDS_PER_S = 5e7

# SeQUeNCe's photon-level BB84: a light source emitting photons one by one through a
# quantum channel to a detector (its own event-driven kernel). We time how many photons
# per second its kernel can push through, the figure SeQUeNCe's own BB84 is bound by.
SEQUENCE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import sequence
    from importlib.metadata import version
    from sequence.kernel.timeline import Timeline
    from sequence.topology.node import QKDNode
    from sequence.qkd.BB84 import pair_bb84_protocols
    from sequence.components.light_source import LightSource
    from sequence.components.optical_channel import QuantumChannel, ClassicalChannel

    pulses = [0]
    emit = LightSource.emit
    def counting_emit(self, state_list):
        pulses[0] += len(state_list)
        return emit(self, state_list)
    LightSource.emit = counting_emit

    def run(length_m, keys):
        tl = Timeline()
        tl.seed(1)
        alice = QKDNode("alice", tl, stack_size=1)
        bob = QKDNode("bob", tl, stack_size=1)
        alice.set_seed(0)
        bob.set_seed(1)
        pair_bb84_protocols(alice.protocol_stack[0], bob.protocol_stack[0])
        qc0 = QuantumChannel("qc0", tl, attenuation=0.0002, distance=length_m)
        qc1 = QuantumChannel("qc1", tl, attenuation=0.0002, distance=length_m)
        qc0.set_ends(alice, bob.name)
        qc1.set_ends(bob, alice.name)
        cc0 = ClassicalChannel("cc0", tl, distance=length_m)
        cc1 = ClassicalChannel("cc1", tl, distance=length_m)
        cc0.set_ends(alice, bob.name)
        cc1.set_ends(bob, alice.name)
        tl.init()
        alice.protocol_stack[0].push(256, keys)
        started = time.perf_counter()
        started_cpu = time.process_time()
        tl.run()
        wall = time.perf_counter() - started
        cpu = time.process_time() - started_cpu
        photons = alice.components["alice.lightsource"].photon_counter
        return {"length_km": length_m / 1000, "wall_s": wall, "pulses": pulses[0],
                "photons": photons, "pulses_per_s": pulses[0] / wall,
                "photons_per_s": photons / wall, "cpu_pulses_per_s": pulses[0] / cpu,
                "keys": keys,
                "version": version("sequence")}

    print(json.dumps(run(float(sys.argv[1]) * 1000, int(sys.argv[2]))))
""")



def bench_distance(length_km: float, pulses: int, seed: int) -> dict[str, float]:
    """Simulate ``pulses`` pulses at ``length_km``; time generation and counting."""
    params = preset("modern-snspd").with_length(length_km)
    stats = class_statistics(params)
    click = sum(p * q for p, q in zip(params.source.class_probabilities,
                                      stats.click_probability, strict=True))
    block_pulses = max(int(RECORDS_PER_BLOCK / click), 1)
    # Warm-up: load the compiled kernels outside the measurement. Wall-clock figures on
    # a shared machine include time spent waiting for the CPU; CPU-time figures do not.
    for _ in simulate_stream(params, 1_000_000, RandomSource.seeded(seed)):
        pass
    records = 0
    started = time.perf_counter()
    started_cpu = time.process_time()
    for block in simulate_stream(params, pulses, RandomSource.seeded(seed),
                                 block_pulses=block_pulses):
        records += len(block)
    generate_s = time.perf_counter() - started
    generate_cpu_s = time.process_time() - started_cpu
    summary = SimulationSummary()
    started = time.perf_counter()
    for block in simulate_stream(params, pulses, RandomSource.seeded(seed),
                                 block_pulses=block_pulses):
        summary.add(block)
    with_summary_s = time.perf_counter() - started
    return {
        "length_km": length_km,
        "pulses": pulses,
        "block_pulses": block_pulses,
        "click_probability": click,
        "records": records,
        "generate_s": generate_s,
        "records_per_s": records / generate_s,
        "pulses_per_s": pulses / generate_s,
        "real_time_factor": pulses / generate_s / params.source.pulse_rate_hz,
        "cpu_records_per_s": records / generate_cpu_s,
        "cpu_pulses_per_s": pulses / generate_cpu_s,
        "with_summary_records_per_s": summary.detections / with_summary_s,
        "with_summary_pulses_per_s": pulses / with_summary_s,
    }


def bench_sequence(python: str, length_km: float, keys: int) -> dict[str, object]:
    """Run SeQUeNCe's BB84 (``keys`` keys of 256 bits) in another interpreter and time it."""
    try:
        completed = subprocess.run([python, "-c", SEQUENCE_SCRIPT, str(length_km),
                                    str(keys)], capture_output=True, text=True,
                                   timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    if completed.returncode != 0:
        return {"error": completed.stderr.strip().splitlines()[-1] if completed.stderr
                else f"exit code {completed.returncode}"}
    result: dict[str, object] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Run the benchmark and print a table, the command and the date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="Multiply the pulse counts (default 1: ~2e7 records each).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sequence-python", default=None,
                        help="Python of a venv with SeQUeNCe installed, to compare.")
    parser.add_argument("--sequence-length-km", type=float, default=10.0)
    parser.add_argument("--sequence-keys", type=int, default=10,
                        help="256-bit keys SeQUeNCe's BB84 generates.")
    args = parser.parse_args()
    pulses_at = {10.0: int(2e8 * args.scale), 50.0: int(1e9 * args.scale),
                 100.0: int(1e10 * args.scale)}
    print(f"command: {' '.join([os.path.relpath(sys.executable), *sys.argv])}")
    print(f"date: {date.today().isoformat()}  python {platform.python_version()}  "
          f"machine {platform.machine()}  cpus {os.cpu_count()}")
    print("records/s and pulses/s: wall clock; cpu: per second of this process's CPU time "
          "(what one core gives when the machine is shared)")
    print(f"{'km':>5} {'pulses':>9} {'block':>9} {'records':>10} {'records/s':>10} "
          f"{'pulses/s':>10} {'x real time':>11} {'cpu rec/s':>10} {'cpu pulses/s':>12} "
          f"{'+summary rec/s':>15}")
    rows = []
    for length_km in DISTANCES_KM:
        row = bench_distance(length_km, pulses_at[length_km], args.seed)
        rows.append(row)
        print(f"{row['length_km']:>5g} {row['pulses']:>9.2e} {row['block_pulses']:>9.2e} "
              f"{row['records']:>10.3e} {row['records_per_s']:>10.3e} "
              f"{row['pulses_per_s']:>10.3e} {row['real_time_factor']:>11.2f} "
              f"{row['cpu_records_per_s']:>10.3e} {row['cpu_pulses_per_s']:>12.3e} "
              f"{row['with_summary_records_per_s']:>15.3e}")
    best = max(row["records_per_s"] for row in rows)
    print(f"targets: records/s >= {TARGET_RECORDS_PER_S:.0e}: "
          f"{'met' if best >= TARGET_RECORDS_PER_S else 'NOT met'} (best {best:.3e}); "
          f"50 km >= 1e9 pulses/s: "
          f"{'met' if rows[1]['pulses_per_s'] >= 1e9 else 'NOT met'}; "
          f"100 km >= 1e10 pulses/s: {'met' if rows[2]['pulses_per_s'] >= 1e10 else 'NOT met'}")
    if args.sequence_python:
        seq = bench_sequence(args.sequence_python, args.sequence_length_km,
                             args.sequence_keys)
        if "error" in seq:
            print(f"SeQUeNCe: could not run: {seq['error']}")
        else:
            rate = float(seq["pulses_per_s"])  # type: ignore[arg-type]
            ten_km = next(r for r in rows if r["length_km"] == 10.0)
            ours = ten_km["pulses_per_s"]
            cpu_ratio = ten_km["cpu_pulses_per_s"] / float(seq["cpu_pulses_per_s"])  # type: ignore[arg-type]
            print(f"SeQUeNCe {seq['version']} BB84 (photon by photon) at "
                  f"{seq['length_km']:g} km, {seq['keys']} keys of 256 bits: {seq['pulses']} "
                  f"pulses ({seq['photons']} photons) in {seq['wall_s']:.2f} s = "
                  f"{rate:.3e} pulses/s, {float(seq['photons_per_s']):.3e} photons/s; "
                  f"Corridor at 10 km: {ours:.3e} pulses/s; ratio {ours / rate:.2e} "
                  f"(wall clock), {cpu_ratio:.2e} (CPU time)")


if __name__ == "__main__":
    main()
