"""``corridor hybrid session --from-up``: one handshake between the SAEs of a running
corridor, records printed, never a key; bad input is one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corridor.cli import app
from corridor.hybrid.corridor_sessions import CorridorSessions
from corridor.kms.node import Corridor, parse_corridor

runner = CliRunner()


@pytest.fixture
def running(tmp_path: Path):  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    keys.mkdir()
    data = os.urandom(64 * 1024)
    (keys / "alice.bin").write_bytes(data)
    (keys / "bob.bin").write_bytes(data)
    spec = parse_corridor({
        "kme": {"max_key_count": 10_000}, "kmes": [{"id": "kme-a"}, {"id": "kme-b"}],
        "links": [{"id": "link-ab", "alice_kme": "kme-a", "bob_kme": "kme-b",
                   "preset": "modern-snspd", "parameters": {"length_km": 5.0},
                   "source": "recorded", "keys_dir": str(keys), "block_bytes": 1024}],
        "saes": [{"id": "sae-a", "kme": "kme-a"}, {"id": "sae-b", "kme": "kme-b"}],
        "hybrid": [{"master_sae_id": "sae-a", "slave_sae_id": "sae-b", "policy": "any"}]})
    with Corridor(spec, tmp_path / "run", host="127.0.0.1") as corridor:
        # The up file as `corridor up` writes it (no background session needed here).
        corridor.up_extra["hybrid_sessions"] = [
            {"initiator_sae_id": "sae-a", "responder_sae_id": "sae-b", "policy": "any"}]
        corridor.write_up_file()
        assert CorridorSessions  # the module corridor up uses imports cleanly
        yield corridor


@pytest.mark.timeout(120)
def test_session_prints_both_records_as_json(running: Corridor) -> None:
    result = runner.invoke(app, ["hybrid", "session", "--from-up", str(running.up_file),
                                 "--format", "json"])
    assert result.exit_code == 0, result.output
    initiator, responder = json.loads(result.stdout)["sessions"]
    assert (initiator["role"], responder["role"]) == ("initiator", "responder")
    assert initiator["policy"] == "any" and initiator["inputs"] == ["qkd", "pqc"]
    assert initiator["key_id"] == responder["key_id"] is not None
    assert initiator["session_id"] == responder["session_id"]
    text = runner.invoke(app, ["hybrid", "session", "--from-up", str(running.up_file),
                               "--suite", "mlkem768-x25519"])
    assert text.exit_code == 0, text.output
    assert "initiator sae-a: established (policy any, inputs qkd+pqc" in text.stdout
    assert "suite mlkem768-x25519" in text.stdout
    # With a QRNG (a file standing in for the device) the handshake still agrees.
    device = running.up_file.parent / "qrng.bin"
    device.write_bytes(os.urandom(1 << 16))
    drawn = runner.invoke(app, ["hybrid", "session", "--from-up", str(running.up_file),
                                "--qrng", str(device), "--format", "json"])
    assert drawn.exit_code == 0, drawn.output
    assert json.loads(drawn.stdout)["sessions"][0]["outcome"] == "established"
    missing = runner.invoke(app, ["hybrid", "session", "--from-up", str(running.up_file),
                                  "--qrng", str(device.parent / "no-such-device")])
    assert missing.exit_code == 2 and missing.output.startswith("error: ")
    assert "Traceback" not in missing.output and len(missing.output.splitlines()) == 1


@pytest.mark.timeout(120)
def test_a_policy_other_than_the_responders_is_refused(running: Corridor) -> None:
    result = runner.invoke(app, ["hybrid", "session", "--from-up", str(running.up_file),
                                 "--policy", "pqc-required"])
    assert result.exit_code == 2
    assert "error: policy mismatch for SAE pair ('sae-a', 'sae-b')" in result.output
    assert "Traceback" not in result.output
    # As a user sees it: the error line alone, not each side's WARNING log line first.
    process = subprocess.run([sys.executable, "-m", "corridor", "hybrid", "session",
                              "--from-up", str(running.up_file), "--policy", "pqc-required"],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    lines = process.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: policy mismatch"), process.stderr


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["hybrid", "session", "--from-up", str(tmp_path / "no.json")])
    assert result.exit_code == 2 and "error: --from-up" in result.output
    up = tmp_path / "corridor-up.json"
    up.write_text(json.dumps({"saes": [{"sae_id": "sae-a"}, {"sae_id": "sae-b"}],
                              "kmes": []}))
    result = runner.invoke(app, ["hybrid", "session", "--from-up", str(up), "--policy", "x"])
    assert result.exit_code == 2
    assert "error: --policy = 'x': one of qkd-required, pqc-required, both-required, any" \
        in result.output


@pytest.mark.timeout(120)
def test_listen_and_connect_run_the_two_saes_as_two_processes(running: Corridor) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    corridor = str(Path(sys.executable).parent / "corridor")
    up = str(running.up_file)
    listener = subprocess.Popen(
        [corridor, "hybrid", "listen", "--from-up", up, "--sae", "sae-b",
         "--listen", f"127.0.0.1:{port}", "--count", "2", "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        records = []
        for suite in ("xwing", "mlkem768-x25519"):
            for _ in range(100):  # until the listener accepts
                done = subprocess.run(
                    [corridor, "hybrid", "connect", "--from-up", up, "--sae", "sae-a",
                     "--peer", "sae-b", "--connect", f"127.0.0.1:{port}", "--suite", suite,
                     "--format", "json"], capture_output=True, text=True, timeout=60)
                if "cannot connect" not in done.stderr:
                    break
                time.sleep(0.2)
            assert done.returncode == 0, done.stderr
            records.append(json.loads(done.stdout))
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    theirs = [json.loads(line) for line in out.splitlines()]
    assert len(theirs) == 2
    for mine, peer in zip(records, theirs, strict=True):
        assert (mine["role"], peer["role"]) == ("initiator", "responder")
        assert mine["outcome"] == peer["outcome"] == "established"
        assert mine["session_id"] == peer["session_id"]
        assert mine["key_id"] == peer["key_id"] is not None
        assert mine["inputs"] == peer["inputs"] == ["qkd", "pqc"]
    assert records[1]["suite"] == "mlkem768-x25519"
    # A refused handshake counts toward --count: the listener ends, exit 1 (it hung).
    listener = subprocess.Popen(
        [corridor, "hybrid", "listen", "--from-up", up, "--sae", "sae-b",
         "--listen", f"127.0.0.1:{port}", "--count", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            done = subprocess.run(
                [corridor, "hybrid", "connect", "--from-up", up, "--sae", "sae-a", "--peer",
                 "sae-b", "--connect", f"127.0.0.1:{port}", "--policy", "both-required"],
                capture_output=True, text=True, timeout=60)
            if "cannot connect" not in done.stderr:
                break
            time.sleep(0.2)
        assert done.returncode != 0, done.stdout
        _, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 1 and "handshake refused" in err, err
    # A connect with nobody listening is one line, exit 2.
    refused = subprocess.run(
        [corridor, "hybrid", "connect", "--from-up", up, "--sae", "sae-a", "--peer", "sae-b",
         "--connect", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")
    assert len(refused.stderr.strip().splitlines()) == 1


def _explicit(up_file: Path, sae_id: str) -> list[str]:
    """``--kme/--cert/--key/--ca`` of ``sae_id``, as a `kme serve` site hands them out."""
    up = json.loads(up_file.read_text())
    sae = next(s for s in up["saes"] if s["sae_id"] == sae_id)
    kme = next(k for k in up["kmes"] if k["kme_id"] == sae["kme_id"])
    base = up_file.parent
    return ["--kme", kme["base_url"], "--cert", str(base / sae["cert"]),
            "--key", str(base / sae["key"]), "--ca", str(base / sae["ca_cert"])]


@pytest.mark.timeout(120)
def test_listen_and_connect_without_an_up_file(running: Corridor) -> None:
    """SAEs of `kme serve` sites have no corridor-up.json: each names its KME and files,
    and the listener the initiators it accepts and their policy."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    corridor = str(Path(sys.executable).parent / "corridor")
    listener = subprocess.Popen(
        [corridor, "hybrid", "listen", "--sae", "sae-b", *_explicit(running.up_file, "sae-b"),
         "--peer", "sae-a", "--policy", "qkd-required", "--listen", f"127.0.0.1:{port}",
         "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):  # until the listener accepts
            done = subprocess.run(
                [corridor, "hybrid", "connect", "--sae", "sae-a",
                 *_explicit(running.up_file, "sae-a"), "--peer", "sae-b", "--policy",
                 "qkd-required", "--connect", f"127.0.0.1:{port}", "--format", "json"],
                capture_output=True, text=True, timeout=60)
            if "cannot connect" not in done.stderr:
                break
            time.sleep(0.2)
        assert done.returncode == 0, done.stderr
        out, err = listener.communicate(timeout=60)
    finally:
        if listener.poll() is None:
            listener.kill()
    assert listener.returncode == 0, err
    mine, theirs = json.loads(done.stdout), json.loads(out)
    assert mine["outcome"] == theirs["outcome"] == "established"
    assert mine["policy"] == "qkd-required" and mine["key_id"] == theirs["key_id"] is not None
    assert mine["session_id"] == theirs["session_id"]


def test_listen_and_connect_options_are_checked(running: Corridor) -> None:
    up = str(running.up_file)
    sae_a = _explicit(running.up_file, "sae-a")
    for args, message in [
        (["hybrid", "listen", "--sae", "sae-b", *_explicit(running.up_file, "sae-b")],
         "--peer: at least one initiator SAE to accept"),
        (["hybrid", "listen", "--from-up", up, "--sae", "sae-b", "--peer", "sae-a"],
         "--peer = ['sae-a']: only without --from-up"),
        (["hybrid", "listen", "--from-up", up, "--sae", "sae-b", "--policy", "any"],
         "--policy = 'any': only without --from-up"),
        (["hybrid", "listen", "--sae", "sae-b", *sae_a, "--peer", "sae-a"],
         "--sae = 'sae-b': the SAE --cert names (sae 'sae-a')"),
        (["hybrid", "listen", "--sae", "sae-b", *sae_a[:2], "--peer", "sae-a"],
         "--cert: required"),
        (["hybrid", "listen", "--sae", "sae-a", *sae_a, "--peer", "sae-a"],
         "--peer = 'sae-a': another SAE than --sae"),
        (["hybrid", "connect", "--from-up", up, "--sae", "sae-a", "--peer", "sae-b",
          "--kme", "https://127.0.0.1:1"], "--kme = 'https://127.0.0.1:1': only without"),
        (["hybrid", "connect", "--sae", "sae-a", *sae_a[:-2], "--ca", up, "--peer",
          "sae-b"], "--ca"),
        (["hybrid", "connect", "--sae", "sae-a", "--kme", "https://127.0.0.1:1", "--cert",
          up, "--key", up, "--ca", up, "--peer", "sae-b"],
         "--cert = '" + up + "': a readable SAE certificate"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output, \
            (args, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
