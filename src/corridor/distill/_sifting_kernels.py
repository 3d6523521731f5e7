"""Compiled whole-block passes of sifting (``corridor.distill.sifting``).

Sifting touches every detection of a block (about four per sifted key bit at
p_Z = 1/2), so each numpy pass over the detections costs as much as a whole later
stage. These kernels do in one pass what took several whole-array passes and their
temporaries:

- :func:`encode_gaps` writes Bob's clicked gates as LEB128 gaps (7 bits a byte, low
  group first, high bit set on every byte but a gap's last);
- :func:`check_gaps` decodes Alice's copy of them and compares with the gates she
  holds settings for as it goes, without ever building the decoded index;
- :func:`split_detections` keeps the detections where the bases agree, splits them
  into key (Z) and test (X) bits with their intensity classes and counts them per
  class, all branch-free (the bases are random, so a branch would be mispredicted
  half the time);
- :func:`pack_two_bit` packs intensity classes four to a byte.

The protocol, the checks on what arrives from the channel and the error messages
live in ``sifting.py``; numba does not check bounds, so every array size is checked
there before a kernel sees it. ``tests/distill/test_sifting.py`` pins each kernel to
the straightforward numpy expression it replaces.
"""

from __future__ import annotations

import platform
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: check_gaps results.
GAPS_MATCH, GAPS_MALFORMED, GAPS_MISMATCH = 0, 1, 2
#: A gap of a 63-bit index takes at most 9 bytes of 7 bits.
MAX_GAP_BYTES = 9


#: Gates per chunk of the one-byte fast path of encode_gaps and gaps_equal.
_CHUNK = 512


@njit(cache=True, nogil=True, inline="always")
def _gap_bytes(gap: np.uint64) -> np.uint64:
    count = np.uint64(1)
    for k in range(1, MAX_GAP_BYTES):
        count += np.uint64(gap >= (np.uint64(1) << np.uint64(7 * k)))
    return count


@njit(cache=True, nogil=True, inline="always")
def _put_gap(gap: np.uint64, out: np.ndarray, used: np.uint64) -> np.uint64:
    one = np.uint64(1)
    while gap >= np.uint64(128):
        out[used] = np.uint8((gap & np.uint64(127)) | np.uint64(128))
        gap >>= np.uint64(7)
        used += one
    out[used] = np.uint8(gap)
    return used + one


@njit(cache=True, nogil=True, boundscheck=False)
def encoded_gap_bytes(index: np.ndarray) -> int:
    """Bytes :func:`encode_gaps` writes for ``index`` (non-negative, ascending)."""
    n = np.uint64(index.shape[0])
    if n == 0:
        return 0
    one = np.uint64(1)
    total = _gap_bytes(np.uint64(index[0]))
    j = one
    while j < n:
        total += _gap_bytes(np.uint64(index[j] - index[j - one]))
        j += one
    return np.int64(total)  # type: ignore[return-value]


@njit(cache=True, nogil=True, inline="always")
def _gap_matches(gap: np.uint64, encoded: np.ndarray, used: np.uint64
                 ) -> tuple[bool, np.uint64]:
    """(True, position after it) when ``encoded`` holds ``gap``'s encoding at ``used``."""
    size = np.uint64(encoded.shape[0])
    one = np.uint64(1)
    while gap >= np.uint64(128):
        if used >= size or encoded[used] != np.uint8((gap & np.uint64(127)) | np.uint64(128)):
            return False, used
        gap >>= np.uint64(7)
        used += one
    if used >= size or encoded[used] != np.uint8(gap):
        return False, used
    return True, used + one


# The one-byte fast paths below run on unsigned indices: numba's test for negative
# indices would otherwise keep LLVM from vectorizing them (several times slower).
# ``d | (d - 1)`` stays under 128 exactly when 1 <= d <= 127 (d = 0 wraps around).

