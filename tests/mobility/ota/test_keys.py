"""The hybrid key type: both halves must verify, it round-trips through metadata and key
files, and nothing private shows."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import Key, Signature

from corridor.errors import ParameterError
from corridor.mobility.ota.keys import (
    ED25519,
    HYBRID,
    MLDSA65,
    HybridKey,
    load_signer,
    new_signer,
    signer_scheme,
    write_signer,
)


def test_hybrid_signature_needs_both_halves() -> None:
    signer = new_signer(HYBRID)
    signature = signer.sign(b"payload")
    key = Key.from_dict(signer.public_key.keyid, signer.public_key.to_dict())
    assert isinstance(key, HybridKey)
    key.verify_signature(signature, b"payload")
    raw = bytes.fromhex(signature.signature)
    other = new_signer(HYBRID).sign(b"payload")
    other_raw = bytes.fromhex(other.signature)
    for forged in (raw[:64], raw[64:], raw[:64] + other_raw[64:], other_raw[:64] + raw[64:]):
        with pytest.raises(UnverifiedSignatureError):
            key.verify_signature(Signature(key.keyid, forged.hex()), b"payload")
    with pytest.raises(UnverifiedSignatureError):
        key.verify_signature(signature, b"other payload")


@pytest.mark.parametrize("scheme", [ED25519, MLDSA65, HYBRID])
def test_key_file_round_trip_private_and_quiet(tmp_path: Path, scheme: str) -> None:
    signer = new_signer(scheme)
    path = tmp_path / "k.json"
    write_signer(path, signer)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_signer(path)
    assert loaded.public_key == signer.public_key and signer_scheme(loaded) == scheme
    loaded.public_key.verify_signature(loaded.sign(b"x"), b"x")
    if scheme == HYBRID:
        assert "PRIVATE" not in repr(loaded)


def test_bad_key_file_and_scheme_are_parameter_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ParameterError, match="key file"):
        load_signer(tmp_path / "bad.json")
    with pytest.raises(ParameterError, match="scheme"):
        new_signer("rsa")
