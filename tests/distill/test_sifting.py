"""Stage 1 (sifting) and the message encoding, on synthetic detection records."""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.distill import _sifting_kernels as _kernels
from corridor.distill.block import BlockState
from corridor.distill.channel import in_process_pair
from corridor.distill.sifting import (
    SiftingResult,
    _encode_indices,
    _pack_two_bit,
    decode_arrays,
    encode_arrays,
    sift_alice,
    sift_bob,
)
from corridor.errors import ProtocolAbort
from corridor.link.records import AliceRecords, BobRecords


def run_pair(alice: Callable[[Any], Any], bob: Callable[[Any], Any],
             timeout_s: float = 30.0) -> tuple[Any, Any]:
    """Run Alice's and Bob's halves of a stage in two threads over an in-process channel.

    Returns (alice result, bob result); an exception on either side is returned in
    its place so that tests can check that both sides abort, and None stands for a
    side still waiting after ``timeout_s``.
    """
    end_a, end_b = in_process_pair()
    results: dict[str, Any] = {}

    def wrap(name: str, fn: Callable[[Any], Any], end: Any) -> None:
        try:
            results[name] = fn(end)
        except Exception as exc:  # returned to the test, which checks its type
            results[name] = exc

    threads = [threading.Thread(target=wrap, args=("alice", alice, end_a), daemon=True),
               threading.Thread(target=wrap, args=("bob", bob, end_b), daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout_s)
    return results.get("alice"), results.get("bob")


def synthetic_records(detections: int, *, z_basis_probability: float = 0.5,
                      error_rate: float = 0.03, seed: int = 1,
                      class_probabilities: tuple[float, float, float] = (0.6, 0.3, 0.1),
                      ) -> tuple[AliceRecords, BobRecords]:
    """Aligned Alice/Bob records: matched-basis bits differ with ``error_rate``."""
    gen = np.random.default_rng(seed)
    index = np.sort(gen.choice(detections * 20, size=detections, replace=False)).astype(np.int64)
    classes = gen.choice(3, size=detections, p=class_probabilities).astype(np.uint8)
    a_basis = (gen.random(detections) >= z_basis_probability).astype(np.uint8)
    b_basis = (gen.random(detections) >= z_basis_probability).astype(np.uint8)
    a_bit = gen.integers(0, 2, detections, dtype=np.uint8)
    flips = (gen.random(detections) < error_rate).astype(np.uint8)
    random_bits = gen.integers(0, 2, detections, dtype=np.uint8)
    b_bit = np.where(a_basis == b_basis, a_bit ^ flips, random_bits).astype(np.uint8)
    per_class = tuple(int(x) * 20 for x in np.bincount(classes, minlength=3))
    alice = AliceRecords(index=index, intensity_class=classes, basis=a_basis, bit=a_bit,
                         pulses_per_class=per_class)  # type: ignore[arg-type]
    bob = BobRecords(index=index.copy(), basis=b_basis, bit=b_bit,
                     double_click=np.zeros(detections, dtype=bool))
    return alice, bob


def sift_both(alice: AliceRecords, bob: BobRecords, block_id: int = 3
              ) -> tuple[SiftingResult, SiftingResult]:
    a, b = run_pair(lambda ch: sift_alice(ch, alice, link_id="L", block_id=block_id),
                    lambda ch: sift_bob(ch, bob, link_id="L", block_id=block_id))
    assert isinstance(a, SiftingResult), a
    assert isinstance(b, SiftingResult), b
    return a, b


@pytest.mark.parametrize("z_basis_probability", [0.5, 0.9])
def test_sifting_keeps_matching_z_bits_of_every_class(z_basis_probability: float) -> None:
    alice, bob = synthetic_records(20_000, z_basis_probability=z_basis_probability)
    a, b = sift_both(alice, bob)
    agree = alice.basis == bob.basis
    key_mask = agree & (alice.basis == 0)
    test_mask = agree & (alice.basis == 1)
    assert np.array_equal(a.block.bits, alice.bit[key_mask])
    assert np.array_equal(b.block.bits, bob.bit[key_mask])
    assert np.array_equal(a.test_bits, alice.bit[test_mask])
    assert np.array_equal(b.test_bits, bob.bit[test_mask])
    assert a.counts == b.counts
    assert np.array_equal(a.key_classes, b.key_classes)
    assert np.array_equal(a.test_classes, b.test_classes)
    expected = tuple(int(x) for x in np.bincount(alice.intensity_class[key_mask], minlength=3))
    assert a.counts.key_basis_detections == expected
    assert a.counts.key_bits + a.counts.test_bits + a.counts.basis_mismatches == 20_000
    for result in (a, b):
        assert result.block.state is BlockState.SIFTED
        assert result.block.meta["sifted_bits"] == a.counts.key_bits
        assert result.block.block_id == 3 and result.block.link_id == "L"


def test_efficient_bb84_key_fraction_is_pz_squared() -> None:
    n, pz = 50_000, 0.9
    alice, bob = synthetic_records(n, z_basis_probability=pz, seed=7)
    a, _ = sift_both(alice, bob)
    # Binomial(n, pz^2): 5 sigma tolerance.
    sigma = math.sqrt(n * pz**2 * (1 - pz**2))
    assert abs(a.counts.key_bits - n * pz**2) < 5 * sigma
    sigma_x = math.sqrt(n * (1 - pz) ** 2 * (1 - (1 - pz) ** 2))
    assert abs(a.counts.test_bits - n * (1 - pz) ** 2) < 5 * sigma_x


def test_sifted_error_rate_matches_the_records() -> None:
    n, e = 40_000, 0.05
    alice, bob = synthetic_records(n, error_rate=e, seed=11)
    a, b = sift_both(alice, bob)
    errors = int(np.count_nonzero(a.block.bits != b.block.bits))
    k = a.counts.key_bits
    assert abs(errors - k * e) < 5 * math.sqrt(k * e * (1 - e))


def test_announced_gates_must_match_alices_settings() -> None:
    alice, bob = synthetic_records(1_000)
    shifted = BobRecords(index=bob.index + 1, basis=bob.basis, bit=bob.bit,
                         double_click=bob.double_click)
    a, b = run_pair(lambda ch: sift_alice(ch, alice, link_id="L", block_id=0),
                    lambda ch: sift_bob(ch, shifted, link_id="L", block_id=0, timeout_s=0.5))
    assert isinstance(a, ProtocolAbort) and a.reason == "sifting_index_mismatch"
    # Bob hears nothing back: the pipeline turns that into a session abort.
    assert isinstance(b, ProtocolAbort) and b.reason == "channel_timeout"


def test_empty_block_sifts_to_empty_key() -> None:
    alice, bob = synthetic_records(0)
    a, b = sift_both(alice, bob)
    assert a.counts.key_bits == 0 and b.block.length_bits == 0


def test_reprs_hide_bits() -> None:
    alice, bob = synthetic_records(64)
    a, _ = sift_both(alice, bob)
    text = repr(a)
    assert "bits=" not in text.replace("length_bits=", "")
    assert "array" not in text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(0, 2**31), max_size=50), min_size=1, max_size=4))
