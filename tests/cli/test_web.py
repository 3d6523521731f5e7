"""``corridor web``: bad input gets one line naming the field, exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corridor.kms.pki import init_pki

CORRIDOR = [str(Path(sys.executable).parent / "corridor")]
ENV = {**os.environ, "COLUMNS": "200"}


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRIDOR, "web", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=60)


def _up_file(tmp_path: Path, *, dashboards: list[str]) -> Path:
    layout = init_pki(tmp_path / "pki", ["kme-a"], [("sae-a", "kme-a")], operators=["op"],
                      dashboards=dashboards)
    up = {"name": "x", "ca_cert": "pki/ca.pem",
          "kmes": [{"kme_id": "kme-a", "base_url": "https://127.0.0.1:9", "site": "s"}],
          "links": [],
          "operators": [{"name": "op", "cert": str(layout.operators["op"].cert),
                         "key": str(layout.operators["op"].key), "ca_cert": "pki/ca.pem"}]}
    path = tmp_path / "corridor-up.json"
    path.write_text(json.dumps(up))
    return path


@pytest.mark.parametrize(("args", "field"), [
    ([], "--from-up"),
    (["--from-up", "a.json", "--config", "b.toml"], "--from-up"),
    (["--from-up", "missing.json"], "--from-up"),
    (["--config", "missing.toml"], "--config"),
    (["--from-up", "corridor-up.json", "--port", "70000"], "--port"),
    (["--from-up", "corridor-up.json", "--interval-s", "0"], "--interval-s"),
    (["--from-up", "corridor-up.json", "--cert", "c.pem"], "--key"),
    (["--from-up", "corridor-up.json", "--operator", "nobody"], "--operator"),
    (["--from-up", "corridor-up.json", "--inventory", "missing.json"], "--inventory"),
])
def test_bad_input_is_one_line_naming_the_field(tmp_path: Path, args: list[str],
                                                field: str) -> None:
    _up_file(tmp_path, dashboards=["dash"])
    result = _run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_pki_without_a_dashboard_certificate_says_how_to_get_one(tmp_path: Path) -> None:
    _up_file(tmp_path, dashboards=[])
    result = _run("--from-up", "corridor-up.json", cwd=tmp_path)
    assert result.returncode == 2
    assert "corridor pki init --dashboard NAME" in result.stderr
