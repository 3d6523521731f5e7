"""TLS mistakes through the CLI: each is one line that says what is wrong and what to do
(exit code 2, never a traceback), and the operator's ``corridor alarm list|clear``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from corridor.kms.alarms import LinkMonitor
from corridor.kms.operator import AlarmDesk
from corridor.kms.pki import init_pki
from corridor.kms.sources.feeder import FeederStats
from tests.kms.mtls_harness import KME_A, KME_B, LINK_ID, OPERATOR, two_kme_deployment
from tests.kms.test_manager import RecordingSink

ENV = {**os.environ, "COLUMNS": "60"}  # a narrow terminal must not wrap the line


def corridor(*args: str | Path, columns: int = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corridor", *map(str, args)],
                          capture_output=True, text=True,
                          env={**ENV, "COLUMNS": str(columns)}, timeout=120)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    sink = RecordingSink()
    monitor = LinkMonitor(sink)
    # The feeder here delivers no blocks: a link silent for dead_after_s reads ``dead``,
    # which would hide ``quarantined`` once this module's tests run longer than that.
    desks = {kme: AlarmDesk(kme, [LINK_ID], dead_after_s=3600.0) for kme in (KME_A, KME_B)}
    feeder = SimpleNamespace(stats=FeederStats(), running=True)
    for desk in desks.values():
        desk.attach(monitor, {LINK_ID: feeder})
    root = tmp_path_factory.mktemp("tls-errors")
    with two_kme_deployment(root, alarm_desks=desks) as dep:
        dep.ingest(4096)
        other = init_pki(root / "other", [KME_A], [("sae-a", KME_A)])
        yield SimpleNamespace(dep=dep, other=other, monitor=monitor, sink=sink, root=root)


def sae_status(d, *, cert: Path | None = None, key: Path | None = None,
               ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    paths = d.dep.pki.saes["sae-a"]
    return corridor("sae", "status", "sae-b", "--kme", d.dep.urls[KME_A],
                    "--cert", cert or paths.cert, "--key", key or paths.key,
                    "--ca", ca or d.dep.pki.ca_cert)


def test_the_right_files_work(deployment) -> None:
    result = sae_status(deployment)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["slave_SAE_ID"] == "sae-b"


def test_a_certificate_and_key_that_do_not_match(deployment) -> None:
    line = one_line_error(sae_status(deployment, key=deployment.dep.pki.saes["sae-b"].key))
    assert "--key" in line and "must be the private key of --cert" in line
    assert "they do not match" in line


@pytest.mark.parametrize("which", ["cert", "key", "ca"])
def test_a_garbage_pem(deployment, which: str, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    line = one_line_error(sae_status(deployment, **{which: garbage}))
    assert f"--{which} = " in line and str(garbage) in line
    assert "PEM" in line


def test_swapped_cert_and_key_are_named(deployment) -> None:
    paths = deployment.dep.pki.saes["sae-a"]
    line = one_line_error(sae_status(deployment, cert=paths.key, key=paths.cert))
    assert "--cert" in line and "swapped" in line


def test_a_ca_file_that_is_not_a_ca(deployment) -> None:
    line = one_line_error(sae_status(deployment, ca=deployment.dep.pki.saes["sae-b"].cert))
    assert "--ca = " in line and "not a CA" in line and "ca.pem" in line


def test_a_kme_certificate_signed_by_another_ca(deployment) -> None:
    # Our own certificate is fine, but --ca is another corridor's: the KME's certificate
    # does not verify against it (the client side fails the handshake).
    line = one_line_error(sae_status(deployment, ca=deployment.other.ca_cert))
    url = deployment.dep.urls[KME_A]
    assert f"the KME's certificate at {url} is not signed by the CA in --ca" in line
    assert "Server disconnected" not in line


def test_our_certificate_signed_by_another_ca(deployment) -> None:
    # --ca is right, our certificate is another corridor's: the KME refuses it.
    paths = deployment.other.saes["sae-a"]
    line = one_line_error(sae_status(deployment, cert=paths.cert, key=paths.key))
    url = deployment.dep.urls[KME_A]
    assert f"the KME at {url} refused our certificate --cert {paths.cert}" in line
    assert "not issued by the corridor's CA" in line
    assert "Server disconnected" not in line


def test_a_kme_that_is_not_the_expected_one(deployment) -> None:
    paths = deployment.dep.pki.saes["sae-a"]
    url = deployment.dep.urls[KME_A]
    line = one_line_error(corridor("sae", "status", "sae-b", "--kme", url, "--cert", paths.cert,
                                   "--key", paths.key, "--ca", deployment.dep.pki.ca_cert,
                                   "--expect-kme", KME_B))
    assert f"the server at {url} is KME 'kme-a', not the expected KME 'kme-b'" in line


def test_nobody_listening(deployment) -> None:
    paths = deployment.dep.pki.saes["sae-a"]
    line = one_line_error(corridor("sae", "status", "sae-b", "--kme", "https://127.0.0.1:1",
                                   "--cert", paths.cert, "--key", paths.key,
                                   "--ca", deployment.dep.pki.ca_cert))
    assert "cannot reach KME at https://127.0.0.1:1" in line and "is running" in line


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_without_a_client_certificate_is_told_what_to_pass(deployment) -> None:
    url = deployment.dep.urls[KME_A]
    etsi = subprocess.run(["curl", "-sS", "-i", "--cacert", str(deployment.dep.pki.ca_cert),
                           f"{url}/api/v1/keys/sae-b/status"],
                          capture_output=True, text=True, timeout=60)
    assert etsi.returncode == 0, etsi.stderr
    head, _, body = etsi.stdout.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 401") and body == ""
    assert "client certificate required: pass --cert/--key" in head
    metrics = subprocess.run(["curl", "-sS", "--cacert", str(deployment.dep.pki.ca_cert),
                              f"{url}/metrics"], capture_output=True, text=True, timeout=60)
    assert json.loads(metrics.stdout)["message"].startswith("client certificate required")


# --- corridor alarm -----------------------------------------------------------------------


def operator_args(d, kme: str = KME_A, owner: str = OPERATOR, role: str = "operator"
                  ) -> list[str | Path]:
    paths = {"operator": d.dep.pki.operators, "sae": d.dep.pki.saes}[role][owner]
    return ["--kme", d.dep.urls[kme], "--cert", paths.cert, "--key", paths.key,
            "--ca", d.dep.pki.ca_cert]


def test_alarm_list_and_clear_with_a_reason(deployment) -> None:
    d = deployment
    d.monitor.observe_block(LINK_ID, 3, aborted_reason="authentication_failed", qber=None,
                            secret_bits=0)
    listed = corridor("alarm", "list", *operator_args(d), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    [link] = json.loads(listed.stdout)["kmes"][0]["links"]
    assert link["state"] == "quarantined"
    assert link["alarms"][0]["kind"] == "integrity"
    table = corridor("alarm", "list", *operator_args(d), columns=200)
    assert "quarantined" in table.stdout and "integrity" in table.stdout
    no_reason = corridor("alarm", "clear", LINK_ID, *operator_args(d))
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    line = one_line_error(corridor("alarm", "clear", LINK_ID, "--reason", " ",
                                   *operator_args(d)))
    assert "--reason" in line
    line = one_line_error(corridor("alarm", "clear", LINK_ID, "--reason", "not an operator",
                                   *operator_args(d, owner="sae-a", role="sae")))
    assert "403" in line and "operator certificate required" in line
    assert d.monitor.is_quarantined(LINK_ID)
    cleared = corridor("alarm", "clear", LINK_ID, "--reason", "channel re-keyed",
                       *operator_args(d))
    assert cleared.returncode == 0, cleared.stderr
    assert "cleared 1 alarm(s)" in cleared.stdout
    assert not d.monitor.is_quarantined(LINK_ID)
    [fields] = [f for e, f in d.sink.events if e == "link_cleared"]
    assert fields["operator"] == OPERATOR and fields["operator_reason"] == "channel re-keyed"


def test_alarm_from_up_visits_every_kme(deployment, tmp_path: Path) -> None:
    d = deployment
    d.monitor.observe_block(LINK_ID, 4, aborted_reason="sifting_index_mismatch", qber=None,
                            secret_bits=0)
    paths = d.dep.pki.operators[OPERATOR]
    up = tmp_path / "corridor-up.json"
    up.write_text(json.dumps({
        "ca_cert": str(d.dep.pki.ca_cert),
        "kmes": [{"kme_id": kme, "base_url": d.dep.urls[kme]} for kme in (KME_A, KME_B)],
        "operators": [{"name": OPERATOR, "cert": str(paths.cert), "key": str(paths.key)}]}))
    listed = corridor("alarm", "list", "--from-up", up, "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert [k["kme_id"] for k in json.loads(listed.stdout)["kmes"]] == [KME_A, KME_B]
    cleared = corridor("alarm", "clear", LINK_ID, "--reason", "tamper test over",
                       "--from-up", up, "--format", "json")
    assert cleared.returncode == 0, cleared.stderr
    results = json.loads(cleared.stdout)["results"]
    # One monitor shared by both KMEs (as in corridor up): the first clear does it.
    assert [r["cleared"] for r in results] == [True, False]
    line = one_line_error(corridor("alarm", "list", "--from-up", up, "--operator", "nobody"))
    assert "--operator" in line and "nobody" in line
    # A link no KME holds: the line names it and lists the links there are.
    line = one_line_error(corridor("alarm", "clear", "link-zz", "--reason", "typo",
                                   "--from-up", up))
    assert "LINK_ID" in line and "'link-zz'" in line and line.endswith(LINK_ID)
