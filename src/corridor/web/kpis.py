"""Pilot KPIs of a corridor, computed from its verified audit trails.

This module owns the definitions of the pilot's key performance indicators and their
computation from what a corridor recorded (``corridor-up.json`` names every log). Each
KME audit log and each hybrid decision log is verified with its KME's key-encryption
key (:func:`corridor.kms.audit.verify_audit_log`) before a single entry counts: only
verified entries are evidence, and a broken chain is reported, never skipped silently.

Definitions (docs/pilot.md gives the same with the reasons):

- **QKD key availability** = key requests served with QKD key / (served + refused for
  lack of key). Served: ``keys_delivered`` entries of role ``master`` (one per enc_keys
  request answered); refused for lack of key: ``request_rejected`` entries of
  ``enc_keys`` with status 503, plus the ``count`` of ``requests_rejected_summary``
  entries of the same kind (refusals of a flood are aggregated there). A second view:
  the share of hybrid decisions whose inputs include ``qkd``.
- **Time-to-key** = from the master KME's ``keys_delivered`` of a key to the slave KME's
  ``keys_delivered`` of the same key ID: how long until both SAEs hold it. Also the
  master's own step, ``keys_reserving`` to ``keys_delivered`` of one ``delivery_id``.
  p50 and p99 (nearest rank) over the period.
- **Fallback rate by policy** = hybrid decisions ``degraded`` / all decisions, per
  policy (a decision taken without a QKD key where the policy allows it); refusals
  are counted beside.
- **Link uptime** = 1 - (time quarantined) / period, per link, from
  ``link_quarantined`` to ``link_recovered`` or ``link_cleared`` (or the period's end).
- **Alarms per day**, **keys delivered per day**: counts of ``link_alarm_raised`` (and
  ``storage_alarm_raised``) and of delivered master keys, per UTC day and scaled to a
  day for the period.
- **Key-exchange risk before and after**: the ``summary`` of two inventory JSON files
  (``corridor inventory scan --format json``), when given.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.kms.up_file import read_up_file

#: Events of a link alarm or a storage alarm being raised.
ALARM_EVENTS = ("link_alarm_raised", "storage_alarm_raised")
#: Events that end a quarantine.
RECOVERY_EVENTS = ("link_recovered", "link_cleared")


def parse_time(text: str) -> dt.datetime:
    """An audit entry's time (``2026-12-02T21:07:00.840362Z``) as an aware datetime."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class AuditSource:
    """One verified log: where it is, what it is, whether its chain holds."""

    path: str
    what: str
    ok: bool
    entries: int
    reason: str | None = None


@dataclass
class PilotKpis:
    """Every KPI with the counts it came from, over ``[start, end]``."""

    name: str
    start: str
    end: str
    period_s: float
    sources: list[AuditSource] = field(default_factory=list)
    requests_served: int = 0
    requests_refused_no_key: int = 0
    qkd_key_availability: float | None = None
    keys_delivered: int = 0
    keys_delivered_per_day: float | None = None
    keys_by_day: dict[str, int] = field(default_factory=dict)
    time_to_key_s: list[float] = field(default_factory=list)
    time_to_key_p50_s: float | None = None
    time_to_key_p99_s: float | None = None
    master_step_p50_s: float | None = None
    master_step_p99_s: float | None = None
    hybrid_decisions: dict[str, dict[str, int]] = field(default_factory=dict)
    hybrid_with_qkd_share: float | None = None
    fallback_rate_by_policy: dict[str, float | None] = field(default_factory=dict)
    links: dict[str, dict[str, Any]] = field(default_factory=dict)
    alarms: int = 0
    alarms_per_day: float | None = None
    alarms_by_day: dict[str, int] = field(default_factory=dict)
    risk_before: dict[str, Any] | None = None
    risk_after: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def chains_ok(self) -> bool:
        """Every log verified end to end."""
        return bool(self.sources) and all(s.ok for s in self.sources)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the raw time-to-key samples left out, their count kept)."""
        out = {k: v for k, v in self.__dict__.items() if k != "time_to_key_s"}
        out["sources"] = [s.__dict__ for s in self.sources]
        out["time_to_key_samples"] = len(self.time_to_key_s)
        out["chains_ok"] = self.chains_ok
        return out


def read_inventory_summary(path: Path, option: str) -> dict[str, Any]:
    """The ``summary`` of an inventory JSON (``corridor inventory scan --format json``)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ParameterError(option, str(path), "an existing inventory JSON file") from None
    except (OSError, ValueError) as exc:
        raise ParameterError(option, str(path), "a readable inventory JSON file",
                             type(exc).__name__) from None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(summary, dict) or not isinstance(summary.get("by_risk"), dict):
        raise ParameterError(option, str(path), "an inventory JSON with summary.by_risk "
                             "(corridor inventory scan --format json)")
    return summary