@njit(cache=True, nogil=True, boundscheck=False)
def encode_gaps(index: np.ndarray, out: np.ndarray) -> int:
    """LEB128 of the gaps of ``index`` (the first gap is ``index[0]``) into ``out``.

    Returns the bytes written, -1 when ``index`` is negative or not strictly
    ascending, or -2 when ``out`` is too short (:func:`encoded_gap_bytes` says how
    long it must be; one byte per gate suffices while the gaps stay under 128). Chunks of
    one-byte gaps (the common case on short links) take a vectorized loop; a chunk
    with a longer gap (or a repeated gate) is written again one gap at a time.
    """
    n = np.uint64(index.shape[0])
    if n == 0:
        return 0
    if index[0] < 0:
        return -1
    one = np.uint64(1)
    capacity = np.uint64(out.shape[0])
    if _gap_bytes(np.uint64(index[0])) > capacity:
        return -2
    used = _put_gap(np.uint64(index[0]), out, np.uint64(0))
    start = one
    while start < n:
        stop = min(start + np.uint64(_CHUNK), n)
        widest = np.uint64(128)
        if used + (stop - start) <= capacity:
            widest = np.uint64(0)
            j = start
            while j < stop:
                d = np.uint64(index[j] - index[j - one])
                out[used + j - start] = np.uint8(d & np.uint64(255))
                widest |= d | (d - one)
                j += one
        if widest < np.uint64(128):
            used += stop - start
        else:
            j = start
            while j < stop:
                if index[j] <= index[j - one]:
                    return -1
                gap = np.uint64(index[j] - index[j - one])
                if used + _gap_bytes(gap) > capacity:
                    return -2
                used = _put_gap(gap, out, used)
                j += one
        start = stop
    return np.int64(used)  # type: ignore[return-value]


@njit(cache=True, nogil=True, boundscheck=False)
def gaps_equal(encoded: np.ndarray, index: np.ndarray) -> bool:
    """True when ``encoded`` is exactly :func:`encode_gaps` of ``index`` (which must be
    non-negative and strictly ascending), compared as it is produced, never written."""
    n = np.uint64(index.shape[0])
    size = np.uint64(encoded.shape[0])
    if n == 0:
        return size == 0
    one = np.uint64(1)
    ok, used = _gap_matches(np.uint64(index[0]), encoded, np.uint64(0))
    if not ok:
        return False
    start = one
    while start < n:
        stop = min(start + np.uint64(_CHUNK), n)
        if used + (stop - start) <= size:
            widest = np.uint64(0)
            differ = np.uint64(0)
            j = start
            while j < stop:
                d = np.uint64(index[j] - index[j - one])
                differ |= np.uint64(encoded[used + j - start]) ^ (d & np.uint64(255))
                widest |= d | (d - one)
                j += one
            if widest < np.uint64(128):
                if differ:
                    return False
                used += stop - start
                start = stop
                continue
        j = start
        while j < stop:
            if index[j] <= index[j - one]:
                return False
            ok, used = _gap_matches(np.uint64(index[j] - index[j - one]), encoded, used)
            if not ok:
                return False
            j += one
        start = stop
    return used == size


@njit(cache=True, nogil=True)
def check_gaps(encoded: np.ndarray, index: np.ndarray) -> tuple[int, int]:
    """Decode LEB128 gaps and compare the gates they name with ``index``.

    Returns (status, gates decoded): ``GAPS_MATCH`` when the stream names exactly
    ``index``; ``GAPS_MALFORMED`` when it is not a canonical LEB128 sequence of gaps
    (a truncated or over-long group, a trailing zero group, or a zero gap after the
    first, i.e. gates not strictly ascending); ``GAPS_MISMATCH`` when it is
    well-formed up to the first gate that differs, or names another number of gates.
    """
    n = index.shape[0]
    size = encoded.shape[0]
    position = 0
    decoded = 0
    previous = np.int64(0)
    status = GAPS_MATCH
    while position < size:
        gap = np.uint64(0)
        shift = np.uint64(0)
        groups = 0
        while True:
            if position >= size or groups == MAX_GAP_BYTES:
                return GAPS_MALFORMED, decoded
            byte = np.uint64(encoded[position])
            position += 1
            groups += 1
            gap |= (byte & np.uint64(127)) << shift
            shift += np.uint64(7)
            if byte < np.uint64(128):
                if byte == np.uint64(0) and groups > 1:
                    return GAPS_MALFORMED, decoded
                break
        if decoded and gap == np.uint64(0):
            return GAPS_MALFORMED, decoded
        if status == GAPS_MATCH:
            if decoded >= n:
                status = GAPS_MISMATCH
            else:
                # index[decoded] - previous >= 0 for Alice's ascending index: no overflow.
                expected = index[decoded] - previous
                if expected < 0 or gap != np.uint64(expected):
                    status = GAPS_MISMATCH
                else:
                    previous = index[decoded]
        decoded += 1
    if status == GAPS_MATCH and decoded != n:
        status = GAPS_MISMATCH
    return status, decoded


