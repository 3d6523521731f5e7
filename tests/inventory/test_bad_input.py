"""Bad input is skipped with a reason, never a crash: unreadable files, binary garbage,
huge files, symlink loops, code that does not parse, a TLS server that stalls."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corridor.inventory.scan import ScanOptions, scan
from corridor.inventory.scan_config import config_findings
from corridor.inventory.scan_keys import UnreadableArtefact, pem_findings, ssh_public_lines
from corridor.inventory.scan_native import native_findings
from tests.inventory.tls_servers import stalling_server


def _reasons(tmp_path: Path, **options: object) -> dict[str, str]:
    result = scan([str(tmp_path)], ScanOptions(**options))  # type: ignore[arg-type]
    return {Path(s.location).name: s.reason for s in result.skipped}


def test_binary_garbage_in_files_of_every_kind(tmp_path: Path) -> None:
    garbage = bytes(range(256)) * 8
    for name in ("cert.pem", "cert.crt", "store.p12", "tool.py", "Main.java", "sshd_config"):
        (tmp_path / name).write_bytes(garbage)
    reasons = _reasons(tmp_path)
    assert set(reasons) == {"cert.pem", "cert.crt", "store.p12", "tool.py", "Main.java",
                            "sshd_config"}
    assert "binary" in reasons["cert.pem"] and "DER" in reasons["cert.crt"]
    assert "PKCS#12" in reasons["store.p12"] and "binary" in reasons["tool.py"]


def test_huge_files_are_skipped_before_reading(tmp_path: Path) -> None:
    (tmp_path / "big.py").write_text("import hashlib\n" * 1000)
    reasons = _reasons(tmp_path, max_file_bytes=1000)
    assert "larger than the limit" in reasons["big.py"]


def test_symlink_loops_end(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)
    (tmp_path / "self.pem").symlink_to(tmp_path / "self.pem")
    reasons = _reasons(tmp_path)
    assert reasons["up"].startswith("symlink loop")
    assert reasons["self.pem"] == "symlink loop"


def test_unreadable_and_special_files(tmp_path: Path) -> None:
    (tmp_path / "gone.pem").symlink_to(tmp_path / "missing.pem")
    os.mkfifo(tmp_path / "pipe.pem")  # opening it would block: never opened
    (tmp_path / "locked.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "locked.key").chmod(0)
    reasons = _reasons(tmp_path)
    assert reasons["gone.pem"].startswith("cannot read")
    assert reasons["pipe.pem"] == "not a regular file"
    assert "locked.key" in reasons  # unreadable (user) or no complete PEM block (root)


def test_code_and_corridor_files_that_do_not_parse(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("def f(:\n    import hashlib\n")
    (tmp_path / "corridor.toml").write_text("[[kmes]]\nid = 1\n[[links]]\nid = 'x'\n")
    (tmp_path / "bad.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                      "-----END CERTIFICATE-----\n")
    (tmp_path / "id_truncated").write_bytes(
        b"-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + base64.b64encode(b"openssh-key-v1\x00\x00\x00") + b"\n"
        b"-----END OPENSSH PRIVATE KEY-----\n")
    reasons = _reasons(tmp_path)
    assert reasons["id_truncated"].startswith("PEM block OPENSSH PRIVATE KEY at line 1 does "
                                              "not parse")
    assert reasons["broken.py"].startswith("Python that does not parse (line 1)")
    assert reasons["corridor.toml"].startswith("invalid corridor file")
    assert "does not parse" in reasons["bad.pem"]


def test_a_stalled_tls_server_is_skipped_after_one_timeout() -> None:
    with stalling_server() as port:
        result = scan([f"127.0.0.1:{port}"], ScanOptions(timeout_s=0.5))
    assert result.findings == []
    assert [s.reason for s in result.skipped] == ["no TLS handshake within 0.5 s"]


def test_a_closed_port_and_a_missing_path() -> None:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
    result = scan([f"127.0.0.1:{port}", "/nonexistent/inventory/path"])
    reasons = [s.reason for s in result.skipped]
    assert reasons[0].startswith("cannot connect")
    assert reasons[1] == "no such file, directory or host:port"


@pytest.mark.parametrize("text", ["", "\x00\x01", "-----BEGIN CERTIFICATE-----",
                                  "KexAlgorithms ,,,\nHostKey\n", "[Interface]\nPrivateKey=!"])
def test_odd_text_never_raises(tmp_path: Path, text: str) -> None:
    for name in ("x.pem", "sshd_config", "wg0.conf", "known_hosts", "a.go", "a.c"):
        (tmp_path / name).write_text(text)
    scan([str(tmp_path)])


_TOKENS = st.sampled_from([
    "KexAlgorithms ", "HostKey ", "proposals = ", "ppk_id = ", "secret = 0x", "ssl_ciphers ",
    "SSLProtocol all -", "Groups = ", "mka_cak=", "macsec_policy=1", "[Interface]",
    "PrivateKey = ", "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----", "ssh-rsa ",
    "ecdsa-sha2-nistp256 ", "RSA_generate_key_ex(", "KeyPairGenerator.getInstance(\"",
    "rsa.GenerateKey(", "aes.NewCipher(", "EVP_PKEY_Q_keygen(", "/*", "*/", "//", "\"", ",",
    "=", "{", "}", "\n", " ", "2048", "secp384r1", "ke1_mlkem768", "AAAA", "x25519"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(_TOKENS, st.text(max_size=8)), max_size=40))
def test_every_text_scanner_answers_any_text_with_findings_or_a_reason(
        parts: list[str]) -> None:
    text = "".join(parts)
    config_findings("x.conf", text)
    for language in ("java", "c", "go"):
        native_findings("x", text, language)
    ssh_public_lines("known_hosts", text, "known-hosts")
    with contextlib.suppress(UnreadableArtefact):
        pem_findings("x.pem", text.encode("utf-8", "replace"))
