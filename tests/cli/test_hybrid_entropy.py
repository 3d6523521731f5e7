"""``corridor hybrid entropy check``: verdicts, cutoffs a user can recompute, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corridor.cli import app
from corridor.entropy.health import apt_cutoff, rct_cutoff
from tests.entropy import conftest as entropy_fixtures
from tests.entropy.conftest import ClientTls
from tests.entropy.qrng_server import QrngServer

# the HTTPS test QRNG of tests/entropy, shared here
pki = entropy_fixtures.pki
qrng_server = entropy_fixtures.qrng_server
tls = entropy_fixtures.tls

runner = CliRunner()


def check(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["hybrid", "entropy", "check", *args])
    return result.exit_code, result.output


def test_good_file_passes_and_bytes_are_not_printed(tmp_path: Path) -> None:
    path = tmp_path / "good.bin"
    content = os.urandom(200_000)
    path.write_bytes(content)
    code, output = check("--source", str(path), "--bytes", "200000", "--min-entropy", "7",
                         "--format", "json")
    assert code == 0, output
    report = json.loads(output)
    assert report["verdict"] == "pass" and report["failures"] == []
    assert report["rct_cutoff"] == rct_cutoff(7) == 4
    assert report["apt_cutoff"] == apt_cutoff(7) == 18
    assert report["samples_tested"] == 200_000 and report["windows_completed"] == 390
    assert report["longest_run"] < report["rct_cutoff"]
    assert report["max_window_count"] < report["apt_cutoff"]
    for i in range(0, 2000, 16):  # no piece of the data appears in the output
        assert content[i:i + 16].hex() not in output


def test_stuck_source_fails_with_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "stuck.bin"
    path.write_bytes(os.urandom(1000) + b"\x07" * 12 + os.urandom(1000))
    code, output = check("--source", str(path), "--bytes", "2012", "--format", "json")
    assert code == 1
    report = json.loads(output)
    assert report["verdict"] == "fail" and report["rct_failures"] == 2  # 12 = 5 + 5 + 2
    assert report["failures"][0] == {"test": "repetition_count", "sample_index": 1004,
                                     "count": 5, "cutoff": 5}


def test_biased_source_fails_the_apt_in_the_table(tmp_path: Path) -> None:
    body = bytearray((i % 255) + 1 for i in range(8192))
    body[::8] = bytes(len(body[::8]))
    path = tmp_path / "biased.bin"
    path.write_bytes(bytes(body))
    code, output = check("--source", str(path), "--bytes", "8192")
    assert code == 1
    assert "FAIL" in output and "APT cutoff C" in output
    assert "adaptive_proportion at sample" in output


def test_https_endpoint_with_mutual_tls(qrng_server: QrngServer, tls: ClientTls) -> None:
    code, output = check("--source", qrng_server.url("/anu"), "--bytes", "20000",
                         "--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key),
                         "--header", "Authorization: Bearer SECRET-TOKEN", "--format", "json")
    assert code == 0, output
    assert json.loads(output)["verdict"] == "pass"
    assert "SECRET-TOKEN" not in output


@pytest.mark.parametrize(("path", "text"), [("/unavailable", "http_status (503)"),
                                            ("/short", "short_read")])
def test_unusable_endpoint_is_one_error_line(qrng_server: QrngServer, tls: ClientTls,
                                             path: str, text: str) -> None:
    code, output = check("--source", qrng_server.url(path), "--bytes", "1000",
                         "--ca", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key))
    assert code == 2
    assert output.strip().startswith("error: ") and text in output
    assert len(output.strip().splitlines()) == 1


@pytest.mark.parametrize(("args", "names"), [
    (["--source", "/nonexistent/qrng"], ["source", "/nonexistent/qrng"]),
    (["--source", "/dev/null", "--bytes", "0"], ["--bytes", "0"]),
    # Under one APT window (512) the APT never runs: no PASS for it.
    (["--source", "/dev/urandom", "--bytes", "100"], ["--bytes", "100", "512"]),
    (["--source", "/dev/null", "--min-entropy", "9"], ["--min-entropy = 9.0"]),
    (["--source", "https://x.invalid/r", "--header", "TOKEN-ONLY"], ["--header", "<hidden>"]),
])
def test_mistakes_name_the_field(args: list[str], names: list[str]) -> None:
    code, output = check(*args)
    assert code == 2
    for name in names:
        assert name in output
    assert "TOKEN-ONLY" not in output
