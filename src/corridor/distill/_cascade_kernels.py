"""Compiled inner loops of Cascade (``corridor.distill.cascade``).

Everything here works on the whole batch of frames at once: ``bits`` is a
``(frames, width)`` uint8 array of bits packed little-endian (bit ``i`` of a frame is
bit ``i % 8`` of byte ``i // 8``: eight times less memory to pull through the caches
on every random access; ``width`` is a multiple of 8 so that ``words``, the same
memory viewed as uint64, serves whole-word parities). A pass's permutation is one row
of ``perms`` shared by every frame. A BICONF iteration's row lists its random subset
first and the complement after it, with the subset also given as a bit mask
(``masks``) and its size in ``split``. A *search* is a binary search for one error inside
the range ``[lo, hi)`` of a permuted frame; searches are described by parallel
arrays (frame, permutation row, lo, hi) so that a whole binary-search level is one
loop. The protocol (who sends what, and the accounting) lives in ``cascade.py``;
these kernels only compute parities and keep Bob's bookkeeping of which blocks
hold an odd number of errors.

Numba does not check array bounds, so ``cascade.py`` validates every index that
arrives from the channel before it reaches a kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True, inline="always")
def range_parity(row: np.ndarray, perm: np.ndarray, lo: int, hi: int) -> int:
    """Parity of the packed bits ``perm[lo:hi]`` of ``row``."""
    acc = 0
    for t in range(lo, hi):
        p = perm[t]
        acc ^= row[p >> 3] >> (p & 7)
    return acc & 1


@njit(cache=True, nogil=True)
def alice_apply_directions(directions: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                           keep: np.ndarray) -> None:
    """Narrow each search to the half Bob named (1 = right); ``keep`` marks those not finished."""
    for i in range(lo.shape[0]):
        mid = (lo[i] + hi[i]) // 2
        if directions[i]:
            lo[i] = mid
        else:
            hi[i] = mid
        keep[i] = hi[i] - lo[i] > 1


@njit(cache=True, nogil=True)
def left_half_parities(bits: np.ndarray, perms: np.ndarray, prefixes: np.ndarray,
                       slot: np.ndarray, frame: np.ndarray, row: np.ndarray, lo: np.ndarray,
                       hi: np.ndarray, out: np.ndarray) -> None:
    """Alice's parity of the left half ``[lo, (lo + hi) // 2)`` of every search.

    Rows of passes with running parities (``prefixes[slot[row]]``, see
    ``Session.prefix_slot``) take two look-ups; other rows gather from the key.
    """
    passes = slot.shape[0]
    for i in range(lo.shape[0]):
        mid = (lo[i] + hi[i]) // 2
        r = row[i]
        f = frame[i]
        k = slot[r] if r < passes else -1
        if k >= 0:
            out[i] = _prefix_bit(prefixes[k, f], mid) ^ _prefix_bit(prefixes[k, f], lo[i])
        else:
            out[i] = range_parity(bits[f], perms[r], lo[i], mid)


@njit(cache=True, nogil=True, inline="always")
def word_parity(x: np.uint64) -> int:
    """Parity of the 64 bits of ``x``."""
    x ^= x >> np.uint64(32)
    x ^= x >> np.uint64(16)
    x ^= x >> np.uint64(8)
    x ^= x >> np.uint64(4)
    x ^= x >> np.uint64(2)
    x ^= x >> np.uint64(1)
    return int(x & np.uint64(1))


@njit(cache=True, nogil=True, inline="always")
def subset_parities(words: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    """(parity of the bits in ``mask``, parity of the others) of one frame's words."""
    inside = np.uint64(0)
    outside = np.uint64(0)
    for w in range(words.shape[0]):
        inside ^= words[w] & mask[w]
        outside ^= words[w] & ~mask[w]
    return word_parity(inside), word_parity(outside)


@njit(cache=True, nogil=True)
def biconf_parities(words: np.ndarray, masks: np.ndarray, first_row: int, blocks: int,
                    req_frame: np.ndarray, req_upto: np.ndarray, sent: np.ndarray,
                    out: np.ndarray) -> int:
    """Alice's parities for BICONF iterations ``sent[f] .. upto - 1`` of each requested frame.

    Iteration ``j`` checks the subset ``masks[first_row + j]`` (and, when
    ``blocks == 2``, its complement). Returns the number of parity bits written to
    ``out`` and advances ``sent``.
    """
    count = 0
    for r in range(req_frame.shape[0]):
        f = req_frame[r]
        for j in range(sent[f], req_upto[r]):
            inside, outside = subset_parities(words[f], masks[first_row + j])
            out[count] = inside
            count += 1
            if blocks == 2:
                out[count] = outside
                count += 1
        sent[f] = req_upto[r]
    return count