# -- split: bytes in, bytes out, eight detections at a time ---------------------------

def _host_has_bmi2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    # As in privacy.py: with a CPU override numba may compile for a CPU without BMI2,
    # and LLVM would abort the process on the instruction.
    cpu_name = getattr(numba.config, "CPU_NAME", None)
    if cpu_name not in (None, "host") or getattr(numba.config, "CPU_FEATURES", None) is not None:
        return False
    import llvmlite.binding as llvm

    return "+bmi2" in llvm.get_host_cpu_features().flatten().split(",")


#: True when :func:`split_detections` can use PEXT (x86 BMI2, every x86-64 CPU since
#: 2013/2015); otherwise :func:`split_detections_scalar` does the same work.
HAS_PEXT = _host_has_bmi2()


def _pext_typing(typingctx: Any, value: Any, mask: Any) -> Any:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64, i64]), "llvm.x86.bmi.pext.64")
        return builder.call(fn, args)

    return types.uint64(types.uint64, types.uint64), codegen


def _popcount_typing(typingctx: Any, value: Any) -> Any:
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i64, [i64]), "llvm.ctpop.i64")
        return builder.call(fn, args)

    return types.uint64(types.uint64), codegen


def _byte_pointer(context: Any, builder: Any, array_type: Any, array: Any, offset: Any) -> Any:
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [offset]), ir.IntType(64).as_pointer())


def _load_typing(typingctx: Any, array: Any, offset: Any) -> Any:
    """Eight bytes of a uint8 array from any offset, as one little-endian word."""
    if not (isinstance(array, types.Array) and array.dtype == types.uint8
            and array.layout == "C"):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        return builder.load(_byte_pointer(context, builder, sig.args[0], args[0], args[1]),
                            align=1)

    return types.uint64(array, types.uint64), codegen


def _store_typing(typingctx: Any, array: Any, offset: Any, value: Any) -> Any:
    """Write one word as eight bytes of a uint8 array at any offset."""
    if not (isinstance(array, types.Array) and array.dtype == types.uint8
            and array.layout == "C"):
        return None

    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        builder.store(args[2], _byte_pointer(context, builder, sig.args[0], args[0], args[1]),
                      align=1)
        return context.get_dummy_value()

    return types.none(array, types.uint64, types.uint64), codegen


_pext: Any = intrinsic(_pext_typing)
_popcount: Any = intrinsic(_popcount_typing)
_load8: Any = intrinsic(_load_typing)
_store8: Any = intrinsic(_store_typing)


def _spread_tables() -> tuple[np.ndarray, np.ndarray]:
    """Byte b to eight 0/1 bytes (bit 7 first), and to four 2-bit values (high pair first)."""
    byte = np.arange(256, dtype=np.uint64)
    bits = np.zeros(256, dtype=np.uint64)
    pairs = np.zeros(256, dtype=np.uint64)
    for q in range(8):
        bits |= ((byte >> np.uint64(7 - q)) & np.uint64(1)) << np.uint64(8 * q)
    for r in range(4):
        pairs |= ((byte >> np.uint64(6 - 2 * r)) & np.uint64(3)) << np.uint64(8 * r)
    return bits, pairs


SPREAD_BITS, SPREAD_PAIRS = _spread_tables()

#: Extra bytes each split output needs past its last detection (whole-word stores).
SPLIT_SLACK = 8


