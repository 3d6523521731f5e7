"""``corridor up`` end to end, as a newcomer runs it: a subprocess with the embedded
default, keys fetched with ``corridor sae`` and with curl from the two KMEs over mutual
TLS, SIGTERM for a clean stop, ``corridor audit verify`` on both audit logs."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from corridor.kms.client import KmeResponseError, SaeClient

# The console script next to this interpreter: what a user runs.
CORRIDOR = [str(Path(sys.executable).parent / "corridor")]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRIDOR, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=60)


def _wait_for(path: Path, process: subprocess.Popen[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.1)


def _sae(up: dict[str, Any], workdir: Path, sae_id: str) -> SaeClient:
    sae = next(s for s in up["saes"] if s["sae_id"] == sae_id)
    kme = next(k for k in up["kmes"] if k["kme_id"] == sae["kme_id"])
    return SaeClient(kme["base_url"], workdir / sae["cert"], workdir / sae["key"],
                     workdir / sae["ca_cert"], expected_kme_id=kme["kme_id"])


def _curl(up: dict[str, Any], workdir: Path, sae_id: str, url: str) -> dict[str, Any]:
    sae = next(s for s in up["saes"] if s["sae_id"] == sae_id)
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "--cert", str(workdir / sae["cert"]),
         "--key", str(workdir / sae["key"]), "--cacert", str(workdir / sae["ca_cert"]), url],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_corridor_up_delivers_the_same_key_at_both_kmes_and_stops_cleanly(
        tmp_path: Path) -> None:
    workdir = tmp_path / "run"
    process = subprocess.Popen([*CORRIDOR, "up", "--embedded", "two-site", "--workdir",
                                str(workdir), "--duration-s", "55", "--status-interval-s", "2"],
                               cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        up_file = workdir / "corridor-up.json"
        _wait_for(up_file, process, 30.0)
        up = json.loads(up_file.read_text())
        assert {k["kme_id"] for k in up["kmes"]} == {"kme-a", "kme-b"}
        urls = {k["kme_id"]: k["base_url"] for k in up["kmes"]}
        with _sae(up, workdir, "sae-a") as sae_a:
            deadline = time.monotonic() + 40.0
            while sae_a.status("sae-b").stored_key_count < 2:
                assert process.poll() is None
                assert time.monotonic() < deadline, "no key from the simulated link in 40 s"
                time.sleep(0.25)
        # corridor sae: a key at kme-a, the same key by ID at kme-b.
        got = _run("sae", "get-key", "sae-b", "--from-up", str(up_file), "--sae", "sae-a",
                   cwd=tmp_path)
        assert got.returncode == 0, got.stderr
        key = json.loads(got.stdout)["keys"][0]
        same = _run("sae", "get-key-with-id", "sae-a", key["key_ID"], "--from-up",
                    str(up_file), "--sae", "sae-b", cwd=tmp_path)
        assert same.returncode == 0, same.stderr
        assert json.loads(same.stdout)["keys"][0] == key
        assert len(base64.b64decode(key["key"])) == 32
        # curl: the same two calls, as the printed commands make them.
        by_curl = _curl(up, workdir, "sae-a", f"{urls['kme-a']}/api/v1/keys/sae-b/enc_keys")
        curl_key = by_curl["keys"][0]
        again = _curl(up, workdir, "sae-b",
                      f"{urls['kme-b']}/api/v1/keys/sae-a/dec_keys?key_ID={curl_key['key_ID']}")
        assert again["keys"][0] == curl_key and curl_key["key"] != key["key"]
        # A key is delivered once at each end.
        with _sae(up, workdir, "sae-b") as sae_b, pytest.raises(KmeResponseError) as excinfo:
            sae_b.get_key_with_id("sae-a", [key["key_ID"]])
        assert excinfo.value.status_code == 400
        # The operator: metrics with the operator certificate of corridor-up.json (an SAE
        # certificate gets 403), link states and alarms with corridor alarm list.
        [operator] = up["operators"]
        metrics = subprocess.run(
            ["curl", "--silent", "--show-error", "--fail", "--cert",
             str(workdir / operator["cert"]), "--key", str(workdir / operator["key"]),
             "--cacert", str(workdir / operator["ca_cert"]), f"{urls['kme-a']}/metrics"],
            capture_output=True, text=True, timeout=30)
        assert metrics.returncode == 0 and "corridor_pool_stored_keys" in metrics.stdout
        sae_entry = next(s for s in up["saes"] if s["sae_id"] == "sae-a")
        refused = subprocess.run(
            ["curl", "--silent", "--write-out", "%{http_code}", "--output", "/dev/null",
             "--cert", str(workdir / sae_entry["cert"]), "--key", str(workdir / sae_entry["key"]),
             "--cacert", str(workdir / sae_entry["ca_cert"]), f"{urls['kme-a']}/metrics"],
            capture_output=True, text=True, timeout=30)
        assert refused.stdout == "403"
        alarms = _run("alarm", "list", "--from-up", str(up_file), "--format", "json",
                      cwd=tmp_path)
        assert alarms.returncode == 0, alarms.stderr
        states = {(k["kme_id"], link["link_id"]): link["state"]
                  for k in json.loads(alarms.stdout)["kmes"] for link in k["links"]}
        assert set(states) == {("kme-a", "link-ab"), ("kme-b", "link-ab")}
        assert set(states.values()) <= {"ok", "pool_full"}
        # One KME down (its URL at a closed port): the other's rows still show, the
        # silent one is a row of its own, exit 1 (it was one error line, nothing else).
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        half = json.loads(up_file.read_text())
        half["kmes"][1]["base_url"] = f"https://127.0.0.1:{closed}"
        (workdir / "half-up.json").write_text(json.dumps(half))
        partial = _run("alarm", "list", "--from-up", str(workdir / "half-up.json"),
                       cwd=tmp_path)
        assert partial.returncode == 1, partial.stderr
        assert "kme-a" in partial.stdout and "link-ab" in partial.stdout
        assert "unreachable" in partial.stdout
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr
    assert "corridor sae get-key sae-b --from-up" in stdout
    assert "curl --cert" in stdout and "dec_keys?key_ID=KEY_ID" in stdout
    assert "stopped cleanly (SIGTERM)" in stdout
    assert "pools(keys):" in stdout  # plain status lines when stdout is not a terminal
    assert "link-ab: state=" in stdout
    assert "corridor alarm list --from-up" in stdout and "/metrics" in stdout
    verifiers = [subprocess.Popen([*CORRIDOR, "audit", "verify", str(workdir / kme["audit_log"]),
                                   "--kek-file", str(workdir / kme["kek_file"])],
                                  cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for kme in up["kmes"]]
    for verifier in verifiers:
        output = verifier.communicate(timeout=60)[0]
        assert verifier.returncode == 0 and "intact" in output, output


def test_corridor_up_refuses_a_bad_duration(tmp_path: Path) -> None:
    result = _run("up", "--workdir", str(tmp_path / "run"), "--duration-s", "-1", cwd=tmp_path)
    assert result.returncode == 2
    assert "--duration-s" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("args", "field"), [
    (["--embedded", "nope"], "--embedded"),
    (["--embedded", "city", "--config", "examples/two-site.toml"], "--embedded"),
])
def test_corridor_up_refuses_a_bad_corridor_choice(tmp_path: Path, args: list[str],
                                                   field: str) -> None:
    result = _run("up", "--workdir", str(tmp_path / "run"), *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_the_main_job_runs_the_embedded_city_corridor() -> None:
    from corridor.kms.node import load_corridor, load_embedded
    from corridor.web.snapshot import site_layout

    city = load_embedded("city")
    assert city.name == "city-corridor" and len(city.kmes) == 8 and len(city.links) == 10
    # examples/city.toml is the same file (a link to the packaged one).
    example = Path(__file__).resolve().parents[2] / "examples" / "city.toml"
    assert load_corridor(example).links.keys() == city.links.keys()
    # The dashboard's map places every site at its coordinates.
    layout = site_layout([(k.kme_id, k.site) for k in city.kmes.values()],
                         Path(str(city.source_path)))
    assert {p["coordinates"] for p in layout.values()} == {"geographic"}
    assert load_embedded("two-site").name == "two-site-default"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_ctrl_c_with_output_into_a_closed_pipe_still_stops_cleanly(tmp_path: Path) -> None:
    """``corridor up 2>&1 | tee log`` and Ctrl-C: the reader dies with the same signal,
    the next write meets a closed pipe; the corridor must still stop cleanly (exit 0,
    ``kme_stopped`` audited at both KMEs, no SQLite WAL left behind)."""
    workdir = tmp_path / "run"
    read_end, write_end = os.pipe()
    process = subprocess.Popen([*CORRIDOR, "up", "--embedded", "two-site", "--workdir",
                                str(workdir), "--status-interval-s", "0.2"], cwd=tmp_path, env=ENV,
                               stdout=write_end, stderr=write_end)
    os.close(write_end)
    try:
        _wait_for(workdir / "corridor-up.json", process, 60)  # type: ignore[arg-type]
        os.close(read_end)  # the reader is gone
        time.sleep(0.5)  # a status line or two meet the closed pipe
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
    for kme in ("kme-a", "kme-b"):
        lines = (workdir / kme / "audit.jsonl").read_text().splitlines()
        assert json.loads(lines[-1])["event"] == "kme_stopped"
        assert not (workdir / kme / "store.sqlite-wal").exists()


@pytest.mark.parametrize("name", ["city", "two-site"])
def test_the_banner_shows_key_commands_for_a_link_with_saes_at_both_ends(
        tmp_path: Path, name: str) -> None:
    """The city's first link ends at the exchange, a trusted node without SAEs: the
    banner's commands take the first link that has an SAE at each end."""
    from types import SimpleNamespace

    from corridor.cli.up import key_commands
    from corridor.kms.node import load_embedded

    spec = load_embedded(name)
    paths = SimpleNamespace(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    corridor: Any = SimpleNamespace(
        spec=spec, up_file=tmp_path / "corridor-up.json",
        pki=SimpleNamespace(saes=dict.fromkeys(spec.saes, paths), ca_cert=tmp_path / "ca.pem"),
        nodes={kme: SimpleNamespace(url=f"https://127.0.0.1:1/{kme}") for kme in spec.kmes})
    commands = key_commands(corridor)
    assert len(commands) == 4
    slave, master = commands[0].split()[3], commands[0].split()[-1]
    assert (spec.saes[master], spec.saes[slave]) in {
        (link.alice_kme, link.bob_kme) for link in spec.links.values()}
    assert f"get-key-with-id {master} KEY_ID" in commands[1]


def test_a_working_directory_in_use_is_one_line_and_nothing_is_stopped(tmp_path: Path) -> None:
    from corridor.kms.ha import hold_pid_lock
    from corridor.kms.node import LOCK_FILE_NAME

    workdir = tmp_path / "run"
    workdir.mkdir()
    fd = hold_pid_lock(workdir / LOCK_FILE_NAME)  # as a running corridor holds it
    try:
        process = subprocess.run([sys.executable, "-m", "corridor", "up", "--embedded",
                                  "two-site", "--workdir", str(workdir)],
                                 capture_output=True, text=True, timeout=120)
    finally:
        os.close(fd)
    assert process.returncode == 2, process.stderr
    assert process.stderr.strip().splitlines() == [
        f"error: --workdir = '{workdir}': is in use by another corridor (pid {os.getpid()}); "
        "stop it or choose another working directory"]
