"""LDPC mother codes for reconciliation: degree distributions, construction, cache.

This module owns the codes that ``corridor.distill.ldpc`` reconciles with: the
published degree distributions, the deterministic construction of a parity-check
matrix from (distribution, length, seed), its nested puncturing order, and the
on-disk cache that saves rebuilding it.

Distributions. ``DISTRIBUTIONS`` holds the nine edge-perspective variable-node
distributions lambda(x) of Table I of Elkouss, Leverrier, Alleaume and Boutros,
"Efficient reconciliation protocol for discrete-variable quantum key distribution",
IEEE ISIT 2009, 1879-1883 (arXiv:0901.2140), optimised for the binary symmetric
channel by differential evolution for rates 0.50, 0.55, ..., 0.90. The table's
rate-0.85 lambda sums to 1.0515 (a misprint in one coefficient); it is renormalised
here, as every lambda is. The check side of those codes is concentrated (rho on two
neighbouring degrees for most rates), and the construction below makes it
concentrated: the number of checks is ``round((1 - rate) * n)`` and about 98 % of
the checks end with degree floor or ceil of edges / checks (the others one above or
below, where 4-cycle avoidance ruled out the lowest-degree check).

Construction. Variable degrees come from lambda (node fractions
``(lambda_i / i) / sum_j (lambda_j / j)``, rounded by largest remainder); the graph is
grown by progressive edge growth (Hu, Eleftheriou, Arnold, IEEE Trans. Inf. Theory
51, 386 (2005)), variables in ascending degree, each edge to a lowest-degree check
outside the tree of the variable's current subgraph. Hu et al. expand that tree until
it stops growing or covers every check; here depth 1 is always expanded (so no
4-cycles: ``fallback_edges`` counts any edge where that was impossible, 0 for the
shipped codes) and deeper levels only while the tree holds fewer than
``PEG_REACH_CAP`` checks (at these lengths the depth-1 tree of a high-degree variable
already holds thousands, and expanding it further would cost minutes per code). The
cap matters for the variables placed first, the degree-2 ones, while the graph is
sparse: a cycle of degree-2 variables alone is a codeword of weight equal to its
length. With depth-1 exclusion only (construction version 2) the rate-0.75 and 0.80
codes of n = 2^18 had such cycles of 3 variables (seen as wrong words with the right
syndrome at QBER 4 %); with the cap the shortest has 8 (r90) or 11 (r75, r80), and
the codes with fewer degree-2 variables than checks have none of 12 or fewer
(``shortest_degree_two_cycle``). Ties are broken by
a PCG64 stream from ``seed`` (numpy), so the matrix is a pure function of
(distribution, n, seed, ``CONSTRUCTION_VERSION``).

Puncturing order. ``puncture_order`` lists variables such that every prefix of it
has a parity-check submatrix of full column rank: each listed variable owns a
*private* check that no other listed variable touches (in the spirit of untainted
puncturing, Elkouss, Martinez-Mateo, Martin, IEEE Wireless Commun. Lett. 1, 585
(2012), which asks the same of every check of the variable). Full column rank is
what makes the syndrome disclose exactly ``checks - p`` bits about the key when
``p`` listed positions carry secret random bits (see ``ldpc.py``). Variables are
tried in ascending degree from degree 3 (degree-2 variables are never punctured: a
cycle of them through a punctured one is a codeword of weight 2 on the key positions,
which showed up as undetected errors), ties in seeded random order. ``fill_order`` lists the
other variables in seeded random order, then the puncturing order reversed: the
positions shortened first.

Identity. ``LdpcCode.identity`` is a SHA-256 digest of the construction inputs and
of the index arrays; both parties compare it before any key bit is used.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from corridor.distill import _ldpc_kernels as kernels
from corridor.errors import ParameterError
from corridor.link.rates import binary_entropy

#: Bumped whenever the construction changes: it is part of every code's identity.
CONSTRUCTION_VERSION = 3
#: Progressive edge growth expands the tree beyond depth 1 only while it reaches fewer
#: checks than this (see ``_ldpc_kernels.peg_edges``); part of the construction.
PEG_REACH_CAP = 1024
DEFAULT_CODE_BITS = 1 << 18
DEFAULT_CODE_SEED = 2009
MIN_CODE_BITS = 1 << 10
MAX_CODE_BITS = 1 << 20
#: Environment variable that moves the on-disk cache (default: $XDG_CACHE_HOME or
#: ~/.cache, then corridor/ldpc). Set it to an empty string to disable the cache.
CACHE_ENV = "CORRIDOR_LDPC_CACHE"

_ELKOUSS_2009 = ("Elkouss, Leverrier, Alleaume, Boutros, IEEE ISIT 2009 (arXiv:0901.2140), "
                 "Table I")


@dataclass(frozen=True)
class DegreeDistribution:
    """An edge-perspective variable-node degree distribution and its design rate.

    Attributes:
        name: key in ``DISTRIBUTIONS``.
        rate: design rate; the code has ``round((1 - rate) n)`` checks.
        threshold: the BSC crossover threshold the source reports (density evolution).
        lambda_edges: (degree, fraction of edges) pairs; normalised on use.
        reference: where it is published.
    """

    name: str
    rate: float
    threshold: float
    lambda_edges: tuple[tuple[int, float], ...]
    reference: str = _ELKOUSS_2009

    @property
    def threshold_efficiency(self) -> float:
        """f of the unmodified code at its own BSC threshold, ``(1 - rate) / h(threshold)``.

        A heuristic floor for rate-adapted codes of this ensemble: puncturing and
        shortening move a code away from the ensemble the distribution was optimised
        for, so a first try below it is expected to fail (measured in
        docs/benchmarks.md, "The first try at the code's threshold efficiency")."""
        return (1.0 - self.rate) / binary_entropy(self.threshold)

    def variable_degrees(self, n: int) -> np.ndarray:
        """Degrees of the ``n`` variables, ascending (node fractions, largest remainder)."""
        degrees = np.array([d for d, _ in self.lambda_edges], dtype=np.int64)
        weights = np.array([w for _, w in self.lambda_edges], dtype=np.float64)
        nodes = (weights / degrees) / float((weights / degrees).sum()) * n
        counts = np.floor(nodes).astype(np.int64)
        short = n - int(counts.sum())
        counts[np.argsort(-(nodes - counts), kind="stable")[:short]] += 1
        return np.repeat(degrees, counts)


def _dist(rate: float, threshold: float, *pairs: tuple[int, float]) -> DegreeDistribution:
    # Table I writes lambda_i as the coefficient of x^(i-1).
    return DegreeDistribution(name=f"elkouss2009-r{round(rate * 100):02d}", rate=rate,
                              threshold=threshold, lambda_edges=tuple(pairs))


DISTRIBUTIONS: dict[str, DegreeDistribution] = {d.name: d for d in (
    _dist(0.90, 0.0109, (2, 0.07689), (3, 0.28096), (5, 0.08933), (9, 0.19620),
          (12, 0.30631), (21, 0.05031)),
    _dist(0.85, 0.0199, (2, 0.04528), (3, 0.20537), (4, 0.05878), (5, 0.094274),
          (6, 0.08454), (7, 0.01176), (9, 0.05137), (21, 0.50015)),
    _dist(0.80, 0.0298, (2, 0.09420), (3, 0.18088), (6, 0.11972), (7, 0.08550),
          (8, 0.09816), (17, 0.07194), (26, 0.34960)),
    _dist(0.75, 0.0392, (2, 0.10805), (3, 0.09511), (4, 0.01449), (5, 0.13764),
          (6, 0.10667), (7, 0.05288), (28, 0.01107), (31, 0.47408)),
    _dist(0.70, 0.0504, (2, 0.05343), (3, 0.29406), (6, 0.00896), (9, 0.15571),
          (12, 0.12189), (25, 0.19872), (46, 0.09572), (62, 0.02741), (65, 0.04056),
          (73, 0.00354)),
    _dist(0.65, 0.0633, (2, 0.10451), (3, 0.15652), (4, 0.08057), (5, 0.00056),
          (9, 0.12151), (13, 0.10485), (15, 0.10719), (21, 0.00771), (51, 0.31656)),
    _dist(0.60, 0.0766, (2, 0.11040), (3, 0.20804), (8, 0.14163), (9, 0.14858),
          (26, 0.14438), (27, 0.08909), (46, 0.00748), (71, 0.15038)),
    _dist(0.55, 0.0904, (2, 0.16880), (3, 0.20994), (6, 0.18095), (15, 0.03846),
          (16, 0.02635), (18, 0.23454), (19, 0.05815), (31, 0.08280)),
    _dist(0.50, 0.1071, (2, 0.14438), (3, 0.19026), (4, 0.01836), (5, 0.00233),
          (6, 0.04697), (8, 0.053943), (9, 0.05590), (10, 0.01290), (11, 0.00162),
          (14, 0.06159), (15, 0.13115), (17, 0.01481), (47, 0.00879), (49, 0.00650),
          (55, 0.00210), (56, 0.00099), (57, 0.11178), (58, 0.06238), (59, 0.05094),
          (66, 0.02230)),
)}


@dataclass(frozen=True, eq=False)
class LdpcCode:
    """One mother code: a parity-check matrix with its puncturing and shortening orders.

    Attributes:
        distribution: the key in ``DISTRIBUTIONS``.
        n: code length (variables).
        seed: construction seed.
        checks: number of rows ``m`` (the syndrome length).
        row_start, cols: the matrix in CSR form (int32 columns, int64 offsets).
        puncture_order: variables that may be punctured, in order (see module doc).
        fill_order: the order in which positions are shortened (or revealed).
        fallback_edges: edges placed where no 4-cycle-free choice existed.
        identity: hex SHA-256 of the inputs and arrays (what both parties compare).
        build_seconds: how long the construction took (0.0 when read from the cache).
    """

    distribution: str
    n: int
    seed: int
    checks: int
    row_start: np.ndarray = field(repr=False)
    cols: np.ndarray = field(repr=False)
    puncture_order: np.ndarray = field(repr=False)
    fill_order: np.ndarray = field(repr=False)
    fallback_edges: int
    identity: str
    build_seconds: float = 0.0

    @property
    def rate(self) -> float:
        """Design rate 1 - m / n (the actual rank may make it slightly higher)."""
        return 1.0 - self.checks / self.n

    @property
    def edges(self) -> int:
        return int(self.cols.shape[0])

    @property
    def max_punctured(self) -> int:
        return int(self.puncture_order.shape[0])

    def variable_degrees(self) -> np.ndarray:
        """Degree of every variable, from the matrix."""
        return np.bincount(self.cols, minlength=self.n)

    def check_degrees(self) -> np.ndarray:
        return np.diff(self.row_start)


def _identity(distribution: str, n: int, seed: int, arrays: tuple[np.ndarray, ...]) -> str:
    digest = hashlib.sha256(f"{distribution}|{n}|{seed}|v{CONSTRUCTION_VERSION}".encode())
    for array in arrays:
        digest.update(np.ascontiguousarray(array).astype("<i8").tobytes())
    return digest.hexdigest()


def _validate(distribution: str, n: int, seed: int) -> DegreeDistribution:
    if distribution not in DISTRIBUTIONS:
        raise ParameterError("distribution", distribution,
                             "must be one of " + ", ".join(sorted(DISTRIBUTIONS)))
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_CODE_BITS <= n <= MAX_CODE_BITS:
        raise ParameterError("code_bits", n, f"must be a whole number in [{MIN_CODE_BITS}, "
                                             f"{MAX_CODE_BITS}]")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ParameterError("code_seed", seed, "must be a whole number in [0, 2^63)")
    return DISTRIBUTIONS[distribution]


def construct(distribution: str, n: int, seed: int) -> LdpcCode:
    """Build a code from scratch (no cache); deterministic in its three arguments."""
    dist = _validate(distribution, n, seed)
    began = time.perf_counter()
    rng = np.random.Generator(np.random.PCG64(seed))
    degrees = dist.variable_degrees(n)
    checks = round((1.0 - dist.rate) * n)
    total = int(degrees.sum())
    max_check_degree = total // checks + 16
    var_adj = np.zeros((n, int(degrees.max())), np.int64)
    check_adj = np.zeros((checks, max_check_degree), np.int64)
    check_degree = np.zeros(checks, np.int64)
    randoms = rng.integers(0, 2 ** 62, size=1 << 16, dtype=np.int64)
    fallbacks = kernels.peg_edges(degrees, checks, max_check_degree, randoms, var_adj,
                                  check_adj, check_degree, PEG_REACH_CAP)
    if fallbacks < 0:
        raise ParameterError("distribution", distribution,
                             f"progressive edge growth failed at n = {n}", "try a larger n")
    # Column order: a seeded permutation, so that degree is not a function of position.
    relabel = rng.permutation(n)
    row_start = np.zeros(checks + 1, np.int64)
    np.cumsum(check_degree, out=row_start[1:])
    cols = np.empty(total, np.int32)
    for c in range(checks):
        row = np.sort(relabel[check_adj[c, :check_degree[c]]])
        cols[row_start[c]:row_start[c + 1]] = row
    # Variables' checks (CSC) for the puncturing search, in the new labels.
    var_of_edge = cols.astype(np.int64)
    edge_rows = np.repeat(np.arange(checks, dtype=np.int64), check_degree)
    by_var = np.argsort(var_of_edge, kind="stable")
    var_start = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(var_of_edge, minlength=n), out=var_start[1:])
    var_checks = edge_rows[by_var]
    var_degree = np.diff(var_start)
    # Degree-2 variables are never punctured: a cycle of them closed through a punctured
    # one is a codeword that costs the decoder nothing on that position, and measured
    # undetected errors of weight 2 came from exactly that.
    order = np.lexsort((rng.permutation(n), var_degree)).astype(np.int64)
    candidates = order[var_degree[order] >= 3]
    punct = np.empty(n, np.int64)
    count = kernels.private_check_puncturing(candidates, var_start, var_checks, checks, punct)
    puncture_order = punct[:count].copy()
    rest = np.setdiff1d(np.arange(n, dtype=np.int64), puncture_order)
    fill_order = np.concatenate((rng.permutation(rest), puncture_order[::-1]))
    identity = _identity(distribution, n, seed, (row_start, cols, puncture_order, fill_order))
    return LdpcCode(distribution=distribution, n=n, seed=seed, checks=checks,
                    row_start=row_start, cols=cols, puncture_order=puncture_order,
                    fill_order=fill_order, fallback_edges=int(fallbacks), identity=identity,
                    build_seconds=time.perf_counter() - began)


def cache_dir() -> Path | None:
    """Where built codes are kept, or None when the cache is disabled."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return Path(value).expanduser() if value else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "corridor" / "ldpc"


