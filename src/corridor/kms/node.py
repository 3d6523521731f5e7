"""Assembling KMEs from a corridor file: one KME process, or the whole embedded corridor.

This module owns the corridor TOML format (docs/corridor-up.md) and the wiring of a KME:

- :func:`load_corridor` reads a corridor file (or the embedded default shipped as
  ``default_corridor.toml``) into a :class:`CorridorSpec`: KMEs and their sites, links
  with their physical parameters (a preset plus overrides named with units,
  ``length_km``) and how they are fed (simulated in one process, simulated with each
  party next to its KME and a TCP classical channel, or recorded key files), SAEs and
  the KME each is attached to, and the hybrid session policy of each pair of SAEs
  (``[[hybrid]]``, :func:`corridor.kms.config.parse_hybrid_pairs`);
- :func:`own_link_feeders` wires one KME process (``corridor kme serve``): its side of
  each of its links;
- :class:`KmeNode` builds one KME: its store (SQLite file or PostgreSQL DSN), its KEK
  (file or environment variable, never the database), its
  :class:`~corridor.kms.audit.AuditLog` and :class:`~corridor.kms.metrics.KmsMetrics`
  behind one :class:`~corridor.kms.interface.FanOutEventSink`, its
  :class:`~corridor.kms.manager.KeyManager` (pending reservations resolved on start),
  :class:`~corridor.kms.api.HttpsPeerLink` s to its peer KMEs and the ETSI GS QKD 014
  server over mutual TLS;
- :class:`Corridor` is the embedded default in one process: every KME of the file on
  this machine, the PKI (created on first start, reused after), one
  :class:`~corridor.kms.alarms.LinkMonitor` and one
  :class:`~corridor.kms.sources.feeder.LinkFeeder` per link, and ``corridor-up.json``
  describing what runs.

Closing order is the reverse of starting: feeders (no new blocks), servers (in-flight
requests finish), peer links, stores, audit logs (fsync'ed, chain intact).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.resources
import json
import logging
import os
import socket
import threading
import time
import tomllib
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError, fields_renamed
from corridor.kms.alarms import LinkHealth, LinkMonitor
from corridor.kms.api import HttpsPeerLink, create_app
from corridor.kms.audit import (
    AuditLog,
    AuditLogError,
    DeliveryJournal,
    HighWaterMarks,
    verify_audit_log,
)
from corridor.kms.audit_follow import AuditFollower
from corridor.kms.config import (
    KME_SETTING_NAMES,
    HybridPairConfig,
    KmeConfig,
    SaeDirectory,
    check_id,
    parse_hybrid_pairs,
)
from corridor.kms.crypto import load_kek, write_kek_file
from corridor.kms.ha import (
    PENDING_GRACE_S,
    LockHeldError,
    check_worker,
    hold_pid_lock,
    hold_worker_lock,
    observe_sibling_chains,
    require_shared_store,
    sibling_audit_paths,
    worker_audit_path,
)
from corridor.kms.interface import ByLinkEventSink, EventSink, FanOutEventSink
from corridor.kms.limits import (
    SETTING_NAMES,
    ConnectionLimits,
    RefusalReporter,
    check_file_budget,
    raise_open_file_limit,
)
from corridor.kms.manager import KeyManager
from corridor.kms.metrics import KmsMetrics, MetricsEventSink, PoolSample
from corridor.kms.operator import DEFAULT_LINK_DEAD_AFTER_S, AlarmDesk, feeder_state
from corridor.kms.pki import (
    MANIFEST_NAME,
    ROLE_DASHBOARD,
    ROLE_OPERATOR,
    CertificatePaths,
    PkiLayout,
    add_entity,
    init_pki,
)
from corridor.kms.quota import QuotaPolicy, SaeQuotas
from corridor.kms.rejections import RejectionAggregator
from corridor.kms.relay import (
    POLICY_SINGLE_PATH,
    RelayEngine,
    RelayPolicy,
    SnapshotProvider,
    local_snapshot,
    snapshot_from_pools,
)
from corridor.kms.sources.base import SIDE_ALICE, SIDE_BOB, KeySource
from corridor.kms.sources.feeder import LinkFeeder
from corridor.kms.sources.party import SimulatedLinkPartySource
from corridor.kms.sources.recorded import RecordedKeyFileSource
from corridor.kms.sources.simulated import BlockSlots, SimulatedLinkSource
from corridor.kms.store import KeyStore
from corridor.kms.store_open import open_store
from corridor.kms.tls import bind_socket, running_server
from corridor.link.params import LinkParameters, preset
from corridor.randomness import RandomSource
from corridor.tomlfile import read_toml

_log = logging.getLogger(__name__)

DEFAULT_CORRIDOR_RESOURCE = "default_corridor.toml"
#: The corridors embedded in the package, by name (``corridor up --embedded NAME``).
EMBEDDED_CORRIDORS = {"city": "city_corridor.toml", "two-site": DEFAULT_CORRIDOR_RESOURCE}
UP_FILE_NAME = "corridor-up.json"
LOCK_FILE_NAME = "corridor.lock"
KME_LOCK_FILE_NAME = "kme.lock"  # in a KME's state directory, held while it is served
UP_OPERATOR = "operator"
UP_DASHBOARD = "dashboard"
"""The operator certificate ``corridor up`` issues (``pki/operator/operator/``)."""
SOURCE_SIMULATED = "simulated"
SOURCE_RECORDED = "recorded"

_KME_NODE_KEYS = {"id", "site", "host", "port", "url", "store", "kek_file", "kek_env",
                  "audit_fsync_interval_s"}
_LINK_KEYS = {"id", "alice_kme", "bob_kme", "preset", "parameters", "source", "block_pulses",
              "block_interval_s", "cascade_variant", "frame_bits", "reconciliation", "keys_dir",
              "block_bytes", "ldpc_code_bits", "ldpc_efficiency", "ldpc_retry_step",
              "channel_listen", "channel_address", "simulation_seed", "psk_file"}
_MONITOR_KEYS = {"qber_alarm_threshold", "trend_window_blocks", "recovery_blocks",
                 "recovery_qber_threshold", "max_consecutive_discards"}
# [[sites]] and [[demand]] describe the network for planning; corridor.net.topology
# validates them (a KME serves whatever the file says about its own links).
_TOP_KEYS = {"name", "kme", "monitor", "kmes", "links", "saes", "pki_dir", "quota", "hybrid",
             "sites", "demand", "relay"}
_RELAY_KEYS = {"master_sae_id", "slave_sae_id", "policy", "paths"}


# ---------------------------------------------------------------------------------------
# The corridor file


@dataclass(frozen=True)
class KmeSite:
    """One KME of a corridor: where it listens, where its state lives, its limits."""

    kme_id: str
    site: str
    host: str
    port: int
    config: KmeConfig
    url: str | None = None
    store: str | None = None
    kek_file: Path | None = None
    kek_env: str | None = None
    audit_fsync_interval_s: float = 0.0
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)

    def base_url(self, port: int | None = None, host: str | None = None) -> str:
        """``https://host:port`` (``url`` if the file gives one)."""
        if self.url is not None:
            return self.url.rstrip("/")
        name = host or self.host
        name = f"[{name}]" if ":" in name else name
        return f"https://{name}:{self.port if port is None else port}"


