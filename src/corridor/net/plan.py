"""``corridor net plan``: what a network of QKD links can give its demand, before any
hardware is bought.

This module owns the plan of a :class:`~corridor.net.topology.Network` (docs/network.md,
"The plan"):

- the secret key rate of every link from the link model
  (:func:`corridor.link.finite_key.finite_key_rate` at the link's block size, the value
  ``corridor link rate --block-pulses N`` prints), in bits per second of a block cycle:
  ``R = r N / max(N / f, block_interval_s)`` for ``r`` bits per pulse, ``N`` pulses per
  block at ``f`` pulses per second; each direction's pool gets half
  (:mod:`corridor.kms.config`: a block is split between the pools ``A->B`` and ``B->A``);
- the demand routed over those capacities by :func:`corridor.net.flow.route_demand`
  (priority levels, max concurrent flow, then least key consumed);
- per link and direction the key used and the utilisation, per SAE pair what is served,
  what is not and over which paths, the bottleneck links (a direction used to 99.9 % or
  more), and what each pair's hybrid policy decides for sessions that find no QKD key
  (:func:`corridor.hybrid.policy.decide` with ``qkd_missing="unmet_demand"``);
- failures (``--fail LINK|SITE``) and the single-link what-if ranking.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from corridor.errors import ParameterError
from corridor.hybrid.policy import Decision, decide
from corridor.kms.node import LinkSite
from corridor.link.finite_key import finite_key_rate
from corridor.link.params import LinkParameters
from corridor.net.flow import Commodity, route_demand
from corridor.net.topology import Demand, Network

BOTTLENECK_UTILISATION = 0.999
"""A direction used to this share of its key rate or more is a bottleneck."""

_UNMET_TOLERANCE = 1e-6  # relative: less unmet than this is the LP's rounding, not a gap

STATUS_MET = "met"
STATUS_PARTLY_MET = "partly met"
STATUS_UNMET = "unmet"
STATUS_NO_PATH = "no path"
STATUS_SITE_FAILED = "site failed"
STATUS_LOCAL = "local"  # both SAEs at one KME: no link carries their key


@dataclass(frozen=True)
class LinkRate:
    """The modelled secret key rate of one link (module docstring's formula)."""

    link_id: str
    alice_kme: str
    bob_kme: str
    length_km: float
    preset: str
    source: str
    block_pulses: int
    pulse_rate_hz: float
    block_time_s: float
    secret_key_rate_bits_per_pulse: float

    @property
    def secret_key_rate_bits_per_s(self) -> float:
        """Secret bits per second of the whole link, both pools together."""
        return self.secret_key_rate_bits_per_pulse * self.block_pulses / self.block_time_s

    @property
    def capacity_bits_per_s(self) -> float:
        """Key per second that each direction's pool gets: half the link's rate."""
        return self.secret_key_rate_bits_per_s / 2.0


@functools.lru_cache(maxsize=4096)
def _bits_per_pulse(params: LinkParameters, block_pulses: int) -> float:
    # Generated networks repeat lengths (rounded to 0.1 km): each is computed once.
    return finite_key_rate(params, block_pulses)


def link_rate(link: LinkSite) -> LinkRate:
    """The modelled secret key rate of ``link``."""
    pulse_rate_hz = link.params.source.pulse_rate_hz
    return LinkRate(
        link_id=link.link_id, alice_kme=link.alice_kme, bob_kme=link.bob_kme,
        length_km=link.params.fibre.length_km, preset=link.params.name, source=link.source,
        block_pulses=link.block_pulses, pulse_rate_hz=pulse_rate_hz,
        block_time_s=max(link.block_pulses / pulse_rate_hz, link.block_interval_s),
        secret_key_rate_bits_per_pulse=_bits_per_pulse(link.params, link.block_pulses))


@dataclass(frozen=True)
class LinkUse:
    """One link in the plan: its rate and the key used in each direction (bits/s)."""

    rate: LinkRate
    failed: bool
    used_forward_bits_per_s: float = 0.0   # alice_kme -> bob_kme
    used_backward_bits_per_s: float = 0.0  # bob_kme -> alice_kme

    @property
    def utilisation(self) -> float:
        """The larger of the two directions' used / capacity (0 for a failed link or one
        that carries nothing; 1.0 for a link of zero rate that would be needed)."""
        used = max(self.used_forward_bits_per_s, self.used_backward_bits_per_s)
        capacity = self.rate.capacity_bits_per_s
        if used <= 0.0:
            return 0.0
        return used / capacity if capacity > 0 else 1.0


@dataclass(frozen=True)
class PathUse:
    """One path that carries key of an SAE pair."""

    kmes: tuple[str, ...]
    links: tuple[str, ...]
    bits_per_s: float


@dataclass(frozen=True)
class PairPlan:
    """What the plan gives one demand (SAE pair)."""

    demand: Demand
    master_kme: str
    slave_kme: str
    served_bits_per_s: float
    paths: tuple[PathUse, ...]
    status: str
    decision: Decision

    @property
    def unmet_bits_per_s(self) -> float:
        """Demand not served; 0 when the gap is the LP's rounding (below
        ``_UNMET_TOLERANCE`` of the demand), never a 1e-11 left over."""
        demand = self.demand.key_rate_bits_per_s
        gap = demand - self.served_bits_per_s
        return gap if gap > _UNMET_TOLERANCE * demand else 0.0

    @property
    def key_consumed_bits_per_s(self) -> float:
        """Link key this pair uses: its rate on each path times the path's hops."""
        return sum(path.bits_per_s * len(path.links) for path in self.paths)

    @property
    def runs_pqc_only(self) -> bool:
        """True when sessions without QKD key would proceed on PQC alone."""
        return self.decision.proceed and self.decision.inputs == ("pqc",)


@dataclass
class Plan:
    """The whole plan (module docstring)."""

    network: str
    failed_links: tuple[str, ...]
    failed_sites: tuple[str, ...]
    links: list[LinkUse]
    pairs: list[PairPlan]
    level_fraction: dict[int, float]
    lp_solves: int
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def demand_bits_per_s(self) -> float:
        """All demand."""
        return sum(pair.demand.key_rate_bits_per_s for pair in self.pairs)

    @property
    def unmet_bits_per_s(self) -> float:
        """All demand not served."""
        return sum(pair.unmet_bits_per_s for pair in self.pairs)

    @property
    def key_consumed_bits_per_s(self) -> float:
        """Link key all pairs use together."""
        return sum(pair.key_consumed_bits_per_s for pair in self.pairs)

    def bottlenecks(self) -> list[LinkUse]:
        """Links with a direction used to :data:`BOTTLENECK_UTILISATION` or more,
        fullest first."""
        return sorted((use for use in self.links
                       if not use.failed and use.utilisation >= BOTTLENECK_UTILISATION),
                      key=lambda use: (-use.utilisation, use.rate.link_id))

    def as_dict(self) -> dict[str, Any]:
        """Plain data with every input of every number (docs/network.md, "JSON")."""
        return {
            "network": self.network,
            "failed_links": list(self.failed_links),
            "failed_sites": list(self.failed_sites),
            "totals": {
                "demand_bits_per_s": self.demand_bits_per_s,
                "served_bits_per_s": self.demand_bits_per_s - self.unmet_bits_per_s,
                "unmet_bits_per_s": self.unmet_bits_per_s,
                "key_consumed_bits_per_s": self.key_consumed_bits_per_s,
                "pairs": len(self.pairs),
                "pairs_with_unmet_demand": sum(1 for p in self.pairs if _has_unmet(p)),
                "pairs_pqc_only": sum(1 for p in self.pairs if _has_unmet(p)
                                      and p.runs_pqc_only),
                "pairs_refused": sum(1 for p in self.pairs if not p.decision.proceed),
            },
            "levels": [{"priority": level, "served_fraction": fraction}
                       for level, fraction in sorted(self.level_fraction.items())],
            "bottlenecks": [use.rate.link_id for use in self.bottlenecks()],
            "links": [_link_dict(use) for use in self.links],
            "pairs": [_pair_dict(pair) for pair in self.pairs],
            "lp_solves": self.lp_solves,
            "elapsed_s": self.elapsed_s,
            **self.extra,
        }


def _has_unmet(pair: PairPlan) -> bool:
    return pair.unmet_bits_per_s > 0.0


def _link_dict(use: LinkUse) -> dict[str, Any]:
    rate = use.rate
    return {
        "link_id": rate.link_id, "alice_kme": rate.alice_kme, "bob_kme": rate.bob_kme,
        "length_km": rate.length_km, "preset": rate.preset, "source": rate.source,
        "failed": use.failed, "block_pulses": rate.block_pulses,
        "pulse_rate_hz": rate.pulse_rate_hz, "block_time_s": rate.block_time_s,
        "secret_key_rate_bits_per_pulse": rate.secret_key_rate_bits_per_pulse,
        "secret_key_rate_bits_per_s": rate.secret_key_rate_bits_per_s,
        "capacity_bits_per_s_per_direction": rate.capacity_bits_per_s,
        "used_bits_per_s": {f"{rate.alice_kme}->{rate.bob_kme}": use.used_forward_bits_per_s,
                            f"{rate.bob_kme}->{rate.alice_kme}": use.used_backward_bits_per_s},
        "utilisation": use.utilisation,
    }


def _pair_dict(pair: PairPlan) -> dict[str, Any]:
    demand = pair.demand
    return {
        "master_sae_id": demand.master_sae_id, "slave_sae_id": demand.slave_sae_id,
        "master_kme": pair.master_kme, "slave_kme": pair.slave_kme,
        "priority": demand.priority, "demand_bits_per_s": demand.key_rate_bits_per_s,
        "served_bits_per_s": pair.served_bits_per_s, "unmet_bits_per_s": pair.unmet_bits_per_s,
        "status": pair.status,
        "key_consumed_bits_per_s": pair.key_consumed_bits_per_s,
        "paths": [{"kmes": list(path.kmes), "links": list(path.links),
                   "bits_per_s": path.bits_per_s} for path in pair.paths],
        "hybrid_policy": pair.decision.policy.value,
        "without_qkd": {"outcome": pair.decision.outcome,
                        "inputs": list(pair.decision.inputs)},
        "pqc_only": _has_unmet(pair) and pair.runs_pqc_only,
    }


def resolve_failures(network: Network, names: Iterable[str]) -> tuple[set[str], set[str]]:
    """Split ``--fail`` names into failed links and failed sites (a site takes every
    link of its KMEs with it)."""
    links: set[str] = set()
    sites: set[str] = set()
    for name in names:
        if name in network.links:
            links.add(name)
        elif name in network.sites:
            sites.add(name)
        else:
            known = sorted(network.links) + sorted(network.sites)
            shown = ", ".join(known) if len(known) <= 40 else (
                ", ".join(known[:40]) + f", ... ({len(known) - 40} more)")
            raise ParameterError("--fail", name,
                                 f"must be a link ID or a site ID of {network.name!r}: "
                                 f"{shown}")
    return links, sites


def plan(network: Network, fail: Sequence[str] = ()) -> Plan:
    """Plan ``network`` with the links and sites named in ``fail`` out of service."""
    started = time.perf_counter()
    failed_links, failed_sites = resolve_failures(network, fail)
    down_kmes = {kme for site in failed_sites for kme in network.kmes_at(site)}
    kmes = sorted(network.spec.kmes)
    index = {kme: i for i, kme in enumerate(kmes)}
    rates = {link_id: link_rate(link) for link_id, link in network.links.items()}
    alive = [link_id for link_id, link in network.links.items()
             if link_id not in failed_links
             and link.alice_kme not in down_kmes and link.bob_kme not in down_kmes]
    tails: list[int] = []
    heads: list[int] = []
    capacity: list[float] = []
    arc_link: list[tuple[str, bool]] = []  # (link, forward)
    for link_id in alive:
        rate = rates[link_id]
        for forward, (u, v) in ((True, (rate.alice_kme, rate.bob_kme)),
                                (False, (rate.bob_kme, rate.alice_kme))):
            tails.append(index[u])
            heads.append(index[v])
            capacity.append(rate.capacity_bits_per_s)
            arc_link.append((link_id, forward))
    routed: list[int] = []  # positions in network.demand given to the LP
    commodities: list[Commodity] = []
    for position, demand in enumerate(network.demand):
        master, slave = network.kme_of_sae(demand.master_sae_id), \
            network.kme_of_sae(demand.slave_sae_id)
        if master in down_kmes or slave in down_kmes:
            continue
        routed.append(position)
        commodities.append(Commodity(index[master], index[slave], demand.key_rate_bits_per_s,
                                     demand.priority))
    flow = route_demand(len(kmes), tails, heads, capacity, commodities)
    used: dict[tuple[str, bool], float] = {}
    for arc, bits in enumerate(flow.arc_flow):
        used[arc_link[arc]] = float(bits)
    links = [LinkUse(rates[link_id], link_id not in alive, used.get((link_id, True), 0.0),
                     used.get((link_id, False), 0.0)) for link_id in network.links]
    outcome = {position: local for local, position in enumerate(routed)}
    pairs = []
    for position, demand in enumerate(network.demand):
        master, slave = network.kme_of_sae(demand.master_sae_id), \
            network.kme_of_sae(demand.slave_sae_id)
        local = outcome.get(position)
        paths: tuple[PathUse, ...] = ()
        if local is None:
            served, status = 0.0, STATUS_SITE_FAILED
        else:
            served = float(flow.served[local])
            paths = tuple(_path_use(arcs, bits, arc_link, rates, kmes[commodities[local].source])
                          for arcs, bits in flow.paths[local])
            if master == slave:
                status = STATUS_LOCAL
            elif not flow.reachable[local]:
                status = STATUS_NO_PATH
            elif demand.key_rate_bits_per_s - served <= \
                    _UNMET_TOLERANCE * demand.key_rate_bits_per_s:
                status = STATUS_MET
            else:
                status = STATUS_PARTLY_MET if served > 0 else STATUS_UNMET
        unmet = status not in (STATUS_MET, STATUS_LOCAL)
        policy = network.policy(demand.master_sae_id, demand.slave_sae_id)
        decision = decide(policy, qkd_missing="unmet_demand" if unmet else None)
        pairs.append(PairPlan(demand, master, slave, served, paths, status, decision))
    fractions = {level: 0.0 for level in {d.priority for d in network.demand}}
    for level in fractions:
        shares = [pair.served_bits_per_s / pair.demand.key_rate_bits_per_s
                  for pair in pairs if pair.demand.priority == level]
        fractions[level] = min(shares)
    return Plan(network.name, tuple(sorted(failed_links)), tuple(sorted(failed_sites)), links,
                pairs, dict(sorted(fractions.items())), flow.lp_solves,
                time.perf_counter() - started)


def _path_use(arcs: tuple[int, ...], bits: float, arc_link: Sequence[tuple[str, bool]],
              rates: dict[str, LinkRate], start: str) -> PathUse:
    nodes = [start]
    links = []
    for arc in arcs:
        link_id, forward = arc_link[arc]
        rate = rates[link_id]
        nodes.append(rate.bob_kme if forward else rate.alice_kme)
        links.append(link_id)
    return PathUse(tuple(nodes), tuple(links), bits)


@dataclass(frozen=True)
class WhatIf:
    """One single-link failure and what it costs."""

    link_id: str
    unmet_bits_per_s: float
    added_unmet_bits_per_s: float
    pairs_hit: tuple[str, ...]  # "master->slave" of pairs that lose served key
    pairs_refused: int
    pairs_pqc_only: int
    recomputed: bool


def what_if(network: Network, base: Plan | None = None, fail: Sequence[str] = ()) -> list[WhatIf]:
    """Every single link failure (on top of ``fail``), ranked by unmet demand, then by
    the number of pairs it hits.

    A link that carries no key in the base plan is not recomputed: the base routes
    never use it, so they stay feasible without it and the plan (an optimum that a
    smaller network cannot beat) is the same."""
    base = base if base is not None else plan(network, fail)
    served = {(p.demand.master_sae_id, p.demand.slave_sae_id): p.served_bits_per_s
              for p in base.pairs}
    results = []
    for use in base.links:
        if use.failed:
            continue
        link_id = use.rate.link_id
        carries = use.used_forward_bits_per_s > 0 or use.used_backward_bits_per_s > 0
        after = plan(network, [*fail, link_id]) if carries else base
        hit = tuple(f"{p.demand.master_sae_id}->{p.demand.slave_sae_id}" for p in after.pairs
                    if served[(p.demand.master_sae_id, p.demand.slave_sae_id)]
                    - p.served_bits_per_s > _UNMET_TOLERANCE * p.demand.key_rate_bits_per_s)
        results.append(WhatIf(
            link_id, after.unmet_bits_per_s,
            max(0.0, after.unmet_bits_per_s - base.unmet_bits_per_s), hit,
            sum(1 for p in after.pairs if not p.decision.proceed),
            sum(1 for p in after.pairs if _has_unmet(p) and p.runs_pqc_only), carries))
    return sorted(results, key=lambda item: (-item.unmet_bits_per_s, -len(item.pairs_hit),
                                             item.link_id))


def what_if_dict(items: Sequence[WhatIf]) -> list[dict[str, Any]]:
    """Plain data of a what-if ranking."""
    return [{"rank": rank, "failed_link": item.link_id,
             "unmet_bits_per_s": item.unmet_bits_per_s,
             "added_unmet_bits_per_s": item.added_unmet_bits_per_s,
             "pairs_hit": list(item.pairs_hit), "pairs_refused": item.pairs_refused,
             "pairs_pqc_only": item.pairs_pqc_only, "recomputed": item.recomputed}
            for rank, item in enumerate(items, start=1)]


__all__ = ["BOTTLENECK_UTILISATION", "LinkRate", "LinkUse", "PairPlan", "PathUse", "Plan",
           "WhatIf", "link_rate", "plan", "resolve_failures", "what_if", "what_if_dict"]