@njit(cache=True, nogil=True, inline="always")
def _class_of(classes: np.ndarray, packed: bool, i: int) -> int:
    if packed:
        return (classes[i >> 2] >> (6 - 2 * (i & 3))) & 3
    return int(classes[i])


@njit(cache=True, nogil=True)
def split_detections_scalar(bits: np.ndarray, basis: np.ndarray, other_basis: np.ndarray,
                            classes: np.ndarray, classes_packed: bool, key_bits: np.ndarray,
                            key_classes: np.ndarray, test_bits: np.ndarray,
                            test_classes: np.ndarray, counts: np.ndarray,
                            start: int = 0) -> None:
    """:func:`split_detections` one detection at a time, from detection ``start`` on.

    Adds to ``counts`` (which must hold the counts of the detections before
    ``start``) and writes from slot ``counts[6]`` / ``counts[7]`` on.
    """
    nk = counts[6]
    nt = counts[7]
    k1 = 0
    k2 = 0
    t1 = 0
    t2 = 0
    bad = 0
    for i in range(start, bits.shape[0]):
        a = int(basis[i])
        b = (other_basis[i >> 3] >> (7 - (i & 7))) & 1
        c = _class_of(classes, classes_packed, i)
        x = bits[i]
        agree = 1 ^ (a & 1) ^ b
        kf = agree & (1 ^ a) & 1
        tf = agree & a & 1
        key_bits[nk] = x
        key_classes[nk] = c
        test_bits[nt] = x
        test_classes[nt] = c
        nk += kf
        nt += tf
        k1 += kf & c & 1
        k2 += kf & (c >> 1)
        t1 += tf & c & 1
        t2 += tf & (c >> 1)
        bad |= (a >> 1) | (c >> 2) | (c & (c >> 1) & 1)
    # The last unconditional write of each output is past its kept slots: clear it.
    key_bits[nk] = 0
    key_classes[nk] = 0
    test_bits[nt] = 0
    test_classes[nt] = 0
    counts[1] += k1
    counts[2] += k2
    counts[4] += t1
    counts[5] += t2
    counts[0] = nk - counts[1] - counts[2]
    counts[3] = nt - counts[4] - counts[5]
    counts[6] = nk
    counts[7] = nt
    if bad:
        counts[8] = 1


@njit(cache=True, nogil=True, boundscheck=False)
def _split_words(bits: np.ndarray, basis: np.ndarray, other_basis: np.ndarray,
                 classes: np.ndarray, classes_packed: bool, key_bits: np.ndarray,
                 key_classes: np.ndarray, test_bits: np.ndarray, test_classes: np.ndarray,
                 counts: np.ndarray, spread_bits: np.ndarray, spread_pairs: np.ndarray) -> None:
    # Each byte of a word is one detection; masks hold 0x01 (flags) or 0xFF (PEXT masks)
    # per byte. PEXT gathers the kept bytes to the low end of the word, in order, and the
    # whole word is stored at the next free slot: the next store overwrites what is past
    # the kept bytes.
    low = np.uint64(0x0101010101010101)
    ones = np.uint64(0xFF)
    nk = np.uint64(0)
    nt = np.uint64(0)
    k1 = np.uint64(0)
    k2 = np.uint64(0)
    t1 = np.uint64(0)
    t2 = np.uint64(0)
    bad = np.uint64(0)
    for j in range(bits.shape[0] >> 3):
        i = np.uint64(8 * j)
        a = _load8(basis, i)
        b = spread_bits[other_basis[j]]
        if classes_packed:
            c = spread_pairs[classes[2 * j]] | (spread_pairs[classes[2 * j + 1]] << np.uint64(32))
        else:
            c = _load8(classes, i)
        x = _load8(bits, i)
        agree = ~(a ^ b) & low
        key_flags = agree & ~a
        test_flags = agree & a
        key_mask = key_flags * ones
        test_mask = test_flags * ones
        _store8(key_bits, nk, _pext(x, key_mask))
        _store8(key_classes, nk, _pext(c, key_mask))
        _store8(test_bits, nt, _pext(x, test_mask))
        _store8(test_classes, nt, _pext(c, test_mask))
        nk += _popcount(key_flags)
        nt += _popcount(test_flags)
        key_c = c & key_mask
        test_c = c & test_mask
        k1 += _popcount(key_c & low)
        k2 += _popcount(key_c & ~low)
        t1 += _popcount(test_c & low)
        t2 += _popcount(test_c & ~low)
        # A basis byte above 1, a class byte above 3, or a class of 3.
        bad |= (a & ~low) | (c & ~(low | (low << np.uint64(1)))) | (c & (c >> np.uint64(1)) & low)
    counts[1] = k1
    counts[2] = k2
    counts[4] = t1
    counts[5] = t2
    counts[6] = nk
    counts[7] = nt
    counts[8] = 1 if bad else 0


