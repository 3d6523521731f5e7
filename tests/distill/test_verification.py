"""Stage 4 (verification): Poly1305 tags catch any difference left after reconciliation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.channel import in_process_pair
from corridor.distill.verification import (
    DEFAULT_SEGMENT_BITS,
    MESSAGE_TAG,
    MESSAGE_VERDICT,
    TAG_BITS,
    VerificationResult,
    _tags,
    collision_probability,
    hashed_message_bytes,
    verify_alice,
    verify_bob,
)
from corridor.errors import ProtocolAbort
from corridor.randomness import RandomSource
from tests.distill.test_sifting import run_pair


def corrected_block(role: str, bits: np.ndarray) -> KeyBlock:
    block = KeyBlock(link_id="L", block_id=1, role=role, bits=bits.astype(np.uint8))
    block.advance(BlockState.CORRECTED)
    return block


def verify_both(alice_bits: np.ndarray, bob_bits: np.ndarray, seed: int = 0,
                eps_cor: float = 1e-15, segment_bits: int = DEFAULT_SEGMENT_BITS,
                ) -> tuple[object, object, KeyBlock, KeyBlock]:
    a = corrected_block("alice", alice_bits)
    b = corrected_block("bob", bob_bits)
    rng = RandomSource.seeded(seed)
    ra, rb = run_pair(lambda ch: verify_alice(ch, a, rng, eps_cor=eps_cor,
                                              segment_bits=segment_bits),
                      lambda ch: verify_bob(ch, b, eps_cor=eps_cor, segment_bits=segment_bits),
                      timeout_s=10)
    return ra, rb, a, b


def test_identical_keys_pass_and_the_tag_is_counted() -> None:
    bits = np.random.default_rng(1).integers(0, 2, 100_003, dtype=np.uint8)
    ra, rb, a, b = verify_both(bits, bits.copy())
    assert isinstance(ra, VerificationResult) and ra == rb
    segments = -(-100_003 // DEFAULT_SEGMENT_BITS)
    assert ra.segments == segments and ra.failed_segments == 0 == ra.removed_bits
    assert ra.disclosed_bits == TAG_BITS * segments and TAG_BITS == 128 + 1
    assert a.state is BlockState.VERIFIED and b.state is BlockState.VERIFIED
    assert a.meta["verification_tag_bits"] == (128 + 1) * segments
    assert np.array_equal(a.bits, bits) and np.array_equal(b.bits, bits)
    assert ra.collision_probability == collision_probability(100_003, DEFAULT_SEGMENT_BITS) \
        <= 1e-15


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5_000), st.data())
def test_any_single_residual_error_is_caught(length: int, data: st.DataObject) -> None:
    gen = np.random.default_rng(length)
    bits = gen.integers(0, 2, length, dtype=np.uint8)
    position = data.draw(st.integers(0, length - 1))
    other = bits.copy()
    other[position] ^= 1
    ra, rb, _, _ = verify_both(bits, other, seed=length)
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort) and r.reason == "verification_failed"


def test_keys_of_different_length_never_match() -> None:
    bits = np.zeros(800, dtype=np.uint8)
    ra, rb, _, _ = verify_both(bits, np.zeros(808, dtype=np.uint8))
    assert isinstance(ra, ProtocolAbort) and ra.reason == "verification_failed"
    assert isinstance(rb, ProtocolAbort) and rb.reason == "verification_failed"


def test_collision_bound_formula() -> None:
    # L = 16 header bytes + ceil(bits / 8); bound 8 * ceil(L / 16) / 2^106 per segment.
    assert hashed_message_bytes(1) == 17
    assert collision_probability(1) == 16 / 2**106
    assert collision_probability(8 * 1_000_000) == 8 * math.ceil(1_000_016 / 16) / 2**106
    # Union bound over segments: 3 full segments of 2^20 bits and one of 5 bits.
    per_full = 8 * math.ceil((16 + 2**17) / 16)
    assert collision_probability(3 * 2**20 + 5, 2**20) == (3 * per_full + 16) / 2**106


def test_a_differing_segment_is_dropped_and_the_rest_kept() -> None:
    gen = np.random.default_rng(5)
    bits = gen.integers(0, 2, 10_000, dtype=np.uint8)
    other = bits.copy()
    other[2_500] ^= 1  # in segment 2 of 1024-bit segments (bits 2048..3071)
    ra, rb, a, b = verify_both(bits, other, segment_bits=1024)
    assert isinstance(ra, VerificationResult) and ra == rb
    assert (ra.segments, ra.failed_segments, ra.removed_bits) == (10, 1, 1024)
    assert ra.disclosed_bits == 10 * TAG_BITS
    expected = np.concatenate([bits[:2048], bits[3072:]])
    assert np.array_equal(a.bits, expected) and np.array_equal(b.bits, expected)
    assert a.meta["verification_removed_bits"] == 1024


def test_bound_above_eps_cor_refuses() -> None:
    bits = np.zeros(1_000, dtype=np.uint8)
    ra, rb, _, _ = verify_both(bits, bits.copy(), eps_cor=1e-40)
    for r in (ra, rb):
        assert isinstance(r, ProtocolAbort) and r.reason == "verification_bound_above_eps_cor"


def test_malformed_tag_and_verdict_abort() -> None:
    block = corrected_block("bob", np.zeros(64, dtype=np.uint8))
    end_a, end_b = in_process_pair()
    end_a.send(MESSAGE_TAG, b"short")
    with pytest.raises(ProtocolAbort) as info:
        verify_bob(end_b, block, eps_cor=1e-15)
    assert info.value.reason == "malformed_message"

    block = corrected_block("alice", np.zeros(64, dtype=np.uint8))
    end_a, end_b = in_process_pair()
    end_b.send(MESSAGE_VERDICT, b"\x07\x01")
    with pytest.raises(ProtocolAbort) as info:
        verify_alice(end_a, block, RandomSource.seeded(0), eps_cor=1e-15)
    assert info.value.reason == "malformed_message"


def test_the_hash_key_is_fresh_for_every_block() -> None:
    end_a, end_b = in_process_pair()
    rng = RandomSource.seeded(3)
    keys = set()
    for _ in range(3):
        block = corrected_block("alice", np.ones(64, dtype=np.uint8))
        end_b.send(MESSAGE_VERDICT, b"\x80")  # one segment, matched
        verify_alice(end_a, block, rng, eps_cor=1e-15)
        keys.add(end_b.recv(MESSAGE_TAG)[:32])
    assert len(keys) == 3


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3000), segment_bits=st.sampled_from([8, 16, 1000, 1024, 1029, 4096]),
       seed=st.integers(0, 2**32 - 1))
def test_segment_tags_equal_tags_of_each_segment_packed_alone(n: int, segment_bits: int,
                                                              seed: int) -> None:
    bits = np.random.default_rng(seed).integers(0, 2, n, dtype=np.uint8)
    key = bytes(range(32))
    expected = []
    for i in range(-(-n // segment_bits)):
        segment = bits[i * segment_bits:(i + 1) * segment_bits]
        message = i.to_bytes(8, "big") + len(segment).to_bytes(8, "big") \
            + np.packbits(segment).tobytes()
        expected.append(Poly1305.generate_tag(key, message))
    assert _tags(bits, key, segment_bits) == expected
