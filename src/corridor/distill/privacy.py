"""Privacy amplification: Toeplitz hashing over GF(2).

This module owns the 2-universal hash that turns a corrected, verified key of ``n``
bits into ``l`` bits about which an eavesdropper knows essentially nothing (leftover
hash lemma; PHYSICS.md, "Post-processing facts"). It never uses a cryptographic hash:
SHA or SHAKE is not a 2-universal family and carries no leftover-hash-lemma guarantee.

Which matrix a seed defines
---------------------------
A seed of ``n + l - 1`` bits defines the ``l x n`` Toeplitz matrix

    T[i, j] = seed[n - 1 + i - j]        (0 <= i < l, 0 <= j < n)

so the seed lists the matrix's diagonals from the top-right corner (``seed[0] =
T[0, n-1]``) to the bottom-left corner (``seed[n+l-2] = T[l-1, 0]``). Equivalently the
first column is ``seed[n-1 : n-1+l]`` and the first row is ``seed[n-1], seed[n-2], ...,
seed[0]``. The hash is ``y = T x`` over GF(2). Because ``T[i, j]`` depends on ``i - j``
only, ``y[i]`` is coefficient ``n - 1 + i`` of the polynomial product ``x(z) s(z)`` over
GF(2)[z] (``x(z) = sum x[j] z^j``, ``s(z) = sum seed[k] z^k``): a "middle product".

How it is computed (all methods exact, all give identical bits)
--------------------------------------------------------------
- ``"clmul"``: bits packed 64 to a word; only the ``l`` wanted coefficients of
  ``x(z) s(z)`` are computed, as square word-aligned middle products by transposed
  Karatsuba over GF(2)[z] (three half-size middle products per level, Hanrot,
  Quercia and Zimmermann 2004) down to a schoolbook base case of at most 64 words on
  the CPU's carry-less multiply instruction (x86 PCLMULQDQ, two products per
  instruction with 256-bit VPCLMULQDQ where the CPU has it; reached from numba through
  LLVM intrinsics that read the operands as vectors straight from memory).
  Integer XOR and carry-less products only: exact by construction. Used when the CPU
  has the instruction (every x86-64 CPU since 2010); cost grows as ``n^1.58``.
- ``"fft"``: the integer convolution of the 0/1 sequences by real float64 FFTs
  (``scipy.fft``, ``next_fast_len``), cyclic of length ``L >= n + l - 1`` (the wrapped
  terms never reach the ``l`` coefficients we keep), rounded and reduced mod 2. The
  coefficients are integers at most ``min(n, l)``; Percival's bound for a float64
  FFT product (Math. Comp. 72, 2003) gives an absolute error below
  ``||x||_2 ||s||_2 * 13 * u * log2(L)`` (``u = 2^-53``), under ``5e-7`` at
  ``n = 1e7`` -- six orders of magnitude under the ``1/2`` that rounding tolerates.
  Since that bound is proved for radix-2 transforms and pocketfft is mixed-radix, the
  result is also checked at run time: every coefficient must lie within
  ``FFT_ROUNDING_GUARD`` of an integer, otherwise the hash refuses to answer.
- ``toeplitz_hash_reference``: the explicit matrix, for tests on small ``n``.
"""

from __future__ import annotations

import functools
import platform
from typing import Any, Literal

import numba
import numpy as np
import scipy.fft
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from corridor.errors import ParameterError, ProtocolAbort

Method = Literal["auto", "clmul", "fft"]
METHODS: tuple[str, ...] = ("auto", "clmul", "fft")

#: Largest distance to the nearest integer that the FFT method accepts (see module doc).
FFT_ROUNDING_GUARD = 0.125

#: Largest schoolbook base case of the Karatsuba recursion, in 64-bit words.
_LEAF_MAX_WORDS = 64

#: Fixed cost of one base case (its calls, column set-up and its share of the recursion's
#: XOR passes) in units of one carry-less product, with two products per instruction
#: (VPCLMULQDQ) and with one (PCLMULQDQ only); fitted on AMD znver3 by timing every base
#: case size. It only steers the block shape, never the result.
_LEAF_OVERHEAD_PRODUCTS_WIDE = 700
_LEAF_OVERHEAD_PRODUCTS_NARROW = 200

