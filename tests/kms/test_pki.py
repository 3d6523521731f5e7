"""The deployment PKI: identities in certificates, roles kept apart, file permissions."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from corridor.cli import app
from corridor.errors import ParameterError
from corridor.kms.pki import (
    ROLE_DASHBOARD,
    ROLE_KME,
    ROLE_OPERATOR,
    ROLE_SAE,
    CertificateIdentityError,
    Identity,
    add_entity,
    add_operator,
    check_host_name,
    create_ca,
    identity_from_certificate,
    identity_from_der,
    identity_uri,
    init_pki,
    issue_certificate,
    load_ca,
    parse_sae_spec,
)

ODD_SAE_ID = "sae/β?#%&=x"


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def layout(tmp_path: Path):
    old = os.umask(0)  # the most permissive umask: permissions must not depend on it
    try:
        return init_pki(tmp_path / "pki", ["kme-a", "kme-b"],
                        [("sae-a", "kme-a"), (ODD_SAE_ID, "kme-b")])
    finally:
        os.umask(old)


def test_every_certificate_is_issued_by_the_ca_and_carries_its_identity(layout) -> None:
    ca = _load(layout.ca_cert)
    for kme_id, paths in layout.kmes.items():
        cert = _load(paths.cert)
        cert.verify_directly_issued_by(ca)
        assert identity_from_certificate(cert) == Identity(ROLE_KME, kme_id)
    for sae_id, paths in layout.saes.items():
        cert = _load(paths.cert)
        cert.verify_directly_issued_by(ca)
        assert identity_from_certificate(cert) == Identity(ROLE_SAE, sae_id)
    assert layout.sae_kme == {"sae-a": "kme-a", ODD_SAE_ID: "kme-b"}


def test_kme_certificates_serve_localhost_and_sae_certificates_only_authenticate(layout) -> None:
    kme = _load(layout.kmes["kme-a"].cert)
    san = kme.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert set(kme.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    sae = _load(layout.saes["sae-a"].cert)
    assert list(sae.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    sae_san = sae.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sae_san.get_values_for_type(x509.DNSName) == []


def test_private_keys_are_0600_in_0700_directories(layout) -> None:
    keys = [layout.ca_key] + [p.key for p in [*layout.kmes.values(), *layout.saes.values()]]
    for key in keys:
        assert _mode(key) == 0o600, key
        directory = key.parent
        while directory != layout.root.parent:
            assert _mode(directory) == 0o700, directory
            directory = directory.parent


def test_manifest_lists_every_file_relative_to_the_root(layout) -> None:
    manifest = json.loads((layout.root / "pki.json").read_text())
    assert (layout.root / manifest["ca_cert"]) == layout.ca_cert
    assert manifest["saes"][ODD_SAE_ID]["kme_id"] == "kme-b"
    for entry in [*manifest["kmes"].values(), *manifest["saes"].values()]:
        assert (layout.root / entry["cert"]).is_file()
        assert (layout.root / entry["key"]).is_file()


def test_an_existing_ca_is_kept_unless_forced(layout) -> None:
    before = layout.ca_cert.read_bytes()
    with pytest.raises(ParameterError, match="--force"):
        init_pki(layout.root, ["kme-a"], [])
    assert layout.ca_cert.read_bytes() == before
    replaced = init_pki(layout.root, ["kme-a"], [], force=True)
    assert replaced.ca_cert.read_bytes() != before


@pytest.mark.parametrize(("kmes", "saes", "field"), [
    ([], [], "--kme"),
    (["kme a"], [], "--kme"),
    (["kme-a", "kme-a"], [], "--kme"),
    (["kme-a"], [("sae-a", "kme-z")], "--sae"),
    (["kme-a"], [("s" * 129, "kme-a")], "--sae"),
    (["kme-a"], [("sae-a", "kme-a"), ("sae-a", "kme-a")], "--sae"),
])
def test_bad_input_names_the_field(tmp_path: Path, kmes, saes, field) -> None:
    with pytest.raises(ParameterError) as info:
        init_pki(tmp_path / "p", kmes, saes)
    assert info.value.field == field


def test_sae_spec_splits_at_the_last_at_sign() -> None:
    assert parse_sae_spec("team@site@kme-b") == ("team@site", "kme-b")
    with pytest.raises(ParameterError, match="SAE_ID@KME_ID"):
        parse_sae_spec("no-kme")


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")),
               min_size=1, max_size=40))
def test_identity_uri_is_ascii_and_round_trips(entity_id: str) -> None:
    uri = identity_uri(ROLE_SAE, entity_id)
    assert uri.isascii()
    from urllib.parse import unquote
    assert unquote(uri.removeprefix("urn:corridor:sae:")) == entity_id


def _custom_cert(ca, *, uris: list[str], usages) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
               .issuer_name(ca.cert.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1)))
    if uris:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def test_a_role_must_match_its_key_usage() -> None:
    ca = create_ca()
    client_only = [ExtendedKeyUsageOID.CLIENT_AUTH]
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    # A KME name on a client-only certificate, or an SAE name on a server certificate.
    for uri, usages in ((identity_uri(ROLE_KME, "kme-a"), client_only),
                        (identity_uri(ROLE_SAE, "sae-a"), both)):
        with pytest.raises(CertificateIdentityError, match="key usage"):
            identity_from_certificate(_custom_cert(ca, uris=[uri], usages=usages))
    assert identity_from_certificate(_custom_cert(
        ca, uris=[identity_uri(ROLE_SAE, "sae-a")], usages=client_only)) == Identity(
        ROLE_SAE, "sae-a")


@pytest.mark.parametrize("uris", [
    [],
    ["urn:corridor:sae:a", "urn:corridor:sae:b"],
    ["urn:corridor:admin:a"],
    ["urn:corridor:sae:"],
    ["https://example.org/sae-a"],
])
def test_certificates_without_exactly_one_valid_identity_are_refused(uris) -> None:
    ca = create_ca()
    cert = _custom_cert(ca, uris=uris, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(CertificateIdentityError):
        identity_from_certificate(cert)


def test_identity_from_der_refuses_garbage() -> None:
    with pytest.raises(CertificateIdentityError):
        identity_from_der(b"not a certificate")


def test_further_certificates_can_be_issued_from_a_loaded_ca(layout) -> None:
    ca = load_ca(layout.root)
    cert, _key = issue_certificate(ca, Identity(ROLE_SAE, "late-sae"))
    cert.verify_directly_issued_by(_load(layout.ca_cert))
    assert identity_from_certificate(cert) == Identity(ROLE_SAE, "late-sae")
    assert "BEGIN" not in repr(ca) and "key" not in repr(ca).lower().replace("subject", "")


def test_cli_init_writes_the_pki_and_reports_json(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = CliRunner().invoke(app, ["pki", "init", "--out", str(out), "--kme", "kme-a",
                                          "--sae", "sae-a@kme-a", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["saes"]["sae-a"]["kme_id"] == "kme-a"
    assert (out / report["kmes"]["kme-a"]["cert"]).is_file()
    again = CliRunner().invoke(app, ["pki", "init", "--out", str(out), "--kme", "kme-a"])
    assert again.exit_code == 2
    assert "--force" in again.output
    bad = CliRunner().invoke(app, ["pki", "init", "--out", str(tmp_path / "q"), "--kme",
                                   "kme-a", "--sae", "sae-without-kme"])
    assert bad.exit_code == 2
    assert "SAE_ID@KME_ID" in bad.output


def test_operator_certificates_carry_the_operator_role_for_client_auth_only(
        tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "pki", ["kme-a"], [("sae-a", "kme-a")],
                      operators=["alice", "night/shift"])
    ca = _load(layout.ca_cert)
    assert set(layout.operators) == {"alice", "night/shift"}
    for name, paths in layout.operators.items():
        cert = _load(paths.cert)
        cert.verify_directly_issued_by(ca)
        assert identity_from_certificate(cert) == Identity(ROLE_OPERATOR, name)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        assert paths.cert.parent == layout.root / "operator" / name.replace("/", "%2F")
        assert _mode(paths.key) == 0o600
    manifest = json.loads((layout.root / "pki.json").read_text())
    assert manifest["operators"]["alice"] == {"cert": "operator/alice/cert.pem",
                                              "key": "operator/alice/key.pem"}
    # An operator name on a server certificate is refused, like an SAE's.
    server = _custom_cert(create_ca(), uris=[identity_uri(ROLE_OPERATOR, "alice")],
                          usages=[ExtendedKeyUsageOID.SERVER_AUTH,
                                  ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(CertificateIdentityError, match="key usage"):
        identity_from_certificate(server)


def test_operator_names_are_checked(tmp_path: Path) -> None:
    for names in (["a", "a"], ["x" * 65], [""], ["two words\n"]):
        with pytest.raises(ParameterError, match="--operator"):
            init_pki(tmp_path / "pki", ["kme-a"], [], operators=names)


def test_an_operator_can_be_added_to_an_existing_pki(layout) -> None:
    grown = add_operator(layout, "late-operator")
    assert identity_from_certificate(_load(grown.operators["late-operator"].cert)) == \
        Identity(ROLE_OPERATOR, "late-operator")
    manifest = json.loads((layout.root / "pki.json").read_text())
    assert set(manifest["operators"]) == {"late-operator"}
    assert set(manifest["saes"]) == set(layout.saes)


def test_cli_init_issues_operator_certificates(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    result = CliRunner().invoke(app, ["pki", "init", "--out", str(out), "--kme", "kme-a",
                                      "--operator", "alice", "--operator", "bob",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["operators"]) == {"alice", "bob"}
    assert identity_from_certificate(_load(out / report["operators"]["bob"]["cert"])) == \
        Identity(ROLE_OPERATOR, "bob")


def test_dashboard_certificates_serve_tls_and_never_authenticate_a_client(
        tmp_path: Path) -> None:
    layout = init_pki(tmp_path / "pki", ["kme-a"], [("sae-a", "kme-a")],
                      dashboards=["console"], hosts=["localhost", "192.0.2.7"])
    cert = _load(layout.dashboards["console"].cert)
    cert.verify_directly_issued_by(_load(layout.ca_cert))
    assert identity_from_certificate(cert) == Identity(ROLE_DASHBOARD, "console")
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert ("dashboard", "console", layout.dashboards["console"].cert) in layout.certificates()
    manifest = json.loads((layout.root / "pki.json").read_text())
    assert manifest["dashboards"]["console"]["cert"] == "dashboard/console/cert.pem"
    # A dashboard name on a client certificate is refused by its key usage.
    client = _custom_cert(create_ca(), uris=[identity_uri(ROLE_DASHBOARD, "console")],
                          usages=[ExtendedKeyUsageOID.SERVER_AUTH,
                                  ExtendedKeyUsageOID.CLIENT_AUTH])
    with pytest.raises(CertificateIdentityError, match="key usage"):
        identity_from_certificate(client)
    grown = add_entity(layout, ROLE_DASHBOARD, "second")
    assert set(grown.dashboards) == {"console", "second"}
    with pytest.raises(ParameterError, match="role"):
        add_entity(layout, ROLE_KME, "kme-z")


def test_a_kme_refuses_a_dashboard_certificate_as_a_client(tmp_path: Path) -> None:
    import httpx

    from tests.kms.mtls_harness import KME_A, two_kme_deployment

    # Refused in the TLS handshake: its key usage is not client authentication.
    with two_kme_deployment(tmp_path) as dep, \
            dep.raw("dashboard", kme_id=KME_A, role="dashboard") as client, \
            pytest.raises((httpx.ReadError, httpx.ConnectError), match="unsupported certificate"):
        client.get("/api/v1/keys/sae-b/status")


@pytest.mark.parametrize("host", ["kme-a.example.com", "localhost", "10.0.0.7", "fe80::1",
                                  "x" * 63 + ".example"])
def test_host_names_a_client_can_match_are_accepted(host: str) -> None:
    assert check_host_name(host) == host


@pytest.mark.parametrize("host", ["bad host!", "-x.com", "x-.com", "a..b", "", "x" * 64,
                                  "under_score.example", "a." * 127 + "b"])
def test_host_names_no_client_can_match_are_refused(tmp_path, host: str) -> None:
    with pytest.raises(ParameterError, match="--host"):
        check_host_name(host)
    with pytest.raises(ParameterError, match="--host"):
        init_pki(tmp_path / "pki", ["kme-a"], [], hosts=("localhost", host))
    assert not (tmp_path / "pki").exists()


@pytest.mark.parametrize("days", [0, 36_501, 99_999_999])
def test_a_validity_the_calendar_cannot_hold_is_refused(tmp_path, days: int) -> None:
    """99999999 days overflowed Python's datetime into a traceback."""
    with pytest.raises(ParameterError, match="validity_days"):
        init_pki(tmp_path / "pki", ["kme-a"], [], validity_days=days)
    assert not (tmp_path / "pki").exists()
