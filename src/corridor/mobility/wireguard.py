"""WireGuard preshared-key export: QKD key (+ optional PQC secret) -> ``wg`` PSK.

WireGuard mixes an optional 32-byte preshared key into every handshake (Noise IKpsk2),
so a PSK that an attacker cannot know makes recorded sessions safe against a future
quantum computer that breaks Curve25519. This module owns:

- the PSK format ``wg`` reads (32 bytes, standard base64, 44 characters: what
  ``wg genpsk`` prints) and its checks (:func:`encode_psk`, :func:`decode_psk`);
- the derivation (:func:`combine_psk`): HKDF-SHA256 over ``qkd_key || pqc_secret``
  (whichever of the two the policy decided to use) with
  ``info = parts("corridor/wireguard/psk/v1", inputs, key_ID, generation, pub_low,
  pub_high)``: ``inputs`` is ``qkd+pqc``, ``qkd`` or ``pqc`` so that a PSK made from
  fewer inputs can never equal one made from more, and the two WireGuard public keys
  (sorted) bind the PSK to one pair of peers;
- reading a Rosenpass-style PQC output key file (one line, base64 of 32 bytes), with a
  reason code when it is missing, malformed or stale (:func:`read_pqc_secret`);
- applying a PSK with ``wg set IFACE peer PUBKEY preshared-key FILE`` through a 0600 file
  in a private 0700 directory that is removed right after (:class:`WgPeer`), and
  invalidating a peer with a fresh random PSK when the policy refuses (see
  docs/tunnels.md for why not by removing the PSK).
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from corridor.errors import CorridorError, ParameterError
from corridor.hybrid.kdf import catkdf
from corridor.mobility.derive import check_generation, check_key_id, encode_parts
from corridor.mobility.macsec import check_ifname

PSK_SIZE_BYTES = 32
_PSK_LABEL = b"corridor/wireguard/psk/v1"

PQC_MISSING_FILE = "pqc_file_missing"
PQC_UNREADABLE = "pqc_file_unreadable"
PQC_MALFORMED = "pqc_key_malformed"
PQC_STALE = "pqc_key_stale"


class WireGuardError(CorridorError):
    """``wg`` failed to apply a PSK (its message never holds key material)."""


def encode_psk(psk: bytes) -> str:
    """``psk`` (32 bytes) in the base64 form ``wg genpsk`` prints and ``wg set`` reads."""
    if not isinstance(psk, bytes | bytearray) or len(psk) != PSK_SIZE_BYTES:
        raise ParameterError("psk", f"{len(psk)} bytes" if isinstance(psk, bytes | bytearray)
                             else type(psk).__name__, "32 bytes")
    return base64.b64encode(bytes(psk)).decode("ascii")


def _decode_32(text: str, field: str, what: str) -> bytes:
    stripped = text.strip() if isinstance(text, str) else ""
    try:
        raw = base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != PSK_SIZE_BYTES or len(stripped) != 44:
        # A PSK or secret candidate is never echoed; a public key may be.
        shown = stripped if what == "public key" else f"{len(stripped)} characters"
        raise ParameterError(field, shown, f"a WireGuard {what}: base64 of 32 bytes "
                                           "(44 characters)")
    return raw


def decode_psk(text: str, field: str = "psk") -> bytes:
    """The 32 bytes of a PSK in ``wg genpsk`` form; :class:`ParameterError` otherwise."""
    return _decode_32(text, field, "key")


def check_public_key(text: str, field: str = "peer public key") -> str:
    """``text`` stripped, if it is a WireGuard public key (base64 of 32 bytes)."""
    _decode_32(text, field, "public key")
    return text.strip()


def combine_psk(*, qkd_key: bytes | None, key_id: str | None, pqc_secret: bytes | None,
                generation: int, public_keys: tuple[str, str]) -> bytes:
    """The 32-byte WireGuard PSK from the inputs the policy decided to use.

    ``qkd_key`` (at least 32 bytes) goes with its ``key_id``; ``pqc_secret`` is 32 bytes;
    at least one must be given. The combiner is CatKDF (ETSI TS 103 744, HKDF-SHA256,
    :func:`corridor.hybrid.kdf.catkdf`), as for hybrid sessions: the QKD key in ``psk``,
    the PQC secret in ``k1``, the two WireGuard public keys (sorted) as ``MA``/``MB``,
    and ``info`` binding the label, the key_ID, the generation and the inputs used.
    """
    if qkd_key is None and pqc_secret is None:
        raise ParameterError("inputs", "none", "a QKD key, a PQC secret or both")
    if (qkd_key is None) != (key_id is None):
        raise ParameterError("key_id", key_id, "given exactly when a QKD key is given")
    if qkd_key is not None and len(qkd_key) < PSK_SIZE_BYTES:
        raise ParameterError("qkd_key", f"{len(qkd_key) * 8} bits", "at least 256 bits")
    if pqc_secret is not None and len(pqc_secret) != PSK_SIZE_BYTES:
        raise ParameterError("pqc_secret", f"{len(pqc_secret)} bytes", "32 bytes")
    low, high = sorted(check_public_key(k, "public_keys") for k in public_keys)
    if low == high:
        raise ParameterError("public_keys", low, "two different WireGuard public keys")
    inputs = "+".join(name for name, value in (("qkd", qkd_key), ("pqc", pqc_secret))
                      if value is not None)
    key_id_text = str(check_key_id(key_id)).encode() if key_id is not None else b""
    info = encode_parts(_PSK_LABEL, key_id_text, check_generation(generation).to_bytes(4, "big"),
                        inputs.encode())
    return catkdf(psk=qkd_key or b"", k1=pqc_secret or b"", k2=b"", ma=low.encode(),
                  mb=high.encode(), info=info, label=_PSK_LABEL, length=PSK_SIZE_BYTES)


def read_pqc_secret(path: str | os.PathLike[str], *, max_age_s: float | None = None,
                    now_s: float | None = None) -> tuple[bytes | None, str | None]:
    """``(secret, None)`` from a Rosenpass-style key file, or ``(None, reason)``.

    A file older than ``max_age_s`` (by its modification time) is stale: Rosenpass
    rewrites its output key every two minutes, so an old file means it stopped.
    """
    file = Path(path)
    try:
        stat = file.stat()
        text = file.read_text(encoding="ascii")
    except FileNotFoundError:
        return None, PQC_MISSING_FILE
    except (OSError, UnicodeDecodeError):
        return None, PQC_UNREADABLE
    now_s = time.time() if now_s is None else now_s
    if max_age_s is not None and now_s - stat.st_mtime > max_age_s:
        return None, PQC_STALE
    try:
        return _decode_32(text, "pqc_secret", "key"), None
    except ParameterError:
        return None, PQC_MALFORMED


Runner = Callable[..., Any]
"""``subprocess.run``-compatible: called as ``runner(argv, capture_output=True, text=True,
timeout=...)`` and returns an object with ``returncode`` and ``stderr``."""


class WgPeer:
    """One peer of one WireGuard interface, whose PSK this process sets with ``wg``.

    Args:
        interface: the WireGuard interface (``wg0``).
        peer_public_key: the peer's public key, base64.
        wg: the ``wg`` executable.
        runner: runs a command (``subprocess.run`` by default; tests pass a recorder).
        timeout_s: how long one ``wg`` call may take.
    """

    def __init__(self, interface: str, peer_public_key: str, *, wg: str = "wg",
                 runner: Runner = subprocess.run, timeout_s: float = 10.0) -> None:
        self.interface = check_ifname(interface, "interface")
        self.peer_public_key = check_public_key(peer_public_key, "peer")
        self.wg = wg
        self._runner = runner
        self.timeout_s = timeout_s

    def __repr__(self) -> str:
        return f"WgPeer(interface={self.interface!r}, peer={self.peer_public_key!r})"

    def command(self, psk_file: str | os.PathLike[str]) -> list[str]:
        """The ``wg set`` command line that sets the PSK read from ``psk_file``."""
        return [self.wg, "set", self.interface, "peer", self.peer_public_key,
                "preshared-key", os.fspath(psk_file)]

    def apply(self, psk: bytes) -> None:
        """Set ``psk`` on the peer: the key goes through a file, never the command line."""
        encoded = encode_psk(psk)
        private_dir = tempfile.mkdtemp(prefix="corridor-wg-")  # mode 0700
        try:
            psk_file = Path(private_dir) / "psk"
            fd = os.open(psk_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(encoded + "\n")
            self._run(self.command(psk_file))
        finally:
            shutil.rmtree(private_dir, ignore_errors=True)

    def invalidate(self) -> None:
        """Set a fresh random PSK that the peer cannot have: no new handshake succeeds."""
        self.apply(secrets.token_bytes(PSK_SIZE_BYTES))

    def _run(self, argv: Sequence[str]) -> None:
        try:
            result = self._runner(list(argv), capture_output=True, text=True,
                                  timeout=self.timeout_s)
        except FileNotFoundError:
            raise WireGuardError(f"cannot run {self.wg!r}: not installed "
                                 "(Debian: apt-get install wireguard-tools)") from None
        except subprocess.TimeoutExpired:
            raise WireGuardError(f"{self.wg} set {self.interface} did not finish "
                                 f"within {self.timeout_s} s") from None
        if result.returncode != 0:
            detail = " ".join(str(result.stderr or "").split())[:200]
            raise WireGuardError(f"{self.wg} set {self.interface} peer "
                                 f"{self.peer_public_key} failed ({result.returncode}): "
                                 f"{detail or 'no message'}")
