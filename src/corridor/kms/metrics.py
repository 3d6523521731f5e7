"""Prometheus metrics of the key management layer.

This module owns the metric names, their labels and how events become metric updates.
:class:`KmsMetrics` holds one ``prometheus_client`` registry (served at ``/metrics`` by
the ETSI 014 application); :class:`MetricsEventSink` is the ``EventSink`` that turns the
KeyManager's and the LinkMonitor's events into updates, so the audit log and the
metrics see the same events (``FanOutEventSink(audit_log, MetricsEventSink(metrics))``).

Names follow the Prometheus conventions: ``corridor_`` prefix, base units in the name
(``_seconds``, ``_bits``, ``_ratio``), counters end in ``_total``. Label values are
IDs, directions, endpoints and short reason codes, never key material: every value
passes through :func:`_label`, which accepts printable strings of at most 128
characters (anything else becomes ``"invalid"``), and reason-like labels must be
snake_case codes of at most 64 characters whose words are letters only (at most 24) or
digits only (at most 6), else ``"other"``: that bounds cardinality, and no hex or
base64 string (a key pasted where a reason belongs) can pass. The full table is in
docs/kms-operations.md.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025,
                     0.035, 0.05, 0.075, 0.1, 0.25, 1.0)
"""Request latency buckets: dense over 1-100 ms, where an ETSI 014 call should land."""

RATE_WINDOW_BLOCKS = 16
"""Blocks over which the key rate is averaged when the block's duration is unknown."""

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})

# A code is snake_case words of letters (at most 24 each) or short numbers: a hex or
# base64 string (a key pasted where a reason belongs) cannot match.
_CODE = re.compile(r"(?:[a-z]{1,24}|[0-9]{1,6})(?:_(?:[a-z]{1,24}|[0-9]{1,6}))*")


def _label(value: Any) -> str:
    """A label value from an ID-like field: a printable str of at most 128 characters."""
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
        return value
    return "invalid"


def _code(value: Any) -> str:
    """A label value from a reason/kind/event code (snake_case, at most 64) or ``other``."""
    if isinstance(value, str) and len(value) <= 64 and _CODE.fullmatch(value):
        return value
    return "other"