@njit(cache=True, nogil=True)
def prefix_parities(bits: np.ndarray, perm: np.ndarray, out: np.ndarray) -> None:
    """Alice's running parities of one pass: bit ``t`` of ``out[f]`` is the parity of
    the first ``t`` permuted bits, so any range's parity is two look-ups."""
    frames = bits.shape[0]
    length = perm.shape[0]
    for f in range(frames):
        row = bits[f]
        dest = out[f]
        acc = 0
        byte = 0   # bits are gathered a byte at a time: no data-dependent branch
        for t in range(length):
            p = perm[t]
            acc ^= (row[p >> 3] >> (p & 7)) & 1
            k = (t + 1) & 7
            byte |= acc << k
            if k == 7:
                dest[(t + 1) >> 3] = byte
                byte = 0
        if (length & 7) != 7:
            dest[length >> 3] = byte


@njit(cache=True, nogil=True)
def block_parities_from_masks(words: np.ndarray, masks: np.ndarray, blocks: int,
                              out: np.ndarray, column: int) -> None:
    """Parities of the ``blocks`` blocks given as bit masks, for every frame."""
    for f in range(words.shape[0]):
        for b in range(blocks):
            inside, _ = subset_parities(words[f], masks[b])
            out[f, column + b] = inside


@njit(cache=True, nogil=True, inline="always")
def _prefix_bit(prefix: np.ndarray, t: int) -> int:
    return (prefix[t >> 3] >> (t & 7)) & 1


@njit(cache=True, nogil=True)
def block_parities_from_prefix(prefix: np.ndarray, length: int, block_size: int,
                               out: np.ndarray, column: int) -> None:
    """Parities of every block of one pass, for every frame, into ``out[:, column:]``."""
    blocks = (length + block_size - 1) // block_size
    for f in range(prefix.shape[0]):
        for b in range(blocks):
            lo = b * block_size
            hi = min(length, lo + block_size)
            out[f, column + b] = _prefix_bit(prefix[f], hi) ^ _prefix_bit(prefix[f], lo)


@njit(cache=True, nogil=True, inline="always")
def bob_range_parity(f: int, r: int, lo: int, hi: int, bits: np.ndarray, perms: np.ndarray,
                     prefixes: np.ndarray, slot: np.ndarray, pos: np.ndarray,
                     flipped: np.ndarray, flips: np.ndarray) -> int:
    """Parity of Bob's current bits at positions ``[lo, hi)`` of row ``r`` in frame ``f``.

    For a pass row, the running parity of his bits as they came in, corrected by the
    bits he has flipped since (``flipped[f, :flips[f]]``), when that list is shorter
    than the range can pay for; otherwise (and for BICONF rows) by gathering the range.
    """
    count = flips[f]
    # A flip costs a random look-up into ``pos``, about three times a gathered bit.
    k = slot[r] if r < slot.shape[0] else -1
    if k >= 0 and count <= flipped.shape[1] and hi - lo > 3 * count + 16:
        acc = _prefix_bit(prefixes[k, f], hi) ^ _prefix_bit(prefixes[k, f], lo)
        where = pos[r]
        for i in range(count):
            t = where[flipped[f, i]]
            if lo <= t and t < hi:
                acc ^= 1
        return acc
    return range_parity(bits[f], perms[r], lo, hi)


@njit(cache=True, nogil=True, inline="always")
def _flip(f: int, bit: int, bits: np.ndarray, pos: np.ndarray, block_size: np.ndarray,
          column: np.ndarray, odd_blocks: np.ndarray, odd_count: np.ndarray,
          stage: np.ndarray, flips: np.ndarray, flipped: np.ndarray) -> None:
    """Bob corrects one bit; every started pass's block that holds it changes error parity."""
    bits[f, bit >> 3] ^= np.uint8(1 << (bit & 7))
    if flips[f] < flipped.shape[1]:
        flipped[f, flips[f]] = bit
    flips[f] += 1
    for q in range(stage[f]):
        c = column[q] + pos[q, bit] // block_size[q]
        odd_blocks[f, c] ^= 1
        if odd_blocks[f, c]:
            odd_count[f, q] += 1
        else:
            odd_count[f, q] -= 1


