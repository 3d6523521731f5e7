"""One error style for every command: a mistake is one line on stderr, ``error: ...``
naming the option and the value, exit code 2, never a traceback or a boxed panel,
whether Corridor's validation or the option parser found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "COLUMNS": "60"}  # a narrow terminal must not wrap the line


def corridor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corridor", *args], capture_output=True,
                          text=True, env=ENV, timeout=120)


@pytest.mark.parametrize(("args", "names"), [
    (["link", "rate", "--distance-km", "10", "--block-pulses", "1e10x"],
     ["--block-pulses", "1e10x"]),
    (["link", "simulate", "--pulses", "many"], ["--pulses", "many"]),
    (["link", "rate", "--bogus"], ["--bogus"]),
    (["link", "rate", "--format", "xml"], ["--format", "xml"]),
    (["link", "rate", "--preset", "nope"], ["preset", "nope"]),
    (["link", "rate", "--distance-km", "-3"], ["--distance-km", "-3"]),
    # typer's coercion of a list of numbers names no value itself.
    (["link", "rate", "--distance-km", "abc"], ["--distance-km", "'abc'"]),
    (["link", "run", "--distance-km=ten"], ["--distance-km", "'ten'"]),
    (["sae", "get-key"], ["SLAVE_SAE_ID"]),
    # pydantic's phrases (typer checks typed options with it) in Corridor's words.
    (["link", "plot", "--out", "x.png", "--points", "1"], ["--points", "must be at least 2"]),
    (["v2x", "budget", "--format", "xml"], ["--format", "'xml' is not one of"]),
    # hybrid entropy check: the options as typed, and none ignored with a file source.
    (["hybrid", "entropy", "check", "--source", "/dev/urandom", "--min-entropy", "9"],
     ["--min-entropy = 9.0"]),
    (["hybrid", "entropy", "check", "--source", "/dev/urandom", "--ca", "ca.pem"],
     ["--ca = 'ca.pem'", "https://"]),
    (["hybrid", "entropy", "check", "--source", "/dev/urandom", "--timeout-s", "3"],
     ["--timeout-s", "https://"]),
    (["hybrid", "entropy", "check", "--source", "https://127.0.0.1:9/x", "--cert", "c.pem"],
     ["--cert = 'c.pem'", "needs --key"]),
    (["sae", "get-key", "b", "--number", "1.5"], ["--number", "must be a whole number"]),
    # A path the system refuses: the path and why, not a traceback.
    (["pki", "init", "--out", __file__, "--kme", "kme-a"], [__file__, "File exists"]),
    (["ota", "init", "--dir", __file__], [__file__, "Not a directory"]),
    (["fleet", "init", "--dir", "unused-fleet", "--depot", "d1", "--vehicle", "v1",
      "--vehicle", "v1"], ["--vehicle", "distinct"]),
])
def test_every_mistake_is_one_line_with_exit_code_2(args: list[str], names: list[str]) -> None:
    result = corridor(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for name in names:
        assert name in lines[0]
    assert "Traceback" not in result.stderr and "╭" not in result.stderr


@pytest.mark.parametrize("args", [
    ["hybrid", "xwing", "keygen", "7f9c2b3a11d0e4c5"],  # the seed without --seed
    ["hybrid", "xwing", "decaps", "--sk", "--ct", "7f9c2b3a11d0e4c5"],
    ["hybrid", "xwing", "7f9c2b3a11d0e4c5"],  # the subcommand forgotten
])
def test_a_usage_error_never_echoes_a_secret_input(args: list[str]) -> None:
    result = corridor(*args)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "7f9c2b3a" not in result.stderr


def test_pulse_counts_read_exponent_form_everywhere() -> None:
    """``--block-pulses 1e10`` is read like ``--pulses 1e9`` (one number parser)."""
    result = corridor("link", "rate", "--preset", "modern-snspd", "--distance-km", "10",
                      "--block-pulses", "1e10", "--no-optimise", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert '"block_pulses": 10000000000' in result.stdout


def test_no_arguments_prints_help() -> None:
    result = corridor()
    assert "Usage" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["link", "rate", "--distance-km", "10", "20"],
                                  ["link", "rate", "--distance-km", "10", "--format", "json"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(args: list[str]) -> None:
    """``corridor ... | head``: the pipe closes before the command writes; it ends with
    the status of SIGPIPE (141) and no traceback, as other command-line tools do."""
    process = subprocess.Popen([sys.executable, "-m", "corridor", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # long before the command has anything to write
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141, stderr
    assert stderr == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_json_onto_a_full_device_is_one_line() -> None:
    with open("/dev/full", "w") as full:
        process = subprocess.run([sys.executable, "-m", "corridor", "link", "rate",
                                  "--distance-km", "10", "--format", "json"],
                                 stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert process.returncode == 2
    assert process.stderr.strip().splitlines() == [
        "error: standard output cannot be written: No space left on device"]


def test_printed_paths_are_never_hard_wrapped_into_a_pipe(tmp_path: Path) -> None:
    out = tmp_path / ("a-rather-long-directory-name-" * 3) / "pki"
    process = subprocess.run([sys.executable, "-m", "corridor", "pki", "init", "--out",
                              str(out), "--kme", "kme-a", "--sae", "s@kme-a"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert f"CA certificate: {out / 'ca.pem'}" in process.stdout.splitlines()


KEY_ID = "11111111-1111-1111-1111-111111111111"
PUB_A = "c73jNdvkuoD3yncdxcex4d67dikK3a5MpkQ46PWEKUg="
PUB_B = "fPAWZktPDI49Yj+BfyV0UeTuJBJJLQcGNuwOvlSRIKQ="
KME = ["--slave-sae", "sae-b", "--kme", "https://127.0.0.1:1", "--cert", "TMP/c.pem",
       "--key", "TMP/k.pem", "--ca", "TMP/ca.pem"]


def _files(tmp: Path) -> dict[str, str]:
    """Inputs the cases below refer to by name."""
    psk_open = tmp / "psk-open.bin"
    psk_open.write_bytes(bytes(range(100)))
    psk_open.chmod(0o644)
    short_key = tmp / "short.b64"
    short_key.write_text("AAAAAAAAAAAAAAAAAAAAAA==\n")  # 16 bytes
    short_key.chmod(0o600)
    key = tmp / "key.b64"
    key.write_text("A" * 43 + "=\n")  # 32 bytes
    key.chmod(0o600)
    open_key = tmp / "open-key.b64"
    open_key.write_text("A" * 43 + "=\n")
    open_key.chmod(0o644)
    (tmp / "empty.json").write_text("{}")
    asset = {"category": "corridor", "location": "c.toml", "algorithm": None,
             "method": "corridor:toml", "line": 1}  # a hand-edited inventory
    (tmp / "bad-asset.json").write_text(json.dumps({
        "summary": {"assets": 1, "by_risk": {}, "by_vulnerability": {}},
        "assets": ["not an object", asset]}))
    (tmp / "policy.toml").write_text('name = "a corridor file"\n[[links]]\nid = "x"\n')
    return {"PSK_OPEN": str(psk_open), "SHORT_KEY": str(short_key), "KEY": str(key),
            "WORLD_READABLE": str(open_key),
            "EMPTY_JSON": str(tmp / "empty.json"), "BAD_ASSET": str(tmp / "bad-asset.json"),
            "MISSING": str(tmp / "missing.json"),
            "POLICY": str(tmp / "policy.toml"), "TMP": str(tmp)}


@pytest.mark.parametrize(("args", "names", "internal"), [
    # A model's field named as the option the user typed (found by name, or mapped).
    (["pki", "init", "--out", "TMP/pki", "--kme", "a", "--validity-days", "0"],
     ["--validity-days = 0"], ["validity_days"]),
    (["link", "run", "--distance-km", "10", "--timeout-s", "-1"],
     ["--timeout-s = -1.0"], ["channel_timeout_s"]),
    (["hybrid", "xwing", "keygen", "--seed", "00"], ["--seed"], []),
    (["inventory", "scan"], ["TARGETS: at least one"], ["None"]),
    (["inventory", "plan"], ["TARGETS: at least one", "or --inventory FILE"], ["None"]),
    (["web", "--from-up", "MISSING", "--pki", "TMP"], ["--pki", "only with --config"], []),
    (["evidence", "EMPTY_JSON", "--pdf", "TMP/e.html"], ["--pdf = ", "ending in .pdf"], []),
    # The pre-shared key is checked before anything runs, and must be private.
    (["link", "run", "--distance-km", "10", "--psk-file", "PSK_OPEN"],
     ["--psk-file", "mode 0644", "chmod 600"], ["psk_file"]),
    (["link", "simulate", "--distance-km", "10", "--pulses", "1e20"],
     ["--pulses", "'1e20'", "1e15"], []),
    (["sae", "get-key", "b", "--kme", "http://x", "--cert", "c", "--key", "k", "--ca", "ca"],
     ["--kme = 'http://x'", "https://"], ["kme_url"]),
    (["sae", "get-key", "b", "--get", "--additional-slave", "c"],
     ["--get", "--additional-slave"], ["method"]),
    (["hybrid", "wireguard", "psk", "-o", "-", "--public-key", PUB_A, "--peer", PUB_A,
      "--key-file", "KEY", "--key-id", KEY_ID], ["--public-key/--peer"], ["public_keys"]),
    (["hybrid", "wireguard", "psk", "-o", "-", "--public-key", PUB_A, "--peer", PUB_B,
      "--key-file", "SHORT_KEY", "--key-id", KEY_ID], ["--key-file", "128 bits"],
     ["qkd_key"]),
    (["hybrid", "wireguard", "psk", "-o", "-", "--public-key", PUB_A, "--peer", PUB_B,
      "--no-qkd"], ["--no-qkd", "--pqc-key-file"], ["inputs"]),
    # A key file is a secret (mode 0600), and the options that reach a KME go without it.
    (["hybrid", "wireguard", "psk", "-o", "-", "--public-key", PUB_A, "--peer", PUB_B,
      "--key-file", "WORLD_READABLE", "--key-id", KEY_ID], ["--key-file", "mode 0644"], []),
    (["hybrid", "macsec", "export", "-o", "-", "--key-file", "KEY", "--key-id", KEY_ID,
      "--kme", "https://127.0.0.1:1"], ["--kme = ", "only with --slave-sae"], []),
    (["hybrid", "macsec", "export", "-o", "-", "--key-file", "KEY", "--key-id", KEY_ID,
      "--size-bits", "512"], ["--size-bits = 512", "only with --slave-sae"], []),
    (["hybrid", "macsec", "export", "-o", "-", "--key-file", "KEY", "--key-id", KEY_ID,
      "--device", "eth0"], ["--device = 'eth0'", "only with --format ip-macsec"], []),
    (["hybrid", "macsec", "export", "-o", "-", "--key-file", "KEY", "--key-id", KEY_ID,
      "--format", "ip-macsec", "--device", "eth0", "--peer-mac", "00:11:22:33:44:55",
      "--mka-priority", "3"], ["--mka-priority = 3", "(MKA)"], []),
    # A mistake in the other options is found before a key is taken from the KME (none
    # answers at port 1: the KME would be asked first if it were not).
    (["hybrid", "wireguard", "psk", "-o", "-", "--public-key", PUB_A, "--peer", PUB_A,
      *KME], ["--public-key/--peer"], ["--ca =", "cannot reach"]),
    (["hybrid", "wireguard", "psk", "-o", "TMP/no/such/dir/psk", "--public-key", PUB_A,
      "--peer", PUB_B, *KME], ["--output", "existing directory"], ["--ca ="]),
    (["hybrid", "macsec", "export", "-o", "-", "--cak-size-bytes", "20", *KME],
     ["--cak-size-bytes = 20"], ["--ca =", "cannot reach"]),
    (["hybrid", "macsec", "export", "-o", "-", "--cipher", "foo", *KME], ["--cipher = "],
     ["--ca ="]),
    (["pki", "init", "--out", "TMP/pki", "--kme", "kme a"], ["--kme = 'kme a'"], ["kme_id"]),
    (["link", "rate", "--distance-km", "10", "--config", "MISSING"], ["--config = "],
     ["config file"]),
    (["evidence"], ["FILE: exactly one of"], ["None"]),
    (["sae", "get-key"], ["Missing argument 'SLAVE_SAE_ID'"], ["slave_sae_id"]),
    (["sae", "get-key-with-id", "sae-a", "not-a-uuid", *KME[2:]],
     ["KEY_IDS = 'not-a-uuid'", "UUID"], ["cannot reach"]),
    (["hybrid", "connect", "--from-up", "MISSING", "--sae", "sae-a", "--peer", "sae-a"],
     ["--peer = 'sae-a'", "another SAE"], []),
    # Checked before a KME is asked (none answers at port 1).
    (["sae", "get-key", "b", "--size", "7", *KME[2:]], ["--size = 7", "multiple of 8"],
     ["cannot reach"]),
    (["sae", "get-key", "b", "--number", "0", *KME[2:]], ["--number = 0"], ["cannot reach"]),
    (["sae", "get-key", "b", "--sae", "sae-a", *KME[2:]], ["--sae = 'sae-a'",
                                                          "only with --from-up"], []),
    (["alarm", "list", "--operator", "ops", *KME[2:]], ["--operator = 'ops'"], []),
    (["hybrid", "wireguard", "psk", "-o", "-", "--public-key", PUB_A, "--peer", PUB_B,
      "--slave-sae", "b", "--master-sae", "a"],
     ["--slave-sae/--master-sae: give exactly one of"], ["--key-file ="]),
    (["link", "simulate", "--distance-km", "10", "--set", "length_km=25"],
     ["--set length_km = '25'", "--distance-km"], []),
    (["link", "run", "--distance-km", "10", "--set", "fibre.length_km=25"],
     ["--set fibre.length_km = '25'", "--distance-km"], []),
    (["link", "simulate", "--distance-km", "10", "--set", "efficiency=2"],
     ["--set efficiency = 2.0"], []),
    (["audit", "verify", "MISSING"], ["FILE = ", "existing audit log"], ["--kek"]),
    (["inventory", "plan", "--inventory", "MISSING"],
     ["--inventory", "No such file or directory"], ["fields of a finding"]),
    (["inventory", "plan", "--inventory", "EMPTY_JSON"], ["--inventory", "summary"], []),
    (["inventory", "plan", "--inventory", "BAD_ASSET", "--timeout-s", "1"],
     ["--timeout-s = 1.0", "not with --inventory"], []),
    (["inventory", "plan", "--inventory", "BAD_ASSET"],
     ["--inventory", "assets[1]: algorithm = None: must be a string"], ["Traceback"]),
    (["inventory", "scan", "TMP", "--policy", "POLICY"],
     ["policy key = 'links, name'", "[[systems]]"], ["None"]),
])
def test_a_mistake_names_what_the_user_typed(tmp_path: Path, args: list[str],
                                             names: list[str], internal: list[str]) -> None:
    files = _files(tmp_path)
    argv = []
    for arg in args:
        for placeholder, value in files.items():
            arg = arg.replace(placeholder, value)
        argv.append(arg)
    result = corridor(*argv)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for name in names:
        assert name in lines[0], lines[0]
    for name in internal:
        assert name not in lines[0], lines[0]