#: The explicit-matrix reference refuses inputs larger than this (it is O(n l) memory).
REFERENCE_MAX_INPUT_BITS = 4096


def seed_length_bits(input_bits: int, output_bits: int) -> int:
    """Seed bits needed to hash ``input_bits`` bits down to ``output_bits`` bits."""
    _check_lengths(input_bits, output_bits)
    return input_bits + output_bits - 1


def _check_lengths(input_bits: int, output_bits: int) -> None:
    if not isinstance(input_bits, (int, np.integer)) or input_bits < 1:
        raise ParameterError("bits", input_bits, "the input must hold at least 1 bit")
    if not isinstance(output_bits, (int, np.integer)) or isinstance(output_bits, bool):
        raise ParameterError("output_bits", output_bits, "must be an integer")
    if not 1 <= output_bits <= input_bits:
        raise ParameterError("output_bits", int(output_bits),
                             f"must be between 1 and the input length ({input_bits} bits)")


def _check_bit_array(name: str, array: Any) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise ParameterError(name, type(array).__name__, "must be a numpy array of 0/1 bits")
    if array.ndim != 1:
        raise ParameterError(f"{name}.shape", array.shape, "must be one-dimensional")
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype != np.uint8:
        raise ParameterError(f"{name}.dtype", str(array.dtype), "must be uint8 (or bool)")
    if array.size and int(array.max()) > 1:
        # Only the offending value's size is named: the array may be key material.
        raise ParameterError(name, "array with values above 1", "every element must be 0 or 1")
    return array


def _validate(bits: Any, seed_bits: Any, output_bits: Any) -> tuple[np.ndarray, np.ndarray]:
    x = _check_bit_array("bits", bits)
    s = _check_bit_array("seed_bits", seed_bits)
    _check_lengths(int(x.shape[0]), output_bits)
    needed = x.shape[0] + int(output_bits) - 1
    if s.shape[0] != needed:
        raise ParameterError("seed_bits", f"{s.shape[0]} bits",
                             f"must hold n + l - 1 = {needed} bits for n = {x.shape[0]}, "
                             f"l = {int(output_bits)}")
    return x, s


def toeplitz_hash_reference(bits: np.ndarray, seed_bits: np.ndarray,
                            output_bits: int) -> np.ndarray:
    """The Toeplitz hash by the explicit matrix ``T[i, j] = seed[n - 1 + i - j]``.

    Slow and obviously correct; for cross-checking the fast methods on small inputs
    (at most ``REFERENCE_MAX_INPUT_BITS`` input bits).
    """
    x, s = _validate(bits, seed_bits, output_bits)
    n = x.shape[0]
    if n > REFERENCE_MAX_INPUT_BITS:
        raise ParameterError("bits", f"{n} bits",
                             f"the reference takes at most {REFERENCE_MAX_INPUT_BITS} bits",
                             "use toeplitz_hash for real inputs")
    rows = np.arange(int(output_bits))[:, None]
    cols = np.arange(n)[None, :]
    matrix = s[n - 1 + rows - cols].astype(np.int64)
    return ((matrix @ x.astype(np.int64)) % 2).astype(np.uint8)


def toeplitz_hash(bits: np.ndarray, seed_bits: np.ndarray, output_bits: int,
                  method: Method = "auto") -> np.ndarray:
    """Hash ``bits`` (n bits) to ``output_bits`` (l) bits with the Toeplitz matrix of the seed.

    Args:
        bits: the key, a 1-D uint8 (or bool) array of 0/1.
        seed_bits: n + l - 1 public random bits (uint8 or bool 0/1), agreed over the
            authenticated channel; the matrix they define is in the module docstring.
        output_bits: l, with 1 <= l <= n.
        method: "auto" (carry-less multiply when the CPU has it, else FFT), "clmul" or
            "fft". All give identical bits.

    Returns:
        The l hashed bits as a uint8 array of 0/1.
    """
    x, s = _validate(bits, seed_bits, output_bits)
    if method not in METHODS:
        raise ParameterError("method", method, f"must be one of {', '.join(METHODS)}")
    if method == "auto":
        method = "clmul" if clmul_available() else "fft"
    if method == "clmul":
        if not clmul_available():
            raise ParameterError("method", "clmul", "needs a CPU with a carry-less multiply "
                                 "instruction (x86 PCLMULQDQ)", "use method='fft'")
        return _hash_clmul(x, s, int(output_bits))
    return _hash_fft(x, s, int(output_bits))


