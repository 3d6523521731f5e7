"""The corridor file as a network: sites, QKD links between them, SAEs, demand.

This module owns the parts of the corridor file that describe a network rather than one
KME (docs/network.md): the ``[[sites]]`` tables (ID, name, kind, coordinates for maps),
the ``[[demand]]`` tables (key bits per second between a master and a slave SAE, with a
priority), and the checks that only make sense for the whole network: every KME at a
known site, no link within one site, no span longer than one fibre span can carry key,
no demand between SAEs that no chain of links joins. KMEs, links (physics, block size,
simulated or recorded), SAEs and the hybrid policy of each SAE pair (``[[hybrid]]``) are
read by :func:`corridor.kms.node.parse_corridor`, the same code ``corridor up`` uses, so
a file the planner accepts is one the KMEs accept.

Without ``[[sites]]`` every KME's ``site`` name is a site without coordinates (the
two-site default). Every error is a :class:`~corridor.errors.ParameterError` naming
the field (``sites[2].latitude_deg``, ``links.city-ring-1.parameters.length_km``), the
value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from corridor.errors import ParameterError
from corridor.hybrid.policy import Policy, parse_policy
from corridor.kms.config import check_id
from corridor.kms.node import CorridorSpec, LinkSite, parse_corridor
from corridor.tomlfile import read_toml

SITE_KINDS = ("traffic-centre", "data-centre", "cloud-region", "roadside-cabinet",
              "fleet-depot", "exchange", "trusted-node", "vehicle-hub", "other")
"""What a site is; ``other`` for anything else. Only maps and tables use it."""

MAX_SPAN_KM = 500.0
"""Longest fibre span accepted for one link. The longest QKD span reported is 421 km
(Boaron et al., PRL 121, 190502 (2018)) on ultra-low-loss fibre; a longer value is
almost always metres written as kilometres, or a route that needs a trusted node."""

MAX_DEMAND_BITS_PER_S = 1e9
"""Largest key demand of one SAE pair; QKD links give at most ~1e8 bit/s (the 10 km
record of Grünenfelder et al. 2023 is 6.4e7), so more is a unit mistake (bytes, or a
rate per day)."""

_SITE_KEYS = {"id", "name", "kind", "latitude_deg", "longitude_deg"}
_DEMAND_KEYS = {"master_sae_id", "slave_sae_id", "key_rate_bits_per_s", "priority"}
# rekey_after_* are the sessions' business (kms/config.py); planning reads the policy.
_TABLE_KEYS = {"sites": _SITE_KEYS, "demand": _DEMAND_KEYS}


@dataclass(frozen=True)
class Site:
    """A place with KMEs: a traffic centre, a data centre, a roadside cabinet..."""

    site_id: str
    name: str
    kind: str = "other"
    latitude_deg: float | None = None
    longitude_deg: float | None = None

    @property
    def has_coordinates(self) -> bool:
        """True when the file gives both coordinates."""
        return self.latitude_deg is not None and self.longitude_deg is not None


@dataclass(frozen=True)
class Demand:
    """Key that a master SAE needs to share with a slave SAE, in bits per second.

    ``priority`` 1 is served first, then 2, and so on (docs/network.md, "The plan")."""

    master_sae_id: str
    slave_sae_id: str
    key_rate_bits_per_s: float
    priority: int = 1


@dataclass(frozen=True)
class Network:
    """A validated corridor file seen as a network (module docstring)."""

    spec: CorridorSpec
    sites: dict[str, Site]
    demand: tuple[Demand, ...]

    @property
    def name(self) -> str:
        """The corridor's name."""
        return self.spec.name

    @property
    def links(self) -> dict[str, LinkSite]:
        """Every QKD link by ID."""
        return self.spec.links

    def site_of_kme(self, kme_id: str) -> str:
        """The site a KME stands at."""
        return self.spec.kmes[kme_id].site

    def kmes_at(self, site_id: str) -> list[str]:
        """The KMEs at a site, sorted."""
        return sorted(k for k, kme in self.spec.kmes.items() if kme.site == site_id)

    def kme_of_sae(self, sae_id: str) -> str:
        """The KME an SAE is attached to."""
        return self.spec.saes[sae_id]

    def policy(self, master_sae_id: str, slave_sae_id: str) -> Policy:
        """The hybrid policy of an SAE pair: its ``[[hybrid]]`` entry in either order
        (parsed and checked by :func:`corridor.kms.node.parse_corridor`), else the default
        (both-required)."""
        return parse_policy(self.spec.hybrid_pair(master_sae_id, slave_sae_id).policy)


