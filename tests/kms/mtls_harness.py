"""A two-KME deployment over real mutual-TLS sockets, for the API tests and benchmarks.

Two real :class:`~corridor.kms.manager.KeyManager` instances (SQLite stores in a temp
directory), linked by :class:`~corridor.kms.api.HttpsPeerLink` in both directions, each
served by a real uvicorn server on 127.0.0.1 from :func:`corridor.kms.tls.running_server`;
blocks of random bytes (OS CSPRNG) ingested identically at both KMEs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corridor.kms.api import HttpsPeerLink, create_app
from corridor.kms.client import SaeClient
from corridor.kms.config import KmeConfig, SaeDirectory
from corridor.kms.crypto import generate_kek
from corridor.kms.manager import KeyManager
from corridor.kms.pki import PkiLayout, init_pki
from corridor.kms.store_sqlite import SqliteKeyStore
from corridor.kms.tls import bind_socket, client_ssl_context, running_server

KME_A, KME_B = "kme-a", "kme-b"
OPERATOR = "ops"
LINK_ID = "link-ab"
ODD_SAE_ID = "sae/β?#%&=x"
# sae-a, sae-a2 at KME A; sae-b, sae-c and the odd one at KME B. sae-c is never named as
# a slave in the tests: it is the "third SAE".
SAES = {"sae-a": KME_A, "sae-a2": KME_A, "sae-b": KME_B, "sae-c": KME_B, ODD_SAE_ID: KME_B}


def fingerprint(key: bytes | str) -> str:
    """A short SHA-256 digest that stands in for key material in assertions, so that a
    failing test prints digests, never keys."""
    data = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprints(keys: Any) -> list[tuple[str, str]]:
    """``(key_id, fingerprint(key))`` for objects with ``key_id`` and ``key``."""
    return [(k.key_id, fingerprint(k.key)) for k in keys]


@dataclass
class Deployment:
    """Two KMEs serving over mutual TLS, and what a test needs to reach them."""

    pki: PkiLayout
    urls: dict[str, str]
    managers: dict[str, KeyManager]
    metrics: dict[str, Any] = field(default_factory=dict)
    _block_id: int = 0

    def client(self, sae_id: str, *, kme_id: str | None = None) -> SaeClient:
        """An SaeClient for ``sae_id`` at its own KME (or ``kme_id``)."""
        kme = kme_id or SAES[sae_id]
        paths = self.pki.saes[sae_id]
        return SaeClient(self.urls[kme], paths.cert, paths.key, self.pki.ca_cert,
                         expected_kme_id=kme)

    def raw(self, cert_owner: str, *, kme_id: str, role: str = "sae") -> httpx.Client:
        """A plain httpx client presenting ``cert_owner``'s certificate (``role``: sae,
        kme or operator)."""
        paths = {"sae": self.pki.saes, "kme": self.pki.kmes, "operator": self.pki.operators,
                 "dashboard": self.pki.dashboards}[role][cert_owner]
        context = client_ssl_context(paths.cert, paths.key, self.pki.ca_cert)
        return httpx.Client(base_url=self.urls[kme_id], verify=context, timeout=10)

    def ingest(self, length_bytes: int) -> None:
        """One block of ``length_bytes`` random bytes into both KMEs (half per direction)."""
        self._block_id += 1
        block = os.urandom(length_bytes)
        for manager in self.managers.values():
            manager.ingest_block(LINK_ID, self._block_id, block)


@contextmanager
def two_kme_deployment(root: Path, *, config: dict[str, Any] | None = None,
                       with_metrics: bool = False,
                       alarm_desks: dict[str, Any] | None = None,
                       audit_followers: dict[str, Any] | None = None) -> Iterator[Deployment]:
    """Start KME A and KME B (SQLite stores under ``root``) and stop them on exit;
    ``alarm_desks`` (by KME ID) enables the operator's alarm routes, ``audit_followers``
    the audit tail."""
    pki = init_pki(root / "pki", [KME_A, KME_B, "kme-c"],
                   [(sae, kme) for sae, kme in SAES.items()], operators=[OPERATOR],
                   dashboards=["dashboard"])
    directory = SaeDirectory(SAES, {LINK_ID: (KME_A, KME_B)})
    settings = {"key_size_bits": 256, "min_key_size_bits": 64, "max_key_size_bits": 1024,
                "max_key_per_request": 128, "max_key_count": 100_000, **(config or {})}
    sockets = {kme: bind_socket() for kme in (KME_A, KME_B)}
    urls = {kme: f"https://127.0.0.1:{sock.getsockname()[1]}" for kme, sock in sockets.items()}
    with ExitStack() as stack:
        managers: dict[str, KeyManager] = {}
        metrics: dict[str, Any] = {}
        for kme, peer in ((KME_A, KME_B), (KME_B, KME_A)):
            store = SqliteKeyStore(root / f"{kme}.sqlite", generate_kek(), kme_id=kme)
            paths = pki.kmes[kme]
            link = HttpsPeerLink(urls[peer], cert=paths.cert, key=paths.key, ca=pki.ca_cert,
                                 peer_kme_id=peer)
            stack.callback(link.close)
            manager = KeyManager(KmeConfig(kme_id=kme, **settings), directory, store,
                                 peers={peer: link})
            stack.callback(manager.close)
            managers[kme] = manager
        for kme in (KME_A, KME_B):
            app_metrics = None
            if with_metrics:
                from corridor.kms.metrics import KmsMetrics
                app_metrics = metrics[kme] = KmsMetrics()
            app = create_app(managers[kme], metrics=app_metrics,
                             peer_acceptor=managers[kme].accept_reservations,
                             peer_sync=managers[kme].accept_sync,
                             alarms=(alarm_desks or {}).get(kme),
                             audit=(audit_followers or {}).get(kme))
            paths = pki.kmes[kme]
            stack.enter_context(running_server(app, paths.cert, paths.key, pki.ca_cert,
                                               sock=sockets[kme]))
        yield Deployment(pki, urls, managers, metrics)