# ---------------------------------------------------------------------------------------
# FFT method
# ---------------------------------------------------------------------------------------

def _hash_fft(x: np.ndarray, s: np.ndarray, output_bits: int) -> np.ndarray:
    n = x.shape[0]
    length = scipy.fft.next_fast_len(n + output_bits - 1, real=True)
    spectrum = scipy.fft.rfft(x.astype(np.float64), length, workers=1)
    spectrum *= scipy.fft.rfft(s.astype(np.float64), length, workers=1)
    product = scipy.fft.irfft(spectrum, length, workers=1)[n - 1:n - 1 + output_bits]
    rounded = np.rint(product)
    worst = float(np.max(np.abs(product - rounded)))
    if not worst <= FFT_ROUNDING_GUARD:
        raise ProtocolAbort("privacy_amplification_rounding",
                            f"FFT coefficient {worst:.3g} away from an integer exceeds the "
                            f"guard {FFT_ROUNDING_GUARD}; use method='clmul'")
    return (rounded.astype(np.int64) & 1).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# Carry-less multiply method
# ---------------------------------------------------------------------------------------

def _pack_words(bits: np.ndarray, words: int) -> np.ndarray:
    """Bit j of the input becomes bit j % 64 of word j // 64 (little-endian order)."""
    packed = np.zeros(words * 8, dtype=np.uint8)
    raw = np.packbits(bits, bitorder="little")
    packed[:raw.shape[0]] = raw
    return packed.view("<u8").astype(np.uint64, copy=False)


