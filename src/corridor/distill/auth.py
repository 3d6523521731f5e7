"""Wegman-Carter authentication of the classical channel, keyed from a pre-shared pool.

This module owns two things: :class:`AuthenticationKeyPool`, the pre-shared secret
bytes that Alice and Bob each hold an identical copy of (replenished from the link's
own output), and :class:`AuthenticatedChannel`, which wraps any raw
:class:`~corridor.distill.channel.ChannelEndpoint` so that every message carries a tag
and every received message is checked before anyone reads it.

The construction (information-theoretic, no block cipher)
--------------------------------------------------------
Poly1305 (Bernstein, "The Poly1305-AES message-authentication code", FSE 2005) is
``tag = (h_r(m) + s) mod 2^128`` where ``h_r`` evaluates the message, cut into 16-byte
chunks, as a polynomial at the point ``r`` modulo the prime ``2^130 - 5``. Bernstein's
Theorem 3.3: for any two distinct messages of at most ``L`` bytes and any
``Delta``, ``Pr_r[h_r(m) - h_r(m') = Delta mod 2^128] <= 8 ceil(L/16) / 2^106`` (``r``
uniform among the ``2^106`` clamped values). So ``h_r`` is epsilon-almost-Delta-universal,
and adding a fresh uniform 128-bit one-time pad ``s`` per message gives the Wegman-Carter
MAC (Wegman and Carter, JCSS 22, 1981): each tag the adversary sees is uniform and
independent of ``r``, so ``r`` may stay the same for a whole session, and any forged or
altered message is accepted with probability at most ``8 ceil(L/16) / 2^106``. Here
``r`` (16 bytes, clamped by Poly1305 itself to 106 effective bits) is taken once per
session and every message takes its own 16-byte ``s``; AES (Poly1305-AES) is never used.
pyca/cryptography's ``Poly1305`` computes the tag from the 32-byte key ``r || s``.

What each message authenticates
-------------------------------
The tag covers a header (frame version, direction, the pool offset at which the
session's key began, a per-direction sequence number), the message type and the
payload; the pad is the one reserved for that (direction, sequence number). A
replayed, reordered, dropped, reflected (sent back to its author), truncated or
altered message therefore fails, and the channel then refuses all further traffic
(fail closed).

Which pad belongs to which message
----------------------------------
Alice and Bob must draw the same pool bytes for the same purpose even when their
messages cross in flight. Pads are therefore taken in epochs: epoch ``e`` takes
``2 * pads_per_epoch * 16`` bytes, the first half for alice->bob sequence numbers
``e*K .. e*K+K-1`` and the second half for bob->alice ones. Epochs are taken in order
by whichever direction first needs one, so both sides take identical slices in an
identical order whatever the interleaving. Pads of an epoch not used by the end of a
session are discarded and counted as consumed.
"""

from __future__ import annotations

import hmac
import math
import struct
import threading
from typing import Any

from cryptography.hazmat.primitives.poly1305 import Poly1305

from corridor.distill.channel import (
    DEFAULT_TIMEOUT_S,
    ChannelEndpoint,
    ChannelStats,
    Payload,
    join_buffers,
)
from corridor.errors import AuthenticationFailure, ParameterError, ProtocolAbort

HASH_KEY_BYTES = 16
PAD_BYTES = 16
TAG_BYTES = 16
FRAME_VERSION = 1
#: The type every authenticated frame has on the raw endpoint; the real type is inside.
WIRE_KIND = "wc"
ROLES = ("alice", "bob")
#: Sending direction of each role: 0 is alice->bob, 1 is bob->alice.
_DIRECTION = {"alice": 0, "bob": 1}
_DIRECTION_NAMES = ("alice->bob", "bob->alice")
# version, direction, session key offset in the pool (bytes), sequence number, kind length
_HEADER = struct.Struct(">BBQQB")
#: Bernstein 2005, Theorem 3.3: the clamped Poly1305 key has 106 free bits.
_POLY1305_KEY_BITS = 106


