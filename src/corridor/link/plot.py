"""Figure of secret key rate against distance (matplotlib, rendered by Agg).

This module owns the rate-versus-distance curves and the figure file: asymptotic
rates with infinite decoys and with vacuum + one weak decoy (and the efficient-BB84
limit of the former), finite-key curves for a few block sizes, and the PLOB bound of
the fibre, each in bits per pulse (top panel) and bits per second (bottom panel), log
scale. Settings are re-optimised at every distance (:mod:`corridor.link.optimize`).
A link whose detectors have a dead time also gets its infinite-decoy curve without
the dead time (grey, dashed): the gap at short distance is the saturation of the
receiver, where the rate per second bends away from the growth of the transmittance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The object-oriented Figure, not pyplot: no global figure state and no GUI backend;
# saving renders through Agg (PNG) or the SVG backend, chosen by the suffix.
from matplotlib.figure import Figure

from corridor.errors import ParameterError
from corridor.link.optimize import max_distance_km, optimise
from corridor.link.params import LinkParameters
from corridor.link.rates import dead_gates, fibre_plob_bits_per_pulse, sifting_factor

#: Block sizes (pulses) of the finite-key curves drawn by default.
DEFAULT_BLOCK_PULSES: tuple[int, ...] = (10**8, 10**10, 10**12)
FIGURE_SUFFIXES = (".png", ".svg")


@dataclass(frozen=True)
class RateCurve:
    """One model's optimised secret key rate sampled over distance.

    Attributes:
        label: legend text.
        distance_km: fibre lengths (km).
        rate_bits_per_pulse: optimised secret key rate there; 0 where there is no key.
    """

    label: str
    distance_km: np.ndarray
    rate_bits_per_pulse: np.ndarray


def rate_curve(params: LinkParameters, distances_km: Sequence[float] | np.ndarray,
               decoy: str = "infinite", block_pulses: int | None = None,
               label: str = "") -> RateCurve:
    """Optimised rate at each distance, warm-starting each optimisation from the last.

    Once the rate has reached 0 the longer distances are not optimised again: the
    rate of decoy-state BB84 does not come back with more loss.
    """
    rates = np.zeros(len(distances_km))
    start = params
    for i, length_km in enumerate(distances_km):
        best, rate = optimise(start.with_length(float(length_km)), decoy, block_pulses,
                              warm_start=i > 0)
        if rate <= 0.0:
            break
        rates[i] = rate
        start = best
    return RateCurve(label, np.asarray(distances_km, dtype=float), rates)


def write_rate_figure(params: LinkParameters, out: Path, max_distance: float | None = None,
                      block_pulses: Sequence[int] = DEFAULT_BLOCK_PULSES,
                      points: int = 60) -> Path:
    """Write the rate-versus-distance figure to ``out`` (PNG or SVG by suffix).

    Args:
        params: the link (its length is ignored; its settings seed the optimiser).
        out: ``.png`` or ``.svg`` path; parent folders are created.
        max_distance: right end of the x axis in km; by default 10 % past the
            infinite-decoy cutoff.
        block_pulses: block sizes N of the finite-key curves (may be empty).
        points: distances sampled per curve.

    Returns:
        The path written.
    """
    out = Path(out)
    if out.suffix.lower() not in FIGURE_SUFFIXES:
        raise ParameterError("out", str(out), "must end in .png or .svg")
    if not out.parent.is_dir():  # as every other --out and --plot: no folder is made
        raise ParameterError("out", str(out), "a file in an existing directory")
    if points < 2:
        raise ParameterError("points", points, "must be at least 2")
    if max_distance is None:
        cutoff = max_distance_km(params, "infinite")
        max_distance = 1.1 * cutoff if np.isfinite(cutoff) and cutoff > 0 else 200.0
    if not np.isfinite(max_distance) or max_distance <= 0:
        raise ParameterError("max_distance_km", max_distance, "must be a distance above 0 km")
    distances = np.linspace(0.0, float(max_distance), points)
    p_z = params.source.z_basis_probability
    infinite = rate_curve(params, distances, "infinite",
                          label=f"asymptotic, infinite decoys (GLLP), p_Z = {p_z:g}")
    # The finite-key optimiser biases the bases, so its fair asymptotic reference is
    # efficient BB84's limit q -> 1. The rate is linear in q and the best mu does not
    # depend on q, so that curve is the one above divided by q.
    efficient_limit = RateCurve("asymptotic, infinite decoys, efficient-BB84 limit p_Z -> 1",
                                distances, infinite.rate_bits_per_pulse / sifting_factor(p_z))
    curves = [
        efficient_limit,
        infinite,
        rate_curve(params, distances, "vacuum-weak",
                   label=f"asymptotic, vacuum + weak decoy nu = {params.source.decoy_intensity:g}"
                   f" (Ma 2005), p_Z = {p_z:g}"),
    ]
    curves += [rate_curve(params, distances, block_pulses=n,
                          label=f"finite key, N = 1e{np.log10(n):.3g} pulses (Lim 2014), "
                          "settings and p_Z optimised")
               for n in block_pulses]
    unsaturated = None
    if dead_gates(params) > 0:
        unsaturated = rate_curve(
            params.override({"dead_time_s": 0.0}), distances, "infinite",
            label=f"asymptotic, infinite decoys, p_Z = {p_z:g}, without the "
            f"{params.detector.dead_time_s * 1e9:g} ns dead time")
    plob = np.array([fibre_plob_bits_per_pulse(params.with_length(float(d)))
                     for d in distances])
    pulse_rate_hz = params.source.pulse_rate_hz

    fig = Figure(figsize=(7.5, 10.0))
    ax_pulse, ax_second = fig.subplots(2, 1, sharex=True)
    for ax, scale, unit in ((ax_pulse, 1.0, "bits/pulse"),
                            (ax_second, pulse_rate_hz, "bits/s")):
        ax.plot(distances, plob * scale, color="black", linestyle="--",
                label="PLOB bound of the fibre")
        if unsaturated is not None:
            positive = unsaturated.rate_bits_per_pulse > 0
            ax.plot(unsaturated.distance_km[positive],
                    unsaturated.rate_bits_per_pulse[positive] * scale, color="grey",
                    linestyle="--", label=unsaturated.label)
        for curve in curves:
            positive = curve.rate_bits_per_pulse > 0
            ax.plot(curve.distance_km[positive], curve.rate_bits_per_pulse[positive] * scale,
                    label=curve.label, linestyle=":" if curve is efficient_limit else "-")
        ax.set_yscale("log")
        ax.set_ylabel(f"secret key rate ({unit})")
        ax.grid(True, which="major", alpha=0.3)
        floor = min((c.rate_bits_per_pulse[c.rate_bits_per_pulse > 0].min()
                     for c in curves if np.any(c.rate_bits_per_pulse > 0)), default=1e-9)
        ax.set_ylim(bottom=floor * scale / 10.0)
    handles, labels = ax_pulse.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=1, fontsize="small", frameon=False)
    ax_pulse.set_title(f"{params.name}: {params.fibre.attenuation_db_per_km:g} dB/km, "
                       f"eta_bob {params.detector.efficiency:g}, "
                       f"Y0 {params.background_yield:.2g}, "
                       f"e_d {params.protocol.misalignment_error:g}, "
                       f"f {params.protocol.reconciliation_efficiency:g}, "
                       f"{pulse_rate_hz:.3g} Hz"
                       + (f",\ndead time {params.detector.dead_time_s * 1e9:g} ns, "
                          f"{params.detector.detector_pixels} pixel(s) per detector"
                          if params.detector.dead_time_s > 0 else ""))
    ax_second.set_xlabel("fibre length (km)")
    fig.tight_layout(rect=(0.0, 0.16, 1.0, 1.0))
    fig.savefig(out)
    return out
