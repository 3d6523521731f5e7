"""``corridor net simulate``: key pools filling and draining under the demand over time.

This module owns the discrete-event simulation of a :class:`~corridor.net.topology.Network`
(docs/network.md, "Simulation"):

- one pool per link and direction (``u -> v``), refilled continuously at the rate the
  planner gives that direction (:func:`corridor.net.plan.link_rate`, ``R / 2``), up to
  a capacity (default: the smaller ``max_key_count x key_size_bits`` of the link's two
  KMEs, the pool size of :mod:`corridor.kms.config`); pools start full;
- per demand (SAE pair) a Poisson stream of key requests of ``request_bits`` each, at
  ``key_rate_bits_per_s / request_bits`` requests per second;
- a request is served only if every hop of its path, in its direction of travel, holds
  ``request_bits``; it then takes them from every hop (a relayed key is one-time-padded
  once per hop), otherwise it is blocked and takes nothing;
- two routing strategies over the same arrivals (one event loop serves every arrival to
  both): ``shortest-path`` (:func:`corridor.kms.routing.shortest_path`, fixed per pair)
  and ``key-aware`` (:func:`corridor.kms.routing.key_aware_path` on the pool levels at
  the request's instant);
- each pool's time in the buffer states of QKDNetSim (:data:`STATES`), from thresholds
  given as shares of its capacity (:class:`SimulationConfig`).

Events (arrivals and level samples for the plot) come off one heap (:mod:`heapq`). Pools
are never ticked: a pool keeps its level and the instant it was last touched, and its
level at a later instant is ``min(capacity, level + rate x elapsed)``, computed when an
event needs it. Time in each state is integrated exactly over those linear stretches.

Key-aware routing is the least-cost path of :mod:`corridor.kms.routing`: the cost of a
path is the sum of :func:`corridor.kms.routing.pool_cost` over its hops, and Dijkstra
returns the least. For a pair with at most :data:`MAX_CANDIDATE_PATHS` simple paths the
simulation takes the least-cost one of those (the same minimum, far faster than building
a snapshot graph per request); for more it builds a
:class:`~corridor.kms.routing.NetworkSnapshot` and calls
:func:`~corridor.kms.routing.key_aware_path` itself.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np

from corridor.errors import ParameterError
from corridor.kms.routing import (
    DEFAULT_HORIZON_S,
    LinkState,
    NetworkSnapshot,
    key_aware_path,
    pool_cost,
    shortest_path,
)
from corridor.net.plan import link_rate
from corridor.net.topology import Network

STATES = ("READY", "WARNING", "CHARGING", "EMPTY")
"""Buffer states, as QKDNetSim's QKD buffer names them. With ``C`` the capacity:
READY at ``high_fraction x C`` or more, WARNING from ``low_fraction x C`` up to it,
CHARGING below ``low_fraction x C`` (the pool refills but is short), EMPTY below one
request's bits (it cannot serve a single request)."""

STRATEGIES = ("shortest-path", "key-aware")

DEFAULT_REQUEST_BITS = 256 * 1024
"""One request: 1,024 keys of 256 bits (32 KiB), a batch an application with its own key
buffer fetches; ``--request-bits`` changes it (smaller requests, more events)."""

