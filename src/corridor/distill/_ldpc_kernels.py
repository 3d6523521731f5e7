"""Compiled inner loops of LDPC reconciliation (``corridor.distill.ldpc``, ``ldpc_codes``).

Code construction: :func:`peg_edges` (progressive edge growth, Hu, Eleftheriou and
Arnold, IEEE Trans. Inf. Theory 51, 386 (2005), the tree expanded past depth 1 only
while it is small, see ``ldpc_codes``) and :func:`private_check_puncturing` (the nested puncturing
order). Reconciliation: :func:`syndromes` (Alice's encoder: one parity per check
row), :func:`decode_layered_spa` (Bob's layered sum-product decoder, ``phi`` from
a table, many frames per call, early stop when the syndrome matches; the reference)
and :func:`decode_layered_fast` (the same messages, computed without branches, the
syndrome test folded into the sweep and a stop on stalled progress; what ``ldpc.py``
runs).

The parity-check matrix is held as CSR index arrays: the columns of row ``c`` are
``cols[row_start[c]:row_start[c + 1]]``; an edge is a position in ``cols``. Numba
does not check bounds: ``ldpc.py`` validates everything that arrives from the
channel before it reaches a kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

#: Deepest level of the tree that :func:`peg_edges` expands (stamps hold the level).
PEG_MAX_LEVELS = 60


@njit(cache=True, nogil=True)
def peg_edges(var_degrees: np.ndarray, checks: int, max_check_degree: int,
              randoms: np.ndarray, var_adj: np.ndarray, check_adj: np.ndarray,
              check_degree: np.ndarray, reach_cap: int) -> int:
    """Grow the Tanner graph edge by edge; returns the number of edges placed by the
    fallback rule (0 when every edge closes no cycle of length 4).

    Variables are taken in the order given (ascending degree, as Hu et al.). For each
    new edge of variable ``v`` the tree of ``v``'s current subgraph is expanded level
    by level from ``v``'s checks (level 0; level ``l + 1``: the checks of the variables
    on level ``l``'s checks). Level 1 is always expanded in full (excluding it rules
    out 4-cycles); a deeper level only while fewer than ``reach_cap`` checks are
    reached, and a level cut short by that cap does not count. The checks on the
    complete levels are excluded, except when they are all the checks: then the last
    level is left open (Hu et al.'s rule: the new edge goes as far as the tree
    allows). The edge goes to a check of lowest current degree among the others; ties
    are broken by scanning that degree's bucket from a position drawn from
    ``randoms``. When every check is excluded at depth 1, only ``v``'s own checks are
    (no double edges), and the edge counts as a fallback. ``var_adj[v,
    :var_degrees[v]]`` and ``check_adj[c, :check_degree[c]]`` receive the graph.

    The excluded depth bounds the cycles an edge closes: an edge excluding levels
    ``0..L`` closes no cycle shorter than ``2 L + 4``. Variables of degree 2 come
    first, while the graph is sparse, so they go deepest: cycles made of degree-2
    variables alone (codewords of weight equal to their number) are long.
    """
    n = var_degrees.shape[0]
    # Checks sorted by current degree: bucket d holds order[start[d]:start[d + 1]].
    order = np.arange(checks)
    pos = np.arange(checks)
    start = np.full(max_check_degree + 2, checks, np.int64)
    start[0] = 0
    # stamp[c] = tick + PEG_MAX_LEVELS + 1 - level for a check reached at ``level`` by
    # the current edge; anything below ``tick`` is unreached.
    stamp = np.zeros(checks, np.int64)
    queue = np.empty(checks, np.int64)
    top = PEG_MAX_LEVELS + 1
    tick = 0
    draw = 0
    fallbacks = 0
    for v in range(n):
        for k in range(var_degrees[v]):
            tick += PEG_MAX_LEVELS + 2
            for a in range(k):
                c = var_adj[v, a]
                stamp[c] = tick + top
                queue[a] = c
            lo = 0
            hi = k
            depth = 1   # the levels excluded: 0..depth (level 1 even when it is empty)
            level = 0
            while hi > lo and level < PEG_MAX_LEVELS:
                mark = tick + top - (level + 1)
                end = hi
                cut = False
                for i in range(lo, hi):
                    c = queue[i]
                    for b in range(check_degree[c]):
                        u = check_adj[c, b]
                        # Variables before v are complete; v itself has k edges so far.
                        for j in range(var_degrees[u] if u < v else k):
                            c2 = var_adj[u, j]
                            if stamp[c2] < tick:
                                stamp[c2] = mark
                                queue[end] = c2
                                end += 1
                    if level >= 1 and end > reach_cap:
                        cut = True
                        break
                if cut:
                    break
                if end == checks:   # every check reached: leave the last level open
                    break
                level += 1
                if level > depth:
                    depth = level
                if end == hi or end > reach_cap:
                    break
                lo = hi
                hi = end
            chosen = -1
            for attempt in range(2):
                # Excluded: levels 0..depth, then (fallback) v's own checks only.
                limit = tick + top - (depth if attempt == 0 else 0)
                for d in range(max_check_degree):
                    b0 = start[d]
                    b1 = start[d + 1]
                    size = b1 - b0
                    if size <= 0:
                        continue
                    offset = randoms[draw % randoms.shape[0]] % size
                    draw += 1
                    for t in range(size):
                        c = order[b0 + (offset + t) % size]
                        if stamp[c] < limit:
                            chosen = c
                            break
                    if chosen >= 0:
                        break
                if chosen >= 0:
                    if attempt == 1:
                        fallbacks += 1
                    break
            if chosen < 0:
                return -1
            d = check_degree[chosen]
            if d + 1 >= max_check_degree:
                return -1
            # Move ``chosen`` from bucket d to bucket d + 1.
            last = start[d + 1] - 1
            other = order[last]
            p = pos[chosen]
            order[p] = other
            pos[other] = p
            order[last] = chosen
            pos[chosen] = last
            start[d + 1] -= 1
            var_adj[v, k] = chosen
            check_adj[chosen, d] = v
            check_degree[chosen] = d + 1
    return fallbacks


@njit(cache=True, nogil=True)
def private_check_puncturing(candidates: np.ndarray, var_start: np.ndarray,
                             var_checks: np.ndarray, checks: int, out: np.ndarray) -> int:
    """Greedy nested puncturing order: each chosen variable owns a *private* check.

    A candidate is taken when none of its checks is already some punctured
    variable's private check, and one of its checks touches no punctured variable
    yet (that check becomes its private one). Every prefix of the order then has a
    parity-check submatrix of full column rank (the private rows form a permutation
    matrix). Returns how many variables were taken into ``out``.
    """
    punctured_on = np.zeros(checks, np.int64)
    private = np.zeros(checks, np.bool_)
    count = 0
    for i in range(candidates.shape[0]):
        v = candidates[i]
        ok = True
        own = -1
        for e in range(var_start[v], var_start[v + 1]):
            c = var_checks[e]
            if private[c]:
                ok = False
                break
            if own < 0 and punctured_on[c] == 0:
                own = c
        if not ok or own < 0:
            continue
        private[own] = True
        for e in range(var_start[v], var_start[v + 1]):
            punctured_on[var_checks[e]] += 1
        out[count] = v
        count += 1
    return count


@njit(cache=True, nogil=True)
def syndromes(words: np.ndarray, row_start: np.ndarray, cols: np.ndarray,
              out: np.ndarray) -> None:
    """``out[f, c]`` = parity of ``words[f]`` (0/1 bytes) over row ``c``."""
    for f in range(words.shape[0]):
        w = words[f]
        for c in range(row_start.shape[0] - 1):
            acc = 0
            for e in range(row_start[c], row_start[c + 1]):
                acc ^= w[cols[e]]
            out[f, c] = acc


#: phi(x) = -log tanh(x / 2) tabulated on x = (i + 1/2) / PHI_SCALE; ``phi`` is its own
#: inverse, so one table serves both directions of the check update.
PHI_SCALE = 512.0
PHI_SIZE = 16384


def phi_table() -> np.ndarray:
    """The table :func:`decode_layered_spa` reads (float32, ``PHI_SIZE`` entries)."""
    x = (np.arange(PHI_SIZE, dtype=np.float64) + 0.5) / PHI_SCALE
    return (-np.log(np.tanh(x / 2.0))).astype(np.float32)


_SCALE32 = np.float32(PHI_SCALE)
_LAST32 = np.float32(PHI_SIZE - 1)
#: +1 and -1 by sign bit: ``mag * _SIGN[b]`` is ``mag * (1 - 2 b)`` without converting b.
_SIGN = np.array([1.0, -1.0], np.float32)


@njit(cache=True, nogil=True, inline="always")
def _phi(table: np.ndarray, x: float) -> float:
    # x >= 0 always (a magnitude, or a sum of table values less one of its terms,
    # which rounding to nearest cannot make negative). Clamping in float32 before the
    # conversion gives the same index as truncating and then clamping, without the
    # data-dependent branches; the unsigned index spares the negative-index wrap.
    # Decisions bit for bit the same; the speed-up is in docs/benchmarks.md.
    return table[np.uint32(min(x * _SCALE32, _LAST32))]


@njit(cache=True, nogil=True)
def decode_layered_spa(llr: np.ndarray, target: np.ndarray, row_start: np.ndarray,
                       cols: np.ndarray, frames: np.ndarray, max_iterations: int,
                       table: np.ndarray, out: np.ndarray, converged: np.ndarray,
                       iterations: np.ndarray, state_r: np.ndarray, state_total: np.ndarray,
                       slot: np.ndarray, resume: np.ndarray) -> None:
    """Layered sum-product decoding of the listed frames.

    ``llr[f, v]`` is the channel log-likelihood ratio of bit ``v`` being 0 (positive:
    0 more likely); ``target[f, c]`` the syndrome the word must have. Each check row
    in turn takes its variables' extrinsic values ``q = L - r`` and sends back the
    tanh-rule message in the log domain, ``phi(sum of the others' phi(|q|))`` with the
    sign that makes the row's parity ``target`` (``phi`` from ``table``, see
    :func:`phi_table`), updating ``L`` at once (layered scheduling: about half the
    sweeps of flooding). After each sweep the hard decision is checked against the
    whole syndrome; decoding stops as soon as it matches. ``out[f]`` gets the hard
    decision, ``converged[f]`` whether it matched, ``iterations[f]`` the sweeps.

    Warm start: a frame with ``slot[f] = k >= 0`` that does not converge leaves its
    check messages and totals in ``state_r[k]``, ``state_total[k]``; with
    ``resume[f]`` it starts from them instead of from ``llr`` (the caller has added
    any change of channel values to ``state_total[k]``).
    """
    n = llr.shape[1]
    edges = cols.shape[0]
    checks = row_start.shape[0] - 1
    widest = 0
    for c in range(checks):
        widest = max(widest, row_start[c + 1] - row_start[c])
    r = np.zeros(edges, np.float32)
    q = np.empty(widest, np.float32)
    fq = np.empty(widest, np.float32)
    total = np.empty(n, np.float32)
    hard = np.empty(n, np.uint8)
    for i in range(frames.shape[0]):
        f = frames[i]
        k = slot[f]
        if k >= 0 and resume[f]:
            for v in range(n):
                total[v] = state_total[k, v]
            for e in range(edges):
                r[e] = state_r[k, e]
        else:
            for v in range(n):
                total[v] = llr[f, v]
            r[:] = 0.0
        done = False
        sweeps = 0
        for _ in range(max_iterations):
            sweeps += 1
            for c in range(checks):
                lo = row_start[c]
                hi = row_start[c + 1]
                negative = target[f, c]
                acc = np.float32(0.0)
                for e in range(lo, hi):
                    x = total[cols[e]] - r[e]
                    q[e - lo] = x
                    if x < 0:
                        negative ^= 1
                        x = -x
                    y = _phi(table, x)
                    fq[e - lo] = y
                    acc += y
                for e in range(lo, hi):
                    x = q[e - lo]
                    mag = _phi(table, acc - fq[e - lo])
                    flip = negative ^ (1 if x < 0 else 0)
                    msg = -mag if flip else mag
                    r[e] = msg
                    total[cols[e]] = x + msg
            for v in range(n):
                hard[v] = 1 if total[v] < 0 else 0
            done = True
            for c in range(checks):
                acc2 = target[f, c]
                for e in range(row_start[c], row_start[c + 1]):
                    acc2 ^= hard[cols[e]]
                if acc2:
                    done = False
                    break
            if done:
                break
        for v in range(n):
            out[f, v] = hard[v]
        converged[f] = done
        iterations[f] = sweeps
        if k >= 0 and not done:
            for v in range(n):
                state_total[k, v] = total[v]
            for e in range(edges):
                state_r[k, e] = r[e]


@njit(cache=True, nogil=True)
def decode_layered_fast(llr: np.ndarray, target: np.ndarray, row_start: np.ndarray,
                        cols: np.ndarray, frames: np.ndarray, max_iterations: int,
                        table: np.ndarray, out: np.ndarray, converged: np.ndarray,
                        iterations: np.ndarray, state_r: np.ndarray, state_total: np.ndarray,
                        slot: np.ndarray, resume: np.ndarray, stall_sweeps: int) -> None:
    """Layered sum-product decoding, as :func:`decode_layered_spa`, made cheaper.

    Arguments and warm start as :func:`decode_layered_spa`, plus ``stall_sweeps``.
    Every check message is computed with exactly the same float32 operations in the
    same order as the reference, so sweep by sweep the state is bit for bit the same;
    what differs is when a frame stops:

    - the signs are handled without branches (a multiply by +-1 read from a
      two-entry table; the reference's data-dependent branches mispredict on
      uncertain bits), and the edge loops index with unsigned integers, which spares
      numba's negative-index wrap on every access (with the branch-free table index
      of :func:`_phi`, 2.2-2.9x fewer nanoseconds per edge-sweep in whole benchmark
      runs);
    - the syndrome test rides along with the sweep: each row's parity is taken from
      the signs of its totals just after its update. Only when every row was satisfied
      at its own update is the hard decision tested against the whole syndrome (the
      reference pays that full pass after every sweep). A late row can flip a bit of
      an earlier one, so a frame may stop one sweep after the reference would;
    - a frame whose count of rows unsatisfied at their update has not reached a new
      minimum for ``stall_sweeps`` sweeps (0: never) stops as failed: near the
      threshold such frames rarely converge and would spend all ``max_iterations``;
      the blind retry resumes them from the saved state.
    """
    n = llr.shape[1]
    edges = cols.shape[0]
    checks = row_start.shape[0] - 1
    widest = 0
    for c in range(checks):
        widest = max(widest, row_start[c + 1] - row_start[c])
    r = np.zeros(edges, np.float32)
    q = np.empty(widest, np.float32)
    fq = np.empty(widest, np.float32)
    total = np.empty(n, np.float32)
    hard = np.empty(n, np.uint8)
    zero = np.float32(0.0)
    for i in range(frames.shape[0]):
        f = frames[i]
        k = slot[f]
        if k >= 0 and resume[f]:
            for v in range(n):
                total[v] = state_total[k, v]
            for e in range(edges):
                r[e] = state_r[k, e]
        else:
            for v in range(n):
                total[v] = llr[f, v]
            r[:] = 0.0
        done = False
        sweeps = 0
        best = checks + 1
        since = 0
        for _ in range(max_iterations):
            sweeps += 1
            unsatisfied = 0
            for c in range(checks):
                lo = np.uint64(row_start[c])
                hi = np.uint64(row_start[c + 1])
                negative = np.uint64(target[f, c])
                acc = np.float32(0.0)
                for e in range(lo, hi):
                    x = total[np.uint32(cols[e])] - r[e]
                    q[e - lo] = x
                    negative ^= np.uint64(x < zero)
                    y = _phi(table, abs(x))
                    fq[e - lo] = y
                    acc += y
                parity = np.int64(target[f, c])
                for e in range(lo, hi):
                    x = q[e - lo]
                    mag = _phi(table, acc - fq[e - lo])
                    msg = mag * _SIGN[negative ^ np.uint64(x < zero)]
                    r[e] = msg
                    t = x + msg
                    total[np.uint32(cols[e])] = t
                    parity ^= np.int64(t < zero)
                unsatisfied += int(parity)
            if unsatisfied == 0:
                for v in range(n):
                    hard[v] = 1 if total[v] < zero else 0
                done = True
                for c in range(checks):
                    acc2 = target[f, c]
                    for e in range(row_start[c], row_start[c + 1]):
                        acc2 ^= hard[cols[e]]
                    if acc2:
                        done = False
                        break
                if done:
                    break
            if unsatisfied < best:
                best = unsatisfied
                since = 0
            else:
                since += 1
                if stall_sweeps > 0 and since >= stall_sweeps:
                    break
        for v in range(n):
            out[f, v] = 1 if total[v] < zero else 0
        converged[f] = done
        iterations[f] = sweeps
        if k >= 0 and not done:
            for v in range(n):
                state_total[k, v] = total[v]
            for e in range(edges):
                state_r[k, e] = r[e]
