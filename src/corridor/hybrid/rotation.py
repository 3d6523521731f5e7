"""Key rotation of a hybrid session: a new generation after N bytes or T seconds.

:class:`RotatingInitiator` drives a session: :meth:`~RotatingInitiator.start` runs
generation 0, and :meth:`~RotatingInitiator.use` hands out the current key for a number
of bytes, running a re-key handshake first when the key has protected ``after_bytes``
bytes or is ``after_s`` seconds old. Every re-key is a full handshake on the same
transport and session ID with the next generation number: a fresh QKD key when the
policy uses one, fresh KEM keys, and a fresh policy decision (recorded like the first).
The old key is wiped once the new one is confirmed; when a re-key fails (refused by the
policy, confirmation failed) the old key is wiped as well, because it reached its limit:
the session fails closed and says why.

:class:`KeyHolder` keeps the current key on the responder side (its
:meth:`~corridor.hybrid.session.Responder.serve` answers the re-keys) and wipes each key
it replaces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from corridor.errors import ParameterError
from corridor.hybrid.errors import HybridSessionError
from corridor.hybrid.messages import SESSION_ID_BYTES
from corridor.hybrid.session import Initiator, SessionKey, SessionRecord
from corridor.hybrid.transport import ByteTransport


@dataclass(frozen=True)
class RekeyLimits:
    """When a key must be replaced: after ``after_bytes`` protected bytes or ``after_s``
    seconds, whichever comes first (None: no limit of that kind)."""

    after_bytes: int | None = 1 << 30
    after_s: float | None = 3600.0

    def __post_init__(self) -> None:
        if self.after_bytes is not None and (isinstance(self.after_bytes, bool)
                                             or not isinstance(self.after_bytes, int)
                                             or self.after_bytes < 1):
            raise ParameterError("rekey_after_bytes", self.after_bytes,
                                 "an integer >= 1 (or none)")
        if self.after_s is not None and (isinstance(self.after_s, bool)
                                         or not isinstance(self.after_s, int | float)
                                         or not self.after_s > 0):
            raise ParameterError("rekey_after_s", self.after_s, "a number of seconds > 0 "
                                 "(or none)")


class KeyHolder:
    """The current key of one side; replacing it wipes the previous one."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: SessionKey | None = None
        self.generations = 0

    @property
    def current(self) -> SessionKey | None:
        with self._lock:
            return self._key

    def replace(self, key: SessionKey | None) -> None:
        with self._lock:
            old, self._key = self._key, key
            if key is not None:
                self.generations += 1
        if old is not None and old is not key:
            old.wipe()

    def __repr__(self) -> str:
        return f"KeyHolder(current={self._key!r})"


class RotatingInitiator:
    """The initiator's session with rotation (module docstring).

    Args:
        initiator: the handshake side.
        transport: the byte transport to the responder (kept for every generation).
        limits: when to re-key.
        clock: monotonic seconds (tests pass a fake one).
        on_record: called with each generation's :class:`SessionRecord` once confirmed.
    """

    def __init__(self, initiator: Initiator, transport: ByteTransport, limits: RekeyLimits, *,
                 clock: Callable[[], float] = time.monotonic,
                 on_record: Callable[[SessionRecord], None] | None = None) -> None:
        self.initiator = initiator
        self.transport = transport
        self.limits = limits
        self._clock = clock
        self._on_record = on_record
        self.session_id = initiator.rng.bytes(SESSION_ID_BYTES)
        self.holder = KeyHolder()
        self.generation = -1
        self.bytes_used = 0
        self._since = 0.0
        self.rotations = 0
        self.last_error: HybridSessionError | None = None

    def __repr__(self) -> str:
        return (f"RotatingInitiator(session_id={self.session_id.hex()!r}, "
                f"generation={self.generation}, rotations={self.rotations})")

    def _next(self) -> SessionKey:
        generation = self.generation + 1
        try:
            key = self.initiator.handshake(self.transport, generation=generation,
                                           session_id=self.session_id)
        except HybridSessionError as exc:
            # The old key reached its limit (or there is none): fail closed.
            self.holder.replace(None)
            self.last_error = exc
            raise
        self.holder.replace(key)
        self.generation = generation
        self.bytes_used = 0
        self._since = self._clock()
        self.last_error = None
        if self._on_record is not None:
            self._on_record(key.record)
        return key

    def start(self) -> SessionKey:
        """Establish generation 0."""
        return self._next()

    @property
    def due(self) -> bool:
        """Whether the current key has reached a limit (or there is none)."""
        if self.holder.current is None:
            return True
        limits = self.limits
        return ((limits.after_bytes is not None and self.bytes_used >= limits.after_bytes)
                or (limits.after_s is not None
                    and self._clock() - self._since >= limits.after_s))

    def rekey(self) -> SessionKey:
        """Run the next generation's handshake now."""
        key = self._next()
        self.rotations += 1
        return key

    def use(self, nbytes: int) -> SessionKey:
        """The key to protect ``nbytes`` more bytes with, re-keying first when due (a
        message is never split across generations)."""
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ParameterError("nbytes", nbytes, "an integer >= 0")
        key = self.holder.current
        if key is None or self.due or (self.limits.after_bytes is not None
                                       and self.bytes_used + nbytes > self.limits.after_bytes
                                       and self.bytes_used > 0):
            key = self.rekey() if self.generation >= 0 else self.start()
        self.bytes_used += nbytes
        return key

    def close(self) -> None:
        """Wipe the current key and close the transport."""
        self.holder.replace(None)
        self.transport.close()


__all__ = ["KeyHolder", "RekeyLimits", "RotatingInitiator"]
