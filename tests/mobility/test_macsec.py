"""MACsec exports: derivations, lengths wpa_supplicant accepts, and the real parsers.

The last tests run wpa_supplicant 2.10 (Debian ``wpasupplicant``) on the exported file:
its configuration parser is the judge of ``mka_cak``/``mka_ckn``. The kernel here has
no MACsec, so wpa_supplicant stops at the driver after parsing; a parse error stops it
earlier with "Failed to read or parse configuration".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.mobility.macsec import (
    check_cak_hex,
    check_ckn_hex,
    derive_mka,
    derive_static_sak,
    export_json,
    ip_macsec_script,
    mka_ckn,
    wpa_supplicant_conf,
)

KEY = bytes(range(32))
KEY_ID = "6f1c1b6e-3f5a-4d2b-9a51-2c6b0a4e7d10"


def test_cak_and_ckn_sizes_and_ckn_is_public() -> None:
    for size in (16, 32):
        keys = derive_mka(KEY, KEY_ID, generation=7, cak_size_bytes=size)
        assert len(keys.cak) == size
        assert keys.ckn == uuid.UUID(KEY_ID).bytes + (7).to_bytes(4, "big")
        assert keys.ckn == mka_ckn(KEY_ID, 7)  # computable without the QKD key
        assert keys.cak.hex() not in repr(keys)


def test_cak_binds_key_id_generation_and_use() -> None:
    base = derive_mka(KEY, KEY_ID, generation=1)
    other_id = str(uuid.UUID(int=uuid.UUID(KEY_ID).int ^ 1))
    assert derive_mka(KEY, KEY_ID, generation=2).cak != base.cak
    assert derive_mka(KEY, other_id, generation=1).cak != base.cak
    assert derive_mka(bytes(32), KEY_ID, generation=1).cak != base.cak
    sak = derive_static_sak(KEY, KEY_ID, generation=1, cipher="gcm-aes-256")
    assert sak.sak != base.cak  # different labels: a SAK is never the CAK
    assert derive_mka(KEY, KEY_ID, generation=1) == base  # deterministic: both ends agree


def test_known_answer_pins_the_derivation() -> None:
    # Pinned so that a change to the labels or the encoding cannot pass unnoticed:
    # HKDF-SHA256(ikm=00..1f, info=u32len||"corridor/macsec/cak/v1"||u32len||key_ID||
    # u32len||generation u32).
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    def part(b: bytes) -> bytes:
        return len(b).to_bytes(4, "big") + b

    info = part(b"corridor/macsec/cak/v1") + part(KEY_ID.encode()) + part((3).to_bytes(4, "big"))
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(KEY)
    assert derive_mka(KEY, KEY_ID, generation=3).cak == expected


def test_bad_inputs_name_the_field() -> None:
    with pytest.raises(ParameterError, match="cak_size_bytes"):
        derive_mka(KEY, KEY_ID, cak_size_bytes=24)
    with pytest.raises(ParameterError, match="qkd_key = '128 bits'"):
        derive_mka(KEY[:16], KEY_ID, cak_size_bytes=32)
    with pytest.raises(ParameterError, match="key_id"):
        derive_mka(KEY, "not-a-uuid")
    with pytest.raises(ParameterError, match="generation"):
        derive_mka(KEY, KEY_ID, generation=2**32)
    with pytest.raises(ParameterError, match="cipher"):
        derive_static_sak(KEY, KEY_ID, cipher="gcm-aes-xpn-256")
    with pytest.raises(ParameterError, match="mka_cak = '48 characters'") as info:
        check_cak_hex("ab" * 24)
    assert "ab" * 24 not in str(info.value)  # a CAK candidate is never echoed


@given(st.integers(0, 40), st.sampled_from("0123456789abcdefABCDEFxg"))
def test_ckn_check_matches_wpa_supplicant_rule(size: int, char: str) -> None:
    value = char * size
    ok = size % 2 == 0 and 2 <= size <= 64 and char not in "xg"
    if ok:
        assert check_ckn_hex(value) == value.lower()
    else:
        with pytest.raises(ParameterError):
            check_ckn_hex(value)


def test_wpa_supplicant_conf_fields() -> None:
    keys = derive_mka(KEY, KEY_ID, generation=1, cak_size_bytes=16)
    conf = wpa_supplicant_conf(keys, mka_priority=16)
    lines = [line.strip() for line in conf.splitlines()]
    for expected in ("key_mgmt=NONE", "eapol_flags=0", "macsec_policy=1", "mka_priority=16",
                     f"mka_cak={keys.cak.hex()}", f"mka_ckn={keys.ckn.hex()}", "ap_scan=0"):
        assert expected in lines
    with pytest.raises(ParameterError, match="mka_priority"):
        wpa_supplicant_conf(keys, mka_priority=256)


def test_ip_macsec_script_matches_ip_grammar() -> None:
    sak = derive_static_sak(KEY, KEY_ID, generation=5, cipher="gcm-aes-128")
    script = ip_macsec_script(sak, device="eth0", peer_mac="02:00:00:00:00:02")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh" and "set -eu" in lines
    an = 5 % 4
    assert (f"ip link add link eth0 name macsec0 type macsec port 1 cipher gcm-aes-128 "
            f"encrypt on encodingsa {an}") in lines
    # 'ip macsec help': add DEV tx sa {0..3} [pn <u32>] [on|off] key ID KEY, ID 128-bit hex
    assert f"ip macsec add macsec0 tx sa {an} pn 1 on key {sak.ki.hex()} {sak.sak.hex()}" in lines
    assert len(sak.ki) == 16 and len(sak.sak) == 16
    assert ("ip macsec add macsec0 rx port 1 address 02:00:00:00:00:02 "
            f"sa {an} pn 1 on key {sak.ki.hex()} {sak.sak.hex()}") in lines
    with pytest.raises(ParameterError, match="peer_mac"):
        ip_macsec_script(sak, device="eth0", peer_mac="02:00:00:00:00")
    with pytest.raises(ParameterError, match="device"):
        ip_macsec_script(sak, device="eth0; rm -rf /", peer_mac="02:00:00:00:00:02")


def test_json_export() -> None:
    import json

    keys = derive_mka(KEY, KEY_ID)
    data = json.loads(export_json(keys=keys))
    assert data["mka_cak"] == keys.cak.hex() and data["mka_ckn"] == keys.ckn.hex()
    assert data["key_id"] == KEY_ID and data["cak_size_bytes"] == 32


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}")
                                  else None)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is not installed (scripts/test installs it)")
        pytest.skip(f"{name} is not installed (Debian: apt-get install wpasupplicant)")
    return path


def _wpa_parses(conf: str, tmp_path: Path) -> tuple[bool, str]:
    wpa = _tool("wpa_supplicant")
    file = tmp_path / "macsec.conf"
    file.write_text(conf)
    result = subprocess.run([wpa, "-D", "macsec_linux", "-i", "corridor-none0", "-c", str(file)],
                            capture_output=True, text=True, timeout=20)
    output = result.stdout + result.stderr
    return "Failed to read or parse configuration" not in output, output


@pytest.mark.parametrize("cak_size", [16, 32])
def test_wpa_supplicant_parses_the_export(cak_size: int, tmp_path: Path) -> None:
    keys = derive_mka(KEY, KEY_ID, generation=9, cak_size_bytes=cak_size)
    ok, output = _wpa_parses(wpa_supplicant_conf(keys), tmp_path)
    assert ok, output
    assert "Invalid MKA" not in output


def test_wpa_supplicant_rejects_what_we_reject(tmp_path: Path) -> None:
    # The oracle discriminates: a 24-byte CAK and a 33-byte CKN fail its parser too.
    good = wpa_supplicant_conf(derive_mka(KEY, KEY_ID))
    keys = derive_mka(KEY, KEY_ID)
    for bad in (good.replace(keys.cak.hex(), "ab" * 24), good.replace(keys.ckn.hex(), "ab" * 33)):
        ok, output = _wpa_parses(bad, tmp_path)
        assert not ok, output


def test_ip_parses_the_link_line() -> None:
    """``ip link add ... type macsec`` parses its arguments before asking the kernel: a
    bad argument fails with 'is wrong'; ours reach the kernel (which here lacks MACsec,
    or has it: then the link is made in a throwaway network namespace)."""
    ip = _tool("ip")
    if os.geteuid() != 0:
        pytest.skip("needs root for a network namespace")
    sak = derive_static_sak(KEY, KEY_ID, cipher="gcm-aes-256")
    line = next(x for x in ip_macsec_script(sak, device="v0", peer_mac="02:00:00:00:00:02")
                .splitlines() if x.startswith("ip link add"))
    ns = f"corridor-macsec-{os.getpid()}"
    subprocess.run([ip, "netns", "add", ns], check=True, timeout=10)
    try:
        subprocess.run([ip, "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                       check=True, timeout=10)
        argv = [ip, "-n", ns, *line.split()[1:]]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        assert "is wrong" not in result.stderr and "Usage" not in result.stderr, result.stderr
        assert result.returncode == 0 or "Unknown device type" in result.stderr, result.stderr
        bad_argv = [a if a != "gcm-aes-256" else "gcm-aes-999" for a in argv]
        bad = subprocess.run(bad_argv, capture_output=True, text=True, timeout=10)
        assert "is wrong" in bad.stderr
    finally:
        subprocess.run([ip, "netns", "del", ns], timeout=10)
