"""What a scan finds: one :class:`Finding` per use of cryptography, one :class:`Skipped`
per item the scan could not read, and :class:`ScanResult` holding both.

A finding always names where it was found (``location``: a file path or ``host:port``)
and where inside it (``line`` for text, ``field`` for structured data such as a
certificate chain position or a TOML table), the algorithm with its key size in bits
where the artefact fixes one, and how it was found (``method``). Findings never hold
key material: a private key is described by its type and size only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Categories of the ground-truth corpus (docs/inventory.md reports recall per category).
CATEGORIES = ("certificate", "key", "keystore", "ssh", "config", "source", "tls", "corridor")


@dataclass(frozen=True)
class Finding:
    """One use of a cryptographic algorithm at one place.

    Attributes:
        category: one of :data:`CATEGORIES`.
        location: file path or ``host:port``.
        algorithm: canonical name (``RSA``, ``ECDSA``, ``X25519MLKEM768``, ``AES``, ...,
            see :mod:`corridor.inventory.algorithms`).
        method: how it was found (``x509``, ``ast:python``, ``config:sshd``,
            ``tls-handshake``, ...).
        line: 1-based line in a text file, when there is one.
        field: position in structured data (``chain[0]``, ``links.link-ab``), when
            there is no line.
        key_size_bits: key size (modulus for RSA/DH, curve size for ECC, key for
            symmetric ciphers, output for hashes), None where the artefact does not fix it.
        curve: named curve or group, where there is one.
        usage: what the algorithm does there (``signature``, ``key-exchange``, ...).
        detail: a short human note (subject, directive, call), never key material.
        not_after: certificate expiry, ISO 8601 UTC, for certificates.
        subject: certificate subject (RFC 4514), for certificates.
    """

    category: str
    location: str
    algorithm: str
    method: str
    line: int | None = None
    field: str | None = None
    key_size_bits: int | None = None
    curve: str | None = None
    usage: str | None = None
    detail: str = ""
    not_after: str | None = None
    subject: str | None = None

    def __post_init__(self) -> None:
        # Findings also come back from JSON a person may have edited (inventory plan
        # --inventory): a wrong type fails here, named, not later inside the risk model.
        for name in ("category", "location", "algorithm", "method", "detail"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be a string")
        for name in ("field", "curve", "usage", "not_after", "subject"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} = {getattr(self, name)!r}: must be a string or null")
        for name in ("line", "key_size_bits"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 0):
                raise ValueError(f"{name} = {value!r}: must be a whole number >= 0 or null")
        if self.category not in CATEGORIES:
            raise ValueError(f"category {self.category!r} not one of {CATEGORIES}")
        if not self.location or (self.line is None and self.field is None):
            raise ValueError("a finding needs a location and a line or field")

    @property
    def where(self) -> str:
        """``location:line`` or ``location#field``."""
        return f"{self.location}:{self.line}" if self.line is not None \
            else f"{self.location}#{self.field}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return asdict(self)


@dataclass(frozen=True)
class Skipped:
    """An item the scan did not read, and why (unreadable, too large, binary, loop,
    timed out, ...)."""

    location: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready fields."""
        return {"location": self.location, "reason": self.reason}


@dataclass
class ScanResult:
    """Everything one scan found and skipped, plus counts of what it read."""

    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files_scanned: int = 0
    bytes_scanned: int = 0
    endpoints_scanned: int = 0

    def extend(self, other: ScanResult) -> None:
        """Add another result's findings, skips and counts to this one."""
        self.findings.extend(other.findings)
        self.skipped.extend(other.skipped)
        self.files_scanned += other.files_scanned
        self.bytes_scanned += other.bytes_scanned
        self.endpoints_scanned += other.endpoints_scanned

    def deduplicated(self) -> ScanResult:
        """The same result with repeated findings (same place, algorithm, size) once."""
        seen: set[tuple[Any, ...]] = set()
        unique = []
        for finding in self.findings:
            ident = (finding.location, finding.line, finding.field, finding.algorithm,
                     finding.key_size_bits, finding.curve, finding.usage)
            if ident not in seen:
                seen.add(ident)
                unique.append(finding)
        return ScanResult(unique, list(self.skipped), self.files_scanned,
                          self.bytes_scanned, self.endpoints_scanned)
