"""The migration plan: assessed assets grouped into steps, ordered by risk, in the three
phases practitioners use.

1. Inventory and threat model: settle what the scan could not (skipped items, key
   sizes it could not read, locations no system claims) and retire what is broken
   classically already (NIST IR 8547 "disallowed" today: RSA-1024, MD5, SHA-1, 3DES).
2. PQC and hybrid on the most exposed paths: every Shor-broken key exchange moves to a
   hybrid group (TLS X25519MLKEM768, SSH mlkem768x25519-sha256, IKEv2 ke1_mlkem768 with
   a PPK), every Shor-broken signature to ML-DSA (or a hybrid certificate chain), every
   Grover-weakened symmetric algorithm to 256-bit keys; in risk order, Mosca-exposed
   first.
3. QKD for the premium trust zones: the systems the policy marks ``zone = "premium"``
   take their session keys from Corridor's QKD links (IPsec PPKs, MACsec CAKs,
   WireGuard PSKs, hybrid sessions with policy both-required).

A step names what it changes, where (up to five locations, then a count) and the
highest risk among the assets it covers. :func:`plan_markdown` and :func:`plan_html`
render the same :class:`MigrationPlan`.
"""

from __future__ import annotations

import html
from collections import defaultdict
from dataclasses import dataclass, field

from corridor.inventory import algorithms
from corridor.inventory.findings import Skipped
from corridor.inventory.risk import Asset

PHASES = ("Phase 1: inventory and threat model",
          "Phase 2: PQC and hybrid on the most exposed paths",
          "Phase 3: QKD for the premium trust zones")


@dataclass
class Step:
    """One change: what, why, where, and the assets it covers."""

    phase: int
    title: str
    change: str
    why: str
    locations: list[str] = field(default_factory=list)
    score: float = 0.0
    level: str = "low"
    assets: int = 0


@dataclass
class MigrationPlan:
    """Steps per phase, each phase in descending risk."""

    steps: list[Step]
    crqc_years: float
    total_assets: int

    def phase(self, number: int) -> list[Step]:
        """The steps of phase ``number`` (1 to 3), highest risk first."""
        return sorted((s for s in self.steps if s.phase == number),
                      key=lambda s: (-s.score, s.title))


def _change(asset: Asset) -> str:
    usage = asset.finding.usage or ""
    algorithm = asset.finding.algorithm
    method = asset.finding.method
    if asset.vulnerability == algorithms.GROVER:
        if asset.primitive in ("hash", "mac"):
            return "use SHA-384/SHA-512 (or HMAC-SHA-384) instead"
        return "use 256-bit keys (AES-256-GCM or ChaCha20-Poly1305)"
    if usage == "protocol":
        return "disable TLS <= 1.2 where clients allow; require TLS 1.3 with a hybrid group"
    if usage == "key-exchange" or asset.primitive in ("key-agree", "kem"):
        if "ssh" in method:
            return "add mlkem768x25519-sha256 (or sntrup761x25519-sha512) first in KexAlgorithms"
        if "swanctl" in method:
            return "add ke1_mlkem768 to the proposals and set ppk_required = yes (RFC 8784)"
        if "wireguard" in method:
            return "set a PresharedKey per peer, rotated from a PQC or QKD source"
        return "offer the hybrid group X25519MLKEM768 first (TLS 1.3), keep X25519 only " \
            "for clients that cannot"
    if algorithm == "RSA" and usage != "signature":
        return "replace RSA key transport/encryption with ML-KEM-768 (hybrid with X25519)"
    return "move to ML-DSA-65 signatures (or a hybrid ML-DSA + ECDSA chain); re-issue " \
        "certificates before they expire"


def _add(groups: dict[tuple[int, str, str], list[Asset]], phase: int, title: str,
         change: str, asset: Asset) -> None:
    groups[(phase, title, change)].append(asset)


