"""The risk model: each finding becomes an :class:`Asset` with its quantum
vulnerability, NIST IR 8547 dates, Mosca's inequality and a risk score and level.

Mosca's inequality (Mosca 2015): data protected today is exposed if ``x + y > z``,
with ``x`` the years the data must stay secret (its shelf life), ``y`` the years the
migration takes, and ``z`` the years until a cryptographically relevant quantum
computer (CRQC). Corridor's defaults: ``z = 15`` years, a parameter with a documented
range of 5 to 30 (expert surveys, Global Risk Institute "Quantum Threat Timeline" 2024,
put a CRQC within 15 years at about even odds); ``x`` and ``y`` come from the policy
file per system (vehicles: shelf life 10 to 15 years; road and depot infrastructure up
to 25), default 10 and 5.

NIST IR 8547 (initial public draft, 2024): quantum-vulnerable public-key algorithms at
112-bit security are deprecated after 2030 and disallowed after 2035; at 128 bits or
more, disallowed after 2035; below 112 bits they are already disallowed.

Risk score, 0 to 100 (documented in docs/inventory.md):

    score = 100 * exposure(vulnerability) * (0.4 + 0.6 * urgency) * impact

- exposure: shor-broken 1.0, grover-weakened 0.25 (0.6 when the classical strength is
  already below 112 bits: MD5, SHA-1, 3DES), quantum-safe 0.05, qkd 0.02 (trusted
  nodes and the classical channel's authentication remain);
- urgency, 0 to 1: 1 when Mosca's inequality holds (``x + y - z > 0``) or the
  algorithm is disallowed already; otherwise ``1 + (x + y - z) / 10`` clipped to
  [0, 1], i.e. it falls to 0 over ten years of slack;
- impact, 0.2 to 1: ``(criticality + sensitivity) / 10``, both 1 to 5 from the policy.

Levels: critical >= 60, high >= 40, medium >= 20, low below.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corridor.errors import ParameterError
from corridor.inventory import algorithms
from corridor.inventory.findings import Finding
from corridor.tomlfile import read_toml

DEFAULT_CRQC_YEARS = 15.0
CRQC_YEARS_RANGE = (5.0, 30.0)
DEFAULT_SHELF_LIFE_YEARS = 10.0
DEFAULT_MIGRATION_YEARS = 5.0
LEVELS = ("critical", "high", "medium", "low")
_LEVEL_FLOORS = (("critical", 60.0), ("high", 40.0), ("medium", 20.0), ("low", 0.0))
_EXPOSURE = {algorithms.SHOR: 1.0, algorithms.GROVER: 0.25, algorithms.SAFE: 0.05,
             algorithms.QKD: 0.02}


@dataclass(frozen=True)
class SystemPolicy:
    """Scores of one system and which locations belong to it (glob patterns)."""

    name: str
    match: tuple[str, ...] = ()
    criticality: int = 3
    sensitivity: int = 3
    shelf_life_years: float = DEFAULT_SHELF_LIFE_YEARS
    migration_years: float = DEFAULT_MIGRATION_YEARS
    zone: str = "standard"


@dataclass(frozen=True)
class RiskPolicy:
    """The policy file: the CRQC estimate, defaults and systems (first match wins)."""

    crqc_years: float = DEFAULT_CRQC_YEARS
    default: SystemPolicy = field(default_factory=lambda: SystemPolicy("unassigned"))
    systems: tuple[SystemPolicy, ...] = ()
    year: int = field(default_factory=lambda: dt.datetime.now(dt.UTC).year)

    def system_for(self, location: str) -> SystemPolicy:
        """The first system whose pattern matches ``location``, else the default."""
        for system in self.systems:
            if any(fnmatch.fnmatch(location, pattern) for pattern in system.match):
                return system
        return self.default


def _score(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise ParameterError(where, value, "an integer from 1 to 5")
    return value


def _years(where: str, value: Any, low: float = 0.0, high: float = 100.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) \
            or not low <= value <= high:
        raise ParameterError(where, value, f"a number of years from {low:g} to {high:g}")
    return float(value)


_SYSTEM_KEYS = {"name", "match", "criticality", "sensitivity", "shelf_life_years",
                "migration_years", "zone"}


def _system(where: str, data: Any, base: SystemPolicy) -> SystemPolicy:
    if not isinstance(data, dict):
        raise ParameterError(where, data, "a table")
    unknown = set(data) - _SYSTEM_KEYS
    if unknown:
        raise ParameterError(f"{where}.{sorted(unknown)[0]}", None,
                             f"one of {sorted(_SYSTEM_KEYS)}")
    match = data.get("match", list(base.match))
    if not isinstance(match, list) or not all(isinstance(m, str) for m in match):
        raise ParameterError(f"{where}.match", match, "a list of glob patterns")
    name = data.get("name", base.name)
    if not isinstance(name, str) or not name:
        raise ParameterError(f"{where}.name", name, "a non-empty string")
    zone = data.get("zone", base.zone)
    if zone not in ("standard", "premium"):
        raise ParameterError(f"{where}.zone", zone, "'standard' or 'premium'")
    return SystemPolicy(
        name=name, match=tuple(match),
        criticality=_score(f"{where}.criticality", data.get("criticality", base.criticality)),
        sensitivity=_score(f"{where}.sensitivity", data.get("sensitivity", base.sensitivity)),
        shelf_life_years=_years(f"{where}.shelf_life_years",
                                data.get("shelf_life_years", base.shelf_life_years)),
        migration_years=_years(f"{where}.migration_years",
                               data.get("migration_years", base.migration_years)),
        zone=zone)


def parse_policy(data: dict[str, Any], crqc_years: float | None = None) -> RiskPolicy:
    """Validate a parsed policy file (``crqc_years`` overrides the file's)."""
    unknown = set(data) - {"crqc_years", "defaults", "systems"}
    if unknown:
        raise ParameterError("policy key", ", ".join(sorted(unknown)),
                             "only crqc_years, [defaults] and [[systems]] (a risk policy, "
                             "docs/inventory.md; not a corridor TOML)")
    default = _system("defaults", {"name": "unassigned", **data.get("defaults", {})},
                      SystemPolicy("unassigned"))
    systems = data.get("systems", [])
    if not isinstance(systems, list):
        raise ParameterError("systems", systems, "a list of [[systems]] tables")
    parsed = tuple(_system(f"systems[{i}]", s, default) for i, s in enumerate(systems))
    z = crqc_years if crqc_years is not None else data.get("crqc_years", DEFAULT_CRQC_YEARS)
    return RiskPolicy(crqc_years=_years("crqc_years", z, *CRQC_YEARS_RANGE), default=default,
                      systems=parsed)


def load_policy(path: Path | None, crqc_years: float | None = None) -> RiskPolicy:
    """The policy file at ``path`` (None: the defaults), as :func:`parse_policy`."""
    if path is None:
        return RiskPolicy(crqc_years=_years("--crqc-years", crqc_years, *CRQC_YEARS_RANGE)
                          if crqc_years is not None else DEFAULT_CRQC_YEARS)
    return parse_policy(read_toml(path, "--policy", "TOML policy file"), crqc_years)


@dataclass(frozen=True)
class Asset:
    """A finding with its risk assessment."""

    finding: Finding
    system: str
    zone: str
    primitive: str
    vulnerability: str
    classical_security_bits: int | None
    nist_quantum_level: int
    nist_status: str
    deprecated_after: int | None
    disallowed_after: int | None
    shelf_life_years: float
    migration_years: float
    crqc_years: float
    mosca_margin_years: float
    mosca_exposed: bool
    criticality: int
    sensitivity: int
    score: float
    level: str

    def to_dict(self) -> dict[str, Any]:
        """The finding's fields and the assessment, flat, JSON-ready."""
        data = self.finding.to_dict()
        extra = asdict(self)
        extra.pop("finding")
        data.update(extra)
        return data


def nist_dates(vulnerability: str, strength: int | None) -> tuple[int | None, int | None]:
    """``(deprecated after, disallowed after)`` years by NIST IR 8547 (None: no date);
    a year of 0 means disallowed already."""
    if vulnerability == algorithms.SHOR:
        if strength is not None and strength < 112:
            return 0, 0
        if strength is not None and strength < 128:
            return 2030, 2035
        return None, 2035
    if vulnerability == algorithms.GROVER and strength is not None and strength < 112:
        return 0, 0
    if vulnerability == algorithms.GROVER and strength is not None and strength < 128:
        return 2030, 2035
    return None, None


def _status(deprecated: int | None, disallowed: int | None, year: int) -> str:
    if disallowed is not None and year > disallowed:
        return "disallowed"
    if deprecated is not None and year > deprecated:
        return "deprecated"
    if disallowed is not None:
        return f"disallowed after {disallowed}"
    return "acceptable"


def level_of(score: float) -> str:
    """The level of a risk score."""
    return next(level for level, floor in _LEVEL_FLOORS if score >= floor)


def assess(finding: Finding, policy: RiskPolicy) -> Asset:
    """The risk assessment of one finding under ``policy``."""
    info = algorithms.classify(finding.algorithm, finding.key_size_bits)
    system = policy.system_for(finding.location)
    deprecated, disallowed = nist_dates(info.vulnerability, info.classical_security_bits)
    status = _status(deprecated, disallowed, policy.year)
    x, y, z = system.shelf_life_years, system.migration_years, policy.crqc_years
    margin = x + y - z
    exposed = info.vulnerability == algorithms.SHOR and margin > 0
    urgency = 1.0 if (margin > 0 or status == "disallowed") else max(0.0, 1.0 + margin / 10)
    exposure = _EXPOSURE[info.vulnerability]
    if info.vulnerability == algorithms.GROVER and (info.classical_security_bits or 0) < 112 \
            and info.classical_security_bits is not None:
        exposure = 0.6
    impact = (system.criticality + system.sensitivity) / 10
    score = round(100 * exposure * (0.4 + 0.6 * urgency) * impact, 1)
    return Asset(finding, system.name, system.zone, info.primitive, info.vulnerability,
                 info.classical_security_bits, info.nist_quantum_level, status, deprecated,
                 disallowed, x, y, z, margin, exposed, system.criticality,
                 system.sensitivity, score, level_of(score))


def assess_all(findings: list[Finding], policy: RiskPolicy) -> list[Asset]:
    """Every finding assessed, highest risk first."""
    assets = [assess(f, policy) for f in findings]
    return sorted(assets, key=lambda a: (-a.score, a.finding.location, a.finding.line or 0))


def level_at_least(level: str, threshold: str) -> bool:
    """Whether ``level`` is ``threshold`` or above."""
    return LEVELS.index(level) <= LEVELS.index(threshold)
