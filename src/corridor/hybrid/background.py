"""A rotating hybrid session between two SAEs of a running corridor, in the background.

``corridor up`` runs one per ``[[hybrid]]`` pair (docs/hybrid-session.md, "corridor up"):
the initiator and the responder each in a thread of this process, joined by a
``socket.socketpair()`` (the same :class:`~corridor.hybrid.transport.SocketTransport`
as TCP), each fetching its QKD key from its own KME over mutual TLS with its own SAE
certificate. The initiator counts a heartbeat of ``heartbeat_bytes`` as protected
traffic every ``heartbeat_interval_s`` and re-keys after the pair's
``rekey_after_bytes`` or ``rekey_after_s``. A handshake the policy refuses, or that
fails, is retried every ``retry_interval_s`` and shows in :meth:`BackgroundSession.status`
until one succeeds. A generation that its policy let through *degraded* (an input
missing: no QKD key yet, a quarantined link) is re-keyed after ``upgrade_after_s``
(30 s) rather than at the pair's limits, so that the session takes the missing input as
soon as it exists instead of running without it for up to ``rekey_after_s``; each such
attempt is a decision like any other, audited. Decisions go to each side's
:class:`~corridor.hybrid.policy.DecisionRecorder`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from corridor.hybrid.errors import HybridSessionError, PqcUnavailable, QkdKeyUnavailable
from corridor.hybrid.policy import DecisionRecorder
from corridor.hybrid.qkd import KmeQkdKeys
from corridor.hybrid.rotation import KeyHolder, RekeyLimits, RotatingInitiator
from corridor.hybrid.session import Initiator, Responder, SessionRecord
from corridor.hybrid.transport import SocketTransport
from corridor.kms.client import SaeClient
from corridor.kms.config import HybridPairConfig

_log = logging.getLogger(__name__)


class BackgroundSession:
    """One pair's rotating session (module docstring).

    Args:
        pair: the ``[[hybrid]]`` entry.
        initiator_client: the master SAE's client of its KME.
        responder_client: the slave SAE's client of its KME.
        initiator_recorder, responder_recorder: where each side's decisions go.
        link_check: returns a reason (``link_quarantined``) while the link feeding the
            pool must not be used, else None.
        heartbeat_bytes, heartbeat_interval_s: the protected traffic counted.
        retry_interval_s: wait before retrying a refused or failed handshake.
        upgrade_after_s: re-key a degraded generation after this long (module docstring).
    """

    def __init__(self, pair: HybridPairConfig, initiator_client: SaeClient,
                 responder_client: SaeClient, *, initiator_recorder: DecisionRecorder,
                 responder_recorder: DecisionRecorder,
                 link_check: Callable[[], str | None] | None = None,
                 heartbeat_bytes: int = 4096, heartbeat_interval_s: float = 1.0,
                 retry_interval_s: float = 5.0, upgrade_after_s: float = 30.0) -> None:
        self.pair = pair
        self._clients = (initiator_client, responder_client)
        self._qkd_i = KmeQkdKeys(initiator_client, link_check=link_check)
        self._qkd_r = KmeQkdKeys(responder_client, link_check=link_check)
        self.initiator = Initiator(pair.master_sae_id, pair.slave_sae_id, pair.policy,
                                   qkd=self._qkd_i, recorder=initiator_recorder)
        self.responder = Responder(pair.slave_sae_id, {pair.master_sae_id: pair.policy},
                                   qkd=self._qkd_r, recorder=responder_recorder)
        ends = socket.socketpair()
        self._transport_i = SocketTransport(ends[0], timeout_s=30.0)
        self._transport_r = SocketTransport(ends[1], timeout_s=None)
        self.session = RotatingInitiator(
            self.initiator, self._transport_i,
            RekeyLimits(pair.rekey_after_bytes, pair.rekey_after_s),
            on_record=self._on_record)
        self.responder_keys = KeyHolder()
        self.heartbeat_bytes = heartbeat_bytes
        self.heartbeat_interval_s = heartbeat_interval_s
        self.retry_interval_s = retry_interval_s
        self.upgrade_after_s = upgrade_after_s
        self._lock = threading.Lock()
        self._last: SessionRecord | None = None
        self._last_at = 0.0
        self._outcomes: Counter[str] = Counter()
        self._last_error: str | None = None
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        return (f"BackgroundSession({self.pair.master_sae_id!r} -> "
                f"{self.pair.slave_sae_id!r}, policy={self.pair.policy!r})")

    def _on_record(self, record: SessionRecord) -> None:
        with self._lock:
            self._last = record
            self._last_at = time.monotonic()
            self._outcomes[record.outcome] += 1
            self._last_error = None

    def start(self) -> None:
        """Start the responder and the initiator threads."""
        responder = threading.Thread(
            target=self.responder.serve, args=(self._transport_r, self.responder_keys.replace),
            name=f"hybrid-{self.pair.slave_sae_id}", daemon=True)
        initiator = threading.Thread(target=self._run, name=f"hybrid-{self.pair.master_sae_id}",
                                     daemon=True)
        self._threads = [responder, initiator]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._upgrade_due():
                    self.session.rekey()
                self.session.use(self.heartbeat_bytes)
                wait_s = self.heartbeat_interval_s
            except HybridSessionError as exc:
                outcome = "refused" if isinstance(exc, QkdKeyUnavailable | PqcUnavailable) \
                    else "failed"
                with self._lock:
                    self._outcomes[outcome] += 1
                    self._last_error = f"{exc.reason}: {exc}"
                wait_s = self.retry_interval_s
            except Exception as exc:  # a bug must not end the thread silently
                _log.error("hybrid session %s -> %s: %s", self.pair.master_sae_id,
                           self.pair.slave_sae_id, type(exc).__name__)
                with self._lock:
                    self._outcomes["failed"] += 1
                    self._last_error = type(exc).__name__
                wait_s = self.retry_interval_s
            self._stop.wait(wait_s)

    def _upgrade_due(self) -> bool:
        """A degraded generation (an input missing) has run for ``upgrade_after_s``."""
        with self._lock:
            last, since = self._last, self._last_at
        return (last is not None and bool(last.missing)
                and self.session.holder.current is not None
                and time.monotonic() - since >= self.upgrade_after_s)

    def status(self) -> dict[str, Any]:
        """Public state: the current generation's record, rotations, decisions so far."""
        with self._lock:
            last = self._last
            current = self.session.holder.current
            return {
                "initiator_sae_id": self.pair.master_sae_id,
                "responder_sae_id": self.pair.slave_sae_id,
                "policy": self.pair.policy,
                "state": ("starting" if last is None and self._last_error is None
                          else "down" if current is None
                          else last.outcome if last is not None else "down"),
                "generation": last.generation if last else None,
                "rotations": self.session.rotations,
                "inputs": list(last.inputs) if last else [],
                "missing": list(last.missing) if last else [],
                "key_id": last.key_id if last else None,
                "session_id": self.session.session_id.hex(),
                "bytes_since_rekey": self.session.bytes_used,
                "rekey_after_bytes": self.pair.rekey_after_bytes,
                "rekey_after_s": self.pair.rekey_after_s,
                "decisions": dict(self._outcomes),
                "last_error": self._last_error,
            }

    def close(self) -> None:
        """Stop both threads, wipe both sides' keys, drop fetched-ahead keys."""
        self._stop.set()
        if len(self._threads) == 2:
            self._threads[1].join(timeout=60)
        self.session.close()  # closes the initiator's end: the responder's serve returns
        if self._threads:
            self._threads[0].join(timeout=10)
        self._transport_r.close()
        self.responder_keys.replace(None)
        self._qkd_i.close()
        self._qkd_r.close()
        for client in self._clients:
            client.close()


__all__ = ["BackgroundSession"]
