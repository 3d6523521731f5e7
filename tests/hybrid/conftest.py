"""TEMPORARY (remove once corridor.hybrid.xwing and corridor.hybrid.kdf are in main): a
test-only stand-in for the two modules another branch adds, with their exact API, so
that the session tests run before the merge. Never imported from src."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from corridor.errors import ParameterError


def _install() -> None:
    if importlib.util.find_spec("corridor.hybrid.xwing") is None:
        xw = types.ModuleType("corridor.hybrid.xwing")
        xw.PUBLIC_KEY_BYTES, xw.CIPHERTEXT_BYTES = 1216, 1120
        xw.SEED_BYTES, xw.SHARED_SECRET_BYTES = 32, 32
        label = b"\\.//^\\"

        def expand(sk: bytes) -> tuple[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]:
            out = hashlib.shake_256(sk).digest(96)
            return (mlkem.MLKEM768PrivateKey.from_seed_bytes(out[:64]),
                    x25519.X25519PrivateKey.from_private_bytes(out[64:]))

        def generate_keypair(seed: bytes) -> tuple[bytes, bytes]:
            m, x = expand(seed)
            return seed, m.public_key().public_bytes_raw() + x.public_key().public_bytes_raw()

        def encapsulate(pk: bytes, eseed: bytes | None = None) -> tuple[bytes, bytes]:
            if len(pk) != 1216:
                raise ParameterError("pk", f"{len(pk)} bytes", "exactly 1216 bytes")
            ss_m, ct_m = mlkem.MLKEM768PublicKey.from_public_bytes(pk[:1184]).encapsulate()
            e = x25519.X25519PrivateKey.generate()
            ct_x = e.public_key().public_bytes_raw()
            ss_x = e.exchange(x25519.X25519PublicKey.from_public_bytes(pk[1184:]))
            return hashlib.sha3_256(ss_m + ss_x + ct_x + pk[1184:] + label).digest(), ct_m + ct_x

        def decapsulate(sk: bytes, ct: bytes) -> bytes:
            m, x = expand(sk)
            ss_m = m.decapsulate(ct[:1088])
            ss_x = x.exchange(x25519.X25519PublicKey.from_public_bytes(ct[1088:]))
            pk_x = x.public_key().public_bytes_raw()
            return hashlib.sha3_256(ss_m + ss_x + ct[1088:] + pk_x + label).digest()

        xw.generate_keypair, xw.encapsulate, xw.decapsulate = (generate_keypair, encapsulate,
                                                               decapsulate)
        sys.modules["corridor.hybrid.xwing"] = xw
    if importlib.util.find_spec("corridor.hybrid.kdf") is None:
        kdf = types.ModuleType("corridor.hybrid.kdf")

        def catkdf(*, psk: bytes, k1: bytes, k2: bytes, ma: bytes, mb: bytes, info: bytes,
                   label: bytes, length: int, hash: str = "sha256") -> bytes:
            if not k1 or not k2:
                raise ParameterError("k1" if not k1 else "k2", "0 bytes", "non-empty")
            lp = b"".join(len(a).to_bytes(4, "big") + a for a in (info, ma, mb))
            context = hashlib.sha256(lp).digest()
            return HKDF(hashes.SHA256(), length, label, context).derive(psk + k1 + k2)

        kdf.catkdf = catkdf
        sys.modules["corridor.hybrid.kdf"] = kdf


_install()