def test_encode_decode_round_trip(arrays: list[list[int]]) -> None:
    values = [np.array(a, dtype=np.int64) for a in arrays]
    decoded = decode_arrays(encode_arrays(*values), len(values), "t")
    assert all(np.array_equal(x, y) for x, y in zip(values, decoded, strict=True))


@pytest.mark.parametrize("payload", [b"", b"garbage", encode_arrays(np.arange(3)) + b"x",
                                     encode_arrays(np.array([1.5]))])
def test_malformed_payloads_abort(payload: bytes) -> None:
    with pytest.raises(ProtocolAbort) as info:
        decode_arrays(payload, 1, "t")
    assert info.value.reason == "malformed_message"


# -- the compiled passes against the straightforward numpy they replace ----------------

def _leb128_reference(index: np.ndarray) -> bytes:
    out = bytearray()
    previous = 0
    for value in index.tolist():
        gap = value - previous
        previous = value
        while gap >= 128:
            out.append((gap & 127) | 128)
            gap >>= 7
        out.append(gap)
    return bytes(out)


_indices = st.lists(st.integers(1, 1 << 40), max_size=60).map(
    lambda gaps: np.cumsum(np.array([0, *gaps], dtype=np.int64))[1:] - 1)


@settings(max_examples=200, deadline=None)
@given(_indices)
def test_gap_encoding_is_leb128_of_the_gaps(index: np.ndarray) -> None:
    encoded = _encode_indices(index)
    assert encoded.dtype == np.uint8
    assert encoded.tobytes() == _leb128_reference(index)
    assert _kernels.gaps_equal(encoded, index)
    assert _kernels.check_gaps(encoded, index) == (_kernels.GAPS_MATCH, index.size)


