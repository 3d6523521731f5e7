"""``corridor link simulate``: run the Monte Carlo link simulator and compare with theory.

This module owns the ``simulate`` command of the ``link`` group (added by
:func:`add_commands`). It streams blocks from :func:`corridor.link.simulator.simulate_stream`
so that memory stays bounded whatever ``--pulses`` is, counts them into a
:class:`~corridor.link.simulator.SimulationSummary`, and reports observed against
expected gain and QBER per intensity class (expected: the exact model the simulator
samples from, detector dead time, pixels, afterpulses and the attack included), the
vacuum + weak decoy estimates and
what they imply, the attack, wall time and speed. Same ``--seed``, same output
(except the timing fields).
"""

from __future__ import annotations

import sys
import time
from enum import StrEnum
from typing import Annotated, Any

import typer
from rich import box
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from corridor.cli.common import (
    OutputFormat,
    as_option,
    console,
    emit_json,
    err_console,
    handle_errors,
)
from corridor.cli.link import (
    DEFAULT_PRESET,
    ConfigOption,
    PresetOption,
    SetOption,
    link_parameters_from_options,
    parse_run_pulse_count,
)
from corridor.errors import ParameterError

DEFAULT_PULSES = 100_000_000
DEFAULT_BLOCK_PULSES = 10_000_000


class SimulateAttack(StrEnum):
    """Attacks the simulator can apply (see :mod:`corridor.link.attacks`)."""

    none = "none"
    intercept_resend = "intercept-resend"
    pns = "pns"


def _check_count(option: str, value: int, minimum: int) -> None:
    if value < minimum:
        raise ParameterError(option, value, f"must be a whole number of pulses >= {minimum}")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _render_table(report: dict[str, Any]) -> None:
    attack = report["attack"]
    attack_text = "none" if attack is None else ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in attack.items())
    title = (f"corridor link simulate: {report['preset']} at {report['distance_km']:g} km, "
             f"{report['pulses']:,} pulses, seed {report['seed']}")
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 0), pad_edge=False,
                  caption="gain, QBER: observed; exp.: exact model the simulator samples "
                          "(dead time, pixels, afterpulses, attack included); "
                          "sigma: deviation in binomial standard deviations")
    for header in ("class", "pulses", "clicks", "gain", "gain exp.", "sigma",
                   "QBER", "QBER exp.", "sigma"):
        table.add_column(header, justify="left" if header == "class" else "right",
                         no_wrap=True, min_width=6 if header == "sigma" else None)
    for name, row in report["per_class"].items():
        table.add_row(f"{name} {row['intensity']:g}", f"{row['pulses']:.3g}",
                      f"{row['detections']:.3g}", f"{row['observed_gain']:.3e}",
                      f"{row['expected_gain']:.3e}", _fmt(row["gain_deviation_sigmas"], "+.1f"),
                      f"{100 * row['observed_qber']:.2f}%", f"{100 * row['expected_qber']:.2f}%",
                      _fmt(row["qber_deviation_sigmas"], "+.1f"))
    console.print(table)
    decoy = report["decoy_estimates"]
    if decoy["available"]:
        console.print(
            f"decoy-state estimates (vacuum + weak, Ma-Qi-Zhao-Lo 2005, from observed gains): "
            f"Y1 >= {decoy['single_photon_yield_lower']:.4e} "
            f"(honest Y1 = {decoy['honest_single_photon_yield']:.4e}), "
            f"e1 <= {decoy['single_photon_error_upper']:.4f}, "
            f"Q1 >= {decoy['single_photon_gain_lower']:.4e}, "
            f"key rate {decoy['secret_key_rate_bits_per_pulse']:.3e} bit/pulse",
            highlight=False)
        console.print(f"verdict: {decoy['verdict']}", highlight=False)
    else:
        console.print(f"decoy-state estimates: not available ({decoy['reason']})",
                      highlight=False)
    console.print(f"attack: {attack_text}", highlight=False)
    console.print(
        f"detections: {report['detections']:,}   wall time: {report['wall_time_s']:.3f} s   "
        f"{report['pulses_per_second']:.3e} pulses/s   "
        f"{report['detections_per_second']:.3e} detections/s", highlight=False)


