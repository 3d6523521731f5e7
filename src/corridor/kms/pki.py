"""The deployment's public-key infrastructure: a local CA, KME and SAE certificates.

ETSI GS QKD 014 takes the caller's SAE ID from its TLS client certificate, and the SAE
checks the KME's certificate against the KME ID it expects (ETSI014.md, "Transport and
identity"). This module owns how an identity is written into a certificate and read
back out of one:

- every certificate carries exactly one URI subject alternative name
  ``urn:corridor:<role>:<percent-encoded ID>`` with ``role`` one of ``kme``, ``sae``,
  ``operator`` (a person or tool that reads ``/metrics`` and the OpenAPI document
  and lists and clears link alarms, docs/kms-api.md "Operator endpoints") or
  ``dashboard`` (the server certificate of the operator's dashboard, docs/dashboard.md);
  the percent-encoding lets an SAE ID hold any character (ETSI014.md checklist item 12)
  while the SAN stays ASCII;
- the extended key usage separates the roles as well: a KME certificate is for server
  and client authentication (it serves SAEs and calls its peer KME), an SAE or operator
  certificate for client authentication only, a dashboard certificate for server
  authentication only (it can serve pages but never call a KME). :func:`identity_from_certificate`
  demands both the URI and the matching key usage, so a KME certificate can never call
  as an SAE and an SAE certificate can never call as a KME; the role in the URI keeps
  SAE and operator certificates apart (an operator certificate never gets a key, an
  SAE certificate never reads metrics or clears an alarm).

:func:`init_pki` writes a CA and the certificates of a deployment into one directory,
private keys with mode 0600 inside directories with mode 0700, and refuses to overwrite
an existing CA unless asked to. Keys are ECDSA P-256 (small, fast TLS handshakes).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from corridor.errors import CorridorError, ParameterError
from corridor.kms.config import check_id

Role = Literal["kme", "sae", "operator", "dashboard"]
ROLE_KME: Role = "kme"
ROLE_SAE: Role = "sae"
ROLE_OPERATOR: Role = "operator"
ROLE_DASHBOARD: Role = "dashboard"
ROLES: tuple[Role, ...] = (ROLE_KME, ROLE_SAE, ROLE_OPERATOR, ROLE_DASHBOARD)
IDENTITY_URI_PREFIX = "urn:corridor:"
DEFAULT_VALIDITY_DAYS = 825
DEFAULT_KME_HOSTS = ("localhost", "127.0.0.1", "::1")
MANIFEST_NAME = "pki.json"
CA_CERT_NAME = "ca.pem"
CA_KEY_NAME = "ca.key"
MAX_OPERATOR_NAME_CHARS = 64  # the operator's name goes into audit events as it is


class CertificateIdentityError(CorridorError):
    """A certificate does not carry a valid Corridor identity."""


@dataclass(frozen=True)
class Identity:
    """Who a certificate speaks for: a KME, an SAE or an operator, and its ID (name)."""

    role: Role
    entity_id: str

    @property
    def uri(self) -> str:
        """The URI subject alternative name that carries this identity."""
        return identity_uri(self.role, self.entity_id)


def validate_entity_id(field: str, value: str) -> str:
    """Check a KME or SAE ID by the rule the KMEs apply (:func:`corridor.kms.config.check_id`)."""
    return check_id(field, value)


def identity_uri(role: Role, entity_id: str) -> str:
    """``urn:corridor:<role>:<percent-encoded ID>``."""
    return f"{IDENTITY_URI_PREFIX}{role}:{quote(entity_id, safe='')}"


def _role_eku_ok(role: Role, usages: set[x509.ObjectIdentifier]) -> bool:
    if role == ROLE_KME:
        return {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages
    if role == ROLE_DASHBOARD:
        return usages == {ExtendedKeyUsageOID.SERVER_AUTH}
    # An SAE or operator certificate that could also serve TLS would blur the roles.
    return usages == {ExtendedKeyUsageOID.CLIENT_AUTH}


def identity_from_certificate(cert: x509.Certificate) -> Identity:
    """Read the identity of a (chain-verified) certificate.

    Raises :class:`CertificateIdentityError` unless the certificate has exactly one
    ``urn:corridor:`` URI name whose role matches its extended key usage.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateIdentityError(
            "certificate lacks a subject alternative name or an extended key usage") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(IDENTITY_URI_PREFIX)]
    if len(uris) != 1:
        raise CertificateIdentityError(
            f"certificate must carry exactly one {IDENTITY_URI_PREFIX}<role>:<id> name, "
            f"found {len(uris)}")
    role, sep, encoded = uris[0][len(IDENTITY_URI_PREFIX):].partition(":")
    checked_role = next((r for r in ROLES if r == role), None)
    if not sep or checked_role is None or not encoded:
        raise CertificateIdentityError(f"malformed identity name {uris[0]!r}")
    if not _role_eku_ok(checked_role, set(eku)):
        raise CertificateIdentityError(
            f"extended key usage does not match the {role} role")
    return Identity(checked_role, unquote(encoded, errors="strict"))


