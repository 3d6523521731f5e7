"""Certificates, keys and keystores on disk: PEM and DER X.509, private and public keys
(type and size only, never the key), PKCS#12, OpenSSH keys, ``known_hosts`` and
``authorized_keys``.

Every parser takes a file's bytes and returns findings with the line of the PEM block
or entry (DER and PKCS#12 files: a field, ``der`` or ``pkcs12[i]``). A file that looks
like one of these but does not parse raises :class:`UnreadableArtefact` with the reason.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import struct
import warnings
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import (
    dh,
    dsa,
    ec,
    ed448,
    ed25519,
    rsa,
    x448,
    x25519,
)
from cryptography.hazmat.primitives.serialization import pkcs12

from corridor.inventory import algorithms
from corridor.inventory.findings import Finding

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 .]+)-----\r?\n(.*?)-----END \1-----", re.S)


class UnreadableArtefact(Exception):
    """A file that looks like a certificate, key or keystore but does not parse."""


def describe_key(key: Any) -> tuple[str, int | None, str | None]:
    """``(algorithm, key size in bits, curve)`` of a public or private key object."""
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return "RSA", key.key_size, None
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        named = algorithms.curve(key.curve.name)
        return "ECDSA", key.curve.key_size, named[0] if named else key.curve.name
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return "Ed25519", 256, None
    if isinstance(key, ed448.Ed448PrivateKey | ed448.Ed448PublicKey):
        return "Ed448", 448, None
    if isinstance(key, x25519.X25519PrivateKey | x25519.X25519PublicKey):
        return "X25519", 256, None
    if isinstance(key, x448.X448PrivateKey | x448.X448PublicKey):
        return "X448", 448, None
    if isinstance(key, dsa.DSAPrivateKey | dsa.DSAPublicKey):
        return "DSA", key.key_size, None
    if isinstance(key, dh.DHPrivateKey | dh.DHPublicKey):
        return "DH", key.key_size, None
    name = type(key).__name__
    for pqc in ("MLKEM", "MLDSA"):
        match = re.search(pqc + r"(\d+)", name)
        if match:
            family = "ML-KEM" if pqc == "MLKEM" else "ML-DSA"
            algorithm = f"{family}-{match.group(1)}"
            return algorithm, algorithms.default_size(algorithm), None
    return name, None, None


def _signature_algorithm(cert: x509.Certificate) -> str:
    try:
        oid_name = cert.signature_algorithm_oid._name
    except Exception:  # pragma: no cover - cryptography names every OID it parses
        oid_name = cert.signature_algorithm_oid.dotted_string
    return str(oid_name)


def _utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def certificate_findings(cert: x509.Certificate, location: str, *, line: int | None = None,
                         field: str | None = None, method: str = "x509",
                         category: str = "certificate") -> list[Finding]:
    """One finding for the certificate's subject key (with the signature algorithm
    and expiry in the detail)."""
    algorithm, size, curve_name = describe_key(cert.public_key())
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    detail = (f"subject {subject}; signed with {_signature_algorithm(cert)}; "
              f"expires {_utc(cert.not_valid_after_utc)[:10]}")
    return [Finding(category, location, algorithm, method, line=line, field=field,
                    key_size_bits=size, curve=curve_name, usage="signature", detail=detail,
                    not_after=_utc(cert.not_valid_after_utc), subject=subject)]


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def _key_finding(key: Any, location: str, line: int | None, field: str | None,
                 method: str, what: str) -> Finding:
    algorithm, size, curve_name = describe_key(key)
    usage = "key-exchange" if algorithm in ("X25519", "X448", "DH") else "signature"
    return Finding("key", location, algorithm, method, line=line, field=field,
                   key_size_bits=size, curve=curve_name, usage=usage, detail=what)


def pem_findings(location: str, data: bytes) -> list[Finding]:
    """Findings for every PEM block of ``data`` (certificates, keys, CSRs)."""
    found: list[Finding] = []
    errors = []
    for match in _PEM_BLOCK.finditer(data):
        label = match.group(1).decode()
        block = match.group(0)
        line = _line_of(data, match.start())
        try:
            if label in ("CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE"):
                found += certificate_findings(x509.load_pem_x509_certificate(block),
                                              location, line=line, method="pem:x509")
            elif label == "CERTIFICATE REQUEST":
                csr = x509.load_pem_x509_csr(block)
                found.append(_key_finding(csr.public_key(), location, line, None, "pem:csr",
                                          "certificate request"))
            elif label == "OPENSSH PRIVATE KEY":
                found.append(_openssh_private(location, block, line))
            elif label.endswith("PRIVATE KEY"):
                if "ENCRYPTED" in label or b"Proc-Type: 4,ENCRYPTED" in block:
                    found.append(_encrypted_pem(location, block, line, label))
                    continue
                key = serialization.load_pem_private_key(block, password=None)
                found.append(_key_finding(key, location, line, None, "pem:private-key",
                                          f"{label.lower()} (type and size only)"))
            elif label.endswith("PUBLIC KEY"):
                public = serialization.load_pem_public_key(block)
                found.append(_key_finding(public, location, line, None, "pem:public-key",
                                          label.lower()))
            elif label.endswith("DH PARAMETERS"):
                with warnings.catch_warnings():  # FFDH is deprecated: exactly our point
                    warnings.simplefilter("ignore")
                    params = serialization.load_pem_parameters(block)
                    assert isinstance(params, dh.DHParameters)
                    size = params.parameter_numbers().p.bit_length()
                found.append(Finding("key", location, "DH", "pem:dh-parameters", line=line,
                                     key_size_bits=size, usage="key-exchange",
                                     detail="DH parameters"))
        except (ValueError, TypeError, AssertionError, IndexError, struct.error,
                UnreadableArtefact, UnsupportedAlgorithm) as exc:
            errors.append(f"PEM block {label} at line {line} does not parse "
                          f"({type(exc).__name__})")
    if errors and not found:
        raise UnreadableArtefact("; ".join(errors))
    if not found and not errors and b"-----BEGIN " in data and not _PEM_BLOCK.search(data):
        raise UnreadableArtefact("PEM block without its END line (truncated)")
    return found


def _encrypted_pem(location: str, block: bytes, line: int, label: str) -> Finding:
    """An encrypted private key: the type is readable only from the legacy labels
    (``RSA``/``EC``/``DSA PRIVATE KEY``); the size needs the password, which a scan
    never has. PKCS#8 ``ENCRYPTED PRIVATE KEY`` hides both: reported as ``unknown``."""
    legacy = {"RSA": "RSA", "EC": "ECDSA", "DSA": "DSA"}
    algorithm = legacy.get(label.split(" ")[0], "unknown")
    return Finding("key", location, algorithm, "pem:encrypted-key", line=line,
                   usage="signature", detail=f"{label.lower()} (encrypted: size unreadable)")


