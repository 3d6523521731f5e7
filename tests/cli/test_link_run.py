"""``corridor link run``: JSON shape, key files, bad input, and two OS processes over TCP."""

from __future__ import annotations

import json
import math
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
                "cascade_variant", "eps_sec", "eps_cor", "finite_key_bound", "psk_source",
                "blocks", "totals"):
        assert key in data, key
    assert data["mode"] == "in-process" and data["length_km"] == 5.0
    assert len(data["blocks"]) == 2
    row = data["blocks"][0]
    for key in ("block_id", "state", "sifted_bits", "test_qber", "qber_corrected",
                "disclosed_bits", "reconciliation_efficiency", "secret_bits",
                "auth_bits_consumed", "channel", "timings_s", "discard_reason", "finite_key"):
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
    assert "block 0 discarded: qber_above_threshold" in out


def test_table_shows_every_digit_on_an_80_column_console(
        in_process: tuple[dict, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    # A 10 km block of 1e9 pulses: eight-digit counts, and a discarded block's reason.
    # Before, rich cut the QBER and f columns to "0.01..." and "1.1..." to fit 80 columns.
    from io import StringIO

    from rich.console import Console

    from corridor.cli import link_run

    data = json.loads(json.dumps(in_process[0]))
    row = data["blocks"][0]
    row.update(sifted_bits=14_313_013, qber_corrected=0.0100079, disclosed_bits=1_421_963,
               reconciliation_efficiency=1.1749, secret_bits=3_546_064,
               auth_bits_consumed=2_048, discard_reason="phase_error_bound_too_high")
    # A console of its own (setting the shared console's width would outlive the test).
    out = StringIO()
    monkeypatch.setattr(link_run, "console", Console(file=out, width=80))
    link_run._render_table(data)
    text = out.getvalue()
    assert "\u2026" not in text and "..." not in text
    for shown in ("14313013", "0.0100", "1421963", "1.175", "3546064", "2048",
                  "block 0 discarded: phase_error_bound_too_high"):
        assert shown in text, shown


@pytest.mark.parametrize(("args", "field"), [
    (["--distance-km", "5", "--attack-fraction", "0.5"], "--attack-fraction"),
    (["--distance-km", "5", "--listen", "127.0.0.1:7000"], "--listen/--peer"),
    (["--distance-km", "5", "--role", "alice"], "--listen/--peer"),
    (["--distance-km", "5", "--cascade", "ldpc"], "--cascade"),
    (["--distance-km", "5", "--pulses", "0"], "--pulses"),
    (["--distance-km", "5", "--role", "bob", "--peer", "localhost"], "--peer"),
    (["--distance-km", "-3"], "--distance-km = -3.0"),
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


def _independent_key_length(fk: dict, sifted_bits: int) -> int:
    """Lim et al. 2014, Eqs. (1)-(5), from the printed JSON only (not corridor's code)."""
    mu1, mu2, mu3 = fk["intensities"]
    p = fk["class_probabilities"]
    eps, eps_cor = fk["eps_sec"], fk["eps_cor"]
    tight = fk["bound"] == "tightened"
    ln = math.log(21 / eps)
    tau0 = sum(q * math.exp(-m) for m, q in zip(fk["intensities"], p, strict=True))
    tau1 = sum(q * math.exp(-m) * m for m, q in zip(fk["intensities"], p, strict=True))

    def hoeffding(counts: list[int]) -> tuple[list[float], list[float]]:
        d = math.sqrt(sum(counts) / 2 * ln)
        scale = [math.exp(m) / q for m, q in zip(fk["intensities"], p, strict=True)]
        return ([s * (c - d) for s, c in zip(scale, counts, strict=True)],
                [s * (c + d) for s, c in zip(scale, counts, strict=True)])

    def vacuum_single(counts: list[int]) -> tuple[float, float]:
        lo, hi = hoeffding(counts)
        s0 = max(0.0, tau0 * (mu2 * lo[2] - mu3 * hi[1]) / (mu2 - mu3))
        s1 = max(0.0, tau1 * mu1 * (lo[1] - hi[2] - (mu2**2 - mu3**2) / mu1**2
                                    * (hi[0] - s0 / tau0))
                 / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2))
        if tight:
            s0 = min(s0, sum(counts))
            s1 = min(s1, sum(counts) - s0)
        return s0, s1

    def h(x: float) -> float:
        return 0.0 if x <= 0 else -x * math.log2(x) - (1 - x) * math.log2(1 - x)

    s_z0, s_z1 = vacuum_single(fk["key_basis_detections"])
    _, s_x1 = vacuum_single(fk["test_basis_detections"])
    m_lo, m_hi = hoeffding(fk["test_basis_errors"])
    v_x1 = max(0.0, tau1 * (m_hi[1] - m_lo[2]) / (mu2 - mu3))
    if tight:
        v_x1 = min(v_x1, sum(fk["test_basis_errors"]))
    phi = 0.5
    if s_x1 > 0 and s_z1 > 0 and v_x1 / s_x1 < 0.5:
        b = max(v_x1 / s_x1, 1 / s_x1)  # at least one test error (docs/finite-key.md)
        c, d = s_x1, s_z1
        gamma = math.sqrt((c + d) * (1 - b) * b / (c * d * math.log(2)) * max(0.0, math.log2(
            (c + d) / (c * d * (1 - b) * b) * 21**2 / eps**2)))
        phi = min(0.5, v_x1 / s_x1 + gamma)
    lambda_ec = fk["reconciliation_disclosed_bits"] + fk["verification_tag_bits"]
    length = math.floor(s_z0 + s_z1 * (1 - h(phi)) - lambda_ec - 6 * math.log2(21 / eps)
                        - math.log2(2 / eps_cor))
    removed = fk["verification_removed_bits"] + fk["reconciliation_dropped_bits"]
    return min(max(length, 0) - removed, sifted_bits - removed)


@pytest.mark.parametrize("bound", ["lim2014", "tightened"])
def test_the_printed_json_is_enough_to_recompute_the_key_length(bound: str) -> None:
    one_block = [*LINK[:LINK.index("--pulses")], "--pulses", "10000000", "--block-pulses",
                 "10000000", "--seed", "21", "--timeout-s", "60"]
    code, out, err = run_cli(*one_block, "--finite-key", bound, "--format", "json", "--quiet")
    assert code == 0, err
    data = json.loads(out)
    assert data["finite_key_bound"] == bound
    (row,) = data["blocks"]
    assert row["state"] == "AUTHENTICATED"
    fk = row["finite_key"]
    assert fk["bound"] == bound
    assert fk["intensities"] == [0.5, 0.15, 0.0]
    assert fk["class_probabilities"] == [0.5, 0.3, 0.2]
    assert fk["z_basis_probability"] == 0.5
    assert sum(fk["key_basis_detections"]) == row["sifted_bits"]
    assert sum(fk["test_basis_detections"]) == row["test_bits"]
    assert all(len(fk[k]) == 3 for k in ("key_basis_errors", "test_basis_errors"))
    assert fk["lambda_ec_bits"] == fk["reconciliation_disclosed_bits"] \
        + fk["verification_tag_bits"] == row["disclosed_bits"]
    if fk["reconciliation_alice_bits"] is not None:
        assert fk["reconciliation_alice_bits"] + fk["reconciliation_bob_bits"] \
            == fk["reconciliation_disclosed_bits"]
    assert fk["security_cost_bits"] == pytest.approx(
        6 * math.log2(21 / fk["eps_sec"]) + math.log2(2 / fk["eps_cor"]))
    assert fk["finite_key_bits"] == row["finite_key_bits"] > 0
    assert _independent_key_length(fk, row["sifted_bits"]) == row["finite_key_bits"]


def test_the_length_is_recomputable_when_ldpc_frames_are_dropped() -> None:
    """A short code at a generous efficiency: some frames fail every retry and leave the
    key; the printed JSON must say how many bits (it did not, so the length could not
    be recomputed from it)."""
    one_block = [*LINK[:LINK.index("--pulses")], "--pulses", "10000000", "--block-pulses",
                 "10000000", "--seed", "21", "--timeout-s", "120"]
    code, out, err = run_cli(*one_block, "--reconciliation", "ldpc", "--ldpc-code-bits",
                             "16384", "--ldpc-efficiency", "1.3", "--ldpc-retry-step", "0.001",
                             "--format", "json", "--quiet")
    assert code == 0, err
    (row,) = json.loads(out)["blocks"]
    fk = row["finite_key"]
    assert row["state"] == "AUTHENTICATED"
    assert fk["reconciliation_dropped_bits"] == row["reconciliation_dropped_bits"] > 0
    assert _independent_key_length(fk, row["sifted_bits"]) == row["finite_key_bits"] > 0