DEFAULT_HIGH_FRACTION = 0.5
DEFAULT_LOW_FRACTION = 0.1
DEFAULT_SAMPLES = 1000
MAX_CANDIDATE_PATHS = 256
MAX_HOURS = 24.0 * 366
_BATCH = 1024  # exponential draws per pair at a time


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``pool_bits`` None: each pool's capacity from the KMEs' config."""

    hours: float = 24.0
    seed: int = 1
    request_bits: int = DEFAULT_REQUEST_BITS
    pool_bits: float | None = None
    high_fraction: float = DEFAULT_HIGH_FRACTION
    low_fraction: float = DEFAULT_LOW_FRACTION
    horizon_s: float = DEFAULT_HORIZON_S
    samples: int = DEFAULT_SAMPLES

    def __post_init__(self) -> None:
        _number("--hours", self.hours, 0.0, MAX_HOURS, open_low=True)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ParameterError("--seed", self.seed, "must be an integer >= 0")
        if isinstance(self.request_bits, bool) or not isinstance(self.request_bits, int) \
                or self.request_bits < 1:
            raise ParameterError("--request-bits", self.request_bits, "must be an integer >= 1")
        if self.pool_bits is not None:
            _number("--pool-bits", self.pool_bits, 0.0, 1e15, open_low=True)
        _number("--high", self.high_fraction, 0.0, 1.0, open_low=True)
        _number("--low", self.low_fraction, 0.0, 1.0)
        if self.low_fraction > self.high_fraction:
            # Either option may be the one typed: name both and their values.
            raise ParameterError("--low/--high", f"{self.low_fraction:g}/{self.high_fraction:g}",
                                 "--low must not exceed --high (defaults 0.1 and 0.5)")
        _number("--horizon-s", self.horizon_s, 0.0, 86_400.0)
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) \
                or not 2 <= self.samples <= 100_000:
            raise ParameterError("samples", self.samples, "must be an integer in [2, 100000]")

    @property
    def duration_s(self) -> float:
        """Simulated time in seconds."""
        return self.hours * 3600.0


def _number(name: str, value: Any, low: float, high: float, open_low: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < low or value > high \
            or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ParameterError(name, value, f"must be a number in {bracket}{low:g}, {high:g}]")


@dataclass(frozen=True)
class Pool:
    """One link direction's key pool: ``from_kme -> to_kme`` over ``link_id``."""

    link_id: str
    from_kme: str
    to_kme: str
    rate_bits_per_s: float
    capacity_bits: float
    high_bits: float
    low_bits: float
    empty_bits: float

    @property
    def name(self) -> str:
        """``link:from->to``."""
        return f"{self.link_id}:{self.from_kme}->{self.to_kme}"


@dataclass
class PairCounts:
    """What one strategy did for one SAE pair."""

    master_sae_id: str
    slave_sae_id: str
    demand_bits_per_s: float
    offered: int = 0
    served: int = 0
    blocked: int = 0
    key_consumed_bits: float = 0.0  # request bits x hops of every served request
    hops: dict[int, int] = field(default_factory=dict)  # hops -> served requests

    @property
    def blocking_probability(self) -> float:
        """Blocked / offered (0 when nothing was offered)."""
        return self.blocked / self.offered if self.offered else 0.0


@dataclass
class StrategyResult:
    """One strategy over the whole run."""

    strategy: str
    pairs: list[PairCounts]
    level_bits: list[float]           # per pool, at the end
    consumed_bits: list[float]        # per pool
    refilled_bits: list[float]        # per pool: key added (up to capacity)
    overflow_bits: list[float]        # per pool: key the link made while the pool was full
    state_s: list[list[float]]        # per pool, seconds in each of STATES
    samples: list[list[float]]        # per sample instant, every pool's level

    @property
    def offered(self) -> int:
        """Requests offered, all pairs."""
        return sum(p.offered for p in self.pairs)

    @property
    def blocked(self) -> int:
        """Requests blocked, all pairs."""
        return sum(p.blocked for p in self.pairs)

    @property
    def blocking_probability(self) -> float:
        """Blocked / offered, all pairs."""
        return self.blocked / self.offered if self.offered else 0.0