def der_findings(location: str, data: bytes) -> list[Finding]:
    """A DER certificate, public key or private key."""
    try:
        return certificate_findings(x509.load_der_x509_certificate(data), location,
                                    field="der", method="der:x509")
    except ValueError:
        pass
    try:
        key = serialization.load_der_public_key(data)
        return [_key_finding(key, location, None, "der", "der:public-key", "public key")]
    except (ValueError, UnsupportedAlgorithm):
        pass
    try:
        private = serialization.load_der_private_key(data, password=None)
        return [_key_finding(private, location, None, "der", "der:private-key",
                             "private key (type and size only)")]
    except (ValueError, TypeError, UnsupportedAlgorithm):
        pass
    raise UnreadableArtefact("not a DER certificate or key")


def pkcs12_findings(location: str, data: bytes,
                    passwords: tuple[bytes | None, ...] = (None, b"", b"changeit")
                    ) -> list[Finding]:
    """The certificates and key of a PKCS#12 keystore (tried without a password, with
    an empty one and with Java's default ``changeit``)."""
    for password in passwords:
        try:
            store = pkcs12.load_pkcs12(data, password)
        except (ValueError, TypeError):
            continue
        found: list[Finding] = []
        if store.key is not None:
            found.append(_key_finding(store.key, location, None, "pkcs12[key]",
                                      "pkcs12", "keystore private key (type and size only)"))
            found[-1] = _recategorise(found[-1], "keystore")
        if store.cert is not None:
            found += certificate_findings(store.cert.certificate, location,
                                          field="pkcs12[cert]", method="pkcs12",
                                          category="keystore")
        for index, extra in enumerate(store.additional_certs):
            found += certificate_findings(extra.certificate, location,
                                          field=f"pkcs12[ca{index}]", method="pkcs12",
                                          category="keystore")
        return found
    raise UnreadableArtefact("PKCS#12 keystore that opens with none of the tried passwords "
                             "(or not PKCS#12)")


