"""The algorithm catalogue and the risk model: vulnerability classes, NIST IR 8547
dates, Mosca's inequality, policy files and the score."""

from __future__ import annotations

from pathlib import Path

import pytest

from corridor.errors import ParameterError
from corridor.inventory import algorithms
from corridor.inventory.findings import Finding
from corridor.inventory.risk import (
    RiskPolicy,
    SystemPolicy,
    assess,
    assess_all,
    level_at_least,
    load_policy,
    nist_dates,
    parse_policy,
)

EXAMPLE_POLICY = Path(__file__).resolve().parents[2] / "examples" / "inventory-policy.toml"


def _finding(algorithm: str, size: int | None, location: str = "/srv/app/x.pem") -> Finding:
    return Finding("key", location, algorithm, "test", line=1, key_size_bits=size)


@pytest.mark.parametrize(("algorithm", "size", "vulnerability", "strength"), [
    ("RSA", 1024, "shor-broken", 80), ("RSA", 2048, "shor-broken", 112),
    ("RSA", 3072, "shor-broken", 128), ("ECDSA", 384, "shor-broken", 192),
    ("X25519", None, "shor-broken", 128), ("DH", 2048, "shor-broken", 112),
    ("AES", 128, "grover-weakened", 128), ("AES", 256, "quantum-safe", 256),
    ("3DES", None, "grover-weakened", 112), ("SHA-1", None, "grover-weakened", 63),
    ("SHA-256", None, "quantum-safe", 128), ("HMAC-SHA-256", None, "quantum-safe", 256),
    ("ML-KEM-768", None, "quantum-safe", 192), ("X25519MLKEM768", None, "quantum-safe", 192),
    ("QKD-BB84", 256, "qkd", 256), ("TLSv1.2", None, "shor-broken", None),
])
def test_catalogue(algorithm: str, size: int | None, vulnerability: str,
                   strength: int | None) -> None:
    info = algorithms.classify(algorithm, size)
    assert (info.vulnerability, info.classical_security_bits) == (vulnerability, strength)
    assert algorithms.known(algorithm)


@pytest.mark.parametrize(("name", "expected"), [
    ("prime256v1", ("P-256", 256)), ("NID_secp384r1", ("P-384", 384)),
    ("MBEDTLS_ECP_DP_SECP521R1", ("P-521", 521)), ("ecp256", ("P-256", 256)),
    ("nistp384", ("P-384", 384)), ("x25519", None)])
def test_curve_spellings(name: str, expected: tuple[str, int] | None) -> None:
    assert algorithms.curve(name) == expected


def test_group_names() -> None:
    assert algorithms.group("ke1_mlkem768") == algorithms.Named(
        "ML-KEM-768", algorithms.default_size("ML-KEM-768"))
    assert algorithms.group("modp2048") == algorithms.Named("DH", 2048)
    assert algorithms.group("ffdhe3072") == algorithms.Named("DH", 3072)
    assert algorithms.group("secp384r1") == algorithms.Named("ECDH", 384, "P-384")
    assert algorithms.group("sha256") is None


def test_nist_ir_8547_dates() -> None:
    assert nist_dates("shor-broken", 80) == (0, 0)
    assert nist_dates("shor-broken", 112) == (2030, 2035)
    assert nist_dates("shor-broken", 128) == (None, 2035)
    assert nist_dates("grover-weakened", 63) == (0, 0)
    assert nist_dates("quantum-safe", 256) == (None, None)
    policy = RiskPolicy(year=2031)
    assert assess(_finding("RSA", 2048), policy).nist_status == "deprecated"
    assert assess(_finding("RSA", 1024), policy).nist_status == "disallowed"
    assert assess(_finding("RSA", 4096), policy).nist_status == "disallowed after 2035"


def test_mosca_inequality_decides_exposure_and_urgency() -> None:
    vehicle = SystemPolicy("vehicle", ("*/vehicle/*",), 4, 4, shelf_life_years=15,
                           migration_years=5)
    depot = SystemPolicy("depot", ("*/depot/*",), 4, 4, shelf_life_years=2,
                         migration_years=2)
    policy = RiskPolicy(crqc_years=15, systems=(vehicle, depot))
    exposed = assess(_finding("RSA", 3072, "/fleet/vehicle/ecu.pem"), policy)
    slack = assess(_finding("RSA", 3072, "/fleet/depot/gw.pem"), policy)
    assert (exposed.system, exposed.mosca_margin_years, exposed.mosca_exposed) == \
        ("vehicle", 5, True)
    assert (slack.system, slack.mosca_margin_years, slack.mosca_exposed) == ("depot", -11,
                                                                             False)
    assert exposed.score > slack.score
    later = RiskPolicy(crqc_years=30, systems=(vehicle, depot))
    assert assess(_finding("RSA", 3072, "/fleet/vehicle/ecu.pem"), later).score < \
        exposed.score


def test_score_orders_vulnerabilities_and_impact() -> None:
    policy = RiskPolicy()
    shor, grover, safe, qkd = (assess(_finding(a, s), policy) for a, s in
                               (("RSA", 2048), ("AES", 128), ("AES", 256), ("QKD-key", 256)))
    assert shor.score > grover.score > safe.score > qkd.score
    assert qkd.score >= 0 and shor.score <= 100
    low = RiskPolicy(default=SystemPolicy("unassigned", criticality=1, sensitivity=1))
    assert assess(_finding("RSA", 2048), low).score < shor.score
    ranked = assess_all([_finding("AES", 256), _finding("RSA", 2048)], policy)
    assert [a.finding.algorithm for a in ranked] == ["RSA", "AES"]
    assert level_at_least("critical", "high") and not level_at_least("medium", "high")


def test_example_policy_file_loads_and_matches() -> None:
    policy = load_policy(EXAMPLE_POLICY)
    assert policy.systems
    assert any(s.zone == "premium" for s in policy.systems)
    assert load_policy(EXAMPLE_POLICY, crqc_years=20).crqc_years == 20


@pytest.mark.parametrize(("data", "field"), [
    ({"crqc_years": 2}, "crqc_years"), ({"crqc_years": 45}, "crqc_years"),
    ({"systems": [{"name": "a", "criticality": 6}]}, "systems[0].criticality"),
    ({"systems": [{"name": "a", "sensitivity": 0}]}, "systems[0].sensitivity"),
    ({"systems": [{"name": "a", "zone": "gold"}]}, "systems[0].zone"),
    ({"systems": [{"name": "a", "match": "x"}]}, "systems[0].match"),
    ({"systems": [{"name": "a", "colour": "red"}]}, "systems[0].colour"),
    ({"defaults": {"shelf_life_years": -1}}, "defaults.shelf_life_years"),
    ({"extra": 1}, "policy key = 'extra'")])
def test_policy_errors_name_the_field(data: dict, field: str) -> None:
    with pytest.raises(ParameterError) as info:
        parse_policy(data)
    assert str(info.value).startswith(field)
