"""Routing demand over key rates: a multi-commodity flow LP solved by column generation.

This module owns the optimisation behind ``corridor net plan`` (docs/network.md, "The
plan"). Its input is abstract: nodes ``0..n-1``, directed arcs with a capacity (key bits
per second that one direction of a link produces), and commodities (a source node, a
target node, a demand in bits per second and a priority). A path carrying ``x`` bits/s
of a commodity uses ``x`` on every arc of the path: a relayed key bit consumes one key
bit on every hop.

The LP, in path form (``x_p`` bits/s on path ``p``, ``s_i`` served of commodity ``i``):

    sum_{p through a} x_p <= c_a              for every arc a
    sum_{p of i} x_p = s_i,   0 <= s_i <= d_i  for every commodity i

is solved once per priority level, most important first, in two steps, then once more:

1. max lambda <= 1 with ``s_i >= lambda d_i`` for the level's commodities (the maximum
   concurrent flow: every pair of the level gets the same largest fraction), the served
   amounts of more important levels held;
2. max the level's total served with ``s_i >= lambda* d_i`` (pairs not held back by a
   bottleneck get more than lambda*, up to their demand);
3. after the last level: min the key consumed, ``sum_p hops(p) x_p``, with every ``s_i``
   held (between the earlier optimum less 1e-9 of it, the LP's rounding, and the
   optimum, with a weight that keeps it at the optimum), so that the routes are the
   cheapest that achieve the plan.

The paths are not enumerated: each LP starts from the fewest-hop path of every
commodity and adds, while one exists, the path of negative reduced cost that a
shortest-path search finds with the LP's duals as arc lengths (column generation). When
none is left the restricted LP is optimal for the full path LP, which is the arc LP.
Every LP is solved by HiGHS through highspy, in one model that keeps its basis
from round to round and from step to step (a warm start: each round adds a few
columns, and re-solving from scratch, as ``scipy.optimize.linprog`` does, cost 20x
more on the 1,000-site network); shortest paths with ``scipy.sparse.csgraph.dijkstra``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from corridor.errors import CorridorError

MAX_ROUNDS = 400
"""Column-generation rounds per LP before the planner gives up (never reached in the
examples and the 1,000-site network; an error says so if it is)."""

_TIE_BREAK = 1e-9  # per hop: csgraph drops zero-length arcs, and ties go to fewer hops
_REDUCED_COST_TOL = 1e-9
_HOLD = 1e-9  # relative slack when a served amount found by one LP bounds the next
_NEGLIGIBLE = 1e-7  # path flows below this share of the largest demand are solver noise


@dataclass(frozen=True)
class Commodity:
    """Demand of ``demand`` bits/s from ``source`` to ``target`` (node indices)."""

    source: int
    target: int
    demand: float
    priority: int = 1


@dataclass
class FlowResult:
    """The routed demand.

    Attributes:
        served: bits/s served per commodity (same order as given).
        paths: per commodity, ``(arcs, bits_per_s)`` of every path that carries flow,
            arcs as indices into the given arcs.
        arc_flow: bits/s on each arc.
        level_fraction: per priority level, the least fraction of its demand that a pair
            of the level got (lambda* of step 1 when every pair has a path; 1.0: all
            served).
        reachable: per commodity, whether any path joins its ends (or they coincide).
        lp_solves: LPs solved, over all rounds and levels.
    """

    served: NDArray[np.float64]
    paths: list[list[tuple[tuple[int, ...], float]]]
    arc_flow: NDArray[np.float64]
    level_fraction: dict[int, float] = field(default_factory=dict)
    reachable: list[bool] = field(default_factory=list)
    lp_solves: int = 0


def _new_highs() -> Any:
    """A silent HiGHS instance. highspy prints its banner on stdout when an instance is
    made, before any option can silence it; ``--format json`` output must stay JSON, so
    file descriptor 1 points at /dev/null for that moment."""
    import highspy

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highs = highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    highs.setOptionValue("output_flag", False)
    # Presolve would discard the basis that makes each re-solve a warm start.
    highs.setOptionValue("presolve", "off")
    highs.setOptionValue("solver", "simplex")
    highs.setOptionValue("threads", 1)  # the plan is sized for one core
    # Primal simplex: a basis stays primal feasible when columns are added, so each
    # round goes on from where the last stopped (3x faster than dual simplex here).
    highs.setOptionValue("simplex_strategy", 4)
    return highs


class _Master:
    """The restricted path LP, kept in one HiGHS model across rounds and steps so that
    every solve starts from the previous basis (adding a column or changing an objective
    leaves it valid).

    Columns: ``s_i`` (one per commodity), ``lambda``, then the paths as they are added.
    Rows: one capacity row per arc, one row ``sum_p x_p - s_i = 0`` per commodity, and
    one row ``lambda d_i - s_i <= 0`` per commodity, free except in step 1 for the
    commodities of the level."""

    def __init__(self, n_nodes: int, tails: NDArray[np.int64], heads: NDArray[np.int64],
                 capacity: NDArray[np.float64], demands: NDArray[np.float64],
                 sources: NDArray[np.int64], targets: NDArray[np.int64]) -> None:
        self.n_nodes = n_nodes
        self.tails, self.heads, self.capacity = tails, heads, capacity
        self.demands, self.sources, self.targets = demands, sources, targets
        self.arc_of = {(int(t), int(h)): a for a, (t, h) in enumerate(zip(tails, heads,
                                                                          strict=True))}
        self.columns: list[tuple[int, tuple[int, ...]]] = []
        self.known: set[tuple[int, tuple[int, ...]]] = set()
        self.solves = 0
        n_arcs, n_com = len(capacity), len(demands)
        self.n_arcs, self.n_com = n_arcs, n_com
        self.highs = _new_highs()
        inf = float("inf")
        no_entries = np.zeros(n_arcs + 2 * n_com, dtype=np.int32)
        self.highs.addRows(n_arcs + 2 * n_com,
                           np.concatenate([np.full(n_arcs, -inf), np.zeros(n_com),
                                           np.full(n_com, -inf)]),
                           np.concatenate([capacity, np.zeros(n_com), np.full(n_com, inf)]),
                           0, no_entries, np.zeros(0, dtype=np.int32), np.zeros(0))
        eq_row, lam_row = n_arcs, n_arcs + n_com
        # s_i: -1 in its flow row and in its lambda row.
        starts = np.arange(0, 2 * n_com, 2, dtype=np.int32)
        indices = np.empty(2 * n_com, dtype=np.int32)
        indices[0::2] = eq_row + np.arange(n_com)
        indices[1::2] = lam_row + np.arange(n_com)
        self.highs.addCols(n_com, np.zeros(n_com), np.zeros(n_com), np.zeros(n_com),
                           2 * n_com, starts, indices, np.full(2 * n_com, -1.0))
        # lambda: d_i in every lambda row.
        self.highs.addCols(1, np.zeros(1), np.zeros(1), np.ones(1), n_com,
                           np.zeros(1, dtype=np.int32),
                           (lam_row + np.arange(n_com)).astype(np.int32), demands)
        self.first_path_col = n_com + 1

    def add(self, commodity: int, arcs: tuple[int, ...]) -> bool:
        """Queue a path column (False if the model has it already)."""
        if (commodity, arcs) in self.known:
            return False
        self.known.add((commodity, arcs))
        self.columns.append((commodity, arcs))
        return True

    def _flush(self, hop_price: float) -> None:
        """Put the queued path columns into the HiGHS model."""
        have = self.highs.getNumCol() - self.first_path_col
        new = self.columns[have:]
        if not new:
            return
        lengths = np.array([len(arcs) + 1 for _, arcs in new], dtype=np.int32)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
        indices = np.fromiter((row for commodity, arcs in new
                               for row in (*arcs, self.n_arcs + commodity)), dtype=np.int32,
                              count=int(lengths.sum()))
        costs = hop_price * (lengths - 1).astype(float)
        self.highs.addCols(len(new), costs, np.zeros(len(new)), np.full(len(new), np.inf),
                           int(lengths.sum()), starts, indices, np.ones(int(lengths.sum())))

    def shortest(self, weights: NDArray[np.float64], commodities: Sequence[int],
                 below: NDArray[np.float64] | None = None
                 ) -> dict[int, tuple[tuple[int, ...], float]]:
        """The shortest path (arcs, length under ``weights``) of each commodity; with
        ``below``, only of those whose path may be shorter than ``below[i]`` (the others'
        paths are not traced: pricing would not take them)."""
        graph = csr_matrix((weights + _TIE_BREAK, (self.tails, self.heads)),
                           shape=(self.n_nodes, self.n_nodes))
        starts = sorted({int(self.sources[i]) for i in commodities})
        distances, predecessors = dijkstra(graph, directed=True, indices=starts,
                                           return_predecessors=True)
        row_of = {node: row for row, node in enumerate(starts)}
        found = {}
        slack = _TIE_BREAK * self.n_nodes
        for i in commodities:
            row_index = row_of[int(self.sources[i])]
            if below is not None and \
                    distances[row_index, self.targets[i]] - slack >= below[i]:
                continue
            row = predecessors[row_index]
            node, arcs = int(self.targets[i]), []
            while node != self.sources[i]:
                previous = int(row[node])
                if previous < 0:
                    break
                arcs.append(self.arc_of[(previous, node)])
                node = previous
            else:
                path = tuple(reversed(arcs))
                found[i] = (path, float(weights[list(path)].sum()))
        return found

    def _objective(self, objective: str, level: Sequence[int], lower: NDArray[np.float64],
                   upper: NDArray[np.float64]) -> None:
        """Costs, bounds and lambda rows of one step (the model minimises)."""
        n_com, highs = self.n_com, self.highs
        n_cols = highs.getNumCol()
        costs = np.zeros(n_cols)
        levels = np.asarray(level, dtype=np.int64)
        if objective == "lambda":
            costs[n_com] = -1.0
        elif objective == "served":
            costs[levels] = -1.0
        else:
            costs[self.first_path_col:] = [len(arcs) for _, arcs in self.columns]
            # Serving a bit more is worth more than any path's hops: the served
            # amounts stay at the upper bounds the earlier steps found.
            costs[:n_com] = -float(self.n_nodes + 1)
        highs.changeColsCost(n_cols, np.arange(n_cols, dtype=np.int32), costs)
        highs.changeColsBounds(n_com, np.arange(n_com, dtype=np.int32), lower, upper)
        highs.changeColBounds(n_com, 0.0, 1.0 if objective == "lambda" else 0.0)
        row_upper = np.full(n_com, np.inf)
        if objective == "lambda":
            row_upper[levels] = 0.0
        highs.changeRowsBounds(n_com, (self.n_arcs + n_com + np.arange(n_com)).astype(np.int32),
                               np.full(n_com, -np.inf), row_upper)

    def solve(self, active: Sequence[int], lower: NDArray[np.float64],
              upper: NDArray[np.float64], objective: str,
              level: Sequence[int] = ()) -> tuple[NDArray[np.float64], NDArray[np.float64],
                                                  float]:
        """Column generation for one objective: ``"lambda"`` (step 1, ``level`` the
        commodities that share lambda), ``"served"`` (step 2, maximise the served of
        ``level``) or ``"key"`` (step 3). Returns (x per column, s per commodity, lambda)."""
        hop_price = 1.0 if objective == "key" else 0.0
        self._flush(hop_price)
        self._objective(objective, level, lower, upper)
        n_arcs, n_com = self.n_arcs, self.n_com
        for _ in range(MAX_ROUNDS):
            self.highs.run()
            self.solves += 1
            status = self.highs.getModelStatus()
            if self.highs.modelStatusToString(status) != "Optimal":
                raise CorridorError(f"the routing LP failed "
                                    f"({self.highs.modelStatusToString(status)}); "
                                    "please report it with the corridor file")
            solution = self.highs.getSolution()
            row_dual = np.asarray(solution.row_dual)
            arc_dual = -row_dual[:n_arcs]
            com_dual = row_dual[n_arcs:n_arcs + n_com]
            pricing = [i for i in active if com_dual[i] > _REDUCED_COST_TOL]
            added = False
            if pricing:
                weights = np.maximum(arc_dual, 0.0) + hop_price
                for i, (arcs, length) in self.shortest(weights, pricing, com_dual).items():
                    if length - com_dual[i] < -_REDUCED_COST_TOL * max(1.0, com_dual[i]):
                        added |= self.add(i, arcs)
            if not added:
                x = np.asarray(solution.col_value)
                return x[self.first_path_col:], x[:n_com], float(x[n_com])
            self._flush(hop_price)
        raise CorridorError(f"the routing LP did not converge in {MAX_ROUNDS} rounds of "
                            "column generation; please report it with the corridor file")


def route_demand(n_nodes: int, tails: Sequence[int], heads: Sequence[int],
                 capacity_bits_per_s: Sequence[float],
                 commodities: Sequence[Commodity]) -> FlowResult:
    """Route ``commodities`` over the directed arcs ``tails[a] -> heads[a]`` of
    ``capacity_bits_per_s[a]`` (module docstring). At most one arc per ordered node pair."""
    tail = np.asarray(tails, dtype=np.int64)
    head = np.asarray(heads, dtype=np.int64)
    demand = np.array([c.demand for c in commodities], dtype=float)
    # Scaled so that the largest demand is 1: the LP's numbers stay near 1.
    scale = float(demand.max()) if len(demand) and demand.max() > 0 else 1.0
    capacity = np.asarray(capacity_bits_per_s, dtype=float) / scale
    n_com = len(commodities)
    reachable = [c.source == c.target for c in commodities]
    routed = [i for i, c in enumerate(commodities) if c.source != c.target]
    master = _Master(n_nodes, tail, head, capacity,
                     np.array([commodities[i].demand / scale for i in routed]),
                     np.array([commodities[i].source for i in routed], dtype=np.int64),
                     np.array([commodities[i].target for i in routed], dtype=np.int64))
    result = FlowResult(served=np.zeros(n_com), paths=[[] for _ in commodities],
                        arc_flow=np.zeros(len(tail)), reachable=reachable)
    for i, c in enumerate(commodities):
        if c.source == c.target:
            result.served[i] = c.demand  # both SAEs at one KME: no link is needed
    if not routed or len(tail) == 0:
        _fractions(result, commodities)
        return result
    initial = master.shortest(np.ones(len(tail)), range(len(routed)))
    for local, (arcs, _) in initial.items():
        master.add(local, arcs)
        reachable[routed[local]] = True
    active_all = sorted(initial)
    if not active_all:
        _fractions(result, commodities)
        return result
    d = master.demands
    lower = np.zeros(len(routed))
    upper = np.zeros(len(routed))
    for priority in sorted({commodities[routed[i]].priority for i in active_all}):
        level = [i for i in active_all if commodities[routed[i]].priority == priority]
        active = [i for i in active_all if commodities[routed[i]].priority <= priority]
        upper[level] = d[level]
        _, _, lam = master.solve(active, lower, upper, "lambda", level)
        lower[level] = np.maximum(lam * d[level] * (1 - _HOLD), 0.0)
        _, s, _ = master.solve(active, lower, upper, "served", level)
        lower[level] = np.maximum(s[level] * (1 - _HOLD), 0.0)
        upper[level] = np.maximum(s[level], lower[level])
    x, s, _ = master.solve(active_all, lower, upper, "key")
    for (local, arcs), rate in zip(master.columns, x, strict=True):
        if rate > _NEGLIGIBLE:
            bits = float(rate) * scale
            result.paths[routed[local]].append((arcs, bits))
            result.arc_flow[list(arcs)] += bits
    for i in routed:
        result.served[i] = sum(bits for _, bits in result.paths[i])
        result.paths[i].sort(key=lambda item: (-item[1], item[0]))
    result.lp_solves = master.solves
    _fractions(result, commodities)
    return result


def _fractions(result: FlowResult, commodities: Sequence[Commodity]) -> None:
    """The least served fraction of each level, from what was served (a pair without a
    path counts with 0)."""
    for priority in sorted({c.priority for c in commodities}):
        result.level_fraction[priority] = float(min(
            result.served[i] / c.demand for i, c in enumerate(commodities)
            if c.priority == priority))


__all__ = ["MAX_ROUNDS", "Commodity", "FlowResult", "route_demand"]
