"""What the dashboard shows, as plain data: one snapshot of a running corridor and the
recent history of each link.

This module owns the shape of the dashboard's JSON (:func:`snapshot`), the map layout
(sites at their coordinates when the corridor file gives ``[[sites]]`` with
``latitude_deg``/``longitude_deg``, else on a circle), the text alternatives of every
colour (a QBER of 9 % says "QBER 9.00 %: above the 5 % alarm level", not only red), and
:class:`History`, a bounded ring of per-link samples (QBER, key rate, pool levels) for
the charts, and :class:`LocalCorridor`, the dashboard's data source inside ``corridor
up`` (:class:`corridor.web.remote.RemoteCorridor` is the one for KMEs elsewhere). Nothing
here holds key material: pool levels are counts, alarms are kinds and reasons.
"""

from __future__ import annotations

import math
import threading
import time
import tomllib
from collections import deque
from pathlib import Path
from typing import Any

#: The LinkMonitor's QBER alarm level when the corridor file does not set one
#: (``[monitor] qber_alarm_threshold``); the page uses the corridor's own.
DEFAULT_QBER_ALARM = 0.08
#: Warning level as a share of the alarm level: the monitor's recovery threshold
#: (a quarantined link comes back only below it).
WARN_SHARE = 0.75


def qber_level(qber: float | None, alarm: float = DEFAULT_QBER_ALARM) -> tuple[str, str]:
    """(level, text) for a QBER against the corridor's alarm level: the colour's meaning
    in words."""
    warn = WARN_SHARE * alarm
    if qber is None:
        return "none", "QBER not measured yet"
    if qber > alarm:
        return "alarm", (f"QBER {qber * 100:.2f} %: above the {alarm * 100:.3g} % alarm "
                         "level")
    if qber > warn:
        return "warn", (f"QBER {qber * 100:.2f} %: above {warn * 100:.3g} % (the recovery "
                        "level), watch it")
    return "ok", f"QBER {qber * 100:.2f} %: normal"


def qber_alarm_of(spec: Any) -> float:
    """The QBER alarm level of a corridor (its ``[monitor]`` table, else the default)."""
    value = (getattr(spec, "monitor", None) or {}).get("qber_alarm_threshold")
    return float(value) if isinstance(value, int | float) else DEFAULT_QBER_ALARM


def site_layout(kmes: list[tuple[str, str]],
                source_path: Path | None) -> dict[str, dict[str, Any]]:
    """Each KME's map position in [0, 1] x [0, 1] and its site's name, for (KME ID, site
    ID) pairs; geographic when the corridor file at ``source_path`` places every site."""
    coords: dict[str, tuple[float, float, str]] = {}
    if source_path is not None and Path(source_path).is_file():
        try:
            data = tomllib.loads(Path(source_path).read_text())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            data = {}
        for site in data.get("sites") or []:
            if isinstance(site, dict) and isinstance(site.get("latitude_deg"), int | float) \
                    and isinstance(site.get("longitude_deg"), int | float):
                coords[str(site.get("id"))] = (float(site["longitude_deg"]),
                                               float(site["latitude_deg"]),
                                               str(site.get("name") or site.get("id")))
    placed = {kme_id: coords[site] for kme_id, site in kmes if site in coords}
    out: dict[str, dict[str, Any]] = {}
    if len(placed) == len(kmes) and len(kmes) > 1:
        xs = [c[0] for c in placed.values()]
        ys = [c[1] for c in placed.values()]
        span = max(max(xs) - min(xs), max(ys) - min(ys)) or 1.0
        for kme_id, (x, y, name) in placed.items():
            out[kme_id] = {"x": 0.1 + 0.8 * (x - min(xs)) / span,
                           "y": 0.9 - 0.8 * (y - min(ys)) / span, "site": name,
                           "coordinates": "geographic"}
        return out
    for n, (kme_id, site) in enumerate(kmes):
        angle = 2 * math.pi * n / max(len(kmes), 1) + math.pi
        out[kme_id] = {"x": 0.5 + 0.38 * math.cos(angle), "y": 0.5 + 0.38 * math.sin(angle),
                       "site": site, "coordinates": "schematic"}
    return out


def site_positions(corridor: Any) -> dict[str, dict[str, Any]]:
    """:func:`site_layout` of a running corridor's KMEs."""
    return site_layout([(k.kme_id, k.site) for k in corridor.spec.kmes.values()],
                       Path(str(corridor.spec.source_path)))


