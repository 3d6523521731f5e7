"""The map figure of a plan: sites at their coordinates, links coloured by utilisation.

This module owns ``corridor net plan --plot FILE.png``. Sites are drawn at
(longitude, latitude) with an aspect of 1 / cos(mean latitude), so that distances
look right at the network's latitude; a network without coordinates is laid
out by a seeded spring layout and the figure says it is schematic. A link is coloured
by the utilisation of its busier direction (0 to 1, a link above 1 is impossible in a
plan), failed links are grey and dashed, bottlenecks thick. Matplotlib's Agg backend
writes the file, so no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import networkx as nx

from corridor.errors import ParameterError
from corridor.net.plan import BOTTLENECK_UTILISATION, Plan
from corridor.net.topology import Network

_MARKERS = {"traffic-centre": "s", "data-centre": "D", "cloud-region": "h",
            "roadside-cabinet": "^", "fleet-depot": "p", "exchange": "o", "trusted-node": "o",
            "vehicle-hub": "v", "other": "o"}
_LABEL_LIMIT = 40  # more sites than this: no names (they would cover the map)


def _positions(network: Network) -> tuple[dict[str, tuple[float, float]], float | None]:
    """Site positions, and the axes' aspect (1 / cos(mean latitude)) when they are real
    coordinates (None for a schematic layout)."""
    sites = network.sites.values()
    if all(site.has_coordinates for site in sites):
        mean_lat = sum(s.latitude_deg for s in sites if s.latitude_deg is not None) \
            / len(network.sites)
        return ({s.site_id: (float(s.longitude_deg or 0.0), float(s.latitude_deg or 0.0))
                 for s in sites}, 1.0 / math.cos(math.radians(mean_lat)))
    graph = nx.Graph()
    graph.add_nodes_from(sorted(network.sites))
    for link in network.links.values():
        graph.add_edge(network.site_of_kme(link.alice_kme), network.site_of_kme(link.bob_kme))
    layout = nx.spring_layout(graph, seed=0)
    return {site: (float(x), float(y)) for site, (x, y) in layout.items()}, None


def plot_plan(network: Network, plan: Plan, path: Path) -> Path:
    """Write the map of ``plan`` to ``path`` (PNG, or any format matplotlib knows by
    the file's suffix)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from matplotlib.colors import Normalize

    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ParameterError("--plot", str(path), "must end in .png, .svg or .pdf")
    positions, aspect = _positions(network)
    colormap = plt.get_cmap("viridis")
    norm = Normalize(0.0, 1.0)
    many = len(network.sites) > _LABEL_LIMIT
    fig, ax = plt.subplots(figsize=(10, 8) if many else (9, 7), dpi=120)
    segments, colours, widths, failed = [], [], [], []
    for use in plan.links:
        link = network.links[use.rate.link_id]
        ends = [positions[network.site_of_kme(link.alice_kme)],
                positions[network.site_of_kme(link.bob_kme)]]
        if use.failed:
            failed.append(ends)
            continue
        segments.append(ends)
        colours.append(colormap(norm(min(use.utilisation, 1.0))))
        thick = use.utilisation >= BOTTLENECK_UTILISATION
        widths.append((2.2 if thick else 0.8) if many else (5.0 if thick else 2.5))
    ax.add_collection(LineCollection(segments, colors=colours, linewidths=widths, zorder=1))
    if failed:
        ax.add_collection(LineCollection(failed, colors="0.6", linestyles="dashed",
                                         linewidths=1.0 if many else 2.0, zorder=1))
    down = set(plan.failed_sites)
    for kind, marker in _MARKERS.items():
        sites = [s for s in network.sites.values() if s.kind == kind]
        if not sites:
            continue
        ax.scatter([positions[s.site_id][0] for s in sites],
                   [positions[s.site_id][1] for s in sites], marker=marker,
                   s=12 if many else 90,
                   c=["0.75" if s.site_id in down else "white" for s in sites],
                   edgecolors="black", linewidths=0.5 if many else 1.0, zorder=2, label=kind)
    if not many:
        for site in network.sites.values():
            x, y = positions[site.site_id]
            ax.annotate(site.name, (x, y), textcoords="offset points", xytext=(6, 6),
                        fontsize=8, zorder=3)
    ax.autoscale()
    ax.margins(0.12)
    ax.set_aspect(aspect if aspect is not None else "equal")
    if aspect is not None:
        ax.set_xlabel("longitude (deg)")
        ax.set_ylabel("latitude (deg)")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("schematic layout (the corridor file gives no coordinates)")
    colourbar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=colormap), ax=ax,
                             shrink=0.8)
    colourbar.set_label("utilisation of the busier direction")
    title = f"{plan.network}: {len(network.sites)} sites, {len(network.links)} links"
    if plan.failed_links or plan.failed_sites:
        title += f"; failed: {', '.join([*plan.failed_links, *plan.failed_sites])[:60]}"
    unmet = plan.unmet_bits_per_s
    ax.set_title(f"{title}\nunmet demand {unmet:,.0f} of {plan.demand_bits_per_s:,.0f} bit/s",
                 fontsize=10)
    ax.legend(loc="best", fontsize=7, markerscale=0.8 if not many else 2.0)
    return save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (the ``--plot`` option) and close it; an
    unwritable path is a :class:`ParameterError` naming ``--plot``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        fig.savefig(path)
    except OSError as exc:
        raise ParameterError("--plot", str(path), "must be a writable file path",
                             type(exc).__name__) from None
    finally:
        plt.close(fig)
    return path


__all__ = ["plot_plan"]
