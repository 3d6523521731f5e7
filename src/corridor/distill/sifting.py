"""Stage 1 of distillation: sifting (detection records -> SIFTED key block).

This module owns the sifting exchange and the compact encoding of the arrays that
the distillation stages put on the classical channel (:func:`encode_arrays`,
:func:`decode_arrays`).

Protocol (decoy-state BB84 in the form of Lim, Curty, Walenta, Xu, Zbinden,
PRA 89, 022307 (2014)):

1. Bob announces which gates clicked (pulse indices, as LEB128 gaps) and his
   measurement basis for each (message ``sift.bob``).
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

Speed: every pass here touches all detections (four per key bit at p_Z = 1/2), so the
whole-array work is done by the compiled kernels of ``_sifting_kernels`` (one pass to
encode or check the gates, one to split and count), and the large messages travel as
read-only views (``channel.join_buffers``, ``receive_view``) rather than fresh bytes.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from corridor.distill import _sifting_kernels as _kernels
from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.channel import (
    DEFAULT_TIMEOUT_S,
    ChannelEndpoint,
    Payload,
    join_buffers,
    receive_view,
)
from corridor.errors import ProtocolAbort
from corridor.link.records import AliceRecords, BobRecords

MESSAGE_BOB = "sift.bob"
MESSAGE_ALICE = "sift.alice"
INTENSITY_CLASSES = 3


def encode_arrays(*arrays: np.ndarray) -> Payload:
    """Serialise numeric arrays into one message payload (numpy ``.npy`` records).

    The ``.npy`` format carries dtype and shape, so the receiver can check both; no
    pickling is ever used. The payload is bytes-like (``bytes``, or for large arrays a
    read-only ``memoryview``, built with one copy of the data: see
    :func:`~corridor.distill.channel.join_buffers`); every channel endpoint takes it.
    """
    parts: list[bytes | memoryview] = []
    for array in arrays:
        array = np.ascontiguousarray(array)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, np.lib.format.header_data_from_array_1_0(array))
        parts.append(header.getvalue())
        parts.append(array.reshape(-1).data.cast("B"))
    return join_buffers(parts)


def decode_arrays(payload: Payload, count: int, kind: str) -> list[np.ndarray]:
    """Parse ``count`` arrays written by :func:`encode_arrays`.

    The arrays are read-only views of ``payload`` (no copy). A payload that is
    malformed, holds object, float or other non-integer arrays or has bytes left over
    raises ``ProtocolAbort("malformed_message")`` naming the message type ``kind``.
    """
    view = memoryview(payload).cast("B")
    arrays: list[np.ndarray] = []
    offset = 0
    try:
        for _ in range(count):
            array, offset = _read_array(view, offset)
            arrays.append(array)
    except (ValueError, EOFError, OSError, TypeError) as exc:
        raise ProtocolAbort("malformed_message", f"{kind}: {type(exc).__name__}") from None
    if offset != len(view):
        raise ProtocolAbort("malformed_message", f"{kind}: trailing bytes")
    for array in arrays:
        if array.dtype.kind not in "biu":
            raise ProtocolAbort("malformed_message", f"{kind}: unexpected dtype {array.dtype}")
    return arrays


#: magic (6 bytes), version (2), header length (2 in version 1.0, 4 in 2.0 and 3.0)
_NPY_PREAMBLE_BYTES = 12
_NPY_MAX_HEADER_BYTES = 4096


def _read_array(view: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One ``.npy`` record at ``offset``: (read-only view of its data, offset after it)."""
    head = io.BytesIO(bytes(view[offset:offset + _NPY_PREAMBLE_BYTES]))
    major, _minor = np.lib.format.read_magic(head)
    length_bytes = 2 if major == 1 else 4
    if major not in (1, 2, 3) or head.tell() + length_bytes > len(head.getvalue()):
        raise ValueError("unsupported .npy version")
    header_length = int.from_bytes(head.read(length_bytes), "little")
    if header_length > _NPY_MAX_HEADER_BYTES:
        raise ValueError(".npy header too long")
    start = offset + 8 + length_bytes
    header = io.BytesIO(bytes(view[offset:start + header_length]))
    read_header = np.lib.format.read_array_header_1_0 if major == 1 \
        else np.lib.format.read_array_header_2_0
    np.lib.format.read_magic(header)
    shape, fortran_order, dtype = read_header(header)
    if header.tell() != start + header_length - offset:
        raise EOFError("truncated .npy header")
    if dtype.hasobject:
        raise ValueError("object arrays are refused")
    items = math.prod(shape)
    data = start + header_length
    end = data + items * dtype.itemsize
    if end > len(view):
        raise EOFError("truncated .npy data")
    array = np.frombuffer(view, dtype=dtype, count=items, offset=data)
    return array.reshape(shape, order="F" if fortran_order else "C"), end


