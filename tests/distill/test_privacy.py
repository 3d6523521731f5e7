"""Toeplitz privacy amplification: every fast method equals the explicit matrix, exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.distill import privacy
from corridor.distill.privacy import (
    seed_length_bits,
    toeplitz_hash,
    toeplitz_hash_reference,
)
from corridor.errors import ParameterError

FAST_METHODS = ["fft", *(["clmul"] if privacy.clmul_available() else [])]


def _random_case(rng: np.random.Generator, n: int, l_bits: int) -> tuple[np.ndarray, np.ndarray]:
    return (rng.integers(0, 2, n, dtype=np.uint8),
            rng.integers(0, 2, n + l_bits - 1, dtype=np.uint8))


def test_reference_follows_the_documented_matrix() -> None:
    # n = 3, l_bits = 2, seed s0..s3: T = [[s2, s1, s0], [s3, s2, s1]].
    seed = np.array([1, 0, 0, 1], dtype=np.uint8)
    for x_tuple in itertools.product((0, 1), repeat=3):
        x = np.array(x_tuple, dtype=np.uint8)
        expected = np.array([(0 * x[0] + 0 * x[1] + 1 * x[2]) % 2,
                             (1 * x[0] + 0 * x[1] + 0 * x[2]) % 2], dtype=np.uint8)
        assert np.array_equal(toeplitz_hash_reference(x, seed, 2), expected)


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize(("n", "l_bits"), [
    (1, 1), (2, 1), (2, 2), (7, 3), (63, 63), (64, 1), (64, 64), (65, 33), (127, 64),
    (128, 128), (129, 65), (1000, 1), (1023, 1000), (1024, 512), (1025, 1025),
    (1088, 544), (2047, 1030), (3000, 2999), (4096, 2048), (4096, 4096),
])
def test_fast_methods_equal_reference_on_edge_shapes(method: str, n: int, l_bits: int) -> None:
    rng = np.random.default_rng(n * 10007 + l_bits)
    x, seed = _random_case(rng, n, l_bits)
    assert np.array_equal(toeplitz_hash(x, seed, l_bits, method=method),  # type: ignore[arg-type]
                          toeplitz_hash_reference(x, seed, l_bits))


@pytest.mark.parametrize("method", FAST_METHODS)
@pytest.mark.parametrize("fill", [0, 1])
def test_constant_inputs(method: str, fill: int) -> None:
    # All ones everywhere gives the largest convolution coefficients the FFT meets.
    n, l_bits = 3000, 1500
    x = np.full(n, fill, dtype=np.uint8)
    seed = np.full(n + l_bits - 1, 1, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(x, seed, l_bits, method=method),  # type: ignore[arg-type]
                          toeplitz_hash_reference(x, seed, l_bits))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 700), l_fraction=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1))
def test_property_all_methods_agree_with_reference(n: int, l_fraction: float,
                                                   seed: int) -> None:
    l_bits = max(1, min(n, round(l_fraction * n)))
    x, toeplitz_seed = _random_case(np.random.default_rng(seed), n, l_bits)
    expected = toeplitz_hash_reference(x, toeplitz_seed, l_bits)
    for method in FAST_METHODS:
        assert np.array_equal(toeplitz_hash(x, toeplitz_seed, l_bits, method=method),  # type: ignore[arg-type]
                              expected)


@pytest.mark.skipif(len(FAST_METHODS) < 2, reason="needs both exact fast methods")
@pytest.mark.parametrize(("n", "l_bits"), [(200_000, 100_000), (131_072, 131_072),
                                      (250_001, 12_345)])
def test_clmul_and_fft_agree_on_large_inputs(n: int, l_bits: int) -> None:
    # Two independent exact computations (integer convolution by FFT, GF(2) Karatsuba).
    x, seed = _random_case(np.random.default_rng(n + l_bits), n, l_bits)
    assert np.array_equal(toeplitz_hash(x, seed, l_bits, method="clmul"),
                          toeplitz_hash(x, seed, l_bits, method="fft"))


def test_hash_is_linear_over_gf2() -> None:
    rng = np.random.default_rng(5)
    n, l_bits = 5000, 2500
    x1, seed = _random_case(rng, n, l_bits)
    x2 = rng.integers(0, 2, n, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(x1 ^ x2, seed, l_bits),
                          toeplitz_hash(x1, seed, l_bits) ^ toeplitz_hash(x2, seed, l_bits))


@pytest.mark.parametrize(("n", "l_bits"), [(3, 2), (4, 3), (5, 2)])
def test_family_is_exactly_two_universal(n: int, l_bits: int) -> None:
    # For every pair x != x' the collision count over ALL seeds is exactly 2^(seed - l_bits):
    # T d is uniform for every nonzero difference d. Exhaustive, so no tolerance.
    seeds = [np.array(s, dtype=np.uint8) for s in itertools.product((0, 1), repeat=n + l_bits - 1)]
    for d_tuple in itertools.product((0, 1), repeat=n):
        if not any(d_tuple):
            continue
        d = np.array(d_tuple, dtype=np.uint8)
        collisions = sum(not toeplitz_hash(d, s, l_bits).any() for s in seeds)
        assert collisions == len(seeds) >> l_bits


def test_bool_arrays_are_accepted() -> None:
    rng = np.random.default_rng(9)
    x, seed = _random_case(rng, 300, 100)
    assert np.array_equal(toeplitz_hash(x.astype(bool), seed.astype(bool), 100),
                          toeplitz_hash(x, seed, 100))


def test_seed_length() -> None:
    assert seed_length_bits(1_000_000, 500_000) == 1_499_999
    with pytest.raises(ParameterError, match="output_bits"):
        seed_length_bits(10, 11)


@pytest.mark.parametrize(("bits", "seed", "l_bits", "field"), [
    (np.ones(10, np.uint8), np.ones(13, np.uint8), 5, "seed_bits"),
    (np.ones(10, np.uint8), np.ones(9, np.uint8), 0, "output_bits"),
    (np.ones(10, np.uint8), np.ones(20, np.uint8), 11, "output_bits"),
    (np.ones(0, np.uint8), np.ones(0, np.uint8), 1, "bits"),
    (np.full(10, 2, np.uint8), np.ones(14, np.uint8), 5, "bits"),
    (np.ones(10, np.int64), np.ones(14, np.uint8), 5, "bits.dtype"),
    (np.ones((2, 5), np.uint8), np.ones(14, np.uint8), 5, "bits.shape"),
    ([1, 0, 1], np.ones(3, np.uint8), 1, "bits"),
])
def test_bad_input_names_the_field(bits: object, seed: object, l_bits: int, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        toeplitz_hash(bits, seed, l_bits)  # type: ignore[arg-type]
    assert info.value.field == field


def test_error_never_shows_the_key() -> None:
    key = np.array([1, 0, 1, 1, 0, 1, 2, 0], dtype=np.uint8)
    with pytest.raises(ParameterError) as info:
        toeplitz_hash(key, np.ones(11, np.uint8), 4)
    assert "1, 0, 1" not in str(info.value) and "[1 0 1" not in str(info.value)


def test_unknown_method_and_missing_instruction(monkeypatch: pytest.MonkeyPatch) -> None:
    x, seed = _random_case(np.random.default_rng(1), 100, 50)
    with pytest.raises(ParameterError, match="method"):
        toeplitz_hash(x, seed, 50, method="sha256")  # type: ignore[arg-type]
    monkeypatch.setattr(privacy, "clmul_available", lambda: False)
    with pytest.raises(ParameterError, match="PCLMULQDQ"):
        toeplitz_hash(x, seed, 50, method="clmul")
    assert np.array_equal(toeplitz_hash(x, seed, 50), toeplitz_hash_reference(x, seed, 50))


def test_reference_refuses_large_inputs() -> None:
    n = privacy.REFERENCE_MAX_INPUT_BITS + 1
    with pytest.raises(ParameterError, match="reference"):
        toeplitz_hash_reference(np.zeros(n, np.uint8), np.zeros(n, np.uint8), 1)


def test_fft_rounding_guard_refuses_instead_of_guessing(monkeypatch: pytest.MonkeyPatch) -> None:
    # A guard below any achievable error forces the refusal path: it must abort, not answer.
    from corridor.errors import ProtocolAbort

    x, seed = _random_case(np.random.default_rng(2), 500, 200)
    monkeypatch.setattr(privacy, "FFT_ROUNDING_GUARD", -1.0)
    with pytest.raises(ProtocolAbort) as info:
        toeplitz_hash(x, seed, 200, method="fft")
    assert info.value.reason == "privacy_amplification_rounding"


# ---------------------------------------------------------------------------------------
# The carry-less kernels, each against plain Python integers (an independent GF(2)[z]).
# ---------------------------------------------------------------------------------------

needs_clmul = pytest.mark.skipif(not privacy.clmul_available(), reason="needs PCLMULQDQ")


def _to_int(words: np.ndarray) -> int:
    return int.from_bytes(words.astype("<u8").tobytes(), "little")


def _clmul_int(a: int, b: int) -> int:
    product = 0
    while a:
        low = a & -a
        product ^= b << (low.bit_length() - 1)
        a ^= low
    return product


def _middle_int(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Words m .. 2m-1 of u(z) v(z) (len(u) = m, len(v) = 2m)."""
    m = u.shape[0]
    product = _clmul_int(_to_int(u), _to_int(v)) >> (64 * m)
    words = [(product >> (64 * k)) & (2**64 - 1) for k in range(m)]
    return np.array(words, dtype=np.uint64)