def _recategorise(finding: Finding, category: str) -> Finding:
    data = finding.to_dict()
    data["category"] = category
    return Finding(**data)


# OpenSSH key types -> (algorithm, size when fixed by the type, curve)
_SSH_TYPES: dict[str, tuple[str, int | None, str | None]] = {
    "ssh-rsa": ("RSA", None, None), "ssh-dss": ("DSA", None, None),
    "ssh-ed25519": ("Ed25519", 256, None), "ssh-ed448": ("Ed448", 448, None),
    "ecdsa-sha2-nistp256": ("ECDSA", 256, "P-256"),
    "ecdsa-sha2-nistp384": ("ECDSA", 384, "P-384"),
    "ecdsa-sha2-nistp521": ("ECDSA", 521, "P-521"),
    "sk-ssh-ed25519@openssh.com": ("Ed25519", 256, None),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("ECDSA", 256, "P-256"),
}


def _ssh_strings(blob: bytes) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while offset + 4 <= len(blob) and len(out) < 8:
        (length,) = struct.unpack(">I", blob[offset:offset + 4])
        offset += 4
        if length > len(blob) - offset:
            break
        out.append(blob[offset:offset + length])
        offset += length
    return out


def ssh_public_blob(blob: bytes) -> tuple[str, int | None, str | None]:
    """``(algorithm, size, curve)`` of an SSH wire-format public key (RSA modulus read
    from the blob, so its size is always filled)."""
    parts = _ssh_strings(blob)
    if not parts:
        raise UnreadableArtefact("not an SSH public key blob")
    key_type = parts[0].decode("ascii", "replace")
    if key_type not in _SSH_TYPES:
        raise UnreadableArtefact(f"unknown SSH key type {key_type!r}")
    algorithm, size, curve_name = _SSH_TYPES[key_type]
    if key_type == "ssh-rsa" and len(parts) >= 3:
        size = int.from_bytes(parts[2], "big").bit_length()
    elif key_type == "ssh-dss" and len(parts) >= 2:
        size = int.from_bytes(parts[1], "big").bit_length()
    return algorithm, size, curve_name


def _openssh_private(location: str, block: bytes, line: int) -> Finding:
    """An OpenSSH private key: type and size from its public half (readable even when
    the private part is encrypted)."""
    body = b"".join(block.splitlines()[1:-1])
    raw = base64.b64decode(body)
    magic = b"openssh-key-v1\x00"
    if not raw.startswith(magic):
        raise ValueError("not openssh-key-v1")
    rest = raw[len(magic):]
    parts = _ssh_strings(rest)  # cipher, kdf, kdf options
    offset = sum(4 + len(p) for p in parts[:3]) + 4  # + number of keys
    (public_length,) = struct.unpack(">I", rest[offset:offset + 4])
    algorithm, size, curve_name = ssh_public_blob(rest[offset + 4:offset + 4 + public_length])
    encrypted = parts[0] != b"none"
    return Finding("ssh", location, algorithm, "openssh:private-key", line=line,
                   key_size_bits=size, curve=curve_name, usage="signature",
                   detail="OpenSSH private key" + (" (encrypted)" if encrypted else "")
                   + " (type and size only)")


_SSH_LINE = re.compile(r"(?:^|\s)((?:ssh|ecdsa|sk)-[a-z0-9@.\-]+)\s+([A-Za-z0-9+/=]{20,})")


def ssh_public_lines(location: str, text: str, method: str) -> list[Finding]:
    """Every public key line of an ``authorized_keys``, ``known_hosts`` or ``.pub``
    file (markers, options and host patterns before the key are allowed)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SSH_LINE.search(stripped)
        if not match:
            continue
        try:
            blob = base64.b64decode(match.group(2), validate=True)
            algorithm, size, curve_name = ssh_public_blob(blob)
        except (ValueError, UnreadableArtefact, struct.error):
            continue
        hosts = stripped[:match.start(1)].strip().split(" ")[-1] if method == "known-hosts" \
            else ""
        detail = f"host {hosts}" if hosts else "public key"
        found.append(Finding("ssh", location, algorithm, method, line=number,
                             key_size_bits=size, curve=curve_name, usage="signature",
                             detail=detail))
    return found