@settings(max_examples=200, deadline=None)
@given(_indices, st.data())
def test_gap_check_tells_other_gates_from_malformed_streams(index: np.ndarray,
                                                            data: st.DataObject) -> None:
    encoded = _encode_indices(index)
    other = index.copy()
    if index.size:
        at = data.draw(st.integers(0, index.size - 1))
        other[at:] += data.draw(st.integers(1, 1000))
        assert not _kernels.gaps_equal(encoded, other)
        assert _kernels.check_gaps(encoded, other) == (_kernels.GAPS_MISMATCH, index.size)
        assert not _kernels.gaps_equal(encoded, index[:-1])
        assert _kernels.check_gaps(encoded, index[:-1])[0] == _kernels.GAPS_MISMATCH
    longer = np.append(index, (index[-1] if index.size else 0) + 5)
    assert _kernels.check_gaps(encoded, longer)[0] == _kernels.GAPS_MISMATCH
    # Malformed: a group that never ends, an over-long zero group, a repeated gate.
    for bad in (encoded.tobytes() + b"\x80", encoded.tobytes() + b"\x81\x00",
                encoded.tobytes() + b"\x05\x00", b"\x80" * 10):
        stream = np.frombuffer(bad, dtype=np.uint8)
        assert not _kernels.gaps_equal(stream, index)
        assert _kernels.check_gaps(stream, index)[0] == _kernels.GAPS_MALFORMED


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3000), long_gaps=st.integers(0, 5), seed=st.integers(0, 2**32 - 1))
def test_gap_encoding_across_chunks_of_short_and_long_gaps(n: int, long_gaps: int,
                                                           seed: int) -> None:
    # Whole chunks of one-byte gaps take the vectorized path, the others the byte loop.
    gen = np.random.default_rng(seed)
    gaps = gen.integers(1, 128, n)
    gaps[gen.integers(0, n, long_gaps)] = gen.integers(128, 1 << 35, long_gaps)
    index = np.cumsum(gaps) - 1
    encoded = _encode_indices(index)
    assert encoded.tobytes() == _leb128_reference(index)
    assert _kernels.gaps_equal(encoded, index)
    at = int(gen.integers(0, n))
    other = index.copy()
    other[at:] += 1
    assert not _kernels.gaps_equal(encoded, other)
    if n > 1:
        repeated = index.copy()
        repeated[max(at, 1)] = repeated[max(at, 1) - 1]
        assert _kernels.encode_gaps(repeated, np.empty(9 * n, np.uint8)) == -1
        assert not _kernels.gaps_equal(encoded, repeated)


def test_gap_encoding_reports_a_short_buffer_and_its_needed_length() -> None:
    index = np.array([5, 300, 301, 1 << 40], dtype=np.int64)
    needed = len(_leb128_reference(index))
    assert _kernels.encoded_gap_bytes(index) == needed
    assert _kernels.encode_gaps(index, np.empty(needed - 1, np.uint8)) == -2
    out = np.empty(needed, np.uint8)
    assert _kernels.encode_gaps(index, out) == needed
    assert out.tobytes() == _leb128_reference(index)


def test_descending_or_negative_gates_are_refused_before_sending() -> None:
    for index in (np.array([3, 3], dtype=np.int64), np.array([-1, 4], dtype=np.int64)):
        with pytest.raises(ProtocolAbort) as info:
            _encode_indices(index)
        assert info.value.reason == "malformed_records"


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=70))
def test_two_bit_packing_matches_bit_planes(values: list[int]) -> None:
    array = np.array(values, dtype=np.uint8)
    planes = np.stack([(array >> 1) & 1, array & 1], axis=1).astype(np.uint8)
    assert np.array_equal(_pack_two_bit(array), np.packbits(planes.reshape(-1)))


_SPLITTERS = [_kernels.split_detections, _kernels.split_detections_scalar]
if _kernels.HAS_PEXT:
    _SPLITTERS.append(lambda *args: _kernels.split_detections_words(
        *args, _kernels.SPREAD_BITS, _kernels.SPREAD_PAIRS))


