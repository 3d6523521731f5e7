"""Distillation end to end: throughput per stage and overall, at QBER 1 %, 3 % and 5 %.

Simulates one block per QBER (the QBER is set through the misalignment e_d), runs the
whole pipeline (Alice and Bob in two threads over the authenticated in-process
channel) and prints, per stage, the sifted bits per CPU second, then end to end:
sifted bits in per second and secret bits out per second (simulation excluded).
Times are the CPU seconds Alice's and Bob's threads spent in each stage, added
(``time.thread_time``), so the figures are per core for the pair and other load on
the machine does not enter them. The process is also pinned to one core.

A second table splits each stage by party, in nanoseconds of CPU per sifted bit, with
the sum over every stage but reconciliation: end to end with a reconciliation stage
of R Mbit/s (both parties) is then 1e3 / (1e3 / R + that sum) Mbit/s, printed for
``--project-reconciliation-mbps``.

Usage::

    .venv/bin/python benchmarks/bench_distill.py [--pulses N] [--reconciliation NAME]
        [--length-km L] [--z-basis-probability P] [--write]

``--reconciliation`` is handed to ``DistillConfig.reconciliation`` (refused when this
version of the pipeline has no such setting).

``--write`` replaces the "(pending)" line (or the previous figures) under
"## Distillation: end to end" in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
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


def run(pulses: int, seed: int, variant: str, qbers: tuple[float, ...] = QBERS, *,
        length_km: float = 5.0, z_basis_probability: float = 0.5,
        reconciliation: str | None = None, repeat: int = 1) -> list[dict[str, object]]:
    """One block per QBER; returns one result row per QBER.

    With ``repeat`` > 1 the same block is distilled that many times and each stage of
    each party keeps its least CPU time (the run least disturbed by other load).
    """
    base = preset("modern-snspd").override({
        "z_basis_probability": z_basis_probability, "signal_probability": 0.5,
        "decoy_probability": 0.3, "vacuum_probability": 0.2}).with_length(length_km)
    extra: dict[str, object] = {}
    if reconciliation is not None:
        extra["reconciliation"] = reconciliation
    rows = []
    for qber in qbers:
        params = base.override({"misalignment_error": qber})
        config = DistillConfig.for_link(params, cascade_variant=variant,
                                        channel_timeout_s=600.0, **extra)
        cpu: dict[str, dict[str, float]] = {}
        for _ in range(repeat):
            start = time.perf_counter()
            report = distill_link(params, pulses, seed, block_pulses=pulses, config=config)
            wall = time.perf_counter() - start
            row = report.block_rows()[0]
            for role, stages in row["cpu_s"].items():
                mine = cpu.setdefault(role, dict(stages))
                for stage, seconds in stages.items():
                    mine[stage] = min(mine.get(stage, seconds), seconds)
        # CPU seconds of Alice plus Bob per stage: what the pair costs one core.
        timings = {stage: sum(party.get(stage, 0.0) for party in cpu.values())
                   for stage in STAGES if any(stage in party for party in cpu.values())}
        stage_total = sum(timings.values())
        sifted = int(row["sifted_bits"] or 0)
        rows.append({"qber": qber, "row": row, "timings": timings, "wall_s": wall,
                     "sifted": sifted, "stage_total_s": stage_total, "per_party": cpu,
                     "secret": int(row["secret_bits"] or 0)})
    return rows


def stage_split(rows: list[dict[str, object]], reconciliation_mbps: float) -> str:
    """Per stage and party: CPU nanoseconds per sifted bit (and Mbit/s for the pair)."""
    lines = ["| QBER target | stage | Alice (ns/bit) | Bob (ns/bit) | both (ns/bit) | "
             "both (Mbit/s) |", "|---|---|---|---|---|---|"]
    for r in rows:
        sifted = r["sifted"]
        cpu = r["per_party"]
        row = r["row"]
        assert isinstance(sifted, int) and isinstance(cpu, dict) and isinstance(row, dict)
        label = f"{float(str(r['qber'])):.0%}"
        if not sifted or row["state"] != "AUTHENTICATED":
            lines.append(f"| {label} | block discarded ({row['discard_reason']}): no split | "
                         "| | | |")
            continue

        def ns(role: str, stages: tuple[str, ...], per: dict[str, dict[str, float]] = cpu,
               bits: int = sifted) -> float:
            return sum(per.get(role, {}).get(stage, 0.0) for stage in stages) / bits * 1e9

        groups = [(stage, (stage,)) for stage in STAGES]
        others = tuple(stage for stage in STAGES if stage != "reconciliation")
        groups += [("all but reconciliation", others), ("all stages", STAGES)]
        for name, stages in groups:
            alice, bob = ns("alice", stages), ns("bob", stages)
            both = alice + bob
            rate = f"{1e3 / both:.1f}" if both > 0 else "-"
            lines.append(f"| {label} | {name} | {alice:.2f} | {bob:.2f} | {both:.2f} | "
                         f"{rate} |")
        rest = ns("alice", others) + ns("bob", others)
        projected = 1e3 / (1e3 / reconciliation_mbps + rest)
        lines.append(f"| {label} | end to end with reconciliation at "
                     f"{reconciliation_mbps:g} Mbit/s | | | {1e3 / projected:.2f} | "
                     f"{projected:.1f} |")
    return "\n".join(lines)


def render(rows: list[dict[str, object]], command: str, pinned: str, method: str,
           length_km: float = 5.0, z_basis_probability: float = 0.5) -> str:
    lines = [f"Command: `{command}` ({datetime.date.today().isoformat()}, {pinned}; "
             f"{method}; one block per QBER on the modern-snspd preset at "
             f"{length_km:g} km with z_basis_probability {z_basis_probability:g} and class "
             "probabilities 0.5/0.3/0.2; the QBER is set by "
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
    parser.add_argument("--reconciliation", default=None,
                        help="DistillConfig.reconciliation (where the pipeline has it)")
    parser.add_argument("--length-km", type=float, default=5.0)
    parser.add_argument("--z-basis-probability", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=1,
                        help="distil each block this many times, keep each stage's least "
                        "CPU time (for loaded machines)")
    parser.add_argument("--project-reconciliation-mbps", type=float, default=50.0,
                        help="reconciliation speed (both parties) for the projected "
                        "end-to-end figure")
    parser.add_argument("--write", action="store_true",
                        help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    if args.reconciliation is not None and "reconciliation" not in {
            f.name for f in dataclasses.fields(DistillConfig)}:
        parser.error("--reconciliation: this pipeline's DistillConfig has no "
                     "'reconciliation' setting (Cascade only)")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not args.project_reconciliation_mbps > 0:
        parser.error("--project-reconciliation-mbps must be above 0")
    pinned = _pin_to_one_core()
    command = "python benchmarks/bench_distill.py " + " ".join(sys.argv[1:])
    options = {"length_km": args.length_km, "z_basis_probability": args.z_basis_probability,
               "reconciliation": args.reconciliation}
    # Warm-up at full size: JIT compilation, and the allocator's first touch of pages
    # for arrays this large, would otherwise be charged to the first measured run.
    run(args.pulses, args.seed, args.cascade, QBERS[:1], **options)  # type: ignore[arg-type]
    rows = run(args.pulses, args.seed, args.cascade, repeat=args.repeat,
               **options)  # type: ignore[arg-type]
    method = "LDPC (LdpcSettings defaults)" if args.reconciliation == "ldpc" \
        else f"Cascade {args.cascade}"
    text = render(rows, command.strip(), pinned, method, args.length_km,
                  args.z_basis_probability)
    text += "\n\nStage split (CPU nanoseconds per sifted bit; Mbit/s is the pair on one " \
        "core):\n\n" + stage_split(rows, args.project_reconciliation_mbps)
    print(text)
    if args.write:
        write_section(text)
        print(f"\nwritten to {DOCS}")


if __name__ == "__main__":
    main()