def poly1305_forgery_bound(authenticated_bytes: int) -> float:
    """Upper bound on the success probability of one forgery of an L-byte message."""
    return 8 * math.ceil(authenticated_bytes / 16) / 2.0**_POLY1305_KEY_BITS


class AuthenticationKeyPool:
    """Pre-shared secret bytes for authentication; Alice and Bob hold identical copies.

    Bytes are taken strictly in order, so two pools that start equal and see the same
    ``take``/``replenish`` calls stay equal. Taken bytes are overwritten in the pool.
    The contents are never shown (not by ``repr``, not in errors).
    """

    def __init__(self, secret: bytes = b"") -> None:
        if not isinstance(secret, (bytes, bytearray, memoryview)):
            raise ParameterError("secret", type(secret).__name__, "must be bytes")
        self._buffer = bytearray(secret)
        self._start = 0
        self._consumed_bytes = 0
        self._lock = threading.Lock()

    @property
    def available_bits(self) -> int:
        """Secret bits left to take."""
        return 8 * (len(self._buffer) - self._start)

    @property
    def consumed_bits(self) -> int:
        """Secret bits taken since the pool was created (also its read position)."""
        return 8 * self._consumed_bytes

    @property
    def position_bytes(self) -> int:
        """Bytes taken since creation: both peers' pools must be at the same position."""
        return self._consumed_bytes

    def take(self, n_bytes: int) -> bytes:
        """The next ``n_bytes`` secret bytes; fails closed when too few are left."""
        if not isinstance(n_bytes, int) or isinstance(n_bytes, bool) or n_bytes < 1:
            raise ParameterError("n_bytes", n_bytes, "must be a positive integer")
        with self._lock:
            left = len(self._buffer) - self._start
            if n_bytes > left:
                raise ProtocolAbort("authentication_key_exhausted",
                                    f"needed {8 * n_bytes} pre-shared bits, {8 * left} left "
                                    f"after {8 * self._consumed_bytes} used; only blocks "
                                    "that yield key refill the pool: start from a longer "
                                    "pre-shared key, or blocks large enough to yield key")
            stop = self._start + n_bytes
            taken = bytes(self._buffer[self._start:stop])
            self._buffer[self._start:stop] = bytes(n_bytes)
            self._start = stop
            self._consumed_bytes += n_bytes
            if self._start > 4096 and self._start * 2 > len(self._buffer):
                del self._buffer[:self._start]
                self._start = 0
            return taken

    def replenish(self, key_bytes: bytes) -> None:
        """Append fresh secret bytes (the same bytes, in the same order, on both sides)."""
        if not isinstance(key_bytes, (bytes, bytearray, memoryview)):
            raise ParameterError("key_bytes", type(key_bytes).__name__, "must be bytes")
        with self._lock:
            self._buffer.extend(key_bytes)

    def skip_to(self, position_bytes: int) -> None:
        """Discard bytes up to ``position_bytes`` (to re-align with a peer after an abort).

        Positions are public; the side that is behind skips to the other's position.
        """
        if not isinstance(position_bytes, int) or position_bytes < self._consumed_bytes:
            raise ParameterError("position_bytes", position_bytes,
                                 f"must be an integer >= the current position "
                                 f"{self._consumed_bytes}")
        if position_bytes > self._consumed_bytes:
            self.take(position_bytes - self._consumed_bytes)

    def __repr__(self) -> str:
        return (f"AuthenticationKeyPool(available_bits={self.available_bits}, "
                f"consumed_bits={self.consumed_bits})")

    __str__ = __repr__