@pytest.mark.parametrize("split", _SPLITTERS)
@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 80), packed=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_split_equals_masks_and_compress(split: Callable[..., None], n: int, packed: bool,
                                         seed: int) -> None:
    gen = np.random.default_rng(seed)
    bits = gen.integers(0, 2, n, dtype=np.uint8)
    basis = gen.integers(0, 2, n, dtype=np.uint8)
    other = gen.integers(0, 2, n, dtype=np.uint8)
    classes = gen.integers(0, 3, n, dtype=np.uint8)
    outputs = [np.full(n + _kernels.SPLIT_SLACK, 7, dtype=np.uint8) for _ in range(4)]
    tally = np.zeros(9, dtype=np.int64)
    split(bits, basis, np.packbits(other), _pack_two_bit(classes) if packed else classes,
          packed, *outputs, tally)
    agree = basis == other
    key_mask, test_mask = agree & (basis == 0), agree & (basis == 1)
    n_key, n_test = int(tally[6]), int(tally[7])
    assert np.array_equal(outputs[0][:n_key], np.compress(key_mask, bits))
    assert np.array_equal(outputs[1][:n_key], np.compress(key_mask, classes))
    assert np.array_equal(outputs[2][:n_test], np.compress(test_mask, bits))
    assert np.array_equal(outputs[3][:n_test], np.compress(test_mask, classes))
    assert tuple(tally[:3]) == tuple(np.bincount(classes[key_mask], minlength=3))
    assert tuple(tally[3:6]) == tuple(np.bincount(classes[test_mask], minlength=3))
    assert tally[8] == 0


@pytest.mark.parametrize("split", _SPLITTERS)
@pytest.mark.parametrize(("where", "value"), [("basis", 2), ("classes", 3), ("classes", 9)])
def test_split_flags_values_out_of_range(split: Callable[..., None], where: str,
                                         value: int) -> None:
    for n, at in ((21, 4), (21, 19)):   # in a whole word and in the tail
        arrays = {"bits": np.zeros(n, np.uint8), "basis": np.zeros(n, np.uint8),
                  "classes": np.zeros(n, np.uint8)}
        arrays[where][at] = value
        outputs = [np.empty(n + _kernels.SPLIT_SLACK, dtype=np.uint8) for _ in range(4)]
        tally = np.zeros(9, dtype=np.int64)
        split(arrays["bits"], arrays["basis"], np.packbits(np.zeros(n, np.uint8)),
              arrays["classes"], False, *outputs, tally)
        assert tally[8] == 1


def test_out_of_range_class_from_alice_aborts_bob() -> None:
    alice, bob = synthetic_records(100)
    bad = AliceRecords(index=alice.index, intensity_class=np.full(100, 3, dtype=np.uint8),
                       basis=alice.basis, bit=alice.bit,
                       pulses_per_class=alice.pulses_per_class)
    a, b = run_pair(lambda ch: sift_alice(ch, bad, link_id="L", block_id=0),
                    lambda ch: sift_bob(ch, bob, link_id="L", block_id=0))
    assert isinstance(a, ProtocolAbort) and a.reason == "malformed_records"
    assert isinstance(b, ProtocolAbort) and b.reason == "malformed_message"


@pytest.mark.parametrize("shape", [(70_000,), (300, 400), (0,)])
def test_large_and_multidimensional_arrays_round_trip_as_views(shape: tuple[int, ...]) -> None:
    gen = np.random.default_rng(5)
    arrays = [gen.integers(0, 1 << 30, shape).astype(np.int64),
              np.asfortranarray(gen.integers(0, 255, shape).astype(np.uint8))]
    payload = encode_arrays(*arrays)
    decoded = decode_arrays(payload, 2, "t")
    for original, back in zip(arrays, decoded, strict=True):
        assert back.dtype == original.dtype and np.array_equal(back, original)
        assert not back.flags.writeable
    assert bytes(payload) == b"".join(_npy(a) for a in arrays)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False,
                              version=(1, 0))
    return buffer.getvalue()


def test_truncated_and_oversized_records_abort() -> None:
    payload = bytes(encode_arrays(np.arange(20_000, dtype=np.int64)))
    for bad in (payload[:-1], payload[:20], payload[:5] + b"\x09" + payload[6:]):
        with pytest.raises(ProtocolAbort) as info:
            decode_arrays(bad, 1, "t")
        assert info.value.reason == "malformed_message"