def _encode_indices(index: np.ndarray) -> np.ndarray:
    """LEB128 gaps between ascending pulse indices (the first gap is the first index).

    One byte per detection while the gaps stay under 128 pulses (detection rates above
    about 4 %), two under 16384, and so on: never more than the narrowest fixed-width
    type would take for the largest gap, in bytes per detection rounded up.
    """
    index = np.ascontiguousarray(index, dtype=np.int64)
    # Room for one byte a gate first (a fresh buffer's pages cost more than a recount).
    out = np.empty(index.shape[0] + index.shape[0] // 64 + 16, dtype=np.uint8)
    used = _kernels.encode_gaps(index, out)
    if used == -2:
        out = np.empty(_kernels.encoded_gap_bytes(index), dtype=np.uint8)
        used = _kernels.encode_gaps(index, out)
    if used < 0:
        raise ProtocolAbort("malformed_records",
                            "pulse indices must be non-negative and strictly ascending")
    return out[:used]


def _check_indices(gaps: np.ndarray, index: np.ndarray, block_id: int) -> None:
    """Alice's check that Bob's gaps name exactly the gates she holds settings for."""
    if gaps.ndim != 1 or gaps.dtype != np.uint8:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_BOB}: pulse index gaps must be "
                            "LEB128 bytes (uint8)")
    index = np.ascontiguousarray(index, dtype=np.int64)
    if (index.size == 0 or int(index[0]) >= 0) and _kernels.gaps_equal(gaps, index):
        return
    status, announced = _kernels.check_gaps(gaps, index)
    if status == _kernels.GAPS_MALFORMED:
        raise ProtocolAbort("malformed_message",
                            f"{MESSAGE_BOB}: pulse index gaps are not canonical LEB128 or "
                            "not strictly ascending")
    raise ProtocolAbort("sifting_index_mismatch",
                        f"block {block_id}: Bob announced {announced} gates, "
                        f"Alice holds settings for {index.size} different or other gates")


