"""The V2X size budget: encoded message sizes per profile and scheme, against one frame.

This module owns ``corridor v2x budget``'s numbers: for each message profile (CAM signed
with a digest signer, CAM with the certificate, DENM, SPaT) and each signature scheme,
it signs a message with a fresh ticket, measures the OER bytes, checks that asn1tools
decodes them and re-encodes them byte for byte, and compares the size with the
~1,400-byte frame ceiling of ITS-G5 / C-V2X sidelink. Nothing is computed from formulas:
every size is that of a message actually encoded.

Payloads are opaque bytes of realistic sizes (:data:`PROFILES`): the CAM's 86 bytes are
the size of the GeoNetworking + BTP + CAM payload in vanetza's published 179-byte test
message, so that the comparison isolates the 1609.2 envelope.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from typing import Any

from corridor.mobility.v2x.certificates import PSID_CAM, PSID_DENM, PSID_SPAT, Authority
from corridor.mobility.v2x.encoding import compile_subset
from corridor.mobility.v2x.messages import SignerKind, sign_message
from corridor.mobility.v2x.signing import Scheme
from corridor.mobility.v2x.verifier import FRAME_CEILING_BYTES

# Published figures the ECDSA rows are checked against (docs/v2x.md).
PUBLISHED_ECDSA_CAM_DIGEST_BYTES = 179
PUBLISHED_ECDSA_CAM_CERTIFICATE_BYTES = 321
ML_DSA_44_SIGNATURE_BYTES_FIPS_204 = 2420


@dataclass(frozen=True)
class Profile:
    """A message profile: its PSID, payload size, signer kind, and whether the header
    carries the generation location."""

    name: str
    psid: int
    payload_bytes: int
    signer: SignerKind
    with_location: bool = False


PROFILES = (
    Profile("cam-digest", PSID_CAM, 86, SignerKind.digest),
    Profile("cam-certificate", PSID_CAM, 86, SignerKind.certificate),
    Profile("denm", PSID_DENM, 120, SignerKind.certificate, with_location=True),
    Profile("spat", PSID_SPAT, 240, SignerKind.digest),
)


@dataclass(frozen=True)
class BudgetRow:
    """One measured message."""

    profile: str
    scheme: str
    payload_bytes: int
    encoded_bytes: int
    envelope_bytes: int
    certificate_bytes: int
    frame_ceiling_bytes: int
    fits: bool
    cross_decoded: bool


def opaque_payload(size_bytes: int, label: str) -> bytes:
    """Deterministic opaque bytes standing in for an encoded application message."""
    out = b""
    counter = 0
    while len(out) < size_bytes:
        out += hashlib.sha256(f"{label}:{counter}".encode()).digest()
        counter += 1
    return out[:size_bytes]


def measure(schemes: tuple[Scheme, ...] = tuple(Scheme),
            profiles: tuple[Profile, ...] = PROFILES,
            ceiling_bytes: int = FRAME_CEILING_BYTES) -> list[BudgetRow]:
    """Sign one message per (profile, scheme) and measure it."""
    codec = compile_subset()
    now = time.time()
    rows = []
    for scheme in schemes:
        authority = Authority(scheme, start_unix_s=now)
        ticket = authority.issue(scheme, psids=(PSID_CAM, PSID_DENM, PSID_SPAT),
                                 start_unix_s=now)
        for profile in profiles:
            payload = opaque_payload(profile.payload_bytes, profile.name)
            location = (488566000, 23522000, 4000) if profile.with_location else None
            encoded = sign_message(payload, psid=profile.psid, ticket=ticket,
                                   generation_unix_s=now, signer=profile.signer,
                                   location=location)
            second = codec.encode("Ieee1609Dot2Data", codec.decode("Ieee1609Dot2Data", encoded))
            rows.append(BudgetRow(profile.name, scheme.value, len(payload), len(encoded),
                                  len(encoded) - len(payload), len(ticket.encoded),
                                  ceiling_bytes, len(encoded) <= ceiling_bytes,
                                  second == encoded))
    return rows


def as_dicts(rows: list[BudgetRow]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts."""
    return [asdict(row) for row in rows]


def budget_figure(rows: list[BudgetRow]) -> Any:
    """A grouped bar chart of encoded sizes with the frame ceiling (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = list(dict.fromkeys(row.profile for row in rows))
    schemes = list(dict.fromkeys(row.scheme for row in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(schemes)
    for i, scheme in enumerate(schemes):
        sizes = [next(r.encoded_bytes for r in rows if r.profile == p and r.scheme == scheme)
                 for p in profiles]
        xs = [j + (i - (len(schemes) - 1) / 2) * width for j in range(len(profiles))]
        bars = ax.bar(xs, sizes, width, label=scheme)
        ax.bar_label(bars, fontsize=7)
    ceiling = rows[0].frame_ceiling_bytes
    ax.axhline(ceiling, color="black", linestyle="--", linewidth=1)
    ax.text(len(profiles) - 0.5, ceiling, f"frame ceiling {ceiling} B", ha="right",
            va="bottom", fontsize=8)
    ax.set_xticks(range(len(profiles)), profiles)
    ax.set_ylabel("encoded Ieee1609Dot2Data (bytes)")
    ax.set_title("V2X message size per signature scheme (measured OER)")
    ax.legend()
    return fig