@njit(cache=True, nogil=True)
def split_detections_words(bits: np.ndarray, basis: np.ndarray, other_basis: np.ndarray,
                           classes: np.ndarray, classes_packed: bool, key_bits: np.ndarray,
                           key_classes: np.ndarray, test_bits: np.ndarray,
                           test_classes: np.ndarray, counts: np.ndarray,
                           spread_bits: np.ndarray, spread_pairs: np.ndarray) -> None:
    """:func:`split_detections` eight detections a word with PEXT (x86 BMI2 only)."""
    _split_words(bits, basis, other_basis, classes, classes_packed, key_bits, key_classes,
                 test_bits, test_classes, counts, spread_bits, spread_pairs)
    split_detections_scalar(bits, basis, other_basis, classes, classes_packed, key_bits,
                            key_classes, test_bits, test_classes, counts,
                            bits.shape[0] - (bits.shape[0] & 7))


def split_detections(bits: np.ndarray, basis: np.ndarray, other_basis: np.ndarray,
                     classes: np.ndarray, classes_packed: bool, key_bits: np.ndarray,
                     key_classes: np.ndarray, test_bits: np.ndarray,
                     test_classes: np.ndarray, counts: np.ndarray) -> None:
    """Keep the detections whose bases agree, split into key (Z) and test (X) sets.

    ``bits`` and ``basis`` (0 Z, 1 X) are this party's, one byte per detection;
    ``other_basis`` is the peer's, packed eight to a byte (``np.packbits`` order);
    ``classes`` the intensity classes, one a byte or, with ``classes_packed``, four a
    byte (:func:`pack_two_bit` order). The four outputs need one slot per detection
    plus ``SPLIT_SLACK``; only the first ``counts[6]`` (key) or ``counts[7]`` (test)
    are meaningful, and what lies past them is not key material of this block alone:
    callers keep only the views. ``counts`` (int64, 9 zeros on entry) receives key
    detections of class 0, 1, 2; test detections of class 0, 1, 2; key and test
    totals; and 1 when some basis value is above 1 or some class above 2.

    No branch depends on the bases (they are random: a branch would be mispredicted
    half the time): each detection is written to the next free slot of both outputs
    and the slot advances only where the detection belongs.
    """
    if HAS_PEXT:
        split_detections_words(bits, basis, other_basis, classes, classes_packed, key_bits,
                               key_classes, test_bits, test_classes, counts, SPREAD_BITS,
                               SPREAD_PAIRS)
    else:
        split_detections_scalar(bits, basis, other_basis, classes, classes_packed, key_bits,
                                key_classes, test_bits, test_classes, counts)


@njit(cache=True, nogil=True)
def pack_two_bit(values: np.ndarray, out: np.ndarray) -> None:
    """Pack values in 0..3 four to a byte, the first in the two high bits; ``out`` holds
    ``ceil(len(values) / 4)`` bytes (the last one padded with zeros)."""
    n = values.shape[0]
    full = n >> 2
    for j in range(full):
        i = 4 * j
        out[j] = np.uint8(((values[i] & 3) << 6) | ((values[i + 1] & 3) << 4)
                          | ((values[i + 2] & 3) << 2) | (values[i + 3] & 3))
    if n & 3:
        last = 0
        for i in range(4 * full, n):
            last |= (values[i] & 3) << (6 - 2 * (i & 3))
        out[full] = np.uint8(last)
