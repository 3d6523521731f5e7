"""MACsec key export: QKD key -> MKA pre-shared CAK/CKN, or a static SAK for ``ip macsec``.

Two ways to key a MACsec link (IEEE 802.1AE), and this module owns the export for both:

- **MKA with a pre-shared key** (IEEE 802.1X-2010, what wpa_supplicant's ``macsec_linux``
  driver and switches run): the peers share a CAK (Connectivity Association Key, 16 or 32
  bytes) named by a CKN (1 to 32 bytes). MKA derives its own keys from the CAK and
  distributes fresh SAKs, rekeying on its own. :func:`derive_mka` and
  :func:`wpa_supplicant_conf` produce the network block that wpa_supplicant reads.
- **Static SAK, no MKA** (``ip macsec add DEV tx sa 0 pn 1 on key KI SAK``): the kernel
  uses the SAK directly and nothing rekeys it. :func:`derive_static_sak` and
  :func:`ip_macsec_script` produce the commands for links without an MKA peer. This is
  a fallback; the packet number of a non-XPN cipher is 32 bits, so the operator must
  re-run the export with a new QKD key before it runs out.

Derivations (HKDF-SHA256, :mod:`corridor.mobility.derive`):

- ``CAK = HKDF(qkd_key, info = parts("corridor/macsec/cak/v1", key_ID, generation))``.
- ``SAK = HKDF(qkd_key, info = parts("corridor/macsec/sak/v1", key_ID, generation))``.
- ``CKN = key_ID's 16 UUID bytes || generation (4 bytes)``, 20 bytes: the CKN travels in
  clear in every MKPDU, so it is made from public data only and never from the secret.
  It also lets an operator find the QKD key in the KME's audit log from a captured
  MKPDU. ``KI`` (the static SA's 128-bit key identifier, also sent in clear) is
  ``SHA-256("corridor/macsec/ki/v1" || key_ID || generation)[:16]``.

The lengths accepted are those of wpa_supplicant's configuration parser (hostap
``wpa_supplicant/config.c``, 2.10): ``mka_cak`` exactly 32 or 64 hex digits, ``mka_ckn``
2 to 64 hex digits, even.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass, field

from corridor.errors import ParameterError
from corridor.mobility.derive import check_generation, check_key_id, encode_parts, hkdf_sha256

CAK_SIZES_BYTES = (16, 32)
CKN_MAX_SIZE_BYTES = 32
CIPHERS = {"gcm-aes-128": 16, "gcm-aes-256": 32}
"""The ``ip link ... type macsec cipher`` names offered, with their SAK size in bytes.
The XPN ciphers need a salt and an SSCI per SA as well; not exported."""

_CAK_LABEL = b"corridor/macsec/cak/v1"
_SAK_LABEL = b"corridor/macsec/sak/v1"
_KI_LABEL = b"corridor/macsec/ki/v1"
_HEX = re.compile(r"[0-9a-fA-F]*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# Linux interface names: at most 15 bytes, no whitespace, '/' or ':'.
_IFNAME = re.compile(r"[A-Za-z0-9_.\-]{1,15}")


@dataclass(frozen=True)
class MkaKeys:
    """A pre-shared CAK and its CKN for MKA. ``repr`` never shows the CAK."""

    key_id: str
    generation: int
    cak: bytes = field(repr=False)
    ckn: bytes

    @property
    def cak_hex(self) -> str:
        return self.cak.hex()

    @property
    def ckn_hex(self) -> str:
        return self.ckn.hex()


@dataclass(frozen=True)
class StaticSak:
    """A static SAK and its key identifier for ``ip macsec``. ``repr`` never shows the SAK."""

    key_id: str
    generation: int
    cipher: str
    sak: bytes = field(repr=False)
    ki: bytes


def _check_qkd_key(qkd_key: bytes, needed_bytes: int) -> None:
    if not isinstance(qkd_key, bytes | bytearray):
        raise ParameterError("qkd_key", type(qkd_key).__name__, "bytes")
    if len(qkd_key) < needed_bytes:
        # The size is public (ETSI 014 key_size); never the bytes.
        raise ParameterError("qkd_key", f"{len(qkd_key) * 8} bits",
                             f"at least {needed_bytes * 8} bits for this export")


def mka_ckn(key_id: str, generation: int) -> bytes:
    """The CKN for ``key_id`` and ``generation``: public data only (see module docstring)."""
    return check_key_id(key_id).bytes + check_generation(generation).to_bytes(4, "big")


def static_ki(key_id: str, generation: int) -> bytes:
    """The 128-bit key identifier of a static SA for ``key_id`` and ``generation``."""
    text = str(check_key_id(key_id)).encode()
    data = encode_parts(_KI_LABEL, text, check_generation(generation).to_bytes(4, "big"))
    return hashlib.sha256(data).digest()[:16]


def derive_mka(qkd_key: bytes, key_id: str, *, generation: int = 0,
               cak_size_bytes: int = 32) -> MkaKeys:
    """The MKA pre-shared CAK (16 or 32 bytes) and CKN from a QKD key and its key_ID."""
    if cak_size_bytes not in CAK_SIZES_BYTES:
        raise ParameterError("cak_size_bytes", cak_size_bytes, "16 (CAK-128) or 32 (CAK-256)")
    _check_qkd_key(qkd_key, cak_size_bytes)
    cak = hkdf_sha256(bytes(qkd_key), label=_CAK_LABEL, key_id=key_id, generation=generation,
                      length=cak_size_bytes)
    return MkaKeys(key_id=str(check_key_id(key_id)), generation=generation, cak=cak,
                   ckn=mka_ckn(key_id, generation))


def derive_static_sak(qkd_key: bytes, key_id: str, *, generation: int = 0,
                      cipher: str = "gcm-aes-256") -> StaticSak:
    """A static SAK for ``cipher`` and its key identifier, from a QKD key and its key_ID."""
    if cipher not in CIPHERS:
        raise ParameterError("cipher", cipher, "one of " + ", ".join(CIPHERS))
    size = CIPHERS[cipher]
    _check_qkd_key(qkd_key, size)
    sak = hkdf_sha256(bytes(qkd_key), label=_SAK_LABEL, key_id=key_id, generation=generation,
                      length=size)
    return StaticSak(key_id=str(check_key_id(key_id)), generation=generation, cipher=cipher,
                     sak=sak, ki=static_ki(key_id, generation))


def check_cak_hex(value: str, field: str = "mka_cak") -> str:
    """``value`` if wpa_supplicant accepts it as ``mka_cak``: 32 or 64 hex digits."""
    if not isinstance(value, str) or not _HEX.fullmatch(value) \
            or len(value) not in (2 * n for n in CAK_SIZES_BYTES):
        # Never echo a CAK candidate: it may be a real key with a typo.
        shown = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        raise ParameterError(field, shown, "32 or 64 hex digits (CAK-128 or CAK-256)")
    return value.lower()


def check_ckn_hex(value: str, field: str = "mka_ckn") -> str:
    """``value`` if wpa_supplicant accepts it as ``mka_ckn``: 2 to 64 hex digits, even."""
    if not isinstance(value, str) or not _HEX.fullmatch(value) or len(value) % 2 \
            or not 2 <= len(value) <= 2 * CKN_MAX_SIZE_BYTES:
        raise ParameterError(field, value, "2 to 64 hex digits, an even number (1 to 32 bytes)")
    return value.lower()


def _check_range(field_name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ParameterError(field_name, value, f"an integer from {low} to {high}")
    return value


def wpa_supplicant_conf(keys: MkaKeys, *, mka_priority: int = 255, macsec_port: int = 1,
                        macsec_integ_only: bool = False) -> str:
    """A wpa_supplicant configuration for MKA with ``keys`` (driver ``macsec_linux``).

    ``macsec_policy=1`` makes MACsec required: without a live MKA peer holding the same
    CAK no traffic passes (should-secure, 0, would let it pass in clear).
    """
    cak = check_cak_hex(keys.cak_hex)
    ckn = check_ckn_hex(keys.ckn_hex)
    _check_range("mka_priority", mka_priority, 0, 255)
    _check_range("macsec_port", macsec_port, 1, 65534)
    return (
        f"# Corridor MACsec MKA export: QKD key_ID {keys.key_id}, generation {keys.generation}\n"
        "# Run: wpa_supplicant -D macsec_linux -i <device> -c <this file>\n"
        "eapol_version=3\n"
        "ap_scan=0\n"
        "network={\n"
        "\tkey_mgmt=NONE\n"
        "\teapol_flags=0\n"
        "\tmacsec_policy=1\n"
        f"\tmacsec_integ_only={int(macsec_integ_only)}\n"
        f"\tmacsec_port={macsec_port}\n"
        f"\tmka_priority={mka_priority}\n"
        f"\tmka_cak={cak}\n"
        f"\tmka_ckn={ckn}\n"
        "}\n")


def check_ifname(value: str, field: str) -> str:
    """``value`` if it is a valid Linux interface name."""
    if not isinstance(value, str) or not _IFNAME.fullmatch(value):
        raise ParameterError(field, value, "an interface name: 1 to 15 of A-Z a-z 0-9 _ . -")
    return value


def check_mac(value: str, field: str) -> str:
    """``value`` lower-cased if it is a MAC address ``xx:xx:xx:xx:xx:xx``."""
    if not isinstance(value, str) or not _MAC.fullmatch(value.lower()):
        raise ParameterError(field, value, "a MAC address like 02:00:00:00:00:01")
    return value.lower()


def ip_macsec_script(sak: StaticSak, *, device: str, peer_mac: str,
                     macsec_device: str = "macsec0", port: int = 1, peer_port: int = 1) -> str:
    """A ``sh`` script that creates ``macsec_device`` on ``device`` keyed with ``sak``.

    Both ends run it with the same export and each other's MAC address: one SAK per
    connectivity association, as MKA itself distributes; the two directions differ by
    their SCI (MAC address and port), which makes the GCM nonces distinct. The
    association number is ``generation mod 4``.
    """
    check_ifname(device, "device")
    check_ifname(macsec_device, "macsec_device")
    peer_mac = check_mac(peer_mac, "peer_mac")
    _check_range("port", port, 1, 65535)
    _check_range("peer_port", peer_port, 1, 65535)
    an = sak.generation % 4
    q = shlex.quote
    ki, key = sak.ki.hex(), sak.sak.hex()
    lines = [
        "#!/bin/sh",
        f"# Corridor static-SAK MACsec export (no MKA): QKD key_ID {sak.key_id}, "
        f"generation {sak.generation}, cipher {sak.cipher}.",
        "# The SAK never rotates by itself: re-export from a new QKD key before the 32-bit",
        "# packet number runs out. Keys appear on the ip command line (visible in /proc",
        "# to local root while it runs); keep this file mode 0600 and delete it after use.",
        "set -eu",
        f"ip link add link {q(device)} name {q(macsec_device)} type macsec port {port} "
        f"cipher {sak.cipher} encrypt on encodingsa {an}",
        f"ip macsec add {q(macsec_device)} tx sa {an} pn 1 on key {ki} {key}",
        f"ip macsec add {q(macsec_device)} rx port {peer_port} address {peer_mac} on",
        f"ip macsec add {q(macsec_device)} rx port {peer_port} address {peer_mac} "
        f"sa {an} pn 1 on key {ki} {key}",
        f"ip link set {q(macsec_device)} up",
    ]
    return "\n".join(lines) + "\n"


def export_json(keys: MkaKeys | None = None, sak: StaticSak | None = None) -> str:
    """The export as JSON (secret fields included: this is the export itself)."""
    data: dict[str, object] = {}
    if keys is not None:
        data.update(key_id=keys.key_id, generation=keys.generation, mka_cak=keys.cak_hex,
                    mka_ckn=keys.ckn_hex, cak_size_bytes=len(keys.cak))
    if sak is not None:
        data.update(key_id=sak.key_id, generation=sak.generation, cipher=sak.cipher,
                    sak=sak.sak.hex(), ki=sak.ki.hex())
    return json.dumps(data, indent=2) + "\n"
