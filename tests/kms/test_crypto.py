"""Tests for corridor.kms.crypto: KEK loading and encryption at rest."""

from __future__ import annotations

import base64
import os
import pickle
import stat
import warnings

import pytest

from corridor.errors import ParameterError
from corridor.kms import crypto
from corridor.kms.crypto import (
    AtRestCipher,
    AtRestDecryptionError,
    decrypt_at_rest,
    encrypt_at_rest,
    generate_kek,
    load_kek,
    write_kek_file,
)


def _private_file(path, content: bytes):
    path.write_bytes(content)
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("encode", [
    lambda k: k,
    lambda k: k.hex().encode() + b"\n",
    lambda k: k.hex().upper().encode(),
    lambda k: base64.b64encode(k) + b"\n",
    lambda k: base64.urlsafe_b64encode(k),
], ids=["raw", "hex", "HEX", "base64", "urlsafe"])
def test_load_kek_file_formats(tmp_path, encode):
    kek = generate_kek()
    # A raw key made only of hex/base64 characters is read as text by design
    # (probability below 1e-18); draw again in that case.
    while crypto._TEXT_KEY.match(kek):
        kek = generate_kek()
    path = _private_file(tmp_path / "kek", encode(kek))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_kek(path) == kek


def test_load_kek_from_environment(monkeypatch):
    kek = generate_kek()
    monkeypatch.setenv("CORRIDOR_KEK", kek.hex())
    assert load_kek() == kek
    monkeypatch.setenv("OTHER_KEK", base64.b64encode(kek).decode())
    assert load_kek(env_var="OTHER_KEK") == kek


def test_missing_kek_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CORRIDOR_KEK", raising=False)
    with pytest.raises(ParameterError, match=r"CORRIDOR_KEK.*required"):
        load_kek()
    with pytest.raises(ParameterError, match=r"kek_file.*does not exist"):
        load_kek(tmp_path / "absent")


def test_short_kek_is_refused_without_showing_it(tmp_path, monkeypatch):
    short = os.urandom(16)
    path = _private_file(tmp_path / "kek", short.hex().encode())
    with pytest.raises(ParameterError) as info:
        load_kek(path)
    assert "32-byte" in str(info.value)
    assert short.hex() not in str(info.value)
    monkeypatch.setenv("CORRIDOR_KEK", short.hex())
    with pytest.raises(ParameterError) as info:
        load_kek()
    assert short.hex() not in str(info.value) and "not shown" in str(info.value)
    with pytest.raises(ParameterError, match="exactly 32 bytes"):
        AtRestCipher(short)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_kek_file_others_may_read_or_write_is_refused(tmp_path, mode):
    path = tmp_path / "kek"
    path.write_bytes(generate_kek().hex().encode())
    path.chmod(mode)
    with pytest.raises(ParameterError, match=f"kek_file.*mode {mode:04o}.*chmod 600"):
        load_kek(path)
    path.chmod(0o400)
    assert len(load_kek(path)) == 32


def test_write_kek_file_is_private_and_never_overwrites(tmp_path):
    path = write_kek_file(tmp_path / "kek")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_kek(path)) == 32
    with pytest.raises(ParameterError, match="refusing to overwrite"):
        write_kek_file(path)


def test_seal_open_round_trip_and_binding():
    kek = generate_kek()
    plaintext = os.urandom(64)
    blob = encrypt_at_rest(kek, plaintext, b"row-1")
    assert plaintext not in blob
    assert decrypt_at_rest(kek, blob, b"row-1") == plaintext
    with pytest.raises(AtRestDecryptionError):
        decrypt_at_rest(kek, blob, b"row-2")          # moved to another row
    with pytest.raises(AtRestDecryptionError):
        decrypt_at_rest(generate_kek(), blob, b"row-1")  # wrong KEK
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(AtRestDecryptionError):
        decrypt_at_rest(kek, bytes(tampered), b"row-1")
    with pytest.raises(AtRestDecryptionError):
        decrypt_at_rest(kek, blob[:10], b"row-1")


def test_same_plaintext_seals_differently():
    cipher = AtRestCipher(generate_kek())
    plaintext = os.urandom(32)
    assert cipher.seal(plaintext, b"a") != cipher.seal(plaintext, b"a")


def test_data_key_rotates_and_old_rows_still_open(monkeypatch):
    monkeypatch.setattr(crypto, "_MAX_ENCRYPTIONS_PER_DEK", 3)
    kek = generate_kek()
    cipher = AtRestCipher(kek)
    blobs = [cipher.seal(bytes([i]) * 16, b"r") for i in range(7)]
    salts = {blob[1:17] for blob in blobs}
    assert len(salts) == 3  # 3 + 3 + 1 encryptions
    other = AtRestCipher(kek)
    assert [other.open(blob, b"r") for blob in blobs] == [bytes([i]) * 16 for i in range(7)]


def test_cipher_never_shows_or_pickles_the_kek():
    kek = generate_kek()
    cipher = AtRestCipher(kek)
    assert kek.hex() not in repr(cipher) and kek.hex() not in str(cipher)
    with pytest.raises(TypeError):
        pickle.dumps(cipher)
