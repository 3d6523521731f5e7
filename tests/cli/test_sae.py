"""``corridor sae``: the command-line SAE against two real KMEs over mutual TLS."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from corridor.cli import app
from tests.kms.mtls_harness import KME_A, KME_B, SAES, fingerprint, two_kme_deployment

runner = CliRunner()


@pytest.fixture(scope="module")
def dep(tmp_path_factory):
    with two_kme_deployment(tmp_path_factory.mktemp("kmes")) as deployment:
        deployment.ingest(16 * 1024)
        yield deployment


@pytest.fixture(scope="module")
def up_file(dep) -> Path:
    """A corridor-up.json as `corridor up` writes it (paths relative to the file)."""
    root = dep.pki.root.parent
    data = {
        "ca_cert": str(dep.pki.ca_cert.relative_to(root)),
        "kmes": [{"kme_id": kme, "base_url": dep.urls[kme]} for kme in (KME_A, KME_B)],
        "saes": [{"sae_id": sae, "kme_id": kme,
                  "cert": str(dep.pki.saes[sae].cert.relative_to(root)),
                  "key": str(dep.pki.saes[sae].key.relative_to(root)),
                  "ca_cert": str(dep.pki.ca_cert.relative_to(root))}
                 for sae, kme in SAES.items()],
    }
    path = root / "corridor-up.json"
    path.write_text(json.dumps(data))
    return path


def _explicit(dep, sae: str) -> list[str]:
    paths = dep.pki.saes[sae]
    return ["--kme", dep.urls[SAES[sae]], "--cert", str(paths.cert), "--key", str(paths.key),
            "--ca", str(dep.pki.ca_cert)]


def _fingerprints(keys: list[dict]) -> list[tuple[str, str]]:
    return [(k["key_ID"], fingerprint(k["key"])) for k in keys]


def _ok(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_status_with_explicit_credentials(dep) -> None:
    body = _ok(["sae", "status", "sae-b", *_explicit(dep, "sae-a"), "--expect-kme", KME_A])
    assert body["source_KME_ID"] == KME_A and body["master_SAE_ID"] == "sae-a"
    assert isinstance(body["stored_key_count"], int)


def test_get_key_at_one_kme_and_the_same_key_by_id_at_the_other(up_file) -> None:
    issued = _ok(["sae", "get-key", "sae-b", "--number", "3", "--size", "128",
                  "--from-up", str(up_file), "--sae", "sae-a"])["keys"]
    assert len(issued) == 3
    assert {len(base64.b64decode(k["key"])) for k in issued} == {16}
    got = _ok(["sae", "get-key-with-id", "sae-a", *[k["key_ID"] for k in issued],
               "--from-up", str(up_file), "--sae", "sae-b"])["keys"]
    assert _fingerprints(got) == _fingerprints(issued)


def test_get_key_by_get_form(dep, up_file) -> None:
    keys = _ok(["sae", "get-key", "sae-a", "--get", "--number", "2",
                "--from-up", str(up_file), "--sae", "sae-b"])["keys"]
    assert len(keys) == 2
    got = _ok(["sae", "get-key-with-id", "sae-b", keys[0]["key_ID"], *_explicit(dep, "sae-a")])
    assert _fingerprints(got["keys"]) == _fingerprints(keys[:1])


def test_table_output(up_file) -> None:
    result = runner.invoke(app, ["sae", "status", "sae-b", "--from-up", str(up_file),
                                 "--sae", "sae-a", "--format", "table"])
    assert result.exit_code == 0, result.output
    assert "stored_key_count" in result.stdout


def test_table_output_of_keys_is_never_truncated(up_file) -> None:
    """At 40 columns, 1024-bit keys and their IDs come out whole and usable by the peer."""
    result = runner.invoke(app, ["sae", "get-key", "sae-b", "--number", "2", "--size", "1024",
                                 "--from-up", str(up_file), "--sae", "sae-a",
                                 "--format", "table"], env={"COLUMNS": "40"})
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["key_ID", "size_bits", "key_base64"]
    assert len(rows) == 2
    issued = []
    for row in rows:
        key_id, size, key = row.split()
        assert size == "1024" and len(base64.b64decode(key, validate=True)) == 128
        issued.append({"key_ID": key_id, "key": key})
    got = _ok(["sae", "get-key-with-id", "sae-a", *[k["key_ID"] for k in issued],
               "--from-up", str(up_file), "--sae", "sae-b"])["keys"]
    assert _fingerprints(got) == _fingerprints(issued)


def test_kme_error_messages_keep_their_brackets_and_name_field_and_value(up_file) -> None:
    too_big = runner.invoke(app, ["sae", "get-key", "sae-b", "--size", "4096",
                                  "--from-up", str(up_file), "--sae", "sae-a"])
    assert too_big.exit_code == 2
    assert ("size = 4096: must lie in [min_key_size, max_key_size] = [64, 1024] bits"
            in too_big.output)
    zero = runner.invoke(app, ["sae", "get-key", "sae-b", "--get", "--number", "0",
                               "--from-up", str(up_file), "--sae", "sae-a"])
    assert zero.exit_code == 2  # refused before the KME is asked (its own 400: test_api_*)
    assert "--number = 0: " in zero.output


def test_kme_errors_are_one_line_with_the_status(up_file) -> None:
    issued = _ok(["sae", "get-key", "sae-b", "--from-up", str(up_file), "--sae", "sae-a"])
    key_id = issued["keys"][0]["key_ID"]
    third = runner.invoke(app, ["sae", "get-key-with-id", "sae-a", key_id,
                                "--from-up", str(up_file), "--sae", "sae-c"])
    assert third.exit_code == 2
    assert "401" in third.output and "Traceback" not in third.output
    bad = runner.invoke(app, ["sae", "get-key", "sae-b", "--size", "129",
                              "--from-up", str(up_file), "--sae", "sae-a"])
    assert bad.exit_code == 2  # refused before the KME is asked, as ETSI 014 requires
    assert "--size = 129" in bad.output and "multiple of 8" in bad.output
    leaked = issued["keys"][0]["key"] in third.output + bad.output
    assert not leaked


def test_wrong_kme_identity_is_refused_before_any_request(dep) -> None:
    result = runner.invoke(app, ["sae", "status", "sae-b", *_explicit(dep, "sae-a"),
                                 "--expect-kme", KME_B])
    assert result.exit_code == 2
    assert "not the expected" in result.output


@pytest.mark.parametrize(("args", "needle"), [
    (["sae", "status", "sae-b"], "--kme"),
    (["sae", "status", "sae-b", "--from-up", "{up}"], "--sae"),
    (["sae", "status", "sae-b", "--from-up", "{up}", "--sae", "nobody"], "sae-a"),
    (["sae", "status", "sae-b", "--from-up", "{up}", "--sae", "sae-a", "--kme",
      "https://x"], "not both"),
    (["sae", "status", "sae-b", "--from-up", "/nonexistent/corridor-up.json", "--sae", "x"],
     "corridor-up.json"),
    (["sae", "status", "sae-b", "--kme", "http://127.0.0.1:1", "--cert", "c", "--key", "k",
      "--ca", "a"], "https://"),
])
def test_bad_options_name_the_field(up_file, args, needle) -> None:
    result = runner.invoke(app, [a.replace("{up}", str(up_file)) for a in args])
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