@njit(cache=True, nogil=True)
def bob_apply_level(alice_left: np.ndarray, frame: np.ndarray, row: np.ndarray, lo: np.ndarray,
                    hi: np.ndarray, directions: np.ndarray, keep: np.ndarray, bits: np.ndarray,
                    perms: np.ndarray, prefixes: np.ndarray, slot: np.ndarray, pos: np.ndarray,
                    block_size: np.ndarray, column: np.ndarray, odd_blocks: np.ndarray,
                    odd_count: np.ndarray, stage: np.ndarray, flips: np.ndarray,
                    flipped: np.ndarray, active: np.ndarray) -> None:
    """One binary-search level on Bob's side.

    Bob compares Alice's parity of each left half with his own: a difference means
    the odd number of errors is on the left. He records the direction (1 = right),
    and a search narrowed to one bit has found an error, which he corrects at once
    (searches of one frame in flight are always disjoint, so this never changes a
    parity another search still needs).
    """
    for i in range(lo.shape[0]):
        f = frame[i]
        perm = perms[row[i]]
        mid = (lo[i] + hi[i]) // 2
        if bob_range_parity(f, row[i], lo[i], mid, bits, perms, prefixes, slot, pos,
                            flipped, flips) != alice_left[i]:
            hi[i] = mid
            directions[i] = 0
        else:
            lo[i] = mid
            directions[i] = 1
        if hi[i] - lo[i] == 1:
            _flip(f, perm[lo[i]], bits, pos, block_size, column, odd_blocks, odd_count, stage,
                  flips, flipped)
            active[f] -= 1
            keep[i] = False
        else:
            keep[i] = True