def simulate_command(
    distance_km: Annotated[float | None, typer.Option(
        "--distance-km", help="Fibre length in km (default: the preset's or the config's).",
        show_default=False)] = None,
    pulses: Annotated[int, typer.Option(
        "--pulses", parser=parse_run_pulse_count, metavar="N",
        help="Pulses to simulate (1e9 accepted).")] = DEFAULT_PULSES,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the PCG64 stream; without it the OS CSPRNG seeds the run.",
        show_default=False)] = None,
    preset_name: PresetOption = DEFAULT_PRESET,
    config: ConfigOption = None,
    overrides: SetOption = None,
    attack: Annotated[SimulateAttack, typer.Option(
        "--attack", help="Eavesdropping attack on the quantum channel.")] = SimulateAttack.none,
    attack_fraction: Annotated[float | None, typer.Option(
        "--attack-fraction", help="Fraction of pulses intercepted by intercept-resend "
        "(default: 1).", show_default=False)] = None,
    block_pulses: Annotated[int, typer.Option(
        "--block-pulses", parser=parse_run_pulse_count, metavar="B",
        help="Pulses per simulated block (bounds the memory).")] = DEFAULT_BLOCK_PULSES,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table or json.")] = OutputFormat.table,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Simulate detection records and compare gains and QBER with the closed form."""
    # The simulator (numba, scipy) is imported here so other commands start fast.
    from corridor.link.attacks import make_attack
    from corridor.link.simulator import SimulationSummary, simulate_stream, summarise
    from corridor.randomness import RandomSource

    with handle_errors():
        params = link_parameters_from_options(preset_name, config, overrides or [],
                                              length_set_by=None if distance_km is None
                                              else "--distance-km")
        if distance_km is not None:
            with as_option("length_km", "--distance-km"):
                params = params.override({"length_km": distance_km})
        _check_count("--pulses", pulses, 1)
        _check_count("--block-pulses", block_pulses, 1)
        if attack_fraction is not None and attack is not SimulateAttack.intercept_resend:
            raise ParameterError("--attack-fraction", attack_fraction,
                                 "only applies to --attack intercept-resend")
        attack_model = make_attack(attack.value, attack_fraction)
        rng = RandomSource.seeded(seed) if seed is not None else RandomSource.system()
        blocks = -(-pulses // block_pulses)
        show_progress = (not quiet and blocks > 1
                         and not (output_format is OutputFormat.json and not sys.stdout.isatty()))
        summary = SimulationSummary()
        started = time.perf_counter()
        stream = simulate_stream(params, pulses, rng, block_pulses=block_pulses,
                                 attack=attack_model)
        if show_progress:
            columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("blocks"), TimeElapsedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=err_console, transient=True) as progress:
                task = progress.add_task("simulate", total=blocks)
                for records in stream:
                    summary.add(records)
                    progress.advance(task)
        else:
            for records in stream:
                summary.add(records)
        summary.wall_time_s = time.perf_counter() - started
        result = summarise(summary, params, attack=attack_model)
        report = {
            "preset": params.name,
            "distance_km": params.fibre.length_km,
            "seed": seed,
            "block_pulses": block_pulses,
            "pulse_rate_hz": params.source.pulse_rate_hz,
            "simulated_link_time_s": pulses / params.source.pulse_rate_hz,
            **result,
        }
        if output_format is OutputFormat.json:
            emit_json(report)
        else:
            _render_table(report)


def add_commands(link_app: typer.Typer) -> None:
    """Add ``simulate`` to the ``corridor link`` group."""
    link_app.command("simulate")(simulate_command)