def _block_shape(input_bits: int, output_bits: int) -> tuple[int, int]:
    """Square block size m words (64 m >= l) and its base case b, with m = b * 2^k.

    Up to 64 words the block is one base case of exactly ceil(l / 64) words. Beyond, b
    is a multiple of 8 (the wide kernel's 8 products per call leave no tail) of at most
    ``_LEAF_MAX_WORDS``, and the shape with the least modelled cost wins: C blocks of x,
    each 3^k base cases of b(b + 1) products plus a fixed overhead. Base cases larger
    than the least that covers l are candidates too: a block a little longer can save a
    whole block of x (n = 3.17e6, l = 1.55e6: 2 blocks of 28 672 words instead of 3 of
    24 576).
    """
    words = (output_bits + 63) // 64
    if words <= _LEAF_MAX_WORDS:
        return words, words
    input_words = (input_bits + 63) // 64
    overhead = (_LEAF_OVERHEAD_PRODUCTS_WIDE if _host_has_vpclmul()
                else _LEAF_OVERHEAD_PRODUCTS_NARROW)
    best: tuple[int, int, int] | None = None
    halvings = 0
    while True:
        least = -(-words // (8 << halvings)) * 8
        for leaf in range(least, _LEAF_MAX_WORDS + 1, 8):
            m = leaf << halvings
            cost = (-(-input_words // m) * 3 ** halvings
                    * (leaf * (leaf + 1) + overhead))
            if best is None or cost < best[0]:
                best = (cost, m, leaf)
        if least == 8:
            break
        halvings += 1
    assert best is not None  # the loop ends on an 8-word base case, always a candidate
    return best[1], best[2]


def _hash_clmul(x: np.ndarray, s: np.ndarray, output_bits: int) -> np.ndarray:
    # Word-level layout (derivation in docs/privacy-and-authentication.md): with block
    # size m words (64 m >= l) and C = ceil(n / 64 m) blocks of x,
    #   y = XOR_c MP(x_c, v_c),  MP(u, v) = words m .. 2m-1 of u(z) v(z),
    # where v_c is the 2m-word window starting at word m (C - 1 - c) of the seed placed
    # at bit offset 64 m C - n + 1 of a zero array. Output bits beyond l and seed
    # positions outside the array only ever meet zero padding or discarded outputs.
    n = x.shape[0]
    m, leaf = _block_shape(n, output_bits)
    blocks = -(-n // (64 * m))
    offset = 64 * m * blocks - n + 1
    seed_field = np.zeros(64 * m * (blocks + 1), dtype=np.uint8)
    seed_field[offset:offset + s.shape[0]] = s
    x_words = _pack_words(x, m * blocks)
    seed_words = _pack_words(seed_field, m * (blocks + 1))
    out = np.zeros(m, dtype=np.uint64)
    _toeplitz_words(x_words, seed_words, m, blocks, leaf, out)
    return np.unpackbits(out.astype("<u8", copy=False).view(np.uint8),
                         bitorder="little")[:output_bits]


def _host_has_pclmul() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    # Numba compiles for the host CPU unless told otherwise; with an override we cannot
    # be sure the instruction is enabled, and LLVM would abort the process if it is not.
    cpu_name = getattr(numba.config, "CPU_NAME", None)
    if cpu_name not in (None, "host") or getattr(numba.config, "CPU_FEATURES", None) is not None:
        return False
    import llvmlite.binding as llvm

    return "+pclmul" in llvm.get_host_cpu_features().flatten().split(",")


@functools.cache
def clmul_available() -> bool:
    """True when the carry-less-multiply method can run here (and passed its self-test)."""
    if not _host_has_pclmul():
        return False
    try:
        lo, hi = _clmul(np.uint64(0xFFFFFFFFFFFFFFFF), np.uint64(0xFFFFFFFFFFFFFFFF))
    except Exception:  # pragma: no cover - depends on the numba/LLVM build
        return False
    # (1 + z + ... + z^63)^2 = 1 + z^2 + ... + z^126 over GF(2): 0x5555... in both words.
    return int(lo) == 0x5555555555555555 and int(hi) == 0x5555555555555555


# The kernels are compiled lazily on first call (and cached on disk), so defining them
# here costs nothing on CPUs without the instruction: clmul_available() guards calls.

@functools.cache
def _host_has_vpclmul() -> bool:
    """True when the host can carry-less multiply two 64-bit pairs per instruction (ymm)."""
    import llvmlite.binding as llvm

    features = llvm.get_host_cpu_features().flatten().split(",")
    return "+vpclmulqdq" in features and "+avx" in features


def _pclmul_codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
    """Carry-less 64 x 64 -> 128-bit product of (args[0], args[1]) as (low, high) words."""
    i64 = ir.IntType(64)
    i32 = ir.IntType(32)
    vec = ir.VectorType(i64, 2)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, ir.IntType(8)]), "llvm.x86.pclmulqdq")
    zero = ir.Constant(vec, None)
    va = builder.insert_element(zero, args[0], ir.Constant(i32, 0))
    vb = builder.insert_element(zero, args[1], ir.Constant(i32, 0))
    product = builder.call(fn, [va, vb, ir.Constant(ir.IntType(8), 0)])
    lo = builder.extract_element(product, ir.Constant(i32, 0))
    hi = builder.extract_element(product, ir.Constant(i32, 1))
    return context.make_tuple(builder, sig.return_type, [lo, hi])


def _pclmul_typing(typingctx: Any, a: Any, b: Any) -> Any:
    return types.UniTuple(types.uint64, 2)(types.uint64, types.uint64), _pclmul_codegen