def _verified(base: Path, log: str, kek: str | None, what: str,
              kpis: PilotKpis) -> list[dict[str, Any]]:
    from corridor.kms.audit import verify_audit_log
    from corridor.kms.crypto import load_kek

    path = base / log
    entries: list[dict[str, Any]] = []
    try:
        if kek is None:
            raise ParameterError("kek_file", None, "a KEK file named in corridor-up.json")
        key = load_kek(base / kek)
        result = verify_audit_log(path, key, on_entry=entries.append)
        del key
    except ParameterError as exc:
        kpis.sources.append(AuditSource(str(path), what, False, 0, str(exc)))
        kpis.problems.append(f"{what}: {path} not verified: {exc}")
        return []
    kpis.sources.append(AuditSource(str(path), what, result.ok, result.entries,
                                    result.reason))
    if not result.ok:
        kpis.problems.append(f"{what}: {path} broken at seq {result.first_bad_seq}: "
                             f"{result.reason}; only the {result.entries} entries before "
                             "it count")
    return entries


def _in_period(entry: dict[str, Any], start: dt.datetime | None,
               end: dt.datetime | None) -> bool:
    when = parse_time(str(entry.get("time")))
    return (start is None or when >= start) and (end is None or when <= end)


def collect_kpis(up_file: Path, *, since: dt.datetime | None = None,
                 until: dt.datetime | None = None, before: Path | None = None,
                 after: Path | None = None) -> PilotKpis:
    """The pilot's KPIs from the logs ``up_file`` names, over ``[since, until]`` (each
    defaulting to the first and last verified entry)."""
    data = read_up_file(up_file, need_kmes=True)
    base = up_file.parent
    kpis = PilotKpis(name=str(data.get("name", "corridor")), start="", end="", period_s=0.0)
    kme_entries: dict[str, list[dict[str, Any]]] = {}
    for kme in data["kmes"]:
        if isinstance(kme, dict) and isinstance(kme.get("audit_log"), str):
            kme_entries[str(kme.get("kme_id"))] = [
                e for e in _verified(base, kme["audit_log"], kme.get("kek_file"),
                                     f"KME {kme.get('kme_id')} audit", kpis)
                if _in_period(e, since, until)]
    decisions: list[dict[str, Any]] = []
    for session in data.get("hybrid_sessions") or []:
        for side in (session.get("sides") or []) if isinstance(session, dict) else []:
            if isinstance(side, dict) and isinstance(side.get("audit_log"), str):
                # Every side's chain is verified; decisions count once, at the initiator.
                verified = _verified(base, side["audit_log"], side.get("kek_file"),
                                     f"hybrid decisions {side.get('sae_id')}", kpis)
                if side.get("role") == "initiator":
                    decisions += [e for e in verified if _in_period(e, since, until)]
    every = [e for entries in kme_entries.values() for e in entries] + decisions
    times = sorted(parse_time(str(e["time"])) for e in every)
    if not times and (since is not None or until is not None):
        # A period outside the records would print "not measured" for every KPI.
        raise ParameterError("--since/--until", f"{since.isoformat() if since else '-'} to "
                             f"{until.isoformat() if until else '-'}",
                             "a period that holds verified audit entries of the pilot")
    start = since or (times[0] if times else dt.datetime.now(dt.UTC))
    end = until or (times[-1] if times else start)
    kpis.start, kpis.end = start.isoformat(), end.isoformat()
    kpis.period_s = max((end - start).total_seconds(), 0.0)
    days = kpis.period_s / 86400 if kpis.period_s > 0 else None

    _deliveries(kpis, kme_entries, days)
    _decisions(kpis, decisions)
    _links(kpis, data, kme_entries, start, end)
    if before is not None:
        kpis.risk_before = read_inventory_summary(before, "--inventory-before")
    if after is not None:
        kpis.risk_after = read_inventory_summary(after, "--inventory-after")
    return kpis


