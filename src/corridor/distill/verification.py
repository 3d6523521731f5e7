"""Stage 4 of distillation: error verification (CORRECTED -> VERIFIED).

This module owns the check that Alice's and Bob's reconciled keys are identical
except with probability eps_cor, and the accounting of what that check discloses.

Protocol: after reconciliation Alice draws a fresh one-time key of 32 random bytes
and sends it with one Poly1305 tag per *segment* of her key (message ``verify.tag``);
Bob computes the tags of his segments under the same one-time key, compares each in
constant time (``hmac.compare_digest``) and announces which segments matched
(``verify.verdict``). Both drop the segments that differ; when none is left both
discard the block (reason ``verification_failed``). Segments are ``segment_bits``
long (the last one shorter); with one segment this is the usual whole-key check.

Why segments: Cascade leaves a residual error in a small fraction of its frames, and
a block of 10^7 sifted bits holds about 10^3 frames. Dropping only the segment that
holds the error keeps the rest of the block. The cost is accounted: each extra tag
is 128 more disclosed bits, and the pipeline shortens the privacy-amplification
output by the number of dropped bits (chain rule of the smooth min-entropy:
removing m bits lowers it by at most m).

Why this bounds eps_cor: the hash key is drawn after both keys are fixed, so for any
two different messages of at most L bytes, Poly1305 (an epsilon-almost-Delta-universal
polynomial hash modulo 2^130 - 5, Bernstein 2005) gives equal tags with probability
at most 8 * ceil(L / 16) / 2^106 over the choice of its r part (the s part cancels
out). Segment i's message is (i, its bit length, its bits packed into bytes), so the
union bound over segments gives at most sum_i 8 ceil(L_i / 16) / 2^106 that any kept
segment differs. :func:`collision_probability` gives that bound; the stage refuses
(``verification_bound_above_eps_cor``) a key so long that it would exceed the
configured eps_cor.

Disclosure: 128 bits per segment tag plus 1 bit for its verdict (added to lambda_EC);
the one-time key carries no information about the key. Which segments differ is a
function of the error pattern, not of the key values, but it is computed from both
parties' strings, so each verdict is counted as one more disclosed bit.
"""

from __future__ import annotations

import hmac
import math
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.poly1305 import Poly1305

from corridor.distill.block import BlockState, KeyBlock
from corridor.distill.channel import DEFAULT_TIMEOUT_S, ChannelEndpoint
from corridor.errors import ParameterError, ProtocolAbort
from corridor.randomness import RandomSource

MESSAGE_TAG = "verify.tag"
MESSAGE_VERDICT = "verify.verdict"
#: Bits disclosed per verified segment: its 128-bit tag plus the one-bit verdict
#: (matched or not), which depends on both parties' strings and is therefore
#: counted as leaked too, conservatively.
TAG_BITS = 128 + 1
HASH_KEY_BYTES = 32
#: Default segment length. Cost per block: 128 bits per tag plus the length of each
#: dropped segment; with n bits and a residual-error rate of r per bit, the sum
#: 128 n / s + r n s is least at s = sqrt(128 / r): about 3.6e4 bits for the
#: ~1e-3 residual errors per 1e4-bit Cascade frame seen with biconf.
DEFAULT_SEGMENT_BITS = 1 << 15
_TAG_BYTES = 128 // 8
_HEADER_BYTES = 16


def segment_count(key_bits: int, segment_bits: int) -> int:
    """Number of segments a key of ``key_bits`` bits is cut into (at least 1)."""
    return max(1, math.ceil(key_bits / segment_bits))


def hashed_message_bytes(key_bits: int) -> int:
    """L, the bytes one tag covers for a segment of ``key_bits`` bits."""
    return _HEADER_BYTES + (key_bits + 7) // 8


def collision_probability(key_bits: int, segment_bits: int | None = None) -> float:
    """Union bound sum_i 8 ceil(L_i / 16) / 2^106 that some differing segment goes unseen."""
    segment_bits = segment_bits or max(key_bits, 1)
    full, rest = divmod(key_bits, segment_bits)
    lengths = [segment_bits] * full + ([rest] if rest or not full else [])
    return sum(8.0 * math.ceil(hashed_message_bytes(n) / 16) for n in lengths) / 2.0**106


@dataclass(frozen=True)
class VerificationResult:
    """Output of stage 4 (public figures only).

    Attributes:
        disclosed_bits: bits counted as disclosed (128 per segment tag + 1 per verdict).
        collision_probability: the union bound over segments (<= eps_cor).
        segments: number of segments tagged.
        failed_segments: segments that differed and were dropped.
        removed_bits: key bits dropped with them.
    """

    disclosed_bits: int
    collision_probability: float
    segments: int
    failed_segments: int
    removed_bits: int