def _count(value: Any) -> int:
    """A non-negative integer count from an event field (anything else counts 0)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return 0
    return value


@dataclass(frozen=True)
class PoolSample:
    """Public figures of one pool (KME, link, direction) for the pool gauges."""

    kme_id: str
    link_id: str
    direction: str
    stored_keys: int
    available_bits: int | None = None
    max_keys: int | None = None


class _PoolCollector(Collector):
    """The pool gauges, from values set by hand and from sources read at scrape time."""

    def __init__(self) -> None:
        self.sources: list[Callable[[], Iterable[PoolSample]]] = []
        self._set: dict[tuple[str, str, str], PoolSample] = {}
        self._lock = threading.Lock()

    def set(self, sample: PoolSample) -> None:
        with self._lock:
            self._set[_pool_labels(sample)] = sample

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            samples = dict(self._set)
        for source in list(self.sources):
            try:
                for sample in source():
                    samples[_pool_labels(sample)] = sample
            except Exception:  # a scrape must not fail because one store is busy
                _log.warning("a pool source failed; its pools are missing from this scrape",
                             exc_info=True)
        labels = ["kme_id", "link_id", "direction"]
        stored = GaugeMetricFamily("corridor_pool_stored_keys",
                                   "Keys of the pool's key size stored, ready to be reserved.",
                                   labels=labels)
        available = GaugeMetricFamily("corridor_pool_available_bits",
                                      "Key bits stored in the pool and not yet reserved.",
                                      labels=labels)
        capacity = GaugeMetricFamily("corridor_pool_capacity_keys",
                                     "Capacity of the pool (max_key_count).", labels=labels)
        for key, sample in sorted(samples.items()):
            stored.add_metric(list(key), _count(sample.stored_keys))
            if sample.available_bits is not None:
                available.add_metric(list(key), _count(sample.available_bits))
            if sample.max_keys is not None:
                capacity.add_metric(list(key), _count(sample.max_keys))
        yield stored
        yield available
        yield capacity

    def describe(self) -> Iterator[Metric]:
        # Lets the registry check names at register() time without reading the sources.
        for name in ("corridor_pool_stored_keys", "corridor_pool_available_bits",
                     "corridor_pool_capacity_keys"):
            yield GaugeMetricFamily(name, "", labels=["kme_id", "link_id", "direction"])


def _pool_labels(sample: PoolSample) -> tuple[str, str, str]:
    return (_label(sample.kme_id) if sample.kme_id else "", _label(sample.link_id),
            _label(sample.direction))


class KmsMetrics:
    """The KMS metrics, registered in ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.pools = _PoolCollector()
        r.register(self.pools)
        self.key_bits_produced = Counter(
            "corridor_key_bits_produced_total",
            "Secret key bits distilled by a link (blocks that passed every stage).",
            ["link_id"], registry=r)
        self.key_bits_stored = Counter(
            "corridor_key_bits_stored_total", "Key bits a KME stored from its links.",
            ["kme_id", "link_id"], registry=r)
        self.key_bits_consumed = Counter(
            "corridor_key_bits_consumed_total",
            "Key bits that left a pool: reserved by this KME (master) or by its peer "
            "(reservation accepted, slave).",
            ["kme_id", "link_id", "direction"], registry=r)
        self.pool_dropped_bits = Counter(
            "corridor_pool_dropped_bits_total",
            "Key bits a KME dropped because the pool was full (pool_full).",
            ["kme_id", "link_id", "direction"], registry=r)
        self.keys_delivered = Counter(
            "corridor_keys_delivered_total", "Keys handed to SAEs, by role of the SAE "
            "(master: enc_keys, slave: dec_keys).", ["kme_id", "role"], registry=r)
        self.reservations_discarded = Counter(
            "corridor_reservations_discarded_total",
            "Reserved keys withdrawn undelivered (peer refused, pending at startup).",
            ["kme_id", "reason"], registry=r)
        self.requests_rejected = Counter(
            "corridor_key_requests_rejected_total", "Key requests refused, by endpoint and "
            "reason.", ["kme_id", "endpoint", "reason"], registry=r)
        self.link_qber = Gauge(
            "corridor_link_qber_ratio", "QBER of the link's last block that measured one.",
            ["link_id"], registry=r)
        self.link_key_rate = Gauge(
            "corridor_link_secret_key_rate_bits_per_second",
            "Secret key rate of the link: the last block's bits over its acquisition time, "
            f"or, when unknown, bits over wall time across the last {RATE_WINDOW_BLOCKS} blocks.",
            ["link_id"], registry=r)
        self.link_blocks = Counter(
            "corridor_link_blocks_total", "Blocks of a link by outcome "
            "(accepted, discarded, quarantined).", ["link_id", "outcome"], registry=r)
        self.blocks_discarded = Counter(
            "corridor_blocks_discarded_total",
            "Blocks of a link whose key was not stored, by reason (the abort reason, "
            "link_quarantined or empty_block).", ["link_id", "reason"], registry=r)
        self.link_quarantined = Gauge(
            "corridor_link_quarantined", "1 while the link is quarantined, else 0.",
            ["link_id"], registry=r)
        self.alarms_active = Gauge(
            "corridor_link_alarms_active", "Active alarms on a link.", ["link_id"], registry=r)
        self.storage_alarm = Gauge(
            "corridor_storage_alarm", "1 while the KME cannot write its audit trail or key "
            "store (requests answer 503), else 0.", ["kme_id"], registry=r)
        self.alarms_raised = Counter(
            "corridor_link_alarms_raised_total", "Alarms raised on a link, by kind.",
            ["link_id", "kind"], registry=r)
        self.requests = Counter(
            "corridor_requests_total", "HTTP requests by endpoint, method and status.",
            ["endpoint", "method", "status"], registry=r)
        self.request_duration = Histogram(
            "corridor_request_duration_seconds", "HTTP request latency by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=r)
        self.policy_decisions = Counter(
            "corridor_policy_decisions_total",
            "Decisions of a key policy (e.g. fallback when QKD key is missing).",
            ["policy", "decision"], registry=r)
        self.connections_refused = Counter(
            "corridor_connections_refused_total",
            "Connections a KME server refused or closed early, by reason: limit (at the "
            "cap, all established), evicted (oldest in TLS handshake, to make room), "
            "handshake_timeout, handshake_failed, header_timeout.",
            ["kme_id", "reason"], registry=r)
        self.tls_handshakes = Counter(
            "corridor_tls_handshakes_total",
            "Completed TLS handshakes of a KME server, by negotiated key-exchange group "
            "(X25519MLKEM768: hybrid post-quantum; x25519, secp256r1: classical).",
            ["kme_id", "group"], registry=r)
        self.connections_open = Gauge(
            "corridor_connections_open", "Sockets a KME server holds open now.",
            ["kme_id"], registry=r)
        self.events = Counter(
            "corridor_events_total", "Events emitted to the event sinks, by event name.",
            ["event"], registry=r)
        self._rate_lock = threading.Lock()
        self._arrivals: dict[str, deque[tuple[float, int]]] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request and record its latency."""
        method_label = method.upper() if isinstance(method, str) else ""
        if method_label not in HTTP_METHODS:
            method_label = "other"
        status_label = (str(status) if isinstance(status, int) and 100 <= status <= 599
                        else "invalid")
        endpoint_label = _code(endpoint)
        self.requests.labels(endpoint_label, method_label, status_label).inc()
        if isinstance(seconds, int | float) and math.isfinite(seconds) and seconds >= 0:
            self.request_duration.labels(endpoint_label).observe(seconds)

    def set_pool(self, link_id: str, direction: str, stored_keys: int, *,
                 kme_id: str = "", available_bits: int | None = None,
                 max_keys: int | None = None) -> None:
        """Set a pool's figures by hand (a pool source, if any, overrides at scrape)."""
        self.pools.set(PoolSample(kme_id=kme_id, link_id=link_id, direction=direction,
                                  stored_keys=stored_keys, available_bits=available_bits,
                                  max_keys=max_keys))

    def add_pool_source(self, source: Callable[[], Iterable[PoolSample]]) -> None:
        """Read pool figures from ``source`` at every scrape (e.g. from a KeyManager).

        A source that raises is skipped for that scrape and logged; the scrape goes on.
        """
        self.pools.sources.append(source)

    def observe_block(self, link_id: str, *, qber: float | None, secret_bits: int,
                      outcome: str = "accepted", reason: str | None = None,
                      duration_s: float | None = None) -> None:
        """Record one block of a link: QBER, distilled bits, key rate, outcome.

        ``secret_bits`` are the block's distilled bits (0 if it aborted); ``outcome`` is
        accepted, discarded or quarantined, with ``reason`` when not accepted.
        """
        link = _label(link_id)
        bits = _count(secret_bits)
        if qber is not None and isinstance(qber, int | float) and 0 <= qber <= 1:
            self.link_qber.labels(link).set(float(qber))
        self.key_bits_produced.labels(link).inc(bits)
        self.link_blocks.labels(link, _code(outcome)).inc()
        if outcome != "accepted":
            self.blocks_discarded.labels(link, _code(reason)).inc()
        rate = self._rate(link, bits, duration_s)
        if rate is not None:
            self.link_key_rate.labels(link).set(rate)

    def _rate(self, link: str, bits: int, duration_s: float | None) -> float | None:
        if (isinstance(duration_s, int | float) and math.isfinite(duration_s)
                and duration_s > 0):
            return bits / float(duration_s)
        now = time.monotonic()
        with self._rate_lock:
            arrivals = self._arrivals.setdefault(link, deque(maxlen=RATE_WINDOW_BLOCKS))
            arrivals.append((now, bits))
            span_s = arrivals[-1][0] - arrivals[0][0]
            if len(arrivals) < 2 or span_s <= 0:
                return None
            # The first block's bits were produced before the window opened.
            return sum(b for _, b in list(arrivals)[1:]) / span_s


class MetricsEventSink:
    """An ``EventSink`` that updates :class:`KmsMetrics` from KMS and link events.

    Events and the fields it reads (missing fields are skipped, never guessed):

    - ``link_block`` (LinkMonitor): link_id, qber, secret_bits, outcome, reason, duration_s
    - ``link_alarm_raised``: link_id, kind, active_alarms
    - ``link_quarantined``: link_id, active_alarms
    - ``link_recovered``, ``link_cleared``: link_id (quarantine and active alarms to 0)
    - ``block_ingested`` (KeyManager): kme_id, link_id, accepted_bytes
    - ``keys_reserved``, ``reservation_accepted``: kme_id, link_id, direction, count,
      size_bits (bits that left the pool; skipped when size_bits is absent)
    - ``relay_stored``, ``relay_share_held`` (corridor.kms.relay): kme_id, link_id,
      direction, count, size_bits (the pads the last hop took); ``relay_forwarded``:
      the same for the hop's incoming pool (``in_link_id``, ``in_direction``; its
      outgoing cut is a ``keys_reserved``)
    - ``keys_delivered``: kme_id, role, count
    - ``reservations_discarded``: kme_id, reason, count
    - ``request_rejected``: kme_id, endpoint, reason
    - ``pool_full``: kme_id, link_id, direction, dropped_bytes
    - ``policy_decision``: policy, decision
    - ``storage_alarm_raised`` / ``storage_alarm_cleared``: kme_id

    Pool sizes are not events: :meth:`KmsMetrics.add_pool_source` reads them at scrape.
    Every event is also counted in ``corridor_events_total{event}``.
    """

    def __init__(self, metrics: KmsMetrics) -> None:
        self.metrics = metrics

    def emit(self, event: str, **fields: Any) -> None:
        """Update the metrics for one event."""
        m = self.metrics
        m.events.labels(_code(event)).inc()
        get = fields.get
        kme, link, direction = (_label(get(name)) if name in fields else ""
                                for name in ("kme_id", "link_id", "direction"))
        if event == "link_block":
            m.observe_block(get("link_id", ""), qber=get("qber"),
                            secret_bits=_count(get("secret_bits")),
                            outcome=get("outcome", "accepted"), reason=get("reason"),
                            duration_s=get("duration_s"))
        elif event == "link_alarm_raised":
            m.alarms_raised.labels(link, _code(get("kind"))).inc()
            m.alarms_active.labels(link).set(_count(get("active_alarms")))
        elif event == "link_quarantined":
            m.link_quarantined.labels(link).set(1)
            m.alarms_active.labels(link).set(_count(get("active_alarms")))
        elif event in ("link_recovered", "link_cleared"):
            m.link_quarantined.labels(link).set(0)
            m.alarms_active.labels(link).set(0)
        elif event == "block_ingested":
            m.key_bits_stored.labels(kme, link).inc(8 * _count(get("accepted_bytes")))
        elif event in ("keys_reserved", "reservation_accepted", "relay_stored",
                       "relay_share_held"):
            m.key_bits_consumed.labels(kme, link, direction).inc(
                _count(get("count")) * _count(get("size_bits")))
        elif event == "relay_forwarded":
            m.key_bits_consumed.labels(kme, _label(get("in_link_id")),
                                       _label(get("in_direction"))).inc(
                _count(get("count")) * _count(get("size_bits")))
        elif event == "keys_delivered":
            m.keys_delivered.labels(kme, _code(get("role"))).inc(_count(get("count")))
        elif event == "reservations_discarded":
            m.reservations_discarded.labels(kme, _code(get("reason"))).inc(_count(get("count")))
        elif event == "request_rejected":
            m.requests_rejected.labels(kme, _code(get("endpoint")), _code(get("reason"))).inc()
        elif event == "pool_full":
            m.pool_dropped_bits.labels(kme, link, direction).inc(8 * _count(get("dropped_bytes")))
        elif event == "storage_alarm_raised":
            m.storage_alarm.labels(kme).set(1)
        elif event == "storage_alarm_cleared":
            m.storage_alarm.labels(kme).set(0)
        elif event == "policy_decision":
            m.policy_decisions.labels(_code(get("policy")), _code(get("decision"))).inc()
