"""Encryption of key material at rest, and the key-encryption key (KEK) it uses.

The KEK is 32 bytes, read from a file or an environment variable (never from the
database it protects). Every stored row is sealed with AES-256-GCM (NIST SP 800-38D)
under a data-encryption key derived from the KEK with HKDF-SHA256 (RFC 5869) and a
random 128-bit salt chosen when a :class:`AtRestCipher` is created. Why not the KEK
directly: GCM with random 96-bit nonces is limited to 2^32 encryptions per key
(SP 800-38D, 8.3), which a busy KME reaches in hours; a fresh derived key per cipher
instance, rotated every 2^31 encryptions, keeps every key far inside that bound. The
salt travels in the sealed blob, so any instance with the same KEK can open any row.

Blob layout: ``version (1) | salt (16) | nonce (12) | ciphertext | tag (16)``. The
associated data binds the row's identity (pool and offset, or key ID and recipients),
so rows cannot be swapped or re-labelled without the open failing.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import stat
import threading
from collections import OrderedDict
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.errors import CorridorError, ParameterError

KEK_BYTES = 32
DEFAULT_KEK_ENV_VAR = "CORRIDOR_KEK"
_VERSION = 1
_SALT_BYTES = 16
_NONCE_BYTES = 12
_HEADER_BYTES = 1 + _SALT_BYTES + _NONCE_BYTES
_HKDF_INFO = b"corridor kms at-rest v1"
# Half the SP 800-38D random-nonce limit of 2^32 invocations per key.
_MAX_ENCRYPTIONS_PER_DEK = 2**31


class AtRestDecryptionError(CorridorError):
    """A stored row did not authenticate: wrong KEK, or the row was altered or moved."""


_TEXT_KEY = re.compile(rb"^[0-9A-Za-z+/=_\-\s]+$")


def _decode_kek(raw: bytes) -> bytes | None:
    """Raw 32 bytes, 64 hex digits or base64 (standard or URL-safe); None if none fits.

    Content made only of hex/base64 characters is always read as text, so that a short
    key written as 32 hex digits is refused instead of taken as 32 raw bytes (random
    raw bytes are all such characters with probability (66/256)^32 < 1e-18).
    """
    if not _TEXT_KEY.match(raw):
        return raw if len(raw) == KEK_BYTES else None
    text = b"".join(raw.split())
    if len(text) == 2 * KEK_BYTES:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except ValueError:
            pass
    for decoder in (base64.b64decode, base64.urlsafe_b64decode):
        try:
            decoded = decoder(text)
        except (binascii.Error, ValueError):
            continue
        if len(decoded) == KEK_BYTES:
            return decoded
    return None


_KEK_FORMATS = "must hold a 32-byte key: 32 raw bytes, 64 hex digits or base64 of 32 bytes"


def load_kek(path: str | os.PathLike[str] | None = None,
             env_var: str = DEFAULT_KEK_ENV_VAR) -> bytes:
    """Load the 32-byte KEK from ``path`` if given, else from environment ``env_var``.

    Errors name the source and what was wrong, never the content. A file that group
    or others may read or write is refused (fail closed): whoever else could read it
    can decrypt the whole store.
    """
    if path is not None:
        kek_path = Path(path)
        try:
            mode = kek_path.stat().st_mode
            raw = kek_path.read_bytes()
        except FileNotFoundError:
            raise ParameterError("kek_file", str(kek_path), "does not exist",
                                 "give the KEK the store or log was made with (a KME writes "
                                 "kek.hex into its working directory when it first starts); "
                                 "only a new KME takes a new one: (umask 077; openssl rand "
                                 f"-hex 32 > {kek_path})") from None
        except OSError as exc:
            raise ParameterError("kek_file", str(kek_path),
                                 f"cannot be read ({exc.strerror})") from None
        if stat.S_IMODE(mode) & 0o077:
            raise ParameterError("kek_file", str(kek_path),
                                 f"must be private to its owner; it has mode "
                                 f"{stat.S_IMODE(mode):04o}",
                                 f"run: chmod 600 {kek_path}")
        kek = _decode_kek(raw)
        if kek is None:
            raise ParameterError("kek_file", str(kek_path), _KEK_FORMATS,
                                 f"the file holds {len(raw)} bytes that decode to no "
                                 "32-byte key")
        return kek
    value = os.environ.get(env_var)
    if value is None or not value.strip():
        raise ParameterError(env_var, "(unset)", "the key-encryption key is required",
                             f"set {env_var} to 64 hex digits or pass a KEK file")
    kek = _decode_kek(value.encode("utf-8", "replace"))
    if kek is None:
        raise ParameterError(env_var, f"({len(value)} characters, not shown)", _KEK_FORMATS)
    return kek


def generate_kek() -> bytes:
    """A fresh 32-byte KEK from the OS CSPRNG."""
    return os.urandom(KEK_BYTES)


def write_kek_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (mode 0600, must not exist) holding a fresh KEK as hex."""
    kek_path = Path(path)
    try:
        fd = os.open(kek_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ParameterError("kek_file", str(kek_path),
                             "already exists; refusing to overwrite a KEK") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(generate_kek().hex() + "\n")
    return kek_path


def _check_kek(kek: bytes) -> None:
    if not isinstance(kek, bytes | bytearray) or len(kek) != KEK_BYTES:
        length = len(kek) if isinstance(kek, bytes | bytearray) else type(kek).__name__
        raise ParameterError("kek", f"({length} bytes, not shown)",
                             "must be exactly 32 bytes (AES-256)")


class AtRestCipher:
    """Seals and opens stored rows under one KEK; thread-safe; never shows the KEK."""

    def __init__(self, kek: bytes) -> None:
        _check_kek(kek)
        self._kek = bytes(kek)
        self._lock = threading.Lock()
        self._openers: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._new_dek()

    def _derive(self, salt: bytes) -> AESGCM:
        dek = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(
            self._kek)
        return AESGCM(dek)

    def _new_dek(self) -> None:
        self._salt = os.urandom(_SALT_BYTES)
        self._sealer = self._derive(self._salt)
        self._encryptions = 0

    def _opener(self, salt: bytes) -> AESGCM:
        with self._lock:
            if salt == self._salt:
                return self._sealer
            opener = self._openers.get(salt)
            if opener is not None:
                self._openers.move_to_end(salt)
                return opener
        opener = self._derive(salt)
        with self._lock:
            self._openers[salt] = opener
            while len(self._openers) > 64:
                self._openers.popitem(last=False)
        return opener

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt and authenticate ``plaintext`` bound to ``aad``."""
        with self._lock:
            if self._encryptions >= _MAX_ENCRYPTIONS_PER_DEK:
                self._new_dek()
            self._encryptions += 1
            salt, sealer = self._salt, self._sealer
        nonce = os.urandom(_NONCE_BYTES)
        return bytes((_VERSION,)) + salt + nonce + sealer.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt a sealed blob; :class:`AtRestDecryptionError` if it does not authenticate."""
        blob = bytes(blob)
        if len(blob) < _HEADER_BYTES + 16 or blob[0] != _VERSION:
            raise AtRestDecryptionError("stored row is not a sealed blob of this version")
        salt = blob[1:1 + _SALT_BYTES]
        nonce = blob[1 + _SALT_BYTES:_HEADER_BYTES]
        try:
            return self._opener(salt).decrypt(nonce, blob[_HEADER_BYTES:], aad)
        except InvalidTag:
            raise AtRestDecryptionError(
                "stored row failed authentication: wrong key-encryption key, or the row "
                "was altered or moved") from None

    def __repr__(self) -> str:
        return "AtRestCipher(AES-256-GCM, kek=<not shown>)"

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("AtRestCipher holds a secret and cannot be pickled")


def encrypt_at_rest(kek: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Seal ``plaintext`` under ``kek`` bound to ``aad`` (one-shot form of AtRestCipher)."""
    return AtRestCipher(kek).seal(plaintext, aad)


def decrypt_at_rest(kek: bytes, blob: bytes, aad: bytes) -> bytes:
    """Open a blob sealed by :func:`encrypt_at_rest` or :class:`AtRestCipher`."""
    return AtRestCipher(kek).open(blob, aad)