@dataclass
class Simulation:
    """A finished run (module docstring)."""

    network: str
    config: SimulationConfig
    pools: list[Pool]
    sample_times_s: list[float]
    results: dict[str, StrategyResult]
    events: int
    elapsed_s: float
    cpu_s: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data with every input of every number (docs/network.md, "Simulation")."""
        config = self.config
        return {
            "network": self.network,
            "config": {"hours": config.hours, "duration_s": config.duration_s,
                       "seed": config.seed, "request_bits": config.request_bits,
                       "pool_bits": config.pool_bits, "high_fraction": config.high_fraction,
                       "low_fraction": config.low_fraction, "horizon_s": config.horizon_s,
                       "arrivals": "Poisson per pair, rate demand / request_bits",
                       "initial_level": "capacity", "states": list(STATES)},
            "pools": [{"pool": pool.name, "link_id": pool.link_id, "from_kme": pool.from_kme,
                       "to_kme": pool.to_kme, "rate_bits_per_s": pool.rate_bits_per_s,
                       "capacity_bits": pool.capacity_bits, "high_bits": pool.high_bits,
                       "low_bits": pool.low_bits, "empty_bits": pool.empty_bits}
                      for pool in self.pools],
            "strategies": {name: _strategy_dict(result, self.pools)
                           for name, result in self.results.items()},
            "events": self.events,
            "elapsed_s": self.elapsed_s,
            "cpu_s": self.cpu_s,
        }


def _strategy_dict(result: StrategyResult, pools: Sequence[Pool]) -> dict[str, Any]:
    return {
        "offered": result.offered, "served": result.offered - result.blocked,
        "blocked": result.blocked, "blocking_probability": result.blocking_probability,
        "key_consumed_bits": sum(result.consumed_bits),
        "pairs": [{"master_sae_id": p.master_sae_id, "slave_sae_id": p.slave_sae_id,
                   "demand_bits_per_s": p.demand_bits_per_s, "offered": p.offered,
                   "served": p.served, "blocked": p.blocked,
                   "blocking_probability": p.blocking_probability,
                   "key_consumed_bits": p.key_consumed_bits,
                   "served_by_hops": {str(h): n for h, n in sorted(p.hops.items())}}
                  for p in result.pairs],
        "pools": [{"pool": pool.name, "initial_bits": pool.capacity_bits,
                   "final_bits": result.level_bits[i], "consumed_bits": result.consumed_bits[i],
                   "refilled_bits": result.refilled_bits[i],
                   "overflow_bits": result.overflow_bits[i],
                   "state_s": dict(zip(STATES, result.state_s[i], strict=True))}
                  for i, pool in enumerate(pools)],
    }


def build_pools(network: Network, config: SimulationConfig) -> list[Pool]:
    """Both directions of every link, with the planner's rates (``R / 2`` each)."""
    pools = []
    for link_id, link in network.links.items():
        rate = link_rate(link)
        if config.pool_bits is not None:
            capacity = float(config.pool_bits)
        else:
            capacity = 8.0 * min(network.spec.kmes[kme].config.pool_capacity_bytes
                                 for kme in (link.alice_kme, link.bob_kme))
        high = config.high_fraction * capacity
        low = config.low_fraction * capacity
        for u, v in ((link.alice_kme, link.bob_kme), (link.bob_kme, link.alice_kme)):
            pools.append(Pool(link_id, u, v, rate.capacity_bits_per_s, capacity, high, low,
                              min(float(config.request_bits), low)))
    return pools