def _random_words(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 2**64, count, dtype=np.uint64)


@needs_clmul
@pytest.mark.parametrize("length", [2, 8])
@pytest.mark.parametrize("allow_256", [False, True])
def test_antidiagonal_kernels_equal_python_integers(length: int, allow_256: bool) -> None:
    # Both vector widths are compiled here, whatever the host, so the 128-bit path that
    # CPUs without VPCLMULQDQ take is checked too.
    import numba
    from numba.extending import intrinsic

    kernel = intrinsic(privacy._antidiagonal_typing(length, allow_256))

    @numba.njit
    def run(u: np.ndarray, i: int, v: np.ndarray, j: int) -> tuple[int, int]:
        return kernel(u, np.uint64(i), v, np.uint64(j))

    rng = np.random.default_rng(length * 2 + allow_256)
    for _ in range(20):
        u, v = _random_words(rng, 24), _random_words(rng, 24)
        i = int(rng.integers(0, 24 - length + 1))
        j = int(rng.integers(length - 1, 24))
        expected = 0
        for k in range(length):
            expected ^= _clmul_int(int(u[i + k]), int(v[j - k]))
        lo, hi = run(u, i, v, j)
        assert (int(hi) << 64) | int(lo) == expected


@needs_clmul
@pytest.mark.parametrize("m", [*range(1, 20), 31, 40, 63, 64, 65, 70])
def test_schoolbook_middle_product_equals_python_integers(m: int) -> None:
    # Every m mod 8 and mod 2 remainder: the wide, narrow and single-product tails.
    rng = np.random.default_rng(m)
    u, v = _random_words(rng, m), _random_words(rng, 2 * m)
    out = np.empty(m, dtype=np.uint64)
    privacy._middle_schoolbook(u, v, out)
    assert np.array_equal(out, _middle_int(u, v))


