"""``corridor link``: the QKD link model from the command line.

This module owns the ``link`` command group (``link_app``), the ``rate`` and ``plot``
commands, and :func:`link_parameters_from_options`, which every link command uses to
turn ``--preset``, ``--config`` and ``--set`` into :class:`LinkParameters`. The
``simulate`` and ``run`` commands live in ``corridor.cli.link_simulate`` and
``corridor.cli.link_run``; :func:`register` adds them when they are installed.
"""

from __future__ import annotations

import importlib
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from corridor.cli.common import (
    OutputFormat,
    as_option,
    console,
    emit_json,
    handle_errors,
    parse_count,
    typed_on_command_line,
)
from corridor.errors import ParameterError
from corridor.link.params import PRESETS, LinkParameters, load_toml
from corridor.link.params import preset as preset_by_name

# The models (scipy) and the plot (matplotlib) are imported inside the commands that use
# them, so that every other `corridor` command starts without paying for them.

link_app = typer.Typer(
    name="link",
    help="The QKD link model: closed-form key rates, plots, Monte Carlo simulation.",
    no_args_is_help=True,
)

#: Modules of other link commands, each exposing ``add_commands(link_app)``.
_EXTRA_COMMAND_MODULES = ("link_simulate", "link_run", "link_codes")

DEFAULT_PRESET = "modern-snspd"
DEFAULT_DISTANCES_KM = (0.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0)


class DecoyOption(StrEnum):
    """Decoy-state analysis: asymptotic (infinite, vacuum-weak) or the one-decoy finite
    key of Rusca et al. 2018 (one-decoy, with --block-pulses)."""

    infinite = "infinite"
    vacuum_weak = "vacuum-weak"
    one_decoy = "one-decoy"


# Shared option declarations, so that every link command spells them the same way.
PresetOption = Annotated[str, typer.Option(
    "--preset", help="Parameter preset: " + ", ".join(sorted(PRESETS)) + ".")]
ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="TOML file of overrides: preset key, fields, "
    "\\[fibre], \\[source], \\[detector], \\[protocol] tables.")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", help="Override one field, e.g. --set length_km=25 or --set dead_time_s=0 "
    "(repeatable).")]
#: Names of the finite-key bounds (corridor.link.finite_key.FINITE_KEY_BOUNDS, which
#: this module does not import at start-up: it pulls in the models).
FINITE_KEY_CHOICES = ("lim2014", "tightened")
FiniteKeyOption = Annotated[str, typer.Option(
    "--finite-key", metavar="lim2014|tightened",
    help="Finite-key bound: lim2014 (Lim et al. 2014 as published) or tightened "
    "(adds v_X1 <= m_X; docs/finite-key.md).")]


def check_finite_key_option(value: str) -> str:
    """The ``--finite-key`` value, or a ParameterError naming the allowed ones."""
    from corridor.link.finite_key import check_bound

    return check_bound(value, "--finite-key")


LENGTH_FIELDS = ("length_km", "fibre.length_km")  # what --distance-km sets


