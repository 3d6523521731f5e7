"""Tests of Bob's fast LDPC decoder (``_ldpc_kernels.decode_layered_fast``).

It must compute the same check messages as the reference layered sum-product
decoder (``decode_layered_spa``): after the same number of sweeps the two leave the
same state bit for bit, they decode the same words, and they differ only in when a
frame stops. Frames are built like ``ldpc.reconcile_bob`` builds them: key bits with
channel values from a binary symmetric channel, punctured positions at 0, shortened
ones known. The codes are short (n = 8192) so the file runs in seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import corridor.distill.ldpc_codes as codes
from corridor.distill import _ldpc_kernels as kernels
from corridor.distill.ldpc import _KNOWN_LLR, _PHI, LdpcSettings
from corridor.errors import ParameterError

N = 8192
DISTRIBUTION = "elkouss2009-r50"   # BSC threshold 10.7 %


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> object:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(codes.CACHE_ENV, str(tmp_path_factory.mktemp("ldpc-cache")))
        codes.get_code.cache_clear()
        yield
    codes.get_code.cache_clear()


def frames(qber: float, count: int, seed: int, punctured: int = 200,
           shortened: int = 300) -> tuple[codes.LdpcCode, np.ndarray, np.ndarray, np.ndarray]:
    """(code, Alice's words, their syndromes, Bob's channel LLRs) for ``count`` frames."""
    code = codes.get_code(DISTRIBUTION, N, 3)
    rng = np.random.default_rng(seed)
    words = rng.integers(0, 2, (count, N), dtype=np.uint8)
    short = code.fill_order[:shortened]
    punct = code.puncture_order[:punctured]
    words[:, short] = 0
    target = np.empty((count, code.checks), np.uint8)
    kernels.syndromes(words, code.row_start, code.cols, target)
    noisy = words ^ (rng.random(words.shape) < qber).astype(np.uint8)
    key_llr = np.float32(math.log((1.0 - qber) / qber))
    llr = np.where(noisy == 1, -key_llr, key_llr).astype(np.float32)
    llr[:, short] = _KNOWN_LLR
    llr[:, punct] = 0.0
    return code, words, target, llr


def decode(which: str, code: codes.LdpcCode, target: np.ndarray, llr: np.ndarray,
           max_iterations: int, stall_sweeps: int = 0,
           state: tuple[np.ndarray, np.ndarray] | None = None,
           resume: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                          np.ndarray, np.ndarray]:
    """Run one decoder on every frame; (words, converged, sweeps, state_r, state_total)."""
    count = llr.shape[0]
    out = np.empty((count, code.n), np.uint8)
    converged = np.zeros(count, np.bool_)
    sweeps = np.zeros(count, np.int64)
    if state is None:
        state_r = np.zeros((count, code.edges), np.float32)
        state_total = np.zeros((count, code.n), np.float32)
    else:
        state_r, state_total = state[0].copy(), state[1].copy()
    slot = np.arange(count, dtype=np.int64)
    resumes = np.full(count, resume, np.bool_)
    args = (llr, target, code.row_start, code.cols, np.arange(count, dtype=np.int64),
            max_iterations, _PHI, out, converged, sweeps, state_r, state_total, slot, resumes)
    if which == "fast":
        kernels.decode_layered_fast(*args, stall_sweeps)
    else:
        kernels.decode_layered_spa(*args)
    return out, converged, sweeps, state_r, state_total


def test_fast_decoder_corrects_errors_below_the_threshold() -> None:
    code, words, target, llr = frames(0.05, 6, seed=1)
    out, converged, sweeps, _, _ = decode("fast", code, target, llr, 60, stall_sweeps=10)
    assert converged.all()
    assert np.array_equal(out, words)
    assert (sweeps < 60).all()


def test_fast_decoder_fails_cleanly_above_the_threshold() -> None:
    code, _, target, llr = frames(0.16, 4, seed=2)
    out, converged, sweeps, _, _ = decode("fast", code, target, llr, 200, stall_sweeps=8)
    assert not converged.any()
    # It gave up on stalled progress, long before the cap, and says so.
    assert (sweeps < 200).all()
    # The word it leaves does not have the target syndrome (no false success).
    check = np.empty_like(target)
    kernels.syndromes(out, code.row_start, code.cols, check)
    assert all(not np.array_equal(check[f], target[f]) for f in range(len(out)))


def test_fast_and_reference_decode_the_same_words_on_easy_frames() -> None:
    code, words, target, llr = frames(0.06, 6, seed=3)
    fast, fast_ok, fast_sweeps, _, _ = decode("fast", code, target, llr, 60)
    ref, ref_ok, ref_sweeps, _, _ = decode("reference", code, target, llr, 60)
    assert fast_ok.all() and ref_ok.all()
    assert np.array_equal(fast, ref) and np.array_equal(fast, words)
    # The folded syndrome test may see convergence one sweep late, never early.
    assert ((fast_sweeps - ref_sweeps >= 0) & (fast_sweeps - ref_sweeps <= 1)).all()


def test_fast_decoder_computes_the_reference_messages_bit_for_bit() -> None:
    # Hard frames, few sweeps: neither decoder converges, both save their state.
    code, _, target, llr = frames(0.12, 3, seed=4)
    for sweeps in (1, 4):
        _, ok_a, n_a, r_a, t_a = decode("fast", code, target, llr, sweeps)
        _, ok_b, n_b, r_b, t_b = decode("reference", code, target, llr, sweeps)
        assert not ok_a.any() and not ok_b.any()
        assert (n_a == sweeps).all() and (n_b == sweeps).all()
        assert np.array_equal(r_a.view(np.uint32), r_b.view(np.uint32))
        assert np.array_equal(t_a.view(np.uint32), t_b.view(np.uint32))


def test_fast_decoder_warm_start_continues_where_it_stopped() -> None:
    code, _, target, llr = frames(0.12, 2, seed=5)
    _, _, _, r_all, t_all = decode("fast", code, target, llr, 5)
    _, _, _, r_3, t_3 = decode("fast", code, target, llr, 3)
    _, _, _, r_5, t_5 = decode("fast", code, target, llr, 2, state=(r_3, t_3), resume=True)
    assert np.array_equal(r_all, r_5) and np.array_equal(t_all, t_5)


def test_fast_decoder_is_deterministic() -> None:
    code, _, target, llr = frames(0.09, 4, seed=6)
    first = decode("fast", code, target, llr, 40, stall_sweeps=6)
    second = decode("fast", code, target, llr, 40, stall_sweeps=6)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"decoder": "min-sum"}, "ldpc.decoder"),
    ({"stall_sweeps": -1}, "ldpc.stall_sweeps"),
    ({"stall_sweeps": True}, "ldpc.stall_sweeps"),
])
def test_bad_decoder_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ParameterError) as info:
        LdpcSettings(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_both_decoders_reconcile_alike_and_bob_counts_his_sweeps() -> None:
    from tests.distill.test_ldpc import SETTINGS, bsc_pair, run

    alice_bits, bob_bits = bsc_pair(60_000, 0.03, seed=11)
    results = {}
    for decoder in ("fast", "reference"):
        settings = LdpcSettings(code_bits=SETTINGS.code_bits, decoder=decoder)
        result = run(alice_bits, bob_bits, 0.03, settings, settings)
        assert np.array_equal(result.alice.bits, result.bob.bits)
        assert result.alice.decoder_sweeps == 0
        assert result.bob.decoder_sweeps >= result.bob.frames
        results[decoder] = result
    # The same plan, hence the same syndrome cost; retries may differ.
    fast, ref = results["fast"].bob, results["reference"].bob
    assert (fast.frames, fast.punctured_bits, fast.syndrome_bits) == \
        (ref.frames, ref.punctured_bits, ref.syndrome_bits)


def truncated_index(x: np.float32) -> int:
    """The table index of the original rule: truncate x * PHI_SCALE, then clamp."""
    return min(int(np.float32(x) * np.float32(kernels.PHI_SCALE)), kernels.PHI_SIZE - 1)


def test_phi_reads_the_entry_of_the_truncated_index_at_every_boundary() -> None:
    # _phi clamps in float32 before converting (no branches); at each cell's edges, just
    # below them, and past the end it must read the entry truncation would have read.
    edges = np.arange(kernels.PHI_SIZE + 2, dtype=np.float32) / np.float32(kernels.PHI_SCALE)
    below = np.nextafter(edges, np.float32(-1.0))
    for x in [*edges[::97], *below[1::89], np.float32(0.0), np.float32(1e30),
              np.float32(_KNOWN_LLR), edges[-3], below[-3], below[-2]]:
        assert kernels._phi(_PHI, x) == _PHI[truncated_index(x)], x


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=0.0, max_value=1e6, width=32))
def test_phi_matches_truncation_then_clamp(x: float) -> None:
    assert kernels._phi(_PHI, np.float32(x)) == _PHI[truncated_index(np.float32(x))]
