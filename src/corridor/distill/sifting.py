"""Stage 1 of distillation: sifting (detection records -> SIFTED key block).

This module owns the sifting exchange and the compact encoding of the arrays that
the distillation stages put on the classical channel (:func:`encode_arrays`,
:func:`decode_arrays`).

Protocol (decoy-state BB84 in the form of Lim, Curty, Walenta, Xu, Zbinden,
PRA 89, 022307 (2014)):

1. Bob announces which gates clicked (pulse indices) and his measurement basis for
   each (message ``sift.bob``).
2. Alice checks that the announced gates are the ones she has settings for and
   announces her preparation basis and intensity class for each of them (message
   ``sift.alice``). Both are public once the pulses have been detected: the decoy
   method needs the classes of the detected pulses, and the bases carry no key.
3. Both keep the detections where the bases agree. Z-basis detections of *every*
   intensity class form the sifted key (Lim et al. use n_Z = sum_k n_Z,k); X-basis
   detections are the test set revealed in parameter estimation.

Efficient BB84 (biased bases, ``z_basis_probability`` > 1/2) needs nothing special
here: the key fraction of the sifted detections is p_Z^2, the test fraction p_X^2.

Public information disclosed by this stage: indices, bases and intensity classes.
None of it is correlated with the key bits, so nothing is added to lambda_EC.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelEndpoint
from corridor.errors import ProtocolAbort
from corridor.link.records import BASIS_X, BASIS_Z, AliceRecords, BobRecords

MESSAGE_BOB = "sift.bob"
MESSAGE_ALICE = "sift.alice"
INTENSITY_CLASSES = 3


def encode_arrays(*arrays: np.ndarray) -> bytes:
    """Serialise numeric arrays into one message payload (numpy ``.npy`` records).

    The ``.npy`` format carries dtype and shape, so the receiver can check both; no
    pickling is ever used.
    """
    buffer = io.BytesIO()
    for array in arrays:
        np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_arrays(payload: bytes, count: int, kind: str) -> list[np.ndarray]:
    """Parse ``count`` arrays written by :func:`encode_arrays`.

    A payload that is malformed, holds object arrays or has bytes left over raises
    ``ProtocolAbort("malformed_message")`` naming the message type ``kind``.
    """
    buffer = io.BytesIO(payload)
    arrays: list[np.ndarray] = []
    try:
        for _ in range(count):
            arrays.append(np.lib.format.read_array(buffer, allow_pickle=False))
    except (ValueError, EOFError, OSError) as exc:
        raise ProtocolAbort("malformed_message", f"{kind}: {type(exc).__name__}") from None
    if buffer.tell() != len(payload):
        raise ProtocolAbort("malformed_message", f"{kind}: trailing bytes")
    for array in arrays:
        if array.dtype.kind not in "biu":
            raise ProtocolAbort("malformed_message", f"{kind}: unexpected dtype {array.dtype}")
    return arrays


def _encode_indices(index: np.ndarray) -> np.ndarray:
    """Gaps between ascending pulse indices, in the narrowest unsigned type that fits."""
    gaps = np.empty(index.shape[0], dtype=np.int64)
    if gaps.size:
        # np.diff(prepend=...) is some 40 times slower than this on large arrays.
        gaps[0] = index[0]
        np.subtract(index[1:], index[:-1], out=gaps[1:])
    largest = int(gaps.max()) if gaps.size else 0
    for dtype in (np.uint8, np.uint16, np.uint32):
        if largest <= np.iinfo(dtype).max:
            return gaps.astype(dtype)
    return gaps.astype(np.uint64)


def _decode_indices(gaps: np.ndarray, kind: str) -> np.ndarray:
    if gaps.ndim != 1 or gaps.dtype.kind != "u":
        raise ProtocolAbort("malformed_message", f"{kind}: pulse index gaps must be unsigned")
    index = gaps.astype(np.int64)
    np.cumsum(index, out=index)  # in place: a fresh output array costs more than the sum
    if index.size > 1 and gaps[1:].min() == 0:
        raise ProtocolAbort("malformed_message",
                            f"{kind}: pulse indices must be strictly ascending")
    return index


def _pack_two_bit(values: np.ndarray) -> np.ndarray:
    """Pack values in 0..3 four to a byte."""
    planes = np.stack([(values >> 1) & 1, values & 1], axis=1).astype(np.uint8)
    return np.packbits(planes.reshape(-1))


def _unpack_two_bit(packed: np.ndarray, count: int) -> np.ndarray:
    planes = np.unpackbits(packed.astype(np.uint8), count=2 * count).reshape(count, 2)
    return (planes[:, 0] << 1 | planes[:, 1]).astype(np.uint8)


@dataclass(frozen=True)
class SiftedCounts:
    """Public per-class counts after sifting (signal, decoy, vacuum order).

    Attributes:
        detections: gates that clicked in the block.
        key_basis_detections: sifted Z-basis detections per intensity class (n_Z,k).
        test_basis_detections: sifted X-basis detections per intensity class (n_X,k).
        basis_mismatches: detections discarded because the bases differed.
    """

    detections: int
    key_basis_detections: tuple[int, int, int]
    test_basis_detections: tuple[int, int, int]
    basis_mismatches: int

    @property
    def key_bits(self) -> int:
        """n_Z: length of the sifted key."""
        return sum(self.key_basis_detections)

    @property
    def test_bits(self) -> int:
        """n_X: number of test (X-basis) bits."""
        return sum(self.test_basis_detections)


@dataclass
class SiftingResult:
    """Output of stage 1 for one party.

    Attributes:
        block: the SIFTED key block (Z-basis bits of all intensity classes, in pulse order).
        counts: the public per-class counts.
        key_classes: intensity class of each sifted key bit (public).
        test_bits: this party's X-basis bits, to be revealed in estimation.
        test_classes: intensity class of each test bit (public).
    """

    block: KeyBlock
    counts: SiftedCounts
    key_classes: np.ndarray
    test_bits: np.ndarray
    test_classes: np.ndarray

    def __repr__(self) -> str:
        return f"SiftingResult({self.block!r}, {self.counts!r})"


def _per_class(classes: np.ndarray) -> tuple[int, int, int]:
    counts = np.bincount(classes, minlength=INTENSITY_CLASSES)
    return (int(counts[0]), int(counts[1]), int(counts[2]))


def _sift(role: str, link_id: str, block_id: int, bits: np.ndarray, basis: np.ndarray,
          other_basis: np.ndarray, classes: np.ndarray) -> SiftingResult:
    agree = basis == other_basis
    key_mask = agree & (basis == BASIS_Z)
    test_mask = agree & (basis == BASIS_X)
    # np.compress is several times faster than boolean indexing on large arrays.
    key_classes = np.compress(key_mask, classes)
    test_classes = np.compress(test_mask, classes)
    counts = SiftedCounts(
        detections=int(basis.shape[0]),
        key_basis_detections=_per_class(key_classes),
        test_basis_detections=_per_class(test_classes),
        basis_mismatches=int(basis.shape[0] - np.count_nonzero(agree)),
    )
    block = KeyBlock(link_id=link_id, block_id=block_id, role=role,
                     bits=np.compress(key_mask, bits).astype(np.uint8, copy=False))
    block.advance(BlockState.SIFTED, sifted_bits=counts.key_bits, test_bits=counts.test_bits,
                  detections=counts.detections,
                  key_basis_detections=list(counts.key_basis_detections),
                  test_basis_detections=list(counts.test_basis_detections))
    return SiftingResult(block=block, counts=counts, key_classes=key_classes,
                         test_bits=np.compress(test_mask, bits).astype(np.uint8, copy=False),
                         test_classes=test_classes)


def _check_binary(name: str, values: np.ndarray) -> None:
    if values.size and int(values.max()) > 1:
        raise ProtocolAbort("malformed_records", f"{name} must hold 0/1 values")


def sift_alice(channel: ChannelEndpoint, records: AliceRecords, *, link_id: str,
               block_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> SiftingResult:
    """Alice's side of sifting: receive Bob's clicks and bases, announce bases and classes.

    Raises ``ProtocolAbort("sifting_index_mismatch")`` when Bob announces gates that
    Alice has no settings for (a desynchronised or tampered record stream).
    """
    _check_binary("alice basis", records.basis)
    gaps, packed_basis = decode_arrays(channel.recv(MESSAGE_BOB, timeout_s), 2, MESSAGE_BOB)
    bob_index = _decode_indices(gaps, MESSAGE_BOB)
    if not np.array_equal(bob_index, records.index.astype(np.int64)):
        raise ProtocolAbort("sifting_index_mismatch",
                            f"block {block_id}: Bob announced {bob_index.size} gates, "
                            f"Alice holds settings for {len(records)} different or other gates")
    detections = len(records)
    if packed_basis.size != (detections + 7) // 8:
        raise ProtocolAbort("malformed_message",
                            f"{MESSAGE_BOB}: basis size does not match {detections} detections")
    bob_basis = np.unpackbits(packed_basis.astype(np.uint8), count=detections)
    channel.send(MESSAGE_ALICE, encode_arrays(
        np.packbits(records.basis.astype(np.uint8)),
        _pack_two_bit(records.intensity_class.astype(np.uint8))))
    return _sift("alice", link_id, block_id, records.bit, records.basis.astype(np.uint8),
                 bob_basis, records.intensity_class.astype(np.uint8))


def sift_bob(channel: ChannelEndpoint, records: BobRecords, *, link_id: str,
             block_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> SiftingResult:
    """Bob's side of sifting: announce clicks and bases, receive Alice's bases and classes."""
    _check_binary("bob basis", records.basis)
    detections = len(records)
    channel.send(MESSAGE_BOB, encode_arrays(_encode_indices(records.index),
                                            np.packbits(records.basis.astype(np.uint8))))
    packed_basis, packed_classes = decode_arrays(channel.recv(MESSAGE_ALICE, timeout_s), 2,
                                                 MESSAGE_ALICE)
    if packed_basis.size != (detections + 7) // 8 or packed_classes.size != (detections + 3) // 4:
        raise ProtocolAbort("malformed_message",
                            f"{MESSAGE_ALICE}: sizes do not match {detections} detections")
    alice_basis = np.unpackbits(packed_basis.astype(np.uint8), count=detections)
    classes = _unpack_two_bit(packed_classes, detections)
    if classes.size and int(classes.max()) >= INTENSITY_CLASSES:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_ALICE}: intensity class out of range")
    return _sift("bob", link_id, block_id, records.bit, records.basis.astype(np.uint8),
                 alice_basis, classes)
