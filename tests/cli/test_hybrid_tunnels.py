"""``corridor hybrid macsec export`` and ``corridor hybrid wireguard psk``: files 0600,
stdout only on '-', one-line errors naming the field."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from corridor.cli import app
from corridor.mobility.macsec import derive_mka
from corridor.mobility.wireguard import combine_psk, decode_psk
from tests.mobility.wg_fakes import public_key

KEY = os.urandom(32)
KEY_ID = "3d0c2c55-5b36-4c1e-9b7a-8f1e2d3c4b5a"
runner = CliRunner()


def _key_file(tmp_path: Path) -> Path:
    file = tmp_path / "qkd.key"
    file.write_text(base64.b64encode(KEY).decode())
    file.chmod(0o600)
    return file


def test_macsec_export_writes_0600_and_no_key_on_terminal(tmp_path: Path) -> None:
    out = tmp_path / "macsec.conf"
    result = runner.invoke(app, ["hybrid", "macsec", "export", "--key-file",
                                 str(_key_file(tmp_path)), "--key-id", KEY_ID,
                                 "--output", str(out), "--generation", "4"])
    assert result.exit_code == 0, result.output
    keys = derive_mka(KEY, KEY_ID, generation=4)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert f"mka_cak={keys.cak.hex()}" in out.read_text()
    assert keys.cak.hex() not in result.output


def test_macsec_json_on_stdout_when_asked(tmp_path: Path) -> None:
    result = runner.invoke(app, ["hybrid", "macsec", "export", "--key-file",
                                 str(_key_file(tmp_path)), "--key-id", KEY_ID,
                                 "--format", "json", "--output", "-"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["mka_ckn"] == derive_mka(KEY, KEY_ID).ckn.hex()


def test_macsec_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    for extra, field in ((["--cak-size-bytes", "24"], "--cak-size-bytes"),
                         (["--format", "ip-macsec"], "--device"),
                         (["--format", "ip-macsec", "--device", "eth0", "--peer-mac", "zz"],
                          "--peer-mac")):
        result = runner.invoke(app, ["hybrid", "macsec", "export", "--key-file",
                                     str(_key_file(tmp_path)), "--key-id", KEY_ID,
                                     "--output", "-", *extra])
        assert result.exit_code == 2, result.output
        assert field in result.output and len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["hybrid", "macsec", "export", "--key-id", "nope",
                                 "--key-file", str(_key_file(tmp_path)), "--output", "-"])
    assert result.exit_code == 2 and "--key-id" in result.output


def test_wireguard_psk_export(tmp_path: Path) -> None:
    pub_a, pub_b = public_key(), public_key()
    pqc = os.urandom(32)
    (tmp_path / "pqc").write_text(base64.b64encode(pqc).decode())
    out = tmp_path / "psk"
    result = runner.invoke(app, ["hybrid", "wireguard", "psk", "--key-file",
                                 str(_key_file(tmp_path)), "--key-id", KEY_ID,
                                 "--public-key", pub_a, "--peer", pub_b,
                                 "--pqc-key-file", str(tmp_path / "pqc"), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert decode_psk(out.read_text()) == combine_psk(
        qkd_key=KEY, key_id=KEY_ID, pqc_secret=pqc, generation=0, public_keys=(pub_b, pub_a))
    bad = runner.invoke(app, ["hybrid", "wireguard", "psk", "--no-qkd", "--public-key", pub_a,
                              "--peer", "short", "--output", "-"])
    assert bad.exit_code == 2 and "--peer" in bad.output
