"""The dashboard's view of KMEs that run elsewhere (``corridor web``), over their operator
endpoints.

This module owns :class:`RemoteCorridor`, the data source of a dashboard that does not
run inside ``corridor up``: a deployment of ``corridor kme serve`` processes, or a
``corridor up`` started by someone else. Each KME is asked, with an operator
certificate of the deployment's CA (:class:`~corridor.kms.client.OperatorClient`):

- ``GET /operator/v1/alarms``: each link's state and the alarms that KME holds (in
  ``kme serve`` each end of a link judges its own copy and holds its own alarms);
- ``GET /metrics``: pool levels (``corridor_pool_stored_keys``,
  ``corridor_pool_capacity_keys``) and each link's last QBER, key rate and block counts
  (``corridor_link_*``), read from the link's Alice KME when it reports them, else Bob's;
- ``GET /operator/v1/audit``: the verified tail of its audit trail and its chain state.

A KME that cannot be reached is shown as such (its site and its links say
"unreachable" with the reason), never as healthy. Clearing an alarm goes to every KME
of the link (as ``corridor alarm clear --from-up`` does); the KME audits the identity of
the certificate this process calls with, and the reason carries the name of the
operator whose browser asked for it.

It holds no key and can deliver none: an operator certificate gets 403 on every key
route.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from corridor.errors import CorridorError
from corridor.kms.client import KmeResponseError, OperatorClient
from corridor.kms.operator import MAX_REASON_CHARS, check_reason
from corridor.web.snapshot import DEFAULT_QBER_ALARM, qber_level, site_layout


@dataclass(frozen=True)
class RemoteKme:
    """One KME to watch: its ID, site, base URL and the operator's credentials."""

    kme_id: str
    site: str
    url: str
    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class RemoteLink:
    """One link of the deployment: its ID and the KMEs at its two ends."""

    link_id: str
    alice_kme: str
    bob_kme: str


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Prometheus text as ``{sample name: [(labels, value), ...]}``."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


