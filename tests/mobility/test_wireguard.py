"""WireGuard PSK export: format, derivation, PQC file reading, and how ``wg`` is called."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corridor.errors import ParameterError
from corridor.mobility.wireguard import (
    PQC_MALFORMED,
    PQC_MISSING_FILE,
    PQC_STALE,
    WgPeer,
    WireGuardError,
    combine_psk,
    decode_psk,
    encode_psk,
    read_pqc_secret,
)
from tests.mobility.wg_fakes import public_key

KEY_ID = "0b6f7a52-9a38-4f0e-8d0c-1f2a3b4c5d6e"
PUB_A, PUB_B = public_key(), public_key()


@given(st.binary(min_size=32, max_size=32))
def test_psk_round_trip_in_wg_genpsk_form(psk: bytes) -> None:
    text = encode_psk(psk)
    assert len(text) == 44 and text.endswith("=")
    assert decode_psk(text + "\n") == psk


def test_decode_rejects_without_echoing() -> None:
    secret = base64.b64encode(bytes(31)).decode()
    with pytest.raises(ParameterError, match="psk") as info:
        decode_psk(secret)
    assert secret not in str(info.value)


def test_combine_psk_binds_inputs_and_peers() -> None:
    qkd, pqc = os.urandom(32), os.urandom(32)
    both = combine_psk(qkd_key=qkd, key_id=KEY_ID, pqc_secret=pqc, generation=1,
                       public_keys=(PUB_A, PUB_B))
    assert len(both) == 32
    # Both ends compute it with their own key first: the order must not matter.
    assert both == combine_psk(qkd_key=qkd, key_id=KEY_ID, pqc_secret=pqc, generation=1,
                               public_keys=(PUB_B, PUB_A))
    others = {
        combine_psk(qkd_key=qkd, key_id=KEY_ID, pqc_secret=None, generation=1,
                    public_keys=(PUB_A, PUB_B)),
        combine_psk(qkd_key=None, key_id=None, pqc_secret=pqc, generation=1,
                    public_keys=(PUB_A, PUB_B)),
        combine_psk(qkd_key=qkd, key_id=KEY_ID, pqc_secret=pqc, generation=2,
                    public_keys=(PUB_A, PUB_B)),
        combine_psk(qkd_key=qkd, key_id=KEY_ID, pqc_secret=pqc, generation=1,
                    public_keys=(PUB_A, public_key())),
    }
    assert both not in others and len(others) == 4
    # The PQC secret alone never equals the PSK (it is mixed, not passed through).
    assert pqc not in others


def test_combine_psk_refuses_bad_inputs() -> None:
    with pytest.raises(ParameterError, match="inputs"):
        combine_psk(qkd_key=None, key_id=None, pqc_secret=None, generation=0,
                    public_keys=(PUB_A, PUB_B))
    with pytest.raises(ParameterError, match="key_id"):
        combine_psk(qkd_key=os.urandom(32), key_id=None, pqc_secret=None, generation=0,
                    public_keys=(PUB_A, PUB_B))
    with pytest.raises(ParameterError, match="qkd_key"):
        combine_psk(qkd_key=os.urandom(16), key_id=KEY_ID, pqc_secret=None, generation=0,
                    public_keys=(PUB_A, PUB_B))
    with pytest.raises(ParameterError, match="public_keys"):
        combine_psk(qkd_key=os.urandom(32), key_id=KEY_ID, pqc_secret=None, generation=0,
                    public_keys=(PUB_A, PUB_A))


def test_read_pqc_secret(tmp_path: Path) -> None:
    file = tmp_path / "pqc.key"
    assert read_pqc_secret(file) == (None, PQC_MISSING_FILE)
    file.write_text("not base64!\n")
    assert read_pqc_secret(file) == (None, PQC_MALFORMED)
    secret = os.urandom(32)
    file.write_text(base64.b64encode(secret).decode() + "\n")
    assert read_pqc_secret(file, max_age_s=60) == (secret, None)
    assert read_pqc_secret(file, max_age_s=60, now_s=time.time() + 120) == (None, PQC_STALE)


class Recorder:
    """A ``subprocess.run`` stand-in that checks the PSK file while ``wg`` would read it."""

    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.seen: list[tuple[int, int, str]] = []
        self.returncode = returncode

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append(argv)
        path = Path(argv[-1])
        self.seen.append((stat.S_IMODE(path.stat().st_mode),
                          stat.S_IMODE(path.parent.stat().st_mode), path.read_text()))
        return subprocess.CompletedProcess(argv, self.returncode, "", "Unable to modify")


def test_wg_peer_passes_psk_through_a_private_file() -> None:
    runner = Recorder()
    peer = WgPeer("wg0", PUB_B, runner=runner)
    psk = os.urandom(32)
    peer.apply(psk)
    argv = runner.calls[0]
    assert argv[:6] == ["wg", "set", "wg0", "peer", PUB_B, "preshared-key"]
    assert encode_psk(psk) not in " ".join(argv)
    assert runner.seen[0] == (0o600, 0o700, encode_psk(psk) + "\n")
    assert not Path(argv[-1]).exists() and not Path(argv[-1]).parent.exists()
    peer.invalidate()
    assert runner.seen[1][2] != runner.seen[0][2]


def test_wg_failure_is_one_line_without_key() -> None:
    peer = WgPeer("wg0", PUB_B, runner=Recorder(returncode=1))
    with pytest.raises(WireGuardError, match="failed \\(1\\): Unable to modify"):
        peer.apply(os.urandom(32))
    with pytest.raises(WireGuardError, match="not installed"):
        WgPeer("wg0", PUB_B, wg="/nonexistent/wg").apply(os.urandom(32))
    with pytest.raises(ParameterError, match="interface"):
        WgPeer("wg0 peer", PUB_B)