class AuthenticatedChannel:
    """A ChannelEndpoint whose every message is Wegman-Carter authenticated.

    Args:
        raw: the transport (in-process queue, TCP, ...).
        pool: this party's copy of the pre-shared pool; the session key ``r`` is taken
            from it here, at construction, so both parties must construct their
            channels at the same pool position.
        role: "alice" or "bob".
        pads_per_epoch: pads taken at a time per direction (see the module docstring).
    """

    def __init__(self, raw: ChannelEndpoint, pool: AuthenticationKeyPool, role: str,
                 pads_per_epoch: int = 1) -> None:
        if role not in ROLES:
            raise ParameterError("role", role, "must be 'alice' or 'bob'")
        if not isinstance(pads_per_epoch, int) or not 1 <= pads_per_epoch <= 4096:
            raise ParameterError("pads_per_epoch", pads_per_epoch,
                                 "must be an integer from 1 to 4096")
        self._raw = raw
        self._pool = pool
        self.role = role
        self._send_direction = _DIRECTION[role]
        self._recv_direction = 1 - self._send_direction
        self._pads_per_epoch = pads_per_epoch
        self._session_offset = pool.position_bytes
        self._hash_key = pool.take(HASH_KEY_BYTES)
        self._consumed_bytes = HASH_KEY_BYTES
        self._pads: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        self._epochs_taken = 0
        self._next_seq = [0, 0]
        self._failure: str | None = None
        self._forgery_bound = 0.0
        self.stats = ChannelStats()

    @property
    def auth_bits_consumed(self) -> int:
        """Pre-shared bits this channel has taken from the pool (hash key and pads)."""
        return 8 * self._consumed_bytes

    @property
    def forgery_probability_bound(self) -> float:
        """Sum over accepted messages of the per-message forgery bound."""
        return self._forgery_bound

    def _pad(self, direction: int, seq: int) -> bytes:
        epoch = seq // self._pads_per_epoch
        while self._epochs_taken <= epoch:
            block = self._pool.take(2 * self._pads_per_epoch * PAD_BYTES)
            self._consumed_bytes += len(block)
            first = self._epochs_taken * self._pads_per_epoch
            for d in (0, 1):
                for k in range(self._pads_per_epoch):
                    at = (d * self._pads_per_epoch + k) * PAD_BYTES
                    self._pads[d][first + k] = block[at:at + PAD_BYTES]
            self._epochs_taken += 1
        return self._pads[direction].pop(seq)

    def _check_usable(self) -> None:
        if self._failure == "closed":
            raise ProtocolAbort("channel_closed", f"{self.role}: the channel was closed")
        if self._failure is not None:
            raise AuthenticationFailure(f"channel closed after an earlier failure "
                                        f"({self._failure})")

    def _fail(self, exc: ProtocolAbort) -> ProtocolAbort:
        self._failure = exc.reason
        return exc

    def send(self, kind: str, payload: Payload) -> None:
        """Tag and send one message of type ``kind``."""
        self._check_usable()
        kind_bytes = _encode_kind(kind)
        seq = self._next_seq[self._send_direction]
        prefix = _HEADER.pack(FRAME_VERSION, self._send_direction, self._session_offset, seq,
                              len(kind_bytes)) + kind_bytes
        try:
            pad = self._pad(self._send_direction, seq)
        except ProtocolAbort as exc:
            raise self._fail(exc) from None
        mac = Poly1305(self._hash_key + pad)
        mac.update(prefix)
        mac.update(payload)
        frame = join_buffers((prefix, payload, mac.finalize()))
        self._next_seq[self._send_direction] = seq + 1
        try:
            self._raw.send(WIRE_KIND, frame)
        except ProtocolAbort as exc:
            raise self._fail(exc) from None
        self.stats.on_send(len(frame) + len(WIRE_KIND))

    def recv(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bytes:
        """Receive, authenticate and return the next message, which must be of type ``kind``."""
        return bytes(self.recv_view(kind, timeout_s))

    def recv_view(self, kind: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> memoryview:
        """Like :meth:`recv`, as a read-only view of the authenticated payload (no copy)."""
        self._check_usable()
        try:
            frame = self._raw.recv(WIRE_KIND, timeout_s)
        except ProtocolAbort as exc:
            raise self._fail(exc) from None
        self.stats.on_receive(len(frame) + len(WIRE_KIND))
        try:
            got_kind, payload = self._open(memoryview(frame).toreadonly())
        except ProtocolAbort as exc:
            raise self._fail(exc) from None
        if got_kind != kind:
            raise self._fail(ProtocolAbort("unexpected_message",
                                           f"{self.role}: expected {kind!r}, got an authentic "
                                           f"{got_kind!r}"))
        return payload

    def _open(self, frame: memoryview) -> tuple[str, memoryview]:
        expected_seq = self._next_seq[self._recv_direction]
        if len(frame) < _HEADER.size + TAG_BYTES:
            raise AuthenticationFailure(f"{self.role}: truncated frame of {len(frame)} bytes "
                                        f"(at least {_HEADER.size + TAG_BYTES} needed)")
        version, direction, session_offset, seq, kind_length = _HEADER.unpack_from(frame)
        if version != FRAME_VERSION:
            raise AuthenticationFailure(f"{self.role}: unknown frame version {version}")
        if direction != self._recv_direction:
            name = _DIRECTION_NAMES[direction] if direction in (0, 1) else str(direction)
            raise AuthenticationFailure(f"{self.role}: reflected or misrouted message "
                                        f"(direction {name}, expected "
                                        f"{_DIRECTION_NAMES[self._recv_direction]})")
        if session_offset != self._session_offset:
            raise AuthenticationFailure(f"{self.role}: key pools out of step (peer's session "
                                        f"key at pool byte {session_offset}, ours at "
                                        f"{self._session_offset})")
        if seq < expected_seq:
            raise AuthenticationFailure(f"{self.role}: replayed message (sequence number {seq}, "
                                        f"expected {expected_seq})")
        if seq > expected_seq:
            raise AuthenticationFailure(f"{self.role}: message out of order or missing "
                                        f"(sequence number {seq}, expected {expected_seq})")
        data_end = len(frame) - TAG_BYTES
        if _HEADER.size + kind_length > data_end:
            raise AuthenticationFailure(f"{self.role}: truncated frame (type length "
                                        f"{kind_length} exceeds the frame)")
        data = frame[:data_end]
        expected_tag = Poly1305.generate_tag(self._hash_key + self._pad(direction, seq), data)
        if not hmac.compare_digest(expected_tag, frame[data_end:]):
            raise AuthenticationFailure(f"{self.role}: tag mismatch on message {seq} "
                                        f"({_DIRECTION_NAMES[direction]}): altered or forged")
        self._next_seq[self._recv_direction] = seq + 1
        self._forgery_bound += poly1305_forgery_bound(len(data))
        kind_bytes = bytes(frame[_HEADER.size:_HEADER.size + kind_length])
        return kind_bytes.decode("ascii", errors="replace"), data[_HEADER.size + kind_length:]

    def close(self) -> None:
        """Close the transport and drop the session key and unused pads."""
        self._hash_key = b""
        self._pads = ({}, {})
        self._failure = self._failure or "closed"
        self._raw.close()

    def __repr__(self) -> str:
        return (f"AuthenticatedChannel(role={self.role!r}, raw={self._raw!r}, "
                f"auth_bits_consumed={self.auth_bits_consumed})")

    __str__ = __repr__


def _encode_kind(kind: Any) -> bytes:
    if not isinstance(kind, str) or not kind:
        raise ParameterError("kind", kind, "must be a non-empty ASCII string")
    try:
        encoded = kind.encode("ascii")
    except UnicodeEncodeError:
        raise ParameterError("kind", kind, "must be ASCII") from None
    if len(encoded) > 255:
        raise ParameterError("kind", f"{len(encoded)} characters", "must be at most 255")
    return encoded