def _antidiagonal_codegen(length: int, allow_256: bool) -> Any:
    """Code for XOR_{k < length} u[i + k] * v[j - k] (carry-less), as (low, high) words.

    ``u[i + k]`` and ``v[j - k]`` are read as vectors straight from memory: a vector
    of u runs forward, one of v backward, and PCLMULQDQ's immediate picks which 64-bit
    half of each 128-bit lane meets which (0x10: low of u with high of v; 0x01: the
    reverse), so no word is shuffled between general and vector registers. All products
    are XORed while still in vector registers; only the sum comes back as two words.
    With VPCLMULQDQ (256-bit; used when ``allow_256`` and the host has it) each
    instruction makes two products, otherwise one.
    """
    def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        imm = ir.IntType(8)
        lanes = 4 if allow_256 and length % 4 == 0 and _host_has_vpclmul() else 2
        vec = ir.VectorType(i64, lanes)
        name = "llvm.x86.pclmulqdq.256" if lanes == 4 else "llvm.x86.pclmulqdq"
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, imm]), name)
        u_data = context.make_array(sig.args[0])(context, builder, args[0]).data
        v_data = context.make_array(sig.args[2])(context, builder, args[2]).data
        pair = ir.VectorType(i64, 2)

        def load_pair(data: Any, index: Any) -> Any:
            return builder.load(builder.bitcast(builder.gep(data, [index]), pair.as_pointer()),
                                align=8)

        total = None
        for k in range(0, length, lanes):
            u_ptr = builder.gep(u_data, [builder.add(args[1], ir.Constant(i64, k))])
            u_vec = builder.load(builder.bitcast(u_ptr, vec.as_pointer()), align=8)
            # v[j-k-1], v[j-k] in the low lane (and v[j-k-3], v[j-k-2] in the high one).
            v_vec = load_pair(v_data, builder.sub(args[3], ir.Constant(i64, k + 1)))
            if lanes == 4:
                v_high = load_pair(v_data, builder.sub(args[3], ir.Constant(i64, k + 3)))
                v_vec = builder.shuffle_vector(v_vec, v_high,
                                               ir.Constant(ir.VectorType(i32, 4), [0, 1, 2, 3]))
            term = builder.xor(builder.call(fn, [u_vec, v_vec, ir.Constant(imm, 0x10)]),
                               builder.call(fn, [u_vec, v_vec, ir.Constant(imm, 0x01)]))
            total = term if total is None else builder.xor(total, term)
        if lanes == 4:
            total = builder.xor(
                builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(i32, 2), [0, 1])),
                builder.shuffle_vector(total, total, ir.Constant(ir.VectorType(i32, 2), [2, 3])))
        lo = builder.extract_element(total, ir.Constant(i32, 0))
        hi = builder.extract_element(total, ir.Constant(i32, 1))
        return context.make_tuple(builder, sig.return_type, [lo, hi])

    return codegen


def _antidiagonal_typing(length: int, allow_256: bool = True) -> Any:
    """Typing (and code) of an intrinsic ``(u, i, v, j) -> XOR_{k < length} u[i+k] v[j-k]``."""

    def typing(typingctx: Any, u: Any, i: Any, v: Any, j: Any) -> Any:
        # The codegen reads raw memory: only contiguous uint64 vectors are accepted.
        for array in (u, v):
            if not (isinstance(array, types.Array) and array.ndim == 1
                    and array.layout == "C" and array.dtype == types.uint64):
                return None
        signature = types.UniTuple(types.uint64, 2)(u, types.uint64, v, types.uint64)
        return signature, _antidiagonal_codegen(length, allow_256)

    return typing


_pclmul: Any = intrinsic(_pclmul_typing)
#: Products per call of the wide and of the narrow antidiagonal kernel.
_WIDE = 8
_NARROW = 2
_antidiagonal_wide: Any = intrinsic(_antidiagonal_typing(_WIDE))
_antidiagonal_narrow: Any = intrinsic(_antidiagonal_typing(_NARROW))