class _Pools:
    """The levels of every pool under one strategy, refilled lazily."""

    def __init__(self, pools: Sequence[Pool]) -> None:
        self.rate = [p.rate_bits_per_s for p in pools]
        self.cap = [p.capacity_bits for p in pools]
        # state boundaries, ascending: EMPTY | CHARGING | WARNING | READY
        self.bounds = [(p.empty_bits, p.low_bits, p.high_bits) for p in pools]
        self.level = list(self.cap)
        self.touched = [0.0] * len(pools)
        self.consumed = [0.0] * len(pools)
        self.refilled = [0.0] * len(pools)
        self.overflow = [0.0] * len(pools)
        self.state_s = [[0.0] * len(STATES) for _ in pools]

    def level_at(self, i: int, t: float) -> float:
        """Pool ``i``'s level at ``t`` (no bookkeeping)."""
        level = self.level[i] + self.rate[i] * (t - self.touched[i])
        cap = self.cap[i]
        return cap if level > cap else level

    def advance(self, i: int, t: float) -> None:
        """Move pool ``i`` to ``t``: refill, overflow and time in each state."""
        start = self.touched[i]
        if t <= start:
            return
        before = self.level[i]
        rate = self.rate[i]
        made = rate * (t - start)
        after = min(self.cap[i], before + made)
        self.refilled[i] += after - before
        self.overflow[i] += made - (after - before)
        state_s = self.state_s[i]
        bounds = self.bounds[i]
        # state index 3 (EMPTY) .. 0 (READY): 3 minus the boundaries at or below the level
        state = 3 - sum(1 for b in bounds if before >= b)
        now = start
        if rate > 0.0:
            for b in bounds:
                if before < b <= after:
                    crossed = start + (b - before) / rate
                    state_s[state] += crossed - now
                    now = crossed
                    state -= 1
        state_s[state] += t - now
        self.level[i] = after
        self.touched[i] = t

    def take(self, i: int, t: float, bits: float) -> None:
        """Take ``bits`` from pool ``i`` at ``t`` (the caller checked that it has them)."""
        self.advance(i, t)
        self.level[i] -= bits
        self.consumed[i] += bits


def _candidate_paths(graph: nx.Graph, source: str, target: str) -> list[list[str]] | None:
    """Every simple path from ``source`` to ``target``, or None when there are more than
    :data:`MAX_CANDIDATE_PATHS`."""
    paths = list(itertools.islice(nx.all_simple_paths(graph, source, target),
                                  MAX_CANDIDATE_PATHS + 1))
    if len(paths) > MAX_CANDIDATE_PATHS:
        return None
    return sorted(paths, key=lambda path: (len(path), path))