@lru_cache(maxsize=4096)
def identity_from_der(der: bytes) -> Identity:
    """:func:`identity_from_certificate` for a DER certificate (cached: one parse per cert)."""
    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        raise CertificateIdentityError("unparseable certificate") from None
    return identity_from_certificate(cert)


@lru_cache(maxsize=4096)
def identity_from_pem(pem: str) -> Identity:
    """:func:`identity_from_certificate` for a PEM certificate (cached: one parse per cert)."""
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except ValueError:
        raise CertificateIdentityError("unparseable certificate") from None
    return identity_from_certificate(cert)


# ---------------------------------------------------------------------------------------
# Issuing


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA certificate with its private key (kept in memory only while issuing)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={self.cert.subject.rfc4514_string()!r})"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(common_name: str = "Corridor local CA",
              validity_days: int = DEFAULT_VALIDITY_DAYS) -> CertificateAuthority:
    """A fresh self-signed CA (path length 0: it signs end-entity certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corridor")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=False, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert, key)


#: Longest certificate lifetime ``init_pki`` issues: 100 years (a far larger count
#: overflows the calendar: Python's datetime ends at the year 9999).
MAX_VALIDITY_DAYS = 36_500

_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_host_name(host: str, field: str = "--host") -> str:
    """``host`` if it is an IP address or a DNS name a TLS client can match (RFC 1123
    labels of letters, digits and inner hyphens, at most 253 characters), else
    :class:`ParameterError`: a certificate for ``bad host!`` matches no connection."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.split(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ParameterError(field, host, "an IP address or a DNS name (letters, digits, "
                             "inner hyphens, dot-separated labels of at most 63)")
    return host