@dataclass(frozen=True)
class LinkSite:
    """One QKD link: its two KMEs (Alice's, Bob's), its physics and how it is fed."""

    link_id: str
    alice_kme: str
    bob_kme: str
    params: LinkParameters
    source: str = SOURCE_SIMULATED
    block_pulses: int = 10_000_000
    block_interval_s: float = 0.0
    cascade_variant: str = "yanetal"
    frame_bits: int = 10_000
    reconciliation: str = "cascade"
    ldpc: tuple[tuple[str, Any], ...] = ()
    keys_dir: Path | None = None
    block_bytes: int = 4096
    channel_listen: str | None = None
    channel_address: tuple[str, int] | None = None
    simulation_seed: int | None = None
    psk_file: Path | None = None

    def side_of(self, kme_id: str) -> str | None:
        """``alice``, ``bob`` or None for a KME not on this link."""
        if kme_id == self.alice_kme:
            return SIDE_ALICE
        if kme_id == self.bob_kme:
            return SIDE_BOB
        return None


@dataclass(frozen=True)
class CorridorSpec:
    """A corridor file, validated."""

    name: str
    kmes: dict[str, KmeSite]
    links: dict[str, LinkSite]
    saes: dict[str, str]
    monitor: dict[str, Any] = field(default_factory=dict)
    pki_dir: Path | None = None
    source_path: str = "(embedded default)"
    quota: QuotaPolicy = field(default_factory=QuotaPolicy)
    hybrid: tuple[HybridPairConfig, ...] = ()
    relay: dict[tuple[str, str], RelayPolicy] = field(default_factory=dict)

    def hybrid_pair(self, sae_x: str, sae_y: str) -> HybridPairConfig:
        """The ``[[hybrid]]`` entry of a pair of SAEs (either order); a pair the file
        does not name gets the defaults with ``sae_x`` as master."""
        for pair in self.hybrid:
            if {pair.master_sae_id, pair.slave_sae_id} == {sae_x, sae_y}:
                return pair
        return HybridPairConfig(sae_x, sae_y)

    def directory(self) -> SaeDirectory:
        """Who is attached where, and the links, as every KME needs it."""
        return SaeDirectory(self.saes, {link.link_id: (link.alice_kme, link.bob_kme)
                                        for link in self.links.values()})

    def kme(self, kme_id: str) -> KmeSite:
        """The KME called ``kme_id`` (ParameterError listing the known ones otherwise)."""
        try:
            return self.kmes[kme_id]
        except KeyError:
            raise ParameterError("--kme", kme_id, f"must be one of {sorted(self.kmes)} "
                                 f"(from {self.source_path})") from None


def _table(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ParameterError(where, value, "must be a TOML table")
    return value


def _unknown(where: str, data: Mapping[str, Any], known: AbstractSet[str]) -> None:
    extra = sorted(set(data) - known)
    if extra:
        raise ParameterError(f"{where}.{extra[0]}", data[extra[0]],
                             f"unknown setting; allowed: {', '.join(sorted(known))}")


def _number(where: str, value: Any, *, integer: bool = False, minimum: float = 0.0) -> Any:
    if integer and isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)  # a count written as TOML's 1e10 (a float), as --pulses 1e10
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        raise ParameterError(where, value,
                             f"must be {'an integer' if integer else 'a number'} >= {minimum:g}")
    return value


def _check_operator_reason(accept_broken_audit: str | None) -> None:
    """``--accept-broken-audit`` takes an operator's reason (it is audited), not blanks."""
    if accept_broken_audit is not None and not accept_broken_audit.strip():
        raise ParameterError("--accept-broken-audit", accept_broken_audit,
                             "must give the operator's reason")


