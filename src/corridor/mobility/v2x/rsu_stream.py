"""A traffic centre streaming protected messages to one roadside unit, keyed by the corridor.

This module owns the running stream that ``corridor up`` shows: the centre's SAE gets a
QKD key from its KME (ETSI 014 ``enc_keys``), the RSU's SAE gets the same key by ID from
its own (``dec_keys``), both install it as the next PSK generation
(:class:`~corridor.mobility.v2x.psk.PskKeyring`, rotation by
:class:`~corridor.mobility.v2x.psk.RotationPolicy`), and the centre sends its messages
(:data:`~corridor.mobility.v2x.psk.CENTRE_MESSAGES`, in turn) as 1609.2
``EncryptedData`` with a ``pskRecipInfo`` recipient, which the RSU decrypts. The radio
between them is a function call: what is measured is the key path and the envelope.

Fail closed: with no generation installed nothing is sent (``waiting_for_key``); when a
rotation cannot get a QKD key (pool empty, KME unreachable) the stream keeps the current
generation only until the RSU would retire it, and counts the failure. No key, PSK or
payload is ever logged or shown.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

from corridor.errors import CorridorError
from corridor.log_throttle import WarningThrottle
from corridor.mobility.v2x.psk import CENTRE_MESSAGES, PskKeyring, RotationPolicy
from corridor.mobility.v2x.verifier import Refused

_log = logging.getLogger(__name__)


class RsuStream:
    """The stream between ``centre`` and ``rsu`` (SAE clients of a running corridor).

    Args:
        centre, rsu: :class:`corridor.kms.client.SaeClient`-like objects with
            ``get_key(slave_sae_id)`` and ``get_key_with_id(master_sae_id, key_ids)``.
        centre_sae_id, rsu_sae_id: their SAE IDs.
        policy: PSK rotation (a new QKD key every ``interval_s``).
        messages_per_s: the centre's sending rate.
    """

    def __init__(self, centre: Any, rsu: Any, centre_sae_id: str, rsu_sae_id: str, *,
                 policy: RotationPolicy | None = None, messages_per_s: float = 5.0) -> None:
        self.centre, self.rsu = centre, rsu
        self.centre_sae_id, self.rsu_sae_id = centre_sae_id, rsu_sae_id
        self.policy = policy or RotationPolicy(interval_s=30.0, grace_s=5.0)
        self.interval_s = 1.0 / messages_per_s
        self.centre_ring = PskKeyring(self.policy)
        self.rsu_ring = PskKeyring(self.policy)
        self.sent = 0
        self.rotations = 0
        self.key_failures = 0
        self._failed_tries = 0  # since the last key
        self._warnings = WarningThrottle(_log)  # one "no QKD key" line a minute per cause
        self.waiting = 0
        self.last_error: str | None = None
        self.key_id: str | None = None
        self._generation = 0
        self._kinds = itertools.cycle(sorted(CENTRE_MESSAGES))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"RsuStream({self.centre_sae_id!r} -> {self.rsu_sae_id!r})"

    def _rotate(self, now: float) -> None:
        """Fetch a QKD key at both ends and install it as the next generation."""
        try:
            [key] = self.centre.get_key(self.rsu_sae_id)
            [theirs] = self.rsu.get_key_with_id(self.centre_sae_id, [key.key_id])
        except (CorridorError, OSError, ValueError) as exc:
            self.key_failures += 1
            self._failed_tries += 1
            self.last_error = f"qkd key: {type(exc).__name__}"
            self._warnings.warning(type(exc).__name__, "RSU stream %s -> %s: no QKD key for "
                                   "the next PSK generation (%s)", self.centre_sae_id,
                                   self.rsu_sae_id, type(exc).__name__)
            return
        if self._failed_tries:
            _log.info("RSU stream %s -> %s: QKD key for the next PSK generation after %d "
                      "failed tries", self.centre_sae_id, self.rsu_sae_id, self._failed_tries)
            self._failed_tries = 0
        self._generation += 1
        self.centre_ring.install(key.key, key_id=key.key_id, generation=self._generation,
                                 now_unix_s=now)
        self.rsu_ring.install(theirs.key, key_id=theirs.key_id, generation=self._generation,
                              now_unix_s=now)
        self.key_id = key.key_id
        del key, theirs
        self.rotations += 1
        self.last_error = None

    def step(self, now: float | None = None) -> None:
        """One tick: rotate when due, then send one message and receive it."""
        now = time.time() if now is None else now
        if self.centre_ring.due(now):
            self._rotate(now)
        if self.centre_ring.current_generation is None:
            self.waiting += 1
            return
        kind = next(self._kinds)
        _psid, size = CENTRE_MESSAGES[kind]
        payload = os.urandom(size)
        wire = self.centre_ring.encrypt(payload)
        self.sent += 1
        try:
            if self.rsu_ring.decrypt(wire, now_unix_s=now) != payload:
                self.rsu_ring.counts["payload_mismatch"] = \
                    self.rsu_ring.counts.get("payload_mismatch", 0) + 1
        except Refused:
            pass  # counted by the keyring under its reason

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.step()
            except Exception as exc:  # a bug must not end the stream silently
                self.last_error = type(exc).__name__
                _log.error("RSU stream %s -> %s failed: %s", self.centre_sae_id,
                           self.rsu_sae_id, type(exc).__name__)

    def start(self) -> None:
        """Run the stream in a background thread."""
        self._thread = threading.Thread(target=self._run, name="rsu-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the stream (joined)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self) -> dict[str, Any]:
        """Public figures: generation, key_ID, messages sent, the RSU's outcomes."""
        return {"centre_sae_id": self.centre_sae_id, "rsu_sae_id": self.rsu_sae_id,
                "generation": self.centre_ring.current_generation, "key_id": self.key_id,
                "rotations": self.rotations, "sent": self.sent, "waiting_for_key": self.waiting,
                "key_failures": self.key_failures, "received": dict(self.rsu_ring.counts),
                "last_error": self.last_error}


__all__ = ["RsuStream"]
