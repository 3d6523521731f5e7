"""The hybrid sessions of a running embedded corridor (``corridor up``).

For every ``[[hybrid]]`` pair of the corridor file whose SAEs have certificates, one
:class:`~corridor.hybrid.background.BackgroundSession`. Each SAE's decisions are
recorded next to its KME, in the same way as the KME's own:

- audit: ``<workdir>/<kme_id>/hybrid-audit.jsonl``, an HMAC-chained
  :class:`~corridor.kms.audit.AuditLog` keyed by that KME's KEK (check it with
  ``corridor audit verify <file> --kek-file <workdir>/<kme_id>/kek.hex``);
- metric: ``corridor_hybrid_sessions_total{policy,inputs,outcome}`` in that KME's
  registry, i.e. on its operator-only ``/metrics``.

The link joining the two SAEs' KMEs counts as a missing QKD input (reason
``link_quarantined``) while its monitor holds it in quarantine.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from corridor.hybrid.background import BackgroundSession
from corridor.hybrid.policy import DecisionRecorder
from corridor.kms.audit import AuditLog
from corridor.kms.client import SaeClient
from corridor.kms.crypto import load_kek
from corridor.kms.node import Corridor, KmeNode

HYBRID_AUDIT_NAME = "hybrid-audit.jsonl"


class CorridorSessions:
    """Every hybrid session of ``corridor`` (started with :meth:`start`)."""

    def __init__(self, corridor: Corridor) -> None:
        self.corridor = corridor
        self.sessions: list[BackgroundSession] = []
        self._recorders: dict[str, DecisionRecorder] = {}
        self._stack = ExitStack()

    def __repr__(self) -> str:
        return f"CorridorSessions(sessions={len(self.sessions)})"

    def audit_path(self, kme_id: str) -> Path:
        """Where the decisions of the SAEs attached to ``kme_id`` are audited."""
        return self.corridor.nodes[kme_id].state_dir / HYBRID_AUDIT_NAME

    def _recorder(self, node: KmeNode) -> DecisionRecorder:
        recorder = self._recorders.get(node.kme_id)
        if recorder is None:
            kek = load_kek(node.kek_path) if node.kek_path is not None \
                else load_kek(None, str(node.site.kek_env))
            audit = AuditLog(self.audit_path(node.kme_id), kek)
            del kek
            self._stack.callback(audit.close)
            recorder = DecisionRecorder(audit, node.metrics.registry)
            self._recorders[node.kme_id] = recorder
        return recorder

    def _client(self, sae_id: str) -> SaeClient:
        pki = self.corridor.pki
        assert pki is not None
        kme_id = self.corridor.spec.saes[sae_id]
        paths = pki.saes[sae_id]
        return SaeClient(self.corridor.nodes[kme_id].url or "", paths.cert, paths.key,
                         pki.ca_cert, expected_kme_id=kme_id, max_connections=2)

    def _link_check(self, link_id: str | None) -> Callable[[], str | None]:
        monitor = self.corridor.monitor

        def check() -> str | None:
            # A pair whose KMEs share no link gets its key by trusted-node relay
            # (corridor.kms.relay): the KME says whether a path has key now.
            if link_id is None:
                return None
            if monitor is not None and monitor.is_quarantined(link_id):
                return "link_quarantined"
            return None

        return check

    def start(self, **options: Any) -> None:
        """Start one session per ``[[hybrid]]`` pair; ``options`` go to each
        :class:`BackgroundSession` (heartbeat, retry interval)."""
        spec = self.corridor.spec
        try:
            for pair in spec.hybrid:
                kme_i, kme_r = spec.saes[pair.master_sae_id], spec.saes[pair.slave_sae_id]
                link = spec.directory().link_between(kme_i, kme_r)
                link_check = self._link_check(link.link_id if link else None)

                session = BackgroundSession(
                    pair, self._client(pair.master_sae_id), self._client(pair.slave_sae_id),
                    initiator_recorder=self._recorder(self.corridor.nodes[kme_i]),
                    responder_recorder=self._recorder(self.corridor.nodes[kme_r]),
                    link_check=link_check, **options)
                self.sessions.append(session)
                session.start()
        except BaseException:
            self.close()
            raise

    def describe(self) -> list[dict[str, Any]]:
        """What ``corridor-up.json`` says about each session (paths relative to the
        working directory)."""
        workdir = self.corridor.workdir
        out = []
        for session in self.sessions:
            pair = session.pair
            sides = []
            for role, sae_id in (("initiator", pair.master_sae_id),
                                 ("responder", pair.slave_sae_id)):
                node = self.corridor.nodes[self.corridor.spec.saes[sae_id]]
                sides.append({"role": role, "sae_id": sae_id, "kme_id": node.kme_id,
                              "audit_log": str(self.audit_path(node.kme_id)
                                               .relative_to(workdir)),
                              "kek_file": str(node.kek_path.resolve().relative_to(workdir))
                              if node.kek_path is not None and node.kek_path.resolve()
                              .is_relative_to(workdir) else None})
            out.append({"initiator_sae_id": pair.master_sae_id,
                        "responder_sae_id": pair.slave_sae_id, "policy": pair.policy,
                        "rekey_after_bytes": pair.rekey_after_bytes,
                        "rekey_after_s": pair.rekey_after_s, "sides": sides})
        return out

    def status(self) -> list[dict[str, Any]]:
        """Each session's live state (:meth:`BackgroundSession.status`)."""
        return [session.status() for session in self.sessions]

    def close(self) -> None:
        """Stop every session (keys wiped), then close the hybrid audit logs."""
        for session in self.sessions:
            session.close()
        self.sessions = []
        self._stack.close()


__all__ = ["HYBRID_AUDIT_NAME", "CorridorSessions"]