def _entries(data: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    entries = data.get(name, [])
    if not isinstance(entries, list):
        raise ParameterError(name, entries, f"must be a list of [[{name}]] tables")
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ParameterError(f"{name}[{index}]", entry, "must be a TOML table")
        allowed = _TABLE_KEYS[name]
        extra = sorted(set(entry) - allowed)
        if extra:
            raise ParameterError(f"{name}[{index}].{extra[0]}", entry[extra[0]],
                                 f"unknown setting; allowed: {', '.join(sorted(allowed))}")
    return entries


def _coordinate(where: str, value: Any, limit: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or abs(value) > limit:
        raise ParameterError(where, value, f"must be decimal degrees in [-{limit:g}, {limit:g}]")
    return float(value)


def _parse_sites(data: Mapping[str, Any], spec: CorridorSpec) -> dict[str, Site]:
    entries = _entries(data, "sites")
    if not entries:
        return {name: Site(name, name) for name in sorted({k.site for k in spec.kmes.values()})}
    sites: dict[str, Site] = {}
    for index, entry in enumerate(entries):
        site_id = check_id(f"sites[{index}].id", entry.get("id"))
        if site_id in sites:
            raise ParameterError(f"sites[{index}].id", site_id, "must be unique")
        if site_id in spec.links:
            raise ParameterError(f"sites[{index}].id", site_id,
                                 "must differ from every link ID (--fail names either)")
        name = entry.get("name", site_id)
        if not isinstance(name, str) or not name:
            raise ParameterError(f"sites.{site_id}.name", name, "must be a non-empty string")
        kind = entry.get("kind", "other")
        if kind not in SITE_KINDS:
            raise ParameterError(f"sites.{site_id}.kind", kind,
                                 f"must be one of {', '.join(SITE_KINDS)}")
        latitude = _coordinate(f"sites.{site_id}.latitude_deg", entry.get("latitude_deg"), 90.0)
        longitude = _coordinate(f"sites.{site_id}.longitude_deg", entry.get("longitude_deg"),
                                180.0)
        if (latitude is None) != (longitude is None):
            missing = "longitude_deg" if longitude is None else "latitude_deg"
            raise ParameterError(f"sites.{site_id}.{missing}", None,
                                 "must be given with the other coordinate (both or neither)")
        sites[site_id] = Site(site_id, name, kind, latitude, longitude)
    for kme_id, kme in spec.kmes.items():
        if kme.site not in sites:
            known = ", ".join(sorted(sites)[:8]) + (", ..." if len(sites) > 8 else "")
            raise ParameterError(f"kmes.{kme_id}.site", kme.site,
                                 f"must be the id of a [[sites]] table ({known})")
    with_kme = {kme.site for kme in spec.kmes.values()}
    for site_id in sites:
        if site_id not in with_kme:
            raise ParameterError(f"sites.{site_id}", site_id,
                                 "must have at least one KME (a [[kmes]] table with "
                                 f"site = \"{site_id}\")")
    return sites


def _check_spans(data: Mapping[str, Any]) -> None:
    """Length of every link, checked on the raw file so that the error names the link
    (the link model's own check knows only ``length_km``)."""
    links = data.get("links", [])
    if not isinstance(links, list):
        return  # parse_corridor names this mistake
    for index, entry in enumerate(links):
        if not isinstance(entry, Mapping):
            continue
        where = f"links.{entry.get('id', index)}.parameters.length_km"
        parameters = entry.get("parameters", {})
        length = parameters.get("length_km") if isinstance(parameters, Mapping) else None
        if length is None:
            raise ParameterError(where, None, "is required for planning (the fibre length of "
                                 "the span, in km)")
        if isinstance(length, bool) or not isinstance(length, (int, float)) \
                or not math.isfinite(length) or length <= 0 or length > MAX_SPAN_KM:
            raise ParameterError(where, length, f"must be a span length in (0, {MAX_SPAN_KM:g}] km",
                                 "longer routes need a trusted node between two links; "
                                 "a length in metres must be divided by 1000")


def _sae(where: str, value: Any, spec: CorridorSpec) -> str:
    sae_id = check_id(where, value)
    if sae_id not in spec.saes:
        raise ParameterError(where, sae_id, f"must be the id of a [[saes]] table "
                             f"({len(spec.saes)} SAEs)")
    return sae_id


def _components(spec: CorridorSpec) -> dict[str, int]:
    """The connected component of every KME over the links."""
    kmes = sorted(spec.kmes)
    index = {kme: i for i, kme in enumerate(kmes)}
    ends = np.array([(index[link.alice_kme], index[link.bob_kme])
                     for link in spec.links.values()], dtype=np.int64).reshape(-1, 2)
    adjacency = coo_matrix((np.ones(len(ends)), (ends[:, 0], ends[:, 1])),
                           shape=(len(kmes), len(kmes)))
    _, labels = connected_components(adjacency, directed=False)
    return {kme: int(labels[i]) for kme, i in index.items()}


def _parse_demand(data: Mapping[str, Any], spec: CorridorSpec) -> tuple[Demand, ...]:
    demands: list[Demand] = []
    seen: dict[tuple[str, str], int] = {}
    components = _components(spec)
    for index, entry in enumerate(_entries(data, "demand")):
        where = f"demand[{index}]"
        master = _sae(f"{where}.master_sae_id", entry.get("master_sae_id"), spec)
        slave = _sae(f"{where}.slave_sae_id", entry.get("slave_sae_id"), spec)
        if master == slave:
            raise ParameterError(f"{where}.slave_sae_id", slave, "must differ from master_sae_id")
        if (master, slave) in seen:
            raise ParameterError(f"{where}", f"{master} -> {slave}",
                                 f"must be unique; demand[{seen[(master, slave)]}] already "
                                 "names this pair (add the rates into one)")
        seen[(master, slave)] = index
        rate = entry.get("key_rate_bits_per_s")
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) \
                or not math.isfinite(rate) or rate <= 0 or rate > MAX_DEMAND_BITS_PER_S:
            raise ParameterError(f"{where}.key_rate_bits_per_s", rate,
                                 f"must be key bits per second in (0, {MAX_DEMAND_BITS_PER_S:g}]",
                                 "a rate in bytes must be multiplied by 8")
        priority = entry.get("priority", 1)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 1 <= priority <= 9:
            raise ParameterError(f"{where}.priority", priority,
                                 "must be an integer from 1 (served first) to 9")
        master_kme, slave_kme = spec.saes[master], spec.saes[slave]
        if components[master_kme] != components[slave_kme]:
            raise ParameterError(f"{where}", f"{master} -> {slave}",
                                 f"needs a path of links between KME {master_kme!r} and KME "
                                 f"{slave_kme!r}; no chain of [[links]] joins them")
        demands.append(Demand(master, slave, float(rate), priority))
    return tuple(demands)


def parse_network(data: Mapping[str, Any], base_dir: Path | None = None,
                  source_path: str = "(mapping)") -> Network:
    """Validate a parsed corridor file as a network (module docstring)."""
    _check_spans(data)
    spec = parse_corridor(data, base_dir, source_path)
    sites = _parse_sites(data, spec)
    for link in spec.links.values():
        site_a, site_b = spec.kmes[link.alice_kme].site, spec.kmes[link.bob_kme].site
        if site_a == site_b:
            raise ParameterError(f"links.{link.link_id}.bob_kme", link.bob_kme,
                                 f"must stand at another site than alice_kme (both at "
                                 f"{site_a!r}: a link to itself)")
    return Network(spec, sites, _parse_demand(data, spec))


def load_network(path: str | Path) -> Network:
    """Read and validate a corridor file as a network."""
    file = Path(path)
    data = read_toml(file, "FILE", "corridor TOML file")
    return parse_network(data, file.resolve().parent, str(file))


__all__ = ["MAX_DEMAND_BITS_PER_S", "MAX_SPAN_KM", "SITE_KINDS", "Demand", "Network", "Site",
           "load_network", "parse_network"]
