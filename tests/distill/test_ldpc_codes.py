"""Tests of corridor.distill.ldpc_codes: degree distributions, PEG graph, puncturing, cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import corridor.distill.ldpc_codes as codes
from corridor.distill.ldpc_codes import (
    DISTRIBUTIONS,
    binary_rank_full,
    construct,
    count_four_cycles,
    get_code,
    shortest_degree_two_cycle,
)
from corridor.errors import ParameterError


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(codes.CACHE_ENV, str(tmp_path / "ldpc-cache"))
    get_code.cache_clear()


def test_every_published_distribution_is_normalised_and_has_its_rate() -> None:
    assert len(DISTRIBUTIONS) == 9
    for dist in DISTRIBUTIONS.values():
        total = sum(w for _, w in dist.lambda_edges)
        # Table I's rate-0.85 row sums to 1.0515 (misprint); the others to 1 +- 1e-4.
        assert total == pytest.approx(1.0515 if dist.rate == 0.85 else 1.0, abs=2e-4)
        assert dist.threshold < 0.5 and dist.rate in {0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
                                                      0.85, 0.9}
        degrees = dist.variable_degrees(10_000)
        assert degrees.shape == (10_000,) and bool(np.all(np.diff(degrees) >= 0))
        # Node fractions from the edge fractions: lambda_i / i normalised.
        weights = {d: w / d for d, w in dist.lambda_edges}
        norm = sum(weights.values())
        for d, w in weights.items():
            assert int((degrees == d).sum()) == pytest.approx(10_000 * w / norm, abs=1)


def test_peg_graph_has_the_requested_degrees_and_no_four_cycles() -> None:
    code = construct("elkouss2009-r50", 8192, 7)
    dist = DISTRIBUTIONS["elkouss2009-r50"]
    assert code.checks == 4096
    assert np.array_equal(np.sort(code.variable_degrees()), dist.variable_degrees(8192))
    check_degrees = code.check_degrees()
    # Concentrated: lowest-degree-first placement keeps every check within one of
    # floor(E / m) or ceil(E / m), but for the few that 4-cycle avoidance pushed one up.
    mean = code.edges / code.checks
    near = (check_degrees >= np.floor(mean)) & (check_degrees <= np.ceil(mean))
    assert int(check_degrees.max() - check_degrees.min()) <= 2
    assert near.mean() > 0.95
    assert code.fallback_edges == 0
    assert count_four_cycles(code) == 0
    # No double edges: each row lists distinct columns.
    for c in range(0, code.checks, 97):
        row = code.cols[code.row_start[c]:code.row_start[c + 1]]
        assert np.unique(row).size == row.size


def test_four_cycle_counter_sees_a_planted_cycle() -> None:
    code = construct("elkouss2009-r50", 8192, 7)
    cols = code.cols.copy()
    a = cols[code.row_start[0]:code.row_start[1]]
    # Put two of row 0's columns into row 1: a 4-cycle.
    cols[code.row_start[1]:code.row_start[1] + 2] = a[:2]
    planted = codes.LdpcCode(distribution=code.distribution, n=code.n, seed=code.seed,
                             checks=code.checks, row_start=code.row_start, cols=cols,
                             puncture_order=code.puncture_order, fill_order=code.fill_order,
                             fallback_edges=0, identity="x")
    assert count_four_cycles(planted) >= 1


@pytest.mark.parametrize(("distribution", "shortest"), [
    # More degree-2 variables than checks (r90, r80): their graph must have cycles, and
    # edge growth keeps them long; depth-1 exclusion alone left cycles of 3 and 4 (the
    # weight-3 codewords seen as wrong words at QBER 4 %). Fewer (r85): none at all.
    ("elkouss2009-r90", 8), ("elkouss2009-r80", 12), ("elkouss2009-r85", None)])
def test_degree_two_variables_close_only_long_cycles(distribution: str,
                                                     shortest: int | None) -> None:
    code = construct(distribution, 16384, codes.DEFAULT_CODE_SEED)
    assert code.fallback_edges == 0 and count_four_cycles(code) == 0
    found = shortest_degree_two_cycle(code, 12)
    assert found == shortest if shortest is None else found is None or found >= shortest


def test_degree_two_cycle_search_sees_a_planted_cycle() -> None:
    # Variables 0, 1, 2 of degree 2 on checks (0, 1), (1, 2), (0, 2): a triangle, the
    # codeword 1110; variable 3 sits on every check.
    def code(rows: list[list[int]]) -> codes.LdpcCode:
        row_start = np.cumsum([0] + [len(r) for r in rows]).astype(np.int64)
        return codes.LdpcCode(distribution="elkouss2009-r50", n=4, seed=0, checks=len(rows),
                              row_start=row_start,
                              cols=np.array([v for r in rows for v in r], np.int32),
                              puncture_order=np.empty(0, np.int64),
                              fill_order=np.arange(4), fallback_edges=0, identity="x")

    assert shortest_degree_two_cycle(code([[0, 2, 3], [0, 1, 3], [1, 2, 3]]), 12) == 3
    assert shortest_degree_two_cycle(code([[0, 2, 3], [0, 1, 3], [1, 2, 3]]), 2) is None
    # Variable 2 on checks 0 and a new check 3 instead: a path, no cycle.
    assert shortest_degree_two_cycle(code([[0, 2, 3], [0, 1, 3], [1, 3], [2]]), 12) is None


def test_construction_is_deterministic_in_its_seed() -> None:
    a = construct("elkouss2009-r90", 4096, 1)
    b = construct("elkouss2009-r90", 4096, 1)
    c = construct("elkouss2009-r90", 4096, 2)
    assert a.identity == b.identity and np.array_equal(a.cols, b.cols)
    assert c.identity != a.identity


def test_puncture_order_has_private_checks_and_full_rank_prefixes() -> None:
    code = construct("elkouss2009-r70", 4096, 3)
    order = code.puncture_order
    assert order.size > 0.05 * code.n
    member = np.zeros(code.n, np.bool_)
    member[order] = True
    # Every punctured variable has a check whose only punctured variable is itself.
    punctured_in_row = np.array([int(member[code.cols[code.row_start[c]:code.row_start[c + 1]]]
                                     .sum()) for c in range(code.checks)])
    owners = set()
    for c in np.flatnonzero(punctured_in_row == 1).tolist():
        row = code.cols[code.row_start[c]:code.row_start[c + 1]]
        owners.add(int(row[member[row]][0]))
    assert owners == set(order.tolist())
    assert binary_rank_full(code, order[:120])
    # The fill order is a permutation that ends with the puncturing order reversed.
    assert np.array_equal(np.sort(code.fill_order), np.arange(code.n))
    assert np.array_equal(code.fill_order[code.n - order.size:], order[::-1])


def test_rank_check_sees_dependent_columns() -> None:
    code = construct("elkouss2009-r70", 4096, 3)
    # Every column of two rows' union would do; simplest: more columns than rows.
    assert not binary_rank_full(code, np.arange(code.checks + 1))
    row = code.cols[code.row_start[0]:code.row_start[1]]
    assert binary_rank_full(code, row[:1])


def test_cache_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    built = get_code("elkouss2009-r90", 4096, 5)
    directory = codes.cache_dir()
    assert directory is not None
    files = list(directory.glob("*.npz"))
    assert len(files) == 1
    get_code.cache_clear()
    loaded = get_code("elkouss2009-r90", 4096, 5)
    assert loaded.identity == built.identity and loaded.build_seconds == 0.0
    assert np.array_equal(loaded.fill_order, built.fill_order)
    # A file whose arrays do not hash to its identity is ignored and rebuilt.
    with np.load(files[0]) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["cols"] = arrays["cols"][::-1].copy()
    np.savez_compressed(files[0], **arrays)
    get_code.cache_clear()
    rebuilt = get_code("elkouss2009-r90", 4096, 5)
    assert rebuilt.identity == built.identity and rebuilt.build_seconds > 0.0



def build_at_once(monkeypatch: pytest.MonkeyPatch, distribution: str, seed: int,
                  threads: int) -> tuple[list[str], list[codes.LdpcCode]]:
    """``threads`` threads ask for one code of n = 4096 together; the builds that ran
    (each held 0.3 s, so that every thread is inside get_code before one ends) and what
    each thread got."""
    import threading
    import time

    builds: list[str] = []
    real = codes.construct

    def slow_construct(distribution: str, n: int, seed: int) -> codes.LdpcCode:
        builds.append(distribution)
        time.sleep(0.3)
        return real(distribution, n, seed)

    monkeypatch.setattr(codes, "construct", slow_construct)
    got: list[codes.LdpcCode] = []
    workers = [threading.Thread(target=lambda: got.append(get_code(distribution, 4096, seed)))
               for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return builds, got


def test_threads_asking_for_the_same_code_at_once_build_it_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Alice and Bob of one process plan the same block at the same moment; a code of
    # n = 2^20 takes minutes to build, so the second must wait for the first's, not
    # build it too.
    builds, got = build_at_once(monkeypatch, "elkouss2009-r80", 8, threads=3)
    assert builds == ["elkouss2009-r80"]
    assert len(got) == 3 and len({code.identity for code in got}) == 1


@pytest.mark.parametrize("cache", ["disabled", "on disk"])
def test_a_waiting_thread_takes_the_code_built_also_without_a_disk_cache(
        cache: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if cache == "disabled":
        monkeypatch.setenv(codes.CACHE_ENV, "")
    builds, got = build_at_once(monkeypatch, "elkouss2009-r75", 9, threads=2)
    assert builds == ["elkouss2009-r75"] and got[0] is got[1]


def test_a_self_consistent_cache_file_with_columns_out_of_range_is_rebuilt() -> None:
    # Its hash matches its arrays, but a column outside [0, n) would make the decoders
    # (which read without bounds checks) touch memory outside the totals.
    built = get_code("elkouss2009-r90", 4096, 6)
    directory = codes.cache_dir()
    assert directory is not None
    path = next(directory.glob("*-s6-*.npz"))
    for bad in (-1, 4096):
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        arrays["cols"] = arrays["cols"].copy()
        arrays["cols"][7] = bad
        arrays["identity"] = np.array(codes._identity(
            "elkouss2009-r90", 4096, 6, tuple(arrays[k] for k in (
                "row_start", "cols", "puncture_order", "fill_order"))))
        np.savez_compressed(path, **arrays)
        get_code.cache_clear()
        rebuilt = get_code("elkouss2009-r90", 4096, 6)
        assert rebuilt.identity == built.identity and rebuilt.build_seconds > 0.0, bad

@pytest.mark.parametrize(("args", "field"), [
    (("turbo", 4096, 1), "distribution"),
    (("elkouss2009-r50", 100, 1), "code_bits"),
    (("elkouss2009-r50", 4096.0, 1), "code_bits"),
    (("elkouss2009-r50", 4096, -1), "code_seed"),
])
def test_bad_code_parameters_name_the_field(args: tuple, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        construct(*args)
    assert info.value.field == field