def _deliveries(kpis: PilotKpis, kme_entries: dict[str, list[dict[str, Any]]],
                days: float | None) -> None:
    master_at: dict[str, dt.datetime] = {}
    slave_at: dict[str, dt.datetime] = {}
    reserving: dict[str, dt.datetime] = {}
    steps: list[float] = []
    by_day: Counter[str] = Counter()
    for entries in kme_entries.values():
        for entry in entries:
            event, fields = entry.get("event"), entry.get("fields") or {}
            when = parse_time(str(entry["time"]))
            if event == "keys_reserving" and fields.get("delivery_id"):
                reserving[str(fields["delivery_id"])] = when
            elif event == "keys_delivered":
                ids = [str(k) for k in fields.get("key_ids") or []]
                if fields.get("role") == "master":
                    kpis.requests_served += 1
                    kpis.keys_delivered += int(fields.get("count") or len(ids))
                    by_day[when.date().isoformat()] += int(fields.get("count") or len(ids))
                    master_at.update((k, when) for k in ids)
                    began = reserving.get(str(fields.get("delivery_id")))
                    if began is not None:
                        steps.append((when - began).total_seconds())
                elif fields.get("role") == "slave":
                    slave_at.update((k, when) for k in ids)
            elif event in ("request_rejected", "requests_rejected_summary") \
                    and fields.get("endpoint") == "enc_keys" \
                    and fields.get("status_code") == 503:
                kpis.requests_refused_no_key += int(fields.get("count") or 1)
    asked = kpis.requests_served + kpis.requests_refused_no_key
    kpis.qkd_key_availability = kpis.requests_served / asked if asked else None
    kpis.keys_by_day = dict(sorted(by_day.items()))
    kpis.keys_delivered_per_day = kpis.keys_delivered / days if days else None
    kpis.time_to_key_s = [(slave_at[k] - t).total_seconds()
                          for k, t in master_at.items() if k in slave_at]
    kpis.time_to_key_p50_s = percentile(kpis.time_to_key_s, 50)
    kpis.time_to_key_p99_s = percentile(kpis.time_to_key_s, 99)
    kpis.master_step_p50_s = percentile(steps, 50)
    kpis.master_step_p99_s = percentile(steps, 99)


def _decisions(kpis: PilotKpis, decisions: list[dict[str, Any]]) -> None:
    by_policy: dict[str, Counter[str]] = defaultdict(Counter)
    with_qkd = 0
    for entry in decisions:
        fields = entry.get("fields") or {}
        if entry.get("event") != "hybrid_decision":
            continue
        by_policy[str(fields.get("policy"))][str(fields.get("outcome"))] += 1
        with_qkd += "qkd" in str(fields.get("inputs", "")).split("+")
    total = sum(sum(c.values()) for c in by_policy.values())
    kpis.hybrid_decisions = {p: dict(c) for p, c in sorted(by_policy.items())}
    kpis.hybrid_with_qkd_share = with_qkd / total if total else None
    kpis.fallback_rate_by_policy = {
        p: (c.get("degraded", 0) / sum(c.values())) if sum(c.values()) else None
        for p, c in sorted(by_policy.items())}


def _links(kpis: PilotKpis, data: dict[str, Any],
           kme_entries: dict[str, list[dict[str, Any]]],
           start: dt.datetime, end: dt.datetime) -> None:
    alarms_by_day: Counter[str] = Counter()
    for link in data.get("links") or []:
        if not isinstance(link, dict):
            continue
        link_id = str(link.get("link_id"))
        # Alice's KME writes the link's block, alarm and quarantine events.
        entries = kme_entries.get(str(link.get("alice_kme")), [])
        outcomes: Counter[str] = Counter()
        qber: list[tuple[str, float]] = []
        quarantined_s, since_q = 0.0, None
        for entry in entries:
            fields = entry.get("fields") or {}
            if fields.get("link_id") != link_id:
                continue
            event, when = entry.get("event"), parse_time(str(entry["time"]))
            if event == "link_block":
                outcomes[str(fields.get("outcome"))] += 1
                if isinstance(fields.get("qber"), int | float):
                    qber.append((when.isoformat(), float(fields["qber"])))
            elif event == "link_quarantined" and since_q is None:
                since_q = when
            elif event in RECOVERY_EVENTS and since_q is not None:
                quarantined_s += (when - since_q).total_seconds()
                since_q = None
            elif event in ALARM_EVENTS:
                kpis.alarms += 1
                alarms_by_day[when.date().isoformat()] += 1
        if since_q is not None:
            quarantined_s += max((end - since_q).total_seconds(), 0.0)
        uptime = (1 - quarantined_s / kpis.period_s) if kpis.period_s > 0 else None
        kpis.links[link_id] = {"blocks": dict(outcomes), "quarantined_s": quarantined_s,
                               "uptime": uptime, "qber_series": qber}
    for entries in kme_entries.values():  # storage alarms belong to no link
        for entry in entries:
            if entry.get("event") == "storage_alarm_raised":
                kpis.alarms += 1
                alarms_by_day[parse_time(str(entry["time"])).date().isoformat()] += 1
    kpis.alarms_by_day = dict(sorted(alarms_by_day.items()))
    days = kpis.period_s / 86400 if kpis.period_s > 0 else None
    kpis.alarms_per_day = kpis.alarms / days if days else None


__all__ = ["PilotKpis", "collect_kpis", "percentile", "read_inventory_summary"]
