"""Corridor's own deployment as crypto assets: the QKD links, the KMEs' TLS, the hybrid
sessions, the stores and audit chains, the V2X PSK stream and the fleet enclave.

Two inputs describe a deployment: the corridor TOML (``[[kmes]]``, ``[[links]]``,
``[[hybrid]]``; :func:`corridor.kms.node.parse_corridor` validates it) and the
``corridor-up.json`` that ``corridor up`` writes (KME URLs, the PKI's certificates, the
running sessions). Open CBOM scanners see none of these; here QKD and hybrid assets
enter the inventory next to the classical ones they protect or replace.

Findings from the TOML carry the line of the table's ``id``; findings from
``corridor-up.json`` a field such as ``kmes[kme-a].tls``. Certificates named by
``corridor-up.json`` are read from disk (their file and PEM line); with ``live=True``
each KME's URL is also inventoried by TLS handshakes (:mod:`corridor.inventory.scan_tls`).
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from corridor.errors import CorridorError
from corridor.inventory import algorithms
from corridor.inventory.findings import Finding, ScanResult, Skipped
from corridor.inventory.scan_keys import UnreadableArtefact, pem_findings
from corridor.inventory.scan_tls import DEFAULT_TIMEOUT_S, scan_endpoint
from corridor.kms.tls_openssl import DEFAULT_TLS_GROUPS

_METHOD_TOML = "corridor:toml"
_METHOD_UP = "corridor:up"


def is_corridor_toml(data: dict[str, Any]) -> bool:
    """Whether a parsed TOML document is a corridor file (KMEs and links)."""
    return isinstance(data.get("kmes"), list) and isinstance(data.get("links"), list)


def is_up_file(data: Any) -> bool:
    """Whether parsed JSON is a ``corridor-up.json``."""
    return isinstance(data, dict) and isinstance(data.get("kmes"), list) \
        and "ca_cert" in data and "saes" in data


def _line_of(text: str, key: str, value: str) -> int | None:
    match = re.search(rf"^\s*{re.escape(key)}\s*=\s*\"{re.escape(value)}\"", text, re.M)
    return text.count("\n", 0, match.start()) + 1 if match else None


def _qkd_link(location: str, link_id: str, detail: str, key_size_bits: int | None,
              line: int | None, method: str) -> list[Finding]:
    where = {"line": line} if line is not None else {"field": f"links[{link_id}]"}
    return [
        Finding("corridor", location, "QKD-BB84", method, key_size_bits=key_size_bits,
                usage="key-exchange", detail=f"QKD link {link_id}: {detail}", **where),
        Finding("corridor", location, "Wegman-Carter-Poly1305", method,
                key_size_bits=256, usage="mac",
                detail=f"QKD link {link_id}: classical channel authenticated "
                "information-theoretically (pre-shared pool, one-time pads)", **where),
    ]


def _hybrid(location: str, pair: str, policy: str, where: dict[str, Any], method: str
            ) -> list[Finding]:
    qkd_only = policy == "qkd-required"
    return [
        Finding("corridor", location, "QKD-key", method, key_size_bits=256,
                usage="key-exchange", detail=f"hybrid session {pair}: QKD input "
                f"(policy {policy})", **where),
        Finding("corridor", location, "X-Wing", method,
                key_size_bits=algorithms.default_size("X-Wing"), usage="key-exchange",
                detail=f"hybrid session {pair}: X-Wing (ML-KEM-768 + X25519) input, "
                f"CatKDF combiner (policy {policy}"
                + ("; used only when the QKD key is present" if qkd_only else "") + ")",
                **where),
    ]


def _tls_groups(location: str, kme_id: str, groups: str | None, where: dict[str, Any],
                method: str, note: str = "", what: str = "KME") -> list[Finding]:
    names = (groups or "").split(":") if groups else ["X25519", "P-256"]
    found = []
    for name in names:
        named = algorithms.group(name)
        if named is None:
            continue
        if not groups:
            note = " (tls_groups off: system OpenSSL, classical groups)"
        found.append(Finding("corridor", location, named.algorithm, method,
                             key_size_bits=named.key_size_bits, curve=named.curve,
                             usage="key-exchange",
                             detail=f"{what} {kme_id}".rstrip() + f" TLS accepts {name}{note}",
                             **where))
    return found


def toml_findings(location: str, text: str) -> list[Finding]:
    """Assets of a corridor TOML (raises CorridorError or ValueError when invalid)."""
    from corridor.kms.node import parse_corridor

    data = tomllib.loads(text)
    spec = parse_corridor(data, Path(location).parent, location)
    found: list[Finding] = []
    for kme_id, site in spec.kmes.items():
        line = _line_of(text, "id", kme_id)
        where: dict[str, Any] = {"line": line} if line else {"field": f"kmes[{kme_id}]"}
        found += _tls_groups(location, kme_id, site.limits.tls_groups, where, _METHOD_TOML)
        found.append(Finding("corridor", location, "ECDSA", _METHOD_TOML, key_size_bits=256,
                             curve="P-256", usage="signature",
                             detail=f"KME {kme_id} mutual-TLS certificate (corridor PKI, "
                             "ECDSA P-256)", **where))
        found.append(Finding("corridor", location, "AES", _METHOD_TOML, key_size_bits=256,
                             usage="encryption", detail=f"KME {kme_id} key store sealed with "
                             "AES-256-GCM under its KEK", **where))
        found.append(Finding("corridor", location, "HMAC-SHA-256", _METHOD_TOML,
                             key_size_bits=256, usage="mac",
                             detail=f"KME {kme_id} audit chain (HMAC-SHA256)", **where))
    for link_id, link in spec.links.items():
        line = _line_of(text, "id", link_id)
        detail = (f"{link.source} source, {link.params.name}, "
                  f"{link.params.fibre.length_km:g} km, {link.alice_kme} <-> {link.bob_kme}")
        size = spec.kmes[link.alice_kme].config.key_size_bits
        found += _qkd_link(location, link_id, detail, size, line, _METHOD_TOML)
    for pair in spec.hybrid:
        line = _line_of(text, "master_sae_id", pair.master_sae_id)
        where = {"line": line} if line else {"field": f"hybrid[{pair.master_sae_id}]"}
        found += _hybrid(location, f"{pair.master_sae_id}->{pair.slave_sae_id}", pair.policy,
                         where, _METHOD_TOML)
    return found


def _cert_file(base: Path, value: Any, result: ScanResult) -> None:
    if not isinstance(value, str) or not value:
        return
    path = base / value
    try:
        result.findings += [_as_corridor(f) for f in pem_findings(str(path), path.read_bytes())]
        result.files_scanned += 1
    except (OSError, UnreadableArtefact) as exc:
        result.skipped.append(Skipped(str(path), f"certificate of corridor-up.json: {exc}"))


def _as_corridor(finding: Finding) -> Finding:
    data = finding.to_dict()
    data["category"] = "corridor"
    return Finding(**data)


def up_findings(location: str, data: dict[str, Any], *, live: bool = False,
                timeout_s: float = DEFAULT_TIMEOUT_S) -> ScanResult:
    """Assets of a ``corridor-up.json``; with ``live`` also each KME's TLS by handshake."""
    result = ScanResult()
    base = Path(location).parent
    certs: list[Any] = [data.get("ca_cert")]
    certs += [s.get("cert") for s in data.get("saes") or [] if isinstance(s, dict)]
    certs += [o.get("cert") for o in data.get("operators") or [] if isinstance(o, dict)]
    certs.append(data.get("dashboard_cert"))
    for value in dict.fromkeys(c for c in certs if isinstance(c, str)):
        _cert_file(base, value, result)
    for kme in data.get("kmes") or []:
        if not isinstance(kme, dict) or not isinstance(kme.get("base_url"), str):
            continue
        kme_id = str(kme.get("kme_id"))
        where: dict[str, Any] = {"field": f"kmes[{kme_id}].base_url"}
        result.findings += _tls_groups(location, kme_id, DEFAULT_TLS_GROUPS, where,
                                       _METHOD_UP, " (the default tls_groups of `corridor "
                                       "up`; --live checks by handshake)")
        if live:
            url = urlsplit(kme["base_url"])
            if url.hostname and url.port:
                result.extend(scan_endpoint(url.hostname, url.port, timeout_s=timeout_s))
    dashboard = data.get("dashboard_url")
    if isinstance(dashboard, str):
        # The operator's dashboard listens on the KMEs' TLS stack with its defaults.
        result.findings += _tls_groups(location, "", DEFAULT_TLS_GROUPS,
                                       {"field": "dashboard_url"}, _METHOD_UP,
                                       " (the default tls_groups of the dashboard's listener; "
                                       "--live checks by handshake)", what="dashboard")
        if live:
            url = urlsplit(dashboard)
            if url.hostname and url.port:
                result.extend(scan_endpoint(url.hostname, url.port, timeout_s=timeout_s))
    for link in data.get("links") or []:
        if isinstance(link, dict) and isinstance(link.get("link_id"), str):
            detail = (f"{link.get('source')} source, {link.get('preset')}, "
                      f"{link.get('length_km')} km, {link.get('alice_kme')} <-> "
                      f"{link.get('bob_kme')}")
            result.findings += _qkd_link(location, link["link_id"], detail, 256, None,
                                         _METHOD_UP)
    for session in data.get("hybrid_sessions") or []:
        if isinstance(session, dict):
            pair = f"{session.get('initiator_sae_id')}->{session.get('responder_sae_id')}"
            result.findings += _hybrid(location, pair, str(session.get("policy")),
                                       {"field": f"hybrid_sessions[{pair}]"}, _METHOD_UP)
    stream = data.get("rsu_stream")
    if isinstance(stream, dict):
        pair = f"{stream.get('centre_sae_id')}->{stream.get('rsu_sae_id')}"
        where = {"field": "rsu_stream"}
        result.findings += [
            Finding("corridor", location, "PSK-QKD", _METHOD_UP, key_size_bits=256,
                    usage="key-exchange", detail=f"IEEE 1609.2 PSK stream {pair}: each PSK "
                    "generation is a QKD key", **where),
            Finding("corridor", location, "AES", _METHOD_UP, key_size_bits=128,
                    usage="encryption", detail=f"IEEE 1609.2 EncryptedData {pair}: "
                    "AES-128-CCM (the standard's only symmetric cipher)", **where)]
    fleet = data.get("fleet")
    if isinstance(fleet, dict):
        where = {"field": "fleet"}
        result.findings += [
            Finding("corridor", location, "ML-DSA-44", _METHOD_UP,
                    key_size_bits=algorithms.default_size("ML-DSA-44"), usage="signature",
                    detail="fleet commands signed ML-DSA-44 and Ed25519 (both must verify)",
                    **where),
            Finding("corridor", location, "Ed25519", _METHOD_UP, key_size_bits=256,
                    usage="signature", detail="fleet commands: classical half of the "
                    "hybrid signature", **where),
            Finding("corridor", location, "AES", _METHOD_UP, key_size_bits=256,
                    usage="encryption", detail="fleet commands sealed AES-256-GCM under a "
                    f"{fleet.get('hybrid_policy')} hybrid session key", **where)]
    return result


def corridor_file_findings(location: str, text: str, *, live: bool = False,
                           timeout_s: float = DEFAULT_TIMEOUT_S) -> ScanResult | None:
    """Assets of a corridor TOML or ``corridor-up.json``; None when ``text`` is neither.
    An invalid corridor file is a skip with the validator's reason."""
    result = ScanResult()
    if location.endswith(".toml"):
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return None
        if not is_corridor_toml(data):
            return None
        try:
            result.findings += toml_findings(location, text)
        except (CorridorError, ValueError, KeyError, TypeError) as exc:
            result.skipped.append(Skipped(location, f"invalid corridor file: {exc}"))
        return result
    if location.endswith(".json"):
        try:
            parsed = json.loads(text)
        except ValueError:
            return None
        if not is_up_file(parsed):
            return None
        return up_findings(location, parsed, live=live, timeout_s=timeout_s)
    return None
