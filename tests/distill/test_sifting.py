"""Stage 1 (sifting) and the message encoding, on synthetic detection records."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.distill.block import BlockState
from corridor.distill.channel import in_process_pair
from corridor.distill.sifting import (
    SiftingResult,
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