def snapshot(corridor: Any, *, hybrid: Any = None, mobility: Any = None,
             inventory: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything the pages show, at this moment."""
    status = corridor.status()
    alarm = qber_alarm_of(corridor.spec)
    pools: dict[str, list[dict[str, Any]]] = {}
    for pool in status["pools"]:
        pools.setdefault(pool["link_id"], []).append(
            {"kme_id": pool["kme_id"], "direction": pool["direction"], "role": pool["role"],
             "stored_keys": pool["stored_keys"], "max_keys": pool["max_keys"]})
    links = []
    alarms = []
    for link in status["links"]:
        site = corridor.spec.links[link["link_id"]]
        level, text = qber_level(link["last_qber"], alarm)
        if link["quarantined"]:
            level, text = "alarm", f"quarantined; {text}"
        link_pools = pools.get(link["link_id"], [])
        fill = max((p["stored_keys"] / p["max_keys"] for p in link_pools if p["max_keys"]),
                   default=0.0)
        links.append({"link_id": link["link_id"], "alice_kme": site.alice_kme,
                      "bob_kme": site.bob_kme, "state": link["state"],
                      "qber": link["last_qber"], "level": level, "text": text,
                      "key_rate_bits_per_second": link["last_key_rate_bits_per_second"],
                      "stored_bits_per_second_wall": link["stored_bits_per_second_wall"],
                      "blocks_stored": link["blocks_stored"],
                      "blocks_aborted": link["blocks_aborted"],
                      "pool_fill": fill, "pools": link_pools})
        for alarm in link["alarms"]:
            alarms.append({"link_id": link["link_id"], **alarm,
                           "quarantined": link["quarantined"],
                           "recovery": "latched: an operator clears it" if alarm["latched"]
                           else "clears by itself after consecutive good blocks"})
    out: dict[str, Any] = {
        "name": corridor.spec.name, "time": time.time(), "qber_alarm": alarm,
        "sites": [{"kme_id": k, **pos, "url": corridor.nodes[k].url, "reachable": True,
                   "error": None}
                  for k, pos in site_positions(corridor).items()],
        "links": links, "alarms": alarms, "relays": status["relays"],
        "hybrid": hybrid.status() if hybrid is not None and hybrid.sessions else [],
        "mobility": {}, "inventory": inventory}
    if mobility is not None:
        for name in ("rsu", "fleet", "ota"):
            part = getattr(mobility, name, None)
            if part is not None:
                out["mobility"][name] = part.status()
    return out


class _LocalAuditFeed:
    """One KME's audit tail, read from its follower in this process."""

    def __init__(self, kme_id: str, follower: Any) -> None:
        self.kme_id = kme_id
        self._follower = follower

    def fetch(self, after_seq: int, limit: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        self._follower.poll()
        return self._follower.status(), self._follower.tail(after_seq=after_seq, limit=limit)


class LocalCorridor:
    """The dashboard's data source for a corridor running in this process
    (``corridor up``): its status, its KMEs' audit followers, its PKI, and clearing
    alarms through each KME's AlarmDesk (audited there with the operator's name)."""

    def __init__(self, corridor: Any, *, hybrid: Any = None, mobility: Any = None,
                 inventory: dict[str, Any] | None = None) -> None:
        self.corridor, self.hybrid, self.mobility = corridor, hybrid, mobility
        self.inventory = inventory

    def snapshot(self) -> dict[str, Any]:
        """:func:`snapshot` of the corridor."""
        return snapshot(self.corridor, hybrid=self.hybrid, mobility=self.mobility,
                        inventory=self.inventory)

    def audit_feeds(self) -> list[_LocalAuditFeed]:
        """One feed per KME whose audit trail is followed."""
        return [_LocalAuditFeed(kme_id, node.audit_follower)
                for kme_id, node in self.corridor.nodes.items()
                if node.audit_follower is not None]

    def certificates(self) -> list[tuple[str, str, Path]]:
        """Every certificate of the corridor's PKI."""
        pki = self.corridor.pki
        return pki.certificates() if pki is not None else []

    def clear(self, link_id: str, operator: str, reason: Any) -> dict[str, Any]:
        """Clear ``link_id``'s alarms at every KME that judges it (audited there)."""
        results = []
        for node in self.corridor.nodes.values():
            desk = node.alarm_desk
            if link_id in desk.link_ids:
                results.append(desk.clear(link_id, operator, reason))
        if not results:
            raise KeyError(link_id)
        return {"link_id": link_id, "operator": operator, "results": results}

    def close(self) -> None:
        """Nothing to close: the corridor belongs to its owner."""


class History:
    """The last ``size`` samples of every link (time, QBER, key rate, pool fill)."""

    def __init__(self, size: int = 600) -> None:
        self._lock = threading.Lock()
        self._series: dict[str, deque[dict[str, Any]]] = {}
        self.size = size

    def add(self, snap: dict[str, Any]) -> None:
        """Record one snapshot's link figures."""
        with self._lock:
            for link in snap["links"]:
                ring = self._series.setdefault(link["link_id"], deque(maxlen=self.size))
                ring.append({"t": snap["time"], "qber": link["qber"],
                             "key_rate": link["key_rate_bits_per_second"],
                             "stored_keys": min((p["stored_keys"] for p in link["pools"]),
                                                default=0)})

    def series(self) -> dict[str, list[dict[str, Any]]]:
        """Every link's samples, oldest first."""
        with self._lock:
            return {k: list(v) for k, v in self._series.items()}


__all__ = ["DEFAULT_QBER_ALARM", "History", "LocalCorridor", "qber_alarm_of", "qber_level",
           "site_layout", "site_positions", "snapshot"]