def _cache_path(directory: Path, distribution: str, n: int, seed: int) -> Path:
    return directory / f"{distribution}-n{n}-s{seed}-v{CONSTRUCTION_VERSION}.npz"


def _load(path: Path, distribution: str, n: int, seed: int) -> LdpcCode | None:
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ("row_start", "cols", "puncture_order", "fill_order")}
            stored = str(data["identity"])
            fallbacks = int(data["fallback_edges"])
    except (OSError, KeyError, ValueError):
        return None
    # A cache file is only trusted when its arrays hash to the identity it claims.
    identity = _identity(distribution, n, seed, (arrays["row_start"], arrays["cols"],
                                                 arrays["puncture_order"],
                                                 arrays["fill_order"]))
    if identity != stored or arrays["row_start"].shape != (round(
            (1.0 - DISTRIBUTIONS[distribution].rate) * n) + 1,):
        return None
    # The hash only shows the file is self-consistent; the decoders read the totals at
    # cols[e] without bounds checks, so the structure is checked too.
    row_start, cols = arrays["row_start"], arrays["cols"]
    if row_start[0] != 0 or row_start[-1] != cols.size or bool(np.any(np.diff(row_start) < 0)) \
            or (cols.size and (int(cols.min()) < 0 or int(cols.max()) >= n)):
        return None
    return LdpcCode(distribution=distribution, n=n, seed=seed,
                    checks=int(arrays["row_start"].shape[0] - 1),
                    row_start=arrays["row_start"].astype(np.int64),
                    cols=arrays["cols"].astype(np.int32),
                    puncture_order=arrays["puncture_order"].astype(np.int64),
                    fill_order=arrays["fill_order"].astype(np.int64),
                    fallback_edges=fallbacks, identity=identity)


