"""The inventory as a CycloneDX 1.6 CBOM, built with cyclonedx-python-lib.

One ``cryptographic-asset`` component per distinct algorithm (name, key size, curve):
``cryptoProperties`` carry the asset type (algorithm, certificate or protocol), the
primitive, the parameter set (key size or curve), the classical security level and the
NIST quantum security level; ``evidence.occurrences`` list every place it was found
(file or host:port, with the line or field in ``additionalContext``), and properties
``corridor:vulnerability``, ``corridor:risk`` (the highest level among its uses) and
``corridor:score``. Each certificate is also a ``certificate`` asset (subject, expiry,
``subjectPublicKeyRef`` to its key's algorithm component). One ``file`` component per
location, whose dependency entry lists the crypto assets it uses: the graph from asset
to where it is used.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict

from cyclonedx.model import Property
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.model.component_evidence import ComponentEvidence, Occurrence
from cyclonedx.model.crypto import (
    AlgorithmProperties,
    CertificateProperties,
    CryptoAssetType,
    CryptoPrimitive,
    CryptoProperties,
    ProtocolProperties,
    ProtocolPropertiesType,
)
from cyclonedx.output import make_outputter
from cyclonedx.schema import OutputFormat, SchemaVersion

from corridor.inventory.risk import LEVELS, Asset

_PRIMITIVES = {p.value: p for p in CryptoPrimitive}


def _asset_key(asset: Asset) -> tuple[str, int | None, str | None, bool]:
    f = asset.finding
    return (f.algorithm, f.key_size_bits, f.curve, f.not_after is not None)


def _ref(key: tuple[str, int | None, str | None, bool]) -> str:
    algorithm, size, curve_name, is_cert = key
    parts = ["crypto", algorithm, str(size or "na"), curve_name or "na"]
    return ":".join(parts) + (":cert" if is_cert else "")


def _crypto_properties(asset: Asset) -> CryptoProperties:
    f = asset.finding
    if f.usage == "protocol":
        version = f.algorithm.removeprefix("TLSv") if f.algorithm.startswith("TLS") else None
        return CryptoProperties(asset_type=CryptoAssetType.PROTOCOL,
                                protocol_properties=ProtocolProperties(
                                    type=ProtocolPropertiesType.TLS
                                    if f.algorithm.startswith(("TLS", "SSL"))
                                    else ProtocolPropertiesType.OTHER, version=version))
    algorithm = AlgorithmProperties(
        primitive=_PRIMITIVES.get(asset.primitive, CryptoPrimitive.UNKNOWN),
        parameter_set_identifier=str(f.key_size_bits) if f.key_size_bits else None,
        curve=f.curve,
        classical_security_level=asset.classical_security_bits,
        nist_quantum_security_level=asset.nist_quantum_level)
    return CryptoProperties(asset_type=CryptoAssetType.ALGORITHM,
                            algorithm_properties=algorithm)


def _name(key: tuple[str, int | None, str | None, bool]) -> str:
    algorithm, size, curve_name, _ = key
    if curve_name:
        return f"{algorithm} {curve_name}"
    return f"{algorithm}-{size}" if size and algorithm in ("RSA", "DH", "DSA", "AES") \
        else algorithm


def build_bom(assets: list[Asset]) -> Bom:
    """The CBOM of ``assets``."""
    groups: dict[tuple[str, int | None, str | None, bool], list[Asset]] = defaultdict(list)
    for asset in assets:
        groups[_asset_key(asset)].append(asset)
    bom = Bom()
    used_by: dict[str, set[str]] = defaultdict(set)
    components: dict[str, Component] = {}
    for key, uses in sorted(groups.items(), key=lambda kv: _ref(kv[0])):
        worst = min(uses, key=lambda a: (LEVELS.index(a.level), -a.score))
        occurrences = [Occurrence(location=u.finding.location, line=u.finding.line,
                                  additional_context=(u.finding.field or u.finding.detail
                                                      or None))
                       for u in uses]
        component = Component(
            type=ComponentType.CRYPTOGRAPHIC_ASSET, name=_name(key), bom_ref=_ref(key),
            crypto_properties=_crypto_properties(worst),
            evidence=ComponentEvidence(occurrences=occurrences),
            properties=[Property(name="corridor:vulnerability", value=worst.vulnerability),
                        Property(name="corridor:risk", value=worst.level),
                        Property(name="corridor:score", value=str(worst.score)),
                        Property(name="corridor:nist-ir-8547", value=worst.nist_status)])
        bom.components.add(component)
        components[_ref(key)] = component
        for use in uses:
            used_by[use.finding.location].add(_ref(key))
    for index, asset in enumerate(a for a in assets if a.finding.not_after is not None):
        f = asset.finding
        ref = f"cert:{index}"
        expiry = dt.datetime.fromisoformat(f.not_after.replace("Z", "+00:00")) \
            if f.not_after else None
        certificate = Component(
            type=ComponentType.CRYPTOGRAPHIC_ASSET, name=f.subject or f.where, bom_ref=ref,
            crypto_properties=CryptoProperties(
                asset_type=CryptoAssetType.CERTIFICATE,
                certificate_properties=CertificateProperties(
                    subject_name=f.subject, not_valid_after=expiry,
                    subject_public_key_ref=components[_ref(_asset_key(asset))].bom_ref,
                    certificate_format="X.509")),
            evidence=ComponentEvidence(occurrences=[Occurrence(
                location=f.location, line=f.line, additional_context=f.field)]))
        bom.components.add(certificate)
        components[ref] = certificate
        used_by[f.location].add(ref)
    for index, (location, refs) in enumerate(sorted(used_by.items())):
        holder = Component(type=ComponentType.FILE, name=location,
                           bom_ref=f"location:{index}")
        bom.components.add(holder)
        bom.register_dependency(holder, [components[r] for r in sorted(refs)])
    return bom


def cbom_json(assets: list[Asset]) -> str:
    """The CBOM of ``assets`` as CycloneDX 1.6 JSON text."""
    outputter = make_outputter(build_bom(assets), OutputFormat.JSON, SchemaVersion.V1_6)
    text = outputter.output_as_string(indent=2)
    json.loads(text)  # the library's own output: parse once to fail here, not downstream
    return text