def _host_names(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def issue_certificate(ca: CertificateAuthority, identity: Identity, *,
                      hosts: Sequence[str] = (),
                      validity_days: int = DEFAULT_VALIDITY_DAYS,
                      ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue an end-entity certificate for ``identity`` signed by ``ca``.

    KME certificates get server and client authentication and the ``hosts`` as DNS/IP
    names (what SAEs and the peer KME connect to); dashboard certificates server
    authentication only and the ``hosts``; SAE and operator certificates client
    authentication only.
    """
    validate_entity_id(f"{identity.role}_id", identity.entity_id)
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Corridor"),
                  x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.upper())]
    if len(identity.entity_id) <= 64:  # X.520 caps commonName at 64 characters
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, identity.entity_id))
    alt_names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
    if identity.role == ROLE_KME:
        alt_names += _host_names(hosts)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    elif identity.role == ROLE_DASHBOARD:
        alt_names += _host_names(hosts)
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    else:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca.cert.public_key()), critical=False)  # type: ignore[arg-type]
        .sign(ca.key, hashes.SHA256())
    )
    return cert, key


# ---------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class CertificatePaths:
    """Where one entity's certificate and private key lie."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class PkiLayout:
    """The files :func:`init_pki` wrote (also recorded in ``pki.json``)."""

    root: Path
    ca_cert: Path
    ca_key: Path
    kmes: dict[str, CertificatePaths]
    saes: dict[str, CertificatePaths]
    sae_kme: dict[str, str]
    operators: dict[str, CertificatePaths] = field(default_factory=dict)
    dashboards: dict[str, CertificatePaths] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """The manifest: paths relative to ``root``."""
        def rel(path: Path) -> str:
            return str(path.relative_to(self.root))
        return {
            "ca_cert": rel(self.ca_cert),
            "kmes": {k: {"cert": rel(p.cert), "key": rel(p.key)} for k, p in self.kmes.items()},
            "saes": {s: {"kme_id": self.sae_kme[s], "cert": rel(p.cert), "key": rel(p.key)}
                     for s, p in self.saes.items()},
            "operators": {o: {"cert": rel(p.cert), "key": rel(p.key)}
                          for o, p in self.operators.items()},
            "dashboards": {d: {"cert": rel(p.cert), "key": rel(p.key)}
                           for d, p in self.dashboards.items()},
        }

    def certificates(self) -> list[tuple[str, str, Path]]:
        """(role, ID, certificate path) of the CA and every entity of the layout."""
        out = [("ca", "ca", self.ca_cert)]
        for role, entities in ((ROLE_KME, self.kmes), (ROLE_SAE, self.saes),
                               (ROLE_OPERATOR, self.operators),
                               (ROLE_DASHBOARD, self.dashboards)):
            out += [(role, name, paths.cert) for name, paths in entities.items()]
        return out


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    # Created with 0600 from the start (no window with wider permissions), whatever the umask.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def parse_sae_spec(spec: str) -> tuple[str, str]:
    """``SAE_ID@KME_ID`` -> (SAE ID, KME ID); the last ``@`` separates them."""
    sae_id, sep, kme_id = spec.rpartition("@")
    if not sep or not sae_id or not kme_id:
        raise ParameterError("--sae", spec, "SAE_ID@KME_ID, for example sae-a@kme-a")
    return validate_entity_id("--sae", sae_id), validate_entity_id("--sae", kme_id)


def init_pki(out_dir: Path | str, kme_ids: Sequence[str], saes: Sequence[tuple[str, str]], *,
             operators: Sequence[str] = (), dashboards: Sequence[str] = (),
             hosts: Sequence[str] = DEFAULT_KME_HOSTS, force: bool = False,
             validity_days: int = DEFAULT_VALIDITY_DAYS) -> PkiLayout:
    """Create a CA and a certificate per KME, per SAE and per operator under ``out_dir``.

    ``saes`` is a list of (SAE ID, KME ID) pairs; every KME ID they name must be in
    ``kme_ids``. ``operators`` are the names of the operator certificates (client
    authentication, ``urn:corridor:operator:<name>``), ``dashboards`` those of dashboard
    server certificates (server authentication for ``hosts``). Layout: ``ca.pem``,
    ``ca.key``, ``kme/<ID>/{cert,key}.pem``, ``sae/<ID>/{cert,key}.pem``,
    ``operator/<name>/{cert,key}.pem``, ``dashboard/<name>/{cert,key}.pem`` (IDs
    percent-encoded in file names) and ``pki.json``. Refuses to overwrite an existing CA
    unless ``force``.
    """
    root = Path(out_dir).resolve()
    if not kme_ids:
        raise ParameterError("--kme", list(kme_ids), "at least one KME ID")
    for kme_id in kme_ids:
        validate_entity_id("--kme", kme_id)
    if len(set(kme_ids)) != len(kme_ids):
        raise ParameterError("--kme", list(kme_ids), "distinct KME IDs")
    sae_ids = [s for s, _ in saes]
    if len(set(sae_ids)) != len(sae_ids):
        raise ParameterError("--sae", sae_ids, "distinct SAE IDs")
    for sae_id, kme_id in saes:
        validate_entity_id("--sae", sae_id)
        if kme_id not in kme_ids:
            raise ParameterError("--sae", f"{sae_id}@{kme_id}", f"a KME among {list(kme_ids)}")
    for option, names in (("--operator", operators), ("--dashboard", dashboards)):
        for name in names:
            validate_entity_id(option, name)
            if len(name) > MAX_OPERATOR_NAME_CHARS:
                raise ParameterError(option, name,
                                     f"at most {MAX_OPERATOR_NAME_CHARS} characters")
        if len(set(names)) != len(names):
            raise ParameterError(option, list(names), "distinct names")
    if not 1 <= validity_days <= MAX_VALIDITY_DAYS:
        raise ParameterError("validity_days", validity_days,
                             f"from 1 to {MAX_VALIDITY_DAYS} (100 years)")
    for host in hosts:
        check_host_name(host)
    ca_cert_path, ca_key_path = root / CA_CERT_NAME, root / CA_KEY_NAME
    if (ca_key_path.exists() or ca_cert_path.exists()) and not force:
        raise ParameterError("--out", str(root), "a directory without a CA",
                             "a CA already exists there; pass --force to replace it")
    _private_dir(root)
    ca = create_ca(validity_days=validity_days)
    _write_private(ca_key_path, _key_pem(ca.key))
    _write_public(ca_cert_path, _cert_pem(ca.cert))

    def write_entity(identity: Identity) -> CertificatePaths:
        cert, key = issue_certificate(ca, identity, hosts=hosts, validity_days=validity_days)
        directory = root / identity.role / quote(identity.entity_id, safe="")
        _private_dir(root / identity.role)
        _private_dir(directory)
        paths = CertificatePaths(directory / "cert.pem", directory / "key.pem")
        _write_private(paths.key, _key_pem(key))
        _write_public(paths.cert, _cert_pem(cert))
        return paths

    kmes = {k: write_entity(Identity(ROLE_KME, k)) for k in kme_ids}
    sae_paths = {s: write_entity(Identity(ROLE_SAE, s)) for s, _ in saes}
    operator_paths = {o: write_entity(Identity(ROLE_OPERATOR, o)) for o in operators}
    dashboard_paths = {d: write_entity(Identity(ROLE_DASHBOARD, d)) for d in dashboards}
    layout = PkiLayout(root, ca_cert_path, ca_key_path, kmes, sae_paths, dict(saes),
                       operator_paths, dashboard_paths)
    _write_public(root / MANIFEST_NAME, json.dumps(layout.to_json(), indent=2).encode())
    return layout


def load_ca(directory: Path | str) -> CertificateAuthority:
    """Load the CA that :func:`init_pki` wrote (to issue further certificates)."""
    root = Path(directory)
    cert = x509.load_pem_x509_certificate((root / CA_CERT_NAME).read_bytes())
    key = serialization.load_pem_private_key((root / CA_KEY_NAME).read_bytes(), None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ParameterError("ca.key", type(key).__name__, "an EC private key")
    return CertificateAuthority(cert, key)


def add_entity(layout: PkiLayout, role: Role, name: str, *,
               hosts: Sequence[str] = DEFAULT_KME_HOSTS,
               validity_days: int = DEFAULT_VALIDITY_DAYS) -> PkiLayout:
    """Issue an operator or dashboard certificate with the CA of ``layout``
    (``<role>/<name>/``) and rewrite ``pki.json``; returns the new layout. The CA key
    must be in the layout's root."""
    if role not in (ROLE_OPERATOR, ROLE_DASHBOARD):
        raise ParameterError("role", role, f"{ROLE_OPERATOR} or {ROLE_DASHBOARD}")
    option = f"--{role}"
    validate_entity_id(option, name)
    if len(name) > MAX_OPERATOR_NAME_CHARS:
        raise ParameterError(option, name, f"at most {MAX_OPERATOR_NAME_CHARS} characters")
    ca = load_ca(layout.root)
    cert, key = issue_certificate(ca, Identity(role, name), hosts=hosts,
                                  validity_days=validity_days)
    directory = layout.root / role / quote(name, safe="")
    _private_dir(layout.root / role)
    _private_dir(directory)
    paths = CertificatePaths(directory / "cert.pem", directory / "key.pem")
    _write_private(paths.key, _key_pem(key))
    _write_public(paths.cert, _cert_pem(cert))
    if role == ROLE_OPERATOR:
        new = dataclasses.replace(layout, operators={**layout.operators, name: paths})
    else:
        new = dataclasses.replace(layout, dashboards={**layout.dashboards, name: paths})
    _write_public(layout.root / MANIFEST_NAME, json.dumps(new.to_json(), indent=2).encode())
    return new


def add_operator(layout: PkiLayout, name: str,
                 validity_days: int = DEFAULT_VALIDITY_DAYS) -> PkiLayout:
    """:func:`add_entity` for an operator certificate."""
    return add_entity(layout, ROLE_OPERATOR, name, validity_days=validity_days)


def write_certificate(directory: Path | str, name: str, cert: x509.Certificate,
                      key: ec.EllipticCurvePrivateKey) -> CertificatePaths:
    """Write ``<name>.pem`` (0644) and ``<name>.key`` (0600) into ``directory`` (0700)."""
    root = Path(directory)
    _private_dir(root)
    paths = CertificatePaths(root / f"{name}.pem", root / f"{name}.key")
    _write_private(paths.key, _key_pem(key))
    _write_public(paths.cert, _cert_pem(cert))
    return paths