def _path(base: Path, value: Any, where: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ParameterError(where, value, "must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def parse_corridor(data: Mapping[str, Any], base_dir: Path | None = None,
                   source_path: str = "(mapping)") -> CorridorSpec:
    """Validate a parsed corridor file; relative paths are relative to ``base_dir``."""
    base = base_dir if base_dir is not None else Path.cwd()
    _unknown("corridor", data, _TOP_KEYS)
    name = data.get("name", "corridor")
    if not isinstance(name, str) or not name:
        raise ParameterError("name", name, "must be a non-empty string")
    shared = dict(_table("kme", data.get("kme", {})))
    _unknown("kme", shared, KME_SETTING_NAMES | SETTING_NAMES)
    monitor = dict(_table("monitor", data.get("monitor", {})))
    _unknown("monitor", monitor, _MONITOR_KEYS)
    kmes: dict[str, KmeSite] = {}
    entries = data.get("kmes", [])
    if not isinstance(entries, list) or len(entries) < 2:
        raise ParameterError("kmes", entries, "must list at least two [[kmes]] tables")
    for index, raw in enumerate(entries):
        entry = dict(_table(f"kmes[{index}]", raw))
        kme_id = check_id(f"kmes[{index}].id", entry.get("id"))
        if kme_id in kmes:
            raise ParameterError(f"kmes[{index}].id", kme_id, "must be unique")
        where = f"kmes.{kme_id}"
        _unknown(where, entry, KME_SETTING_NAMES | SETTING_NAMES | _KME_NODE_KEYS)
        settings = {k: v for k, v in {**shared, **entry}.items()
                    if k not in _KME_NODE_KEYS and k not in SETTING_NAMES}
        node = {k: v for k, v in entry.items() if k in _KME_NODE_KEYS}
        config = KmeConfig.from_mapping({**settings, "kme_id": kme_id})
        limits = ConnectionLimits.from_mapping({**shared, **entry}, where)
        host = node.get("host", "127.0.0.1")
        if not isinstance(host, str) or not host:
            raise ParameterError(f"{where}.host", host, "must be a host name or IP address")
        port = _number(f"{where}.port", node.get("port", 0), integer=True)
        if port > 65535:
            raise ParameterError(f"{where}.port", port, "must be 0 (any free port) to 65535")
        url = node.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
            raise ParameterError(f"{where}.url", url, "must be an https:// URL")
        store = node.get("store")
        if store is not None and (not isinstance(store, str) or not store):
            raise ParameterError(f"{where}.store", store,
                                 "must be sqlite:///PATH, a file path or postgresql://...")
        if isinstance(store, str) and "://" not in store:
            store = str(_path(base, store, f"{where}.store"))
        kek_env = node.get("kek_env")
        if kek_env is not None and (not isinstance(kek_env, str) or not kek_env):
            raise ParameterError(f"{where}.kek_env", kek_env, "must name an environment variable")
        kmes[kme_id] = KmeSite(
            kme_id=kme_id, site=str(node.get("site", kme_id)), host=host, port=port,
            config=config, url=url, store=store,
            kek_file=_path(base, node["kek_file"], f"{where}.kek_file")
            if "kek_file" in node else None,
            kek_env=kek_env,
            audit_fsync_interval_s=float(_number(f"{where}.audit_fsync_interval_s",
                                                 node.get("audit_fsync_interval_s", 0.0))),
            limits=limits)
    saes: dict[str, str] = {}
    sae_entries = data.get("saes", [])
    if not isinstance(sae_entries, list) or not sae_entries:
        raise ParameterError("saes", sae_entries, "must list at least one [[saes]] table")
    for index, raw in enumerate(sae_entries):
        entry = dict(_table(f"saes[{index}]", raw))
        _unknown(f"saes[{index}]", entry, {"id", "kme"})
        sae_id = check_id(f"saes[{index}].id", entry.get("id"))
        kme_id = str(entry.get("kme"))
        if kme_id not in kmes:
            raise ParameterError(f"saes.{sae_id}.kme", kme_id, f"must be one of {sorted(kmes)}")
        if sae_id in saes:
            raise ParameterError(f"saes[{index}].id", sae_id, "must be unique")
        saes[sae_id] = kme_id
    links: dict[str, LinkSite] = {}
    link_entries = data.get("links", [])
    if not isinstance(link_entries, list) or not link_entries:
        raise ParameterError("links", link_entries, "must list at least one [[links]] table")
    for index, raw in enumerate(link_entries):
        entry = dict(_table(f"links[{index}]", raw))
        _unknown(f"links[{index}]", entry, _LINK_KEYS)
        link = _parse_link(entry, index, kmes, base)
        if link.link_id in links:
            raise ParameterError(f"links[{index}].id", link.link_id, "must be unique")
        links[link.link_id] = link
    spec = CorridorSpec(name=name, kmes=kmes, links=links, saes=saes, monitor=monitor,
                        pki_dir=_path(base, data["pki_dir"], "pki_dir")
                        if "pki_dir" in data else None, source_path=source_path,
                        quota=QuotaPolicy.from_mapping(data.get("quota", {}), saes),
                        hybrid=parse_hybrid_pairs(data.get("hybrid", []), saes),
                        relay=_parse_relay(data.get("relay", []), saes))
    spec.directory()  # one link per KME pair, IDs valid: SaeDirectory checks it
    return spec


def _parse_relay(entries: Any, saes: Mapping[str, str]) -> dict[tuple[str, str], RelayPolicy]:
    """``[[relay]]``: the relay policy of a (master SAE, slave SAE) pair whose KMEs share
    no link (corridor.kms.relay); a pair not named is single-path."""
    if not isinstance(entries, list):
        raise ParameterError("relay", entries, "must be a list of [[relay]] tables")
    policies: dict[tuple[str, str], RelayPolicy] = {}
    for index, raw in enumerate(entries):
        entry = dict(_table(f"relay[{index}]", raw))
        _unknown(f"relay[{index}]", entry, _RELAY_KEYS)
        pair = []
        for name in ("master_sae_id", "slave_sae_id"):
            sae = entry.get(name)
            if sae not in saes:
                raise ParameterError(f"relay[{index}].{name}", sae,
                                     f"must be one of the SAEs {sorted(saes)}")
            pair.append(str(sae))
        if pair[0] == pair[1]:
            raise ParameterError(f"relay[{index}].slave_sae_id", pair[1],
                                 "must differ from master_sae_id")
        key = (pair[0], pair[1])
        if key in policies:
            raise ParameterError(f"relay[{index}]", list(key), "names this pair twice")
        try:
            policies[key] = RelayPolicy(str(entry.get("policy", POLICY_SINGLE_PATH)),
                                        entry.get("paths", 2))
        except ParameterError as exc:
            raise ParameterError(f"relay[{index}].{exc.field.split('.')[-1]}", exc.value,
                                 exc.allowed) from None
    return policies


def _parse_link(entry: Mapping[str, Any], index: int, kmes: Mapping[str, KmeSite],
                base: Path) -> LinkSite:
    link_id = check_id(f"links[{index}].id", entry.get("id"))
    where = f"links.{link_id}"
    ends: dict[str, str] = {}
    for role in ("alice_kme", "bob_kme"):
        value = entry.get(role)
        if not isinstance(value, str) or value not in kmes:
            raise ParameterError(f"{where}.{role}", value, f"must be one of {sorted(kmes)}")
        ends[role] = value
    if ends["alice_kme"] == ends["bob_kme"]:
        raise ParameterError(f"{where}.bob_kme", ends["bob_kme"],
                             "must differ from alice_kme")
    preset_name = entry.get("preset", "modern-snspd")
    if not isinstance(preset_name, str):
        raise ParameterError(f"{where}.preset", preset_name, "must be a preset name")
    overrides = dict(_table(f"{where}.parameters", entry.get("parameters", {})))
    with fields_renamed({"preset": f"{where}.preset", "parameter name": f"{where}.parameters",
                    **{name: f"{where}.parameters.{name}" for name in overrides}}):
        params = preset(preset_name).override(overrides)
    source = entry.get("source", SOURCE_SIMULATED)
    if source not in (SOURCE_SIMULATED, SOURCE_RECORDED):
        raise ParameterError(f"{where}.source", source,
                             f"must be {SOURCE_SIMULATED!r} or {SOURCE_RECORDED!r}")
    keys_dir = None
    if source == SOURCE_RECORDED:
        if "keys_dir" not in entry:
            raise ParameterError(f"{where}.keys_dir", None,
                                 "is required with source = \"recorded\" (the directory "
                                 "`corridor link run --keys-out DIR` wrote)")
        keys_dir = _path(base, entry["keys_dir"], f"{where}.keys_dir")
    block_bytes = _number(f"{where}.block_bytes", entry.get("block_bytes", 4096), integer=True,
                          minimum=2)
    if block_bytes % 2:
        raise ParameterError(f"{where}.block_bytes", block_bytes, "must be even")
    channel_listen, channel_address, simulation_seed = _parse_channel(entry, where, source)
    variant = entry.get("cascade_variant", "yanetal")
    if not isinstance(variant, str):
        raise ParameterError(f"{where}.cascade_variant", variant, "must be a variant name")
    reconciliation = entry.get("reconciliation", "cascade")
    if reconciliation not in ("cascade", "ldpc"):
        raise ParameterError(f"{where}.reconciliation", reconciliation,
                             "must be one of cascade, ldpc")
    ldpc = _parse_ldpc(entry, where)
    block_pulses = _number(f"{where}.block_pulses", entry.get("block_pulses", 1_000_000_000),
                           integer=True, minimum=1)
    if source == SOURCE_SIMULATED:
        _check_finite_key(where, params, int(block_pulses), reconciliation)
    return LinkSite(
        link_id=link_id, alice_kme=ends["alice_kme"], bob_kme=ends["bob_kme"], params=params,
        source=source,
        block_pulses=block_pulses,
        block_interval_s=float(_number(f"{where}.block_interval_s",
                                       entry.get("block_interval_s", 0.0))),
        cascade_variant=variant, reconciliation=reconciliation, ldpc=ldpc,
        frame_bits=_number(f"{where}.frame_bits", entry.get("frame_bits", 10_000),
                           integer=True, minimum=64),
        keys_dir=keys_dir, block_bytes=block_bytes, channel_listen=channel_listen,
        channel_address=channel_address, simulation_seed=simulation_seed,
        psk_file=_path(base, entry["psk_file"], f"{where}.psk_file")
        if "psk_file" in entry else None)


def _parse_ldpc(entry: Mapping[str, Any], where: str) -> tuple[tuple[str, Any], ...]:
    """The link's ``ldpc_*`` keys as DistillConfig fields, checked by ``LdpcSettings``
    (an error names the key in the corridor file)."""
    from corridor.distill.ldpc import settings_named

    fields = tuple((key, entry[key]) for key in ("ldpc_code_bits", "ldpc_efficiency",
                                                 "ldpc_retry_step") if key in entry)
    settings_named(lambda attribute: f"{where}.ldpc_{attribute}",
                   **{key.removeprefix("ldpc_"): value for key, value in fields})
    return fields


def _check_finite_key(where: str, params: LinkParameters, block_pulses: int,
                      reconciliation: str) -> None:
    """Refuse, at start, a simulated link whose settings can never give a finite key: the
    closed-form model (expected counts of one block, Lim et al. 2014 as published, the
    disclosure the reconciliation method is checked against before it runs) says 0, so
    every block would abort and the link sit quarantined."""
    from corridor.distill.pipeline import PRE_CHECK_EFFICIENCY
    from corridor.link.finite_key import finite_key_rate
    from corridor.link.optimize import max_distance_km

    efficiency = PRE_CHECK_EFFICIENCY[reconciliation]
    model = params.override({"reconciliation_efficiency": efficiency})
    if finite_key_rate(model, block_pulses) > 0.0:
        return
    reach = max_distance_km(model.with_length(0.0), "vacuum-weak", block_pulses,
                            optimise_settings=False)
    if reach > 0.0:  # the length is what is too much
        raise ParameterError(
            f"{where}.parameters", f"length_km = {params.fibre.length_km:g}",
            f"gives no finite key in blocks of block_pulses = {block_pulses:.3g} pulses "
            f"(these settings reach {reach:.1f} km with {reconciliation}; every block "
            "would abort)", "shorten the link, raise block_pulses, or change the source "
            "settings")
    # Not even at 0 km. With unlimited blocks and infinite decoys (the asymptotic rate)
    # still no key: the error rate is the cause, and no block size would help.
    from corridor.link.rates import error_rate, qber_threshold, secret_key_rate

    at_zero = model.with_length(0.0)
    if secret_key_rate(at_zero, "infinite") <= 0.0:
        qber = error_rate(at_zero, params.source.signal_intensity)
        raise ParameterError(
            f"{where}.parameters", f"QBER {qber:.2%} at 0 km",
            f"gives no key at any length or block size (not even asymptotically, with "
            f"infinite decoys: one-way post-processing with {reconciliation} stops near a "
            f"QBER of {qber_threshold(efficiency):.1%}; every block would abort)",
            "lower misalignment_error or dark_count_probability in [links.parameters]")
    # The block size or the source and basis settings are the cause.
    raise ParameterError(
        f"{where}.block_pulses", block_pulses,
        f"gives no finite key at any length with these settings ({params.name}, "
        f"{reconciliation}; every block would abort)", "raise block_pulses, or set the "
        "intensities and the basis and class probabilities in [links.parameters] (the "
        "preset's are tuned for its own block size)")


def _parse_channel(entry: Mapping[str, Any], where: str, source: str
                   ) -> tuple[str | None, tuple[str, int] | None, int | None]:
    """The TCP classical channel of a simulated link split over two KME processes:
    ``channel_listen`` (which side listens), ``channel_address`` (``HOST:PORT``) and
    ``simulation_seed``, all three or none."""
    from corridor.distill.transport import parse_host_port

    names = ("channel_listen", "channel_address", "simulation_seed")
    given = [name for name in names if name in entry]
    if not given:
        return None, None, None
    if source != SOURCE_SIMULATED:
        raise ParameterError(f"{where}.{given[0]}", entry[given[0]],
                             "is only for source = \"simulated\"")
    missing = [name for name in names if name not in entry]
    if missing:
        raise ParameterError(f"{where}.{missing[0]}", None,
                             f"is required with {', '.join(given)} (a split simulated link "
                             f"needs {', '.join(names)})")
    listen_side = entry["channel_listen"]
    if listen_side not in (SIDE_ALICE, SIDE_BOB):
        raise ParameterError(f"{where}.channel_listen", listen_side,
                             f"must be {SIDE_ALICE!r} or {SIDE_BOB!r}")
    address_text = entry["channel_address"]
    if not isinstance(address_text, str):
        raise ParameterError(f"{where}.channel_address", address_text, "must be \"HOST:PORT\"")
    address = parse_host_port(address_text, f"{where}.channel_address")
    seed = _number(f"{where}.simulation_seed", entry["simulation_seed"], integer=True)
    return listen_side, address, seed


def load_embedded(name: str) -> CorridorSpec:
    """One of the corridors embedded in the package (:data:`EMBEDDED_CORRIDORS`)."""
    if name not in EMBEDDED_CORRIDORS:
        raise ParameterError("--embedded", name, f"one of {sorted(EMBEDDED_CORRIDORS)}")
    resource = importlib.resources.files("corridor.kms").joinpath(EMBEDDED_CORRIDORS[name])
    text = resource.read_text(encoding="utf-8")
    where = Path(str(resource))
    return parse_corridor(tomllib.loads(text), Path.cwd(),
                          str(where) if where.is_file() else f"(embedded {name})")


def load_corridor(path: str | os.PathLike[str] | None = None) -> CorridorSpec:
    """Read a corridor file, or the embedded two-site default when ``path`` is None."""
    if path is None:
        text = importlib.resources.files("corridor.kms").joinpath(
            DEFAULT_CORRIDOR_RESOURCE).read_text(encoding="utf-8")
        return parse_corridor(tomllib.loads(text), Path.cwd(), "(embedded default)")
    file = Path(path)
    data = read_toml(file, "--config", "corridor TOML file")
    return parse_corridor(data, file.resolve().parent, str(file))


# ---------------------------------------------------------------------------------------
# PKI


def load_pki(pki_dir: Path) -> PkiLayout:
    """The layout ``corridor pki init`` (or :func:`init_pki`) wrote, from its manifest."""
    manifest = pki_dir / MANIFEST_NAME
    try:
        data = json.loads(manifest.read_text())
    except FileNotFoundError:
        raise ParameterError("pki_dir", str(pki_dir),
                             f"must hold {MANIFEST_NAME}; create it with `corridor pki init`") \
            from None
    except (OSError, ValueError) as exc:
        raise ParameterError("pki_dir", str(manifest), "must be a readable pki.json",
                             type(exc).__name__) from None
    root = pki_dir.resolve()

    def paths(entry: Mapping[str, str]) -> CertificatePaths:
        return CertificatePaths(root / entry["cert"], root / entry["key"])

    return PkiLayout(root=root, ca_cert=root / data["ca_cert"], ca_key=root / "ca.key",
                     kmes={k: paths(v) for k, v in data["kmes"].items()},
                     saes={s: paths(v) for s, v in data["saes"].items()},
                     sae_kme={s: v["kme_id"] for s, v in data["saes"].items()},
                     operators={o: paths(v) for o, v in data.get("operators", {}).items()},
                     dashboards={d: paths(v) for d, v in data.get("dashboards", {}).items()})


def ensure_pki(spec: CorridorSpec, pki_dir: Path) -> PkiLayout:
    """Create the corridor's PKI under ``pki_dir`` on first use, else load it and check it
    covers every KME and SAE of the corridor. It holds an operator certificate
    (:data:`UP_OPERATOR`, for ``/metrics``, ``corridor alarm`` and the dashboard) and a
    dashboard server certificate (:data:`UP_DASHBOARD`); a PKI made before those existed
    gets them issued by its CA."""
    if not (pki_dir / MANIFEST_NAME).exists():
        return init_pki(pki_dir, list(spec.kmes), list(spec.saes.items()),
                        operators=[UP_OPERATOR], dashboards=[UP_DASHBOARD])
    layout = load_pki(pki_dir)
    if not layout.operators and layout.ca_key.exists():
        layout = add_entity(layout, ROLE_OPERATOR, UP_OPERATOR)
    if not layout.dashboards and layout.ca_key.exists():
        layout = add_entity(layout, ROLE_DASHBOARD, UP_DASHBOARD)
    missing = sorted((set(spec.kmes) - set(layout.kmes)) | (set(spec.saes) - set(layout.saes)))
    if missing:
        raise ParameterError("pki_dir", str(pki_dir),
                             f"has no certificate for {missing}; use a fresh --workdir or "
                             "re-create the PKI with `corridor pki init --force`")
    return layout


# ---------------------------------------------------------------------------------------
# One KME


def monitor_for(spec: CorridorSpec, events: EventSink) -> LinkMonitor:
    """The corridor's LinkMonitor with the thresholds of its ``[monitor]`` table."""
    return LinkMonitor(events, **spec.monitor)


class KmeNode:
    """One KME of a corridor, assembled and served (module docstring).

    Args:
        spec: the corridor.
        kme_id: which of its KMEs this is.
        workdir: where this KME keeps its state by default: ``<workdir>/<kme_id>/``
            holds ``store.sqlite``, ``kek.hex`` (created 0600 on first start) and
            ``audit.jsonl``.
        pki: the corridor's certificates.
        peer_urls: base URL of each peer KME (default: from the corridor file).
        sock: a socket from :func:`~corridor.kms.tls.bind_socket` to serve on (default:
            bind the KME's host and port).
        public_url: the base URL SAEs and peers use (default: from host and bound port).
        accept_broken_audit: an operator's reason to start although the audit chain does
            not verify (recorded as ``audit_chain_broken_accepted``); without it such a
            KME refuses to start.
        limits: the server's connection limits with a concrete cap (default: the
            corridor file's, the cap sized from the open-file limit, which is raised to
            its hard limit first; :class:`Corridor` sizes its KMEs' caps together).
        worker: this process's name among several workers of the KME on one PostgreSQL
            store (docs/ha.md): its own audit chain ``audit-<worker>.jsonl``, the port
            bound with ``SO_REUSEPORT``, only old pending reservations discarded at start
            (:mod:`corridor.kms.ha`). None: the only process of this KME.
    """

    def __init__(self, spec: CorridorSpec, kme_id: str, workdir: Path, pki: PkiLayout, *,
                 peer_urls: Mapping[str, str] | None = None,
                 sock: socket.socket | None = None, public_url: str | None = None,
                 accept_broken_audit: str | None = None,
                 limits: ConnectionLimits | None = None, worker: str | None = None) -> None:
        self.spec = spec
        self.site = spec.kme(kme_id)
        self.worker = None if worker is None else check_worker(worker)
        self._kme_lock: int | None = None  # kme.lock's descriptor while open
        if self.worker is not None:
            require_shared_store(kme_id, self.site.store)
        self.kme_id = kme_id
        self.state_dir = workdir / kme_id
        self.pki = pki
        if kme_id not in pki.kmes:
            raise ParameterError("--kme", kme_id, f"has no certificate in {pki.root}")
        self._peer_urls = dict(peer_urls or {})
        self._sock = sock
        self._stack = ExitStack()
        self.url: str | None = public_url
        self.manager: KeyManager | None = None
        self.metrics = KmsMetrics()
        self.audit: AuditLog | None = None
        self.audit_follower: AuditFollower | None = None
        self.events: EventSink = FanOutEventSink()
        self.pending_discarded = 0
        self.unfinished_resolved = 0
        # The operator's view of this KME's links; the monitor judging them and their
        # feeders are attached once they exist (Corridor.start, `corridor kme serve`).
        self.alarm_desk = AlarmDesk(kme_id, [link.link_id for link in
                                             spec.directory().links_of(kme_id)])
        _check_operator_reason(accept_broken_audit)
        self.accept_broken_audit = accept_broken_audit
        self._limits = limits
        self.refusals = RefusalReporter(
            kme_id, count=lambda reason: self.metrics.connections_refused.labels(
                kme_id, reason).inc())
        self.rejections: RejectionAggregator | None = None

    @property
    def audit_path(self) -> Path:
        """This KME's audit log (this worker's, with several workers)."""
        if self.worker is not None:
            return worker_audit_path(self.state_dir, self.worker)
        return self.state_dir / "audit.jsonl"

    @property
    def kek_path(self) -> Path | None:
        """This KME's KEK file (None when the KEK comes from an environment variable)."""
        if self.site.kek_env is not None:
            return None
        return self.site.kek_file or self.state_dir / "kek.hex"

    @property
    def store_url(self) -> str:
        """Where this KME's store lives."""
        return self.site.store or str(self.state_dir / "store.sqlite")

    def _kek(self) -> bytes:
        if self.site.kek_env is not None:
            return load_kek(None, self.site.kek_env)
        path = self.kek_path
        assert path is not None
        if not path.exists():
            if self.audit_path.exists():  # a KEK made now could open nothing already here
                field = (f"kmes.{self.kme_id}.kek_file" if self.site.kek_file is not None
                         else "kek_file")
                raise ParameterError(field, str(path), "must exist: this KME's audit log "
                                     f"{self.audit_path} was made under a KEK",
                                     "give the KEK file it was made with")
            path.parent.mkdir(parents=True, exist_ok=True)
            write_kek_file(path)
        return load_kek(path)

    def open_manager(self) -> KeyManager:
        """Open store, KEK, audit log and metrics; build the KeyManager; discard pending
        reservations (their IDs never reached a master SAE, docs/kms-store.md)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        if self.worker is not None:
            self._stack.callback(os.close, hold_worker_lock(self.state_dir, self.worker))
        else:  # one process per KME state: two would append to one audit chain
            try:
                self._kme_lock = hold_pid_lock(self.state_dir / KME_LOCK_FILE_NAME)
            except LockHeldError as exc:
                raise ParameterError("--workdir", str(self.state_dir.parent),
                                     f"already holds KME {self.kme_id}, served by pid "
                                     f"{exc.holder}; stop that one or choose another "
                                     "working directory") from None
            self._stack.callback(self._release_kme_lock)
        try:
            return self._open_manager_locked()
        except BaseException:  # a start that failed (a broken chain) leaves no lock held
            self._release_kme_lock()
            raise

    def _release_kme_lock(self) -> None:
        fd, self._kme_lock = self._kme_lock, None
        if fd is not None:
            os.close(fd)

    def _open_manager_locked(self) -> KeyManager:
        kek = self._kek()
        self.audit = AuditLog(self.audit_path, kek,
                              fsync_interval_s=self.site.audit_fsync_interval_s)
        self._stack.callback(self.audit.close)
        # The last entry of a clean stop, once the server, the store and the summaries of
        # refused requests are done (callbacks run in reverse order).
        self._stack.callback(self._record_stop)
        # The whole chain, not only its tail; on the way, the deliveries a crash or a
        # full disk left without an outcome (their intents, corridor.kms.manager).
        journal = DeliveryJournal()
        marks = HighWaterMarks()
        # What the operator's view reads: the chain followed on from this check.
        follower = self.audit_follower = AuditFollower(self.audit_path, kek)

        def observe(entry: dict[str, Any]) -> None:
            journal.observe(entry)
            marks.observe(entry)
            follower.seed(entry)

        chain = verify_audit_log(self.audit_path, kek, on_entry=observe)
        if not chain.ok and self.accept_broken_audit is None:
            raise AuditLogError(
                f"audit log {self.audit_path} is broken at seq {chain.first_bad_seq}: "
                f"{chain.reason}; inspect it with `corridor audit verify`, and start with "
                "--accept-broken-audit REASON only once you know why")
        if self.worker is not None:
            # The store is shared: it must be as far as every worker's chain says.
            for warning in observe_sibling_chains(
                    sibling_audit_paths(self.state_dir, self.audit_path), kek, marks):
                _log.warning("KME %s worker %s: %s", self.kme_id, self.worker, warning)
        # Floods of refused requests reach the audit trail as summaries, every one of
        # them the metrics (corridor.kms.rejections); pending counts are written before
        # the audit log closes.
        self.rejections = RejectionAggregator(self.audit)
        self._stack.callback(self.rejections.close)
        self.events = FanOutEventSink(self.rejections, MetricsEventSink(self.metrics))
        store: KeyStore = open_store(self.store_url, kek, kme_id=self.kme_id)
        self._stack.callback(store.close)
        del kek
        quotas = None if self.spec.quota.unlimited else SaeQuotas(self.spec.quota)
        manager = KeyManager(self.site.config, self.spec.directory(), store, events=self.events,
                             quotas=quotas)
        manager.check_store_against(marks)  # anti-rollback, before anything is served
        self.manager = manager
        self.events.emit("kme_started", kme_id=self.kme_id, pid=os.getpid(),
                         **({"worker": self.worker} if self.worker is not None else {}))
        if not chain.ok:
            _log.warning("KME %s started on a broken audit chain (seq %s: %s), accepted by "
                         "the operator: %s", self.kme_id, chain.first_bad_seq, chain.reason,
                         self.accept_broken_audit)
            self.events.emit("audit_chain_broken_accepted", kme_id=self.kme_id,
                             first_bad_seq=chain.first_bad_seq, fault=chain.reason,
                             operator_reason=self.accept_broken_audit)
        # Another worker's request in flight holds pending rows younger than the grace.
        self.pending_discarded = manager.resolve_pending(
            PENDING_GRACE_S if self.worker is not None else 0.0)
        self.unfinished_resolved = manager.resolve_unfinished(journal.unfinished)
        self.metrics.add_pool_source(self._pool_samples)
        return manager

    def _pool_samples(self) -> list[PoolSample]:
        manager = self.manager
        if manager is None:
            return []
        size = manager.config.key_size_bytes
        return [PoolSample(kme_id=self.kme_id, link_id=state.link_id, direction=state.direction,
                           stored_keys=min(state.available_bytes // size,
                                           manager.config.max_key_count),
                           available_bits=8 * state.available_bytes,
                           max_keys=manager.config.max_key_count)
                for state in manager.pool_states()]

    def start(self) -> str:
        """Open everything and serve; returns the base URL."""
        try:
            # The port first: a port in use must not leave a new KEK, store and audit
            # entry behind, and is named as the corridor file's field.
            sock = self._sock
            if sock is None:
                where = f"kmes.{self.kme_id}"
                with fields_renamed({"port": f"{where}.port", "host": f"{where}.host"}):
                    sock = bind_socket(self.site.host, self.site.port,
                                       reuse_port=self.worker is not None)
                self._stack.callback(sock.close)
            manager = self.open_manager()
            paths = self.pki.kmes[self.kme_id]
            for link in self.spec.directory().links_of(self.kme_id):
                peer_id = link.other(self.kme_id)
                peer_url = self._peer_urls.get(peer_id) or self.spec.kme(peer_id).base_url()
                peer = HttpsPeerLink(peer_url, cert=paths.cert, key=paths.key,
                                     ca=self.pki.ca_cert, peer_kme_id=peer_id,
                                     tls_groups=self.site.limits.tls_groups)
                self._stack.callback(peer.close)
                manager.set_peer(peer_id, peer)
            manager.relay = RelayEngine(manager, self._own_snapshot(manager),
                                        self.spec.relay)
            app = create_app(manager, metrics=self.metrics,
                             peer_acceptor=manager.accept_reservations,
                             peer_sync=manager.accept_sync,
                             alarms=self.alarm_desk, relay=manager.relay,
                             audit=self.audit_follower)
            limits = self._limits or check_file_budget(
                {self.kme_id: self.site.limits}, raise_open_file_limit())[self.kme_id]
            server = self._stack.enter_context(running_server(
                app, paths.cert, paths.key, self.pki.ca_cert, sock=sock, limits=limits,
                reporter=self.refusals, on_handshake=self._count_handshake))
            if server.guard is not None:
                guard = server.guard
                self.metrics.connections_open.labels(self.kme_id).set_function(
                    lambda: guard.open_count)
            if self.url is None:
                self.url = self.site.base_url(server.port)
            self._start_housekeeping(manager)
        except BaseException:
            self.close()
            raise
        return self.url

    def _own_snapshot(self, manager: KeyManager) -> SnapshotProvider:
        """The network as one KME process sees it (``corridor kme serve``): its own
        pools live, the others' counted as full (it cannot see them), links its alarm
        desk holds quarantined out of service. ``corridor up`` replaces it with every
        KME's live pools (:meth:`Corridor.start`)."""
        directory = manager.directory
        links = sorted((link.link_id, link.alice_kme, link.bob_kme)
                       for link in self.spec.links.values())
        kmes = sorted(self.spec.kmes)

        def pool_bits(link_id: str, from_kme: str) -> float | None:
            spec = directory.link(link_id)
            if from_kme != self.kme_id or spec is None:
                return None
            return 8.0 * manager.store.pool_state(
                link_id, spec.direction_from(from_kme)).available_bytes

        def quarantined(link_id: str) -> bool:
            return any(item.get("link_id") == link_id and item.get("state") == "quarantined"
                       for item in self.alarm_desk.links())

        return lambda: snapshot_from_pools(kmes, links, pool_bits, quarantined)

    def relays(self) -> list[dict[str, Any]]:
        """Relays in flight at this KME and the last ones that ended."""
        manager = self.manager
        if manager is None or manager.relay is None:
            return []
        return [{"kme_id": self.kme_id, **relay} for relay in manager.relay.relays()]

    def _count_handshake(self, group: str) -> None:
        self.metrics.tls_handshakes.labels(self.kme_id, group).inc()

    def _start_housekeeping(self, manager: KeyManager) -> None:
        """Expire keys nobody fetched and sync with the peers (withdraw, trim), a few
        seconds after start and then every quarter of the key lifetime (at most every
        minute); in between, probe an unreachable peer at its retry times so that the
        outage ends (and Status counts keys again) without waiting for a request, and
        write the due summaries of refused requests. Stopped and joined before the store
        closes."""
        stop = threading.Event()
        interval_s = min(60.0, manager.config.undelivered_key_lifetime_s / 4.0)

        rejections = self.rejections

        def run() -> None:
            # The first round waits a little: at start the peer may not listen yet.
            next_round = time.monotonic() + min(interval_s, 5.0)
            while True:
                try:
                    if time.monotonic() >= next_round:
                        manager.expire_undelivered()
                        manager.sync_peers()
                        if manager.relay is not None:
                            manager.relay.retry_voids()
                        next_round = time.monotonic() + interval_s
                    else:
                        manager.probe_peers()
                except Exception as exc:  # a bug must not end the thread silently
                    _log.error("housekeeping at KME %s failed: %s", self.kme_id,
                               type(exc).__name__)
                # Summaries of refused requests are due once per interval even when no
                # further event arrives to write them.
                if rejections is not None:
                    try:
                        rejections.flush()
                    except Exception as exc:
                        _log.error("audit summary at KME %s failed: %s", self.kme_id,
                                   type(exc).__name__)
                wait_s = min(next_round - time.monotonic(), 1.0)
                probe_in = manager.next_probe_in_s()
                if probe_in is not None:
                    wait_s = min(wait_s, probe_in)
                if stop.wait(max(0.05, wait_s)):
                    return

        thread = threading.Thread(target=run, name=f"{self.kme_id}-expiry", daemon=True)
        thread.start()

        def halt() -> None:
            stop.set()
            thread.join(timeout=30.0)

        self._stack.callback(halt)

    def pools(self) -> list[dict[str, Any]]:
        """Public figures of this KME's pools (for status displays)."""
        manager = self.manager
        if manager is None:
            return []
        size = manager.config.key_size_bytes
        out = []
        for state in manager.pool_states():
            link = manager.directory.link(state.link_id)
            master = link.master_kme(state.direction) if link is not None else ""
            out.append({"kme_id": self.kme_id, "link_id": state.link_id,
                        "direction": state.direction, "role": "master"
                        if master == self.kme_id else "slave",
                        "stored_keys": min(state.available_bytes // size,
                                           manager.config.max_key_count),
                        "max_keys": manager.config.max_key_count,
                        "available_bytes": state.available_bytes})
        return out

    def close(self) -> None:
        """Stop serving, close peer links, the store and the audit log (in that order)."""
        self._stack.close()
        self.manager = None

    def _record_stop(self) -> None:
        if self.manager is not None:
            with contextlib.suppress(Exception):
                self.events.emit("kme_stopped", kme_id=self.kme_id, pid=os.getpid())

    def __repr__(self) -> str:
        return f"KmeNode(kme_id={self.kme_id!r}, url={self.url!r})"


# ---------------------------------------------------------------------------------------
# The embedded corridor


def make_source(link: LinkSite, sides: tuple[str, ...], *,
                rng: RandomSource | None = None, slots: BlockSlots | None = None) -> KeySource:
    """The KeySource of ``link``: the simulated link, or its recorded key files
    (``sides`` picks which parties' files this process reads); ``slots`` shares the CPU
    among the simulated links of one process."""
    if link.source == SOURCE_RECORDED:
        assert link.keys_dir is not None
        return RecordedKeyFileSource.from_directory(link.link_id, link.keys_dir,
                                                    link.block_bytes, sides=sides,
                                                    block_interval_s=link.block_interval_s)
    from corridor.distill.pipeline import (
        DistillConfig,
        RandomStreams,
        pre_shared_key,
        read_psk_file,
    )

    config = DistillConfig.for_link(link.params, link_id=link.link_id,
                                    cascade_variant=link.cascade_variant,
                                    frame_bits=link.frame_bits,
                                    reconciliation=link.reconciliation, channel_timeout_s=30.0,
                                    **dict(link.ldpc))
    if set(sides) == {SIDE_ALICE, SIDE_BOB}:
        return SimulatedLinkSource(link.params, link_id=link.link_id,
                                   block_pulses=link.block_pulses, config=config, rng=rng,
                                   block_interval_s=link.block_interval_s, slots=slots)
    if len(sides) != 1 or sides[0] not in (SIDE_ALICE, SIDE_BOB):
        raise ParameterError("sides", list(sides), f"must name {SIDE_ALICE!r}, {SIDE_BOB!r} "
                             "or both")
    if link.channel_address is None or link.simulation_seed is None:
        raise ParameterError(f"links.{link.link_id}.channel_address", None,
                             "is required to run one side of a simulated link in a KME "
                             "process (with channel_listen and simulation_seed, "
                             "docs/corridor-up.md); `corridor up` runs both sides in one "
                             "process")
    # The psk_file both sites hold, else (simulation only) a key drawn from the simulation
    # seed, as `corridor link run --role`; each session's pool is derived from it
    # (session_auth_key), so the file need not be a pool's size.
    psk = (read_psk_file(link.psk_file) if link.psk_file is not None else
           pre_shared_key(RandomStreams.from_seed(link.simulation_seed), config)[0])
    return SimulatedLinkPartySource(
        link.params, link_id=link.link_id, role=sides[0], address=link.channel_address,
        listen=sides[0] == link.channel_listen, simulation_seed=link.simulation_seed,
        psk=psk, block_pulses=link.block_pulses, config=config, rng=rng,
        block_interval_s=link.block_interval_s)


def own_link_feeder_factories(spec: CorridorSpec, kme_id: str, manager: KeyManager,
                              events: EventSink, monitor: LinkMonitor,
                              ) -> tuple[dict[str, Callable[[], LinkFeeder]], list[str]]:
    """How to build the feeder of this KME's side of each of its links, by link ID (a
    fresh feeder each call: the workers of one KME build one whenever they take over a
    link's feeder lease, :mod:`corridor.kms.ha`), and the IDs of the links one KME
    process cannot feed (as :func:`own_link_feeders`)."""
    factories: dict[str, Callable[[], LinkFeeder]] = {}
    skipped: list[str] = []
    for link in spec.links.values():
        side = link.side_of(kme_id)
        if side is None:
            continue
        if link.source == SOURCE_SIMULATED and link.channel_address is None:
            skipped.append(link.link_id)
            continue

        def build(link: LinkSite = link, side: str = side) -> LinkFeeder:
            return LinkFeeder(make_source(link, (side,)),
                              manager if side == SIDE_ALICE else None,
                              manager if side == SIDE_BOB else None, monitor, events)

        factories[link.link_id] = build
    return factories, skipped


def own_link_feeders(spec: CorridorSpec, kme_id: str, manager: KeyManager,
                     events: EventSink, monitor: LinkMonitor | None = None,
                     ) -> tuple[list[LinkFeeder], list[str]]:
    """The feeders of one KME process (``corridor kme serve``): this KME's side of each of
    its links, one LinkMonitor for them all (``monitor``, default a new one on
    ``events``); not started.

    Returns the feeders and the IDs of the links this process cannot feed (a simulated
    link without a TCP channel runs only in ``corridor up``).
    """
    if monitor is None:
        monitor = monitor_for(spec, events)
    factories, skipped = own_link_feeder_factories(spec, kme_id, manager, events, monitor)
    return [build() for build in factories.values()], skipped


class Corridor:
    """Every KME of a corridor in this process, fed by its links (``corridor up``).

    Args:
        spec: the corridor.
        workdir: state of every KME (``<workdir>/<kme_id>/``), the PKI
            (``<workdir>/pki`` unless the file names ``pki_dir``) and ``corridor-up.json``.
        host: overrides every KME's host (``corridor up`` binds 127.0.0.1).
        rng: randomness of the simulated links (default: OS CSPRNG).
        accept_broken_audit: an operator's reason to start a KME whose audit chain does
            not verify (as ``corridor kme serve --accept-broken-audit``; audited there).
    """

    def __init__(self, spec: CorridorSpec, workdir: Path, *, host: str | None = None,
                 rng: RandomSource | None = None,
                 accept_broken_audit: str | None = None) -> None:
        _check_operator_reason(accept_broken_audit)
        self.accept_broken_audit = accept_broken_audit
        self.spec = spec
        self.workdir = workdir.resolve()
        self.host = host
        self._rng = rng
        self.nodes: dict[str, KmeNode] = {}
        self.feeders: dict[str, LinkFeeder] = {}
        self.monitor: LinkMonitor | None = None
        self.pki: PkiLayout | None = None
        self.started_at = dt.datetime.now(dt.UTC)
        self._lock_fd: int | None = None
        # What layers below kms add to corridor-up.json (the hybrid sessions of
        # `corridor up`); written with the next write_up_file().
        self.up_extra: dict[str, Any] = {}

    @property
    def up_file(self) -> Path:
        """The ``corridor-up.json`` this corridor writes."""
        return self.workdir / UP_FILE_NAME

    def start(self) -> None:
        """Start every KME (peers known before any serves), then every link's feeder,
        then write ``corridor-up.json``."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._lock_workdir()
            self.pki = ensure_pki(self.spec, self.spec.pki_dir or self.workdir / "pki")
            # One process holds every KME's connections: their caps share its open-file
            # limit (docs/kms-operations.md, "Connection floods").
            limits = check_file_budget({kme_id: site.limits
                                        for kme_id, site in self.spec.kmes.items()},
                                       raise_open_file_limit())
            sockets: dict[str, socket.socket] = {}
            urls: dict[str, str] = {}
            remembered = self._remembered_ports()
            for kme_id, site in self.spec.kmes.items():
                # Every port is known before any KME starts: each needs its peers' URLs.
                sock = self._bind(kme_id, site, remembered.get(kme_id))
                sockets[kme_id] = sock
                urls[kme_id] = site.base_url(sock.getsockname()[1], self.host)
            self._remember_ports({kme_id: int(sock.getsockname()[1])
                                  for kme_id, sock in sockets.items()})
            for kme_id in self.spec.kmes:
                node = KmeNode(self.spec, kme_id, self.workdir, self.pki, peer_urls=urls,
                               sock=sockets.pop(kme_id), public_url=urls[kme_id],
                               limits=limits[kme_id],
                               accept_broken_audit=self.accept_broken_audit)
                self.nodes[kme_id] = node
                node.start()
            # A link's block, alarm and quarantine events go to the audit trails of its
            # two KMEs only, as with one `kme serve` per site.
            self.monitor = monitor_for(self.spec, ByLinkEventSink(
                {link.link_id: FanOutEventSink(self.nodes[link.alice_kme].events,
                                               self.nodes[link.bob_kme].events)
                 for link in self.spec.links.values()},
                FanOutEventSink(*(node.events for node in self.nodes.values()))))
            # One block in work per core across the simulated links: each finishes its
            # block at full speed and in turn (first keys in seconds, not a minute).
            slots = BlockSlots(max(1, len(os.sched_getaffinity(0))))
            for link in self.spec.links.values():
                alice, bob = self.nodes[link.alice_kme], self.nodes[link.bob_kme]
                feeder = LinkFeeder(make_source(link, (SIDE_ALICE, SIDE_BOB), rng=self._rng,
                                                slots=slots),
                                    alice.manager, bob.manager, self.monitor,
                                    FanOutEventSink(alice.events, bob.events))
                self.feeders[link.link_id] = feeder
            for node in self.nodes.values():
                node.alarm_desk.attach(self.monitor, self.feeders)
            # Every KME runs here: relays route by every pool's live level.
            monitor = self.monitor
            provider = local_snapshot(
                {kme_id: node.manager for kme_id, node in self.nodes.items()
                 if node.manager is not None},
                quarantined=lambda link_id: monitor.health(link_id).quarantined)
            for node in self.nodes.values():
                if node.manager is not None and node.manager.relay is not None:
                    node.manager.relay.snapshot = provider
            for feeder in self.feeders.values():
                feeder.start()
            self.write_up_file()
        except BaseException:
            for sock in locals().get("sockets", {}).values():
                sock.close()
            self.close()
            raise

    @property
    def ports_file(self) -> Path:
        """Where the ports chosen for KMEs with ``port = 0`` are remembered."""
        return self.workdir / "ports.json"

    def _remembered_ports(self) -> dict[str, int]:
        try:
            data = json.loads(self.ports_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): int(v) for k, v in data.items()
                if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536}

    def _remember_ports(self, ports: Mapping[str, int]) -> None:
        tmp = self.ports_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dict(ports), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.ports_file)

    def _bind(self, kme_id: str, site: KmeSite, remembered: int | None) -> socket.socket:
        """The KME's socket: its configured port; for ``port = 0`` the port it had the
        last time in this working directory (so SAEs' URLs survive a restart), or any
        free one when that is taken now (said in a warning)."""
        host = self.host or site.host
        if site.port == 0 and remembered is not None:
            try:
                return bind_socket(host, remembered)
            except (OSError, ParameterError):
                _log.warning("port %d that KME %s had before is taken; it serves on another "
                             "port now (corridor-up.json has its URL)", remembered, kme_id)
        return bind_socket(host, site.port)

    def _lock_workdir(self) -> None:
        """Refuse a second corridor on the same state: two feeders would fight over the
        same streams. The lock is released when this process ends, however it ends."""
        try:
            self._lock_fd = hold_pid_lock(self.workdir / LOCK_FILE_NAME)
        except LockHeldError as exc:
            raise ParameterError("--workdir", str(self.workdir),
                                 f"is in use by another corridor (pid {exc.holder}); stop it "
                                 "or choose another working directory") from None

    def up_description(self) -> dict[str, Any]:
        """What ``corridor-up.json`` holds (paths relative to the working directory)."""
        assert self.pki is not None

        def rel(path: Path) -> str:
            try:
                return str(path.resolve().relative_to(self.workdir))
            except ValueError:
                return str(path.resolve())

        return {
            "name": self.spec.name,
            "config": str(Path(str(self.spec.source_path)).resolve())
            if Path(str(self.spec.source_path)).is_file() else None,
            "pid": os.getpid(),
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "ca_cert": rel(self.pki.ca_cert),
            "kmes": [{"kme_id": kme_id, "base_url": node.url, "site": node.site.site,
                      "store": rel(Path(node.store_url)) if "://" not in node.store_url
                      else "postgresql",
                      "audit_log": rel(node.audit_path),
                      "kek_file": rel(node.kek_path) if node.kek_path else None}
                     for kme_id, node in self.nodes.items()],
            "saes": [{"sae_id": sae_id, "kme_id": kme_id,
                      "cert": rel(self.pki.saes[sae_id].cert),
                      "key": rel(self.pki.saes[sae_id].key),
                      "ca_cert": rel(self.pki.ca_cert)}
                     for sae_id, kme_id in self.spec.saes.items()],
            "operators": [{"name": name, "cert": rel(paths.cert), "key": rel(paths.key),
                           "ca_cert": rel(self.pki.ca_cert)}
                          for name, paths in self.pki.operators.items()],
            "links": [{"link_id": link.link_id, "alice_kme": link.alice_kme,
                       "bob_kme": link.bob_kme, "source": link.source,
                       "preset": link.params.name, "length_km": link.params.fibre.length_km}
                      for link in self.spec.links.values()],
            **self.up_extra,
        }

    def write_up_file(self) -> Path:
        """Write ``corridor-up.json`` atomically (readers never see half a file)."""
        data = json.dumps(self.up_description(), indent=2) + "\n"
        partial = self.up_file.with_suffix(".json.partial")
        partial.write_text(data)
        os.replace(partial, self.up_file)
        return self.up_file

    def status(self, *, dead_after_s: float = DEFAULT_LINK_DEAD_AFTER_S) -> dict[str, Any]:
        """Pools, links (state, QBER, key rate, alarms) and feeders, as plain data.

        A link's ``state`` is ``ok``, ``starting``, ``pool_full``, ``quarantined`` or
        ``dead`` (:mod:`corridor.kms.operator`); ``last_block_age_s`` is None before the
        first block."""
        links = []
        for link_id, feeder in self.feeders.items():
            health: LinkHealth | None = self.monitor.health(link_id) if self.monitor else None
            now = time.monotonic()
            elapsed_s = max(1e-9, now - feeder.stats.started_at_monotonic_s)
            quarantined = bool(health and health.quarantined)
            state, age_s = feeder_state(feeder, quarantined, now_s=now,
                                        dead_after_s=dead_after_s)
            links.append({
                "link_id": link_id, **feeder.stats.as_dict(),
                "running": feeder.running, "state": state, "last_block_age_s": age_s,
                "stored_bits_per_second_wall": 8 * feeder.stats.bytes_stored / elapsed_s,
                "quarantined": quarantined,
                "alarms": [{"kind": a.kind, "reason": a.reason, "latched": a.latched,
                            "block_id": a.block_id}
                           for a in (health.active_alarms if health else ())]})
        return {"pools": [pool for node in self.nodes.values() for pool in node.pools()],
                "links": links,
                "relays": [relay for node in self.nodes.values() for relay in node.relays()]}

    def close(self) -> None:
        """Stop feeders, then KMEs; every thread joined, every store and log closed."""
        for feeder in self.feeders.values():
            with contextlib.suppress(Exception):
                feeder.stop()
        for node in reversed(list(self.nodes.values())):
            node.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Corridor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["Corridor", "CorridorSpec", "KmeNode", "KmeSite", "LinkSite",
           "ensure_pki", "load_corridor", "load_embedded", "load_pki", "make_source", "monitor_for",
           "own_link_feeder_factories", "own_link_feeders", "parse_corridor"]