def simulate(network: Network, config: SimulationConfig | None = None,
             progress: Callable[[float], None] | None = None) -> Simulation:
    """Run ``config`` on ``network``; ``progress(simulated_s)`` is called now and then."""
    config = config if config is not None else SimulationConfig()
    started, cpu_started = time.perf_counter(), time.process_time()
    pools = build_pools(network, config)
    index = {(p.from_kme, p.to_kme): i for i, p in enumerate(pools)}
    kmes = sorted(network.spec.kmes)
    links = [LinkState(link_id, link.alice_kme, link.bob_kme)
             for link_id, link in network.links.items()]
    static = NetworkSnapshot.of(kmes, links)
    graph = static.usable_graph()
    bits = float(config.request_bits)
    horizon = config.horizon_s
    duration = config.duration_s

    def hops_of(kme_path: Sequence[str]) -> list[int]:
        return [index[(u, v)] for u, v in itertools.pairwise(kme_path)]

    pairs_kmes = [(network.kme_of_sae(d.master_sae_id), network.kme_of_sae(d.slave_sae_id))
                  for d in network.demand]
    shortest: list[list[int]] = []
    candidates: list[list[list[int]] | None] = []
    for master, slave in pairs_kmes:
        route = shortest_path(static, master, slave)
        if route is None:  # parse_network refuses such demand; kept for a direct caller
            raise ParameterError("demand", f"{master} -> {slave}", "needs a path of links")
        shortest.append(hops_of(route.kmes))
        found = _candidate_paths(graph, master, slave) if master != slave else [[master]]
        candidates.append(None if found is None else [hops_of(p) for p in found])

    states = {name: _Pools(pools) for name in STRATEGIES}
    counts = {name: [PairCounts(d.master_sae_id, d.slave_sae_id, d.key_rate_bits_per_s)
                     for d in network.demand] for name in STRATEGIES}
    samples: dict[str, list[list[float]]] = {name: [] for name in STRATEGIES}

    def key_aware(k: int, t: float) -> list[int]:
        pool_state = states["key-aware"]
        options = candidates[k]
        if options is None:
            snapshot = NetworkSnapshot.of(kmes, [
                LinkState(link.link_id, link.kme_a, link.kme_b,
                          pool_state.level_at(index[(link.kme_a, link.kme_b)], t),
                          pool_state.level_at(index[(link.kme_b, link.kme_a)], t),
                          pools[index[(link.kme_a, link.kme_b)]].rate_bits_per_s,
                          pools[index[(link.kme_b, link.kme_a)]].rate_bits_per_s)
                for link in links])
            route = key_aware_path(snapshot, *pairs_kmes[k], bits, horizon)
            assert route is not None  # connected: shortest_path found a path above
            return hops_of(route.kmes)
        best: list[int] = options[0]
        best_cost = math.inf
        rate = pool_state.rate
        for path in options:
            cost = 0.0
            for i in path:
                cost += pool_cost(pool_state.level_at(i, t), rate[i], bits, horizon)
                if cost >= best_cost:
                    break
            else:
                best, best_cost = path, cost
        return best

    def serve(name: str, k: int, path: list[int], t: float) -> None:
        pool_state = states[name]
        pair = counts[name][k]
        pair.offered += 1
        for i in path:
            if pool_state.level_at(i, t) < bits:
                pair.blocked += 1
                return
        for i in path:
            pool_state.take(i, t, bits)
        pair.served += 1
        pair.key_consumed_bits += bits * len(path)
        pair.hops[len(path)] = pair.hops.get(len(path), 0) + 1

    # Arrivals: one PCG64 stream per pair from the seed, exponential gaps in batches.
    streams = [np.random.default_rng(s) for s in
               np.random.SeedSequence(config.seed).spawn(len(network.demand))]
    scales = [bits / d.key_rate_bits_per_s for d in network.demand]
    gaps: list[list[float]] = [[] for _ in network.demand]

    def gap(k: int) -> float:
        if not gaps[k]:
            gaps[k] = streams[k].exponential(scales[k], _BATCH).tolist()[::-1]
        return gaps[k].pop()

    pair_count = len(network.demand)
    heap: list[tuple[float, int]] = []
    for k in range(pair_count):
        first = gap(k)
        if first < duration:
            heap.append((first, k))
    sample_times = [duration * j / (config.samples - 1) for j in range(config.samples)]
    heap.extend((t, pair_count + j) for j, t in enumerate(sample_times))
    heapq.heapify(heap)
    events = 0
    next_report = 0
    while heap:
        t, k = heapq.heappop(heap)
        events += 1
        if k < pair_count:
            following = t + gap(k)
            if following < duration:
                heapq.heappush(heap, (following, k))
            serve("shortest-path", k, shortest[k], t)
            serve("key-aware", k, key_aware(k, t), t)
        else:
            for name in STRATEGIES:
                samples[name].append([states[name].level_at(i, t) for i in range(len(pools))])
            if progress is not None and k - pair_count >= next_report:
                progress(t)
                next_report += max(1, config.samples // 100)
    results = {}
    for name in STRATEGIES:
        pool_state = states[name]
        for i in range(len(pools)):
            pool_state.advance(i, duration)
        results[name] = StrategyResult(name, counts[name], pool_state.level,
                                       pool_state.consumed, pool_state.refilled,
                                       pool_state.overflow, pool_state.state_s, samples[name])
    return Simulation(network.name, config, pools, sample_times, results, events,
                      time.perf_counter() - started, time.process_time() - cpu_started)


__all__ = ["DEFAULT_HIGH_FRACTION", "DEFAULT_LOW_FRACTION", "DEFAULT_REQUEST_BITS",
           "MAX_CANDIDATE_PATHS", "STATES", "STRATEGIES", "PairCounts", "Pool", "Simulation",
           "SimulationConfig", "StrategyResult", "build_pools", "simulate"]