@needs_clmul
@pytest.mark.parametrize(("leaf", "halvings"), [(1, 3), (8, 2), (16, 1), (40, 2), (64, 1),
                                                (24, 3)])
def test_karatsuba_middle_product_equals_python_integers(leaf: int, halvings: int) -> None:
    m = leaf << halvings
    rng = np.random.default_rng(m + leaf)
    u, v = _random_words(rng, m), _random_words(rng, 2 * m)
    out = np.empty(m, dtype=np.uint64)
    privacy._middle(u, v, out, np.empty(4 * m + 64, dtype=np.uint64), leaf)
    assert np.array_equal(out, _middle_int(u, v))


@pytest.mark.parametrize("wide", [False, True])
@pytest.mark.parametrize("l_bits", [1, 64, 4096, 4097, 63_937, 319_232, 500_000, 5_000_000])
def test_block_shape_covers_the_output_with_a_halving_base_case(
        l_bits: int, wide: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Both cost models (with and without two products per instruction), whatever the host.
    monkeypatch.setattr(privacy, "_host_has_vpclmul", lambda: wide)
    for n in (l_bits, 2 * l_bits + 5):
        m, leaf = privacy._block_shape(n, l_bits)
        assert 64 * m >= l_bits and m % leaf == 0
        halvings = (m // leaf).bit_length() - 1
        assert m == leaf << halvings and 1 <= leaf <= privacy._LEAF_MAX_WORDS
        assert halvings == 0 or leaf % 8 == 0


@pytest.mark.skipif(len(FAST_METHODS) < 2, reason="needs both exact fast methods")
@pytest.mark.parametrize(("n", "l_bits"), [(1_000_000, 500_000), (2 * 4986 * 64 - 7, 4986 * 64),
                                      (6980 * 64 + 1, 6980 * 64), (300_001, 255_233)])
def test_clmul_and_fft_agree_across_base_cases(n: int, l_bits: int) -> None:
    # Block shapes (words, base case) (8192, 64), (5120, 40), (7168, 56) and (4096, 64):
    # 7, 7, 7 and 6 Karatsuba levels, the benchmark's n = 1e6 among them.
    x, seed = _random_case(np.random.default_rng(n ^ l_bits), n, l_bits)
    assert np.array_equal(toeplitz_hash(x, seed, l_bits, method="clmul"),
                          toeplitz_hash(x, seed, l_bits, method="fft"))


@pytest.mark.skipif(len(FAST_METHODS) < 2, reason="needs both exact fast methods")
def test_clmul_and_fft_agree_with_the_narrow_cost_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without VPCLMULQDQ the model picks other shapes (32-word base cases at n = 1e6).
    # The kernels are compiled (and cached on disk) first, with the host's real answer:
    # patched during their compilation they would be cached with the narrow code.
    n, l_bits = 1_000_000, 500_000
    x, seed = _random_case(np.random.default_rng(11), n, l_bits)
    toeplitz_hash(x[:200], seed[:299], 100, method="clmul")
    monkeypatch.setattr(privacy, "_host_has_vpclmul", lambda: False)
    assert privacy._block_shape(n, l_bits) == (8192, 32)
    assert np.array_equal(toeplitz_hash(x, seed, l_bits, method="clmul"),
                          toeplitz_hash(x, seed, l_bits, method="fft"))


@pytest.mark.parametrize("wide", [False, True])
def test_block_shape_may_take_a_larger_base_case_to_save_a_block(
        wide: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # n, l of a 1e8-pulse block at 5 km and 1 % QBER (benchmarks/bench_distill.py): the
    # least base case that covers l (48 words, 24 576-word blocks) needs 3 blocks of x,
    # one of 56 words 2; the model weighs both.
    monkeypatch.setattr(privacy, "_host_has_vpclmul", lambda: wide)
    n, l_bits = 3_165_767, 1_554_872
    m, leaf = privacy._block_shape(n, l_bits)
    assert -(-n // (64 * m)) == 2 and m == leaf << 9 and leaf > 48
