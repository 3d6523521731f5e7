"""The figure of a simulation: pool levels over time and blocking per SAE pair.

This module owns ``corridor net simulate --plot FILE.png``: one panel per routing
strategy with the levels of the most loaded pools (most key consumed under either
strategy) at the run's sample instants, with the READY and CHARGING thresholds of the
first of them dashed, and one panel of the blocking probability of every SAE pair,
both strategies side by side. Matplotlib's Agg backend writes the file, so no display
is needed.
"""

from __future__ import annotations

from pathlib import Path

from corridor.errors import ParameterError
from corridor.net.plot import save_figure
from corridor.net.simulate import STRATEGIES, Simulation

MOST_LOADED = 4
"""Pools drawn per strategy panel."""


def most_loaded(sim: Simulation, count: int = MOST_LOADED) -> list[int]:
    """Indices of the ``count`` pools that give the most key under either strategy."""
    load = [max(sim.results[name].consumed_bits[i] for name in STRATEGIES)
            for i in range(len(sim.pools))]
    ranked = sorted(range(len(sim.pools)), key=lambda i: (-load[i], sim.pools[i].name))
    return [i for i in ranked[:count] if load[i] > 0] or ranked[:1]


def plot_simulation(sim: Simulation, path: Path) -> Path:
    """Write the figure of ``sim`` to ``path`` (.png, .svg or .pdf)."""
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ParameterError("--plot", str(path), "must end in .png, .svg or .pdf")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = most_loaded(sim)
    hours = [t / 3600.0 for t in sim.sample_times_s]
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), dpi=110)
    for ax, name in zip(axes[:2], STRATEGIES, strict=True):
        result = sim.results[name]
        for i in chosen:
            ax.plot(hours, [row[i] / 1e6 for row in result.samples], linewidth=0.9,
                    label=sim.pools[i].name)
        first = sim.pools[chosen[0]]
        for bits, label in ((first.high_bits, "READY above"), (first.low_bits,
                                                                "CHARGING below")):
            ax.axhline(bits / 1e6, color="0.5", linestyle="--", linewidth=0.8)
            ax.annotate(label, (hours[0], bits / 1e6), fontsize=7, color="0.4",
                        textcoords="offset points", xytext=(2, 2))
        ax.set_ylabel("pool level (Mbit)")
        ax.set_title(f"{name}: blocking {result.blocking_probability:.2%}, key consumed "
                     f"{sum(result.consumed_bits) / 1e9:,.2f} Gbit", fontsize=10)
        ax.legend(loc="center right", fontsize=7)
    axes[1].set_xlabel("time (h)")
    ax = axes[2]
    pairs = sim.results[STRATEGIES[0]].pairs
    positions = list(range(len(pairs)))
    width = 0.8 / len(STRATEGIES)
    for n, name in enumerate(STRATEGIES):
        ax.bar([p + (n - (len(STRATEGIES) - 1) / 2) * width for p in positions],
               [pair.blocking_probability for pair in sim.results[name].pairs], width,
               label=name)
    ax.set_xticks(positions)
    ax.set_xticklabels([f"{p.master_sae_id}\n-> {p.slave_sae_id}" for p in pairs],
                       fontsize=7, rotation=30 if len(pairs) > 6 else 0)
    ax.set_ylabel("blocking probability")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    config = sim.config
    fig.suptitle(f"{sim.network}: {config.hours:g} h, requests of {config.request_bits:,} bit, "
                 f"seed {config.seed}, horizon {config.horizon_s:g} s", fontsize=11)
    return save_figure(fig, path)


__all__ = ["MOST_LOADED", "most_loaded", "plot_simulation"]