def _pack_two_bit(values: np.ndarray) -> np.ndarray:
    """Pack values in 0..3 four to a byte (the first in the two high bits)."""
    values = np.ascontiguousarray(values, dtype=np.uint8)
    out = np.empty((values.shape[0] + 3) // 4, dtype=np.uint8)
    _kernels.pack_two_bit(values, out)
    return out


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


def _sift(role: str, link_id: str, block_id: int, bits: np.ndarray, basis: np.ndarray,
          other_basis: np.ndarray, classes: np.ndarray, classes_packed: bool,
          ) -> SiftingResult:
    """Keep the detections whose bases agree: Z ones are the key, X ones the test set.

    ``other_basis`` is the peer's basis packed eight to a byte, ``classes`` the
    intensity classes (packed four to a byte when ``classes_packed``); one pass of
    :func:`~corridor.distill._sifting_kernels.split_detections` does the rest.
    """
    detections = int(basis.shape[0])
    slots = detections + _kernels.SPLIT_SLACK
    key_bits = np.empty(slots, dtype=np.uint8)
    key_classes = np.empty(slots, dtype=np.uint8)
    test_bits = np.empty(slots, dtype=np.uint8)
    test_classes = np.empty(slots, dtype=np.uint8)
    tally = np.zeros(9, dtype=np.int64)
    _kernels.split_detections(np.ascontiguousarray(bits, dtype=np.uint8),
                              np.ascontiguousarray(basis, dtype=np.uint8), other_basis,
                              classes, classes_packed, key_bits, key_classes, test_bits,
                              test_classes, tally)
    if tally[8]:
        # Bob's classes come from Alice's message; Alice's from her own records.
        raise ProtocolAbort("malformed_message" if classes_packed else "malformed_records",
                            "basis values must be 0/1 and intensity classes 0, 1 or 2")
    n_key = int(tally[6])
    n_test = int(tally[7])
    counts = SiftedCounts(
        detections=detections,
        key_basis_detections=(int(tally[0]), int(tally[1]), int(tally[2])),
        test_basis_detections=(int(tally[3]), int(tally[4]), int(tally[5])),
        basis_mismatches=detections - n_key - n_test,
    )
    block = KeyBlock(link_id=link_id, block_id=block_id, role=role, bits=key_bits[:n_key])
    block.advance(BlockState.SIFTED, sifted_bits=counts.key_bits, test_bits=counts.test_bits,
                  detections=counts.detections,
                  key_basis_detections=list(counts.key_basis_detections),
                  test_basis_detections=list(counts.test_basis_detections))
    return SiftingResult(block=block, counts=counts, key_classes=key_classes[:n_key],
                         test_bits=test_bits[:n_test], test_classes=test_classes[:n_test])


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
    gaps, packed_basis = decode_arrays(receive_view(channel, MESSAGE_BOB, timeout_s), 2,
                                       MESSAGE_BOB)
    _check_indices(gaps, records.index, block_id)
    detections = len(records)
    if packed_basis.ndim != 1 or packed_basis.size != (detections + 7) // 8:
        raise ProtocolAbort("malformed_message",
                            f"{MESSAGE_BOB}: basis size does not match {detections} detections")
    basis = np.ascontiguousarray(records.basis, dtype=np.uint8)
    classes = np.ascontiguousarray(records.intensity_class, dtype=np.uint8)
    channel.send(MESSAGE_ALICE, encode_arrays(np.packbits(basis), _pack_two_bit(classes)))
    return _sift("alice", link_id, block_id, records.bit, basis,
                 np.ascontiguousarray(packed_basis, dtype=np.uint8), classes, False)


def sift_bob(channel: ChannelEndpoint, records: BobRecords, *, link_id: str,
             block_id: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> SiftingResult:
    """Bob's side of sifting: announce clicks and bases, receive Alice's bases and classes."""
    _check_binary("bob basis", records.basis)
    detections = len(records)
    basis = np.ascontiguousarray(records.basis, dtype=np.uint8)
    channel.send(MESSAGE_BOB, encode_arrays(_encode_indices(records.index),
                                            np.packbits(basis)))
    packed_basis, packed_classes = decode_arrays(receive_view(channel, MESSAGE_ALICE,
                                                              timeout_s), 2, MESSAGE_ALICE)
    if packed_basis.ndim != 1 or packed_classes.ndim != 1 or \
            packed_basis.size != (detections + 7) // 8 or \
            packed_classes.size != (detections + 3) // 4:
        raise ProtocolAbort("malformed_message",
                            f"{MESSAGE_ALICE}: sizes do not match {detections} detections")
    return _sift("bob", link_id, block_id, records.bit, basis,
                 np.ascontiguousarray(packed_basis, dtype=np.uint8),
                 np.ascontiguousarray(packed_classes, dtype=np.uint8), True)