@numba.njit(nogil=True, cache=True)
def _clmul(a: np.uint64, b: np.uint64) -> tuple[np.uint64, np.uint64]:
    return _pclmul(a, b)


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _schoolbook_at(u: np.ndarray, uo: np.uint64, v: np.ndarray, vo: np.uint64,
                   out: np.ndarray, oo: np.uint64, m: np.uint64) -> None:
    # out[oo + k] = word m + k of U * V with U = u[uo:uo+m], V = v[vo:vo+2m], one column
    # at a time: the column's products are independent, so the CPU overlaps them. Every
    # index read is in range: column - i - 1 >= m - 1 - (m - 1) = 0 and
    # column - i <= 2m - 1. Offsets instead of slices: a slice is a new array whose
    # reference count numba updates atomically, which cost more than a small base case.
    # Unsigned indices spare numba's negative-index wraparound test in the hot loop.
    one = np.uint64(1)
    wide = np.uint64(_WIDE)
    narrow = np.uint64(_NARROW)
    high = np.uint64(0)
    column = m - one
    while column < np.uint64(2) * m:
        lo_sum = np.uint64(0)
        hi_sum = np.uint64(0)
        i = np.uint64(0)
        while i + wide <= m:
            lo, hi = _antidiagonal_wide(u, uo + i, v, vo + column - i)
            lo_sum ^= lo
            hi_sum ^= hi
            i += wide
        while i + narrow <= m:
            lo, hi = _antidiagonal_narrow(u, uo + i, v, vo + column - i)
            lo_sum ^= lo
            hi_sum ^= hi
            i += narrow
        if i < m:
            lo, hi = _pclmul(u[uo + i], v[vo + column - i])
            lo_sum ^= lo
            hi_sum ^= hi
        if column >= m:
            out[oo + column - m] = lo_sum ^ high
        high = hi_sum
        column += one


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _middle_schoolbook(u: np.ndarray, v: np.ndarray, out: np.ndarray) -> None:
    """out[k] = word m + k of u * v (len(u) = m, len(v) = 2m), by columns."""
    zero = np.uint64(0)
    _schoolbook_at(u, zero, v, zero, out, zero, np.uint64(u.shape[0]))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _middle_at(u: np.ndarray, uo: np.uint64, v: np.ndarray, vo: np.uint64,
               out: np.ndarray, oo: np.uint64, s: np.ndarray, so: np.uint64,
               m: np.uint64, base: np.uint64) -> None:
    # Transposed Karatsuba (Hanrot, Quercia, Zimmermann 2004) in characteristic 2: with
    # U = u0 + Z u1 and V_j = V[j h : j h + 2h] (Z = z^(64 h), h = m / 2),
    #   low half  = MP(u0 + u1, V1) + MP(u1, V0 + V1)
    #   high half = MP(u0 + u1, V1) + MP(u0, V2 + V1).
    # m is b * 2^k with b <= base, so every level above the base halves evenly. The
    # operands are (array, offset) pairs; scratch s[so:] holds u0 + u1 (h words), the
    # shared product (h), V_j + V1 (2h), and the levels below.
    if m <= base:
        _schoolbook_at(u, uo, v, vo, out, oo, m)
        return
    one = np.uint64(1)
    h = m >> one
    u_sum = so
    shared = so + h
    v_sum = so + np.uint64(2) * h
    rest = so + np.uint64(4) * h
    i = np.uint64(0)
    while i < h:
        s[u_sum + i] = u[uo + i] ^ u[uo + h + i]
        i += one
    _middle_at(s, u_sum, v, vo + h, s, shared, s, rest, h, base)
    i = np.uint64(0)
    while i < np.uint64(2) * h:
        s[v_sum + i] = v[vo + i] ^ v[vo + h + i]
        i += one
    _middle_at(u, uo + h, s, v_sum, out, oo, s, rest, h, base)
    i = np.uint64(0)
    while i < np.uint64(2) * h:
        s[v_sum + i] = v[vo + np.uint64(2) * h + i] ^ v[vo + h + i]
        i += one
    _middle_at(u, uo, s, v_sum, out, oo + h, s, rest, h, base)
    i = np.uint64(0)
    while i < h:
        out[oo + i] ^= s[shared + i]
        out[oo + h + i] ^= s[shared + i]
        i += one


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _middle(u: np.ndarray, v: np.ndarray, out: np.ndarray, scratch: np.ndarray,
            base: int) -> None:
    """out = words m .. 2m-1 of u * v (len(u) = m, len(v) = 2m) by transposed Karatsuba
    down to base cases of at most ``base`` words; ``scratch`` holds 4m + 64 words."""
    zero = np.uint64(0)
    _middle_at(u, zero, v, zero, out, zero, scratch, zero, np.uint64(u.shape[0]),
               np.uint64(base))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _toeplitz_words(x_words: np.ndarray, seed_words: np.ndarray, m: int, blocks: int,
                    base: int, out: np.ndarray) -> None:
    # Scratch: each level of _middle takes 2m words and hands the rest down: < 4m.
    scratch = np.empty(4 * m + 64, dtype=np.uint64)
    part = np.empty(m, dtype=np.uint64)
    out[:] = 0
    for c in range(blocks):
        window = seed_words[m * (blocks - 1 - c):m * (blocks + 1 - c)]
        _middle(x_words[m * c:m * (c + 1)], window, part, scratch, base)
        for i in range(m):
            out[i] ^= part[i]
