"""The CycloneDX 1.6 CBOM: valid against the schema cyclonedx-python-lib ships, one
crypto asset per algorithm and size with every occurrence, and dependencies from each
location to the assets it uses."""

from __future__ import annotations

import json

from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from corridor.inventory.cbom import cbom_json
from corridor.inventory.findings import ScanResult
from corridor.inventory.risk import RiskPolicy, assess_all
from tests.inventory.corpus import Expected


def test_corpus_cbom_validates_and_carries_every_finding(
        corpus_scan: tuple[ScanResult, list[Expected]]) -> None:
    result, _ = corpus_scan
    assets = assess_all(result.findings, RiskPolicy())
    text = cbom_json(assets)
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    bom = json.loads(text)
    assert bom["specVersion"] == "1.6"
    crypto = [c for c in bom["components"] if c["type"] == "cryptographic-asset"]
    files = [c for c in bom["components"] if c["type"] == "file"]
    algorithms = [c for c in crypto if c["cryptoProperties"]["assetType"] != "certificate"]
    certificates = [c for c in crypto if c["cryptoProperties"]["assetType"] == "certificate"]
    occurrences = [o for c in algorithms for o in c["evidence"]["occurrences"]]
    assert len(occurrences) == len(result.findings)
    assert len(certificates) == sum(f.not_after is not None for f in result.findings)
    for certificate in certificates:
        props = certificate["cryptoProperties"]["certificateProperties"]
        assert props["notValidAfter"] and props["subjectName"]
        assert props["subjectPublicKeyRef"] in {c["bom-ref"] for c in algorithms}
    assert all("line" in o or "additionalContext" in o for o in occurrences)
    rsa = next(c for c in crypto if c["name"] == "RSA-2048")
    assert rsa["cryptoProperties"]["algorithmProperties"]["parameterSetIdentifier"] == "2048"
    assert rsa["cryptoProperties"]["algorithmProperties"]["nistQuantumSecurityLevel"] == 0
    props = {p["name"]: p["value"] for p in rsa["properties"]}
    assert props["corridor:vulnerability"] == "shor-broken"
    hybrid = next(c for c in crypto if c["name"] == "X25519MLKEM768")
    assert {p["name"]: p["value"] for p in hybrid["properties"]}[
        "corridor:vulnerability"] == "quantum-safe"
    qkd = next(c for c in crypto if c["name"] == "QKD-BB84")
    assert {p["name"]: p["value"] for p in qkd["properties"]}["corridor:vulnerability"] == "qkd"
    # Every location depends on exactly the assets found there.
    refs = {c["bom-ref"]: c for c in bom["components"]}
    assert {d["ref"] for d in bom["dependencies"]} >= {f["bom-ref"] for f in files}
    for dependency in bom["dependencies"]:
        if dependency["ref"] not in {f["bom-ref"] for f in files}:
            continue
        location = refs[dependency["ref"]]["name"]
        used = {refs[r]["bom-ref"] for r in dependency.get("dependsOn", [])}
        expected = {c["bom-ref"] for c in crypto
                    if any(o["location"] == location for o in c["evidence"]["occurrences"])}
        assert used == expected


def test_protocol_findings_are_protocol_assets(
        corpus_scan: tuple[ScanResult, list[Expected]]) -> None:
    result, _ = corpus_scan
    bom = json.loads(cbom_json(assess_all(result.findings, RiskPolicy())))
    tls12 = next(c for c in bom["components"] if c["name"] == "TLSv1.2")
    assert tls12["cryptoProperties"]["assetType"] == "protocol"
    assert tls12["cryptoProperties"]["protocolProperties"] == {"type": "tls", "version": "1.2"}


def test_an_empty_inventory_is_a_valid_cbom() -> None:
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(cbom_json([])) is None