@njit(cache=True, nogil=True)
def bob_plan(bits: np.ndarray, words: np.ndarray, perms: np.ndarray, masks: np.ndarray,
             split: np.ndarray, prefixes: np.ndarray, slot: np.ndarray,
             pass_masks: np.ndarray, pos: np.ndarray, block_size: np.ndarray,
             column: np.ndarray, alice_top: np.ndarray, odd_blocks: np.ndarray,
             odd_count: np.ndarray, stage: np.ndarray, flips: np.ndarray,
             flipped: np.ndarray, active: np.ndarray,
             done: np.ndarray, waiting: np.ndarray, biconf_next: np.ndarray,
             biconf_streak: np.ndarray, biconf_have: np.ndarray, biconf_alice: np.ndarray,
             passes: int, biconf_mode: int, biconf_target: int, biconf_limit: int,
             biconf_blocks: int, out_frame: np.ndarray, out_row: np.ndarray,
             out_block: np.ndarray, out_lo: np.ndarray, out_hi: np.ndarray,
             req_frame: np.ndarray, req_upto: np.ndarray) -> tuple[int, int]:
    """Decide the next work of every idle frame (no search in flight, not waiting, not done).

    Per frame, in Cascade's order: search all odd blocks of the lowest started pass
    that has any (blocks of one pass are disjoint, so they are searched together);
    else start the next pass (Alice's block parities for every pass arrived up front);
    else run the next BICONF iteration, asking Alice for more BICONF parities when
    the ones she sent are used up; else the frame is done.

    ``biconf_mode``: 0 none, 1 a fixed number of iterations, 2 until ``biconf_target``
    error-free iterations in a row (at most ``biconf_limit`` in all). Returns the
    number of new searches and of BICONF parity requests written to the outputs.
    """
    frames = bits.shape[0]
    length = perms.shape[1]
    n_new = 0
    n_req = 0
    for f in range(frames):
        if done[f] or waiting[f] or active[f] > 0:
            continue
        while True:
            q = -1
            for p in range(stage[f]):
                if odd_count[f, p] > 0:
                    q = p
                    break
            if q >= 0:
                k = block_size[q]
                emitted = 0
                for b in range(column[q + 1] - column[q]):
                    if odd_blocks[f, column[q] + b]:
                        lo = b * k
                        hi = min(length, lo + k)
                        if hi - lo == 1:
                            _flip(f, perms[q, lo], bits, pos, block_size, column, odd_blocks,
                                  odd_count, stage, flips, flipped)
                        else:
                            out_frame[n_new] = f
                            out_row[n_new] = q
                            out_block[n_new] = b
                            out_lo[n_new] = lo
                            out_hi[n_new] = hi
                            n_new += 1
                            emitted += 1
                if emitted > 0:
                    active[f] = emitted
                    break
                continue
            if stage[f] < passes:
                p = stage[f]
                k = block_size[p]
                first = column[p]
                nblocks = column[p + 1] - first
                if slot[p] < 0:
                    # A pass of a few long blocks: one masked word-parity per block.
                    for b in range(nblocks):
                        inside, _ = subset_parities(words[f], pass_masks[p, b])
                        odd_blocks[f, first + b] = inside ^ alice_top[f, first + b]
                elif flips[f] <= flipped.shape[1]:
                    # Block parities of the bits as they came in, then the flips since.
                    pre = prefixes[slot[p], f]
                    for b in range(nblocks):
                        lo = b * k
                        hi = min(length, lo + k)
                        odd_blocks[f, first + b] = (_prefix_bit(pre, hi) ^ _prefix_bit(pre, lo)
                                                    ^ alice_top[f, first + b])
                    for i in range(flips[f]):
                        odd_blocks[f, first + pos[p, flipped[f, i]] // k] ^= 1
                else:
                    for b in range(nblocks):
                        lo = b * k
                        hi = min(length, lo + k)
                        odd_blocks[f, first + b] = (range_parity(bits[f], perms[p], lo, hi)
                                                    ^ alice_top[f, first + b])
                count = 0
                for b in range(nblocks):
                    count += odd_blocks[f, first + b]
                odd_count[f, p] = count
                stage[f] = p + 1
                continue
            if biconf_mode == 0:
                done[f] = True
                break
            j = biconf_next[f]
            if biconf_mode == 1:
                finished = j >= biconf_target
            else:
                finished = biconf_streak[f] >= biconf_target or j >= biconf_limit
            if finished:
                done[f] = True
                break
            if j >= biconf_have[f]:
                # Exactly the iterations this frame will run if none of them finds an
                # error, so no parity Alice sends ahead of time goes unused.
                if biconf_mode == 1:
                    upto = biconf_target
                else:
                    upto = min(biconf_limit, j + biconf_target - biconf_streak[f])
                req_frame[n_req] = f
                req_upto[n_req] = upto
                n_req += 1
                waiting[f] = True
                break
            r = passes + j
            perm = perms[r]
            half = split[r]
            inside, outside = subset_parities(words[f], masks[r])
            odd0 = inside ^ biconf_alice[f, j, 0]
            odd1 = 0
            if biconf_blocks == 2:
                odd1 = outside ^ biconf_alice[f, j, 1]
            biconf_next[f] = j + 1
            if odd0 == 0 and odd1 == 0:
                biconf_streak[f] += 1
                continue
            biconf_streak[f] = 0
            emitted = 0
            for b in range(2):
                if (odd0 if b == 0 else odd1) == 0:
                    continue
                lo = 0 if b == 0 else half
                hi = half if b == 0 else length
                if hi - lo == 1:
                    _flip(f, perm[lo], bits, pos, block_size, column, odd_blocks, odd_count,
                          stage, flips, flipped)
                else:
                    out_frame[n_new] = f
                    out_row[n_new] = r
                    out_block[n_new] = b
                    out_lo[n_new] = lo
                    out_hi[n_new] = hi
                    n_new += 1
                    emitted += 1
            if emitted > 0:
                active[f] = emitted
                break
    return n_new, n_req


@njit(cache=True, nogil=True)
def store_biconf(req_frame: np.ndarray, req_upto: np.ndarray, have: np.ndarray,
                 store: np.ndarray, parities: np.ndarray, start: int, blocks: int) -> int:
    """Bob files Alice's BICONF parities (as written by :func:`biconf_parities`).

    Returns the index in ``parities`` after the last one consumed.
    """
    i = start
    for r in range(req_frame.shape[0]):
        f = req_frame[r]
        for j in range(have[f], req_upto[r]):
            for b in range(blocks):
                store[f, j, b] = parities[i]
                i += 1
        have[f] = req_upto[r]
    return i
