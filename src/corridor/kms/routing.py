"""Key-aware routing between KMEs: pure functions of a network snapshot.

This module owns how a path for relayed key is chosen. A :class:`NetworkSnapshot` is
what a KME knows at one instant: the KMEs, the QKD links between them, and per link
and direction the key in the pool (bits), the rate at which it refills (bits/s) and
whether the link is quarantined. Every function here reads a snapshot and returns
paths; none keeps state, so the KMEs (trusted-node relay), the planner and the
discrete-event simulation call the same code, and tests can check it on its own.

Directions follow the pools of :mod:`corridor.kms.config`: relaying a key from KME
``u`` to its neighbour ``v`` one-time-pads it with key of the pool ``u -> v``, so a
path from master to slave consumes key in the direction of travel on every hop.

Routing rules:

- :func:`shortest_path`: fewest hops (the baseline).
- :func:`key_aware_path`: least total cost, with the cost of a hop ``u -> v``

      c(u -> v) = 1 + b / (P(u -> v) + R(u -> v) * T + 1)

  where ``b`` is the key wanted (bits), ``P`` the bits in the pool ``u -> v``, ``R``
  its refill rate (bits/s) and ``T`` the horizon (s) over which refilling counts. A
  hop costs one unit plus the share of what the pool can give in that horizon that
  the request would take: a full pool costs about one hop, an empty one without
  refill costs ``1 + b``. The cost falls strictly as a pool fills, so among paths of
  equal hops the fuller one wins; the ``+ 1`` bit keeps it finite, so a path exists
  whenever the KMEs are connected.
- :func:`disjoint_paths`: up to ``k`` node-disjoint paths of least total key-aware cost
  (a minimum-cost flow over the graph with every interior KME split in two, capacity
  one), for relaying XOR shares of a key so that no single trusted node sees all of
  them.

Every function avoids quarantined links: a quarantined link delivers no key, and a
relay over it would only fail. Ties are broken by KME and link IDs, so the same
snapshot always gives the same path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx

from corridor.errors import ParameterError

DEFAULT_HORIZON_S = 1.0
"""How many seconds of refill :func:`key_aware_path` counts as if already in the pool."""

# Min-cost flow (network simplex) is exact on integers; costs are scaled to this many
# units per hop before rounding.
_COST_SCALE = 1_000_000


@dataclass(frozen=True)
class LinkState:
    """One QKD link as a snapshot sees it.

    Attributes:
        link_id: the link's ID.
        kme_a, kme_b: the KMEs at its two ends.
        pool_bits_ab, pool_bits_ba: key in the pools ``a -> b`` and ``b -> a`` (bits).
        rate_bits_per_s_ab, rate_bits_per_s_ba: refill rate of each pool (bits/s).
        quarantined: True while the link's alarms hold it out of service.
    """

    link_id: str
    kme_a: str
    kme_b: str
    pool_bits_ab: float = 0.0
    pool_bits_ba: float = 0.0
    rate_bits_per_s_ab: float = 0.0
    rate_bits_per_s_ba: float = 0.0
    quarantined: bool = False

    def __post_init__(self) -> None:
        if self.kme_a == self.kme_b:
            raise ParameterError(f"links.{self.link_id}.kme_b", self.kme_b,
                                 "must differ from kme_a (a link joins two KMEs)")
        for name in ("pool_bits_ab", "pool_bits_ba", "rate_bits_per_s_ab",
                     "rate_bits_per_s_ba"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value) or value < 0:
                raise ParameterError(f"links.{self.link_id}.{name}", value,
                                     "must be a finite number >= 0")

    def pool_bits(self, from_kme: str) -> float:
        """Bits in the pool that a relay leaving ``from_kme`` over this link uses."""
        return self.pool_bits_ab if from_kme == self.kme_a else self.pool_bits_ba

    def rate_bits_per_s(self, from_kme: str) -> float:
        """Refill rate of the pool that a relay leaving ``from_kme`` uses."""
        return self.rate_bits_per_s_ab if from_kme == self.kme_a else self.rate_bits_per_s_ba


@dataclass(frozen=True)
class NetworkSnapshot:
    """KMEs and the state of every link between them at one instant."""

    kmes: tuple[str, ...]
    links: tuple[LinkState, ...]
    _graph: nx.Graph = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        known = set(self.kmes)
        if len(known) != len(self.kmes):
            raise ParameterError("kmes", sorted(k for k in known if self.kmes.count(k) > 1),
                                 "must be unique KME IDs")
        graph = nx.Graph()
        graph.add_nodes_from(sorted(known))
        seen: set[str] = set()
        for link in sorted(self.links, key=lambda item: item.link_id):
            for end in (link.kme_a, link.kme_b):
                if end not in known:
                    raise ParameterError(f"links.{link.link_id}", end,
                                         f"must join KMEs of the snapshot ({sorted(known)})")
            if link.link_id in seen:
                raise ParameterError("links", link.link_id, "must be unique link IDs")
            if graph.has_edge(link.kme_a, link.kme_b):
                raise ParameterError(f"links.{link.link_id}", [link.kme_a, link.kme_b],
                                     "must be the only link between these two KMEs")
            seen.add(link.link_id)
            if not link.quarantined:
                graph.add_edge(link.kme_a, link.kme_b, link=link)
        object.__setattr__(self, "_graph", graph)

    @classmethod
    def of(cls, kmes: Iterable[str], links: Iterable[LinkState]) -> NetworkSnapshot:
        """A snapshot from any iterables of KME IDs and link states."""
        return cls(tuple(kmes), tuple(links))

    def usable_graph(self) -> nx.Graph:
        """The KMEs joined by every link that is not quarantined (a copy)."""
        return self._graph.copy()


@dataclass(frozen=True)
class Route:
    """A path from one KME to another: the KMEs in order, the links, and its cost."""

    kmes: tuple[str, ...]
    links: tuple[str, ...]
    cost: float

    @property
    def hops(self) -> int:
        """The number of links on the path."""
        return len(self.links)

    @property
    def interior(self) -> tuple[str, ...]:
        """The trusted nodes: every KME on the path except its two ends."""
        return self.kmes[1:-1]


def pool_cost(pool_bits: float, rate_bits_per_s: float, key_bits: float,
              horizon_s: float = DEFAULT_HORIZON_S) -> float:
    """The key-aware cost of taking ``key_bits`` from a pool of ``pool_bits`` that
    refills at ``rate_bits_per_s`` (the module docstring's formula). The one place the
    formula lives: :func:`hop_cost` and the discrete-event simulation
    (:mod:`corridor.net.simulate`, which keeps pools as plain numbers) both call it."""
    return 1.0 + key_bits / (pool_bits + rate_bits_per_s * horizon_s + 1.0)


def hop_cost(link: LinkState, from_kme: str, key_bits: float,
             horizon_s: float = DEFAULT_HORIZON_S) -> float:
    """The key-aware cost of relaying ``key_bits`` from ``from_kme`` over ``link``
    (the module docstring's formula)."""
    return pool_cost(link.pool_bits(from_kme), link.rate_bits_per_s(from_kme), key_bits,
                     horizon_s)


def _check_request(snapshot: NetworkSnapshot, source: str, target: str,
                   key_bits: float, horizon_s: float) -> None:
    for name, kme in (("source", source), ("target", target)):
        if kme not in snapshot._graph:
            raise ParameterError(name, kme, f"must be a KME of the snapshot "
                                 f"({len(snapshot.kmes)} KMEs)")
    for name, value in (("key_bits", key_bits), ("horizon_s", horizon_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ParameterError(name, value, "must be a finite number >= 0")


def _route(graph: nx.Graph, kmes: list[str], key_bits: float, horizon_s: float) -> Route:
    links = []
    cost = 0.0
    for u, v in itertools.pairwise(kmes):
        link: LinkState = graph.edges[u, v]["link"]
        links.append(link.link_id)
        cost += hop_cost(link, u, key_bits, horizon_s)
    return Route(tuple(kmes), tuple(links), cost)


def shortest_path(snapshot: NetworkSnapshot, source: str, target: str) -> Route | None:
    """The path of fewest hops over links that are not quarantined, or None when the
    two KMEs are not connected. ``cost`` is the hop count."""
    _check_request(snapshot, source, target, 0.0, 0.0)
    try:
        kmes = nx.shortest_path(snapshot._graph, source, target)
    except nx.NetworkXNoPath:
        return None
    route = _route(snapshot._graph, kmes, 0.0, 0.0)
    return Route(route.kmes, route.links, float(route.hops))


def key_aware_path(snapshot: NetworkSnapshot, source: str, target: str, key_bits: float,
                   horizon_s: float = DEFAULT_HORIZON_S) -> Route | None:
    """The path of least key-aware cost for ``key_bits`` (module docstring), or None
    when the two KMEs are not connected over links that are not quarantined."""
    _check_request(snapshot, source, target, key_bits, horizon_s)

    def weight(u: str, v: str, data: Mapping[str, LinkState]) -> float:
        return hop_cost(data["link"], u, key_bits, horizon_s)

    try:
        kmes = nx.dijkstra_path(snapshot._graph, source, target, weight=weight)
    except nx.NetworkXNoPath:
        return None
    return _route(snapshot._graph, kmes, key_bits, horizon_s)


def disjoint_paths(snapshot: NetworkSnapshot, source: str, target: str, k: int,
                   key_bits: float, horizon_s: float = DEFAULT_HORIZON_S) -> list[Route]:
    """Up to ``k`` paths from ``source`` to ``target`` that share no KME but their ends,
    of least total key-aware cost, cheapest first.

    Fewer than ``k`` come back when the network has fewer node-disjoint paths (none
    when the two are not connected); whoever asked decides whether that is enough.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ParameterError("k", k, "must be an integer >= 1")
    _check_request(snapshot, source, target, key_bits, horizon_s)
    if source == target:
        return [Route((source,), (), 0.0)]
    graph = snapshot._graph
    # Node splitting: v_in -> v_out with capacity 1 for every KME but the two ends, so
    # that at most one unit of flow (one path) passes through each trusted node.
    flow_graph = nx.DiGraph()
    super_source = ("super", "source")
    flow_graph.add_edge(super_source, ("out", source), capacity=k, weight=0)
    for kme in graph.nodes:
        if kme not in (source, target):
            flow_graph.add_edge(("in", kme), ("out", kme), capacity=1, weight=0)
    for u, v, data in graph.edges(data=True):
        for a, b in ((u, v), (v, u)):
            if a == target or b == source:
                continue  # a path never leaves the target nor returns to the source
            cost = hop_cost(data["link"], a, key_bits, horizon_s)
            flow_graph.add_edge(("out", a), ("in", b) if b != target else ("out", b),
                                capacity=1, weight=round(cost * _COST_SCALE))
    if ("out", target) not in flow_graph:
        return []
    flow = nx.max_flow_min_cost(flow_graph, super_source, ("out", target))
    routes = []
    for _ in range(flow[super_source][("out", source)]):
        kmes = [source]
        node: tuple[str, str] = ("out", source)
        while node != ("out", target):
            following = next(n for n, units in sorted(flow[node].items()) if units > 0)
            flow[node][following] -= 1
            if following[0] == "in":
                flow[following][("out", following[1])] -= 1
                following = ("out", following[1])
            kmes.append(following[1])
            node = following
        routes.append(_route(graph, kmes, key_bits, horizon_s))
    return sorted(routes, key=lambda route: (route.cost, route.kmes))


__all__ = ["DEFAULT_HORIZON_S", "LinkState", "NetworkSnapshot", "Route", "disjoint_paths",
           "hop_cost", "key_aware_path", "pool_cost", "shortest_path"]