def build_plan(assets: list[Asset], skipped: list[Skipped], crqc_years: float) -> MigrationPlan:
    """The plan for ``assets`` (from :func:`corridor.inventory.risk.assess_all`)."""
    groups: dict[tuple[int, str, str], list[Asset]] = defaultdict(list)
    for asset in assets:
        f = asset.finding
        if asset.nist_status == "disallowed":
            sized = f.key_size_bits and f.key_size_bits != algorithms.default_size(f.algorithm)
            _add(groups, 1, f"retire {f.algorithm}" + (f"-{f.key_size_bits}" if sized else ""),
                 "broken or below 112-bit strength today (NIST IR 8547: disallowed); "
                 + _change(asset), asset)
        if f.key_size_bits is None and asset.vulnerability != algorithms.QKD \
                and f.usage != "protocol":
            _add(groups, 1, f"read the key size of {f.algorithm} uses",
                 "the artefact does not fix it: check the key or configuration it loads",
                 asset)
        if asset.system == "unassigned":
            _add(groups, 1, "assign locations to systems in the policy file",
                 "give criticality, sensitivity and shelf life, so the ranking is yours",
                 asset)
        if asset.vulnerability in (algorithms.SHOR, algorithms.GROVER):
            kind = "key exchange" if (f.usage == "key-exchange" or asset.primitive
                                      in ("key-agree", "kem")) else (f.usage or "use")
            _add(groups, 2, f"{f.algorithm} {kind} in {asset.system}", _change(asset), asset)
        if asset.zone == "premium" and asset.vulnerability != algorithms.QKD \
                and (f.usage in ("key-exchange", "encryption") or asset.primitive
                     in ("key-agree", "kem", "block-cipher", "ae")):
            _add(groups, 3, f"QKD keys for {asset.system}",
                 "take session keys from Corridor's QKD links: IPsec PPK (corridor hybrid "
                 "ipsec), MACsec CAK (corridor hybrid macsec), WireGuard PSK (corridor "
                 "hybrid wireguard) or a hybrid session with policy both-required", asset)
    steps = []
    for (phase, title, change), members in groups.items():
        worst = max(members, key=lambda a: a.score)
        locations = sorted({a.finding.where for a in members})
        exposed = sum(a.mosca_exposed for a in members)
        why = (f"{len(members)} asset(s), highest risk {worst.level} ({worst.score:g}); "
               f"{exposed} Mosca-exposed (x + y > z = {crqc_years:g} years)")
        steps.append(Step(phase, title, change, why, locations, worst.score, worst.level,
                           len(members)))
    if skipped:
        steps.append(Step(1, "resolve the items the scan skipped",
                          "make them readable (or exclude them on purpose) and scan again",
                          f"{len(skipped)} item(s) skipped", [s.location for s in skipped],
                          100.0, "high", len(skipped)))
    return MigrationPlan(steps, crqc_years, len(assets))


def _shown(locations: list[str], limit: int = 5) -> list[str]:
    extra = len(locations) - limit
    return locations[:limit] + ([f"... and {extra} more"] if extra > 0 else [])


def plan_markdown(plan: MigrationPlan) -> str:
    """The plan as Markdown."""
    lines = ["# Cryptographic migration plan", "",
             f"{plan.total_assets} assets assessed; CRQC estimate z = {plan.crqc_years:g} "
             "years. Steps in descending risk within each phase.", ""]
    for number, title in enumerate(PHASES, 1):
        lines += [f"## {title}", ""]
        steps = plan.phase(number)
        if not steps:
            lines += ["Nothing to do in this phase.", ""]
        for index, step in enumerate(steps, 1):
            lines += [f"{index}. **{step.title}** ({step.level}, {step.score:g})",
                      f"   - change: {step.change}", f"   - why: {step.why}",
                      "   - where: " + "; ".join(f"`{w}`" for w in _shown(step.locations))]
        lines.append("")
    return "\n".join(lines)


def plan_html(plan: MigrationPlan) -> str:
    """The plan as a standalone HTML page."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'>",
             "<title>Cryptographic migration plan</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
             ".critical{color:#b00}.high{color:#d60}.medium{color:#960}.low{color:#070}"
             "code{font-size:90%}</style></head><body>",
             "<h1>Cryptographic migration plan</h1>",
             f"<p>{plan.total_assets} assets assessed; CRQC estimate z = "
             f"{plan.crqc_years:g} years.</p>"]
    for number, title in enumerate(PHASES, 1):
        parts.append(f"<h2>{e(title)}</h2><ol>")
        steps = plan.phase(number)
        if not steps:
            parts.append("<p>Nothing to do in this phase.</p>")
        for step in steps:
            where = "; ".join(f"<code>{e(w)}</code>" for w in _shown(step.locations))
            parts.append(f"<li><b>{e(step.title)}</b> <span class='{e(step.level)}'>"
                         f"({e(step.level)}, {step.score:g})</span><ul>"
                         f"<li>change: {e(step.change)}</li><li>why: {e(step.why)}</li>"
                         f"<li>where: {where}</li></ul></li>")
        parts.append("</ol>")
    parts.append("</body></html>")
    return "\n".join(parts)
