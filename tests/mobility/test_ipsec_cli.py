"""``corridor hybrid ipsec``: clear errors without charon, and status from a real one."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from corridor.cli import app
from tests.mobility.test_ipsec_charon import kmes, make_tunnel, pair  # noqa: F401 (fixtures)

runner = CliRunner()


def test_an_absent_vici_socket_is_one_clear_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["hybrid", "ipsec", "status", "--vici-socket",
                                 str(tmp_path / "charon.vici")])
    assert result.exit_code == 2
    assert "charon's VICI socket" in result.output and "does not exist" in result.output
    assert "Traceback" not in result.output


def test_the_responder_needs_exactly_one_action(tmp_path: Path) -> None:
    psk = tmp_path / "psk"
    psk.write_text("x" * 32)
    result = runner.invoke(app, [
        "hybrid", "ipsec", "responder", "--kme", "https://127.0.0.1:1", "--cert", "c",
        "--key", "k", "--ca", "a", "--sae-id", "sae-b", "--peer-sae-id", "sae-a",
        "--connection", "corr", "--local-addr", "10.0.0.2", "--remote-addr", "10.0.0.1",
        "--local-ts", "10.2.0.1/32", "--remote-ts", "10.1.0.1/32", "--ike-psk-file",
        str(psk), "--vici-socket", str(tmp_path / "none")])
    assert result.exit_code == 2 and "exactly one of them" in result.output


def test_status_shows_the_ike_sa_and_its_ppk(make_tunnel) -> None:  # noqa: F811
    tunnel = make_tunnel()
    tunnel.initiator.rotate()
    result = runner.invoke(app, ["hybrid", "ipsec", "status", "--vici-socket",
                                 str(tunnel.pair.initiator.vici_socket)])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["charon"]["daemon"] == "charon"
    assert [(sa["connection"], sa["ppk"], sa["state"]) for sa in status["ike_sas"]] == [
        ("corr-g1", True, "ESTABLISHED")]