def _store(path: Path, code: LdpcCode) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, row_start=code.row_start, cols=code.cols,
                            puncture_order=code.puncture_order, fill_order=code.fill_order,
                            identity=np.array(code.identity),
                            fallback_edges=np.array(code.fallback_edges))
        os.replace(tmp, path)
    except OSError:
        return  # a read-only home only costs a rebuild next time


@functools.lru_cache(maxsize=16)
def get_code(distribution: str, n: int = DEFAULT_CODE_BITS,
             seed: int = DEFAULT_CODE_SEED) -> LdpcCode:
    """The code for (distribution, n, seed): from this process, the disk cache, or built.

    Threads asking for the same code at once (Alice and Bob of one process plan the same
    block) build it once: the others wait for it and take the one built."""
    _validate(distribution, n, seed)
    key = (distribution, n, seed)
    with _BUILD_LOCKS_GUARD:
        lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
    waited = not lock.acquire(blocking=False)
    if waited:
        lock.acquire()
    try:
        ready = _RECENT.get(key) if waited else None   # what the thread waited for built
        if ready is not None:
            return ready
        code = _fetch(distribution, n, seed)
        _RECENT[key] = code
        return code
    finally:
        lock.release()


def _fetch(distribution: str, n: int, seed: int) -> LdpcCode:
    """The code from the disk cache, or built (and stored there)."""
    directory = cache_dir()
    if directory is not None:
        path = _cache_path(directory, distribution, n, seed)
        if path.exists():
            code = _load(path, distribution, n, seed)
            if code is not None:
                return code
    code = construct(distribution, n, seed)
    if directory is not None:
        _store(_cache_path(directory, distribution, n, seed), code)
    return code