class _AuditFeed:
    """One KME's audit tail over ``GET /operator/v1/audit``."""

    def __init__(self, kme_id: str, client: OperatorClient, lock: threading.Lock) -> None:
        self.kme_id = kme_id
        self._client = client
        self._lock = lock

    def fetch(self, after_seq: int, limit: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        with self._lock:
            body = self._client.audit(after_seq=after_seq, limit=limit)
        return dict(body["chain"]), [e for e in body["entries"] if isinstance(e, dict)]


class RemoteCorridor:
    """A deployment watched over its KMEs' operator endpoints (module docstring)."""

    def __init__(self, name: str, kmes: Sequence[RemoteKme], links: Sequence[RemoteLink], *,
                 source_path: Path | None = None,
                 certificates: Sequence[tuple[str, str, Path]] = (),
                 qber_alarm: float = DEFAULT_QBER_ALARM,
                 inventory: dict[str, Any] | None = None, timeout_s: float = 3.0) -> None:
        self.name = name
        self.kmes = list(kmes)
        self.links = list(links)
        self.source_path = source_path
        self.qber_alarm = qber_alarm
        self.inventory = inventory
        self._certificates = list(certificates)
        self._clients = {k.kme_id: OperatorClient(k.url, k.cert, k.key, k.ca,
                                                  expected_kme_id=k.kme_id, timeout_s=timeout_s)
                         for k in self.kmes}
        # One request at a time per client: the sampler and a clear may overlap.
        self._locks = {k.kme_id: threading.Lock() for k in self.kmes}

    def __repr__(self) -> str:
        return f"RemoteCorridor(name={self.name!r}, kmes={[k.kme_id for k in self.kmes]})"

    def close(self) -> None:
        """Close every connection."""
        for client in self._clients.values():
            client.close()

    def certificates(self) -> list[tuple[str, str, Path]]:
        """(role, ID, file) of every certificate of the PKI shown."""
        return list(self._certificates)

    def audit_feeds(self) -> list[_AuditFeed]:
        """One audit feed per KME."""
        return [_AuditFeed(k, c, self._locks[k]) for k, c in self._clients.items()]

    def _ask(self, kme_id: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
        client = self._clients[kme_id]
        try:
            with self._locks[kme_id]:
                alarms = client.alarms()
                metrics = parse_metrics(client.metrics())
        except (CorridorError, ValueError) as exc:
            return None, None, str(exc) or type(exc).__name__
        return alarms, metrics, None

    def snapshot(self) -> dict[str, Any]:
        """Everything the pages show, from what each KME answers now."""
        import time

        answers = {k.kme_id: self._ask(k.kme_id) for k in self.kmes}
        layout = site_layout([(k.kme_id, k.site) for k in self.kmes], self.source_path)
        sites = []
        for kme in self.kmes:
            error = answers[kme.kme_id][2]
            sites.append({"kme_id": kme.kme_id, **layout[kme.kme_id], "url": kme.url,
                          "reachable": error is None, "error": error})
        links: list[dict[str, Any]] = []
        alarms: list[dict[str, Any]] = []
        for link in self.links:
            links.append(self._link(link, answers, alarms))
        return {"name": self.name, "time": time.time(), "qber_alarm": self.qber_alarm,
                "sites": sites, "links": links,
                "alarms": alarms, "relays": [], "hybrid": [], "mobility": {},
                "inventory": self.inventory, "remote": True}

    def _link(self, link: RemoteLink, answers: dict[str, Any],
              alarms: list[dict[str, Any]]) -> dict[str, Any]:
        ends = [link.alice_kme, link.bob_kme]
        states: list[str] = []
        pools: list[dict[str, Any]] = []
        figures: dict[str, Any] = {}
        quarantined = False
        for kme_id in ends:
            alarm_answer, metrics, error = answers.get(kme_id, (None, None, "not watched"))
            if error is not None:
                states.append(f"{kme_id} unreachable")
                continue
            assert alarm_answer is not None and metrics is not None
            for entry in alarm_answer.get("links") or []:
                if entry.get("link_id") != link.link_id:
                    continue
                states.append(f"{kme_id} {entry.get('state')}")
                quarantined |= bool(entry.get("quarantined"))
                for alarm in entry.get("alarms") or []:
                    alarms.append({"link_id": link.link_id, "kme_id": kme_id, **alarm,
                                   "quarantined": bool(entry.get("quarantined")),
                                   "recovery": "latched: an operator clears it"
                                   if alarm.get("latched") else
                                   "clears by itself after consecutive good blocks"})
            capacity = {(s["kme_id"], s["direction"]): v
                        for s, v in metrics.get("corridor_pool_capacity_keys", [])
                        if s.get("link_id") == link.link_id}
            for labels, value in metrics.get("corridor_pool_stored_keys", []):
                if labels.get("link_id") == link.link_id and labels.get("kme_id") == kme_id:
                    cap = capacity.get((labels["kme_id"], labels["direction"]))
                    pools.append({"kme_id": kme_id, "direction": labels["direction"],
                                  "stored_keys": int(value),
                                  "max_keys": int(cap) if cap is not None else None})
            if not figures:
                figures = self._link_figures(link.link_id, metrics)
        # Each end of a link judges it in `kme serve`: one state when they agree, both
        # (named) when they do not, e.g. "kme-a starting; kme-b ok".
        ends_seen = {text.split(" ", 1)[1] for text in states}
        if not states:
            state = "unknown"
        elif len(ends_seen) == 1 and len(states) == len(set(ends)):
            state = ends_seen.pop()
        else:
            state = "; ".join(states)
        level, text = qber_level(figures.get("qber"), self.qber_alarm)
        if quarantined:
            level, text = "alarm", f"quarantined; {text}"
        elif any(t.endswith((" unreachable", " dead")) for t in states):
            level, text = "alarm", f"{state}; {text}"
        fill = max((p["stored_keys"] / p["max_keys"] for p in pools if p["max_keys"]),
                   default=0.0)
        return {"link_id": link.link_id, "alice_kme": link.alice_kme, "bob_kme": link.bob_kme,
                "state": state, "qber": figures.get("qber"), "level": level, "text": text,
                "key_rate_bits_per_second": figures.get("key_rate"),
                "stored_bits_per_second_wall": None,
                "blocks_stored": figures.get("accepted", 0),
                "blocks_aborted": figures.get("discarded", 0) + figures.get("quarantined", 0),
                "pool_fill": fill, "pools": pools}

    @staticmethod
    def _link_figures(link_id: str, metrics: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in (("corridor_link_qber_ratio", "qber"),
                            ("corridor_link_secret_key_rate_bits_per_second", "key_rate")):
            for labels, value in metrics.get(name, []):
                if labels.get("link_id") == link_id:
                    out[field] = value
        for labels, value in metrics.get("corridor_link_blocks_total", []):
            if labels.get("link_id") == link_id:
                out[labels.get("outcome", "?")] = int(value)
        return out

    def clear(self, link_id: str, operator: str, reason: Any) -> dict[str, Any]:
        """Clear ``link_id`` at each KME of the link; the reason names ``operator``."""
        reason = check_reason(reason)
        link = next((lk for lk in self.links if lk.link_id == link_id), None)
        if link is None:
            raise KeyError(link_id)
        note = f" (cleared in the dashboard by operator {operator})"
        full = reason[:MAX_REASON_CHARS - len(note)] + note
        results = []
        for kme_id in dict.fromkeys([link.alice_kme, link.bob_kme]):
            if kme_id not in self._clients:
                continue
            try:
                with self._locks[kme_id]:
                    results.append(self._clients[kme_id].clear(link_id, full))
            except KmeResponseError as exc:
                if exc.status_code != 404:
                    raise
        return {"link_id": link_id, "operator": operator, "results": results}


__all__ = ["RemoteCorridor", "RemoteKme", "RemoteLink", "parse_metrics"]
