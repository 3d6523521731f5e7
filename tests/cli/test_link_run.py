"""``corridor link run``: JSON shape, key files, bad input, and two OS processes over TCP."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corridor.cli import app

# A short link whose 1e7-pulse blocks hold a positive finite key (see test_pipeline.py).
# Without dead time: a saturated receiver (modern-snspd's 50 ns) clicks ten times less
# at 5 km, and these blocks would be too small for a key.
LINK = ["--preset", "modern-snspd", "--distance-km", "5", "--set", "dead_time_s=0",
        "--set", "z_basis_probability=0.5", "--set", "signal_probability=0.5",
        "--set", "decoy_probability=0.3", "--set", "vacuum_probability=0.2",
        "--pulses", "20000000", "--block-pulses", "10000000", "--seed", "21",
        "--timeout-s", "60"]

runner = CliRunner()


def run_cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["link", "run", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def in_process(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    keys = tmp_path_factory.mktemp("keys")
    code, out, err = run_cli(*LINK, "--format", "json", "--quiet", "--keys-out", str(keys))
    assert code == 0, err
    return json.loads(out), keys


def test_json_shape(in_process: tuple[dict, Path]) -> None:
    data, _ = in_process
    for key in ("link_id", "mode", "preset", "length_km", "pulses", "seed", "attack",
                "cascade_variant", "eps_sec", "eps_cor", "psk_source", "blocks", "totals"):
        assert key in data, key
    assert data["mode"] == "in-process" and data["length_km"] == 5.0
    assert len(data["blocks"]) == 2
    row = data["blocks"][0]
    for key in ("block_id", "state", "sifted_bits", "test_qber", "qber_corrected",
                "disclosed_bits", "reconciliation_efficiency", "secret_bits",
                "auth_bits_consumed", "channel", "timings_s", "discard_reason"):
        assert key in row, key
    totals = data["totals"]
    for key in ("blocks_delivered", "blocks_aborted", "sifted_bits", "disclosed_bits",
                "secret_bits", "channel", "auth_bits_consumed", "auth_bits_replenished",
                "wall_time_s", "secret_bits_per_second", "run_abort"):
        assert key in totals, key
    assert totals["secret_bits"] == sum(r["secret_bits"] for r in data["blocks"]) > 0
    for key in ("messages_sent", "bytes_sent", "round_trips"):
        assert totals["channel"][key] > 0
    assert "seed" in data["psk_source"]


def test_keys_out_files_are_equal(in_process: tuple[dict, Path]) -> None:
    data, keys = in_process
    alice, bob = (keys / "alice.bin").read_bytes(), (keys / "bob.bin").read_bytes()
    assert alice == bob
    assert len(alice) * 8 == data["totals"]["secret_bits"]
    for name in ("alice.bin", "bob.bin"):  # key files are readable by their owner only
        assert (keys / name).stat().st_mode & 0o777 == 0o600


def test_table_output_and_attack() -> None:
    code, out, _ = run_cli(*LINK[:-6], "--pulses", "10000000", "--block-pulses", "10000000",
                           "--seed", "3", "--attack", "intercept-resend",
                           "--attack-fraction", "0.6")
    assert code == 0
    assert "qber_above_threshold" in out
    assert "final secret bits: 0" in out


@pytest.mark.parametrize(("args", "field"), [
    (["--distance-km", "5", "--attack-fraction", "0.5"], "--attack-fraction"),
    (["--distance-km", "5", "--listen", "127.0.0.1:7000"], "--listen/--peer"),
    (["--distance-km", "5", "--role", "alice"], "--listen/--peer"),
    (["--distance-km", "5", "--cascade", "ldpc"], "--cascade"),
    (["--distance-km", "5", "--pulses", "0"], "--pulses"),
    (["--distance-km", "5", "--role", "bob", "--peer", "localhost"], "--peer"),
    (["--distance-km", "-3"], "length_km"),
])
def test_bad_input_is_one_clean_line(args: list[str], field: str) -> None:
    code, out, err = run_cli(*args)
    assert code == 2
    assert field in err
    assert "Traceback" not in err + out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_processes_over_tcp_give_the_in_process_keys(in_process: tuple[dict, Path],
                                                         tmp_path: Path) -> None:
    data, keys = in_process
    port = _free_port()
    command = [sys.executable, "-m", "corridor", "link", "run", *LINK, "--format", "json",
               "--quiet"]
    env = dict(os.environ)
    alice = subprocess.Popen([*command, "--role", "alice", "--listen", f"127.0.0.1:{port}",
                              "--keys-out", str(tmp_path / "a")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    bob = subprocess.Popen([*command, "--role", "bob", "--peer", f"127.0.0.1:{port}",
                            "--keys-out", str(tmp_path / "b")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out_a, err_a = alice.communicate(timeout=240)
    out_b, err_b = bob.communicate(timeout=240)
    assert alice.returncode == 0, err_a.decode()
    assert bob.returncode == 0, err_b.decode()
    report_a, report_b = json.loads(out_a), json.loads(out_b)
    assert report_a["mode"] == "tcp" and report_a["role"] == "alice"
    assert report_b["role"] == "bob"
    assert report_a["totals"]["secret_bits"] == data["totals"]["secret_bits"]
    assert report_a["totals"]["channel"]["bytes_sent"] > 0
    # Each role writes only its own file; both equal the in-process keys.
    assert not (tmp_path / "a" / "bob.bin").exists()
    expected = (keys / "alice.bin").read_bytes()
    assert (tmp_path / "a" / "alice.bin").read_bytes() == expected
    assert (tmp_path / "b" / "bob.bin").read_bytes() == expected