_BUILD_LOCKS_GUARD = threading.Lock()
_BUILD_LOCKS: dict[tuple[str, int, int], threading.Lock] = {}
#: The last code each key fetched, while some caller still holds it: a thread that waited
#: for another's build takes it from here (also with the disk cache disabled); one that
#: did not wait reads the disk cache as before.
_RECENT: weakref.WeakValueDictionary[tuple[str, int, int], LdpcCode] = \
    weakref.WeakValueDictionary()


def distributions_by_rate() -> list[DegreeDistribution]:
    """Every distribution, highest rate first."""
    return sorted(DISTRIBUTIONS.values(), key=lambda d: -d.rate)


def count_four_cycles(code: LdpcCode) -> int:
    """Pairs of rows that share two or more columns (each such pair closes a 4-cycle)."""
    seen: dict[tuple[int, int], int] = {}
    bad = 0
    for c in range(code.checks):
        row = code.cols[code.row_start[c]:code.row_start[c + 1]].tolist()
        for i in range(len(row)):
            for j in range(i + 1, len(row)):
                key = (row[i], row[j])
                if key in seen and seen[key] != c:
                    bad += 1
                seen[key] = c
    return bad


def binary_rank_full(code: LdpcCode, columns: np.ndarray) -> bool:
    """Whether the submatrix of ``columns`` has full column rank over GF(2) (small sets)."""
    m = code.checks
    k = int(columns.shape[0])
    if k > m:
        return False
    index = {int(c): i for i, c in enumerate(columns.tolist())}
    rows = np.zeros((m, math.ceil(k / 64) or 1), np.uint64)
    for c in range(m):
        for v in code.cols[code.row_start[c]:code.row_start[c + 1]].tolist():
            i = index.get(v)
            if i is not None:
                rows[c, i // 64] |= np.uint64(1) << np.uint64(i % 64)
    for rank in range(k):   # column ``rank`` must find a pivot below the rows used
        word, bit = rank // 64, np.uint64(1) << np.uint64(rank % 64)
        pivot = next((r for r in range(rank, m) if rows[r, word] & bit), None)
        if pivot is None:
            return False
        rows[[rank, pivot]] = rows[[pivot, rank]]
        hit = (rows[:, word] & bit) != 0
        hit[rank] = False
        rows[hit] ^= rows[rank]
    return True


@functools.lru_cache(maxsize=16)
def degree_two_graph(code: LdpcCode) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checks joined by degree-2 variables, as CSR: (start, neighbour check, variable).

    Check ``c``'s neighbours are ``other[start[c]:start[c + 1]]``, each joined through
    the variable at the same index of ``via``. Cached per code (the LDPC degree-2 repair
    and ``shortest_degree_two_cycle`` both walk it)."""
    degree = np.bincount(code.cols, minlength=code.n)
    rows = np.repeat(np.arange(code.checks, dtype=np.int64), np.diff(code.row_start))
    two = degree[code.cols] == 2
    var, row = code.cols[two].astype(np.int64), rows[two]
    order = np.argsort(var, kind="stable")
    var, row = var[order], row[order]
    a, b, v = row[0::2], row[1::2], var[0::2]
    ends = np.concatenate((a, b))
    others = np.concatenate((b, a))
    via = np.concatenate((v, v))
    order = np.argsort(ends, kind="stable")
    start = np.zeros(code.checks + 1, np.int64)
    np.cumsum(np.bincount(ends, minlength=code.checks), out=start[1:])
    return start, others[order], via[order]



def shortest_degree_two_cycle(code: LdpcCode, limit: int) -> int | None:
    """The fewest degree-2 variables on a cycle of degree-2 variables alone, if some
    cycle has at most ``limit`` of them (None otherwise).

    Such a cycle is a codeword whose weight is its number of variables (every check on
    it holds two of them): the construction keeps them long. Breadth-first search from
    every check over the graph whose edges are the degree-2 variables; for tests and
    diagnostics on small codes.
    """
    start, other, through = degree_two_graph(code)
    neighbours = {c: list(zip(other[start[c]:start[c + 1]].tolist(),
                              through[start[c]:start[c + 1]].tolist(), strict=True))
                  for c in np.flatnonzero(np.diff(start)).tolist()}
    best = limit + 1
    for root in neighbours:
        dist = {root: 0}
        via = {root: -1}
        frontier = [root]
        while frontier and 2 * dist[frontier[0]] + 1 < best:
            following = []
            for x in frontier:
                for y, v in neighbours[x]:
                    if v == via[x]:
                        continue
                    if y in dist:
                        best = min(best, dist[x] + dist[y] + 1)
                    else:
                        dist[y] = dist[x] + 1
                        via[y] = v
                        following.append(y)
            frontier = following
    return best if best <= limit else None