def parse_override(text: str) -> tuple[str, str]:
    """Split one ``--set field=value`` into (field, value), or raise ParameterError."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name or not value:
        raise ParameterError("--set", text, "must have the form field=value",
                             "for example --set attenuation_db_per_km=0.18")
    return name, value


#: The most pulses one simulated run takes: 11.6 days of a 1 GHz source, days of
#: computing at any distance here (docs/benchmarks.md); a typo such as 1e20 is refused
#: at once instead of starting a run that would never end. The closed form
#: (``link rate``) takes any count.
MAX_RUN_PULSE_COUNT = 10**15


def parse_pulse_count(text: str | int) -> int:
    """Read a pulse count written as an integer or in exponent form (``1e9``)."""
    return parse_count(text, "of pulses")


def parse_run_pulse_count(text: str | int) -> int:
    """:func:`parse_pulse_count` for a run that simulates every pulse: at most
    :data:`MAX_RUN_PULSE_COUNT`."""
    count = parse_pulse_count(text)
    if count > MAX_RUN_PULSE_COUNT:
        raise typer.BadParameter(f"{text!r} is more than 1e15 pulses, the most one run "
                                 "simulates (11.6 days of a 1 GHz source)")
    return count


def link_parameters_from_options(preset: str, config: Path | None,
                                 overrides: list[str], *,
                                 length_set_by: str | None = None) -> LinkParameters:
    """LinkParameters from ``--preset NAME``, ``--config FILE.toml`` and ``--set k=v``.

    The preset is the base; the TOML file is applied on top (its own ``preset`` key,
    if any, replaces the base), then each ``--set`` in order. Every mistake raises
    :class:`ParameterError` naming the field, the value and what is allowed; so does a
    ``--set length_km`` when something else sets the length (``length_set_by``:
    ``--distance-km``, a plot's axis), since one of them would be ignored.
    """
    params = preset_by_name(preset)
    if config is not None:
        params = load_toml(config, base=params)
    values: dict[str, Any] = {}
    for text in overrides:
        name, value = parse_override(text)
        values[name] = value
        if length_set_by is not None and name in LENGTH_FIELDS:
            raise ParameterError(f"--set {name}", value, f"not with {length_set_by}",
                                 "give the fibre length once" if length_set_by.startswith("-")
                                 else "the plot sweeps it; --max-distance-km sets its end")
    if not values:
        return params
    try:
        return params.override(values)
    except ParameterError as exc:  # named as typed: --set NAME, not the model's field
        if exc.field == "parameter name":
            raise ParameterError("--set", exc.value, "a field of the link: " + exc.allowed
                                 .removeprefix("must be one of "), exc.hint) from None
        if exc.field in values:
            raise ParameterError(f"--set {exc.field}", exc.value, exc.allowed,
                                 exc.hint) from None
        raise


def _check_block_pulses(block_pulses: int | None, decoy: DecoyOption | None) -> None:
    if block_pulses is None:
        if decoy is DecoyOption.one_decoy:
            raise ParameterError(
                "--block-pulses", None, "must be given with --decoy one-decoy",
                "the one-decoy bound (Rusca et al. 2018) is a finite-key bound: "
                "it needs the block size in pulses")
        return
    if block_pulses <= 0:
        raise ParameterError("--block-pulses", block_pulses, "must be a number of pulses above 0")
    if decoy is DecoyOption.infinite:
        raise ParameterError(
            "--decoy", decoy.value, "must be vacuum-weak (or left out) with --block-pulses",
            "the finite-key analysis of Lim et al. 2014 uses signal + decoy + vacuum; "
            "infinite decoys have no finite-key counterpart")


def rate_row(params: LinkParameters, length_km: float, decoy: str, block_pulses: int | None,
             optimise_settings: bool, bound: str = "lim2014") -> dict[str, Any]:
    """One distance of ``corridor link rate``: settings, gain, QBER, rates, PLOB.

    ``bound`` names the finite-key bound of Lim et al. (used only with
    ``block_pulses``); ``decoy = "one-decoy"`` evaluates the one-decoy finite-key bound
    (Rusca et al. 2018) for blocks of ``block_pulses`` at the given settings (never
    optimised).
    """
    from corridor.link.finite_key import expected_gain_and_qber, finite_key_rate
    from corridor.link.finite_key_one_decoy import one_decoy_finite_key_rate
    from corridor.link.optimize import optimise
    from corridor.link.rates import (
        availability,
        class_gains_and_errors,
        fibre_plob_bits_per_pulse,
        secret_key_rate,
    )

    at = params.with_length(length_km)
    one_decoy = decoy == DecoyOption.one_decoy.value
    if one_decoy:
        if block_pulses is None:
            raise ParameterError("block_pulses", None, "must be given for one-decoy")
        rate = one_decoy_finite_key_rate(at, block_pulses)
    elif optimise_settings:
        at, rate = optimise(at, decoy, block_pulses, bound=bound)
    elif block_pulses is None:
        rate = secret_key_rate(at, decoy)
    else:
        rate = finite_key_rate(at, block_pulses, bound)
    src = at.source
    if block_pulses is None or one_decoy:
        (signal_gain, _, _), (signal_qber, _, _) = class_gains_and_errors(at)
    else:
        # What the finite-key model counts: with afterpulses when the detector has them.
        signal_gain, signal_qber = expected_gain_and_qber(at, src.signal_intensity)
    plob = fibre_plob_bits_per_pulse(at)
    # A lossless channel (0 km, no insertion loss) has an infinite PLOB bound, which
    # JSON cannot carry: it is reported as null.
    plob_finite = plob if math.isfinite(plob) else None
    return {
        "distance_km": float(length_km),
        "model": "asymptotic" if block_pulses is None else "finite-key",
        "decoy": decoy if block_pulses is None or decoy == DecoyOption.one_decoy.value
        else "vacuum-weak",
        "block_pulses": block_pulses,
        "finite_key_bound": None if block_pulses is None or one_decoy else bound,
        "optimised": optimise_settings and not one_decoy,
        "mu": src.signal_intensity,
        "nu": src.decoy_intensity,
        "vacuum_mu": src.vacuum_intensity,
        "z_basis_probability": src.z_basis_probability,
        "class_probabilities": list(src.class_probabilities),
        "transmittance": at.transmittance,
        "detector_availability": availability(at),
        "gain": signal_gain,
        "qber": signal_qber,
        "secret_key_rate_bits_per_pulse": rate,
        "secret_key_rate_bits_per_s": rate * src.pulse_rate_hz,
        "plob_bits_per_pulse": plob_finite,
        "plob_bits_per_s": None if plob_finite is None else plob_finite * src.pulse_rate_hz,
        # Every input of the row (the settings used at this length, optimised or not), so
        # that anyone can recompute it with their own code.
        "preset": at.name,
        "parameters": at.flat(),
    }


def _rate_table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD,
                  caption="key: secret key rate; PLOB: bound of the fibre (Pirandola 2017)")
    for header in ("km", "mu", "nu", "gain", "QBER", "key\nbit/pulse", "key\nbit/s",
                   "PLOB\nbit/pulse"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        plob = row["plob_bits_per_pulse"]
        table.add_row(f"{row['distance_km']:g}", f"{row['mu']:.3f}", f"{row['nu']:.3f}",
                      f"{row['gain']:.2e}", f"{100 * row['qber']:.2f}%",
                      f"{row['secret_key_rate_bits_per_pulse']:.2e}",
                      f"{row['secret_key_rate_bits_per_s']:.2e}",
                      "inf" if plob is None else f"{plob:.2e}")
    return table


@link_app.command("rate")
def rate_command(
    distances_km: Annotated[list[float] | None, typer.Argument(
        metavar="[DISTANCE_KM]...",
        help="More fibre lengths in km, so that --distance-km 0 50 100 works.",
        show_default=False)] = None,
    distance_km: Annotated[list[float] | None, typer.Option(
        "--distance-km", help="Fibre length(s) in km: --distance-km 0 50 100.",
        show_default=False)] = None,
    preset_name: PresetOption = DEFAULT_PRESET,
    config: ConfigOption = None,
    overrides: SetOption = None,
    decoy: Annotated[DecoyOption | None, typer.Option(
        "--decoy", help="Decoy analysis: infinite or vacuum-weak (asymptotic, default "
        "infinite), or one-decoy (finite key of Rusca et al. 2018 at the given settings, "
        "needs --block-pulses).", show_default=False)] = None,
    block_pulses: Annotated[int | None, typer.Option(
        "--block-pulses", parser=parse_pulse_count, metavar="N",
        help="Finite key for blocks of N pulses, 1e12 accepted (Lim et al. 2014; "
        "Rusca et al. 2018 with --decoy one-decoy).")] = None,
    finite_key: FiniteKeyOption = FINITE_KEY_CHOICES[0],
    optimise_option: Annotated[bool | None, typer.Option(
        "--optimise/--no-optimise", help="Optimise intensities (and, for finite key, "
        "basis and class probabilities) at each distance (default: yes, except with "
        "--decoy one-decoy).", show_default=False)] = None,
    max_distance: Annotated[bool, typer.Option(
        "--max-distance", help="Print only the distance where the key rate reaches 0.")] = False,
    output_format: Annotated[OutputFormat, typer.Option(
        "--format", help="table or json.")] = OutputFormat.table,
) -> None:
    """Secret key rate of the link against fibre length (closed form)."""
    with handle_errors():
        distances_given = bool(distance_km or distances_km)
        params = link_parameters_from_options(
            preset_name, config, overrides or [],
            length_set_by="--distance-km" if distances_given else
            "--max-distance" if max_distance else None)
        _check_block_pulses(block_pulses, decoy)
        bound = check_finite_key_option(finite_key)
        if typed_on_command_line("finite_key") and (block_pulses is None
                                                    or decoy is DecoyOption.one_decoy):
            raise ParameterError("--finite-key", finite_key, "only with --block-pulses and "
                                 "without --decoy one-decoy", "the bound of Lim et al. "
                                 "2014 applies to finite blocks of the vacuum + weak decoy "
                                 "protocol")
        if max_distance and distances_given:
            raise ParameterError("--max-distance", True, "not with distances",
                                 "it searches for the distance itself")
        decoy_mode = (decoy or DecoyOption.infinite).value
        one_decoy = decoy is DecoyOption.one_decoy
        if block_pulses is not None and not one_decoy:
            decoy_mode = DecoyOption.vacuum_weak.value
        if one_decoy and (optimise_option or max_distance):
            raise ParameterError(
                "--max-distance" if max_distance else "--optimise", True,
                "is not available with --decoy one-decoy",
                "the one-decoy bound is evaluated at the preset's own settings")
        optimise_settings = not one_decoy if optimise_option is None else optimise_option
        if max_distance:
            from corridor.link.optimize import max_distance_km

            found = max_distance_km(params, decoy_mode, block_pulses,
                                    optimise_settings=optimise_settings, bound=bound)
            # The bisection stops at 10 m: more digits would be noise.
            value = round(found, 2) if math.isfinite(found) else None
            if output_format is OutputFormat.json:
                emit_json({"max_distance_km": value, "model": "asymptotic"
                           if block_pulses is None else "finite-key",
                           "decoy": decoy_mode, "block_pulses": block_pulses,
                           "finite_key_bound": None if block_pulses is None else bound,
                           "optimised": optimise_settings, "preset": params.name,
                           "parameters": params.flat()})
            else:
                console.print("maximum distance: " + (
                    f"{value:.2f} km" if value is not None else
                    "unbounded (the rate never reaches 0 within 10 000 km)"))
            return
        # A length from --set or --config (a link described in full) is the distance
        # rated when none is given; else the default list.
        preset_length = (PRESETS[params.name].fibre.length_km if params.name in PRESETS
                         else params.fibre.length_km)
        set_length = any(parse_override(text)[0] in LENGTH_FIELDS
                         for text in overrides or []) or params.fibre.length_km != preset_length
        lengths = ([*(distance_km or []), *(distances_km or [])]
                   or ([params.fibre.length_km] if set_length else list(DEFAULT_DISTANCES_KM)))
        with as_option("length_km", "--distance-km"):
            rows = [rate_row(params, length, decoy_mode, block_pulses, optimise_settings,
                             bound) for length in lengths]
        if output_format is OutputFormat.json:
            emit_json(rows)
        else:
            model = (f"finite key ({'one decoy' if one_decoy else bound}), "
                     f"N = {block_pulses:.3g} pulses" if block_pulses
                     else f"asymptotic, {decoy_mode} decoys")
            console.print(_rate_table(rows, f"{params.name}: {model}"
                                      + ("" if optimise_settings else ", settings as given")))


@link_app.command("plot")
def plot_command(
    out: Annotated[Path, typer.Option("--out", help="Figure file, .png or .svg.")],
    preset_name: PresetOption = DEFAULT_PRESET,
    config: ConfigOption = None,
    overrides: SetOption = None,
    max_distance_km_option: Annotated[float | None, typer.Option(
        "--max-distance-km", help="Right end of the distance axis in km "
        "(default: 10 % past the infinite-decoy cut-off).", show_default=False)] = None,
    block_pulses: Annotated[list[int] | None, typer.Option(
        "--block-pulses", parser=parse_pulse_count,
        help="Block sizes of the finite-key curves (repeatable) "
        "(default: 1e+08, 1e+10, 1e+12).",
        show_default=False)] = None,
    points: Annotated[int, typer.Option(
        "--points", help="Distances sampled per curve.", min=2, max=1000)] = 60,
) -> None:
    """Plot secret key rate (bits/pulse and bits/s) and the PLOB bound against distance."""
    with handle_errors():
        # Distance is the plot's axis: a --set length_km would be ignored.
        params = link_parameters_from_options(preset_name, config, overrides or [],
                                              length_set_by="the plot's distance axis")
        from corridor.link.plot import DEFAULT_BLOCK_PULSES, write_rate_figure

        sizes = tuple(block_pulses) if block_pulses else DEFAULT_BLOCK_PULSES
        for size in sizes:
            _check_block_pulses(size, None)
        written = write_rate_figure(params, out, max_distance=max_distance_km_option,
                                    block_pulses=sizes, points=points)
        console.print(f"wrote {written}")


_extra_commands_added: list[str] = []


def register(app: typer.Typer) -> None:
    """Add the ``link`` group to ``app``, with ``simulate`` and ``run`` when present."""
    for name in _EXTRA_COMMAND_MODULES:
        if name in _extra_commands_added:  # register() twice must not add them twice
            continue
        module_name = f"corridor.cli.{name}"
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_commands(link_app)
        _extra_commands_added.append(name)
    app.add_typer(link_app, name="link")