def _tags(bits: np.ndarray, hash_key: bytes, segment_bits: int) -> list[bytes]:
    # Segment i's message is (i, its bit length, its bits packed MSB first). With whole
    # bytes per segment the key is packed once and each segment is a slice of it.
    whole = np.packbits(bits) if segment_bits % 8 == 0 else None
    tags = []
    for i in range(segment_count(bits.shape[0], segment_bits)):
        start = i * segment_bits
        length = min(segment_bits, bits.shape[0] - start)
        header = i.to_bytes(8, "big") + length.to_bytes(8, "big")
        if whole is not None:
            packed = whole[start // 8:(start + length + 7) // 8]
        else:
            packed = np.packbits(bits[start:start + length])
        mac = Poly1305(hash_key)
        mac.update(header)
        mac.update(packed.tobytes())
        tags.append(mac.finalize())
    if whole is not None:
        whole[:] = 0
    return tags


def _check(block: KeyBlock, eps_cor: float, segment_bits: int) -> float:
    if isinstance(segment_bits, bool) or not isinstance(segment_bits, int) or segment_bits < 8:
        raise ParameterError("segment_bits", segment_bits, "must be a whole number >= 8")
    bound = collision_probability(block.length_bits, segment_bits)
    if bound > eps_cor:
        raise ProtocolAbort("verification_bound_above_eps_cor",
                            f"block {block.block_id}: Poly1305 collision bound {bound:.3g} "
                            f"exceeds eps_cor = {eps_cor:.3g}")
    return bound


def _keep(block: KeyBlock, matched: np.ndarray, bound: float,
          segment_bits: int) -> VerificationResult:
    segments = int(matched.shape[0])
    if not matched.any():
        raise ProtocolAbort("verification_failed",
                            f"block {block.block_id}: every one of {segments} segment tag(s) "
                            f"differs after reconciliation")
    failed = int(segments - np.count_nonzero(matched))
    if failed:
        kept_bits = np.concatenate([block.bits[i * segment_bits:(i + 1) * segment_bits]
                                    for i in np.flatnonzero(matched)])
        removed = block.length_bits - int(kept_bits.shape[0])
        block.bits[:] = 0
    else:
        kept_bits, removed = block.bits, 0
    block.advance(BlockState.VERIFIED, bits=kept_bits, verification_tag_bits=TAG_BITS * segments,
                  verification_collision_probability=bound, verification_segments=segments,
                  verification_failed_segments=failed, verification_removed_bits=removed)
    return VerificationResult(disclosed_bits=TAG_BITS * segments, collision_probability=bound,
                              segments=segments, failed_segments=failed, removed_bits=removed)


def verify_alice(channel: ChannelEndpoint, block: KeyBlock, rng: RandomSource, *,
                 eps_cor: float, segment_bits: int = DEFAULT_SEGMENT_BITS,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> VerificationResult:
    """Alice's side: send a fresh hash key and her segment tags, read Bob's verdict.

    Raises ``ProtocolAbort("verification_failed")`` when every segment differs.
    """
    bound = _check(block, eps_cor, segment_bits)
    hash_key = rng.bytes(HASH_KEY_BYTES)
    tags = _tags(block.bits, hash_key, segment_bits)
    channel.send(MESSAGE_TAG, hash_key + b"".join(tags))
    verdict = channel.recv(MESSAGE_VERDICT, timeout_s)
    if len(verdict) != (len(tags) + 7) // 8:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_VERDICT}: {len(verdict)} bytes "
                            f"for {len(tags)} segments")
    matched = np.unpackbits(np.frombuffer(verdict, dtype=np.uint8), count=len(tags)).astype(bool)
    return _keep(block, matched, bound, segment_bits)


def verify_bob(channel: ChannelEndpoint, block: KeyBlock, *, eps_cor: float,
               segment_bits: int = DEFAULT_SEGMENT_BITS,
               timeout_s: float = DEFAULT_TIMEOUT_S) -> VerificationResult:
    """Bob's side: compare Alice's tags with his own in constant time, announce the verdict.

    Raises ``ProtocolAbort("verification_failed")`` when every segment differs, after
    telling Alice.
    """
    bound = _check(block, eps_cor, segment_bits)
    segments = segment_count(block.length_bits, segment_bits)
    payload = channel.recv(MESSAGE_TAG, timeout_s)
    if len(payload) != HASH_KEY_BYTES + _TAG_BYTES * segments:
        raise ProtocolAbort("malformed_message", f"{MESSAGE_TAG}: {len(payload)} bytes, "
                            f"expected {HASH_KEY_BYTES + _TAG_BYTES * segments}")
    hash_key = payload[:HASH_KEY_BYTES]
    mine = _tags(block.bits, hash_key, segment_bits)
    matched = np.array([hmac.compare_digest(payload[HASH_KEY_BYTES + i * _TAG_BYTES:
                                                    HASH_KEY_BYTES + (i + 1) * _TAG_BYTES], tag)
                        for i, tag in enumerate(mine)], dtype=bool)
    channel.send(MESSAGE_VERDICT, np.packbits(matched).tobytes())
    return _keep(block, matched, bound, segment_bits)
