"""Distillation end to end: throughput per stage and overall, at QBER 1 %, 3 % and 5 %.

Simulates one block per QBER (the QBER is set through the misalignment e_d), runs the
whole pipeline (Alice and Bob in two threads over the authenticated in-process
channel) and prints, per stage, the sifted bits per CPU second, then end to end:
sifted bits in per second and secret bits out per second (simulation excluded).
Times are the CPU seconds Alice's and Bob's threads spent in each stage, added
(``time.thread_time``), so the figures are per core for the pair and other load on
the machine does not enter them. The process is also pinned to one core.

Usage::

    .venv/bin/python benchmarks/bench_distill.py [--pulses N] [--write]

``--write`` replaces the "(pending)" line (or the previous figures) under
"## Distillation: end to end" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
import time
from pathlib import Path

from corridor.distill.pipeline import STAGES, DistillConfig, distill_link
from corridor.link.params import preset

HEADING = "## Distillation: end to end"
DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
QBERS = (0.01, 0.03, 0.05)


def _pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def run(pulses: int, seed: int, variant: str,
        qbers: tuple[float, ...] = QBERS) -> list[dict[str, object]]:
    """One block per QBER; returns one result row per QBER."""
    base = preset("modern-snspd").override({
        "z_basis_probability": 0.5, "signal_probability": 0.5, "decoy_probability": 0.3,
        "vacuum_probability": 0.2}).with_length(5.0)
    rows = []
    for qber in qbers:
        params = base.override({"misalignment_error": qber})
        config = DistillConfig.for_link(params, cascade_variant=variant,
                                        channel_timeout_s=600.0)
        start = time.perf_counter()
        report = distill_link(params, pulses, seed, block_pulses=pulses, config=config)
        wall = time.perf_counter() - start
        row = report.block_rows()[0]
        cpu = row["cpu_s"]
        assert isinstance(cpu, dict)
        # CPU seconds of Alice plus Bob per stage: what the pair costs one core.
        timings = {stage: sum(party.get(stage, 0.0) for party in cpu.values())
                   for stage in STAGES if any(stage in party for party in cpu.values())}
        stage_total = sum(timings.values())
        sifted = int(row["sifted_bits"] or 0)
        rows.append({"qber": qber, "row": row, "timings": timings, "wall_s": wall,
                     "sifted": sifted, "stage_total_s": stage_total,
                     "secret": int(row["secret_bits"] or 0)})
    return rows


def render(rows: list[dict[str, object]], command: str, pinned: str, variant: str) -> str:
    lines = [f"Command: `{command}` ({datetime.date.today().isoformat()}, {pinned}; "
             f"Cascade {variant}; one block per QBER on the modern-snspd preset at 5 km with "
             "z_basis_probability 0.5 and class probabilities 0.5/0.3/0.2; the QBER is set by "
             "misalignment_error; each figure is sifted bits over the CPU seconds Alice and Bob "
             "together spent in the stage (thread CPU time, so other load on the machine "
             "does not count), simulation excluded).", ""]
    header = "| QBER target | measured QBER | sifted bits | " + " | ".join(
        f"{s} (Mbit/s)" for s in STAGES) + " | f | fate | sifted in (Mbit/s) | " \
        "secret out (kbit/s) |"
    lines.append(header)
    lines.append("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        row = r["row"]
        timings = r["timings"]
        sifted = r["sifted"]
        assert isinstance(row, dict) and isinstance(timings, dict) and isinstance(sifted, int)
        per_stage = []
        for stage in STAGES:
            t = timings.get(stage)
            per_stage.append(f"{sifted / t / 1e6:.1f}" if t else "-")
        total = float(str(r["stage_total_s"]))
        f = row["reconciliation_efficiency"]
        fate = "delivered" if row["state"] == "AUTHENTICATED" else str(row["discard_reason"])
        f_text = f"{f:.3f}" if isinstance(f, float) else "-"
        qber_text = f"{float(row['qber_corrected'] or row['test_qber'] or 0):.4f}"
        secret_rate = int(str(r["secret"])) / total / 1e3
        lines.append(f"| {float(str(r['qber'])):.0%} | {qber_text} | {sifted:,} | "
                     + " | ".join(per_stage)
                     + f" | {f_text} | {fate} | {sifted / total / 1e6:.2f} | "
                     f"{secret_rate:.1f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Load average when measured: {load:.1f}. CPU seconds exclude waiting, but "
              "caches and memory bandwidth are shared with whatever else runs, so expect "
              "higher figures on a quiet machine. Each stage figure counts both parties' "
              "work (both sift, both hash). Sifting makes a few whole-array passes over all "
              "detections (about 4 per sifted key bit at p_Z = 1/2); amplification is two "
              "Toeplitz hashes of n bits plus the n + l - 1 seed bits drawn and sent; "
              "verification tags every 2^15-bit segment."]
    return "\n".join(lines)


def write_section(text: str) -> None:
    content = DOCS.read_text(encoding="utf-8")
    start = content.index(HEADING) + len(HEADING)
    following = re.search(r"\n## ", content[start:])
    end = start + following.start() if following else len(content)
    DOCS.write_text(content[:start] + "\n\n" + text + "\n" + content[end:], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pulses", type=int, default=100_000_000,
                        help="pulses in the one block simulated per QBER")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cascade", default="biconf")
    parser.add_argument("--write", action="store_true",
                        help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    pinned = _pin_to_one_core()
    command = "python benchmarks/bench_distill.py " + " ".join(sys.argv[1:])
    # Warm-up at full size: JIT compilation, and the allocator's first touch of pages
    # for arrays this large, would otherwise be charged to the first measured run.
    run(args.pulses, args.seed, args.cascade, QBERS[:1])
    rows = run(args.pulses, args.seed, args.cascade)
    text = render(rows, command.strip(), pinned, args.cascade)
    print(text)
    if args.write:
        write_section(text)
        print(f"\nwritten to {DOCS}")


if __name__ == "__main__":
    main()
